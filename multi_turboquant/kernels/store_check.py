"""Checks of store kernels against the reference encoder: adversarial inputs and record comparison."""
from __future__ import annotations

import torch

from ..formats.params import ChannelParams
from ..formats.registry import get_format

KINDS = ("gaussian", "zeros", "one_hot", "constant", "alternating", "integers", "bf16_grid", "outlier",
         "huge", "near_max", "tiny", "subnormal", "min_subnormal", "wide_exponents")


def adversarial_vectors(rows: int, head_dim: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, head_dim) float32 cycling through KINDS: ties, zeros, extreme and subnormal magnitudes."""
    g = torch.randn(rows, head_dim, generator=generator)
    kind = torch.arange(rows) % len(KINDS)
    hot = torch.zeros(rows, head_dim)
    hot[torch.arange(rows), torch.randint(head_dim, (rows,), generator=generator)] = 1.0
    sign = torch.where(torch.arange(head_dim) % 2 == 0, 1.0, -1.0).expand(rows, head_dim)
    cases = {
        "gaussian": g, "zeros": torch.zeros_like(g), "one_hot": hot * torch.sign(g[:, :1]),
        "constant": g[:, :1].expand_as(g), "alternating": sign * g[:, :1],
        "integers": torch.randint(-3, 4, g.shape, generator=generator).float(),
        "bf16_grid": g.to(torch.bfloat16).float(), "outlier": g + hot * 100.0, "huge": g * 1e30,
        "near_max": g / g.abs().amax(-1, keepdim=True) * 3.4e38,
        "tiny": g * 1e-30, "subnormal": g * 1e-40, "min_subnormal": torch.sign(g) * 1.4e-45,
        "wide_exponents": g * torch.exp2(torch.randint(-20, 21, g.shape, generator=generator).float()),
    }
    out = torch.empty_like(g)
    for i, name in enumerate(KINDS):
        out[kind == i] = cases[name][kind == i]
    return out


def params_to(params: ChannelParams | None, device: torch.device | str) -> ChannelParams | None:
    """A copy of params with its tensors on `device`."""
    if params is None:
        return None
    return params.map(lambda t: t.to(device))


def compare_records(name: str, x: torch.Tensor, got: torch.Tensor, params: ChannelParams | None = None,
                    tolerance: float = 0.0) -> dict[str, int]:
    """Compare records `got` (..., bytes) of x (..., d) (CPU, finite) with the reference encoder's.

    Returns the counts of records, mismatching records, and mismatching records whose decoding error
    ||decode - x|| exceeds the reference record's by more than `tolerance` (relative).
    """
    fmt = get_format(name)
    ref = fmt.encode(x, params)
    bad = (ref != got).any(-1)
    worse = 0
    if bad.any():
        d = x.shape[-1]
        sub = params and params.map(lambda t: t.expand(*bad.shape, t.shape[-1])[bad])
        err_ref = (fmt.decode(ref[bad], d, torch.float32, sub).double() - x[bad].double()).norm(dim=-1)
        err_got = (fmt.decode(got[bad], d, torch.float32, sub).double() - x[bad].double()).norm(dim=-1)
        worse = int((~(err_got <= err_ref * (1 + tolerance))).sum())  # a NaN error counts as worse
    return {"records": bad.numel(), "mismatched": int(bad.sum()), "worse": worse}
