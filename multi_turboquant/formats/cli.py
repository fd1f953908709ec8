"""`mtq formats`: the format table."""
from __future__ import annotations

import argparse
import json

from .._help import examples

TABLE_HEAD_DIMS = (64, 128, 256)


def formats_table() -> list[dict]:
    """One dict per format: name, family, payload bits, bytes/vector and compression vs bf16."""
    from .registry import FORMATS

    rows = []
    for fmt in FORMATS.values():
        row = {"name": fmt.name, "family": fmt.family, "bits": fmt.bits}
        for d in TABLE_HEAD_DIMS:
            row[f"bytes_d{d}"] = fmt.bytes_per_vector(d)
            row[f"vs_bf16_d{d}"] = round(2 * d / fmt.bytes_per_vector(d), 3)
        rows.append(row)
    return rows


def render_formats_table(rows: list[dict]) -> str:
    head = ["format", "family", "payload bits"] + [f"B/vec d={d}" for d in TABLE_HEAD_DIMS] + \
        [f"x bf16 d={d}" for d in TABLE_HEAD_DIMS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r["family"], f"{r['bits']:g}"] + [str(r[f"bytes_d{d}"]) for d in TABLE_HEAD_DIMS] + \
            [f"{r[f'vs_bf16_d{d}']:.2f}" for d in TABLE_HEAD_DIMS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    rows = formats_table()
    print(json.dumps(rows, indent=2) if args.json else render_formats_table(rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("formats", help="list the KV-cache formats: bits, bytes per vector, compression vs bf16",
                       **examples("mtq formats --json"))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run)
