"""`mtq calibrate`: per-layer, per-KV-head channel statistics of real post-RoPE K and V."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import ChannelParams
from ..formats.params import fit_channel_params
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


def _per_token(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, d) -> (B*T, heads, d) float32."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3]).float()


@torch.no_grad()
def collect_kv(lm: LoadedModel, ids: torch.Tensor, window: int) -> list[LayerKV]:
    """Post-RoPE keys, values and query mean squares of every layer over windows of ids (on the CPU)."""
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def record(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        heads = k.shape[1]  # query head h is served by KV head h // (q heads / kv heads), as in repeat_kv
        q_sq = _per_token(q).pow(2)
        q_sq = q_sq.reshape(q_sq.shape[0], heads, -1, q_sq.shape[-1]).transpose(1, 2).reshape(-1, heads, q.shape[3])
        seen.setdefault(layer, []).append((_per_token(k), _per_token(v), q_sq, k[:, :, 0].float()))

    lm.hook.layers, lm.hook.observe = {}, record
    try:
        for start in range(0, ids.numel(), window):
            lm.model(ids[start:start + window][None].to(lm.device), use_cache=False)
    finally:
        lm.hook.observe = None
    layers = []
    for i in range(lm.num_layers):
        keys, values, q_sq, sinks = (torch.cat(parts).cpu() for parts in zip(*seen[i]))
        layers.append(LayerKV(keys, values, q_sq.mean(0), sinks.mean(0)))
    return layers


def fit_layers(kv: list[LayerKV], n_outliers: int, sink_weight: float = 0.0,
               centroid: bool = True) -> list[tuple[ChannelParams, ChannelParams]]:
    """Per layer and stream: channel mean (offset), RMS around it (scale), the n_outliers largest-RMS channels;
    with `centroid`, the keys' centroid is the mean key at position 0 (the attention sink: keys near it are
    stored relative to it, format version 2).

    sink_weight w > 0 widens the key scale where the attention sink's key sits far from the mean:
    scale = sqrt(RMS^2 + w (sink key - mean)^2), so the sink's canonical key is less of a spike for the 4- and
    2-coordinate rotations of IsoQuant/PlanarQuant (BENCHMARKS.md, "Quality study", section 6).
    """
    layers = []
    for s in kv:
        key, value = (fit_channel_params(x, center=True, equalize=True, n_outliers=n_outliers)
                      for x in (s.key, s.value))
        if sink_weight:
            wide = (key.scale.pow(2) + sink_weight * (s.sink_key - key.offset).pow(2)).sqrt()
            key = ChannelParams(key.offset, wide, key.outliers)
        if centroid:
            key = ChannelParams(key.offset, key.scale, key.outliers, s.sink_key)
        layers.append((key, value))
    return layers


def calibrate(lm: LoadedModel, ids: torch.Tensor, window: int, n_outliers: int, path, corpus: str,
              sink_weight: float = 0.0, centroid: bool = True):
    """Collect K/V over ids, fit every layer, write the calibration file at path; returns the Calibration."""
    from ..formats.calibration import save_calibration

    if not 0 <= n_outliers <= lm.head_dim // 2:
        raise ValueError(f"outliers must be between 0 and head_dim/2 = {lm.head_dim // 2}, got {n_outliers}")
    if not sink_weight >= 0:
        raise ValueError(f"sink weight must be at least 0, got {sink_weight}")
    layers = fit_layers(collect_kv(lm, ids, window), n_outliers, sink_weight, centroid)
    return save_calibration(path, layers, head_dim=lm.head_dim, num_kv_heads=lm.num_kv_heads, model=str(lm.path),
                            corpus=f"{corpus}, {ids.numel()} tokens")
