"""Linear maps between head vectors and a format's *feature space*, where attention is done on packed records.

A record decodes to `x' = f @ U^T` (x' the calibrated vector, `(x' * scale + offset)` the head vector),
with `f` the record's features: codebook levels times the record's scales, in the rotated basis.
IsoQuant/PlanarQuant: f = alpha * level[code] (d features), U^T = the inverse block rotation.
TurboQuant: f = [rho cos(theta) lvl(c_O), rho sin(theta) lvl(c_N), rho beta (2z - 1)] (2d features),
U^T maps them through the QJL sketch, the inverse Hadamard halves and the inverse channel permutation.

So `q . k = (q * s_k) @ U_k . f_k` (+ a per-query constant from the key offset, which softmax ignores),
the query is rotated once, and values are accumulated as features and mapped back once per output.
Fresh (unpacked) tokens enter the same space through `E` (U with the QJL columns zeroed, `U E^T = I`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats.params import ChannelParams
from ..formats.registry import get_format
from ..formats.turboquant import TurboQuant, channel_permutation


@dataclass(frozen=True)
class FeatureMaps:
    """Per-KV-head float32 maps for one format and calibration; leading dim is 1 when shared by all heads."""

    decode: torch.Tensor  # (H, F, d): features -> head vector, value scale folded in
    query: torch.Tensor   # (H, d, F): head vector -> features, key scale folded in
    encode: torch.Tensor  # (H, d, F): calibrated fresh vector -> features
    offset: torch.Tensor | None  # (H, d) added to decoded vectors
    inv_scale: torch.Tensor | None  # (H, d) divides fresh vectors (after the offset)
    centroid_shift: torch.Tensor | None = None  # (H, d) centroid - offset: what a flagged record adds
    position_shift: torch.Tensor | None = None  # (buckets, H, d) a position bucket's key offset - `offset`

    @property
    def num_features(self) -> int:
        return self.decode.shape[1]


def _decoder_rows(name: str, head_dim: int, outliers: list[int] | None) -> torch.Tensor:
    """U^T (F, d) in float64: row i is the calibrated vector that feature i alone decodes to."""
    fmt = get_format(name)
    if not isinstance(fmt, TurboQuant):
        eye = torch.eye(head_dim, dtype=torch.float32)
        return fmt.rotation(head_dim).inverse(eye).double()
    h = head_dim // 2
    rot_o, rot_n, sketch = fmt.transforms(head_dim)
    eye = torch.eye(2 * head_dim, dtype=torch.float32)
    y = eye[:, :head_dim] + sketch.inverse(eye[:, head_dim:])
    permuted = torch.cat((rot_o.inverse(y[:, :h]), rot_n.inverse(y[:, h:])), dim=-1)
    perm = torch.tensor(channel_permutation(head_dim, outliers))
    return torch.empty_like(permuted).index_copy_(1, perm, permuted).double()


def _per_head(t: torch.Tensor | None, num_kv_heads: int, head_dim: int) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float64).cpu().expand(num_kv_heads, head_dim)


def build_feature_maps(name: str, head_dim: int, num_kv_heads: int, params: ChannelParams | None,
                       device: torch.device) -> FeatureMaps:
    """The maps of format `name` for calibration `params` (validated by the format), moved to `device`."""
    fmt = get_format(name)
    params = fmt._check_params(params, head_dim)
    if params.outliers is None:
        rows = _decoder_rows(name, head_dim, None)[None]
    else:
        outliers = params.outliers.cpu().expand(num_kv_heads, params.outliers.shape[-1])
        rows = torch.stack([_decoder_rows(name, head_dim, o.tolist()) for o in outliers])
    scale = _per_head(params.scale, num_kv_heads, head_dim)
    table = None if params.position_offset is None else params.position_offset.to(torch.float64).cpu()
    offset = _per_head(params.offset if table is None else table[0], num_kv_heads, head_dim)
    if scale is not None:
        rows = rows.expand(num_kv_heads, *rows.shape[1:])
    encode = rows.clone()
    encode[:, head_dim:] = 0
    as32 = lambda t: None if t is None else t.to(device=device, dtype=torch.float32).contiguous()  # noqa: E731
    return FeatureMaps(
        decode=as32(rows if scale is None else rows * scale[:, None, :]),
        query=as32((rows if scale is None else rows * scale[:, None, :]).transpose(1, 2)),
        encode=as32(encode.transpose(1, 2)),
        offset=as32(offset),
        inv_scale=as32(None if scale is None else 1 / scale),
        centroid_shift=as32(None if params.centroid is None else
                            _per_head(params.centroid, num_kv_heads, head_dim) - (0 if offset is None else offset)),
        position_shift=as32(None if table is None else (table - table[:1]).expand(-1, num_kv_heads, head_dim)),
    )


def per_head_matmul(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """x (T, H, R, din) float32 times maps (1 or H, din, dout) per head -> (T, H, R, dout)."""
    if maps.shape[0] == 1:
        return x @ maps[0]
    return torch.einsum("thri,hio->thro", x, maps)
