"""Entry point (`vllm.general_plugins`): registers the six formats with vLLM when vLLM loads its plugins."""
from __future__ import annotations

import logging
import os

from ..formats.registry import FORMATS
from . import compat, state

BACKEND = "multi_turboquant.vllm.backend.MTQAttentionBackend"
logger = logging.getLogger("multi_turboquant")
WARNED = "MULTI_TURBOQUANT_WARNED"  # set once warned: the processes vLLM starts next inherit it and stay quiet
# AttentionSelectorConfig flags of layers the formats cannot serve (a flag newer than the running vLLM is never set);
# docs/vllm.md has the table
REFUSED = {
    "use_mla": "MLA attention (its cache holds one latent vector per token shared by all heads, not the per-head K "
               "and V the formats encode)",
    "use_sparse": "sparse attention",
    "use_rswa": "reference sliding-window attention",
    "use_non_causal": "non-causal attention",
    "use_dcp": "decode context parallelism",
    "use_pcp": "prefill context parallelism",
}
_failure: Exception | None = None  # why register() registered nothing in this process


class RegistrationFailed(RuntimeError):
    pass


def register() -> None:
    """Called by vLLM in every process; safe to call repeatedly. Never raises: on a vLLM it cannot serve it registers
    nothing and logs one warning, and vLLM's own kv_cache_dtype values work as without the plugin."""
    global _failure
    import vllm

    try:
        compat.check_version(vllm.__version__)
        compat.install(FORMATS, BACKEND, _check_layer, _kept, _packed_spec)
        _failure = None
        return
    except compat.UnsupportedVLLMVersion as e:
        _failure = e
    except Exception as e:  # an internal that moved; install() has left vLLM as it was
        _failure = RegistrationFailed(f"multi-turboquant could not register with vLLM {vllm.__version__} "
                                      f"({type(e).__name__}: {e}); please report it.")
    _warn_once(f"{_failure} Not registered: kv_cache_dtype {', '.join(FORMATS)}; vLLM's own values work as before.")


def _warn_once(message: str) -> None:
    """Log `message` once per process tree (vLLM loads its plugins again in each process it starts)."""
    if os.environ.get(WARNED) != "1":
        os.environ[WARNED] = "1"
        logger.warning(message)


def require_registered() -> None:
    """Register if needed; raise why not (UnsupportedVLLMVersion or RegistrationFailed) if vLLM did not take them."""
    register()
    if _failure is not None:
        raise _failure


def registered_kv_cache_dtypes() -> list[str]:
    """The names of ours vLLM accepts now (after register())."""
    return [n for n in compat.accepted_cache_dtypes() if n in FORMATS]


def _check_layer(cfg) -> None:
    """Refuse, at engine build, layers the formats cannot serve."""
    name = cfg.kv_cache_dtype
    refused = [what for flag, what in REFUSED.items() if getattr(cfg, flag, False)]
    if cfg.attn_type not in (None, "decoder"):
        refused.append(f"attention type {cfg.attn_type}")
    if refused:
        raise ValueError(f"kv_cache_dtype={name!r} (multi-turboquant) does not support {', '.join(refused)} "
                         "in this model; use another kv_cache_dtype")
    try:
        FORMATS[name].check_head_dim(cfg.head_size)
    except ValueError as e:
        raise ValueError(f"kv_cache_dtype={name!r} does not support head_size {cfg.head_size} ({e})") from None


def _kept(index: int, vllm_config) -> bool:
    return index in state.activate_engine(vllm_config).keep_layers


def _packed_spec(layer, vllm_config):
    state.activate_engine(vllm_config)
    block_size = vllm_config.cache_config.block_size
    return compat.packed_kv_spec(
        block_size=block_size,
        num_kv_heads=layer.num_kv_heads,
        head_size=layer.head_size,
        head_size_v=layer.head_size_v,
        slot_bytes=state.layout(layer.head_size, layer.num_kv_heads, block_size).slot_bytes,
        sliding_window=getattr(layer, "sliding_window", None),
    )
