"""`mtq eval quality`: perplexity and greedy agreement of every KV format and its peers on a real model."""
from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..formats.calibration import Calibration
from .codecs import BF16, FP8, INT4, INT8, format_codec
from .hooks import LoadedModel, Scheme
from .metrics import agreement, greedy, perplexity
from .presets import PRESETS, preset_codecs

REFERENCE = "bf16"


@dataclass
class Result:
    name: str
    kind: str
    calibrated: bool
    bits: float  # per coordinate, K and V averaged, metadata included
    kv_bytes: int  # K + V bytes per token per layer (all KV heads)
    ppl: float
    dppl_pct: float
    agreement_pct: float | None
    first_divergence: float | None


def schemes(formats: list[str], calibrated: bool, uncalibrated: bool = True, peers: bool = True) -> list[Scheme]:
    """bf16 first (the reference), then fp8/int8/int4 and vLLM's presets, then the formats."""
    rows = [Scheme(REFERENCE, BF16, BF16, "baseline")]
    if peers:
        rows += [Scheme(c.name, c, c, "baseline") for c in (FP8, INT8, INT4)]
        rows += [Scheme(name, *preset_codecs(name), "peer") for name in PRESETS]
    for name in formats:
        codec = format_codec(name)
        if uncalibrated:
            rows.append(Scheme(name, codec, codec))
        if calibrated:
            rows.append(Scheme(f"{name} +calib", codec, codec, calibrated=True))
    return rows


def evaluate(lm: LoadedModel, rows: list[Scheme], ids: torch.Tensor, window: int, prompts: torch.Tensor | None,
             new_tokens: int, calibration: Calibration | None = None, keep_bf16: frozenset[int] = frozenset(),
             log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
             done: Callable[[list[Result]], None] = lambda results: None) -> list[Result]:
    """One Result per scheme; ΔPPL and agreement are against the first row (bf16). `done` gets the
    results so far after each row (to save partial runs)."""
    if not rows or rows[0].name != REFERENCE:
        raise ValueError(f"the first scheme must be the {REFERENCE} reference")
    if any(r.calibrated for r in rows) and calibration is None:
        raise ValueError("calibrated rows need a calibration")
    d, heads = lm.head_dim, lm.num_kv_heads
    out: list[Result] = []
    ref_ppl = ref_tokens = None
    for s in rows:
        t0 = time.perf_counter()
        lm.hook.use(s, lm.num_layers, calibration if s.calibrated else None, keep_bf16)
        ppl = perplexity(lm.model, ids, window)
        tokens = greedy(lm.model, prompts, new_tokens) if prompts is not None else None
        lm.hook.layers = {}
        if ref_ppl is None:
            ref_ppl, ref_tokens = ppl, tokens
        agree, first = agreement(ref_tokens, tokens) if tokens is not None else (None, None)
        out.append(Result(s.name, s.kind, s.calibrated, round(s.bits(d), 4), s.nbytes(d) * heads, ppl,
                          100 * (ppl / ref_ppl - 1), None if agree is None else 100 * agree, first))
        log(f"{s.name}: ppl {ppl:.4f} ({out[-1].dppl_pct:+.2f}%), {time.perf_counter() - t0:.0f} s")
        done(out)
    return out


def render(results: list[Result]) -> str:
    """Markdown table."""
    lines = ["| format | bits/coord (incl. metadata) | K+V bytes/token/layer | PPL | ΔPPL % | token agreement % "
             "| mean first divergence |", "|---|---|---|---|---|---|---|"]
    for r in results:
        agree = "" if r.agreement_pct is None else f"{r.agreement_pct:.1f}"
        first = "" if r.first_divergence is None else f"{r.first_divergence:.1f}"
        lines.append(f"| {r.name} | {r.bits:.3f} | {r.kv_bytes} | {r.ppl:.3f} | {r.dppl_pct:+.2f} | {agree} | {first} |")
    return "\n".join(lines)


def write(results: list[Result], out_dir: str | Path, meta: dict) -> list[Path]:
    """quality.json (meta + rows), quality.csv and, with matplotlib, quality.png; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    paths = [out / "quality.json", out / "quality.csv"]
    paths[0].write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    with paths[1].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from .plot import plot_dppl

    png = plot_dppl(results, out / "quality.png", title=meta.get("title", ""))
    return paths + ([png] if png else [])

