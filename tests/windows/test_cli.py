"""`mtq windows` command registration."""

from __future__ import annotations

import argparse
import sys

import pytest

from multi_turboquant.cli import main
from multi_turboquant.windows import cli

PART_TWO = {"build", "wheel", "verify", "failures", "diagnose"}


def windows_commands() -> set[str]:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    windows = parser._subparsers._group_actions[0].choices["windows"]
    return set(windows._subparsers._group_actions[0].choices)


def test_windows_commands_include_the_scanner_when_present() -> None:
    pytest.importorskip("multi_turboquant.windows.scanner")
    assert windows_commands() == {*PART_TWO, "doctor", "fetch", "patch", "scan"}


def test_windows_commands_without_the_scanner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "multi_turboquant.windows.scanner", None)  # import fails: not found
    assert windows_commands() == {*PART_TWO, "doctor", "fetch", "patch"}


def test_windows_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["windows"]) == 2
    assert "doctor" in capsys.readouterr().out
