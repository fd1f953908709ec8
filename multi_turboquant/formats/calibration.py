"""The calibration file (`turboquant_kv.json`): key and value ChannelParams per decoder layer and KV head.

Schema in docs/formats.md ("Calibration file"). `mtq calibrate MODEL` writes it; the vLLM plugin and
`mtq eval quality --calibration` read it with `load_calibration`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .params import FIELDS, OFFSET_BUCKET, ChannelParams
from .version import FORMAT_VERSION, READABLE_VERSIONS

KIND = "mtq-kv-calibration"
STREAMS = ("key", "value")
# Fields each format family reads: TurboQuant sends the outlier channels to its high-precision half
# (a per-channel scale would flatten them first); IsoQuant/PlanarQuant equalize channels with the scale.
FAMILY_FIELDS = {"turboquant": ("offset", "outliers", "centroid", "position_offset"),
                 "isoquant": ("offset", "scale", "centroid", "position_offset"),
                 "planarquant": ("offset", "scale", "centroid", "position_offset")}
FILE_FIELDS = ("offset", "scale", "outliers", "centroid", "rope_mean")  # a stream's fields in the file


@lru_cache(maxsize=8)
def _bucket_turns(inv_freq: tuple[float, ...], scaling: float, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (rows, 1, d/2) float64 of p * inv_freq times scaling, averaged over each row's positions."""
    p = torch.arange(rows * OFFSET_BUCKET, dtype=torch.float64)
    angle = p[:, None] * torch.tensor(inv_freq, dtype=torch.float64)[None, :]
    return tuple((f(angle) * scaling).reshape(rows, OFFSET_BUCKET, -1).mean(1)[:, None] for f in (torch.cos, torch.sin))


@dataclass(frozen=True)
class Rope:
    """The model's rotary embedding, rotate-half style: R_p turns channel pair (i, i + d/2) by p * inv_freq[i] and
    multiplies by attention_scaling. `horizon`: the positions the calibration describes (its key scales)."""

    inv_freq: torch.Tensor  # (d/2,)
    attention_scaling: float
    horizon: int

    def position_offset(self, mean: torch.Tensor, rows: int) -> torch.Tensor:
        """(rows, H, d) float32: row b = the mean over positions b*OFFSET_BUCKET.. of the next OFFSET_BUCKET of
        R_p mean, for a pre-RoPE mean (H, d)."""
        cos, sin = _bucket_turns(tuple(self.inv_freq.tolist()), self.attention_scaling, rows)
        a, b = mean.double().chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).float()

    def to_json(self) -> dict:
        return {"inv_freq": self.inv_freq.tolist(), "attention_scaling": self.attention_scaling,
                "horizon": self.horizon}

    @classmethod
    def from_json(cls, data: object) -> "Rope":
        if not isinstance(data, dict) or set(data) != {"inv_freq", "attention_scaling", "horizon"}:
            raise ValueError(f"calibration rope: expected inv_freq, attention_scaling and horizon, got {str(data)[:80]}")
        try:
            rope = cls(torch.tensor(data["inv_freq"], dtype=torch.float64), float(data["attention_scaling"]),
                       int(data["horizon"]))
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"calibration rope: {e}") from None
        if rope.inv_freq.dim() != 1 or not torch.isfinite(rope.inv_freq).all() or rope.horizon < 1 \
                or not math.isfinite(rope.attention_scaling):
            raise ValueError("calibration rope: inv_freq must be a finite list, horizon a positive integer")
        return rope


@dataclass(frozen=True)
class Calibration:
    """Per-layer (key, value) ChannelParams, tensors shaped (num_kv_heads, head_dim) or (num_kv_heads, k)."""

    head_dim: int
    num_kv_heads: int
    layers: tuple[tuple[ChannelParams | None, ChannelParams | None], ...]
    model: str = ""
    corpus: str = ""
    format_version: int = FORMAT_VERSION
    rope: Rope | None = None
    rope_means: tuple[torch.Tensor | None, ...] = ()  # per layer: the keys' mean before RoPE (H, d), or None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, i: int, family: str | None = None,
              positions: int | None = None) -> tuple[ChannelParams | None, ChannelParams | None]:
        """Key and value params of decoder layer i; with `family`, only the fields that family reads. A layer with
        a pre-RoPE key mean gets a key position_offset covering `positions` (default: the rope's horizon)."""
        if not isinstance(i, int) or not 0 <= i < self.num_layers:
            raise ValueError(f"calibration has layers 0..{self.num_layers - 1}, asked for layer {i!r}")
        key, value = self.layers[i]
        mean = self.rope_means[i] if self.rope_means else None
        if mean is not None:
            span = positions or self.rope.horizon
            table = self.rope.position_offset(mean, -(-span // OFFSET_BUCKET))
            key = ChannelParams(None, key.scale, key.outliers, key.centroid, table)
        if family is None:
            return key, value
        return for_family(key, family), for_family(value, family)

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
        if self.rope_means and len(self.rope_means) != self.num_layers:
            raise ValueError(f"calibration has {len(self.rope_means)} rope means for {self.num_layers} layers")
        for i, mean in enumerate(self.rope_means):
            if mean is None:
                continue
            where = f"calibration layer {i} key rope_mean"
            if self.rope is None or self.rope.inv_freq.numel() * 2 != self.head_dim:
                raise ValueError(f"{where}: needs a rope with head_dim/2 = {self.head_dim // 2} frequencies")
            if tuple(mean.shape) != (self.num_kv_heads, self.head_dim) or not torch.isfinite(mean).all():
                raise ValueError(f"{where}: must be finite and ({self.num_kv_heads}, {self.head_dim}), got "
                                 f"{tuple(mean.shape)}")
            if self.layers[i][0] is None or self.layers[i][0].offset is not None:
                raise ValueError(f"{where}: replaces the key offset, which must be absent (and the key stream present)")
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


def for_family(params: ChannelParams | None, family: str) -> ChannelParams | None:
    """`params` with only the fields format family `family` reads (FAMILY_FIELDS)."""
    if family not in FAMILY_FIELDS:
        raise ValueError(f"unknown format family {family!r}; known: {', '.join(FAMILY_FIELDS)}")
    if params is None:
        return None
    keep = FAMILY_FIELDS[family]
    return ChannelParams(**{f: getattr(params, f) if f in keep else None for f in FIELDS})


def _params_json(p: ChannelParams | None, rope_mean: torch.Tensor | None = None) -> dict | None:
    if p is None:
        return None
    if p.position_offset is not None:
        raise ValueError("a position_offset table is not saved: save the pre-RoPE key mean (rope_mean) instead")
    doc = {f: getattr(p, f).tolist() for f in FIELDS if getattr(p, f) is not None}
    return doc if rope_mean is None else {**doc, "rope_mean": rope_mean.tolist()}


def _params_from_json(data: dict | None, where: str) -> tuple[ChannelParams | None, torch.Tensor | None]:
    """A stream's params and its rope_mean (or None)."""
    if data is None:
        return None, None
    if not isinstance(data, dict) or set(data) - set(FILE_FIELDS):
        raise ValueError(f"{where}: expected an object with {'/'.join(FILE_FIELDS)}, got {str(data)[:80]}")
    try:
        tensors = {f: torch.tensor(v, dtype=torch.int64 if f == "outliers" else torch.float32) for f, v in data.items()}
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{where}: {e}") from None
    mean = tensors.pop("rope_mean", None)
    return ChannelParams(**tensors), mean


def save_calibration(
    path: str | Path,
    layers: list[tuple[ChannelParams | None, ChannelParams | None]],
    *,
    head_dim: int,
    num_kv_heads: int,
    model: str,
    corpus: str,
    rope: Rope | None = None,
    rope_means: tuple[torch.Tensor | None, ...] = (),
) -> Calibration:
    """Validate and write the calibration file; returns what was written. rope_means: per layer, the keys' mean
    before RoPE (H, d), which replaces the key offset by a position-dependent one (docs/formats.md)."""
    cal = Calibration(head_dim, num_kv_heads, tuple(layers), model, corpus, rope=rope, rope_means=tuple(rope_means))
    cal.validate()
    means = cal.rope_means or (None,) * cal.num_layers
    doc = {
        "kind": KIND, "format_version": FORMAT_VERSION, "model": model, "corpus": corpus,
        "head_dim": head_dim, "num_kv_heads": num_kv_heads, "num_layers": cal.num_layers,
        **({} if rope is None else {"rope": rope.to_json()}),
        "layers": [{"layer": i, "key": _params_json(k, mean), "value": _params_json(v)}
                   for i, ((k, v), mean) in enumerate(zip(layers, means))],
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
    keys = [_params_from_json(by_index[i].get("key"), f"calibration layer {i} key") for i in range(n)]
    values = [_params_from_json(by_index[i].get("value"), f"calibration layer {i} value") for i in range(n)]
    if any(v[1] is not None for v in values):
        raise ValueError("calibration file: rope_mean applies to keys only")
    means = tuple(k[1] for k in keys)
    rope = Rope.from_json(doc["rope"]) if "rope" in doc else None
    cal = Calibration(doc.get("head_dim"), doc.get("num_kv_heads"), tuple((k[0], v[0]) for k, v in zip(keys, values)),
                      str(doc.get("model", "")), str(doc.get("corpus", "")), doc["format_version"], rope,
                      means if any(m is not None for m in means) else ())
    cal.validate()
    return cal
