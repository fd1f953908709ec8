"""register() where vLLM cannot take the formats, in a fresh process (run as a script); prints what the tests check.

usage: python register_probe.py unknown-version|moved-internal|child
unknown-version: the running vLLM is made unsupported (then a child process registers too, as vLLM's engine process
would); moved-internal: an internal the last registration step imports is gone, so registration fails half-way.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys


def snapshot() -> dict:
    """vLLM's state that registration changes."""
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.platforms import current_platform
    from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE
    from vllm.v1.attention.backends import registry

    from multi_turboquant.vllm import compat

    return {"dtypes": compat.accepted_cache_dtypes(), "torch_dtypes": dict(STR_DTYPE_TO_TORCH_DTYPE),
            "backends": dict(registry._ATTN_OVERRIDES),
            "selector": vars(type(current_platform)).get("get_attn_backend_cls"),
            "layer": (Attention.__init__, Attention.get_kv_cache_spec)}


def accepts(name: str) -> bool:
    from vllm.config.cache import CacheConfig

    try:
        return CacheConfig(cache_dtype=name).cache_dtype == name
    except Exception:
        return False


def main(mode: str) -> None:
    import vllm.model_executor.models.utils

    from multi_turboquant.vllm import compat, engine, plugin

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("multi_turboquant").addHandler(handler)
    seen = {}
    if mode in ("unknown-version", "child"):
        compat.SUPPORTED_VERSIONS = ("0.26",)
    if mode == "child":
        plugin.register()
        print(json.dumps(warnings))
        return
    if mode == "moved-internal":
        del vllm.model_executor.models.utils.extract_layer_index
        hook = compat.hook_attention_layers

        def hook_mid_way(*args):
            seen["accepted_mid_way"] = "isoquant3" in compat.accepted_cache_dtypes()
            hook(*args)

        compat.hook_attention_layers = hook_mid_way
    before = snapshot()
    plugin.register()
    plugin.register()
    errors = {}
    for name, build in (("require", plugin.require_registered),
                        ("build_llm", lambda: engine.build_llm("/nonexistent", "isoquant3")),
                        ("build_llm_auto", lambda: engine.build_llm("/nonexistent", "auto"))):
        try:
            build()
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
    if mode == "unknown-version":
        child = subprocess.run([sys.executable, __file__, "child"], capture_output=True, text=True, check=True)
        seen["child_warnings"] = json.loads(child.stdout.splitlines()[-1])
    print(json.dumps({"unchanged": snapshot() == before, "warnings": warnings, "errors": errors, **seen,
                      "accepts": {name: accepts(name) for name in ("auto", "fp8", "isoquant3")}}))


if __name__ == "__main__":
    main(sys.argv[1])
