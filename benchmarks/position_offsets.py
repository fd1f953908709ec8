"""Study: which key offset does RoPE leave useful? Uncalibrated, one offset for the whole horizon (format version 2's
calibration), one per bucket of positions (what the plugin does, 256), and the exact one per position (R_p · pre-RoPE
mean, which attention could only undo per key). HF harness, SmolLM2-135M, windows of the Debian license corpus,
key statistics over a horizon of 8192 positions, value calibration as usual; "+sink" adds the key centroid.

    python benchmarks/position_offsets.py [WINDOW] [N_WINDOWS] [FORMATS] [VARIANTS (each with the centroid)]

hfK: the exact offset for the K highest-frequency RoPE pairs (channels i and i + d/2, i < K: they turn by more than
a radian per few positions, so a bucket's mean of them is near zero) and the per-256 bucket for the others.
"""
import sys

import torch
from multi_turboquant.models import default_model
from multi_turboquant.eval.hooks import load_model
from multi_turboquant.eval.codecs import format_codec
from multi_turboquant.eval.corpus import load_text, split_tokens
from multi_turboquant.eval.calibrate import collect_kv, _rotary, _cos_sin
from multi_turboquant.eval.metrics import perplexity
from multi_turboquant.formats import ChannelParams
from multi_turboquant.formats.params import fit_channel_params
torch.set_num_threads(2)
lm = load_model(default_model())
text, src = load_text()
ids = lm.tokenizer(text, return_tensors="pt").input_ids[0]
WIN = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
NWIN = int(sys.argv[2]) if len(sys.argv) > 2 else 3
fmts = sys.argv[3].split(",") if len(sys.argv) > 3 else ["isoquant4", "isoquant3"]
ev, cal = split_tokens(ids, WIN * NWIN, 8192)
kv = collect_kv(lm, cal, 1024)
L = 8192
cos, sin = _cos_sin(_rotary(lm), L, lm.device)
cos, sin = cos.cpu(), sin.cpu()
def per_pos(s):  # post-RoPE mean and mean square per position (L, H, d)
    mean, square, cross = s.pre_rope
    h = mean.shape[-1] // 2
    c, sn = cos[:, None], sin[:, None]
    ma, mb, qa, qb = mean[..., :h], mean[..., h:], square[..., :h], square[..., h:]
    M = torch.cat((ma * c[..., :h] - mb * sn[..., :h], mb * c[..., h:] + ma * sn[..., h:]), -1)
    Q = torch.cat((qa * c[..., :h]**2 + qb * sn[..., :h]**2 - 2 * cross * c[..., :h] * sn[..., :h],
                   qb * c[..., h:]**2 + qa * sn[..., h:]**2 + 2 * cross * c[..., h:] * sn[..., h:]), -1)
    return M, Q
def bucketed(M, bucket):
    nb = L // bucket
    return M.reshape(nb, bucket, *M.shape[1:]).mean(1, keepdim=True).expand(nb, bucket, *M.shape[1:]).reshape(M.shape)
def key_params(s, bucket):
    M, Q = per_pos(s)
    if bucket == 0:   # one offset (horizon mean)
        off = M.mean(0, keepdim=True).expand_as(M)
    elif isinstance(bucket, tuple):  # ("hf", k): exact for the k highest-frequency RoPE pairs, per 256 for the rest
        k, h = bucket[1], M.shape[-1] // 2
        off = bucketed(M, 256).clone()
        for lo in (0, h):
            off[..., lo:lo + k] = M[..., lo:lo + k]
    else:
        nb = L // bucket
        off = M.reshape(nb, bucket, *M.shape[1:]).mean(1, keepdim=True).expand(nb, bucket, *M.shape[1:]).reshape(M.shape)
    var = (Q - 2 * M * off + off**2).mean(0)  # E_p[(k - off_p)^2]
    rms = var.clamp_min(0).sqrt()
    scale = rms.clamp_min(rms.mean(-1, keepdim=True) * 1e-3).float()
    return off.float(), scale
VARIANTS = {"none": None, "horizon": 0, "bucket1024": 1024, "bucket256": 256, "bucket64": 64, "exact": 1,
            "hf4": ("hf", 4), "hf8": ("hf", 8), "hf16": ("hf", 16)}
ONLY = sys.argv[4].split(",") if len(sys.argv) > 4 else list(VARIANTS)  # variants to run, each with the centroid
def run(fmt, variant, sink):
    codec = format_codec(fmt)
    b = VARIANTS[variant]
    layers = {}
    for i, s in enumerate(kv):
        if b is None:
            layers[i] = (lambda x, pos, c=codec: c.roundtrip(x, None),) * 2
            continue
        off, scale = key_params(s, b)
        vp = fit_channel_params(s.value, center=True, equalize=True, n_outliers=s.value.shape[-1] // 2)
        vp = ChannelParams(vp.offset, None, vp.outliers) if codec.family == "turboquant" else ChannelParams(vp.offset, vp.scale)
        cen = s.sink_key if sink else None
        def kfn(x, pos, off=off, scale=scale, cen=cen, c=codec):
            if c.family == "turboquant":
                p = ChannelParams(off[pos][None], None, scale.topk(scale.shape[-1] // 2, -1).indices.sort(-1).values, cen)
            else:
                p = ChannelParams(off[pos][None], scale, None, cen)
            return c.roundtrip(x, p)
        layers[i] = (kfn, lambda x, pos, vp=vp, c=codec: c.roundtrip(x, vp))
    lm.hook.layers, lm.hook.exact_prefix = layers, 0
    try:
        return perplexity(lm.model, ev, WIN)
    finally:
        lm.hook.layers = {}
base = perplexity(lm.model, ev, WIN)
print(f"window {WIN} x {NWIN}; auto ppl {base:.3f}", flush=True)
for fmt in fmts:
    row = []
    for v in ONLY:
        for sink in ((False,) if v == "none" else (True,) if len(ONLY) < len(VARIANTS) else (False, True)):
            p = run(fmt, v, sink)
            row.append(f"{v}{'+sink' if sink else ''} {100*(p/base-1):+.1f}%")
    print(fmt, " | ".join(row), flush=True)
