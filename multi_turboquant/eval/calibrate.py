"""`mtq calibrate`: per-layer, per-KV-head channel statistics of real post-RoPE K and V."""
from __future__ import annotations

import torch

from ..formats import ChannelParams
from ..formats.params import fit_channel_params
from .hooks import LoadedModel


@torch.no_grad()
def collect_kv(lm: LoadedModel, ids: torch.Tensor, window: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Post-RoPE (tokens, kv_heads, head_dim) keys and values of every layer over windows of ids."""
    seen: dict[tuple[int, int], list[torch.Tensor]] = {}

    def record(layer: int, stream: int):
        def fn(x: torch.Tensor) -> torch.Tensor:
            seen.setdefault((layer, stream), []).append(x.reshape(-1, *x.shape[-2:]).clone())
            return x
        return fn

    lm.hook.layers = {i: (record(i, 0), record(i, 1)) for i in range(lm.num_layers)}
    try:
        for start in range(0, ids.numel(), window):
            lm.model(ids[start:start + window][None], use_cache=False)
    finally:
        lm.hook.layers = {}
    return [(torch.cat(seen[i, 0]), torch.cat(seen[i, 1])) for i in range(lm.num_layers)]


def fit_layers(kv: list[tuple[torch.Tensor, torch.Tensor]], n_outliers: int) -> list[tuple[ChannelParams, ChannelParams]]:
    """Per layer and stream: channel mean (offset), RMS around it (scale), the n_outliers largest-RMS channels."""
    return [tuple(fit_channel_params(x, center=True, equalize=True, n_outliers=n_outliers) for x in pair)
            for pair in kv]


def calibrate(lm: LoadedModel, ids: torch.Tensor, window: int, n_outliers: int, path, corpus: str):
    """Collect K/V over ids, fit every layer, write the calibration file at path; returns the Calibration."""
    from ..formats.calibration import save_calibration

    if not 0 <= n_outliers <= lm.head_dim // 2:
        raise ValueError(f"outliers must be between 0 and head_dim/2 = {lm.head_dim // 2}, got {n_outliers}")
    layers = fit_layers(collect_kv(lm, ids, window), n_outliers)
    return save_calibration(path, layers, head_dim=lm.head_dim, num_kv_heads=lm.num_kv_heads, model=str(lm.path),
                            corpus=f"{corpus}, {ids.numel()} tokens")
