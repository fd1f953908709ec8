"""`mtq calibrate`: per-layer, per-KV-head channel statistics of real post-RoPE K and V.

Post-RoPE key statistics depend on the position: RoPE turns each channel pair (i, i + d/2) by an angle that grows
with it, so a mean measured over the positions of short calibration windows is wrong far beyond them. With a
`horizon` L, the key statistics are those of keys at positions spread uniformly over [0, L): measured before RoPE
(the windows' keys turned back by their positions) and carried through the average rotation of each pair.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..formats import ChannelParams
from ..formats.calibration import Rope
from ..formats.params import OFFSET_BUCKET, fit_channel_params, params_from_moments, params_from_rms
from .hooks import LoadedModel


@dataclass(frozen=True)
class LayerKV:
    """Post-RoPE samples of one layer: keys and values (tokens, kv_heads, head_dim), the mean square per channel
    of the queries each KV head serves and the mean key at position 0 of a window (the attention sink), both
    (kv_heads, head_dim)."""

    key: torch.Tensor
    value: torch.Tensor
    query_ms: torch.Tensor
    sink_key: torch.Tensor
    pre_rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # keys before RoPE: E[x], E[x^2] (H, d)
    #   and E[x_i x_(i+d/2)] (H, d/2); None for a model without a rotary embedding


PER_LAYER_ROPE_WHY = ("its rotary embedding differs by layer type (local and global RoPE bases, as in Gemma 3), and "
                      "the calibration file holds one RoPE")
PER_LAYER_ROPE = f"{PER_LAYER_ROPE_WHY}: key statistics as observed, key offsets not following the position"


def _rotary_module(lm: LoadedModel):
    return getattr(getattr(lm.model, "model", None), "rotary_emb", None)


def per_layer_rope(lm: LoadedModel) -> bool:
    """Whether the model's rotary embedding takes a layer type (one RoPE base per kind of layer)."""
    rotary = _rotary_module(lm)
    return rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters


def _rotary(lm: LoadedModel):
    """The model's rotary embedding module (HF Llama-style: forward(x, position_ids) -> cos, sin over the whole
    head_dim, rotate-half pairs), or None (no such module, a partial rotary or one per layer type: statistics stay
    as observed)."""
    rotary = _rotary_module(lm)
    if rotary is None or per_layer_rope(lm):
        return None
    try:
        cos, _ = _cos_sin(rotary, 1, next(lm.model.parameters()).device)
    except (TypeError, ValueError, RuntimeError):
        return None
    return rotary if cos.shape[-1] == lm.head_dim else None


def _cos_sin(rotary, positions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (positions, d) float64 of positions 0..positions-1."""
    pos = torch.arange(positions, device=device)[None]
    cos, sin = rotary(torch.zeros(1, device=device), pos)
    return cos[0].double(), sin[0].double()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _per_token(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, heads, T, d) -> (B*T, heads, d) of `dtype`."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3]).to(dtype)


@torch.no_grad()
def collect_kv(lm: LoadedModel, ids: torch.Tensor, window: int) -> list[LayerKV]:
    """Post-RoPE keys, values and query mean squares of every layer over windows of ids (on the CPU)."""
    seen: dict[int, list[tuple[torch.Tensor, ...]]] = {}
    rotary = _rotary(lm)
    turns: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # window length -> its cos, sin (the same every layer)

    def record(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        heads = k.shape[1]  # query head h is served by KV head h // (q heads / kv heads), as in repeat_kv
        q_sq = _per_token(q).pow(2)
        q_sq = q_sq.reshape(q_sq.shape[0], heads, -1, q_sq.shape[-1]).transpose(1, 2).reshape(-1, heads, q.shape[3])
        parts = [_per_token(k), _per_token(v), q_sq, k[:, :, 0].float()]
        if rotary is not None:  # turn each key back by its position (rotation by -p)
            if k.shape[2] not in turns:
                turns[k.shape[2]] = _cos_sin(rotary, k.shape[2], k.device)
            cos, sin = turns[k.shape[2]]
            pre = _per_token(k.double() * cos - _rotate_half(k.double()) * sin, torch.float64)  # (T, H, d)
            h = pre.shape[-1] // 2
            parts += [pre.sum(0), pre.pow(2).sum(0), (pre[..., :h] * pre[..., h:]).sum(0)]
        seen.setdefault(layer, []).append(tuple(parts))

    lm.hook.layers, lm.hook.observe = {}, record
    try:
        for start in range(0, ids.numel(), window):
            lm.model(ids[start:start + window][None].to(lm.device), use_cache=False)
    finally:
        lm.hook.observe = None
    layers = []
    for i in range(lm.num_layers):
        per_window = list(zip(*seen[i]))
        keys, values, q_sq, sinks = (torch.cat(parts).cpu() for parts in per_window[:4])
        pre = tuple(sum(parts).cpu() / keys.shape[0] for parts in per_window[4:]) or None  # pre-RoPE moments
        layers.append(LayerKV(keys, values, q_sq.mean(0), sinks.mean(0), pre))
    return layers


def key_moments(s: LayerKV, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and mean square (H, d) of the layer's post-RoPE keys at positions spread uniformly over those of cos/sin
    (positions, d): the pre-RoPE moments carried through the average rotation of each channel pair."""
    mean, square, cross = s.pre_rope
    h = mean.shape[-1] // 2
    c, sn = cos.mean(0), sin.mean(0)
    c2, s2, cs = cos.pow(2).mean(0), sin.pow(2).mean(0), (cos * sin).mean(0)
    ma, mb = mean[..., :h], mean[..., h:]
    qa, qb = square[..., :h], square[..., h:]
    post_mean = torch.cat((ma * c[:h] - mb * sn[:h], mb * c[h:] + ma * sn[h:]), -1)
    post_sq = torch.cat((qa * c2[:h] + qb * s2[:h] - 2 * cross * cs[:h], qb * c2[h:] + qa * s2[h:] + 2 * cross * cs[h:]),
                        -1)
    return post_mean, post_sq


def fit_layers(kv: list[LayerKV], n_outliers: int, sink_weight: float = 0.0, centroid: bool = True,
               rotation: tuple[torch.Tensor, torch.Tensor] | None = None,
               rope: Rope | None = None) -> tuple[list[tuple[ChannelParams, ChannelParams]], list[torch.Tensor | None]]:
    """Per layer and stream: channel mean (offset), RMS around it (scale), the n_outliers largest-RMS channels;
    with `centroid`, the keys' centroid is the mean key at position 0 (the attention sink: keys near it are
    stored relative to it, format version 2); with `rotation` (cos, sin of the positions 0..L-1), the key
    statistics are those at positions spread over [0, L) (`key_moments`), else as observed. With `rope` as well,
    the key offset follows the position (the pre-RoPE mean turned by RoPE, per OFFSET_BUCKET positions; returned
    as the layer's rope mean) and the key scale is the RMS around it. Returns the params and the rope means.

    sink_weight w > 0 widens the key scale where the attention sink's key sits far from the mean:
    scale = sqrt(RMS^2 + w (sink key - mean)^2), so the sink's canonical key is less of a spike for the 4- and
    2-coordinate rotations of IsoQuant/PlanarQuant (BENCHMARKS.md, "Quality study", section 6).
    """
    layers, means = [], []
    for s in kv:
        value = fit_channel_params(s.value, center=True, equalize=True, n_outliers=n_outliers)
        mean, sink_offset = None, None
        if rotation is not None and s.pre_rope is not None and rope is not None:
            mean = s.pre_rope[0].float()
            table = rope.position_offset(mean, -(-rotation[0].shape[0] // OFFSET_BUCKET)).double()
            _, square = key_moments(s, *rotation)
            key = params_from_rms((square - table.pow(2).mean(0)).clamp_min(0).sqrt(), n_outliers, equalize=True)
            sink_offset = table[0].float()
        elif rotation is not None and s.pre_rope is not None:
            key = params_from_moments(*key_moments(s, *rotation), center=True, equalize=True, n_outliers=n_outliers)
        else:
            key = fit_channel_params(s.key, center=True, equalize=True, n_outliers=n_outliers)
        if sink_weight:
            wide = (key.scale.pow(2) + sink_weight * (s.sink_key - (key.offset if mean is None else sink_offset)).pow(2))
            key = ChannelParams(key.offset, wide.sqrt(), key.outliers)
        if centroid:
            key = ChannelParams(key.offset, key.scale, key.outliers, s.sink_key)
        layers.append((key, value))
        means.append(mean)
    return layers, means


def calibrate(lm: LoadedModel, ids: torch.Tensor, window: int, n_outliers: int, path, corpus: str,
              sink_weight: float = 0.0, centroid: bool = True, horizon: int | None = None,
              position_offsets: bool = True):
    """Collect K/V over ids, fit every layer, write the calibration file at path; returns the Calibration.

    horizon: key statistics for positions 0..horizon-1 (default: the model's max_position_embeddings; 0: as observed
    in the calibration windows, which suits only contexts as long as those windows). position_offsets: key offsets
    that follow the position (needs a rotary embedding and a horizon; off: one offset for the whole horizon)."""
    from ..formats.calibration import save_calibration

    if not 0 <= n_outliers <= lm.head_dim // 2:
        raise ValueError(f"outliers must be between 0 and head_dim/2 = {lm.head_dim // 2}, got {n_outliers}")
    if not sink_weight >= 0:
        raise ValueError(f"sink weight must be at least 0, got {sink_weight}")
    if horizon is None:
        horizon = int(getattr(lm.model.config, "max_position_embeddings", 0) or 0)
    if horizon < 0:
        raise ValueError(f"horizon must be at least 0 positions, got {horizon}")
    rotary = _rotary(lm)
    rotation, rope = None, None
    if horizon and rotary is not None:
        with torch.no_grad():
            rotation = tuple(t.cpu() for t in _cos_sin(rotary, horizon, lm.device))
        if position_offsets:
            rope = Rope(rotary.inv_freq.detach().cpu().double(), float(getattr(rotary, "attention_scaling", 1.0)),
                        horizon)
    layers, means = fit_layers(collect_kv(lm, ids, window), n_outliers, sink_weight, centroid, rotation, rope)
    span = f"key statistics for positions 0-{horizon - 1}" if rotation is not None else \
        f"key statistics as observed in windows of {window}"
    if per_layer_rope(lm):
        span += f" ({PER_LAYER_ROPE_WHY})"
    if rope is not None:
        span += f", key offsets per {OFFSET_BUCKET} positions"
    return save_calibration(path, layers, head_dim=lm.head_dim, num_kv_heads=lm.num_kv_heads, model=str(lm.path),
                            corpus=f"{corpus}, {ids.numel()} tokens; {span}", rope=rope,
                            rope_means=tuple(means) if rope is not None else ())
