"""Per-channel parameters a format may take from calibration (per layer and KV head)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .version import FORMAT_VERSION, READABLE_VERSIONS

FIELDS = ("offset", "scale", "outliers", "centroid", "position_offset")
OFFSET_BUCKET = 256  # positions per row of a position_offset table


def offset_rows(positions: torch.Tensor, rows: int) -> torch.Tensor:
    """The position_offset row of each position: position // OFFSET_BUCKET, the last row for positions past it."""
    return (positions.long() // OFFSET_BUCKET).clamp(0, rows - 1)


@dataclass(frozen=True)
class ChannelParams:
    """Optional calibration for one tensor stream (e.g. the keys of one layer).

    offset: (..., d) subtracted before encoding and added back after decoding (key means are
        softmax-invariant: q.(k - mu) differs from q.k by a per-query constant).
    scale: (..., d) positive; channels are divided by it before encoding (fold it into the query).
    outliers: (..., k) channel indices, k <= d/2, sent to the higher-precision half (TurboQuant only).
    centroid: (..., d) a second offset (format version 2; the attention sink's key): a vector nearer to it than
        to `offset` in the calibrated space is stored relative to it, flagged by its record's scale sign bit.
    position_offset: (rows, heads, d) an offset that depends on the vector's position p (keys after RoPE): row
        `p // OFFSET_BUCKET` (the last row past the table). It replaces `offset`; codecs take `at(positions)`.
    Leading dims broadcast against the encoded tensor's (..., heads, d), e.g. (heads, d).
    """

    offset: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    outliers: torch.Tensor | None = None
    centroid: torch.Tensor | None = None
    position_offset: torch.Tensor | None = None

    def validate(self, name: str, head_dim: int) -> None:
        """Raise ValueError naming the format and the field when a tensor does not fit head_dim."""
        for field in ("offset", "scale", "centroid", "position_offset"):
            t = getattr(self, field)
            if t is None:
                continue
            if t.shape[-1] != head_dim:
                raise ValueError(f"{name}: {field} has last dim {t.shape[-1]}, expected head_dim {head_dim}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}: {field} contains NaN or Inf")
        if self.position_offset is not None:
            if self.offset is not None:
                raise ValueError(f"{name}: give offset or position_offset, not both")
            if self.position_offset.dim() != 3 or self.position_offset.shape[0] < 1:
                raise ValueError(f"{name}: position_offset must be (rows, heads, d), got "
                                 f"{tuple(self.position_offset.shape)}")
        if self.scale is not None and not (self.scale > 0).all():
            raise ValueError(f"{name}: scale must be positive")
        if self.outliers is not None:
            o = self.outliers
            if o.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"{name}: outliers must be an integer tensor, got {o.dtype}")
            if o.shape[-1] > head_dim // 2:
                raise ValueError(f"{name}: {o.shape[-1]} outlier channels exceed head_dim/2 = {head_dim // 2}")
            if o.numel() and (o.min() < 0 or o.max() >= head_dim):
                raise ValueError(f"{name}: outlier channel index out of range 0..{head_dim - 1}")
            s = o.sort(dim=-1).values
            if o.shape[-1] > 1 and (s[..., 1:] == s[..., :-1]).any():
                raise ValueError(f"{name}: outlier channel indices repeat")

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            **{k: getattr(self, k).tolist() for k in FIELDS if getattr(self, k) is not None},
        }

    @classmethod
    def from_json(cls, data: dict) -> "ChannelParams":
        if data.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(
                f"channel parameters are for format version {data.get('format_version')!r}, "
                f"this build reads {', '.join(map(str, READABLE_VERSIONS))}"
            )
        return cls(**{f: torch.tensor(data[f], dtype=torch.int64 if f == "outliers" else torch.float32)
                      for f in FIELDS if f in data})

    def map(self, fn) -> "ChannelParams":
        """These params with fn applied to each tensor present."""
        return ChannelParams(**{f: None if getattr(self, f) is None else fn(getattr(self, f)) for f in FIELDS})

    @property
    def positional(self) -> bool:
        return self.position_offset is not None

    def at(self, positions: torch.Tensor) -> "ChannelParams":
        """These params for vectors at `positions` (the encoded tensor's leading dims before (heads, d)): the
        position_offset rows become a plain per-vector offset."""
        if self.position_offset is None:
            return self
        table = self.position_offset
        offset = table[offset_rows(positions.to(table.device), table.shape[0])]
        return ChannelParams(offset, self.scale, self.outliers, self.centroid)

    def recentered(self) -> "ChannelParams":
        """These params with the centroid as the offset (how a flagged vector is calibrated)."""
        return ChannelParams(self.centroid, self.scale, self.outliers)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> "ChannelParams":
        return cls.from_json(json.loads(Path(path).read_text()))


def fit_channel_params(
    samples: torch.Tensor, *, n_outliers: int = 0, center: bool = False, equalize: bool = False
) -> ChannelParams:
    """Calibrate from samples (tokens, ..., d): per-channel mean (`center`), per-channel RMS after
    centering as the scale (`equalize`), and the `n_outliers` channels of largest RMS."""
    x = samples.to(torch.float32).reshape(-1, *samples.shape[-(samples.dim() - 1):]) if samples.dim() > 1 else None
    if x is None:
        raise ValueError("calibration samples need a token axis and a head_dim axis")
    x = x.double()
    return params_from_moments(x.mean(0), x.pow(2).mean(0), n_outliers=n_outliers, center=center, equalize=equalize)


def params_from_moments(mean: torch.Tensor, square: torch.Tensor, *, n_outliers: int = 0, center: bool = False,
                        equalize: bool = False) -> ChannelParams:
    """fit_channel_params from the per-channel mean and mean square (..., d) of the samples (float32 params)."""
    mean, square = mean.double(), square.double()
    params = params_from_rms((square - mean.pow(2) if center else square).clamp_min(0).sqrt(), n_outliers, equalize)
    return ChannelParams(offset=mean.float() if center else None, scale=params.scale, outliers=params.outliers)


def params_from_rms(rms: torch.Tensor, n_outliers: int = 0, equalize: bool = False) -> ChannelParams:
    """Scale (the RMS floored at 1e-3 of the head's mean, with `equalize`) and the n_outliers largest-RMS channels."""
    rms = rms.float()
    outliers = rms.topk(n_outliers, dim=-1).indices.sort(-1).values if n_outliers else None
    scale = rms.clamp_min(rms.mean(-1, keepdim=True) * 1e-3) if equalize else None
    return ChannelParams(scale=scale, outliers=outliers)
