"""`mtq eval quality`: perplexity and greedy agreement of every KV format and its peers on a real model."""
from __future__ import annotations

import csv
import json
import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..formats.calibration import Calibration
from .codecs import BF16, FP8, INT4, INT8, format_codec
from .hooks import LoadedModel, Scheme, load_model
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


def pair_schemes(pairs: tuple[tuple[str, str], ...], calibrated: bool) -> list[Scheme]:
    """Rows storing keys in one format and values in another (the plugin's `value_format`)."""
    rows = []
    for k, v in pairs:
        name = f"K {k} / V {v}" + (" +calib" if calibrated else "")
        rows.append(Scheme(name, format_codec(k), format_codec(v), "pair", calibrated=calibrated))
    return rows


@dataclass(frozen=True)
class RowPlan:
    """Which rows a run measures. Plain data, so worker processes rebuild the same schemes from it."""

    formats: tuple[str, ...]
    calibrated: bool
    uncalibrated: bool = True
    peers: bool = True
    variants: bool = False
    pairs: tuple[tuple[str, str], ...] = ()  # (key format, value format)

    def schemes(self) -> list[Scheme]:
        rows = schemes(list(self.formats), self.calibrated, self.uncalibrated, self.peers)
        rows += pair_schemes(self.pairs, self.calibrated)
        if self.variants:
            from .variants import variant_schemes

            rows += variant_schemes(list(self.formats))
        return rows


@dataclass(frozen=True)
class Task:
    """What every row is measured on (CPU tensors; each measurement moves them to the model's device)."""

    ids: torch.Tensor
    window: int
    prompts: torch.Tensor | None = None
    new_tokens: int = 0
    calibration: Calibration | None = None
    keep_bf16: frozenset[int] = frozenset()
    exact_first: int = 0  # first positions of every sequence stored exactly in every row (the attention sink)


Measurement = tuple[float, torch.Tensor | None, float]  # perplexity, greedy tokens (CPU) or None, seconds


def measure(lm: LoadedModel, scheme: Scheme, task: Task) -> Measurement:
    """(perplexity, greedy tokens on the CPU or None, seconds) of one scheme."""
    t0 = time.perf_counter()
    scheme = replace(scheme, exact_prefix=max(scheme.exact_prefix, task.exact_first))
    lm.hook.use(scheme, lm.num_layers, task.calibration if scheme.calibrated else None, task.keep_bf16, lm.device)
    try:
        ppl = perplexity(lm.model, task.ids.to(lm.device), task.window)
        tokens = None if task.prompts is None else greedy(lm.model, task.prompts.to(lm.device), task.new_tokens).cpu()
    finally:
        lm.hook.layers = {}
    return ppl, tokens, time.perf_counter() - t0


_WORKER: dict = {}  # per worker process: its model, rows and task (set once by _start_worker)


def _start_worker(path: Path, device: str, plan: RowPlan, task: Task) -> None:
    torch.set_num_threads(1)  # the workers share the machine's cores
    _WORKER.update(lm=load_model(path, device), rows=plan.schemes(), task=task)


def _measure_in_worker(i: int) -> Measurement:
    return measure(_WORKER["lm"], _WORKER["rows"][i], _WORKER["task"])


def _measurements(lm: LoadedModel, plan: RowPlan, task: Task, jobs: int) -> Iterator[Measurement]:
    """Each row's measurement in row order, in this process or in `jobs` worker processes (each loads the model:
    the rows are bound by Python dispatch of the reference codec's many small operations, not by the device)."""
    rows = plan.schemes()
    if jobs <= 1:
        yield from (measure(lm, s, task) for s in rows)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(jobs, len(rows)), _start_worker, (lm.path, str(lm.device), plan, task)) as pool:
        yield from pool.imap(_measure_in_worker, range(len(rows)))


def evaluate(lm: LoadedModel, plan: RowPlan, task: Task, jobs: int = 1,
             log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
             done: Callable[[list[Result]], None] = lambda results: None) -> list[Result]:
    """One Result per row of the plan; ΔPPL and agreement are against the first row (bf16). `done` gets the
    results so far after each row (to save partial runs)."""
    rows = plan.schemes()
    if rows[0].name != REFERENCE:
        raise ValueError(f"the first scheme must be the {REFERENCE} reference")
    if any(r.calibrated for r in rows) and task.calibration is None:
        raise ValueError("calibrated rows need a calibration")
    d, heads = lm.head_dim, lm.num_kv_heads
    out: list[Result] = []
    ref_ppl = ref_tokens = None
    for s, (ppl, tokens, seconds) in zip(rows, _measurements(lm, plan, task, jobs)):
        if ref_ppl is None:
            ref_ppl, ref_tokens = ppl, tokens
        agree, first = agreement(ref_tokens, tokens) if tokens is not None else (None, None)
        out.append(Result(s.name, s.kind, s.calibrated, round(s.bits(d), 4), s.nbytes(d) * heads, ppl,
                          100 * (ppl / ref_ppl - 1), None if agree is None else 100 * agree, first))
        log(f"{s.name}: ppl {ppl:.4f} ({out[-1].dppl_pct:+.2f}%), {seconds:.0f} s")
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

