"""Bit-plane packing of b-bit codes into bytes (the payload layout of every format).

A b-bit code is split into planes of 4, 2 and 1 bits (b = 3 -> a 2-bit plane of the low bits, then a
1-bit plane of the high bit). A plane of width w packs 8/w codes per byte: code i sits in byte
i // (8/w) at bit offset w * (i % (8/w)) (least significant bits first).
"""
from __future__ import annotations

import torch


def plane_widths(bits: int) -> tuple[int, ...]:
    """Widths of the planes of a b-bit code, lowest bits first (3 -> (2, 1), 5 -> (4, 1))."""
    if not 1 <= bits <= 8:
        raise ValueError(f"code width must be 1..8 bits, got {bits}")
    return tuple(w for w in (4, 2, 1) if bits & w) if bits != 8 else (8,)


def packed_bytes(n: int, bits: int) -> int:
    """Bytes taken by n codes of `bits` bits (n must fill whole bytes in every plane)."""
    total = 0
    for w in plane_widths(bits):
        if (n * w) % 8:
            raise ValueError(f"{n} codes of a {w}-bit plane do not fill whole bytes")
        total += n * w // 8
    return total


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (..., n) -> uint8 bytes (..., packed_bytes(n, bits))."""
    out = []
    shift = 0
    for w in plane_widths(bits):
        per_byte = 8 // w
        plane = ((codes >> shift) & ((1 << w) - 1)).view(*codes.shape[:-1], codes.shape[-1] // per_byte, per_byte)
        byte = plane[..., 0].clone()
        for j in range(1, per_byte):
            byte |= plane[..., j] << (w * j)
        out.append(byte)
        shift += w
    return torch.cat(out, dim=-1)


def unpack(data: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """uint8 bytes (..., packed_bytes(n, bits)) -> uint8 codes (..., n)."""
    codes = torch.zeros(*data.shape[:-1], n, dtype=torch.int32, device=data.device)
    offset = 0
    shift = 0
    for w in plane_widths(bits):
        nbytes = n * w // 8
        plane = data[..., offset:offset + nbytes].to(torch.int32)
        shifts = torch.arange(0, 8, w, dtype=torch.int32, device=data.device)
        parts = (plane.unsqueeze(-1) >> shifts) & ((1 << w) - 1)
        codes |= parts.reshape(*data.shape[:-1], n) << shift
        offset += nbytes
        shift += w
    return codes.to(torch.uint8)
