"""What keeping the first k tokens (StreamingLLM's attention sinks) and/or each query's last r tokens (KIVI's
residual window) exact would buy: ΔPPL vs bf16 in the reference harness, each format with the plugin's default
calibration (`auto_calibration`, CPython's LICENSE, key offsets per 256 positions), on windows of real English.

    python benchmarks/sink_window.py [--windows 2] [--tokens 1024] [--horizon 8192]
                                     [--formats isoquant3,planarquant3,turboquant25,isoquant4]
                                     [--variants 0+0,1+0,4+0,16+0,0+16,0+64,0+128,4+64,16+128]
                                     [--calibration FILE] [--out DIR]

A variant `k+r`: positions 0..k-1 of each window are stored exact (bf16) for every query; a query at position p
reads positions p-r+1..p exact and the older ones through the format (`KVHook.exact_recent`). Windows are spread
over the default corpus (Debian base-files license texts), each its own sequence; PPL from teacher-forced NLL.
Writes sink_window.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from multi_turboquant.eval.autocal import auto_calibration  # noqa: E402
from multi_turboquant.eval.codecs import format_codec  # noqa: E402
from multi_turboquant.eval.corpus import load_text, spread_windows  # noqa: E402
from multi_turboquant.eval.hooks import LoadedModel, Scheme, load_model  # noqa: E402
from multi_turboquant.eval.metrics import delta_ppl_pct, perplexity  # noqa: E402
from multi_turboquant.formats.calibration import load_calibration  # noqa: E402
from multi_turboquant.models import default_model  # noqa: E402


def variant(text: str) -> tuple[int, int]:
    """"k+r" -> (sinks, recent), ValueError otherwise."""
    try:
        k, r = (int(x) for x in text.split("+"))
    except ValueError:
        raise ValueError(f"a variant is SINKS+RECENT, e.g. 4+64; got {text!r}") from None
    if k < 0 or r < 0:
        raise ValueError(f"sinks and recent must be >= 0, got {text!r}")
    return k, r


def window_nll(lm: LoadedModel, windows: list[torch.Tensor]) -> list[float]:
    """Mean NLL (nats/token) of each window, each its own sequence, with whatever the hook stores."""
    return [math.log(perplexity(lm.model, w, w.numel())) for w in windows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--horizon", type=int, default=8192, help="the calibration's horizon (the plugin: max_model_len)")
    ap.add_argument("--calibration", help="a calibration file instead of the plugin's default")
    ap.add_argument("--formats", default="isoquant3,planarquant3,turboquant25,isoquant4")
    ap.add_argument("--variants", default="0+0,1+0,4+0,16+0,0+16,0+64,0+128,4+64,16+128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sink-window")
    a = ap.parse_args()
    variants = [variant(v) for v in a.variants.split(",")]
    torch.set_num_threads(a.threads)
    model = default_model()
    calibration = load_calibration(a.calibration or auto_calibration(model, a.horizon))
    lm = load_model(model)
    ids = lm.tokenizer(load_text()[0]).input_ids
    windows = [torch.tensor(w) for w in spread_windows(ids, a.windows, a.tokens)]
    base = window_nll(lm, windows)
    results = {"args": {k: str(v) for k, v in vars(a).items()}, "auto_window_nll": base, "rows": []}
    print(f"auto PPL {math.exp(statistics.fmean(base)):.3f} ({a.windows} windows x {a.tokens} tokens)", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.formats.split(","):
        codec = format_codec(name)
        for k, r in variants:
            start = time.perf_counter()
            lm.hook.use(Scheme(name, codec, codec, calibrated=True, exact_prefix=k, exact_recent=r), lm.num_layers,
                        calibration, device=lm.device)
            try:
                nll = window_nll(lm, windows)
            finally:
                lm.hook.layers = {}
            delta = delta_ppl_pct(nll, base)
            results["rows"].append({"format": name, "sinks": k, "recent": r, "window_nll": nll, "dppl_pct": delta})
            (a.out / "sink_window.json").write_text(json.dumps(results, indent=1))
            print(f"{name} sinks {k} recent {r}: {delta:+.1f}% ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\n| format | " + " | ".join(f"k={k}, r={r}" for k, r in variants) + " |")
    print("|---|" + "---|" * len(variants))
    for name in a.formats.split(","):
        cells = {(row["sinks"], row["recent"]): row["dppl_pct"] for row in results["rows"] if row["format"] == name}
        print(f"| {name} | " + " | ".join(f"{cells[v]:+.1f}%" for v in variants) + " |")


if __name__ == "__main__":
    main()
