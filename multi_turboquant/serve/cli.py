"""`mtq serve` (OpenAI-compatible server over an in-process vLLM engine) and `mtq loadtest`."""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path

from .._help import examples
from ..vllm.cli import add_kv_arguments, plugin_config
from .loadtest import DEFAULT_PROMPT


def _model(args: argparse.Namespace) -> tuple[Path, str]:
    """The model folder and the name it is served as; without --model, chosen from local folders."""
    if args.model:
        return Path(args.model), args.served_model_name or args.model
    from .picker import find_models, pick_model

    picked = pick_model(find_models(), sys.stdin, sys.stderr)
    return picked.path, args.served_model_name or picked.name


def _check_port(host: str, port: int) -> None:
    """Fail before the engine loads if the address is taken."""
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _serve(args: argparse.Namespace) -> int:
    path, name = _model(args)
    _check_port(args.host, args.port)
    # The engine core runs in this process, stepped by the server's engine thread: no engine subprocess (the mode
    # that works on Windows). vLLM reads this when it builds the engine.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import uvicorn
    from transformers import AutoTokenizer

    from ..vllm.engine import build_llm
    from .app import ServedModel, create_app
    from .engine_loop import EngineLoop
    from .prompts import Prompts

    llm = build_llm(path, args.kv_cache_dtype, plugin_config=plugin_config(args), max_model_len=args.max_model_len,
                    load_format=args.load_format, runner=args.runner, convert=args.convert)
    engine = llm.llm_engine
    config = engine.model_config
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer, revision=config.tokenizer_revision,
                                              trust_remote_code=config.trust_remote_code)
    served = ServedModel(name, tuple(engine.get_supported_tasks()), Prompts(tokenizer, config.max_model_len))
    print(f"mtq serve: {name!r} ({path}, kv_cache_dtype={args.kv_cache_dtype}, tasks {', '.join(served.tasks)}) "
          f"on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(create_app(EngineLoop(engine), served), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _loadtest(args: argparse.Namespace) -> int:
    from .loadtest import run

    if min(args.requests, args.concurrency, args.max_tokens) < 1:
        raise ValueError("--requests, --concurrency and --max-tokens must be positive")
    report = asyncio.run(run(args.url, args.requests, args.concurrency, args.max_tokens, args.model, args.prompt,
                             args.chat))
    print(f"mtq loadtest: {args.url}, {args.requests} streamed {'chat ' if args.chat else ''}requests of "
          f"{args.max_tokens} tokens, {args.concurrency} at a time\n")
    print(report.table())
    return 1 if any(s.error for s in report.samples) else 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server over an in-process vLLM engine",
                       description="Serves /v1/completions, /v1/chat/completions, /v1/embeddings, /v1/models and "
                       "/health from one vLLM engine in this process (no engine subprocess; works on Windows).",
                       **examples("mtq serve --model path/to/model --kv-cache-dtype isoquant4 --port 8000"))
    s.add_argument("--model", help="model folder (default: pick from local model folders and the Hugging Face "
                   "cache; needs a terminal)")
    add_kv_arguments(s)
    s.add_argument("--load-format", default="auto", help="vLLM load format, e.g. mtq_mmap (default: auto)")
    s.add_argument("--served-model-name", help="the model name clients send (default: --model as given, or the "
                   "picked folder's name)")
    s.add_argument("--runner", default="auto", choices=("auto", "generate", "pooling"), help="vLLM runner")
    s.add_argument("--convert", default="auto", help="vLLM model conversion, e.g. embed with --runner pooling")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    s.set_defaults(func=_serve)

    t = sub.add_parser("loadtest", help="concurrent streaming requests against a server: requests/s, tokens/s, "
                       "latency percentiles",
                       **examples("mtq loadtest --url http://127.0.0.1:8000 --requests 64 --concurrency 16"))
    t.add_argument("--url", default="http://127.0.0.1:8000", help="server root (default: http://127.0.0.1:8000)")
    t.add_argument("--requests", type=int, default=64)
    t.add_argument("--concurrency", type=int, default=16)
    t.add_argument("--max-tokens", type=int, default=32, help="tokens per request (the server ignores EOS)")
    t.add_argument("--model", help="model name (default: the server's first)")
    t.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt; request i appends ' (i)'")
    t.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    t.set_defaults(func=_loadtest)
