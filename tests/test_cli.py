"""The `mtq` command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from multi_turboquant.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multi_turboquant.cli", *args], capture_output=True, text=True)


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("formats", "bench", "demo", "serve", "loadtest"):
        assert cmd in out.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: mtq" in capsys.readouterr().out


def test_formats_table(capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    assert "| isoquant3 | isoquant | 3 | 26 | 50 | 98 | 4.92 | 5.12 | 5.22 |" in out
    assert "| turboquant25 | turboquant | 2.5 | 24 | 44 | 84 |" in out


def test_formats_json(capsys):
    assert main(["formats", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["turboquant25", "turboquant35", "isoquant3", "isoquant4",
                                         "planarquant3", "planarquant4"]
    assert rows[1]["bytes_d128"] == 60 and rows[1]["vs_bf16_d128"] == pytest.approx(256 / 60, abs=1e-3)


def test_bench_quality_json(capsys):
    assert main(["bench", "quality", "--head-dim", "64", "--tokens", "256", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    methods = {r["method"] for r in rows}
    assert {"isoquant4", "turboquant35 +calib outliers", "fp8 e4m3 (per-tensor scale)"} <= methods
    by = {(r["data"], r["method"]): r for r in rows}
    # 4-bit beats 3-bit, fp8 beats everything on MSE; TurboQuant copes with outlier channels
    assert by["gaussian", "isoquant4"]["rel_mse"] < by["gaussian", "isoquant3"]["rel_mse"]
    assert by["outliers", "fp8 e4m3 (per-tensor scale)"]["rel_mse"] < by["outliers", "isoquant4"]["rel_mse"]
    assert by["outliers", "turboquant35"]["rel_mse"] < by["outliers", "isoquant3"]["rel_mse"]


def test_bench_throughput_small(capsys):
    assert main(["bench", "throughput", "--vectors", "512", "--head-dim", "64", "--formats", "planarquant4"]) == 0
    assert "| planarquant4 | 512 | 64 |" in capsys.readouterr().out


def test_bench_throughput_unknown_format():
    out = run("bench", "throughput", "--vectors", "16", "--formats", "nope")
    assert out.returncode == 2 and "mtq: error: unknown KV-cache format 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def every_parser(parser, path=("mtq",)):
    """(command path, parser) for `mtq` and every sub-command below it."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_parser(sub, (*path, name))


def test_every_command_help_shows_an_example_that_parses():
    import shlex

    from multi_turboquant._help import example_lines
    from multi_turboquant.cli import build_parser

    root = build_parser()
    seen = []
    for path, parser in every_parser(root):
        lines = example_lines(parser)
        assert lines, f"`{' '.join(path)} --help` shows no example"
        assert ("example:" if len(lines) == 1 else "examples:") in parser.format_help()
        for line in lines:
            words = shlex.split(line, posix=False)
            assert words[:len(path)] == list(path), (path, line)  # an example of this command
            root.parse_args(words[1:])  # a valid command line (argparse exits on a bad one)
        seen.append(" ".join(path[1:]))
    assert {"formats", "bench quality", "eval quality", "calibrate", "demo", "generate", "load", "serve",
            "loadtest", "windows build", "windows scan"} <= set(seen)
