"""Spread of the end-to-end test's teacher-forced measure: ΔNLL vs `auto` through vLLM's CPU build, per format, over
several window sets of the default corpus and two thread counts (the bounds in tests/plugin/test_e2e.py sit well
outside it).

    python benchmarks/e2e_nll_spread.py [--sets 6] [--windows 2] [--tokens 512] [--threads 1,2] [--out DIR]

Each set s takes `--windows` windows of `--tokens` tokens spread over the corpus at phase s/sets (set 0 is the one
the test uses). Prefill runs in chunks of one 32-token block, as in the test. Also runs isoquant4 with two
deliberately broken codecs (test code in tests/plugin/engine_probe.py) to show where broken lands.
Writes spread.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from multi_turboquant.eval.corpus import load_text, spread_windows  # noqa: E402
from multi_turboquant.models import default_model  # noqa: E402
from multi_turboquant.formats import FORMATS  # noqa: E402

PROBE = ROOT / "tests" / "plugin" / "engine_probe.py"
UNCALIBRATED = {"calibration": "none"}  # the bounds and their spread were measured without calibration
MIXED = {**UNCALIBRATED, "value_format": "planarquant3", "keep_layers": [0, 29]}
BROKEN = ("reversed", "half")


def run_probe(configs: list[dict], threads: int, in_process: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "configs.json").write_text(json.dumps(configs))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
               "OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}"}
        if in_process:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        subprocess.run([sys.executable, str(PROBE), f"{tmp}/out.json", f"{tmp}/configs.json"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return json.loads((Path(tmp) / "out.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=6)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "e2e-nll-spread")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    model = default_model()
    ids = AutoTokenizer.from_pretrained(model)(load_text()[0]).input_ids
    windows = [w for s in range(a.sets) for w in spread_windows(ids, a.windows, a.tokens, s / a.sets)]
    common = {"model": str(model), "windows": windows, "plugin_config": UNCALIBRATED}
    configs = [{"name": n, "kv_cache_dtype": n, **common} for n in ("auto", *FORMATS)]
    configs.append({"name": "mixed", "kv_cache_dtype": "isoquant4", **common, "plugin_config": MIXED})
    results = {}
    for threads in map(int, a.threads.split(",")):
        runs = run_probe(configs, threads)
        for kind in BROKEN:
            runs += run_probe([{"name": f"isoquant4 broken:{kind}", "kv_cache_dtype": "isoquant4",
                                "break_codec": kind, **common}], threads, in_process=True)
        results[threads] = {r["name"]: r["window_nll"] for r in runs}
        print(f"threads={threads}: done", file=sys.stderr, flush=True)

    def delta(threads: int, name: str, s: int) -> float:
        per_set = slice(s * a.windows, (s + 1) * a.windows)
        return statistics.mean(results[threads][name][per_set]) - statistics.mean(results[threads]["auto"][per_set])

    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "spread.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                   "window_nll": results}, indent=1))
    names = [n for n in results[next(iter(results))] if n != "auto"]
    sets = range(a.sets)
    print(f"| format | ΔNLL set 0 | min over {a.sets} sets × threads {a.threads} | max | max |Δ(threads) - Δ(other)| |")
    print("|---|---|---|---|---|")
    for name in names:
        values = [delta(t, name, s) for t in results for s in sets]
        thread_gap = max(abs(delta(t, name, s) - delta(u, name, s)) for s in sets for t in results for u in results)
        print(f"| {name} | {delta(max(results), name, 0):.4f} | {min(values):.4f} | {max(values):.4f} | "
              f"{thread_gap:.2e} |")
    auto = [statistics.mean(results[t]["auto"]) for t in results]
    print(f"\nauto mean NLL {auto} nats/token ({a.sets * a.windows} windows of {a.tokens} tokens)")


if __name__ == "__main__":
    main()
