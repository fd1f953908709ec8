"""Triton device functions of the six encoders, mirroring multi_turboquant/formats operation by operation.

Every float32 operation is the reference's, in the reference's order (tree sums as explicit halvings,
Hadamard butterflies, products and sums kept apart: launch with enable_fp_fusion=False so that no
a*b+c becomes an FMA; divisions are div_rn), so the records are byte-identical to `KVFormat.encode`.
A tile is ROWS vectors; each function works on (ROWS, n) tensors. Constants come from one float32
table per format (`encoder_constants`); a codebook section is 2**b levels then 8 x (2**b - 1) thresholds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats.codebooks import _scaled_thresholds, levels
from ..formats.registry import get_format
from ..formats.turboquant import _angle_tables, _beta_tables

def encoder_constants(name: str, head_dim: int) -> torch.Tensor:
    """The float32 table the kernel reads for format `name` at `head_dim` (host copy): IsoQuant/PlanarQuant:
    codebook, rotation blocks (d x k); TurboQuant: codebook (m+1 bits), codebook (m bits), signs of the
    outlier, regular and QJL transforms, cos/sin of the theta levels and midpoints, beta midpoints, and the
    Hadamard scales 1/sqrt(d/2), 1/sqrt(d)."""
    fmt = get_format(name)
    parts = []
    if fmt.family == "turboquant":
        for bits in (fmt.mse_bits + 1, fmt.mse_bits):
            parts += [levels(bits), _scaled_thresholds(bits).reshape(-1)]
        rot_o, rot_n, sketch = fmt.transforms(head_dim)
        parts += [rot_o.signs, rot_n.signs, sketch.signs, *_angle_tables(), _beta_tables()[1],
                  torch.tensor([rot_o.scales[0], sketch.scales[0]], dtype=torch.float32)]
    else:
        parts += [levels(fmt.bits), _scaled_thresholds(fmt.bits).reshape(-1),
                  fmt.rotation(head_dim).matrices.reshape(-1)]
    return torch.cat([p.to(torch.float32) for p in parts])


# -- bit-exact float32 helpers --------------------------------------------------------------------
@triton.jit
def _pow2(k):
    """2.0**k as float32 for int32 k in [-126, 127], from its bits."""
    return ((k + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _scale_pow2(x, e):
    """x * 2**e as two exact multiplications (formats.base.scale_by_power_of_two)."""
    half = e >> 1  # arithmetic shift: floor(e / 2)
    return x * _pow2(half) * _pow2(e - half)


@triton.jit
def _bf16_round(v):
    """float32 -> bfloat16 bit pattern (int32), round to nearest even; NaN -> 0x7FC0 (as torch)."""
    u = v.to(tl.uint32, bitcast=True)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).to(tl.int32)
    return tl.where(v != v, 0x7FC0, r)


@triton.jit
def _bf16_value(bits):
    """bfloat16 bit pattern (int32) -> float32."""
    return (bits << 16).to(tl.float32, bitcast=True)


@triton.jit
def _bf16_sqrt(s):
    """sqrt(s) rounded to bfloat16, exact: neighbours of an estimate checked with squared midpoints."""
    r = _bf16_round(tl.sqrt_rn(s))
    lo, mid, hi = _bf16_value(tl.maximum(r - 1, 0)), _bf16_value(r), _bf16_value(r + 1)
    lo_mid, hi_mid = (lo + mid) * 0.5, (mid + hi) * 0.5
    odd = (r & 1) == 1
    up = (s > hi_mid * hi_mid) | ((s == hi_mid * hi_mid) & odd)
    down = (s < lo_mid * lo_mid) | ((s == lo_mid * lo_mid) & odd)
    return tl.where(up, hi, tl.where(down, lo, mid))


@triton.jit
def _tree_sum(x, ROWS: tl.constexpr, LOG2N: tl.constexpr):
    """Sum of (ROWS, 2**LOG2N) over the last dim by pairwise halving (formats.transforms.tree_sum)."""
    for s in tl.static_range(LOG2N):
        a, b = tl.split(tl.permute(tl.reshape(x, (ROWS, 2, 1 << (LOG2N - 1 - s))), (0, 2, 1)))
        x = a + b
    return tl.reshape(x, (ROWS,))


@triton.jit
def _fwht(x, ROWS: tl.constexpr, LOG2N: tl.constexpr):
    """Unnormalized Walsh-Hadamard transform of (ROWS, 2**LOG2N): butterflies of half-width 1, 2, 4, ..."""
    N: tl.constexpr = 1 << LOG2N
    for s in tl.static_range(LOG2N):  # half-width 2**s, N / 2**(s+1) groups
        a, b = tl.split(tl.permute(tl.reshape(x, (ROWS, N >> (s + 1), 2, 1 << s)), (0, 1, 3, 2)))
        x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), (ROWS, N))
    return x


@triton.jit
def _row(table, N: tl.constexpr):
    """The first N (<= 256) floats of a table as one (256,) tile: one round of loads, not one per probe."""
    j = tl.arange(0, 256)
    return tl.load(table + j, mask=j < N, other=0.0)


@triton.jit
def _pick(tile, j):
    """tile[j] per row (j (ROWS,) int32, tile (256,)), exactly (no arithmetic on the value)."""
    hit = tl.arange(0, 256)[None, :] == j[:, None]
    return tl.max(tl.where(hit, tile[None, :], float("-inf")), axis=1)


@triton.jit
def _count_prefix(a, b, tab_a, tab_b, N: tl.constexpr, SCALE_A: tl.constexpr):
    """Binary search for the length of the true prefix of pred(j) = a*tab_a[j] > b*tab_b[j] (a alone
    unless SCALE_A), j < N, in codebooks.count_prefix's exact order of probes (N in 128..255); tab_a and tab_b
    are _row tiles."""
    k = tl.zeros(a.shape, dtype=tl.int32)
    for s in tl.static_range(8):
        cand = k + (128 >> s)
        j = tl.minimum(cand - 1, N - 1)
        lhs = a
        if SCALE_A:
            lhs = a * _pick(tab_a, j)
        k = tl.where((cand <= N) & (lhs > b * _pick(tab_b, j)), cand, k)
    return k


# -- encoder stages --------------------------------------------------------------------------------
@triton.jit
def _load_canonical(x_ptr, x_offs, x_sd, off_ptr, scale_ptr, idx, live):
    """Channels `idx` of the rows at x_offs (ROWS,) as float32, calibration applied: (x - offset) / scale.

    off_ptr and scale_ptr (ROWS,) point at each row's offset (or centroid) and scale; without calibration
    they are 0 and 1, which change no bit (x - 0 = x, x / 1 = x)."""
    ptrs = x_ptr + x_offs[:, None] + idx * x_sd
    if x_ptr.dtype.element_ty == tl.bfloat16:  # widened by its bits: Triton 3.9's interpreter garbles subnormals
        x = (tl.load(ptrs.to(tl.pointer_type(tl.uint16)), mask=live[:, None], other=0).to(tl.uint32) << 16)
        x = x.to(tl.float32, bitcast=True)
    else:
        x = tl.load(ptrs, mask=live[:, None], other=0.0).to(tl.float32)
    return tl.math.div_rn(x - tl.load(off_ptr[:, None] + idx), tl.load(scale_ptr[:, None] + idx))


@triton.jit
def _centering(x_ptr, x_offs, x_sd, chan_ptr, lo, hi, live, ROWS: tl.constexpr, LOG2H: tl.constexpr, D: tl.constexpr,
               CEN: tl.constexpr):
    """Per row, (flag, offset pointer): with a centroid (CEN), flag = 1 where the calibrated vector is nearer it
    than the offset (strictly, by tree sums of squares over the canonical order: halves at channels lo and hi),
    and the pointer is then the centroid's; else (0, the offset's). chan_ptr: the head's (offset, scale,
    centroid) rows of D floats."""
    flag = tl.zeros(x_offs.shape, dtype=tl.int32)
    if CEN:
        a = _load_canonical(x_ptr, x_offs, x_sd, chan_ptr, chan_ptr + D, lo, live)
        b = _load_canonical(x_ptr, x_offs, x_sd, chan_ptr, chan_ptr + D, hi, live)
        s_off = _tree_sum(a * a + b * b, ROWS, LOG2H)
        a = _load_canonical(x_ptr, x_offs, x_sd, chan_ptr + 2 * D, chan_ptr + D, lo, live)
        b = _load_canonical(x_ptr, x_offs, x_sd, chan_ptr + 2 * D, chan_ptr + D, hi, live)
        flag = (_tree_sum(a * a + b * b, ROWS, LOG2H) < s_off).to(tl.int32)
    return flag, chan_ptr + flag * (2 * D)


@triton.jit
def _exponent(amax):
    """frexp exponent of max |x| (ROWS,) float32 >= 0 (0 for 0), from the bits (subnormals scaled by 2**64)."""
    sub = (amax.to(tl.int32, bitcast=True) >> 23) == 0
    scaled = tl.where(sub, amax * _pow2(tl.full(amax.shape, 64, tl.int32)), amax)
    e = ((scaled.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 126
    return tl.where(amax == 0, 0, tl.where(sub, e - 64, e))


@triton.jit
def _finite_max(x):
    """(max |x| per row, whether the row is all finite)."""
    finite = tl.abs(x) <= 3.4028234663852886e38
    return tl.max(tl.where(finite, tl.abs(x), 0.0), axis=1), tl.min(finite.to(tl.int32), axis=1) == 1


@triton.jit
def _quantize(y, cb, ROWS: tl.constexpr, LOG2N: tl.constexpr, BITS: tl.constexpr):
    """formats.base.scalar_quantize: codes (ROWS, N) int32 and least-squares scale (ROWS,) over 8 candidates,
    all 8 at once as (ROWS, 8, N) tiles, which more warps per program can share."""
    NL: tl.constexpr = 1 << BITS
    N: tl.constexpr = 1 << LOG2N
    cand = tl.arange(0, 8)
    sq = _tree_sum(y * y, ROWS, LOG2N)
    lhs = (y * tl.abs(y) * N)[:, None, :]
    codes = tl.zeros((ROWS, 8, N), dtype=tl.int32)
    for j in tl.static_range(NL - 1):
        bound = tl.load(cb + NL + cand * (NL - 1) + j)[None, :] * sq[:, None]
        codes += (lhs > bound[:, :, None]).to(tl.int32)
    lv = tl.load(cb + codes)
    num = tl.reshape(_tree_sum(tl.reshape(y[:, None, :] * lv, (ROWS * 8, N)), ROWS * 8, LOG2N), (ROWS, 8))
    den = tl.reshape(_tree_sum(tl.reshape(lv * lv, (ROWS * 8, N)), ROWS * 8, LOG2N), (ROWS, 8))
    gain = tl.math.div_rn(num * num, den)
    # the first candidate of the largest gain (the reference keeps a candidate only if strictly better)
    first = tl.min(tl.where(gain == tl.max(gain, axis=1)[:, None], cand[None, :], 8), axis=1)
    pick = cand[None, :] == first[:, None]
    alpha = tl.max(tl.where(pick, tl.math.div_rn(num, den), float("-inf")), axis=1)
    return tl.sum(tl.where(pick[:, :, None], codes, 0), axis=1), alpha


@triton.jit
def _store_plane(codes, out, ok, ROWS: tl.constexpr, N: tl.constexpr, W: tl.constexpr, SHIFT: tl.constexpr):
    """Bits SHIFT..SHIFT+W-1 of (ROWS, N) codes as a W-bit plane: code i in byte i // (8/W), LSB first."""
    PER: tl.constexpr = 8 // W
    plane = tl.reshape((codes >> SHIFT) & ((1 << W) - 1), (ROWS, N // PER, PER))
    packed = tl.sum(plane << (tl.arange(0, PER) * W)[None, None, :], axis=2)
    tl.store(out[:, None] + tl.arange(0, N // PER)[None, :], packed.to(tl.uint8), mask=ok[:, None])


@triton.jit
def _store_codes(codes, out, ok, ROWS: tl.constexpr, N: tl.constexpr, BITS: tl.constexpr):
    """A BITS-bit code array as its planes of 4, 2, 1 bits (formats.packing.pack); N*BITS/8 bytes at out."""
    if BITS == 4:
        _store_plane(codes, out, ok, ROWS, N, 4, 0)
    if BITS == 3 or BITS == 2:
        _store_plane(codes, out, ok, ROWS, N, 2, 0)
    if BITS == 3:
        _store_plane(codes, out + N // 4, ok, ROWS, N, 1, 2)
    if BITS == 1:
        _store_plane(codes, out, ok, ROWS, N, 1, 0)


@triton.jit
def _store_u8(out, value, ok):
    tl.store(out, value.to(tl.uint8), mask=ok)


@triton.jit
def _store_bf16(out, v, flag, finite, ok):
    """Scale v (ROWS,) >= 0 as little-endian bfloat16 (clamped to bfloat16's largest value) with the centroid
    flag (ROWS,) 0/1 in its sign bit; NaN where not finite."""
    bits = _bf16_round(tl.minimum(v, 3.3895313892515355e38)) | (flag << 15)
    bits = tl.where(finite, bits, 0x7FC0)
    _store_u8(out, bits & 0xFF, ok)
    _store_u8(out + 1, bits >> 8, ok)


@triton.jit
def encode_block_rotation(x_ptr, x_offs, x_sd, chan_ptr, consts, out, live, ok, ROWS: tl.constexpr, LOG2D: tl.constexpr,
                          K: tl.constexpr, BITS: tl.constexpr, CEN: tl.constexpr):
    """IsoQuant (K = 4) / PlanarQuant (K = 2) records of ROWS vectors at x_ptr + x_offs to out (ROWS,) pointers."""
    D: tl.constexpr = 1 << LOG2D
    i = tl.arange(0, D)
    half = tl.arange(0, D // 2)
    flag, off = _centering(x_ptr, x_offs, x_sd, chan_ptr, half, D // 2 + half, live, ROWS, LOG2D - 1, D, CEN)
    amax, finite = _finite_max(_load_canonical(x_ptr, x_offs, x_sd, off, chan_ptr + D, i, live))
    e = _exponent(amax)
    neg_e = -e[:, None]
    CB: tl.constexpr = 9 * (1 << BITS) - 8  # codebook floats: levels, then 8 rows of thresholds
    rot = consts + CB
    y = tl.zeros((ROWS, D), dtype=tl.float32)
    for t in tl.static_range(K):  # y[i] = sum_t M[i // K][i % K][t] * x[(i // K) * K + t], t in order
        src = (i // K) * K + t
        xt = _scale_pow2(_load_canonical(x_ptr, x_offs, x_sd, off, chan_ptr + D, src, live), neg_e)
        term = tl.load(rot + i * K + t)[None, :] * xt
        if t == 0:
            y = term
        else:
            y = y + term
    codes, alpha = _quantize(y, consts, ROWS, LOG2D, BITS)
    _store_codes(codes, out, ok, ROWS, D, BITS)
    _store_bf16(out + D * BITS // 8, _scale_pow2(alpha, e), flag, finite, ok)


@triton.jit
def encode_turboquant(x_ptr, x_offs, x_sd, chan_ptr, perm, consts, out, live, ok, ROWS: tl.constexpr, LOG2D: tl.constexpr,
                      M: tl.constexpr, CEN: tl.constexpr):
    """TurboQuant (m = M) records (formats.turboquant.TurboQuant._encode_rows); perm (ROWS,) points at each
    row's channel permutation (outlier half first)."""
    D: tl.constexpr = 1 << LOG2D
    H: tl.constexpr = D // 2
    i = tl.arange(0, H)
    ch_o, ch_n = tl.load(perm[:, None] + i), tl.load(perm[:, None] + H + i)
    flag, off = _centering(x_ptr, x_offs, x_sd, chan_ptr, ch_o, ch_n, live, ROWS, LOG2D - 1, D, CEN)
    x_o = _load_canonical(x_ptr, x_offs, x_sd, off, chan_ptr + D, ch_o, live)
    x_n = _load_canonical(x_ptr, x_offs, x_sd, off, chan_ptr + D, ch_n, live)
    # table sections
    cb_o = consts
    cb_n = cb_o + (9 * (1 << (M + 1)) - 8)
    sig_o = cb_n + (9 * (1 << M) - 8)
    sig_n = sig_o + H
    sig_q = sig_n + H
    cos_lv = sig_q + D
    sin_lv = cos_lv + 256
    cos_mid = sin_lv + 256
    sin_mid = cos_mid + 255
    beta_mid = sin_mid + 255
    s_half = tl.load(beta_mid + 254)
    s_full = tl.load(beta_mid + 255)
    # the angle and beta tables whole, loaded at the start: their lookups are then off the memory-latency chain
    cos_tab, sin_tab, cos_mid_tab = _row(cos_lv, 256), _row(sin_lv, 256), _row(cos_mid, 255)
    sin_mid_tab, beta_tab = _row(sin_mid, 255), _row(beta_mid, 254)

    amax_o, fin_o = _finite_max(x_o)
    amax_n, fin_n = _finite_max(x_n)
    e = _exponent(tl.maximum(amax_o, amax_n))
    y_o = _fwht(_scale_pow2(x_o, -e[:, None]) * tl.load(sig_o + i)[None, :], ROWS, LOG2D - 1) * s_half
    y_n = _fwht(_scale_pow2(x_n, -e[:, None]) * tl.load(sig_n + i)[None, :], ROWS, LOG2D - 1) * s_half
    codes_o, a_o = _quantize(y_o, cb_o, ROWS, LOG2D - 1, M + 1)
    codes_n, a_n = _quantize(y_n, cb_n, ROWS, LOG2D - 1, M)

    rho = _bf16_sqrt(a_o * a_o + a_n * a_n)
    theta = _count_prefix(a_n, a_o, cos_mid_tab, sin_mid_tab, 255, True)
    a_o = rho * _pick(cos_tab, theta)
    a_n = rho * _pick(sin_tab, theta)
    r_o = _fwht((y_o - a_o[:, None] * tl.load(cb_o + codes_o)) * tl.load(sig_q + i)[None, :], ROWS, LOG2D - 1)
    r_n = _fwht((y_n - a_n[:, None] * tl.load(cb_n + codes_n)) * tl.load(sig_q + H + i)[None, :], ROWS, LOG2D - 1)
    w_o = (r_o + r_n) * s_full  # the last butterfly of the length-D transform joins the halves
    w_n = (r_o - r_n) * s_full
    beta = _tree_sum(tl.abs(w_o) + tl.abs(w_n), ROWS, LOG2D - 1) * (1.0 / D)
    beta_code = tl.where(beta > 0, 1 + _count_prefix(beta, rho, beta_tab, beta_tab, 254, False), 0)

    n_o: tl.constexpr = H * (M + 1) // 8
    n_n: tl.constexpr = H * M // 8
    _store_codes(codes_o, out, ok, ROWS, H, M + 1)
    _store_codes(codes_n, out + n_o, ok, ROWS, H, M)
    _store_plane((w_o >= 0).to(tl.int32), out + n_o + n_n, ok, ROWS, H, 1, 0)
    _store_plane((w_n >= 0).to(tl.int32), out + n_o + n_n + H // 8, ok, ROWS, H, 1, 0)
    meta = out + n_o + n_n + D // 8
    _store_bf16(meta, _scale_pow2(rho, e), flag, fin_o & fin_n, ok)
    _store_u8(meta + 2, theta, ok)
    _store_u8(meta + 3, beta_code, ok)
