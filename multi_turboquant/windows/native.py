"""The native modules a vLLM build must contain, per vLLM version and device (from each setup.py)."""

from __future__ import annotations

from pathlib import PurePosixPath

from multi_turboquant.windows.errors import KitError

NATIVE_MODULES = {
    ("0.19.0", "cuda"): ("vllm._C", "vllm._moe_C", "vllm.cumem_allocator", "vllm._C_stable_libtorch",
                         "vllm.vllm_flash_attn._vllm_fa2_C"),
    ("0.27.1", "cuda"): ("vllm.cumem_allocator", "vllm._C_stable_libtorch", "vllm._moe_C_stable_libtorch",
                         "vllm.vllm_flash_attn._vllm_fa2_C"),
    ("0.19.0", "cpu"): ("vllm._C",),
    ("0.27.1", "cpu"): ("vllm._C",),
}  # fmt: skip


def native_modules(version: str, device: str) -> tuple[str, ...]:
    """The modules a build of vLLM `version` for `device` must hold; KitError for an unknown pair."""
    base = version.split("+")[0]
    try:
        return NATIVE_MODULES[base, device]
    except KeyError:
        known = ", ".join(f"{v} ({d})" for v, d in NATIVE_MODULES)
        raise KitError(f"no list of native modules for vLLM {base} ({device}); known: {known}") from None


def module_of(path: str) -> str | None:
    """The module an extension file is, e.g. 'vllm._C' for vllm/_C.cp311-win_amd64.pyd or vllm/_C.abi3.so."""
    file = PurePosixPath(path.replace("\\", "/"))
    if not file.name.endswith((".pyd", ".so")):
        return None
    return ".".join((*file.parent.parts, file.name.split(".")[0]))
