"""safetensors dtype strings -> torch dtypes."""
from __future__ import annotations

import torch

from .errors import SafetensorsError

# Every element type of the safetensors format that torch has a matching byte-addressable dtype for.
DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "U16": torch.uint16,
    "I16": torch.int16,
    "U32": torch.uint32,
    "I32": torch.int32,
    "U64": torch.uint64,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
}

# Sub-byte element types of the format: torch only has packed pairs (float4_e2m1fn_x2), whose shape differs.
SUB_BYTE = frozenset({"F4", "F6_E2M3", "F6_E3M2"})

TORCH_TO_NAME: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


def torch_dtype(name: object, where: str) -> torch.dtype:
    """The torch dtype for a safetensors dtype string; `where` names the file and tensor for the error."""
    if isinstance(name, str) and name in DTYPES:
        return DTYPES[name]
    if isinstance(name, str) and name in SUB_BYTE:  # a JSON list or object here is unhashable
        raise SafetensorsError(f"{where}: sub-byte dtype {name} is not supported (torch has no per-element {name} type)")
    raise SafetensorsError(f"{where}: unknown dtype {name!r}; supported: {', '.join(DTYPES)}")
