"""Property-based fuzzing over shapes, dtypes and values."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import multi_turboquant as mtq

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@st.composite
def inputs(draw):
    name = draw(st.sampled_from(list(mtq.FORMATS)))
    head_dim = draw(st.sampled_from([16, 32, 48, 64, 80, 96, 128, 256]))
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    n = head_dim
    for s in lead:
        n *= s
    limit = 60000.0 if dtype == torch.float16 else 1e6
    values = draw(st.lists(st.floats(-limit, limit, allow_nan=False, allow_infinity=False, width=32),
                           min_size=n, max_size=n))
    scales = [1e-6, 1e-3, 1.0, 1e3] + ([1e-30, 1e25] if dtype == torch.float32 else [])
    scale = draw(st.sampled_from(scales))
    x = (torch.tensor(values, dtype=torch.float64).reshape(*lead, head_dim) * scale).clamp(-limit * scale, limit * scale)
    x = x.clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype)
    return name, x


@settings(max_examples=150, deadline=None)
@given(inputs())
def test_fuzz_roundtrip(case):
    name, x = case
    fmt = mtq.get_format(name)
    head_dim = x.shape[-1]
    packed = fmt.encode(x)
    assert packed.shape == (*x.shape[:-1], fmt.bytes_per_vector(head_dim))
    assert torch.equal(fmt.encode(x), packed)  # deterministic
    out = fmt.decode(packed, head_dim, dtype=torch.float32)
    assert out.shape == x.shape and torch.isfinite(out).all()
    xf, outd = x.double(), out.double()
    # Never worse than returning zeros by much; reconstruction is a least-squares fit.
    err = (outd - xf).norm(dim=-1)
    assert (err <= 1.05 * xf.norm(dim=-1) + 1e-300).all()
    zero = xf.abs().amax(-1) == 0
    assert (out[zero] == 0).all()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(list(mtq.FORMATS)), st.integers(0, 2**32 - 1))
def test_fuzz_random_payload_decodes_finite(name, seed):
    """Any payload and angle/residual codes under a finite scale decode to finite values."""
    fmt = mtq.get_format(name)
    n = fmt.bytes_per_vector(64)
    packed = torch.randint(0, 256, (8, n), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    scale_at = n - (4 if fmt.family == "turboquant" else 2)
    packed[:, scale_at:scale_at + 2] = torch.tensor([0x80, 0x3F], dtype=torch.uint8)  # bf16 1.0
    out = fmt.decode(packed, 64)
    assert out.shape == (8, 64) and torch.isfinite(out).all()
    assert out.abs().max() < 64  # |levels| < 3, unit scale, orthonormal transforms
