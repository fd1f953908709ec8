"""Generate greedy text with vLLM from a local model under a given load format, printing JSON.

    python -m multi_turboquant.loader.vllm_check MODEL_DIR --load-format mtq_mmap

Run it once with `--load-format safetensors` and once with `mtq_mmap`: the texts must be identical.
The engine is kept in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that `register()` here is seen.
"""
from __future__ import annotations

import argparse
import json
import os
import time

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="local model directory with safetensors weights")
    parser.add_argument("--load-format", default="mtq_mmap")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--memory-fraction", type=float, default=0.5, help="vLLM's gpu_memory_utilization")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from vllm import LLM, SamplingParams

    from .vllm_loader import register

    register()
    start = time.perf_counter()
    llm = LLM(model=args.model, load_format=args.load_format, dtype="bfloat16", max_model_len=512,
              enforce_eager=True, gpu_memory_utilization=args.memory_fraction)
    ready = time.perf_counter() - start
    outputs = llm.generate(list(PROMPTS), SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
    print(json.dumps({"load_format": args.load_format, "engine_seconds": ready, "texts": [o.outputs[0].text for o in outputs]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
