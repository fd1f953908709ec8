"""Memory-mapped safetensors loader that streams large tensors to the device in bounded chunks.

`iter_weights(path, device)` yields (name, tensor) pairs like vLLM's weight iterators; `load_weights`
returns a dict. `vllm_loader.register()` adds the `mtq_mmap` load format to vLLM.
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "Checkpoint": ".checkpoint", "resolve_checkpoint": ".checkpoint", "SafetensorsError": ".errors",
    "Header": ".header", "TensorInfo": ".header", "read_header": ".header", "SafetensorsFile": ".safetensors_file",
    "DEFAULT_CHUNK_BYTES": ".streamer", "DeviceStreamer": ".streamer",
    "iter_files": ".weights", "iter_weights": ".weights", "load_weights": ".weights",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
