"""The KV hook on a tiny random Llama: each cached position is quantized once, and the cached decode
reads the same K/V as the teacher-forced pass."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM  # noqa: E402

from multi_turboquant.eval.codecs import INT4, Codec, format_codec  # noqa: E402
from multi_turboquant.eval.hooks import ATTENTION_NAME, KVHook, Scheme  # noqa: E402
from multi_turboquant.eval.metrics import agreement, greedy, perplexity, prompts_from  # noqa: E402

LAYERS, KV_HEADS, D = 2, 2, 16


@pytest.fixture(scope="module")
def tiny():
    hook = KVHook()
    AttentionInterface.register(ATTENTION_NAME, hook)
    cfg = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=KV_HEADS, max_position_embeddings=128)
    cfg._attn_implementation = ATTENTION_NAME
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), hook


def test_cached_decode_quantizes_each_position_once(tiny):
    model, hook = tiny
    seen = []

    def counting(x, params=None):
        seen.append(x.shape[:-1].numel())
        return INT4.roundtrip(x, params)

    codec = Codec("count", "baseline", INT4.nbytes, counting)
    hook.use(Scheme("c", codec, codec), LAYERS)
    prompts = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(1))
    greedy(model, prompts, 4)
    # prompt (5) + 3 fed-back tokens, 3 rows, KV heads, K and V, every layer
    assert sum(seen) == (5 + 3) * 3 * KV_HEADS * 2 * LAYERS


def test_cache_and_teacher_forcing_read_the_same_kv(tiny):
    model, hook = tiny
    fmt = format_codec("planarquant3")
    hook.use(Scheme("p3", fmt, fmt), LAYERS)
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[0, -1]
        out = model(ids[:, :8], use_cache=True)
        for t in range(8, 12):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        hook.layers = {}
        exact = model(ids, use_cache=False).logits[0, -1]
    assert torch.allclose(out.logits[0, -1], full, atol=1e-4)
    assert not torch.allclose(exact, full, atol=1e-4)  # the format changed what attention read


def test_keep_bf16_and_calibration_checks(tiny):
    model, hook = tiny
    s = Scheme("p3", format_codec("planarquant3"), format_codec("planarquant3"))
    hook.use(s, LAYERS, keep_bf16=frozenset({0}))
    assert hook.layers[0][0](torch.ones(1, 2, D) / 3, torch.arange(1)).dtype == torch.float32
    from multi_turboquant.formats.calibration import Calibration
    with pytest.raises(ValueError, match="calibration has 1 layers, the model 2"):
        hook.use(s, LAYERS, Calibration(D, KV_HEADS, ((None, None),)))
    hook.layers = {}


def test_metrics_on_the_tiny_model(tiny):
    model, hook = tiny
    hook.layers = {}
    ids = torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(3))
    ppl = perplexity(model, ids, 16)
    assert 1 < ppl < 500
    p = prompts_from(ids, 4, 6)
    assert p.shape == (4, 6) and torch.equal(p[0], ids[:6]) and torch.equal(p[-1], ids[-6:])
    ref = greedy(model, p, 5)
    assert agreement(ref, ref) == (1.0, 5.0)
    other = ref.clone()
    other[0, 2] += 1
    other[1, 0] += 1
    frac, first = agreement(ref, other)
    assert frac == pytest.approx(18 / 20) and first == pytest.approx((2 + 0 + 5 + 5) / 4)
    with pytest.raises(ValueError, match="at least 2 token ids"):
        perplexity(model, ids[:1], 16)
    with pytest.raises(ValueError, match="cannot cut"):
        prompts_from(ids, 2, 41)


def test_collect_kv_groups_queries_by_kv_head(tiny):
    from multi_turboquant.eval.calibrate import collect_kv
    from multi_turboquant.eval.hooks import LoadedModel

    model, hook = tiny
    seen = {}
    hook.observe = lambda layer, q, k, v: seen.setdefault(layer, []).append(q.clone())
    ids = torch.randint(0, 50, (20,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model(ids[None], use_cache=False)
    hook.observe = None
    kv = collect_kv(LoadedModel(None, model, hook, None), ids, 8)  # windows of 8, 8, 4 tokens
    group = model.config.num_attention_heads // KV_HEADS
    for layer in kv:
        assert layer.key.shape == layer.value.shape == (20, KV_HEADS, D)
        assert layer.query_ms.shape == (KV_HEADS, D) and (layer.query_ms > 0).all()
        assert torch.allclose(layer.sink_key, layer.key[[0, 8, 16]].mean(0))  # position 0 of each window
    # one window equal to the whole text: query_ms is the mean over the group's heads and all tokens
    one = collect_kv(LoadedModel(None, model, hook, None), ids, 20)
    for i, layer in enumerate(one):
        q = seen[i][0][0]  # (query heads, T, d)
        want = torch.stack([q[h * group:(h + 1) * group].pow(2).mean((0, 1)) for h in range(KV_HEADS)])
        assert torch.allclose(layer.query_ms, want, rtol=1e-5)
    assert hook.observe is None and hook.layers == {}



def test_exact_first_policy_applies_to_every_row(tiny):
    from multi_turboquant.eval.hooks import LoadedModel
    from multi_turboquant.eval.quality import Task, measure

    model, hook = tiny
    lm = LoadedModel(None, model, hook, None)
    ids = torch.randint(0, 50, (24,), generator=torch.Generator().manual_seed(5))
    p3 = format_codec("planarquant3")
    ppl = {n: measure(lm, Scheme("p3", p3, p3), Task(ids, 12, exact_first=n))[0] for n in (0, 1, 12)}
    identity = Codec("f32", "baseline", INT4.nbytes, lambda x, p=None: x)
    unquantized = measure(lm, Scheme("f32", identity, identity), Task(ids, 12))[0]
    assert ppl[12] == pytest.approx(unquantized, rel=1e-6)  # whole windows exact: nothing went through the format
    assert len({ppl[0], ppl[1], unquantized}) == 3
    assert hook.layers == {}


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def test_calibration_turns_keys_back_before_rope(tiny):
    from multi_turboquant.eval.calibrate import _cos_sin, _rotary, collect_kv
    from multi_turboquant.eval.hooks import LoadedModel

    model, hook = tiny
    lm = LoadedModel(None, model, hook, None)
    ids = torch.randint(0, 50, (24,), generator=torch.Generator().manual_seed(5))
    kv = collect_kv(lm, ids, 8)  # three windows at positions 0..7
    cos, sin = _cos_sin(_rotary(lm), 8, "cpu")
    for layer in kv:
        k = layer.key.double().reshape(3, 8, KV_HEADS, D)
        pre = k * cos[None, :, None] - _rotate_half(k) * sin[None, :, None]  # rotation by -position
        mean, square, cross = layer.pre_rope
        assert torch.allclose(mean, pre.mean((0, 1)), atol=1e-5) and torch.allclose(square, pre.pow(2).mean((0, 1)),
                                                                                   atol=1e-5)
        assert torch.allclose(cross, (pre[..., :D // 2] * pre[..., D // 2:]).mean((0, 1)), atol=1e-5)


def test_key_moments_average_over_the_horizon(tiny):
    # keys drawn before RoPE independently of position, then turned by positions uniform over [0, L): their
    # post-RoPE mean and mean square are what key_moments derives from the pre-RoPE moments alone
    from multi_turboquant.eval.calibrate import LayerKV, _cos_sin, _rotary, key_moments
    from multi_turboquant.eval.hooks import LoadedModel

    model, hook = tiny
    horizon, n = 128, 200_000
    cos, sin = _cos_sin(_rotary(LoadedModel(None, model, hook, None)), horizon, "cpu")
    gen = torch.Generator().manual_seed(6)
    mix = torch.randn(D, D, generator=gen, dtype=torch.float64) * 0.3 + torch.eye(D, dtype=torch.float64)
    mu = torch.randn(D, generator=gen, dtype=torch.float64) * 2
    x = torch.randn(n, D, generator=gen, dtype=torch.float64) @ mix + mu  # correlated channels
    pos = torch.randint(0, horizon, (n,), generator=gen)
    post = x * cos[pos] + _rotate_half(x) * sin[pos]
    h = D // 2
    layer = LayerKV(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1),
                    (x.mean(0)[None], x.pow(2).mean(0)[None], (x[:, :h] * x[:, h:]).mean(0)[None]))
    mean, square = key_moments(layer, cos, sin)
    assert torch.allclose(mean[0], post.mean(0), atol=0.03)
    assert torch.allclose(square[0], post.pow(2).mean(0), rtol=0.03, atol=0.03)
    # and the horizon matters: the average rotation shrinks the turning pairs' mean
    assert (mean[0] - mu).abs().max() > 0.5


def test_recent_mask_splits_each_query_between_stored_and_exact_keys():
    from multi_turboquant.eval.hooks import recent_mask

    m = recent_mask(4, 2, None, "cpu")[0, 0].int()
    # query 3 reads stored keys 0, 1 and exact keys 2, 3; query 0 reads only its own exact key
    assert m.tolist() == [[0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0],
                          [1, 0, 0, 0, 0, 1, 1, 0], [1, 1, 0, 0, 0, 0, 1, 1]]
    padded = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    padded[..., 0] = False  # a padded first position
    assert not recent_mask(4, 2, padded, "cpu")[0, 0, :, [0, 4]].any()
    with pytest.raises(ValueError, match="boolean"):
        recent_mask(4, 2, torch.zeros(1, 1, 4, 4), "cpu")


def test_exact_recent_window_reads_recent_keys_exact(tiny):
    model, hook = tiny
    fmt = format_codec("isoquant3")
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hook.layers = {}
        exact = model(ids, use_cache=False).logits[0]
        logits = {}
        for r in (0, 4, 12):
            hook.use(Scheme(f"i3 r{r}", fmt, fmt, exact_recent=r), LAYERS)
            logits[r] = model(ids, use_cache=False).logits[0]
    assert torch.allclose(logits[12], exact, atol=1e-5)  # every query's keys are within its window
    # within the window of 4 the first 4 positions read exact keys only, later ones stored ones too
    assert torch.allclose(logits[4][:4], exact[:4], atol=1e-5)
    assert not torch.allclose(logits[4][4:], exact[4:], atol=1e-4)
    assert not torch.allclose(logits[4][4:], logits[0][4:], atol=1e-4)
    with pytest.raises(ValueError, match="whole-window"):
        greedy(model, ids[:, :5], 2)
    hook.layers = {}
