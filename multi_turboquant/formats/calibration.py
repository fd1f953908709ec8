"""The calibration file (`turboquant_kv.json`): key and value ChannelParams per decoder layer and KV head.

Schema in docs/formats.md ("Calibration file"). `mtq calibrate MODEL` writes it; the vLLM plugin and
`mtq eval quality --calibration` read it with `load_calibration`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .params import FIELDS, ChannelParams
from .version import FORMAT_VERSION, READABLE_VERSIONS

KIND = "mtq-kv-calibration"
STREAMS = ("key", "value")
# Fields each format family reads: TurboQuant sends the outlier channels to its high-precision half
# (a per-channel scale would flatten them first); IsoQuant/PlanarQuant equalize channels with the scale.
FAMILY_FIELDS = {"turboquant": ("offset", "outliers", "centroid"), "isoquant": ("offset", "scale", "centroid"),
                 "planarquant": ("offset", "scale", "centroid")}


@dataclass(frozen=True)
class Calibration:
    """Per-layer (key, value) ChannelParams, tensors shaped (num_kv_heads, head_dim) or (num_kv_heads, k)."""

    head_dim: int
    num_kv_heads: int
    layers: tuple[tuple[ChannelParams | None, ChannelParams | None], ...]
    model: str = ""
    corpus: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, i: int, family: str | None = None) -> tuple[ChannelParams | None, ChannelParams | None]:
        """Key and value params of decoder layer i; with `family`, only the fields that family reads."""
        if not isinstance(i, int) or not 0 <= i < self.num_layers:
            raise ValueError(f"calibration has layers 0..{self.num_layers - 1}, asked for layer {i!r}")
        if family is None:
            return self.layers[i]
        if family not in FAMILY_FIELDS:
            raise ValueError(f"unknown format family {family!r}; known: {', '.join(FAMILY_FIELDS)}")
        keep = FAMILY_FIELDS[family]
        return tuple(  # type: ignore[return-value]
            None if p is None else ChannelParams(**{f: getattr(p, f) if f in keep else None
                                                    for f in FIELDS})
            for p in self.layers[i]
        )

    def validate(self) -> None:
        """ValueError naming the layer and field when a tensor has the wrong shape or is not finite."""
        for name, v in (("head_dim", self.head_dim), ("num_kv_heads", self.num_kv_heads)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"calibration: {name} must be a positive integer, got {v!r}")
        if self.format_version not in READABLE_VERSIONS:
            raise ValueError(f"calibration is for format version {self.format_version!r}, this build reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        if not self.layers:
            raise ValueError("calibration has no layers")
        for i, pair in enumerate(self.layers):
            for stream, p in zip(STREAMS, pair):
                if p is None:
                    continue
                where = f"calibration layer {i} {stream}"
                for field in ("offset", "scale", "centroid"):
                    t = getattr(p, field)
                    if t is not None and tuple(t.shape) != (self.num_kv_heads, self.head_dim):
                        raise ValueError(f"{where}: {field} has shape {tuple(t.shape)}, expected "
                                         f"({self.num_kv_heads}, {self.head_dim})")
                if p.outliers is not None and (p.outliers.dim() != 2 or p.outliers.shape[0] != self.num_kv_heads):
                    raise ValueError(f"{where}: outliers have shape {tuple(p.outliers.shape)}, expected "
                                     f"({self.num_kv_heads}, k)")
                p.validate(where, self.head_dim)


def _params_json(p: ChannelParams | None) -> dict | None:
    if p is None:
        return None
    return {f: getattr(p, f).tolist() for f in FIELDS if getattr(p, f) is not None}


def _params_from_json(data: dict | None, where: str) -> ChannelParams | None:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) - set(FIELDS):
        raise ValueError(f"{where}: expected an object with {'/'.join(FIELDS)}, got {str(data)[:80]}")
    try:
        return ChannelParams(**{f: torch.tensor(v, dtype=torch.int64 if f == "outliers" else torch.float32)
                                for f, v in data.items()})
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{where}: {e}") from None


def save_calibration(
    path: str | Path,
    layers: list[tuple[ChannelParams | None, ChannelParams | None]],
    *,
    head_dim: int,
    num_kv_heads: int,
    model: str,
    corpus: str,
) -> Calibration:
    """Validate and write the calibration file; returns what was written."""
    cal = Calibration(head_dim, num_kv_heads, tuple(layers), model, corpus)
    cal.validate()
    doc = {
        "kind": KIND, "format_version": FORMAT_VERSION, "model": model, "corpus": corpus,
        "head_dim": head_dim, "num_kv_heads": num_kv_heads, "num_layers": cal.num_layers,
        "layers": [{"layer": i, "key": _params_json(k), "value": _params_json(v)} for i, (k, v) in enumerate(layers)],
    }
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"calibration output {str(path)!r} is a directory; name a file, e.g. {str(path / 'turboquant_kv.json')!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, allow_nan=False))
    return cal


def load_calibration(path: str | Path) -> Calibration:
    """Read and validate a calibration file; ValueError for a bad path, version, shape, missing layer or NaN."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"calibration file {str(p)!r} not found")
    try:
        doc = json.loads(p.read_text(), parse_constant=lambda c: math.nan)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"calibration file {str(p)!r} is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise ValueError(f"{str(p)!r} is not an mtq calibration file (kind {KIND!r})")
    if doc.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"calibration file is for format version {doc.get('format_version')!r}, "
                         f"this build reads {', '.join(map(str, READABLE_VERSIONS))}")
    n = doc.get("num_layers")
    entries = doc.get("layers")
    if not isinstance(n, int) or not isinstance(entries, list):
        raise ValueError("calibration file needs num_layers and a layers list")
    by_index = {e.get("layer"): e for e in entries if isinstance(e, dict)}
    missing = [i for i in range(n) if i not in by_index]
    if missing or len(entries) != n:
        raise ValueError(f"calibration file lists {len(entries)} layers for num_layers {n}; missing {missing[:8]}")
    layers = tuple((_params_from_json(by_index[i].get("key"), f"calibration layer {i} key"),
                    _params_from_json(by_index[i].get("value"), f"calibration layer {i} value")) for i in range(n))
    cal = Calibration(doc.get("head_dim"), doc.get("num_kv_heads"), layers, str(doc.get("model", "")),
                      str(doc.get("corpus", "")), doc["format_version"])
    cal.validate()
    return cal
