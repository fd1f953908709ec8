"""Triton paged attention against the torch reference (naive.py), under TRITON_INTERPRET=1 on the CPU.

Caches are filled by naive.store into pages poisoned with 0xFF (records that decode to NaN), so any read
outside a sequence's tokens shows up; outputs are poisoned with NaN before each call.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
pytest.importorskip("triton")

from multi_turboquant.formats import get_format  # noqa: E402
from multi_turboquant.formats.params import ChannelParams  # noqa: E402
from multi_turboquant.kernels import naive, triton_decode  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402
from multi_turboquant.kernels.triton_attention import paged_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU_TOL = {"norm_tol": 5e-3} if DEVICE == "cuda" else {}  # fp16/bf16 dot operands on the GPU (see below)
FORMATS = ("turboquant25", "turboquant35", "isoquant3", "isoquant4", "planarquant3", "planarquant4")


class Case:
    """A random paged batch: cache, block table and the float K/V/Q it was built from."""

    def __init__(self, layout: KVCacheLayout, seq_lens: list[int], q_lens: list[int], group: int,
                 key_params: ChannelParams | None = None, value_params: ChannelParams | None = None,
                 store_new: bool = True, seed: int | None = None) -> None:
        self.seed = random.randrange(1 << 30) if seed is None else seed
        gen = torch.Generator().manual_seed(self.seed)
        bs, hkv, d = layout.block_size, layout.num_kv_heads, layout.head_dim
        pages = [-(-n // bs) for n in seq_lens]
        num_blocks = sum(pages) + 3
        self.layout, self.key_params, self.value_params = layout, key_params, value_params
        self.cache = torch.full(layout.shape(num_blocks), 0xFF, dtype=torch.uint8)
        perm = torch.randperm(num_blocks, generator=gen)
        # entries beyond a sequence's pages name an unused page of 0xFF records (NaN if ever read)
        self.poisoned_page = int(perm[-1])
        self.block_table = torch.full((len(seq_lens), max(pages) + 1), self.poisoned_page, dtype=torch.int32)
        self.keys, self.values = [], []
        used = 0
        for b, (n, q) in enumerate(zip(seq_lens, q_lens)):
            self.block_table[b, :pages[b]] = perm[used:used + pages[b]]
            used += pages[b]
            k = torch.randn(n, hkv, d, generator=gen) * 2 + 0.5
            v = torch.randn(n, hkv, d, generator=gen)
            kept = n if store_new else n - q
            slots = (self.block_table[b, :pages[b]].long()[:, None] * bs + torch.arange(bs)).reshape(-1)[:kept]
            naive.store(k[:kept], v[:kept], self.cache, slots, layout, key_params, value_params, torch.arange(kept))
            self.keys.append(k)
            self.values.append(v)
        self.seq_lens = torch.tensor(seq_lens, dtype=torch.int32)
        self.query_start_loc = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
        self.query = torch.randn(sum(q_lens), hkv * group, d, generator=gen)
        self.new_key = torch.cat([k[n - q:] for k, n, q in zip(self.keys, seq_lens, q_lens)])
        self.new_value = torch.cat([v[n - q:] for v, n, q in zip(self.values, seq_lens, q_lens)])

    def free_before_window(self, window: int) -> None:
        """Point the pages wholly before each sequence's first query's window at the poisoned page, as vLLM's
        sliding-window manager points them at its null block: reading one gives NaN."""
        starts = self.query_start_loc.tolist()
        for b, n in enumerate(self.seq_lens.tolist()):
            first = naive.window_start(n - (starts[b + 1] - starts[b]), window)
            self.block_table[b, :first // self.layout.block_size] = self.poisoned_page

    def args(self, dtype: torch.dtype = torch.float32, fresh: bool = False) -> tuple:
        new = (self.new_key.to(DEVICE, dtype), self.new_value.to(DEVICE, dtype)) if fresh else (None, None)
        return (self.query.to(DEVICE, dtype), self.cache.to(DEVICE), self.layout, self.block_table.to(DEVICE),
                self.seq_lens.to(DEVICE), self.query_start_loc.to(DEVICE), 0.3, self.key_params, self.value_params,
                *new)

    def reference(self, dtype: torch.dtype = torch.float32, fresh: bool = False, window: int | None = None,
                  sinks: torch.Tensor | None = None) -> torch.Tensor:
        """The plain-PyTorch result, computed on the CPU whatever DEVICE is."""
        args = (a.cpu() if isinstance(a, torch.Tensor) else a for a in self.args(dtype, fresh))
        return naive.paged_attention(*args, window=window, sinks=None if sinks is None else sinks.cpu())

    def check(self, dtype: torch.dtype = torch.float32, fresh: bool = False, tol: float = 2e-4,
              norm_tol: float | None = None, **kw) -> torch.Tensor:
        """Kernel vs reference elementwise within tol, or, given norm_tol, by ||out - ref|| / ||ref|| (for float16
        dots, whose rounding moves single elements by more than a tight elementwise bound allows)."""
        args = self.args(dtype, fresh)
        ref = self.reference(dtype, fresh, window=kw.get("window"), sinks=kw.get("sinks"))
        out = torch.full_like(args[0], float("nan"))
        got = paged_attention(*args, out=out, **kw)
        assert got is out
        if norm_tol is None:
            torch.testing.assert_close(out.cpu().float(), ref.float(), atol=tol, rtol=tol,
                                       msg=lambda m: f"seed {self.seed}: {m}")
        else:
            err = float((out.cpu().float() - ref.float()).norm() / ref.float().norm())
            assert not out.isnan().any() and err <= norm_tol, f"seed {self.seed}: relative error {err:.2e}"
        return out


def _layout(kf: str, vf: str, d: int = 64, hkv: int = 2, bs: int = 16) -> KVCacheLayout:
    return KVCacheLayout(kf, vf, d, hkv, bs)


@pytest.mark.parametrize("key_format", FORMATS)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_every_format(key_format: str, head_dim: int) -> None:
    value_format = FORMATS[(FORMATS.index(key_format) + 3) % len(FORMATS)]  # K and V in different families
    case = Case(_layout(key_format, value_format, head_dim, bs=16 if head_dim == 64 else 32),
                seq_lens=[37, 1, 80], q_lens=[1, 1, 1], group=2)
    case.check(max_query_len=1, max_seq_len=80, num_splits=1 if head_dim == 64 else 3)


@pytest.mark.parametrize("group", [1, 4, 6])
def test_decode_gqa_groups_and_splits(group: int) -> None:
    case = Case(_layout("isoquant4", "turboquant25", hkv=2 if group < 6 else 1), seq_lens=[100, 33, 64, 2],
                q_lens=[1] * 4, group=group)
    for splits in (1, 5):
        case.check(num_splits=splits)


@pytest.mark.parametrize("formats", [("turboquant35", "isoquant3"), ("planarquant3", "planarquant4")])
@pytest.mark.parametrize("fresh", [False, True])
def test_prefill_and_chunked_prefill(formats: tuple[str, str], fresh: bool) -> None:
    # a full prefill (q = seq_len), chunked prefills (q < seq_len) and a decode in one launch
    case = Case(_layout(*formats, bs=32), seq_lens=[40, 30, 9, 70], q_lens=[40, 9, 1, 20], group=2,
                store_new=not fresh)
    case.check(fresh=fresh, num_splits=2 if fresh else None)


@pytest.mark.parametrize("key_format", FORMATS)
def test_decode_half_dots(key_format: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the GPU's float16 key dot operands, emulated by the interpreter: float16 rounding of the query and key
    # levels; record scales far outside float16's range must not matter (per-row scaling of the query, record
    # scales applied to the scores). The GPU's bfloat16 value dots are checked on the GPU (attention.py --check).
    monkeypatch.setattr(triton_decode, "HALF_DOTS", True)
    value_format = FORMATS[(FORMATS.index(key_format) + 2) % len(FORMATS)]
    for magnitude in (1e-6, 1e6):
        # calibration scale s: records hold x / s (scales ~1/s), the query features carry s
        params = ChannelParams(offset=torch.ones(64), scale=torch.full((64,), magnitude))
        case = Case(_layout(key_format, value_format), seq_lens=[70, 5, 33], q_lens=[1, 1, 1], group=4,
                    key_params=params, value_params=params, store_new=False)
        case.check(norm_tol=2e-3, num_splits=2, fresh=True)


def test_decode_skips_sequences_without_query() -> None:
    case = Case(_layout("planarquant4", "isoquant3"), seq_lens=[20, 9, 41], q_lens=[1, 0, 1], group=2)
    case.check(max_query_len=1, max_seq_len=41, num_splits=3)


def test_fresh_tokens_in_decode() -> None:
    case = Case(_layout("turboquant25", "planarquant3"), seq_lens=[50, 1], q_lens=[1, 1], group=4, store_new=False)
    case.check(fresh=True, max_query_len=1, max_seq_len=50, num_splits=2)


def test_channel_params_per_head() -> None:
    gen = torch.Generator().manual_seed(random.randrange(1 << 30))
    hkv, d = 2, 64
    key_params = ChannelParams(offset=torch.randn(hkv, d, generator=gen), scale=torch.rand(hkv, d, generator=gen) + 0.3,
                               outliers=torch.stack([torch.randperm(d, generator=gen)[:5] for _ in range(hkv)]))
    value_params = ChannelParams(offset=torch.randn(d, generator=gen), scale=torch.rand(d, generator=gen) + 0.5)
    case = Case(_layout("turboquant35", "isoquant4", d, hkv), seq_lens=[45, 20], q_lens=[1, 20], group=2,
                key_params=key_params, value_params=value_params, store_new=False)
    case.check(fresh=True)
    case = Case(_layout("planarquant4", "turboquant25", d, hkv), seq_lens=[45, 3], q_lens=[1, 1], group=2,
                key_params=ChannelParams(scale=key_params.scale), value_params=ChannelParams(
                    offset=key_params.offset, outliers=key_params.outliers))
    case.check(num_splits=2)


@pytest.mark.parametrize("key_format", ["isoquant4", "turboquant25", "planarquant3"])
@pytest.mark.parametrize("half", [False, True])
def test_key_centroid(key_format: str, half: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # format version 2: keys nearer the calibration centroid than the offset are stored relative to it (the
    # scale's sign bit); the kernels add query . (centroid - offset) to those keys' scores
    monkeypatch.setattr(triton_decode, "HALF_DOTS", half)
    gen = torch.Generator().manual_seed(random.randrange(1 << 30))
    hkv, d = 2, 64
    scale = None if key_format.startswith("turbo") else torch.rand(hkv, d, generator=gen) + 0.5
    key_params = ChannelParams(offset=torch.randn(hkv, d, generator=gen) * 0.3, scale=scale,
                               centroid=0.5 + 0.2 * torch.randn(hkv, d, generator=gen))
    for q_lens in ([1, 20, 1], [1, 1, 1]):  # the prefill kernel (with a decode in the batch), the decode kernel
        case = Case(_layout(key_format, "isoquant3", d, hkv), seq_lens=[70, 20, 33], q_lens=q_lens, group=2,
                    key_params=key_params, store_new=False)
        fmt = get_format(key_format)
        flags = fmt.encode(torch.cat(case.keys), key_params)[..., -fmt.flag_byte] >= 0x80
        assert 0 < int(flags.sum()) < flags.numel()  # both kinds of record are read
        case.check(fresh=True, num_splits=2, **({"norm_tol": 2e-3} if half else {}))


@pytest.mark.parametrize("key_format", ["isoquant3", "turboquant35"])
@pytest.mark.parametrize("centroid", [False, True])
def test_position_offset(key_format: str, centroid: bool) -> None:
    # the key offset follows the position (one row per OFFSET_BUCKET positions): the store subtracts the token's
    # row, the kernels add query . (row - first row) per key (per tile in decode)
    gen = torch.Generator().manual_seed(random.randrange(1 << 30))
    hkv, d = 2, 64
    table = torch.randn(3, hkv, d, generator=gen)
    scale = None if key_format.startswith("turbo") else torch.rand(hkv, d, generator=gen) + 0.5
    key_params = ChannelParams(scale=scale, position_offset=table,
                               centroid=0.5 + 0.2 * torch.randn(hkv, d, generator=gen) if centroid else None)
    for q_lens in ([1, 40, 1], [1, 1, 1]):  # the prefill kernel (crossing a bucket edge), the decode kernel
        case = Case(_layout(key_format, "planarquant4", d, hkv), seq_lens=[700, 280, 33], q_lens=q_lens, group=2,
                    key_params=key_params, store_new=False)
        cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in case.args()[:7]]
        plain = naive.paged_attention(*cpu_args, ChannelParams(scale=scale, offset=table[0]))
        # GPU: fp16 key dots, tf32 prefill dots over 700 positions measure 2.0-2.2e-3 (H200, 8 runs)
        out = case.check(fresh=True, num_splits=2, **GPU_TOL)
        assert not torch.allclose(out.cpu(), plain, atol=1e-2)  # the rows past the first changed the result


def test_value_centroid_is_refused() -> None:
    params = ChannelParams(centroid=torch.zeros(64))
    case = Case(_layout("isoquant4", "isoquant4"), seq_lens=[5], q_lens=[1], group=2, value_params=params)
    with pytest.raises(ValueError, match="value centroid"):
        paged_attention(*case.args())


def test_half_precision_query() -> None:
    case = Case(_layout("isoquant3", "turboquant35"), seq_lens=[60, 30], q_lens=[1, 30], group=2, store_new=False)
    out = case.check(dtype=torch.bfloat16, fresh=True, tol=2e-2)
    assert out.dtype == torch.bfloat16


def test_nan_is_never_hidden() -> None:
    case = Case(_layout("turboquant25", "isoquant4"), seq_lens=[40, 40], q_lens=[1, 1], group=2)
    case.query[1, 3, 5] = float("nan")
    out = paged_attention(*case.args(), num_splits=2)
    assert out[1, 3].isnan().all() and not out[0].isnan().any() and not out[1, :3].isnan().any()
    # a record inside the sequence that decodes to NaN poisons the rows that see it
    case = Case(_layout("isoquant3", "planarquant3"), seq_lens=[40], q_lens=[1], group=2)
    page = int(case.block_table[0, 1])
    case.cache[page, 1, 3] = 0xFF
    out = paged_attention(*case.args(), num_splits=2)
    assert out[0, 2:].isnan().all() and not out[0, :2].isnan().any()


def test_reference_window_boundary() -> None:
    # vLLM's window (flash-attn window_size=(W - 1, 0)): a query at p sees keys p - W + 1 .. p. With a zero query
    # every visible key weighs the same, so a value equal to its key's position averages the visible positions.
    positions = torch.arange(40, dtype=torch.float32)
    v = positions[:, None, None].expand(40, 1, 16)
    for window in (1, 2, 7, 40, 100):
        for first, n in ((0, 40), (30, 10), (39, 1)):
            out = naive.attend(torch.zeros(n, 2, 16), torch.zeros(40, 1, 16), v[:first + n], 1.0, first, window)
            q_pos = first + torch.arange(n)
            lo = (q_pos - window + 1).clamp_min(0)
            torch.testing.assert_close(out[:, :, 0], ((lo + q_pos) / 2.0)[:, None].expand(n, 2))


def test_reference_sinks() -> None:
    # a sink logit s joins each head's softmax without a value: with a zero query (every key's logit 0) and values
    # equal to their positions, the output is sum(positions) / (n + e^s)
    v = torch.arange(10, dtype=torch.float32)[:, None, None].expand(10, 1, 8)
    sinks = torch.tensor([-30.0, 0.0, 1.5])
    out = naive.attend(torch.zeros(1, 3, 8), torch.zeros(10, 1, 8), v, 1.0, 9, sinks=sinks)
    torch.testing.assert_close(out[0, :, 0], 45.0 / (10 + sinks.exp()))


@pytest.mark.parametrize("q_lens", [[1, 1, 1], [1, 20, 1]])  # the decode kernel, the prefill kernel
def test_sinks(q_lens: list[int]) -> None:
    # gpt-oss: per-head sink logits with a sliding window, value offsets (which the sink scales too) and splits
    gen = torch.Generator().manual_seed(random.randrange(1 << 30))
    params = ChannelParams(offset=torch.randn(2, 64, generator=gen))
    case = Case(_layout("turboquant25", "planarquant4"), seq_lens=[70, 20, 33], q_lens=q_lens, group=2,
                value_params=params, store_new=False)
    sinks = (torch.randn(4, generator=gen) * 2).to(DEVICE)
    plain = case.check(fresh=True, num_splits=2, window=30, **GPU_TOL)
    out = case.check(fresh=True, num_splits=2, window=30, sinks=sinks, **GPU_TOL)
    assert not torch.allclose(out, plain, atol=1e-3)
    case.check(fresh=True, num_splits=1, sinks=sinks, **GPU_TOL)


WINDOW_CASES = {  # seq_lens, q_lens, fresh: decode (the decode kernel), prefill and chunked prefill with a decode
    "decode": ([200, 37, 130, 1], [1, 1, 1, 1], False),
    "decode-fresh": ([200, 37, 130, 1], [1, 1, 1, 1], True),
    "prefill-fresh": ([70, 60, 130, 9], [70, 20, 1, 9], True),
    "chunked": ([100, 9], [33, 9], False),
}


@pytest.mark.parametrize("kind", list(WINDOW_CASES))
def test_sliding_window(kind: str) -> None:
    # windows ending inside a page, at a page edge, past a kernel tile (32 prefill / 64 decode positions) and
    # (decode) of one key; pages before each sequence's first query's window are freed (poisoned)
    seq_lens, q_lens, fresh = WINDOW_CASES[kind]
    case = Case(_layout("isoquant4", "turboquant35"), seq_lens=seq_lens, q_lens=q_lens, group=2, store_new=not fresh)
    full = case.reference(fresh=fresh)
    windows = (45, 16, 1) if kind.startswith("decode") else (45, 16)  # one key: the decode kernel's case
    for window in windows:  # longest first: each frees the pages the next one frees and more
        case.free_before_window(window)
        out = case.check(fresh=fresh, num_splits=2, window=window, **GPU_TOL)
        assert not torch.allclose(out.cpu(), full, atol=1e-3)


@pytest.mark.parametrize("formats", [("turboquant25", "isoquant4"), ("isoquant3", "planarquant4"),
                                     ("planarquant3", "turboquant35")])
def test_head_dim_256_gemma_shape(formats: tuple[str, str]) -> None:
    # Gemma-3-270M: 4 query heads on 1 KV head of 256 dims, sliding window 512 (here 40); every format as K or V
    # through the decode and the prefill kernel
    for q_lens in ([1, 1], [20, 6]):
        case = Case(_layout(*formats, d=256, hkv=1), seq_lens=[80, 30], q_lens=q_lens, group=4, store_new=False)
        case.free_before_window(40)
        case.check(fresh=True, window=40, num_splits=2, **GPU_TOL)


def test_bad_input() -> None:
    case = Case(_layout("isoquant4", "isoquant4"), seq_lens=[5], q_lens=[1], group=1)
    args = list(case.args())
    with pytest.raises(ValueError, match="query must be"):
        paged_attention(args[0].to(torch.int32), *args[1:])
    with pytest.raises(ValueError, match="KV cache must be uint8"):
        paged_attention(args[0], args[1].float(), *args[2:])
    with pytest.raises(ValueError, match="multiple of"):
        paged_attention(torch.zeros(1, 3, 64), *args[1:])
    with pytest.raises(ValueError, match="together"):
        paged_attention(*args[:9], args[0][:, :2])
    with pytest.raises(ValueError, match=r"sinks must be a float tensor of one logit per query head \(2,\)"):
        paged_attention(*args, sinks=torch.zeros(3))
    with pytest.raises(ValueError, match="sinks must be a float tensor"):
        naive.paged_attention(*args, sinks=torch.zeros(2, dtype=torch.int64))
    for window in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"sliding window must be None or a positive int.*{window!r}"):
            paged_attention(*args, window=window)
        with pytest.raises(ValueError, match="sliding window must be"):
            naive.paged_attention(*args, window=window)
    layout = KVCacheLayout("isoquant4", "isoquant4", 96, 1, 16)
    with pytest.raises(ValueError, match="unsupported head_dim 96"):
        paged_attention(torch.zeros(1, 1, 96), torch.zeros(layout.shape(1), dtype=torch.uint8), layout,
                        *args[3:7])


def test_decode_ptx_has_no_byte_wide_shared_access() -> None:
    # byte-wide shared-memory stores from an int8 layout conversion crashed the H100 ("misaligned address");
    # compiled for sm_90a offline, in a process without TRITON_INTERPRET
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_registers.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(script), "--formats", "isoquant3", "turboquant35"], env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if "byte-wide shared accesses" in line]
    assert run.returncode == 0 and len(lines) == 2, run.stderr[-2000:]
    assert all(line.endswith("byte-wide shared accesses: 0") for line in lines), lines
