"""`mtq windows ...`: doctor, fetch, patch (and scan, from the scanner module)."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.fetch import DEFAULT_GIT_URL

Handler = Callable[[argparse.Namespace], int]


def _reporting_errors(command: str) -> Callable[[Handler], Handler]:
    """Turn a KitError from the handler into a message on stderr and exit code 1."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except KitError as exc:
                print(f"mtq windows {command}: error: {exc}", file=sys.stderr)
                return 1

        return run

    return wrap


@_reporting_errors("doctor")
def _doctor(args: argparse.Namespace) -> int:
    from multi_turboquant.windows.doctor import ERROR, Probes, diagnose
    from multi_turboquant.windows.patchseries import detect_version

    tree = Path(args.tree) if args.tree else Path.cwd()
    if args.tree and not tree.is_dir():
        raise KitError(f"tree {tree} does not exist")
    version = args.version or detect_version(tree)
    report = diagnose(Probes.system(), version)
    print(report.to_json() if args.json else report.to_text())
    return 1 if report.count(ERROR) else 0


@_reporting_errors("fetch")
def _fetch(args: argparse.Namespace) -> int:
    from multi_turboquant.windows.fetch import fetch_git, fetch_sdist

    dest = Path(args.dir or f"vllm-{args.version}")
    started = time.monotonic()
    if args.source == "git":
        fetch_git(args.version, dest, args.git_url)
        origin = f"tag v{args.version} of {args.git_url}"
    else:
        origin = str(fetch_sdist(args.version, dest))
    print(f"vLLM {args.version} from {origin} is in {dest} ({time.monotonic() - started:.1f} s)")
    return 0


@_reporting_errors("patch")
def _patch(args: argparse.Namespace) -> int:
    from multi_turboquant.windows.patchseries import PATCHES_DIR, regenerate, resolve_series, run_patch

    if args.regenerate and (args.check or args.reverse):
        raise KitError("--regenerate cannot be combined with --check or --reverse")
    if args.into and not args.regenerate:
        raise KitError("--into only applies to --regenerate")
    root = Path(args.series_root) if args.series_root else PATCHES_DIR
    tree = Path(args.tree)
    series = resolve_series(tree, args.version, root)
    if args.regenerate:
        for line in regenerate(tree, series, args.into):
            print(line)
    else:
        print(run_patch(tree, series, check=args.check, reverse=args.reverse))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mtq windows` and its sub-commands."""
    windows = subparsers.add_parser("windows", help="Windows build kit for vLLM: doctor, fetch, patch, scan")
    commands = windows.add_subparsers(dest="windows_command", metavar="COMMAND")
    windows.set_defaults(func=lambda _args: windows.print_help() or 2)

    doctor = commands.add_parser("doctor", help="check the build environment and print the values the build uses")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--tree", help="vLLM source tree, to read its version from (default: the current folder)")
    doctor.add_argument("--version", help="vLLM version being built (SETUPTOOLS_SCM_PRETEND_VERSION)")
    doctor.set_defaults(func=_doctor)

    fetch = commands.add_parser(
        "fetch",
        help="download a vLLM source tree and lay it out as a git work tree",
        description="Sdists are cached in $MTQ_CACHE_DIR/sdists (default ~/.cache/multi-turboquant/sdists).",
    )
    fetch.add_argument("version", metavar="VERSION", help="vLLM version, e.g. 0.19.0")
    fetch.add_argument("dir", metavar="DIR", nargs="?", help="target folder (default: vllm-VERSION)")
    fetch.add_argument(
        "--source",
        choices=("sdist", "git"),
        default="sdist",
        help="sdist from pip's index (default) or a clone of the vVERSION tag",
    )
    fetch.add_argument("--git-url", default=DEFAULT_GIT_URL, help="repository for --source git")
    fetch.set_defaults(func=_fetch)

    patch = commands.add_parser("patch", help="apply, check, un-apply or regenerate the Windows patch series")
    patch.add_argument("--check", action="store_true", help="only check whether the series applies (or is applied)")
    patch.add_argument("--reverse", action="store_true", help="un-apply the series")
    patch.add_argument("--regenerate", action="store_true", help="write the tree's changes back into the series")
    patch.add_argument("--into", metavar="NAME", help="with --regenerate: patch for files not yet in the series")
    patch.add_argument("--tree", default=".", help="vLLM source tree (default: the current folder)")
    patch.add_argument("--version", help="vLLM version (default: read from the tree)")
    patch.add_argument(
        "--series-root", metavar="DIR", help="folder holding the vllm-VERSION series (default: the package's)"
    )
    patch.set_defaults(func=_patch)

    try:
        from multi_turboquant.windows.scanner import add_scan_command
    except ModuleNotFoundError as exc:
        if exc.name != "multi_turboquant.windows.scanner":
            raise
    else:
        add_scan_command(commands)
