"""Write tests/vectors/<format>.json: inputs (float32 bit patterns) -> expected packed bytes.

Run only when the format version changes: the files are the spec's ground truth, checked by
tests/test_vectors.py on every device.
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import torch

from multi_turboquant import FORMAT_VERSION, FORMATS, ChannelParams

HEAD_DIMS = (64, 96, 128, 256)


def f32_hex(t: torch.Tensor) -> list[str]:
    return [struct.pack("<f", v).hex() for v in t.to(torch.float32).flatten().tolist()]


def cases(head_dim: int, g: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    gauss = torch.randn(2, head_dim, generator=g)
    outl = torch.randn(2, head_dim, generator=g)
    outl[:, [3, head_dim // 2 + 3]] *= torch.tensor([20.0, 45.0])
    tiny = torch.randn(1, head_dim, generator=g) * 1e-3
    return [("gaussian", gauss), ("outliers", outl), ("tiny", tiny), ("zero", torch.zeros(1, head_dim))]


def params_for(fmt, head_dim: int, g: torch.Generator) -> ChannelParams:
    offset = torch.randn(head_dim, generator=g) * 0.5
    scale = torch.rand(head_dim, generator=g) + 0.5
    outliers = torch.tensor([1, 7, head_dim - 2]) if fmt.family == "turboquant" else None
    return ChannelParams(offset=offset, scale=scale, outliers=outliers)


def build(name: str) -> dict:
    fmt = FORMATS[name]
    g = torch.Generator().manual_seed(1234)
    entries = []
    for d in HEAD_DIMS:
        for label, x in cases(d, g):
            entries.append({"head_dim": d, "case": label, "input": f32_hex(x),
                            "packed": [bytes(r.tolist()).hex() for r in fmt.encode(x)]})
        x = torch.randn(2, d, generator=g)
        p = params_for(fmt, d, g)
        entries.append({"head_dim": d, "case": "calibrated", "input": f32_hex(x), "params": p.to_json(),
                        "packed": [bytes(r.tolist()).hex() for r in fmt.encode(x, p)]})
    g = torch.Generator().manual_seed(5678)  # version 2's cases, after (and apart from) version 1's
    for d in HEAD_DIMS:
        p = params_for(fmt, d, g)
        centroid = torch.randn(d, generator=g) * 2
        p = ChannelParams(p.offset, p.scale, p.outliers, centroid)
        # near the centroid (flagged), random (not), the centroid itself (flagged, scale 0: decodes to it exactly)
        x = torch.cat((centroid + 0.1 * torch.randn(2, d, generator=g), torch.randn(2, d, generator=g),
                       centroid[None]))
        entries.append({"head_dim": d, "case": "centroid", "input": f32_hex(x), "params": p.to_json(),
                        "packed": [bytes(r.tolist()).hex() for r in fmt.encode(x, p)]})
    return {"format": name, "format_version": FORMAT_VERSION, "vectors": entries}


def main(out_dir: str = "tests/vectors") -> None:
    for name in FORMATS:
        path = Path(out_dir) / f"{name}.json"
        path.write_text(json.dumps(build(name), indent=1) + "\n")
        print("wrote", path)


if __name__ == "__main__":
    main(*sys.argv[1:])
