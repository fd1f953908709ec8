"""`mtq generate` and the vLLM demo behind `mtq demo`."""
from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time

from .._help import examples
from ..formats.registry import FORMATS, get_format

DEMO_PROMPT = "In two sentences, why does a smaller KV cache let a server handle more users?"
DEMO_BLOCK = 32  # KV block size and prefill chunk of the demo's engines: the passage is read back from the cache
PASSAGE_TOKENS = 256  # of the eval corpus's passage scored for ΔPPL


def plugin_config(args: argparse.Namespace) -> dict:
    """additional_config["multi_turboquant"] from the arguments of `add_kv_arguments`."""
    config = {}
    if args.value_format:
        config["value_format"] = args.value_format
    if args.keep_layers:
        config["keep_layers"] = [int(i) for i in args.keep_layers.split(",")]
    if args.calibration:
        config["calibration"] = args.calibration
    return config


def _complete(llm, prompt: str, max_tokens: int, chat: bool) -> str:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    outputs = llm.chat([{"role": "user", "content": prompt}], params, use_tqdm=False) if chat else \
        llm.generate([prompt], params, use_tqdm=False)
    return outputs[0].outputs[0].text


def _model(args: argparse.Namespace) -> str:
    from ..models import default_model

    return str(args.model or default_model())


def _generate(args: argparse.Namespace) -> int:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # before vLLM configures its logger
    from .engine import build_llm

    if args.kv_cache_dtype != "auto":
        get_format(args.kv_cache_dtype)
    llm = build_llm(_model(args), args.kv_cache_dtype, plugin_config=plugin_config(args),
                    max_model_len=args.max_model_len)
    print(_complete(llm, args.prompt, args.max_tokens, args.chat))
    return 0


def _passage_ids(llm, text: str, tokens: int) -> list[int]:
    ids = llm.get_tokenizer()(text).input_ids
    if len(ids) < tokens:
        raise ValueError(f"the passage has {len(ids)} tokens, fewer than the {tokens} asked for")
    return ids[:tokens]


def demo(model: str | None = None, max_tokens: int = 40, formats: list[str] | None = None,
         passage_tokens: int = PASSAGE_TOKENS) -> int:
    """Load the model with `auto` and each format; print KV capacity, ΔPPL against `auto` on a passage of the eval
    corpus (teacher-forced, prefilled in chunks of one block, so the context is read back from the packed cache)
    and one completion per format."""
    from ..eval.corpus import prose_passage
    from ..models import default_model
    from ..eval.metrics import delta_ppl_pct
    from .engine import build_llm, capacity_tokens, ideal_ratio, token_nll

    names = formats or ["auto", *FORMATS]
    if names[0] != "auto":
        raise ValueError(f"the demo's first engine is `auto`, the reference for ΔPPL; got {names[0]!r}")
    for name in names[1:]:
        get_format(name)
    if passage_tokens < 2 * DEMO_BLOCK:
        raise ValueError(f"the passage needs at least {2 * DEMO_BLOCK} tokens (two chunks), got {passage_tokens}")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    model = str(model or default_model())
    passage, source = prose_passage()
    rows, ids = [], None
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] loading {os.path.basename(model)} in vLLM with kv_cache_dtype={name} ...",
              file=sys.stderr, flush=True)
        start = time.perf_counter()
        llm = build_llm(model, name, block_size=DEMO_BLOCK, max_num_batched_tokens=DEMO_BLOCK, max_num_seqs=8)
        loaded = time.perf_counter() - start
        ids = ids or _passage_ids(llm, passage, passage_tokens)
        start = time.perf_counter()
        nll = token_nll(llm, [ids])[0]
        scored = time.perf_counter() - start
        text = _complete(llm, DEMO_PROMPT, max_tokens, chat=True)
        head_dim = llm.llm_engine.vllm_config.model_config.get_head_size()
        chunk = llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        rows.append((name, capacity_tokens(llm), head_dim, nll, text))
        print(f"      {rows[-1][1]:,} KV tokens, loaded in {loaded:.0f} s, passage scored in {scored:.1f} s",
              file=sys.stderr, flush=True)
        del llm
        gc.collect()
    base, base_nll = rows[0][1], rows[0][3]
    print(f"\nKV-cache capacity at a fixed budget ({os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB on vLLM's CPU build), "
          f"head_dim {rows[0][2]}; ΔPPL: perplexity against `auto`'s (PPL {math.exp(statistics.fmean(base_nll)):.2f}) "
          f"on the first {len(ids)} tokens of {source}, teacher-forced, prefilled in chunks of {chunk} "
          f"tokens (context read back from the KV cache); prompt: {DEMO_PROMPT!r}\n")
    print("| kv_cache_dtype | bits/coord | KV tokens | x auto | ideal x | ΔPPL | sample completion (greedy) |")
    print("|---|---|---|---|---|---|---|")
    for name, tokens, head_dim, nll, text in rows:
        bits = f"{get_format(name).bits_per_coordinate(head_dim):.3f}" if name != "auto" else "16"
        ideal = f"{ideal_ratio(name, head_dim):.2f}" if name != "auto" else "1.00"
        sample = " ".join(text.split())[:160].replace("|", "/")
        print(f"| {name} | {bits} | {tokens:,} | {tokens / base:.2f} | {ideal} | {delta_ppl_pct(nll, base_nll):+.1f}% "
              f"| {sample} |")
    return 0


def add_kv_arguments(parser: argparse.ArgumentParser) -> None:
    """--kv-cache-dtype, the plugin options read by `plugin_config`, and --max-model-len."""
    parser.add_argument("--kv-cache-dtype", default="isoquant4", help=f"auto or one of {', '.join(FORMATS)}")
    parser.add_argument("--value-format", help="a different format for V (default: the same as K)")
    parser.add_argument("--keep-layers", help="comma-separated layer indices kept in the model dtype")
    parser.add_argument("--calibration", help="calibration file from `mtq calibrate`, or none (default: auto, computed "
                        "once per model and cached)")
    parser.add_argument("--max-model-len", type=int, default=2048)


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="one greedy completion from vLLM with a packed KV cache",
                       **examples('mtq generate --kv-cache-dtype isoquant3 "Once upon a time"',
                                  "mtq generate --model path/to/model --kv-cache-dtype isoquant4 "
                                  '--calibration turboquant_kv.json --chat "Why is the sky blue?"'))
    g.add_argument("prompt")
    g.add_argument("--model", help="Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)")
    add_kv_arguments(g)
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--chat", action="store_true", help="apply the model's chat template")
    g.set_defaults(func=_generate)
