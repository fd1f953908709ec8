"""The failure table: each entry recognises its recorded log, and docs/windows.md holds the current table."""

from __future__ import annotations

from pathlib import Path

import pytest

from multi_turboquant.cli import main
from multi_turboquant.windows.failures import DOC_BEGIN, DOC_END, FAILURES, diagnose, markdown_table, with_table

LOGS = Path(__file__).with_name("logs")
DOC = Path(__file__).parents[2] / "docs" / "windows.md"
PINNED = {"CUDA_HOME": r"C:\Program Files\NVIDIA GPU Computing Toolkit\CUDA\v12.8"}


def log_lines(name: str) -> list[str]:
    return (LOGS / f"{name}.log").read_text().splitlines()


@pytest.mark.parametrize("failure", FAILURES, ids=lambda f: f.key)
def test_each_failure_recognises_its_recorded_log_and_nothing_else(failure) -> None:
    found = diagnose(log_lines(failure.key), PINNED)
    assert [d.failure.key for d in found] == [failure.key]
    assert failure.pattern.search(found[0].line) and log_lines(failure.key)[found[0].line_number - 1] == found[0].line


def test_successful_logs_show_no_failure() -> None:
    for name in ("configure", "compile", "install"):
        assert diagnose(log_lines(name), PINNED) == []


def test_found_cuda_is_a_failure_only_when_it_differs_from_cuda_home() -> None:
    line = ['-- Found CUDAToolkit: C:/CUDA/v12.6/include (found version "12.6.85")']
    assert [d.failure.key for d in diagnose(line, PINNED)] == ["cuda-version-mismatch"]
    assert diagnose(line, {"CUDA_HOME": "/usr/local/cuda-12.6"}) == []
    assert diagnose(line, {}) == []  # nothing pinned: nothing to compare with


def test_keys_are_unique_and_every_entry_has_a_fix() -> None:
    assert len({f.key for f in FAILURES}) == len(FAILURES)
    assert all(f.cause and f.fix and f.phase in {"configure", "compile", "install", "runtime"} for f in FAILURES)


def test_docs_hold_the_current_table() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert with_table(doc) == doc, "docs/windows.md is stale: run `mtq windows failures --update docs/windows.md`"
    assert doc.count(DOC_BEGIN) == 1 and markdown_table() in doc
    assert all(f"| `{f.key}` |" in doc for f in FAILURES)


def test_update_rewrites_only_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "windows.md"
    doc.write_text(f"# Title\n\n{DOC_BEGIN}\n| old | table |\n{DOC_END}\nafter\n")
    assert main(["windows", "failures", "--update", str(doc)]) == 0
    assert doc.read_text() == f"# Title\n\n{DOC_BEGIN}\n{markdown_table()}{DOC_END}\nafter\n"
    doc.write_text("no markers\n")
    assert main(["windows", "failures", "--update", str(doc)]) == 2
    assert "mtq: error: the document lacks the markers" in capsys.readouterr().err
    assert main(["windows", "failures", "--update", str(tmp_path / "missing.md")]) == 1
    assert "mtq windows failures: error: cannot update" in capsys.readouterr().err


def test_failures_and_diagnose_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["windows", "failures", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()
    assert main(["windows", "failures"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{f.key} ({f.phase}): {f.cause}\n  fix: {f.fix}" in listing for f in FAILURES)
    assert main(["windows", "diagnose", str(LOGS / "no-cache-memory.log")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no-cache-memory (log line 3:") and "--gpu-memory-utilization" in out
    assert main(["windows", "diagnose", str(LOGS / "install.log")]) == 1
    assert "no known failure" in capsys.readouterr().out
    assert main(["windows", "diagnose", str(tmp_path / "missing.log")]) == 1
    assert "mtq windows diagnose: error: cannot read" in capsys.readouterr().err
