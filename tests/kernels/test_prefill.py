"""kernels/prefill.py (FlashAttention over decoded K/V) against the packed-cache reference, PyTorch SDPA standing in
for FlashAttention."""
from __future__ import annotations

import pytest
import torch

from multi_turboquant.formats.params import ChannelParams
from multi_turboquant.kernels import naive, prefill
from multi_turboquant.kernels.layout import KVCacheLayout

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter (tests/conftest.py)


def _case(layout: KVCacheLayout, seq_lens: list[int], q_lens: list[int], group: int, key_params=None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    bs, hkv, d = layout.block_size, layout.num_kv_heads, layout.head_dim
    pages = [-(-n // bs) for n in seq_lens]
    cache = torch.full(layout.shape(sum(pages) + 1), 0xFF, dtype=torch.uint8)  # unused pages decode to NaN
    table = torch.full((len(seq_lens), max(pages) + 2), sum(pages), dtype=torch.int32)
    used = 0
    for b, n in enumerate(seq_lens):
        table[b, :pages[b]] = torch.arange(used, used + pages[b])
        used += pages[b]
        slots = (table[b, :pages[b]].long()[:, None] * bs + torch.arange(bs)).reshape(-1)[:n]
        naive.store(torch.randn(n, hkv, d, generator=gen) + 0.3, torch.randn(n, hkv, d, generator=gen), cache, slots,
                    layout, key_params, None, torch.arange(n))
    starts = torch.tensor([0, *q_lens]).cumsum(0)
    query = torch.randn(int(starts[-1]), hkv * group, d, generator=gen)
    return query, cache, table, torch.tensor(seq_lens), starts


@pytest.mark.parametrize("formats, group, d", [(("isoquant3", "planarquant4"), 2, 64),
                                               (("turboquant35", "isoquant4"), 1, 128),
                                               (("planarquant3", "turboquant25"), 7, 64)])
def test_matches_the_packed_reference(formats, group, d, monkeypatch):
    monkeypatch.setattr(prefill, "GATHER_TOKENS", 160)  # several segment groups, the longest row cut
    layout = KVCacheLayout(*formats, d, 2, 16)
    seq_lens, q_lens = [70, 5, 33, 130, 16], [70, 3, 20, 2, 16]  # whole prompts and continuation chunks
    query, cache, table, lens, starts = _case(layout, seq_lens, q_lens, group)
    ref = naive.paged_attention(query, cache, layout, table, lens, starts, 0.3)
    out = prefill.prefill(query, cache, layout, table, seq_lens, starts.tolist(), 0.3)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_rows_after_decode_rows_and_position_offsets():
    # the backend passes the prefill rows' query starts into the whole batch (after its decode tokens)
    layout = KVCacheLayout("isoquant4", "isoquant4", 64, 2, 16)
    gen = torch.Generator().manual_seed(1)
    params = ChannelParams(position_offset=torch.randn(3, 2, 64, generator=gen), scale=torch.rand(2, 64) + 0.5)
    query, cache, table, lens, starts = _case(layout, [40, 600, 300], [1, 1, 60], 2, params)
    ref = naive.paged_attention(query, cache, layout, table, lens, starts, 0.3, params)
    out = prefill.prefill(query, cache, layout, table[2:], [300], [2, 62], 0.3, params)
    torch.testing.assert_close(out, ref[2:], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, prefill.prefill(query, cache, layout, table[2:], [300], [2, 62], 0.3), atol=1e-2)


def test_bad_lengths_are_refused():
    layout = KVCacheLayout("isoquant4", "isoquant4", 64, 2, 16)
    query, cache, table, lens, starts = _case(layout, [10], [4], 2)
    with pytest.raises(ValueError, match="do not fit together"):
        prefill.prefill(query, cache, layout, table, [3], [0, 4], 0.3)  # more queries than tokens
    with pytest.raises(ValueError, match="do not fit together"):
        prefill.prefill(query, cache, layout, table, [10, 4], [0, 4], 0.3)
    with pytest.raises(ValueError, match="KV cache must be uint8"):
        prefill.prefill(query, cache.float(), layout, table, [10], [0, 4], 0.3)


@pytest.mark.parametrize("formats, d", [(("isoquant3", "turboquant25"), 64), (("turboquant35", "planarquant4"), 32),
                                        (("planarquant3", "isoquant4"), 128), (("isoquant4", "turboquant35"), 256)])
def test_triton_decode_matches_the_reference_decoder(formats, d, monkeypatch):
    # the FlashAttention path's K/V decoder (one Triton launch: records -> features -> head vectors, offsets
    # added in registers) against naive.gather, with every kind of key calibration: scale, centroid (flagged
    # records), position-dependent offsets; head sizes whose feature parts are 16 to 256 wide
    from multi_turboquant.kernels import triton_dequant

    gen = torch.Generator().manual_seed(2)
    layout = KVCacheLayout(*formats, d, 2, 16)
    scale = None if formats[0].startswith("turbo") else torch.rand(2, d, generator=gen) + 0.5
    params = ChannelParams(position_offset=torch.randn(3, 2, d, generator=gen), scale=scale,
                           centroid=torch.randn(2, d, generator=gen))
    seq_lens = [600, 5, 33]
    _, cache, table, _, _ = _case(layout, seq_lens, [1, 1, 1], 2, params)
    monkeypatch.setattr(prefill, "GATHER_TOKENS", 256)  # launch groups: the long row cut, short rows joined
    for kp in (params, None):
        ref_k, ref_v = prefill.decode_sequences(cache, layout, prefill.Plan.build(table, seq_lens), kp, None,
                                                torch.float32)
        k, v = triton_dequant.decode_sequences(cache.to(DEVICE), layout, prefill.Plan.build(table.to(DEVICE)[1:],
                                                                                             seq_lens[1:]),
                                               kp and kp.map(lambda t: t.to(DEVICE)), None, torch.float32)
        torch.testing.assert_close(k.cpu(), ref_k[600:], rtol=1e-4, atol=1e-4)  # an unaligned row slice
        torch.testing.assert_close(v.cpu(), ref_v[600:], rtol=1e-4, atol=1e-4)
        k, v = triton_dequant.decode_sequences(cache.to(DEVICE), layout, prefill.Plan.build(table.to(DEVICE),
                                                                                             seq_lens),
                                               kp and kp.map(lambda t: t.to(DEVICE)), None, torch.float32)
        torch.testing.assert_close(k.cpu(), ref_k, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v.cpu(), ref_v, rtol=1e-4, atol=1e-4)
        k, _ = triton_dequant.decode_sequences(cache.to(DEVICE), layout, prefill.Plan.build(table.to(DEVICE),
                                                                                             seq_lens),
                                               kp and kp.map(lambda t: t.to(DEVICE)), None, torch.bfloat16)
        assert k.dtype == torch.bfloat16  # written in the attention's dtype
        torch.testing.assert_close(k.cpu(), ref_k.bfloat16())


@pytest.mark.parametrize("formats, hkv, calibrated", [(("isoquant3", "turboquant25"), 2, True),
                                                      (("turboquant35", "planarquant4"), 1, False)])
def test_warm_up_launches_every_variant(formats, hkv, calibrated, monkeypatch):
    # the engine-start warm-up: store in each of default_warps' classes, decode and prefill with one split and with
    # each merge kernel variant's split count, the FlashAttention path's decoder; each launch really runs (Triton's interpreter on a CPU-only machine)
    from multi_turboquant.kernels import triton_attention, triton_dequant, triton_store, warmup

    calls = []

    def spy(module, name, describe):
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            calls.append(describe(*args, **kwargs))
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)

    assert {triton_store.default_warps(rows) for rows in warmup.STORE_ROWS} == {1, 2, 4}  # every warps class
    monkeypatch.setattr(warmup, "STORE_ROWS", (1, 3, 5))  # the same launches at interpreter-sized counts
    spy(triton_store, "store", lambda k, *a, **kw: ("store", k.shape[0] * k.shape[1]))
    spy(triton_attention, "paged_attention", lambda q, *a, **kw: ("attention", kw["max_query_len"] > 1,
                                                                  kw["num_splits"], kw["window"]))
    spy(triton_dequant, "decode_sequences", lambda *a, **kw: ("dequant",))
    layout = KVCacheLayout(*formats, 64, hkv, 16)
    params = None
    if calibrated:
        params = ChannelParams(position_offset=torch.randn(3, hkv, 64), scale=torch.rand(hkv, 64) + 0.5,
                               centroid=torch.randn(hkv, 64))
    warmup.warm_up(layout, params, None, 2 * hkv, torch.float32, torch.device(DEVICE), window=40)
    tokens = sorted({-(-rows // hkv) for rows in (1, 3, 5)})
    assert sorted(c for c in calls if c[0] == "store") == [("store", t * hkv) for t in tokens]
    assert sorted(c for c in calls if c[0] == "attention") == [("attention", p, s, 40) for p in (False, True)
                                                               for s in (1, *triton_attention.MERGE_WIDTHS)]
    # every split count the heuristic can pick (up to 64) lands on a merge variant the warm-up compiled
    assert {triton_attention.merge_width(s) for s in range(2, 65)} == set(triton_attention.MERGE_WIDTHS)
    assert calls.count(("dequant",)) == 1


def test_decode_segments_cut_long_rows_and_join_short_ones():
    from multi_turboquant.kernels.prefill import segments

    assert segments([600, 5, 33], 256) == [[(0, 0, 256)], [(0, 256, 256)], [(0, 512, 88), (1, 0, 5), (2, 0, 33)]]
    assert segments([3, 4], 8) == [[(0, 0, 3), (1, 0, 4)]]
    assert segments([], 8) == []


def test_plan_holds_a_batch_geometry_on_the_device(monkeypatch):
    # one Plan per engine step: segments with their output rows, cu_seqlens_k, and a block table the Triton
    # decoder can take (a row slice is copied to 16-byte alignment, with the same contents); lengths that do not
    # fit the table are refused by both decoders
    from multi_turboquant.kernels import triton_dequant

    monkeypatch.setattr(prefill, "GATHER_TOKENS", 256)
    table = torch.arange(3 * 41, dtype=torch.int32).reshape(3, 41)
    plan = prefill.Plan.build(table[1:], [600, 5])
    assert plan.block_table.data_ptr() % 16 == 0 and torch.equal(plan.block_table, table[1:])
    assert plan.groups == [[(0, 0, 256)], [(0, 256, 256)], [(0, 512, 88), (1, 0, 5)]]
    assert [s.tolist() for s in plan.seg] == [[[0, 0, 256, 0]], [[0, 256, 256, 0]], [[0, 512, 88, 0], [1, 0, 5, 88]]]
    assert plan.cu_seqlens_k.tolist() == [0, 600, 605] and plan.cu_seqlens_k.dtype == torch.int32
    assert prefill.Plan.build(table, [1, 2, 3]).block_table is table  # aligned already: no copy
    assert prefill.query_start_loc_tensor([7, 9, 15], torch.device("cpu")).tolist() == [0, 2, 8]
    layout = KVCacheLayout("isoquant3", "isoquant3", 64, 1, 16)
    cache = torch.zeros(layout.shape(123), dtype=torch.uint8)
    for lengths in ([41 * 16 + 1], [1, 1, 1], [-1]):  # past the row's pages, more rows than the table, negative
        bad = prefill.Plan(table[1:], lengths, [], [], torch.zeros(1))
        for decode in (prefill.decode_sequences, triton_dequant.decode_sequences):
            with pytest.raises(ValueError, match="do not fit a block table"):
                decode(cache, layout, bad, None, None, torch.float32)
