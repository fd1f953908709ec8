"""ΔPPL vs `auto` through vLLM's CPU build, each format without calibration and with one calibration file (or the
plugin's default), on windows of real English read back from the packed cache (prefill in 32-token chunks).

    python benchmarks/vllm_quality.py [--windows 2] [--tokens 1024] [--calibration FILE] [--formats a,b]
                                      [--max-model-len 8192] [--out DIR]

Windows are spread over the default corpus (Debian base-files license texts). Rows: `none` = `"calibration":
"none"`; `file` = the given calibration file; `default` = nothing set (what a user gets). Writes quality.json and
prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.e2e_nll_spread import run_probe  # noqa: E402
from multi_turboquant.eval.corpus import load_text, spread_windows  # noqa: E402
from multi_turboquant.formats import FORMATS  # noqa: E402
from multi_turboquant.models import default_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--calibration", help="a calibration file for the `file` rows")
    ap.add_argument("--rows", default="none,file", help="which of none, file, default")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vllm-quality")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    model = default_model()
    ids = AutoTokenizer.from_pretrained(model)(load_text()[0]).input_ids
    common = {"model": str(model), "windows": spread_windows(ids, a.windows, a.tokens),
              "max_model_len": a.max_model_len}
    plugin = {"none": {"calibration": "none"}, "file": {"calibration": a.calibration}, "default": None}
    rows = a.rows.split(",")
    if "file" in rows and not a.calibration:
        raise SystemExit("--rows file needs --calibration FILE")
    configs = [{"name": "auto", "kv_cache_dtype": "auto", **common}]
    configs += [{"name": f"{f} {r}", "kv_cache_dtype": f, "plugin_config": plugin[r], **common}
                for f in a.formats.split(",") for r in rows]
    runs = {r["name"]: r for r in run_probe(configs, a.threads, in_process=True)}
    auto = statistics.mean(runs["auto"]["window_nll"])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "quality.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                    "runs": runs}, indent=1))
    print(f"auto PPL {math.exp(auto):.3f} ({a.windows} windows x {a.tokens} tokens, max_model_len {a.max_model_len})")
    print("| format | " + " | ".join(f"ΔPPL {r}" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for f in a.formats.split(","):
        cells = [f"{100 * (math.exp(statistics.mean(runs[f'{f} {r}']['window_nll']) - auto) - 1):+.1f}%"
                 for r in rows]
        print(f"| {f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
