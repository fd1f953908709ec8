"""`mtq windows ...`: doctor, fetch, patch, build, wheel, verify, failures, diagnose (and scan, from the scanner module)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from multi_turboquant._help import examples
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


@_reporting_errors("build")
def _build(args: argparse.Namespace) -> int:
    from multi_turboquant.windows.build import BuildOptions, build
    from multi_turboquant.windows.doctor import Probes

    options = BuildOptions(Path(args.tree), args.jobs, args.arch, args.resume, args.python or sys.executable)
    return build(options, Probes.system())


@_reporting_errors("wheel")
def _wheel(args: argparse.Namespace) -> int:
    from multi_turboquant.windows.wheel import build_wheel

    started = time.monotonic()
    path = build_wheel(Path(args.tree), Path(args.out), args.device)
    size = path.stat().st_size / 2**20
    print(f"{path} ({size:.1f} MB, validated: CRC, RECORD, native modules; {time.monotonic() - started:.1f} s)")
    return 0


@_reporting_errors("verify")
def _verify(args: argparse.Namespace) -> int:
    from multi_turboquant.windows.verify import verify

    with contextlib.redirect_stdout(sys.stderr):  # vLLM logs to stdout when imported: keep the report clean
        report = verify(args.version)
    print(report.to_json() if args.json else report.to_text())
    return 1 if report.errors else 0


@_reporting_errors("failures")
def _failures(args: argparse.Namespace) -> int:
    from multi_turboquant.windows.failures import FAILURES, markdown_table, with_table

    if args.update:
        doc = Path(args.update)
        try:
            doc.write_text(with_table(doc.read_text(encoding="utf-8")), encoding="utf-8")
        except OSError as exc:
            raise KitError(f"cannot update {doc}: {exc.strerror}") from exc
        print(f"{doc}: failure table updated")
        return 0
    if args.markdown:
        print(markdown_table(), end="")
        return 0
    for failure in FAILURES:
        print(f"{failure.key} ({failure.phase}): {failure.cause}\n  fix: {failure.fix}")
    return 0


@_reporting_errors("diagnose")
def _diagnose(args: argparse.Namespace) -> int:
    from multi_turboquant.windows.failures import describe, diagnose

    try:
        lines = Path(args.log).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise KitError(f"cannot read {args.log}: {exc.strerror}") from exc
    found = diagnose(lines, dict(os.environ))
    for diagnosis in found:
        print(describe(diagnosis))
    if not found:
        print(f"no known failure in {args.log}")
    return 0 if found else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mtq windows` and its sub-commands."""
    windows = subparsers.add_parser(
        "windows", help="Windows build kit for vLLM: doctor, fetch, patch, build, wheel, verify",
        **examples("mtq windows doctor", r"mtq windows fetch 0.27.1 C:\src\vllm",
                   r"mtq windows patch --tree C:\src\vllm", r"mtq windows build --tree C:\src\vllm",
                   r"mtq windows wheel --tree C:\src\vllm", "mtq windows verify"),
    )
    commands = windows.add_subparsers(dest="windows_command", metavar="COMMAND")
    windows.set_defaults(func=lambda _args: windows.print_help() or 2)

    doctor = commands.add_parser("doctor", help="check the build environment and print the values the build uses",
                                 **examples("mtq windows doctor --json"))
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--tree", help="vLLM source tree, to read its version from (default: the current folder)")
    doctor.add_argument("--version", help="vLLM version being built (SETUPTOOLS_SCM_PRETEND_VERSION)")
    doctor.set_defaults(func=_doctor)

    fetch = commands.add_parser(
        "fetch",
        help="download a vLLM source tree and lay it out as a git work tree",
        description="Sdists are cached in $MTQ_CACHE_DIR/sdists (default ~/.cache/multi-turboquant/sdists).",
        **examples(r"mtq windows fetch 0.27.1 C:\src\vllm", "mtq windows fetch 0.27.1 --source git"),
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

    patch = commands.add_parser("patch", help="apply, check, un-apply or regenerate the Windows patch series",
                                **examples(r"mtq windows patch --tree C:\src\vllm --check",
                                           r"mtq windows patch --tree C:\src\vllm"))
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

    build = commands.add_parser(
        "build",
        help="configure, compile and install vLLM with the doctor's environment; diagnose failures",
        description="Phases: configure (cmake -G Ninja), compile (cmake --build --target install), install "
        "(editable pip install, nothing compiled). Full log in TREE/build/mtq/build.log.",
        **examples(r"mtq windows build --tree C:\src\vllm --arch 8.9",
                   r"mtq windows build --tree C:\src\vllm --resume"),
    )
    build.add_argument("--tree", default=".", help="vLLM source tree (default: the current folder)")
    build.add_argument("--jobs", type=int, help="parallel compile jobs (default: the doctor's MAX_JOBS)")
    build.add_argument("--arch", help="TORCH_CUDA_ARCH_LIST, e.g. 8.9 or '8.6;12.0' (default: the doctor's)")
    build.add_argument("--resume", action="store_true", help="rebuild only what changed, with the last run's job count")
    build.add_argument("--python", help="Python with the CUDA torch (default: this one)")
    build.set_defaults(func=_build)

    wheel = commands.add_parser("wheel", help="package a built tree as a wheel and validate it",
                                **examples(r"mtq windows wheel --tree C:\src\vllm --out dist"))
    wheel.add_argument("--tree", default=".", help="built vLLM source tree (default: the current folder)")
    wheel.add_argument("--out", default="dist", help="folder for the wheel (default: dist)")
    wheel.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="which native modules must be in it")
    wheel.set_defaults(func=_wheel)

    verify = commands.add_parser("verify", help="check the installed vLLM: native modules, torch, CUDA, plugin",
                                 **examples("mtq windows verify --version 0.27.1"))
    verify.add_argument("--version", help="the vLLM version that should be installed")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_verify)

    failures = commands.add_parser("failures", help="list the known build and runtime failures and their fixes",
                                   **examples("mtq windows failures --markdown"))
    failures.add_argument("--markdown", action="store_true", help="as the troubleshooting table of docs/windows.md")
    failures.add_argument("--update", metavar="DOC", help="rewrite the table between the markers of DOC")
    failures.set_defaults(func=_failures)

    diagnose = commands.add_parser("diagnose", help="find known failures in a build or vLLM log",
                                   **examples(r"mtq windows diagnose C:\src\vllm\build\mtq\build.log"))
    diagnose.add_argument("log", metavar="LOG", help="log file")
    diagnose.set_defaults(func=_diagnose)

    try:
        from multi_turboquant.windows.scanner import add_scan_command
    except ModuleNotFoundError as exc:
        if exc.name != "multi_turboquant.windows.scanner":
            raise
    else:
        add_scan_command(commands)
