"""`mtq` command line: each command group lives in its own module with a `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

from ._help import examples

# Modules that add sub-commands; each defines `register(subparsers)`.
COMMAND_MODULES = (
    "multi_turboquant.formats.cli",
    "multi_turboquant.eval.cli",
    "multi_turboquant.windows.cli",
    "multi_turboquant.loader.cli",
    "multi_turboquant.vllm.cli",
    "multi_turboquant.serve.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtq",
        description="multi-turboquant: compressed KV-cache formats for vLLM, kernels, and a Windows build kit. "
        "`mtq COMMAND --help` shows a command's options and an example.",
        **examples("mtq formats", "mtq demo", 'mtq generate --kv-cache-dtype isoquant4 "Once upon a time"'),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command group not present in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # bad user input: one clear line, no traceback
        print(f"mtq: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
