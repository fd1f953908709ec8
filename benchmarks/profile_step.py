"""Where an engine's time goes, per kv_cache_dtype: torch.profiler over a prefill phase (prompts arriving together,
chunked) and a pure-decode phase of vLLM in this process, one table per phase of the kernels and host ops that take
the most time (GPU time for kernels, host time for the launching ops), each with its share of the phase's wall time.

    python benchmarks/profile_step.py --model DIR --dtypes auto isoquant3 [--n 16 --prompt 4000 --decode 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_vllm import token_prompts  # noqa: E402


def top(prof, wall_s: float, rows: int) -> str:
    """The rows kernels with the most GPU time and the rows host ops with the most own host time, as markdown."""
    events = prof.key_averages()
    gpu = sorted((e for e in events if e.device_time_total > 0 and not e.cpu_time_total),
                 key=lambda e: -e.device_time_total)
    host = sorted(events, key=lambda e: -e.self_cpu_time_total)
    busy = sum(e.device_time_total for e in events if not e.cpu_time_total) / 1e6
    lines = [f"wall {wall_s:.3f} s, GPU kernels {busy:.3f} s ({busy / wall_s:.0%} of wall)", "",
             "| GPU kernel | calls | ms | % wall |", "|---|---|---|---|"]
    lines += [f"| {e.key[:90]} | {e.count} | {e.device_time_total / 1e3:.1f} | "
              f"{e.device_time_total / 1e4 / wall_s:.1f} |" for e in gpu[:rows]]
    lines += ["", "| host op (self time) | calls | ms | % wall |", "|---|---|---|---|"]
    lines += [f"| {e.key[:90]} | {e.count} | {e.self_cpu_time_total / 1e3:.1f} | "
              f"{e.self_cpu_time_total / 1e4 / wall_s:.1f} |" for e in host[:rows]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", required=True, help="one kv_cache_dtype (one engine per process)")
    p.add_argument("--text", help="token pool (a text file); default: token ids 100..29,999")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--prompt", type=int, default=4000)
    p.add_argument("--decode", type=int, default=64, help="tokens per request in the decode phase")
    p.add_argument("--max-batched", type=int, default=2048)
    p.add_argument("--gpu-mem", type=float, default=0.3)
    p.add_argument("--rows", type=int, default=14)
    p.add_argument("--eager", action="store_true")
    a = p.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process, where the profiler sees it
    import torch
    from vllm import LLM, SamplingParams

    llm = LLM(model=a.model, dtype="bfloat16", kv_cache_dtype=a.dtype, gpu_memory_utilization=a.gpu_mem,
              max_model_len=a.prompt + a.decode + 64, max_num_batched_tokens=a.max_batched, max_num_seqs=a.n,
              enable_prefix_caching=False, seed=0, enforce_eager=a.eager)
    tok = llm.get_tokenizer()
    pool = tok.encode(open(a.text).read(), add_special_tokens=False) if a.text else list(range(100, 30000))
    greedy = dict(temperature=0, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": t} for t in token_prompts(pool, a.n, a.prompt, 7)],
                 SamplingParams(max_tokens=4, **greedy), use_tqdm=False)  # warm-up: compiles, graphs
    engine = llm.llm_engine
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for phase in ("prefill", "decode"):
        prompts = token_prompts(pool, a.n, a.prompt, len(phase))
        for i, t in enumerate(prompts):
            engine.add_request(f"{phase}{i}", {"prompt_token_ids": t},
                               SamplingParams(max_tokens=1 if phase == "prefill" else a.decode + 1, **greedy))
        while phase == "decode" and not _all_started(engine):  # the prefill first, unprofiled
            engine.step()
        sync()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            steps = 0
            while engine.has_unfinished_requests():
                engine.step()
                steps += 1
            sync()
            wall = time.perf_counter() - t
        print(f"\n### {a.dtype}: {phase}, {a.n} x {a.prompt} tokens, {steps} steps, {wall / steps * 1e3:.2f} ms/step\n")
        print(top(prof, wall, a.rows), flush=True)


def _all_started(engine) -> bool:
    """Whether every running request has produced a token (the prefill of all of them is done)."""
    sched = engine.engine_core.engine_core.scheduler
    return not sched.waiting and all(r.num_output_tokens > 0 for r in sched.running)


if __name__ == "__main__":
    main()
