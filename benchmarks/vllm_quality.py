"""ΔPPL vs `auto` through vLLM's CPU build, each format without calibration and with one calibration file (or the
plugin's default), on windows of real English read back from the packed cache (prefill in 32-token chunks).

    python benchmarks/vllm_quality.py [--model smollm2|gemma3|qwen] [--windows 2] [--tokens 1024] [--calibration FILE]
                                      [--rows none,file,default] [--formats a,b] [--max-model-len 8192] [--out DIR]

Windows are spread over the default corpus (Debian base-files license texts); for a model whose tokenizer starts
text with a BOS token (Gemma) each window starts with it. Rows: `none` = `"calibration": "none"`; `file` = the given
calibration file; `default` = nothing set (what a user gets). Per run also: KV capacity (blocks, and vLLM's
group-aware token count, which counts sliding-window layers by their window) against `auto`, greedy text of two
prompts, and whether prefix-cache hits change it. Writes quality.json and prints Markdown tables.
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
from multi_turboquant.models import default_model, gemma3_model, qwen_coder_model  # noqa: E402
from multi_turboquant.vllm.engine import ideal_ratio  # noqa: E402

MODELS = {"smollm2": default_model, "gemma3": gemma3_model, "qwen": qwen_coder_model}
PROMPT_TOKENS, NEW_TOKENS = 48, 24


def with_bos(windows: list[list[int]], ids: list[int], bos: int | None) -> list[list[int]]:
    """Each window with its first token replaced by BOS when the tokenized text starts with it, else unchanged."""
    return [[bos] + w[1:] for w in windows] if bos is not None and ids[0] == bos else windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(MODELS), default="smollm2")
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

    model = MODELS[a.model]()
    tokenizer = AutoTokenizer.from_pretrained(model)
    ids = tokenizer(load_text()[0]).input_ids
    bos = tokenizer.bos_token_id
    common = {"model": str(model), "windows": with_bos(spread_windows(ids, a.windows, a.tokens), ids, bos),
              "max_model_len": a.max_model_len, "max_tokens": NEW_TOKENS,
              "prompts": with_bos(spread_windows(ids, 2, PROMPT_TOKENS, 0.5), ids, bos)}
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
    print_runs(runs)


def print_runs(runs: dict[str, dict]) -> None:
    """Capacity against `auto` (and the ideal), prefix-hit agreement and the greedy text of each run."""
    auto = runs["auto"]
    print("\n| run | blocks / auto | vLLM tokens / auto | / ideal | prefix hits | same text with hits | first prompt |")
    print("|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        fmt = run["kv_cache_dtype"]
        ideal = 1.0 if fmt == "auto" else ideal_ratio(fmt, run["head_dim"])
        blocks = run["kv"]["blocks"] / auto["kv"]["blocks"]
        tokens = run["kv"]["vllm_tokens"] / auto["kv"]["vllm_tokens"]
        text = run["texts"][0].replace("\n", " ").replace("|", "/")
        print(f"| {name} | {blocks:.3f} | {tokens:.3f} | {tokens / ideal:.3f} | {run['cached_tokens_prefix_hit']} "
              f"| {run['tokens_prefix_hit'] == run['tokens_alone']} | {text!r} |")


if __name__ == "__main__":
    main()
