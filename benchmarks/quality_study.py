"""The quality study (BENCHMARKS.md, "Quality study"): what limits the formats on SmolLM2-135M, measured with
choices that need no byte-layout change. Perplexity only (no greedy agreement), windows of 1024 tokens.

Calibration statistics always come from the last 4096 tokens of the corpus; evaluation from the first
`--tokens`; the layer scan measures on the first 1024 calibration tokens (never on the evaluation text).

  python benchmarks/quality_study.py scale isoquant3 --key-alpha 0.5,0.75,1,1.25,1.5 [--value-alpha 1]
  python benchmarks/quality_study.py scale isoquant3 --query-weighted
  python benchmarks/quality_study.py outliers turboquant25 --counts 32,0 [--query-weighted]
  python benchmarks/quality_study.py layers isoquant3
  python benchmarks/quality_study.py rows --pairs isoquant4:turboquant25 --presets turboquant_3bit_nc \
      --keep isoquant3@19
"""
from __future__ import annotations

import argparse
import time

import torch

from multi_turboquant.eval.calibrate import LayerKV, collect_kv
from multi_turboquant.eval.codecs import BF16, Codec, format_codec
from multi_turboquant.eval.corpus import load_text, split_tokens
from multi_turboquant.eval.hooks import LoadedModel, Scheme, load_model
from multi_turboquant.eval.metrics import perplexity
from multi_turboquant.models import default_model
from multi_turboquant.eval.presets import preset_codecs
from multi_turboquant.formats import ChannelParams
from multi_turboquant.formats.calibration import Calibration

WINDOW, CALIB_TOKENS = 1024, 4096


def channel_rms(x: torch.Tensor) -> torch.Tensor:
    """RMS around the channel mean of (tokens, heads, d), floored at 1e-3 of the head's mean (as calibrate)."""
    r = (x - x.mean(0)).pow(2).mean(0).sqrt()
    return r.clamp_min(r.mean(-1, keepdim=True) * 1e-3)


def stream_params(x: torch.Tensor, alpha: float, outliers: torch.Tensor | None) -> ChannelParams:
    """offset = channel mean, scale = channel RMS ** alpha (alpha 1: what `mtq calibrate` writes)."""
    return ChannelParams(offset=x.mean(0), scale=channel_rms(x).pow(alpha), outliers=outliers)


def top_channels(score: torch.Tensor, k: int) -> torch.Tensor | None:
    return score.topk(k, dim=-1).indices.sort(-1).values if k else None


def calibration(kv: list[LayerKV], key_alpha: float = 1.0, value_alpha: float = 1.0, outliers: int = 32,
                query_weighted: bool = False) -> Calibration:
    """Per layer: key/value params; with query_weighted, key outliers are ranked by channel RMS times the query
    RMS and the key scale is sqrt(key RMS / query RMS) (the minimum of the logit error for equal per-channel
    quantization noise), else RMS ** key_alpha."""
    layers = []
    for s in kv:
        q_rms = s.query_ms.sqrt().clamp_min(1e-6)
        key = stream_params(s.key, key_alpha, top_channels(channel_rms(s.key) * (q_rms if query_weighted else 1),
                                                           outliers))
        if query_weighted:
            key = ChannelParams(key.offset, (channel_rms(s.key) / q_rms).sqrt(), key.outliers)
        layers.append((key, stream_params(s.value, value_alpha, top_channels(channel_rms(s.value), outliers))))
    return Calibration(kv[0].key.shape[-1], kv[0].key.shape[1], tuple(layers))


class Study:
    """The model, the evaluation and calibration tokens, the calibration samples and the bf16 reference."""

    def __init__(self, eval_tokens: int, text: str | None) -> None:
        torch.set_num_threads(1)
        self.lm: LoadedModel = load_model(default_model())
        ids = torch.tensor(self.lm.tokenizer(load_text(text)[0]).input_ids)
        self.eval_ids, self.calib_ids = split_tokens(ids, eval_tokens, CALIB_TOKENS)
        self.kv = collect_kv(self.lm, self.calib_ids, WINDOW)
        self.reference: dict[int, float] = {}

    def ppl(self, scheme: Scheme, cal: Calibration | None, keep: frozenset[int] = frozenset(),
            ids: torch.Tensor | None = None) -> float:
        ids = self.eval_ids if ids is None else ids
        self.lm.hook.use(scheme, self.lm.num_layers, cal, keep, self.lm.device)
        try:
            return perplexity(self.lm.model, ids, WINDOW)
        finally:
            self.lm.hook.layers = {}

    def row(self, name: str, key: Codec, value: Codec, cal: Calibration | None = None,
            keep: frozenset[int] = frozenset(), ids: torch.Tensor | None = None) -> None:
        """Print one Markdown row: bits/coordinate (kept layers at 16), PPL, ΔPPL against bf16 on the same ids."""
        ids = self.eval_ids if ids is None else ids
        if ids.numel() not in self.reference:
            self.reference[ids.numel()] = self.ppl(Scheme("bf16", BF16, BF16), None, ids=ids)
            print(f"| bf16 ({ids.numel()} tokens) | 16.000 | {self.reference[ids.numel()]:.3f} | +0.00 |", flush=True)
        t0 = time.perf_counter()
        scheme = Scheme(name, key, value, calibrated=cal is not None)
        p = self.ppl(scheme, cal, keep, ids)
        n, d = self.lm.num_layers, self.lm.head_dim
        bits = ((n - len(keep)) * scheme.bits(d) + 16 * len(keep)) / n
        print(f"| {name} | {bits:.3f} | {p:.3f} | {100 * (p / self.reference[ids.numel()] - 1):+.2f} | "
              f"{time.perf_counter() - t0:.0f} s |", flush=True)


def _floats(spec: str) -> list[float]:
    return [float(v) for v in spec.split(",")]


def scale(study: Study, args: argparse.Namespace) -> None:
    c = format_codec(args.format)
    if args.query_weighted:
        study.row(f"{c.name} K scale sqrt(RMS_k / RMS_q), V RMS", c, c, calibration(study.kv, query_weighted=True))
        return
    for ka in _floats(args.key_alpha):
        for va in _floats(args.value_alpha):
            study.row(f"{c.name} K scale RMS^{ka:g}, V RMS^{va:g}", c, c, calibration(study.kv, ka, va))


def outliers(study: Study, args: argparse.Namespace) -> None:
    c = format_codec(args.format)
    for k in (int(v) for v in args.counts.split(",")):
        tag = " (query-weighted keys)" if args.query_weighted else ""
        cal = calibration(study.kv, outliers=k, query_weighted=args.query_weighted)
        study.row(f"{c.name} {k} outliers{tag}", c, c, cal)


def layers(study: Study, args: argparse.Namespace) -> None:
    """Only layer i in the format (K and V), the others bf16, on the first 1024 calibration tokens."""
    c, n = format_codec(args.format), study.lm.num_layers
    for i in range(n):
        study.row(f"{c.name} only layer {i}", c, c, calibration(study.kv), frozenset(range(n)) - {i},
                  study.calib_ids[:WINDOW])


def rows(study: Study, args: argparse.Namespace) -> None:
    cal = calibration(study.kv)
    for pair in filter(None, args.pairs.split(",")):
        k, v = pair.split(":")
        study.row(f"K {k} / V {v} +calib", format_codec(k), format_codec(v), cal)
    for name in filter(None, args.presets.split(",")):
        study.row(name, *preset_codecs(name))
    for spec in filter(None, args.keep.split(";")):
        name, kept = spec.split("@")
        keep = frozenset(int(i) for i in kept.split(","))
        if name.startswith("turboquant_"):
            study.row(f"{name} keep {sorted(keep)}", *preset_codecs(name), keep=keep)
        else:
            c = format_codec(name)
            study.row(f"{name} +calib keep {sorted(keep)}", c, c, cal, keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="evaluation tokens (2 windows)")
    parser.add_argument("--text", help="corpus (default: Debian base-files license texts)")
    sub = parser.add_subparsers(dest="study", required=True)
    s = sub.add_parser("scale")
    s.add_argument("format")
    s.add_argument("--key-alpha", default="1")
    s.add_argument("--value-alpha", default="1")
    s.add_argument("--query-weighted", action="store_true")
    s.set_defaults(func=scale)
    o = sub.add_parser("outliers")
    o.add_argument("format")
    o.add_argument("--counts", default="32,0")
    o.add_argument("--query-weighted", action="store_true")
    o.set_defaults(func=outliers)
    lay = sub.add_parser("layers")
    lay.add_argument("format")
    lay.set_defaults(func=layers)
    r = sub.add_parser("rows")
    r.add_argument("--pairs", default="", help="KEY:VALUE formats, comma-separated")
    r.add_argument("--presets", default="", help="vLLM presets, comma-separated")
    r.add_argument("--keep", default="", help="FORMAT@LAYERS items separated by ';' (a format or a preset)")
    r.set_defaults(func=rows)
    args = parser.parse_args()
    args.func(Study(args.tokens, args.text), args)


if __name__ == "__main__":
    main()
