#!/usr/bin/env python3
"""vLLM end to end on one GPU, every kv_cache_dtype side by side, one engine per dtype in its own process.

Workloads (`--workload`):
  a       the anchor: N long prompts (4,000 tokens) and N short ones (200) -> 256 tokens, plus perplexity of a text
  b       a Llama-3-8B-shaped model with random weights (`--model` is made from a tokenizer folder, no weights read):
          N requests at each of `--contexts`, decode speed in the pure-decode phase
  c       capacity-bound: more concurrent requests than a bf16 cache holds at `--gpu-mem`; requests/s, output tok/s,
          time to first token and inter-token latency percentiles
  checks  correctness under vLLM's features: 256 concurrent requests (none lost, each with its full length),
          prefix-cache hits equal to the cold run, small prefill chunks, and CUDA graphs against eager

Every request is timed per token: the child drives `LLMEngine.step()` and stamps each request's new tokens, so TTFT
counts the queueing a full cache causes. "decode tok/s" counts the tokens made after the last request's first token
over the time they took (no request prefilling any more). Results: OUT/<workload>_<dtype>.json and a markdown table.

  python benchmarks/e2e_vllm.py --workload c --model DIR --dtypes auto,isoquant3 --gpu-mem 0.1 --out /tmp/e2e
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

ALL_DTYPES = ("auto,fp8,turboquant_k8v4,turboquant_4bit_nc,turboquant_k3v4_nc,turboquant_3bit_nc,"
              "isoquant3,isoquant4,planarquant3,planarquant4,turboquant25,turboquant35")
LLAMA3_8B = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, intermediate_size=14336,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                 vocab_size=128256, max_position_embeddings=65536, rope_theta=500000.0, rms_norm_eps=1e-5,
                 hidden_act="silu", tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=1,
                 eos_token_id=2)


def percentile(xs: list[float], q: float) -> float:
    """The q-quantile of xs by linear interpolation (nan for none)."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def token_prompts(pool: list[int], n: int, length: int, salt: int) -> list[list[int]]:
    """n distinct prompts of `length` token ids: a per-prompt id header, then the pool from a per-prompt offset."""
    out = []
    for i in range(n):
        head = [1000 + salt % 997, 2000 + i % 4000, 3000 + i // 4000]
        off = (i * 1237 + salt * 7919) % len(pool)
        body = (pool[off:] + pool * (1 + length // len(pool)))[: length - len(head)]
        out.append(head + body)
    return out


def drive(llm, prompts: list[list[int]], params) -> dict:
    """Run prompts concurrently through the engine; per-request token times, TTFT/ITL percentiles, throughputs."""
    engine = llm.llm_engine
    params = params if isinstance(params, list) else [params] * len(prompts)
    t0 = time.perf_counter()
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(str(i), {"prompt_token_ids": p}, sp)
    stamps: dict[str, list[float]] = {str(i): [] for i in range(len(prompts))}
    finished: dict[str, object] = {}
    while engine.has_unfinished_requests():
        outs = engine.step()
        now = time.perf_counter() - t0
        for o in outs:
            rid = o.request_id if o.request_id in stamps else o.request_id.rsplit("-", 1)[0]
            got = len(o.outputs[0].token_ids)
            stamps[rid] += [now] * (got - len(stamps[rid]))
            if o.finished:
                finished[rid] = o
    wall = time.perf_counter() - t0
    ttft = [s[0] for s in stamps.values() if s]
    itl = [b - a for s in stamps.values() for a, b in zip(s, s[1:]) if b > a]  # steps that made a token each
    last_first = max(ttft)
    decode_tokens = sum(sum(1 for t in s if t > last_first) for s in stamps.values())
    out_tokens = sum(len(s) for s in stamps.values())
    return {"requests": len(prompts), "finished": len(finished), "wall_s": round(wall, 3),
            "out_tokens": out_tokens, "out_tok_s": round(out_tokens / wall, 1),
            "requests_s": round(len(finished) / wall, 3),
            "decode_tok_s": round(decode_tokens / (wall - last_first), 1) if wall > last_first else None,
            "ttft_p50_s": round(percentile(ttft, 0.5), 3), "ttft_p99_s": round(percentile(ttft, 0.99), 3),
            "itl_p50_ms": round(1e3 * percentile(itl, 0.5), 2), "itl_p99_ms": round(1e3 * percentile(itl, 0.99), 2),
            "tokens": {k: list(o.outputs[0].token_ids) for k, o in finished.items()}}


def perplexity(llm, ids: list[int]) -> dict:
    """Teacher-forced perplexity of ids (vLLM's prompt logprobs)."""
    from multi_turboquant.vllm.engine import token_nll
    nll = token_nll(llm, [ids])[0]
    return {"tokens": len(ids), "ppl": round(math.exp(sum(nll) / len(nll)), 4)}


def make_model(tokenizer_dir: str, folder: str, shape: dict) -> str:
    """A model folder with `shape` as config.json and the tokenizer of tokenizer_dir (weights: load_format dummy)."""
    import shutil
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(tokenizer_dir):
        if name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(os.path.join(tokenizer_dir, name), folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(shape, f)
    return folder


def child(a) -> None:
    """One dtype, one engine: run the workload and write its JSON."""
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    from vllm import LLM, SamplingParams
    res: dict = {"dtype": a.one, "workload": a.workload}
    engine_args = dict(model=a.model, dtype="bfloat16", kv_cache_dtype=a.one, gpu_memory_utilization=a.gpu_mem,
                       max_model_len=a.max_model_len, max_num_batched_tokens=a.max_batched,
                       max_num_seqs=a.max_seqs, enable_prefix_caching=a.workload == "checks", seed=0,
                       enforce_eager=a.eager)
    if a.workload == "b":
        engine_args["load_format"] = "dummy"
    if a.additional_config:
        engine_args["additional_config"] = json.loads(a.additional_config)
    t = time.perf_counter()
    llm = LLM(**engine_args)
    res["init_s"] = round(time.perf_counter() - t, 1)
    cc = llm.llm_engine.vllm_config.cache_config
    res["kv_tokens"] = cc.num_gpu_blocks * cc.block_size
    import torch
    res["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    tok = llm.get_tokenizer()
    pool = tok.encode(open(a.text).read(), add_special_tokens=False) if a.text else list(range(100, 30000))
    greedy = dict(temperature=0, ignore_eos=True, detokenize=False)
    drive(llm, token_prompts(pool, 8, min(512, a.max_model_len // 2), 99), SamplingParams(max_tokens=8, **greedy))  # warm-up
    if a.workload == "a":
        for name, n, length in (("long", a.n, 4000), ("short", a.n, 200)):
            r = drive(llm, token_prompts(pool, n, length, len(name)), SamplingParams(max_tokens=a.out_len, **greedy))
            res[name] = {k: v for k, v in r.items() if k != "tokens"}
        if a.ppl_text:
            ids = tok.encode(open(a.ppl_text).read(), add_special_tokens=False)
            res["ppl"] = perplexity(llm, ids[: a.max_model_len - 1])
    elif a.workload in ("b", "c"):
        for ctx in a.contexts:
            r = drive(llm, token_prompts(pool, a.n, ctx - a.out_len, ctx), SamplingParams(max_tokens=a.out_len, **greedy))
            res[f"ctx{ctx}"] = {k: v for k, v in r.items() if k != "tokens"}
            print("RESULT-PARTIAL", ctx, json.dumps(res[f"ctx{ctx}"]), flush=True)
    else:
        res.update(checks(llm, pool, greedy, a))
    with open(a.result, "w") as f:
        json.dump(res, f)


def checks(llm, pool: list[int], greedy: dict, a) -> dict:
    """One request alone, cold then as a prefix-cache hit (same tokens?); then `--n` concurrent mixed-length
    requests, none lost. The single request repeats a passage, so greedy decoding should copy it (tokens copied
    before the first miss);
    its tokens and logprobs are compared across engines (graphs vs eager)."""
    from vllm import SamplingParams
    n, longest = a.n, a.max_model_len - 64
    passage = token_prompts(pool, 1, longest // 3, 7)[0]
    half = len(passage) // 2
    runs = [llm.generate([{"prompt_token_ids": passage + passage[:half]}],
                         SamplingParams(max_tokens=64, logprobs=0, **greedy), use_tqdm=False)[0].outputs[0]
            for _ in range(2)]
    expected = passage[half:half + 64]
    lengths = [37 + (i * 613) % (longest - 37) for i in range(n)]
    outs = [8 + i % 57 for i in range(n)]
    prompts = [p[:m] for p, m in zip(token_prompts(pool, n, longest, 5), lengths)]
    cold = drive(llm, prompts, [SamplingParams(max_tokens=m, **greedy) for m in outs])
    lost = [k for k in map(str, range(n)) if len(cold["tokens"].get(k, [])) != outs[int(k)]]
    copied = next((i for i, (x, y) in enumerate(zip(runs[0].token_ids, expected)) if x != y), len(expected))
    return {"concurrent": n, "lost_or_short": len(lost), "prefix_hit_identical": runs[0].token_ids == runs[1].token_ids,
            "copied": f"{copied}/{len(expected)}",
            "single_greedy": list(runs[0].token_ids),
            "single_logprobs": [next(iter(d.values())).logprob for d in runs[0].logprobs],
            "cold_wall_s": cold["wall_s"]}


def agreement(x: dict, y: dict) -> str:
    """Greedy tokens equal before the first divergence, and the largest logprob gap over them."""
    a, b = x["single_greedy"], y["single_greedy"]
    k = next((i for i, (s, t) in enumerate(zip(a, b)) if s != t), min(len(a), len(b)))
    gap = max((abs(s - t) for s, t in zip(x["single_logprobs"][:k], y["single_logprobs"][:k])), default=0.0)
    return f"{k}/{len(a)} tokens, max |Δlogprob| {gap:.3f}"


def run_child(a, dtype: str, eager: bool, log: str, result: str) -> tuple[object, float]:
    """This script as a child for one dtype, in its own process group (a timeout also ends vLLM's EngineCore)."""
    argv = [sys.executable, os.path.abspath(__file__), "--one", dtype, "--result", result]
    for k in ("workload", "model", "gpu_mem", "max_model_len", "max_batched", "max_seqs", "n", "out_len",
              "text", "ppl_text", "additional_config"):
        if getattr(a, k) is not None:
            argv += [f"--{k.replace('_', '-')}", str(getattr(a, k))]
    argv += ["--contexts", *map(str, a.contexts)] + (["--eager"] if eager else [])
    t = time.perf_counter()
    with open(log, "w") as lf:
        proc = subprocess.Popen(argv, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=a.timeout_per)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return rc, round(time.perf_counter() - t, 1)


def ratio(x, y) -> str:
    return f"{x / y:.2f}" if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y else "-"


def table(results: dict, workload: str) -> str:
    """Markdown rows, ratios to `auto` of the same run."""
    base = results.get("auto", {})
    if workload == "checks":
        head = ("| kv_cache_dtype | concurrent, none lost | prefix hit = cold (64 greedy) | passage copied | graphs vs "
                "eager: greedy agreement | init s |\n|---|---|---|---|---|---|\n")
        return head + "".join(
            f"| {d} | {r.get('concurrent', '-')}, {'yes' if r.get('lost_or_short') == 0 else r.get('lost_or_short', 'FAIL')}"
            f" | {r.get('prefix_hit_identical', '-')} | {r.get('copied', '-')} | {r.get('graphs_vs_eager', '-')}"
            f" | {r.get('init_s', '-')} |\n"
            for d, r in results.items())
    parts = [k for k in base if k.startswith(("ctx", "long", "short"))] or \
        sorted({k for r in results.values() for k in r if k.startswith(("ctx", "long", "short"))})
    lines = ["| kv_cache_dtype | KV tokens (× auto) | run | req/s (×) | out tok/s (×) | decode tok/s (×) "
             "| TTFT p50 / p99 s | ITL p50 / p99 ms | finished | PPL | init s |", "|" + "---|" * 11]
    for d, r in results.items():
        for part in parts:
            m, b = r.get(part, {}), base.get(part, {})
            lines.append(
                f"| {d} | {r.get('kv_tokens', 'FAIL')} ({ratio(r.get('kv_tokens'), base.get('kv_tokens'))}) | {part} | "
                f"{m.get('requests_s', '-')} ({ratio(m.get('requests_s'), b.get('requests_s'))}) | "
                f"{m.get('out_tok_s', '-')} ({ratio(m.get('out_tok_s'), b.get('out_tok_s'))}) | "
                f"{m.get('decode_tok_s', '-')} ({ratio(m.get('decode_tok_s'), b.get('decode_tok_s'))}) | "
                f"{m.get('ttft_p50_s', '-')} / {m.get('ttft_p99_s', '-')} | {m.get('itl_p50_ms', '-')} / "
                f"{m.get('itl_p99_ms', '-')} | {m.get('finished', '-')}/{m.get('requests', '-')} | "
                f"{r.get('ppl', {}).get('ppl', '-')} | {r.get('init_s', '-')} |")
    return "\n".join(lines) + "\n"


def driver(a) -> None:
    os.makedirs(a.out, exist_ok=True)
    if a.workload == "b" and not os.path.exists(os.path.join(a.model, "config.json")):
        raise SystemExit(f"--model {a.model}: no config.json (for workload b, make one with --make-8b TOKENIZER_DIR)")
    results = {}
    for dtype in a.dtypes.split(","):
        stem = os.path.join(a.out, f"{a.workload}_{dtype}")
        rc, wall = run_child(a, dtype, a.eager, stem + ".log", stem + ".json")
        r = json.load(open(stem + ".json")) if os.path.exists(stem + ".json") else {"dtype": dtype}
        r.update(rc=rc, wall_s=wall)
        if a.workload == "checks" and rc == 0:  # the same single request in an eager engine
            rc2, _ = run_child(a, dtype, True, stem + "_eager.log", stem + "_eager.json")
            eager = json.load(open(stem + "_eager.json")) if rc2 == 0 else {}
            r["graphs_vs_eager"] = agreement(r, eager) if eager else f"eager rc={rc2}"
        if rc != 0:
            tail = open(stem + ".log", errors="replace").read().splitlines()
            r["error_tail"] = [l for l in tail if re.search(r"Error|Exception", l)][-4:] + tail[-3:]
        results[dtype] = r
        print(f"== {dtype} rc={rc} wall={wall}s kv_tokens={r.get('kv_tokens')}", flush=True)
        for line in r.get("error_tail", []):
            print("   ", line[:300])
    with open(os.path.join(a.out, f"summary_{a.workload}.json"), "w") as f:
        json.dump(results, f, indent=1)
    gpu = next((r["gpu"] for r in results.values() if "gpu" in r), "?")
    print(f"\n### workload {a.workload} | {gpu} | gpu_memory_utilization {a.gpu_mem} | max_model_len "
          f"{a.max_model_len} | n {a.n} | out {a.out_len} | contexts {a.contexts} | "
          f"{'eager' if a.eager else 'CUDA graphs'}\n")
    print(table(results, a.workload))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["a", "b", "c", "checks"], default="a")
    p.add_argument("--model", help="model folder (workload b: made by --make-8b)")
    p.add_argument("--make-8b", metavar="TOKENIZER_DIR", help="write a Llama-3-8B-shaped config into --model, exit")
    p.add_argument("--dtypes", default=ALL_DTYPES)
    p.add_argument("--gpu-mem", type=float, default=0.3)
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--max-batched", type=int, default=2048)
    p.add_argument("--max-seqs", type=int, default=256)
    p.add_argument("--n", type=int, default=64, help="requests per run")
    p.add_argument("--out-len", type=int, default=256)
    p.add_argument("--contexts", type=int, nargs="+", default=[8192], help="workloads b, c: prompt + output tokens")
    p.add_argument("--text", help="English text whose tokens fill the prompts (default: a run of token ids)")
    p.add_argument("--ppl-text", help="workload a: the text whose perplexity is measured")
    p.add_argument("--additional-config", help='JSON for LLM(additional_config=...), e.g. the plugin\'s '
                   '{"multi_turboquant": {"calibration": "none"}}')
    p.add_argument("--eager", action="store_true")
    p.add_argument("--timeout-per", type=int, default=300)
    p.add_argument("--out", default="/tmp/e2e")
    p.add_argument("--one")
    p.add_argument("--result")
    a = p.parse_args()
    if a.make_8b:
        print(make_model(a.make_8b, a.model, LLAMA3_8B))
    elif a.one:
        child(a)
    else:
        driver(a)


if __name__ == "__main__":
    main()
