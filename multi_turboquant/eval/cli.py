"""`mtq bench ...` and `mtq demo`."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..formats.cli import formats_table, render_formats_table


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
    from .synthetic import format_rows, quality_table

    print("multi-turboquant formats (packed bytes per head vector, K or V):\n")
    print(render_formats_table(formats_table()))
    print("\nQuality on synthetic keys/values (head_dim 128; CPU reference codecs):\n", flush=True)
    print(format_rows(quality_table(head_dim=128, n_tokens=2048)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks of the reference codecs")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    q = bsub.add_parser("quality", help="round-trip and attention error on synthetic data vs int4/fp8")
    q.add_argument("--head-dim", type=int, default=128)
    q.add_argument("--tokens", type=int, default=4096)
    q.add_argument("--queries", type=int, default=256)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_quality)
    t = bsub.add_parser("throughput", help="CPU encode/decode time of the reference codecs")
    t.add_argument("--vectors", type=int, default=1 << 20)
    t.add_argument("--head-dim", type=int, default=128)
    t.add_argument("--formats", default="", help="comma-separated names (default: all)")
    t.set_defaults(func=_throughput)
    d = sub.add_parser("demo", help="the main job on the embedded default: formats and their quality")
    d.set_defaults(func=_demo)
