"""Attention error of every format on real K/V/Q captured from a Hugging Face causal LM.

Captures post-RoPE queries, keys and values of every layer for two slices of an English text (one
to calibrate, one to evaluate), then reports the causal attention error per format and calibration
(K only, V only, both), averaged over layers. Needs `transformers`; nothing is fetched from a hub.

    python benchmarks/real_kv_attention.py --model ~/.cache/multi-turboquant/models/smollm2-135m-bf16 \
        --text /usr/share/common-licenses/GPL-3
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import multi_turboquant as mtq  # noqa: E402
from multi_turboquant.eval.baselines import BASELINES  # noqa: E402
from multi_turboquant.formats.params import fit_channel_params  # noqa: E402
from multi_turboquant.formats.base import scalar_quantize  # noqa: E402
from multi_turboquant.formats.codebooks import dequantize  # noqa: E402
from multi_turboquant.formats.turboquant import channel_permutation, default_outlier_order  # noqa: E402

Capture = dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # layer -> q, k, v as (heads, T, d)


def capture(model_dir: str, text: str, slices: list[tuple[int, int]]) -> list[Capture]:
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    caps: Capture = {}

    def record(module, q, k, v, mask, **kw):
        caps[module.layer_idx] = (q.detach().float()[0], k.detach().float()[0], v.detach().float()[0])
        return sdpa_attention_forward(module, q, k, v, mask, **kw)

    AttentionInterface.register("mtq_capture", record)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="mtq_capture")
    ids = tok(text, return_tensors="pt").input_ids
    out = []
    for a, b in slices:
        if ids.shape[1] < b:
            raise ValueError(f"text has {ids.shape[1]} tokens, slice {a}:{b} needs more")
        caps.clear()
        with torch.no_grad():
            model(ids[:, a:b])
        out.append(dict(caps))
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention, (Hq, T, d) x (Hk, T, d)."""
    g = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
    s = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    t = q.shape[1]
    s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), -torch.inf)
    return torch.softmax(s, -1) @ v


def mse_only_turboquant(fmt, x: torch.Tensor, params) -> torch.Tensor:
    """TurboQuant's bits spent on the MSE stage alone (outlier/regular halves at m+2/m+1 bits, no QJL).

    The ablation of the format's 1-bit QJL residual: same rotations, split and calibration, same payload
    bits. x: (T, heads, d) keys; params as for the format.
    """
    d = x.shape[-1]
    h = d // 2
    rot_o, rot_n, _ = fmt.transforms(d)
    canon = x if params is None or params.offset is None else x - params.offset
    out = torch.empty_like(x)
    for head in range(x.shape[1]):
        outliers = None if params is None or params.outliers is None else params.outliers[head].tolist()
        perm = channel_permutation(d, outliers)
        xp = canon[:, head, perm]
        parts = []
        for rot, half, bits in ((rot_o, xp[:, :h], fmt.mse_bits + 2), (rot_n, xp[:, h:], fmt.mse_bits + 1)):
            codes, alpha = scalar_quantize(rot.forward(half), bits)
            parts.append(rot.inverse(alpha * dequantize(codes, bits)))
        out[:, head, perm] = torch.cat(parts, -1)
    return out if params is None or params.offset is None else out + params.offset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    calib, ev = capture(args.model, Path(args.text).read_text(), [(0, args.tokens), (2000, 2000 + args.tokens)])
    layers = sorted(ev)
    d = ev[0][1].shape[-1]
    refs = {l: attention(*ev[l]) for l in layers}

    def err(fn) -> float:
        return sum(((attention(ev[l][0], *fn(l)) - refs[l]).norm() / refs[l].norm()).item() for l in layers) / len(layers)

    share = [((ev[l][1] ** 2).mean(1)[:, default_outlier_order(d)].sum(-1) / (ev[l][1] ** 2).mean(1).sum(-1)).mean()
             for l in layers]
    print(f"key energy in TurboQuant's default outlier half: {float(sum(share) / len(share)):.3f} (of 1.0)\n")

    def params(l: int, kind: str):
        sample = calib[l][1].transpose(0, 1)  # (T, heads, d)
        return {"plain": None, "center": fit_channel_params(sample, center=True),
                "center+scale": fit_channel_params(sample, center=True, equalize=True),
                "center+outliers32": fit_channel_params(sample, center=True, n_outliers=d // 2)}[kind]

    def roundtrip(fmt, x: torch.Tensor, p, keep_first: bool) -> torch.Tensor:
        out = fmt.decode(fmt.encode(x.transpose(0, 1), p), d, params=p).transpose(0, 1)
        if keep_first:
            out[:, 0] = x[:, 0]
        return out

    print("| format | bits/coord | K calibration | K only | V only | K and V | K and V, first token exact |")
    print("|---|---|---|---|---|---|---|")
    for name, fmt in mtq.FORMATS.items():
        kinds = ["plain", "center", "center+outliers32" if fmt.family == "turboquant" else "center+scale"]
        for kind in kinds:
            kq = {l: roundtrip(fmt, ev[l][1], params(l, kind), False) for l in layers}
            vq = {l: roundtrip(fmt, ev[l][2], None, False) for l in layers}
            k_only = err(lambda l: (kq[l], ev[l][2]))
            v_only = err(lambda l: (ev[l][1], vq[l]))
            both = err(lambda l: (kq[l], vq[l]))
            sink = err(lambda l: (roundtrip(fmt, ev[l][1], params(l, kind), True), roundtrip(fmt, ev[l][2], None, True)))
            print(f"| {name} | {fmt.bits_per_coordinate(d):.3f} | {kind} | {k_only:.4f} | {v_only:.4f} | {both:.4f} | {sink:.4f} |",
                  flush=True)
    for b in BASELINES:
        k_only = err(lambda l: (b.roundtrip(ev[l][1]), ev[l][2]))
        v_only = err(lambda l: (ev[l][1], b.roundtrip(ev[l][2])))
        both = err(lambda l: (b.roundtrip(ev[l][1]), b.roundtrip(ev[l][2])))
        print(f"| {b.name} | {b.bits_per_coordinate(d):.3f} | - | {k_only:.4f} | {v_only:.4f} | {both:.4f} | |")
    print("\nTurboQuant's 1-bit QJL residual against spending that bit on the MSE stage (K only, same bits):\n")
    print("| format | K calibration | with QJL (the format) | MSE only, same bits |\n|---|---|---|---|")
    for name in ("turboquant25", "turboquant35"):
        fmt = mtq.get_format(name)
        for kind in ("plain", "center+outliers32"):
            with_qjl = err(lambda l: (roundtrip(fmt, ev[l][1], params(l, kind), False), ev[l][2]))
            mse = err(lambda l: (mse_only_turboquant(fmt, ev[l][1].transpose(0, 1), params(l, kind)).transpose(0, 1),
                                 ev[l][2]))
            print(f"| {name} | {kind} | {with_qjl:.4f} | {mse:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
