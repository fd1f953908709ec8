"""`mtq serve` (OpenAI-compatible server over an in-process vLLM engine) and `mtq loadtest`."""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import socket
import sys
from pathlib import Path

from .._help import examples
from ..vllm.cli import add_kv_arguments, plugin_config
from .guard import DEFAULT_MAX_REQUEST_BYTES
from .loadtest import DEFAULT_OVERSIZED_BYTES, DEFAULT_PROMPT

API_KEY_ENV = "MTQ_API_KEY"
DEFAULT_MAX_QUEUED = 64


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


def api_key(given: str | None) -> str | None:
    """The key from --api-key, else from $MTQ_API_KEY; None: no key."""
    key = given if given is not None else os.environ.get(API_KEY_ENV)
    if key is not None and not (key.isascii() and key.isprintable() and key and " " not in key):
        raise ValueError(f"the API key (--api-key or ${API_KEY_ENV}) must be non-empty printable ASCII without spaces")
    return key


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (localhost, 127.0.0.0/8, ::1)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def exposure_warning(host: str, key: str | None) -> str | None:
    """The warning for a server that anyone who reaches it over the network may use, if this one is such."""
    if key is not None or is_loopback(host):
        return None
    return (f"mtq serve: warning: listening on {host} without an API key: anyone who can reach this port can use the "
            f"model; set ${API_KEY_ENV} or --api-key")


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    """Refuse an option below `minimum` (None: not given)."""
    if value is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum} (got {value})")


def _serve(args: argparse.Namespace) -> int:
    key = api_key(args.api_key)
    _positive("--max-request-bytes", args.max_request_bytes)
    _positive("--max-queued", args.max_queued, minimum=0)
    _positive("--max-num-seqs", args.max_num_seqs)
    path, name = _model(args)
    _check_port(args.host, args.port)
    warning = exposure_warning(args.host, key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    # The engine core runs in this process, stepped by the server's engine thread: no engine subprocess (the mode
    # that works on Windows). vLLM reads this when it builds the engine.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from transformers import AutoTokenizer

    from ..vllm.engine import build_llm, kv_blocks
    from .app import ServedModel, create_app
    from .engine_loop import EngineLoop
    from .guard import Limits
    from .prompts import Prompts
    from .server import run

    seqs = {} if args.max_num_seqs is None else {"max_num_seqs": args.max_num_seqs}
    llm = build_llm(path, args.kv_cache_dtype, plugin_config=plugin_config(args), max_model_len=args.max_model_len,
                    load_format=args.load_format, runner=args.runner, convert=args.convert, dtype=args.dtype, **seqs)
    engine = llm.llm_engine
    config = engine.model_config
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer, revision=config.tokenizer_revision,
                                              trust_remote_code=config.trust_remote_code)
    served = ServedModel(name, tuple(engine.get_supported_tasks()), Prompts(tokenizer, config.max_model_len))
    limits = Limits(key, args.max_request_bytes, engine.vllm_config.scheduler_config.max_num_seqs + args.max_queued)
    print(f"mtq serve: {name!r} ({path}, kv_cache_dtype={args.kv_cache_dtype}, tasks {', '.join(served.tasks)}) "
          f"on http://{args.host}:{args.port}/v1, {'API key required' if key else 'no API key'}, at most "
          f"{limits.max_in_flight} requests in flight", file=sys.stderr, flush=True)
    loop = EngineLoop(engine, kv_blocks=lambda: kv_blocks(engine))
    run(create_app(loop, served, limits), loop, args.host, args.port, args.log_level)
    return 0


def _loadtest(args: argparse.Namespace) -> int:
    from .loadtest import Mix, plan, run

    for name in ("requests", "concurrency", "max_tokens", "oversized_bytes", "distinct_prompts"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    mix = Mix(args.chat_frac, args.disconnect_frac, args.malformed_frac, args.wrong_key_frac)
    plans = plan(args.requests, mix, args.prompt, args.distinct_prompts, args.seed)
    report = asyncio.run(run(args.url, plans, args.concurrency, args.max_tokens, args.model, api_key(args.api_key),
                             args.oversized_bytes))
    print(f"mtq loadtest: {args.url}, {args.requests} streamed requests of {args.max_tokens} tokens, "
          f"{args.concurrency} at a time; {mix}\n")
    print(report.table())
    return 1 if report.errors() else 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server over an in-process vLLM engine",
                       description="Serves /v1/completions, /v1/chat/completions, /v1/embeddings, /v1/models and "
                       "/health from one vLLM engine in this process (no engine subprocess; works on Windows).",
                       **examples("mtq serve --model path/to/model --kv-cache-dtype isoquant4 --port 8000"))
    s.add_argument("--model", help="model folder (default: pick from local model folders and the Hugging Face "
                   "cache; needs a terminal)")
    add_kv_arguments(s)
    s.add_argument("--load-format", default="auto", help="vLLM load format, e.g. mtq_mmap (default: auto)")
    s.add_argument("--dtype", default="auto", help="the model's compute dtype, e.g. float32 (default: auto, the "
                   "checkpoint's)")
    s.add_argument("--served-model-name", help="the model name clients send (default: --model as given, or the "
                   "picked folder's name)")
    s.add_argument("--runner", default="auto", choices=("auto", "generate", "pooling"), help="vLLM runner")
    s.add_argument("--convert", default="auto", help="vLLM model conversion, e.g. embed with --runner pooling")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                   "only); another address warns without an API key")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help=f"clients must send 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, "
                   "which keeps the key out of the process list; none: no key)")
    s.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="largest request body; larger ones get 413 (default: %(default)s)")
    s.add_argument("--max-num-seqs", type=int, help="requests the engine runs at once (default: vLLM's)")
    s.add_argument("--max-queued", type=int, default=DEFAULT_MAX_QUEUED,
                   help="requests that may wait beyond --max-num-seqs; more get 429 (default: %(default)s)")
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
    t.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt; request i appends ' (i)', or puts i in place of "
                   "{i} if the prompt has it")
    t.add_argument("--distinct-prompts", type=int, help="number the prompts i mod N")
    t.add_argument("--chat", dest="chat_frac", action="store_const", const=1.0, default=0.0,
                   help="use /v1/chat/completions")
    t.add_argument("--chat-frac", type=float, default=0.0, help="fraction of chat requests (default: 0)")
    t.add_argument("--api-key", help=f"the server's key (default: ${API_KEY_ENV})")
    faults = t.add_argument_group("faults", "fractions of the requests that misbehave; each should get its error "
                                  "(malformed: 400 or 413, wrong key: 401), which is counted by kind, not failed")
    faults.add_argument("--disconnect-frac", type=float, default=0.0, help="close the stream after the first text")
    faults.add_argument("--malformed-frac", type=float, default=0.0, help="in turn: invalid JSON, invalid UTF-8, a "
                        "prompt past the context, a body of --oversized-bytes")
    faults.add_argument("--wrong-key-frac", type=float, default=0.0, help="send a wrong API key")
    faults.add_argument("--oversized-bytes", type=int, default=DEFAULT_OVERSIZED_BYTES,
                        help="size of an oversized body (default: %(default)s)")
    faults.add_argument("--seed", type=int, default=0, help="shuffles which requests misbehave")
    t.set_defaults(func=_loadtest)
