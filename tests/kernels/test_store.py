"""Triton store (quantize-on-write) against naive.store: byte-identical records, skipped slots, NaN policy.

Runs under TRITON_INTERPRET=1 on the CPU (small shapes, one program per call via rows_per_program) and
on CUDA when present. Caches start as random bytes, the same for both sides, so a write to any slot
the reference leaves alone shows up; inputs are fresh random each run (the seed is in the message).
"""
from __future__ import annotations

import os
import random

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

from multi_turboquant.formats.params import ChannelParams  # noqa: E402
from multi_turboquant.formats.registry import get_format  # noqa: E402
from multi_turboquant.kernels import naive, triton_store  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402
from multi_turboquant.kernels.store_check import adversarial_vectors, compare_records, params_to  # noqa: E402
from multi_turboquant.kernels.triton_encode import encoder_constants  # noqa: E402
from multi_turboquant.kernels.triton_store import store  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on discarded lanes
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FORMATS = ("turboquant25", "turboquant35", "isoquant3", "isoquant4", "planarquant3", "planarquant4")
ONE_PROGRAM = 32  # rows per program in the interpreter tests: one program encodes the whole batch


def random_params(name: str, heads: int, d: int, gen: torch.Generator, min_scale: float) -> ChannelParams:
    outliers = None
    if name.startswith("turbo"):
        outliers = torch.stack([torch.randperm(d, generator=gen)[: d // 8] for _ in range(heads)])
    offset = torch.randn(heads, d, generator=gen)
    return ChannelParams(offset=offset, scale=torch.rand(heads, d, generator=gen) * 2 + min_scale, outliers=outliers,
                         centroid=offset + torch.randn(heads, d, generator=gen))  # some vectors nearer to it


def run_both(layout: KVCacheLayout, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor, num_blocks: int,
             gen: torch.Generator, key_params=None, value_params=None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference cache, kernel cache), both starting from the same random bytes."""
    poison = torch.randint(0, 256, layout.shape(num_blocks), dtype=torch.uint8, generator=gen)
    ref = poison.clone()
    naive.store(key, value, ref, slots, layout, key_params, value_params)
    got = poison.to(DEVICE)
    store(key.to(DEVICE), value.to(DEVICE), got, slots.to(DEVICE), layout, params_to(key_params, DEVICE),
          params_to(value_params, DEVICE), **kw)
    return ref, got.cpu()


def batch(layout: KVCacheLayout, tokens: int, gen: torch.Generator, skip: int = 2):
    """Adversarial keys, scaled Gaussian values, distinct random slots (`skip` of them -1), number of blocks."""
    heads, d = layout.num_kv_heads, layout.head_dim
    key = adversarial_vectors(tokens * heads, d, gen).reshape(tokens, heads, d)
    value = torch.randn(tokens, heads, d, generator=gen) * torch.rand(tokens, heads, 1, generator=gen) * 10
    num_blocks = -(-tokens // layout.block_size) + 2
    slots = torch.randperm(num_blocks * layout.block_size, generator=gen)[:tokens]
    slots[torch.randperm(tokens, generator=gen)[:skip]] = -1
    return key, value, slots, num_blocks


def seeded() -> tuple[int, torch.Generator]:
    seed = random.randrange(1 << 30)
    return seed, torch.Generator().manual_seed(seed)


# head_dim 256 (Gemma's) for every format, with its own value format, half of them calibrated
CASES = [(f, d, p) for f in FORMATS for d, p in ((64, True), (128, False))] + \
    [(f, 256, i % 2 == 0) for i, f in enumerate(FORMATS)]


@pytest.mark.parametrize("key_format,head_dim,with_params", CASES, ids=[f"{f}-d{d}-{'params' if p else 'plain'}"
                                                                        for f, d, p in CASES])
def test_matches_reference(key_format: str, head_dim: int, with_params: bool) -> None:
    i = FORMATS.index(key_format)
    value_format = FORMATS[(i + 1 + head_dim // 64) % len(FORMATS)]  # another format, different per head_dim
    heads = (1, 2, 4)[i % 3]
    layout = KVCacheLayout(key_format, value_format, head_dim, heads, (16, 32)[i % 2])
    seed, gen = seeded()
    key, value, slots, num_blocks = batch(layout, ONE_PROGRAM // heads, gen)
    params = {}
    if with_params:  # keys keep scale >= 1 (adversarial keys reach float32's largest values); values do not
        params = {"key_params": random_params(key_format, heads, head_dim, gen, 1.0),
                  "value_params": random_params(value_format, heads, head_dim, gen, 0.05)}
    ref, got = run_both(layout, key, value, slots, num_blocks, gen, **params, rows_per_program=ONE_PROGRAM)
    diff = (ref != got).any(-1).nonzero().tolist()
    assert not diff, f"seed {seed}: {len(diff)} slots differ (block, head, offset), first {diff[:5]}"
    if with_params:  # records near and far from the centroid (format version 2) were both written
        flags = ref[..., layout.key_bytes - get_format(key_format).flag_byte] >> 7
        assert 0 < int(flags.sum()) < flags.numel()


@pytest.mark.parametrize("key_format", ["isoquant3", "turboquant25"])
def test_position_offset_matches_reference(key_format: str) -> None:
    # a key offset per OFFSET_BUCKET positions: each token's row is chosen by its position (past the table: the last)
    seed, gen = seeded()
    layout = KVCacheLayout(key_format, "planarquant4", 64, 2, 16)
    key, value, slots, num_blocks = batch(layout, ONE_PROGRAM // 2, gen)
    base = random_params(key_format, 2, 64, gen, 1.0)
    table = torch.randn(3, 2, 64, generator=gen) * 4
    params = ChannelParams(scale=base.scale, outliers=base.outliers, centroid=base.centroid + 50, position_offset=table)
    positions = torch.randint(0, 1000, (key.shape[0],), generator=gen)
    poison = torch.randint(0, 256, layout.shape(num_blocks), dtype=torch.uint8, generator=gen)
    ref = poison.clone()
    naive.store(key, value, ref, slots, layout, params, None, positions)
    got = poison.to(DEVICE)
    store(key.to(DEVICE), value.to(DEVICE), got, slots.to(DEVICE), layout, params_to(params, DEVICE), None,
          positions.to(DEVICE), rows_per_program=ONE_PROGRAM)
    assert torch.equal(ref, got.cpu()), f"seed {seed}"
    first_row = poison.clone()
    naive.store(key, value, first_row, slots, layout, params, None, positions * 0)
    assert not torch.equal(ref, first_row)  # the positions chose other rows
    with pytest.raises(ValueError, match="needs int positions"):
        naive.store(key, value, ref, slots, layout, params, None, None)


def test_encode_matches_the_reference() -> None:
    # kernels.ops.encode's CUDA path (the eval's fast round trip): the store kernel into a one-slot cache
    seed, gen = seeded()
    x = torch.randn(3, 5, 2, 64, generator=gen)
    for name in ("isoquant3", "turboquant35"):
        params = random_params(name, 2, 64, gen, 0.5)
        got = triton_store.encode(x.to(DEVICE), name, params_to(params, DEVICE)).cpu()
        assert torch.equal(got, get_format(name).encode(x, params)), f"seed {seed}: {name}"
    with pytest.raises(ValueError, match="NaN or Inf"):
        triton_store.encode(torch.full((1, 2, 64), float("nan"), device=DEVICE), "isoquant3")
    with pytest.raises(ValueError, match="encode takes \\(..., num_kv_heads, head_dim\\) vectors"):
        triton_store.encode(torch.zeros(64, device=DEVICE), "isoquant3")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    layout = KVCacheLayout("turboquant35", "isoquant4", 64, 2, 16)
    seed, gen = seeded()
    key, value, slots, num_blocks = batch(layout, 16, gen)
    key = key.clamp(-6e4, 6e4).to(dtype)  # within float16's range, so neither side sees Inf
    ref, got = run_both(layout, key, value.to(dtype), slots, num_blocks, gen, rows_per_program=ONE_PROGRAM)
    assert torch.equal(ref, got), f"seed {seed}"


def test_non_finite_vectors_get_nan_scales() -> None:
    """Policy: a NaN/Inf vector writes a record whose bf16 scale is NaN (it decodes to NaN); others are exact.

    7 tokens x 3 heads in programs of 4 rows: the last program is ragged."""
    layout = KVCacheLayout("planarquant4", "turboquant25", 64, 3, 16)
    seed, gen = seeded()
    key, value, slots, num_blocks = batch(layout, 7, gen, skip=0)
    bad = torch.zeros(7, 3, dtype=torch.bool)
    bad[1, 0] = bad[4, 2] = bad[6, 1] = True
    key[1, 0, 5], key[4, 2, 0], key[6, 1, 63] = float("nan"), float("inf"), -float("inf")
    value[bad] = value[bad] * float("nan")
    got = torch.zeros(layout.shape(num_blocks), dtype=torch.uint8, device=DEVICE)
    store(key.to(DEVICE), value.to(DEVICE), got, slots.to(DEVICE), layout, rows_per_program=4)
    records = got.cpu()[slots // 16, :, slots % 16]
    k_rec, v_rec = records[..., :layout.key_bytes], records[..., layout.key_bytes:]
    for name, x, rec in (("planarquant4", key, k_rec), ("turboquant25", value, v_rec)):
        decoded = get_format(name).decode(rec, 64)
        assert decoded[bad].isnan().all(), f"seed {seed}: {name} non-finite input decoded to numbers"
        assert torch.equal(rec[~bad], get_format(name).encode(x[~bad])), f"seed {seed}: {name} finite rows differ"


@pytest.mark.parametrize("name", ["isoquant3", "turboquant35"])
def test_calibration_overflow_gets_a_nan_scale(name: str) -> None:
    """A finite vector that (x - offset) / scale overflows: the reference raises, the kernel writes a NaN scale."""
    layout = KVCacheLayout(name, name, 64, 1, 16)
    x = torch.randn(2, 1, 64)
    x[1, 0, 7] = 3.0e38
    params = ChannelParams(scale=torch.full((64,), 0.5))
    with pytest.raises(ValueError, match="not finite after calibration"):
        get_format(name).encode(x[1, 0], params)
    got = torch.zeros(layout.shape(1), dtype=torch.uint8, device=DEVICE)
    store(x.to(DEVICE), x.to(DEVICE), got, torch.arange(2, device=DEVICE), layout, params_to(params, DEVICE),
          params_to(params, DEVICE))
    rec = got.cpu()[0, 0, :, :layout.key_bytes]
    decoded = get_format(name).decode(rec, 64, params=params)
    assert decoded[1].isnan().all() and torch.isfinite(decoded[0]).all()
    assert torch.equal(rec[0], get_format(name).encode(x[0, 0], params))
    with pytest.raises(ValueError, match=f"{name}: input is not finite after calibration"):
        triton_store.encode(x.to(DEVICE), name, params_to(params, DEVICE))  # the eval's path, as the reference


def test_keys_only_leaves_the_value_bytes() -> None:
    """keys_only (triton_store.encode's launch): the reference's key records, the value bytes untouched."""
    layout = KVCacheLayout("isoquant4", "turboquant25", 64, 2, 16)
    seed, gen = seeded()
    key, value, slots, num_blocks = batch(layout, 5, gen)
    poison = torch.randint(0, 256, layout.shape(num_blocks), dtype=torch.uint8, generator=gen)
    ref = poison.clone()
    naive.store(key, value, ref, slots, layout)
    kb = layout.key_bytes
    expected = torch.cat((ref[..., :kb], poison[..., kb:]), dim=-1)
    got = poison.to(DEVICE)
    store(key.to(DEVICE), value.to(DEVICE), got, slots.to(DEVICE), layout, keys_only=True)
    assert torch.equal(got.cpu(), expected), f"seed {seed}"


def test_default_launch() -> None:
    """The default launch configuration (one vector per program, warps by batch size), which the GPU timings use."""
    layout = KVCacheLayout("turboquant35", "isoquant3", 128, 2, 16)
    seed, gen = seeded()
    key, value, slots, num_blocks = batch(layout, 3, gen, skip=1)
    ref, got = run_both(layout, key, value, slots, num_blocks, gen)
    assert torch.equal(ref, got), f"seed {seed}"


def test_strided_inputs_and_out_of_range_slots() -> None:
    """key/value as views of a fused qkv tensor; a slot beyond the cache is skipped, not written."""
    layout = KVCacheLayout("isoquant3", "planarquant3", 64, 2, 16)
    seed, gen = seeded()
    qkv = torch.randn(12, 8, 64, generator=gen)
    key, value = qkv[:, 4:6], qkv[:, 6:8]
    slots = torch.randperm(32, generator=gen)[:12]
    slots[3] = 32 * 7  # beyond the 2 blocks
    poison = torch.randint(0, 256, layout.shape(2), dtype=torch.uint8, generator=gen)
    ref = poison.clone()
    keep = torch.arange(12) != 3
    naive.store(key[keep], value[keep], ref, slots[keep], layout)
    got = poison.to(DEVICE)
    store(key.to(DEVICE), value.to(DEVICE), got, slots.to(DEVICE), layout, rows_per_program=ONE_PROGRAM)
    assert torch.equal(ref, got.cpu()), f"seed {seed}"


def test_bad_input_raises() -> None:
    layout = KVCacheLayout("isoquant4", "isoquant4", 64, 2, 16)
    cache = torch.zeros(layout.shape(2), dtype=torch.uint8, device=DEVICE)
    x = torch.randn(3, 2, 64, device=DEVICE)
    slots = torch.arange(3, device=DEVICE)
    with pytest.raises(ValueError, match="dtype"):
        store(x.to(torch.int32), x, cache, slots, layout)
    with pytest.raises(ValueError, match="must be"):
        store(x[:, :1], x, cache, slots, layout)
    with pytest.raises(ValueError, match="slot_mapping"):
        store(x, x, cache, slots.float(), layout)
    with pytest.raises(ValueError, match="KV cache"):
        store(x, x, cache[..., 1:], slots, layout)
    with pytest.raises(ValueError, match="unsupported head_dim 96"):
        store(x, x, cache, slots, KVCacheLayout("isoquant4", "isoquant4", 96, 2, 16))
    with pytest.raises(ValueError, match="scale must be positive"):
        store(x, x, cache, slots, layout, ChannelParams(scale=-torch.ones(64, device=DEVICE)))
    with pytest.raises(ValueError, match="broadcast"):
        store(x, x, cache, slots, layout, ChannelParams(offset=torch.ones(3, 64, device=DEVICE)))
    for warps in (0, 3, 64):
        with pytest.raises(ValueError, match=f"num_warps must be a power of two from 1 to 32, got {warps}"):
            store(x, x, cache, slots, layout, num_warps=warps)


def test_default_warps_by_batch_size() -> None:
    """Decode-sized launches get 4 warps per program at head_dim 128 without a key centroid, else 1; mid-sized 2,
    large ones 1 (BENCHMARKS.md)."""
    assert [triton_store.default_warps(r) for r in (1, 64, 65, 256, 257, 16384)] == [4, 4, 2, 2, 1, 1]
    assert [triton_store.default_warps(r, 64) for r in (1, 64, 65, 257)] == [1, 1, 2, 1]
    assert [triton_store.default_warps(r, 128, True) for r in (1, 64, 65, 257)] == [1, 1, 2, 1]


def test_store_launch_picks_warps_by_head_dim_and_centroid(monkeypatch) -> None:
    """store() passes the layout's head_dim and whether the keys have a centroid to default_warps."""
    seen = []
    real = triton_store.default_warps
    monkeypatch.setattr(triton_store, "default_warps", lambda *a: seen.append(a) or real(*a))
    x = torch.randn(2, 1, 64)
    layout = KVCacheLayout("isoquant3", "isoquant3", 64, 1, 16)
    cache = torch.zeros(layout.shape(1), dtype=torch.uint8)
    slots = torch.arange(2)
    store(x, x, cache, slots, layout)
    store(x, x, cache, slots, layout, ChannelParams(centroid=torch.randn(64)))
    assert seen == [(2, 64, False), (2, 64, True)]


def test_compare_records_flags_a_corrupted_record() -> None:
    """The GPU check's comparison can fail: a flipped byte is a mismatch, and a wrong scale decodes worse."""
    x = torch.randn(4, 64)
    rec = get_format("isoquant4").encode(x)
    rec[2, -1] ^= 0x40  # the scale's exponent
    result = compare_records("isoquant4", x, rec)
    assert result == {"records": 4, "mismatched": 1, "worse": 1}


def test_tables_built_once_per_params(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated calls reuse the device tables (no host work or copies per call); new params get their own."""
    from multi_turboquant.kernels import triton_store

    built = []
    monkeypatch.setattr(triton_store, "encoder_constants", lambda *a: built.append(a) or encoder_constants(*a))
    monkeypatch.setattr(triton_store, "_TABLES", {})
    layout = KVCacheLayout("turboquant25", "planarquant3", 64, 1, 16)
    x = torch.randn(2, 1, 64, device=DEVICE)
    cache = torch.zeros(layout.shape(1), dtype=torch.uint8, device=DEVICE)
    params = ChannelParams(scale=torch.full((64,), 2.0, device=DEVICE))
    for p in (None, None, params, params):
        store(x, x, cache, torch.arange(2, device=DEVICE), layout, p, rows_per_program=2)
    assert len(built) == 3, built  # key + value tables for None, then the key's for `params`


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need CUDA")
def test_cuda_graph_capture() -> None:
    """After one eager call (which builds the tables), store() captures into a CUDA graph: no host syncs."""
    layout = KVCacheLayout("turboquant35", "isoquant3", 128, 8, 16)
    seed, gen = seeded()
    key, value, slots, num_blocks = batch(layout, 64, gen)
    ref = torch.zeros(layout.shape(num_blocks), dtype=torch.uint8)
    naive.store(key, value, ref, slots, layout)
    key, value, slots = key.cuda(), value.cuda(), slots.cuda()
    got = torch.zeros(layout.shape(num_blocks), dtype=torch.uint8, device="cuda")
    store(key, value, got, slots, layout)
    got.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        store(key, value, got, slots, layout)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(ref, got.cpu()), f"seed {seed}"


@pytest.mark.skipif(DEVICE != "cuda", reason="large shapes need CUDA")
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("key_format", FORMATS)
def test_cuda_large_batches(key_format: str, head_dim: int) -> None:
    value_format = FORMATS[(FORMATS.index(key_format) + 1) % len(FORMATS)]
    layout = KVCacheLayout(key_format, value_format, head_dim, 8, 16)
    seed, gen = seeded()
    key, value, slots, num_blocks = batch(layout, 2048, gen, skip=100)
    ref, got = run_both(layout, key, value, slots, num_blocks, gen)
    assert torch.equal(ref, got), f"seed {seed}: {(ref != got).any(-1).sum()} slots differ"


@pytest.mark.skipif(DEVICE != "cuda", reason="launch shapes are a CUDA matter")
@pytest.mark.parametrize("with_params", [False, True])
@pytest.mark.parametrize("warps", [1, 4])
@pytest.mark.parametrize("key_format", FORMATS)
def test_cuda_decode_batch_matches_the_reference(key_format: str, warps: int, with_params: bool) -> None:
    """A decode-sized batch (8 tokens, 2 skipped) writes the reference's bytes, at 1 and 4 warps per program,
    with and without channel params (offset, scale, centroid, outliers)."""
    value_format = FORMATS[(FORMATS.index(key_format) + 3) % len(FORMATS)]
    layout = KVCacheLayout(key_format, value_format, 128, 4, 16)
    seed, gen = seeded()
    key, value, slots, num_blocks = batch(layout, 8, gen)
    kp, vp = (random_params(f, 4, 128, gen, 1.0) if with_params else None for f in (key_format, value_format))
    ref, got = run_both(layout, key, value, slots, num_blocks, gen, kp, vp, num_warps=warps)
    differ = (ref != got).any(-1)
    assert not differ.any(), f"seed {seed}: {int(differ.sum())} slots differ, (block, head, slot) {differ.nonzero()[:4].tolist()}"
