"""Everything that touches vLLM internals, for vLLM 0.26.x to 0.33.x; where those releases differ, the branches below
read the running version (docs/vllm.md says what changed where and what was tested on which)."""
from __future__ import annotations

import copy
import functools
import inspect
import re
from collections.abc import Callable, Iterable

import torch

SUPPORTED_VERSIONS = ("0.26", "0.27", "0.28", "0.29", "0.30", "0.31", "0.32", "0.33")
# The first release of each change to what the plugin touches (read in each release's source):
STATE_CONTENT_BYTES = (0, 28)  # AttentionSpec.state_content_bytes sizes a page; before, real_page_size_bytes did
SPEC_CACHE_VIEWS = (0, 29)  # each layer's cache is viewed from its spec in a KVCacheLayout that all backends accept;
# before, the backend's get_kv_cache_shape gave its shape
DTYPE_REGISTRY = (0, 33)  # register_kv_cache_dtype and KV_CACHE_DTYPES list the names; before, the CacheDType Literal


class UnsupportedVLLMVersion(ValueError):
    pass


def supported_range() -> str:
    return f"{SUPPORTED_VERSIONS[0]}.x to {SUPPORTED_VERSIONS[-1]}.x"


def minor_version(version: str) -> tuple[int, int]:
    """(0, 32) for "0.32.0", "0.32.1rc1" or "0.32.0+cpu"."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise UnsupportedVLLMVersion(f"multi-turboquant cannot read the vLLM version {version!r}")
    return int(match[1]), int(match[2])


def check_version(version: str) -> None:
    """Raise UnsupportedVLLMVersion unless `version` is a release of a supported minor version."""
    if "%d.%d" % minor_version(version) not in SUPPORTED_VERSIONS:
        raise UnsupportedVLLMVersion(
            f"multi-turboquant supports vLLM {supported_range()}; this is vLLM {version}. "
            "Install a supported vLLM or a newer multi-turboquant.")


def _running() -> tuple[int, int]:
    import vllm

    return minor_version(vllm.__version__)


class Patches:
    """Changes made to vLLM's objects, each with its undo; `undo()` reverts them, newest first."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], object]] = []

    def on_undo(self, undo: Callable[[], object]) -> None:
        self._undo.append(undo)

    def setattr(self, owner: object, name: str, value: object) -> None:
        """setattr(owner, name, value); undone by restoring `owner`'s own entry, or removing it if it had none."""
        own = vars(owner)
        self.on_undo(functools.partial(setattr, owner, name, own[name]) if name in own else
                     functools.partial(delattr, owner, name))
        setattr(owner, name, value)

    def setitem(self, mapping: dict, key: object, value: object) -> None:
        """mapping[key] = value; undone by restoring the old value, or removing the key if it had none."""
        self.on_undo(functools.partial(mapping.__setitem__, key, mapping[key]) if key in mapping else
                     functools.partial(mapping.pop, key, None))
        mapping[key] = value

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


def install(names: Iterable[str], backend_qualname: str, check: Callable[[object], None],
            kept: Callable[[int, object], bool], make_spec: Callable) -> None:
    """Register the formats `names` with vLLM (see the three functions called); if one step fails, vLLM's objects
    are restored as they were and the error is raised."""
    names = tuple(names)
    patches = Patches()
    try:
        add_cache_dtypes(names, patches)
        route_attention(backend_qualname, check, names, patches)
        hook_attention_layers(names, kept, make_spec, patches)
    except BaseException:
        patches.undo()
        raise


def accepted_cache_dtypes() -> tuple[str, ...]:
    """The kv_cache_dtype values vLLM accepts now."""
    from vllm.config import cache

    if _running() >= DTYPE_REGISTRY:
        return tuple(cache.KV_CACHE_DTYPES)
    return cache.CacheDType.__args__


class _RawBytes:
    """vLLM 0.33's handler of one of our names: uint8 storage and no generic quantization mode (NONE, what earlier
    releases gave our names; 0.33's KVQuantMode.CUSTOM has the value of OCTAVE_K3V4, which selects Octave kernels)."""

    name = ""

    def torch_dtype(self) -> torch.dtype:
        return torch.uint8

    def quant_mode(self):
        from vllm.v1.kv_cache_interface import KVQuantMode

        return KVQuantMode.NONE


def _discard(items: list, item: object) -> None:
    if item in items:
        items.remove(item)


def add_cache_dtypes(names: Iterable[str], patches: Patches) -> None:
    """Make vLLM accept `names` as kv_cache_dtype values, stored as raw bytes (torch.uint8)."""
    from vllm.config import cache
    from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE

    new = tuple(n for n in names if n not in accepted_cache_dtypes())
    if not new:
        return
    if _running() >= DTYPE_REGISTRY:
        for name in new:  # register_kv_cache_dtype fills these three tables
            patches.on_undo(functools.partial(_discard, cache.KV_CACHE_DTYPES, name))
            patches.on_undo(functools.partial(STR_DTYPE_TO_TORCH_DTYPE.pop, name, None))
            patches.on_undo(functools.partial(cache._KV_CACHE_DTYPE_HANDLERS.pop, name, None))
            cache.register_kv_cache_dtype(name)(type(f"RawBytes_{name}", (_RawBytes,), {"name": name}))
        return
    from pydantic.dataclasses import rebuild_dataclass

    # The Literal is one object shared by CacheConfig, the --kv-cache-dtype choices and the attention selector;
    # CacheConfig's pydantic validator is rebuilt from it (again on undo, after the Literal is restored).
    rebuild = functools.partial(rebuild_dataclass, cache.CacheConfig, force=True)
    patches.on_undo(rebuild)
    patches.setattr(cache.CacheDType, "__args__", cache.CacheDType.__args__ + new)
    rebuild()
    for name in new:
        patches.setitem(STR_DTYPE_TO_TORCH_DTYPE, name, torch.uint8)


def route_attention(backend_qualname: str, check: Callable[[object], None], names: Iterable[str],
                    patches: Patches) -> None:
    """Make the current platform pick `backend_qualname` for layers whose kv_cache_dtype is in `names`.

    `check(selector_config)` runs first and raises for layers the formats cannot serve (MLA, sinks, ...).
    """
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends import registry

    # what register_backend(AttentionBackendEnum.CUSTOM, backend_qualname) does, but undoable
    patches.setitem(registry._ATTN_OVERRIDES, registry.AttentionBackendEnum.CUSTOM, backend_qualname)
    platform = type(current_platform)
    original = platform.get_attn_backend_cls
    if getattr(original, "_mtq", False):
        return
    names = frozenset(names)

    @functools.wraps(original)
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):
        if attn_selector_config.kv_cache_dtype in names:
            check(attn_selector_config)
            return backend_qualname
        return original(selected_backend, attn_selector_config, num_heads=num_heads)

    get_attn_backend_cls._mtq = True
    patches.setattr(platform, "get_attn_backend_cls", classmethod(get_attn_backend_cls))


def hook_attention_layers(names: Iterable[str], kept: Callable[[int, object], bool], make_spec: Callable,
                          patches: Patches) -> None:
    """Patch vLLM's Attention layer: layers `kept(index, vllm_config)` keep the model dtype; ours get `make_spec`."""
    from vllm.config import get_current_vllm_config
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.model_executor.models.utils import extract_layer_index

    if getattr(Attention.__init__, "_mtq", False):
        return
    names = frozenset(names)
    original_init, original_spec = Attention.__init__, Attention.get_kv_cache_spec
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        cache_config = bound.arguments.get("cache_config")
        if cache_config is not None and cache_config.cache_dtype in names:
            try:
                index = extract_layer_index(bound.arguments.get("prefix", ""))
            except (AssertionError, ValueError):
                index = None
            if index is not None and kept(index, get_current_vllm_config()):
                cache_config = copy.copy(cache_config)
                object.__setattr__(cache_config, "cache_dtype", "auto")
                bound.arguments["cache_config"] = cache_config
        original_init(*bound.args, **bound.kwargs)

    def get_kv_cache_spec(self, vllm_config):
        if self.kv_cache_dtype in names and self.attn_type == "decoder":
            return make_spec(self, vllm_config)
        return original_spec(self, vllm_config)

    __init__._mtq = True
    patches.setattr(Attention, "__init__", __init__)
    patches.setattr(Attention, "get_kv_cache_spec", get_kv_cache_spec)


def packed_kv_spec(*, block_size: int, num_kv_heads: int, head_size: int, head_size_v: int, slot_bytes: int,
                   sliding_window: int | None = None):
    """A KV-cache spec whose page is block_size x num_kv_heads x slot_bytes uint8, no padding: full attention, or
    given `sliding_window` vLLM's SlidingWindowSpec, whose manager frees the blocks that left the window (as for
    the model dtype; the pages match the full-attention layers' at the same block size)."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec

    fields = dict(block_size=block_size, num_kv_heads=num_kv_heads, head_size=head_size, head_size_v=head_size_v,
                  dtype=torch.uint8)
    if sliding_window is not None:
        fields["sliding_window"] = sliding_window
    if _running() >= STATE_CONTENT_BYTES:
        spec = FullAttentionSpec if sliding_window is None else SlidingWindowSpec
        return spec(**fields, state_content_bytes=slot_bytes)
    from .spec import PackedKVSpec, PackedSlidingWindowSpec

    spec = PackedKVSpec if sliding_window is None else PackedSlidingWindowSpec
    return spec(**fields, slot_bytes=slot_bytes)


def head_major_layouts() -> tuple | None:
    """vLLM 0.29+: the KV-cache layouts the kernels read, one contiguous (blocks, KV heads, block_size, slot_bytes)
    tensor per layer as kernels/layout.py describes (LBHNC, the CPU backend's only one); None before 0.29."""
    if _running() < SPEC_CACHE_VIEWS:
        return None
    from vllm.v1.kv_cache_interface import KVCacheLayout

    return (KVCacheLayout.LBHNC,)


def host_seq_lens(metadata: object) -> torch.Tensor | None:
    """The batch's sequence lengths on the host without a device sync (exact for prefill rows), or None."""
    return getattr(metadata, "seq_lens_cpu_upper_bound", None)


def flash_attn_varlen() -> Callable[..., torch.Tensor] | None:
    """vLLM's FlashAttention varlen function (kernels/prefill.VarlenAttention) with the version vLLM picks for this
    GPU; None where vLLM has none (its CPU build, other platforms)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        return None
    try:
        from vllm.v1.attention.backends.fa_utils import get_flash_attn_version
        from vllm.vllm_flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return functools.partial(flash_attn_varlen_func, fa_version=get_flash_attn_version())
