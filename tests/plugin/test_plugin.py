"""The plugin's registration, routing, refusals and page sizes, without starting an engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm.config.cache import CacheConfig  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402
from vllm.v1.attention.selector import AttentionSelectorConfig  # noqa: E402

from multi_turboquant.formats import FORMATS  # noqa: E402
from multi_turboquant.kernels import naive  # noqa: E402
from multi_turboquant.vllm import compat, plugin, state  # noqa: E402
from multi_turboquant.vllm.backend import MTQAttentionBackend, MTQAttentionImpl, MTQMetadata  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def registered():
    plugin.register()


def selector(kv_cache_dtype: str, head_size: int = 64, **kw) -> AttentionSelectorConfig:
    return AttentionSelectorConfig(head_size=head_size, dtype=torch.bfloat16, kv_cache_dtype=kv_cache_dtype,
                                   block_size=32, **kw)


def test_all_six_names_are_accepted_and_vllm_dtypes_still_are():
    plugin.register()  # idempotent
    assert plugin.registered_kv_cache_dtypes() == list(FORMATS)
    assert len(compat.accepted_cache_dtypes()) == len(set(compat.accepted_cache_dtypes()))
    for name in (*FORMATS, "auto", "fp8", "turboquant_3bit_nc"):
        assert CacheConfig(cache_dtype=name).cache_dtype == name
    with pytest.raises(Exception, match="isoquant9"):
        CacheConfig(cache_dtype="isoquant9")


@pytest.mark.parametrize("version", ["0.34.0", "0.25.1", "1.0.0"])
def test_unsupported_vllm_version_is_named_with_the_supported_range(version):
    with pytest.raises(compat.UnsupportedVLLMVersion, match=f"vLLM 0.26.x to 0.33.x; this is vLLM {version}"):
        compat.check_version(version)


@pytest.mark.parametrize("version", ["0.26.0", "0.27.1", "0.27.0rc1", "0.30.0", "0.32.0+cpu", "0.33.1.dev4+g1234abc"])
def test_supported_versions(version):
    compat.check_version(version)


def probe_register(mode: str) -> dict:
    script = Path(__file__).with_name("register_probe.py")
    env = {k: v for k, v in os.environ.items() if k != plugin.WARNED}
    proc = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_unknown_vllm_version_registers_nothing_and_warns_once():
    result = probe_register("unknown-version")
    assert result["unchanged"]
    assert result["accepts"] == {"auto": True, "fp8": True, "isoquant3": False}
    assert len(result["warnings"]) == 1, result["warnings"]
    assert result["child_warnings"] == []  # vLLM's engine and worker processes stay quiet
    assert f"this is vLLM {vllm.__version__}" in result["warnings"][0]
    assert "isoquant3" in result["warnings"][0]
    for name in ("require", "build_llm"):
        assert result["errors"][name].startswith("UnsupportedVLLMVersion: multi-turboquant supports vLLM 0.26.x"), \
            result["errors"]
    assert "not a model folder" in result["errors"]["build_llm_auto"]  # vLLM's own dtypes pass


def test_registration_failing_half_way_leaves_vllm_as_it_was():
    result = probe_register("moved-internal")
    assert result["accepted_mid_way"]  # the failing step came after the names were added
    assert result["unchanged"]
    assert result["accepts"] == {"auto": True, "fp8": True, "isoquant3": False}
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "ImportError" in result["warnings"][0] and "extract_layer_index" in result["warnings"][0]
    assert result["errors"]["build_llm"].startswith("RegistrationFailed: multi-turboquant could not register")


def test_selector_routes_only_our_formats():
    for name in FORMATS:
        assert current_platform.get_attn_backend_cls(None, selector(name)) == plugin.BACKEND
    assert current_platform.get_attn_backend_cls(None, selector("auto")) != plugin.BACKEND


@pytest.mark.parametrize("kw, match", [
    ({"use_mla": True}, r"MLA attention \(its cache holds one latent vector per token shared by all heads, not the "
                        "per-head K and V"),
    ({"use_non_causal": True}, "non-causal"),
    ({"use_pcp": True}, "prefill context parallelism"),
    ({"use_dcp": True}, "decode context parallelism"),  # vLLM 0.29+
    ({"use_rswa": True}, "reference sliding-window"),  # vLLM 0.30+
    ({"head_size": 72}, "head_size 72"),
    ({"head_size": 576}, "head_size 576"),
])
def test_unservable_layers_are_refused_at_engine_build(kw, match):
    head_size = kw.pop("head_size", 64)
    if not set(kw) <= set(AttentionSelectorConfig._fields):
        pytest.skip(f"vLLM {vllm.__version__} has no {kw}")
    with pytest.raises(ValueError, match=match):
        current_platform.get_attn_backend_cls(None, selector("isoquant3", head_size, **kw))


def packed_spec(slot_bytes: int):
    return compat.packed_kv_spec(block_size=32, num_kv_heads=3, head_size=64, head_size_v=64, slot_bytes=slot_bytes)


def test_page_is_the_packed_bytes():
    spec = packed_spec(52)
    assert spec.page_size_bytes == 32 * 3 * 52
    assert type(spec).merge([spec, spec]).page_size_bytes == 32 * 3 * 52
    with pytest.raises((ValueError, AssertionError)):
        type(spec).merge([spec, packed_spec(68)])


def test_sliding_layers_get_vllms_sliding_window_spec():
    # vLLM's SlidingWindowManager (chosen by the spec's type) frees the blocks that left the window; the page is
    # the full-attention layers' packed page, and the per-request block cap the window's
    from vllm.v1.core.single_type_kv_cache_manager import SlidingWindowManager
    from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec
    from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

    spec = compat.packed_kv_spec(block_size=32, num_kv_heads=1, head_size=256, head_size_v=256, slot_bytes=260,
                                 sliding_window=512)
    assert isinstance(spec, SlidingWindowSpec) and not isinstance(spec, FullAttentionSpec)
    assert spec.sliding_window == 512
    assert KVCacheSpecRegistry.get_manager_class(spec) is SlidingWindowManager
    assert spec.page_size_bytes == 32 * 260 == packed_spec(260).page_size_bytes // 3
    assert type(spec).merge([spec, spec]) == spec
    assert spec.max_admission_blocks_per_request(max_in_flight_tokens=32, max_model_len=8192) == 18


def test_vllm_views_the_cache_as_the_kernels_lay_it_out():
    state.activate("isoquant4", {})
    layout = state.layout(64, 3, 32)
    if compat.minor_version(vllm.__version__) < compat.SPEC_CACHE_VIEWS:  # the shape is get_kv_cache_shape's
        assert MTQAttentionBackend.get_kv_cache_shape(10, 32, 3, 64) == layout.shape(10)
        return
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts
    from vllm.v1.kv_cache_interface import KVCacheLayout, compute_layer_kv_cache_shape_bytes

    assert compute_layer_kv_cache_shape_bytes(packed_spec(layout.slot_bytes), 10) == layout.shape(10)
    vllm_backend = resolve_obj_by_qualname(current_platform.get_attn_backend_cls(None, selector("auto")))
    for backends in ([MTQAttentionBackend], [MTQAttentionBackend, vllm_backend]):  # the second: keep_layers
        assert get_supported_kv_cache_layouts(backends)[0] == KVCacheLayout.LBHNC


def test_cache_shape_follows_the_active_formats():
    state.activate("isoquant4", {"multi_turboquant": {"value_format": "turboquant25"}})
    k, v = FORMATS["isoquant4"].bytes_per_vector(64), FORMATS["turboquant25"].bytes_per_vector(64)
    assert MTQAttentionBackend.get_kv_cache_shape(10, 32, 3, 64) == (10, 3, 32, k + v)


@pytest.mark.parametrize("kw, match", [
    ({"alibi_slopes": [1.0] * 4}, "ALiBi"),
    ({"logits_soft_cap": 30.0}, "soft-capping"),
    ({"sinks": torch.zeros(3)}, r"attention sinks must hold one logit per query head \(4,\), got \(3,\)"),
])
def test_impl_refuses_unsupported_features(kw, match):
    with pytest.raises(ValueError, match=match):
        MTQAttentionImpl(4, 64, 0.125, 2, kv_cache_dtype="isoquant4", **kw)


class Layer(torch.nn.Module):
    layer_name = "model.layers.3.self_attn.attn"


def run_chunks(impl, q, k, v, chunks: list[int], block_table) -> torch.Tensor:
    """Feed one sequence through store + attention in the given chunk sizes; return all outputs."""
    state.activate("isoquant4", {})
    layout = state.layout(64, 2, 16)
    cache = torch.zeros(layout.shape(8), dtype=torch.uint8)
    outs, done = [], 0
    for n in chunks:
        pos = torch.arange(done, done + n)
        slots = block_table[0, pos // 16].long() * 16 + pos % 16
        impl.do_kv_cache_update(Layer(), k[done:done + n], v[done:done + n], cache, slots)
        meta = MTQMetadata(num_actual_tokens=n, max_query_len=n, max_seq_len=done + n,
                           query_start_loc=torch.tensor([0, n]), seq_lens=torch.tensor([done + n]),
                           block_table=block_table, slot_mapping=slots, positions=pos)
        out = torch.full((n, 4 * 64), float("nan"))
        outs.append(impl.forward(Layer(), q[done:done + n].reshape(n, -1), None, None, cache, meta, out))
        done += n
    return torch.cat(outs)


def test_chunked_prefill_and_decode_match_one_prefill():
    torch.manual_seed(0)
    state.activate("isoquant4", {})
    impl = MTQAttentionImpl(4, 64, 0.125, 2, kv_cache_dtype="isoquant4")
    q, k, v = torch.randn(40, 4, 64), torch.randn(40, 2, 64), torch.randn(40, 2, 64)
    table = torch.tensor([[5, 1, 7]], dtype=torch.int32)
    whole = run_chunks(impl, q, k, v, [40], table)
    chunked = run_chunks(impl, q, k, v, [17, 20, 1, 1, 1], table)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(whole).all()
    cache = torch.zeros(state.layout(64, 2, 16).shape(8), dtype=torch.uint8)
    naive.store(k, v, cache, (table[0, torch.arange(40) // 16].long() * 16 + torch.arange(40) % 16),
                state.layout(64, 2, 16))
    ref = naive.paged_attention(q, cache, state.layout(64, 2, 16), table, torch.tensor([40]),
                                torch.tensor([0, 40]), 0.125)
    torch.testing.assert_close(whole.reshape(40, 4, 64), ref)


def test_sinks_and_sliding_windows_are_served():
    assert MTQAttentionBackend.supports_sink() and MTQAttentionBackend.supports_sliding_window()
    for kw in ({"has_sink": True}, {"has_sliding_window": True}):
        if set(kw) <= set(AttentionSelectorConfig._fields):
            assert current_platform.get_attn_backend_cls(None, selector("isoquant3", 64, **kw)) == plugin.BACKEND


def test_keep_layers_is_refused_for_a_model_mixing_sliding_and_full_layers():
    # vLLM's hybrid KV cache needs one page size across its groups (its own error otherwise, mid-build)
    def engine(layer_types, keep):
        model = SimpleNamespace(get_num_layers=lambda parallel: 2, get_total_num_kv_heads=lambda: 1,
                                get_head_size=lambda: 64, model="m", max_model_len=1024,
                                hf_text_config=SimpleNamespace(layer_types=layer_types))
        extra = {"multi_turboquant": {"calibration": "none", "keep_layers": keep}}
        return SimpleNamespace(model_config=model, parallel_config=None,
                               cache_config=SimpleNamespace(cache_dtype="isoquant4"), additional_config=extra)

    with pytest.raises(ValueError, match="keep_layers is not supported for a model that mixes sliding-window"):
        state.activate_engine(engine(["sliding_attention", "full_attention"], [1]))
    assert state.activate_engine(engine(["sliding_attention", "full_attention"], [])).keep_layers == frozenset()
    assert state.activate_engine(engine(["full_attention"] * 2, [1])).keep_layers == {1}


def test_sliding_window_layer_attends_within_its_window():
    # the impl takes vLLM's sliding_window and every chunking gives the reference's windowed attention
    torch.manual_seed(0)
    state.activate("isoquant4", {})
    layout = state.layout(64, 2, 16)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])  # gpt-oss: both features in one layer
    impl = MTQAttentionImpl(4, 64, 0.125, 2, sliding_window=10, kv_cache_dtype="isoquant4", sinks=sinks)
    q, k, v = torch.randn(40, 4, 64), torch.randn(40, 2, 64), torch.randn(40, 2, 64)
    table = torch.tensor([[5, 1, 7]], dtype=torch.int32)
    whole = run_chunks(impl, q, k, v, [40], table)
    torch.testing.assert_close(run_chunks(impl, q, k, v, [17, 20, 1, 1, 1], table), whole, rtol=1e-5, atol=1e-5)
    cache = torch.zeros(layout.shape(8), dtype=torch.uint8)
    naive.store(k, v, cache, (table[0, torch.arange(40) // 16].long() * 16 + torch.arange(40) % 16), layout)
    args = (q, cache, layout, table, torch.tensor([40]), torch.tensor([0, 40]), 0.125)
    torch.testing.assert_close(whole.reshape(40, 4, 64), naive.paged_attention(*args, window=10, sinks=sinks))
    assert not torch.allclose(whole.reshape(40, 4, 64), naive.paged_attention(*args, window=10), atol=1e-2)


def write_calibration(path, layers: int, heads: int = 2, head_dim: int = 64):
    from multi_turboquant.formats.calibration import save_calibration
    from multi_turboquant.formats.params import ChannelParams

    torch.manual_seed(1)
    params = [(ChannelParams(offset=torch.randn(heads, head_dim), scale=torch.rand(heads, head_dim) + 0.5,
                             outliers=torch.arange(8).repeat(heads, 1)),
               ChannelParams(offset=torch.randn(heads, head_dim))) for _ in range(layers)]
    save_calibration(path, params, head_dim=head_dim, num_kv_heads=heads, model="test", corpus="random")
    return params


def test_calibration_is_checked_against_the_model_at_build(tmp_path):
    path = tmp_path / "turboquant_kv.json"
    write_calibration(path, layers=4)
    config = {"multi_turboquant": {"calibration": str(path)}}
    state.activate("isoquant4", config, (4, 2, 64))
    with pytest.raises(ValueError, match="4 layers x 2 KV heads of head_dim 64; this model has 30 x 3 of 64"):
        state.activate("isoquant4", config, (30, 3, 64))


def test_calibration_reaches_the_layer_per_format_family(tmp_path):
    path = tmp_path / "turboquant_kv.json"
    params = write_calibration(path, layers=4)
    state.activate("turboquant35", {"multi_turboquant": {"calibration": str(path), "value_format": "isoquant3"}})
    key, value = state.channel_params("model.layers.2.self_attn.attn")
    assert torch.equal(key.outliers, params[2][0].outliers) and key.scale is None  # TurboQuant keys: no scale
    assert torch.equal(value.offset, params[2][1].offset)
    impl = MTQAttentionImpl(4, 64, 0.125, 2, kv_cache_dtype="turboquant35")
    layout = state.layout(64, 2, 16)
    cache = torch.zeros(layout.shape(4), dtype=torch.uint8)
    k = torch.randn(16, 2, 64)
    impl.do_kv_cache_update(type("L", (), {"layer_name": "model.layers.2.self_attn.attn"})(), k, k, cache,
                            torch.arange(16))
    plain = torch.zeros_like(cache)
    naive.store(k, k, plain, torch.arange(16), layout)
    assert not torch.equal(cache, plain)  # the calibration changed the records
    calibrated = torch.zeros_like(cache)
    naive.store(k, k, calibrated, torch.arange(16), layout, key, value)
    assert torch.equal(cache, calibrated)


def test_decode_batches_replay_full_cuda_graphs_split_for_the_longest_context():
    from types import SimpleNamespace

    from vllm.v1.attention.backend import AttentionCGSupport

    from multi_turboquant.vllm.backend import MTQMetadataBuilder

    assert MTQMetadataBuilder.get_cudagraph_support(None, None) == AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    config = SimpleNamespace(model_config=SimpleNamespace(max_model_len=4096),
                             scheduler_config=SimpleNamespace(max_num_batched_tokens=8, max_num_seqs=4))
    builder = MTQMetadataBuilder(None, [], config, torch.device("cpu"))
    common = SimpleNamespace(num_actual_tokens=2, max_query_len=1, max_seq_len=7, query_start_loc=torch.arange(3),
                             seq_lens=torch.tensor([7, 5]), block_table_tensor=torch.zeros(2, 1),
                             slot_mapping=torch.arange(2))
    assert builder.build(0, common).max_seq_len == 7  # eager steps split for the batch's own longest context
    captured = builder.build_for_cudagraph_capture(common)
    assert captured.max_seq_len == 4096 and captured.seq_lens is common.seq_lens  # persistent buffers kept


@pytest.mark.parametrize("total,tp,expected", [(8, 2, [[0, 1, 2, 3], [4, 5, 6, 7]]), (8, 1, [list(range(8))]),
                                               (2, 4, [[0], [0], [1], [1]]), (1, 2, [[0], [0]])])
def test_rank_heads_follow_vllms_split(total, tp, expected):
    assert [state.rank_heads(total, tp, r) for r in range(tp)] == expected
    with pytest.raises(ValueError, match="do not split"):
        state.rank_heads(6, 4, 0)


def test_calibration_is_sliced_per_tensor_parallel_rank(tmp_path, monkeypatch):
    path = tmp_path / "turboquant_kv.json"
    params = write_calibration(path, layers=4, heads=4)
    state.activate("isoquant4", {"multi_turboquant": {"calibration": str(path)}}, (4, 4, 64))
    whole = state.channel_params("model.layers.1.self_attn.attn")
    monkeypatch.setattr(state, "_tensor_parallel", lambda: (2, 1))
    key, value = state.channel_params("model.layers.1.self_attn.attn")
    assert torch.equal(key.offset, params[1][0].offset[2:]) and torch.equal(key.scale, whole[0].scale[2:])
    assert torch.equal(value.offset, params[1][1].offset[2:])


def test_tables_are_built_on_the_cpu_under_vllms_default_device(tmp_path):
    """vLLM builds the model under a default CUDA device; here `meta` stands in for it: the calibration's key
    position table (and every other table) is still made on the CPU, as a standalone run makes it."""
    from multi_turboquant.formats.calibration import Rope, load_calibration, save_calibration
    from multi_turboquant.formats.params import ChannelParams

    heads, d = 2, 64
    path = tmp_path / "turboquant_kv.json"
    layers = [(ChannelParams(scale=torch.ones(heads, d)), ChannelParams(offset=torch.zeros(heads, d)))] * 4
    rope = Rope(10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d), 1.0, 1000)
    save_calibration(path, layers, head_dim=d, num_kv_heads=heads, model="m", corpus="c", rope=rope,
                     rope_means=tuple(torch.randn(heads, d) for _ in layers))
    state.activate("isoquant4", {"multi_turboquant": {"calibration": str(path)}})
    with torch.device("meta"):  # first, so that no table is cached yet
        key, _ = state.channel_params("model.layers.1.self_attn.attn", positions=5000)
    assert key.position_offset.device.type == "cpu"
    assert torch.equal(key.position_offset, rope.position_offset(load_calibration(path).rope_means[1], 20))


def test_positions_cover_padded_and_dummy_steps(monkeypatch):
    """A step padded for a CUDA graph stores more rows than it schedules (the pads have slot -1), and a dummy run
    (profiling, capture) may have no metadata: both get positions instead of an error."""
    from types import SimpleNamespace

    import vllm.forward_context

    from multi_turboquant.vllm import backend

    config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_batched_tokens=8, max_num_seqs=4))
    builder = backend.MTQMetadataBuilder(None, [], config, torch.device("cpu"))
    common = SimpleNamespace(num_actual_tokens=2, max_query_len=1, max_seq_len=7, query_start_loc=torch.arange(3),
                             seq_lens=torch.tensor([7, 5]), block_table_tensor=torch.zeros(2, 1),
                             slot_mapping=torch.arange(2))
    meta = builder.build(0, common)
    context = SimpleNamespace(attn_metadata={"layer": meta})
    monkeypatch.setattr(vllm.forward_context, "get_forward_context", lambda: context)
    assert backend._positions("layer", 4, torch.device("cpu"))[:2].tolist() == [6, 4]  # padded to 4 rows
    with pytest.raises(RuntimeError, match="no token positions for layer layer"):
        backend._positions("layer", 9, torch.device("cpu"))
    context.attn_metadata = None
    assert backend._positions("layer", 3, torch.device("cpu")).tolist() == [0, 0, 0]


def test_prefill_rows_go_to_flash_attention_over_decoded_kv(monkeypatch):
    # a batch ordered decodes first: decode rows through the packed kernel, prefill rows (whole prompts and
    # continuation chunks) through FlashAttention (here PyTorch's SDPA) over K/V decoded from their pages
    from multi_turboquant.kernels import prefill
    from multi_turboquant.vllm import backend
    from multi_turboquant.vllm.backend import prefill_split

    torch.manual_seed(0)
    state.activate("isoquant3", {"multi_turboquant": {"calibration": "none"}})
    layout = state.layout(64, 2, 16)
    seq_lens, q_lens = [30, 17, 50, 24], [1, 1, 20, 24]
    table = torch.arange(16, dtype=torch.int32).reshape(4, 4)
    cache = torch.zeros(layout.shape(16), dtype=torch.uint8)
    for b, n in enumerate(seq_lens):
        slots = table[b, torch.arange(n) // 16].long() * 16 + torch.arange(n) % 16
        naive.store(torch.randn(n, 2, 64), torch.randn(n, 2, 64), cache, slots, layout)
    starts = torch.tensor([0, *q_lens]).cumsum(0)
    common = SimpleNamespace(max_query_len=24, num_reqs=4, query_start_loc_cpu=starts,
                             seq_lens_cpu_upper_bound=torch.tensor(seq_lens))
    split = prefill_split(common)
    assert (split.num_decodes, split.num_decode_tokens, split.seq_lens, split.query_start_loc) == \
        (2, 2, [50, 24], [2, 22, 46])
    n = int(starts[-1])
    q = torch.randn(n, 4 * 64, dtype=torch.bfloat16)
    meta = MTQMetadata(num_actual_tokens=n, max_query_len=24, max_seq_len=50, query_start_loc=starts,
                       seq_lens=torch.tensor(seq_lens), block_table=table, slot_mapping=torch.arange(n),
                       positions=torch.zeros(n, dtype=torch.int64), prefill=split)
    impl = MTQAttentionImpl(4, 64, 0.125, 2, kv_cache_dtype="isoquant3")
    assert impl._flash is None  # vLLM's CPU build has no FlashAttention
    packed = impl.forward(Layer(), q, None, None, cache, meta, torch.full((n, 256), float("nan"), dtype=q.dtype))
    impl._flash = prefill.sdpa_varlen
    assert split.pairs == 20 * 50 + 24 * 24
    small = impl.forward(Layer(), q, None, None, cache, meta, torch.full((n, 256), float("nan"), dtype=q.dtype))
    assert torch.equal(small, packed)  # too little work to pay for decoding the context: the packed kernel
    monkeypatch.setattr(backend, "FLASH_MIN_WORK", split.pairs * 256)
    flash = impl.forward(Layer(), q, None, None, cache, meta, torch.full((n, 256), float("nan"), dtype=q.dtype))
    torch.testing.assert_close(flash, packed, rtol=2e-2, atol=2e-2)  # bf16 K/V handed to the dense kernel
    assert torch.equal(flash[:2], packed[:2])  # decode rows: the same packed kernel
    plan = split.device_plan(table)  # built by the first layer, reused by the step's next ones
    again = impl.forward(Layer(), q, None, None, cache, meta, torch.full((n, 256), float("nan"), dtype=q.dtype))
    assert split.device_plan(table) is plan and torch.equal(again, flash)
    # batches the split does not serve: decode only, prefill rows before decode rows, no host lengths
    assert prefill_split(SimpleNamespace(**common.__dict__ | {"max_query_len": 1})) is None
    unordered = torch.tensor([0, 20, 21, 22, 46])
    assert prefill_split(SimpleNamespace(**common.__dict__ | {"query_start_loc_cpu": unordered})) is None
    assert prefill_split(SimpleNamespace(**common.__dict__ | {"seq_lens_cpu_upper_bound": None})) is None
    with pytest.raises(ValueError, match="prefill must be 'flash' or 'packed'"):
        state.activate("isoquant3", {"multi_turboquant": {"prefill": "fast"}})
