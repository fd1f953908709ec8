"""`mtq windows patch`: applying, checking, un-applying and regenerating a series on a tiny git tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from multi_turboquant.cli import main
from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.gittools import changed_paths
from multi_turboquant.windows.patchseries import (
    detect_version,
    load_series,
    parse_patch,
    regenerate,
    resolve_series,
    run_patch,
)

from .helpers import FIRST, PRISTINE, SECOND, make_series, sh, write_files


def patch_cli(capsys: pytest.CaptureFixture[str], tree: Path, root: Path, *args: str) -> tuple[int, str, str]:
    code = main(["windows", "patch", "--tree", str(tree), "--series-root", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def content(tree: Path, name: str) -> str:
    return (tree / name).read_text()


def test_apply_then_already_applied_then_reverse(tree: Path, series_root: Path, capsys) -> None:
    code, out, _ = patch_cli(capsys, tree, series_root)
    assert code == 0 and "applied 2 patch(es)" in out
    assert content(tree, "setup.py") == FIRST["setup.py"]
    assert content(tree, "csrc/ops.cu") == SECOND["csrc/ops.cu"]
    assert (tree / "csrc/win.h").is_file()

    code, out, _ = patch_cli(capsys, tree, series_root)
    assert code == 0 and "already applied" in out
    code, out, _ = patch_cli(capsys, tree, series_root, "--check")
    assert code == 0 and "already applied" in out
    code, out, _ = patch_cli(capsys, tree, series_root, "--check", "--reverse")
    assert code == 0 and "can be un-applied" in out
    assert content(tree, "setup.py") == FIRST["setup.py"]

    code, out, _ = patch_cli(capsys, tree, series_root, "--reverse")
    assert code == 0 and "un-applied" in out
    assert changed_paths(tree) == []
    code, out, _ = patch_cli(capsys, tree, series_root, "--reverse")
    assert code == 0 and "nothing to un-apply" in out


def test_check_leaves_the_tree_alone(tree: Path, series_root: Path, capsys) -> None:
    code, out, _ = patch_cli(capsys, tree, series_root, "--check")
    assert code == 0 and "apply cleanly" in out
    assert changed_paths(tree) == []
    assert sh(tree, "git", "diff", "--cached", "--stat") == ""


def test_dirty_tree_is_refused(tree: Path, series_root: Path, capsys) -> None:
    write_files(tree, {"vllm/__init__.py": "# local edit\n"})
    code, out, err = patch_cli(capsys, tree, series_root)
    assert code == 1 and out == ""
    assert "uncommitted changes" in err and "vllm/__init__.py" in err and "Traceback" not in err
    assert content(tree, "setup.py") == PRISTINE["setup.py"]


def test_partly_applied_series_counts_as_dirty(tree: Path, series_root: Path) -> None:
    write_files(tree, FIRST)
    series = resolve_series(tree, None, series_root)
    with pytest.raises(KitError, match="uncommitted changes.*setup.py"):
        run_patch(tree, series, check=False, reverse=False)


def test_mismatching_patch_names_patch_file_and_hunk(tree: Path, series_root: Path, capsys) -> None:
    # The pristine tree moved on under the series: line 31 of ops.cu (the 2nd hunk's context) changed.
    write_files(tree, {"csrc/ops.cu": PRISTINE["csrc/ops.cu"].replace("op31()", "op31_new()")})
    sh(tree, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "upstream change")
    code, _, err = patch_cli(capsys, tree, series_root, "--check")
    assert code == 1
    second_hunk = parse_patch("x", (series_root / "vllm-0.19.0/0002-ops.patch").read_text()).files[0].hunks[1]
    assert f"0002-ops.patch: csrc/ops.cu: hunk {second_hunk.header} (line {second_hunk.line} of the patch)" in err
    assert "does not apply" in err and "git: error: patch failed: csrc/ops.cu:" in err
    assert changed_paths(tree) == []


def test_failed_apply_of_later_patch_changes_nothing(tree: Path, series_root: Path, capsys) -> None:
    (tree / "csrc/win.h").write_text("#pragma once\n")  # the 2nd patch creates this file
    sh(tree, "git", "add", "csrc/win.h")
    sh(tree, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "win.h upstream")
    code, _, err = patch_cli(capsys, tree, series_root)
    assert code == 1 and "0002-ops.patch: csrc/win.h:" in err and "already exists" in err
    assert content(tree, "setup.py") == PRISTINE["setup.py"]  # the 1st patch was not applied either


def recount(text: str, delta: int) -> str:
    """Change the line counts of the first hunk header by delta, as a hand edit gone wrong would."""

    def bump(m: re.Match[str]) -> str:
        return f"@@ -{m[1]},{int(m[2]) + delta} +{m[3]},{int(m[4]) + delta} @@"

    return re.sub(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@", bump, text, count=1)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: recount(t, 2), r"setup.py: line \d+: hunk @@ -4,6 \+4,6 @@ \(line 7\) ends early: 2 old and 2 new"),
        (
            lambda t: recount(t, -2),
            r"setup.py: line 11: '-    return os.name' is past the end of hunk @@ -4,2 \+4,2 @@ \(line 7\)",
        ),
        (lambda t: re.sub("@@ -4,4", "@@ -four", t), 'setup.py: line 7: malformed hunk header "@@ -four'),
        (
            lambda t: t.replace("--- a/setup.py\n+++ b/setup.py\n", ""),
            "setup.py: line 5: hunk .* comes before any file header",
        ),
        (lambda t: "just words\n", "no diff found"),
        (
            lambda t: t.replace("+++ b/setup.py\n", "+++ b/setup.py\n+stray\n"),
            "setup.py: line 7: '\\+stray' comes before",
        ),
        (lambda t: t.replace("\n", "\r\n"), "line 3: CRLF line endings: the patch file was converted"),
    ],
)
def test_malformed_patch_is_reported_with_its_location(tree: Path, series_root: Path, capsys, edit, message) -> None:
    patch_file = series_root / "vllm-0.19.0/0001-setup.patch"
    patch_file.write_text(edit(patch_file.read_text()))
    code, _, err = patch_cli(capsys, tree, series_root, "--check")
    assert code == 1 and "0001-setup.patch:" in err
    assert re.search(message, err), err


def test_parse_patch_records_files_hunks_and_lines() -> None:
    text = (
        "Subject: demo\n\n"
        "diff --git a/x.c b/x.c\nindex 1..2 100644\n--- a/x.c\n+++ b/x.c\n"
        "@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
        "@@ -10 +10,2 @@\n\n+d\n\\ No newline at end of file\n"
        "diff --git a/gone.h b/gone.h\ndeleted file mode 100644\n--- a/gone.h\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"
        "diff --git a/bin.dll b/bin.dll\nnew file mode 100644\nGIT binary patch\nliteral 1\nIcmZpW000310RR91\n\n"
    )
    patch = parse_patch("demo.patch", text)
    assert patch.preamble == "Subject: demo\n\n"
    assert [f.path for f in patch.files] == ["x.c", "gone.h", "bin.dll"]
    assert [(h.header, h.line, h.old_start, h.new_start) for h in patch.files[0].hunks] == [
        ("@@ -1,2 +1,2 @@", 7, 1, 1),
        ("@@ -10 +10,2 @@", 11, 10, 10),
    ]
    assert patch.files[1].hunks[0].old_start == 1 and patch.files[2].hunks == []


def test_series_file_errors(tree: Path, series_root: Path) -> None:
    folder = series_root / "vllm-0.19.0"
    series_file = folder / "series"
    series_file.write_text("0001-setup.patch\n0003-missing.patch\n")
    with pytest.raises(KitError, match="lists 0003-missing.patch, which is not in"):
        load_series(folder, "0.19.0")
    series_file.write_text("0001-setup.patch\n0001-setup.patch\n")
    with pytest.raises(KitError, match="listed twice"):
        load_series(folder, "0.19.0")
    series_file.write_text("../escape.patch\n")
    with pytest.raises(KitError, match="not a patch file name"):
        load_series(folder, "0.19.0")
    series_file.unlink()
    with pytest.raises(KitError, match="series.* does not exist"):
        load_series(folder, "0.19.0")


def test_series_comments_and_empty_series(tree: Path, tmp_path: Path) -> None:
    folder = tmp_path / "patches/vllm-0.19.0"
    folder.mkdir(parents=True)
    (folder / "series").write_text("# no patches yet\n\n")
    series = resolve_series(tree, None, folder.parent)
    assert series.patches == [] and "no patches yet" in run_patch(tree, series, check=True, reverse=False)


def test_version_detection(tree: Path) -> None:
    assert detect_version(tree) == "0.19.0"
    (tree / "PKG-INFO").unlink()
    assert detect_version(tree) == "0.19.0"  # from vllm/_version.py
    (tree / "vllm/_version.py").unlink()
    assert detect_version(tree) is None
    sh(tree, "git", "tag", "v0.27.1")
    assert detect_version(tree) == "0.27.1"


def test_version_and_tree_errors(tree: Path, series_root: Path, tmp_path: Path, capsys) -> None:
    code, _, err = patch_cli(capsys, tree, series_root, "--version", "0.27.1")
    assert code == 1 and "wrong version: " in err and "holds vLLM 0.19.0, not 0.27.1" in err
    code, _, err = patch_cli(capsys, tmp_path / "absent", series_root)
    assert code == 1 and "does not exist" in err
    plain = tmp_path / "plain"
    plain.mkdir()
    code, _, err = patch_cli(capsys, plain, series_root)
    assert code == 1 and "not the root of a git work tree" in err
    write_files(tree, {"PKG-INFO": "Version: 0.20.0\n"})
    sh(tree, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "bump")
    code, _, err = patch_cli(capsys, tree, series_root)
    assert code == 1 and "no patch series for vLLM 0.20.0 (series exist for: 0.19.0)" in err


def test_option_combinations_are_checked(tree: Path, series_root: Path, capsys) -> None:
    code, _, err = patch_cli(capsys, tree, series_root, "--regenerate", "--reverse")
    assert code == 1 and "cannot be combined" in err
    code, _, err = patch_cli(capsys, tree, series_root, "--into", "0009-x.patch")
    assert code == 1 and "--into only applies to --regenerate" in err


def test_regenerate_splits_changes_back_per_file(tree: Path, series_root: Path, capsys) -> None:
    folder = series_root / "vllm-0.19.0"
    readme = (folder / "README.md").read_text()
    assert patch_cli(capsys, tree, series_root)[0] == 0
    write_files(tree, {"csrc/ops.cu": content(tree, "csrc/ops.cu").replace("op20()", "op20_msvc()")})
    write_files(tree, {"vllm/win_utils.py": "WINDOWS = True\n"})  # untracked: goes to the last patch

    code, out, _ = patch_cli(capsys, tree, series_root, "--regenerate")
    assert (
        code == 0 and "0002-ops.patch: 3 file(s), 5 hunk(s)" in out and "0001-setup.patch: 1 file(s), 1 hunk(s)" in out
    )
    second = (folder / "0002-ops.patch").read_text()
    assert second.startswith("Description of 0002-ops.patch\n\n")  # the description is kept
    assert "+int op20_msvc()" in second and "+++ b/vllm/win_utils.py" in second
    assert (folder / "README.md").read_text() == readme

    # The regenerated series round-trips: un-apply restores the pristine tree, apply brings the edits back.
    assert patch_cli(capsys, tree, series_root, "--reverse")[0] == 0
    assert changed_paths(tree) == []
    assert patch_cli(capsys, tree, series_root)[0] == 0
    assert "op20_msvc" in content(tree, "csrc/ops.cu") and (tree / "vllm/win_utils.py").is_file()


def test_regenerate_into_a_new_patch_and_dropping_an_empty_one(tree: Path, series_root: Path, capsys) -> None:
    folder = series_root / "vllm-0.19.0"
    write_files(tree, {**SECOND, "CMakeLists.txt": "project(vllm)\n"})  # 0001's change is gone
    code, out, _ = patch_cli(capsys, tree, series_root, "--regenerate", "--into", "0003-cmake.patch")
    assert code == 0 and "0001-setup.patch: no changes left; removed" in out
    assert "0003-cmake.patch: not described in README.md yet" in out and "0002-ops.patch: not described" not in out
    assert not (folder / "0001-setup.patch").exists()
    assert (folder / "series").read_text() == "# Windows series\n0002-ops.patch\n0003-cmake.patch\n"
    assert "+++ b/CMakeLists.txt" in (folder / "0003-cmake.patch").read_text()
    assert "CMakeLists" not in (folder / "0002-ops.patch").read_text()


def test_regenerate_errors(tree: Path, series_root: Path, tmp_path: Path) -> None:
    series = resolve_series(tree, None, series_root)
    with pytest.raises(KitError, match="no changes against its pristine commit"):
        regenerate(tree, series)
    write_files(tree, {"new.txt": "x\n"})
    with pytest.raises(KitError, match="not a patch file name"):
        regenerate(tree, series, into="bad name")
    empty = tmp_path / "empty/vllm-0.19.0"
    empty.mkdir(parents=True)
    (empty / "series").write_text("")
    with pytest.raises(KitError, match="series is empty and new.txt is new: name its patch with --into"):
        regenerate(tree, resolve_series(tree, None, empty.parent))


def test_regenerate_refuses_a_file_in_two_patches(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "twice"
    make_series(tree, root / "vllm-0.19.0", {"0001-a.patch": FIRST, "0002-b.patch": {"setup.py": "changed again\n"}})
    write_files(tree, {"setup.py": "mine\n"})
    with pytest.raises(KitError, match="setup.py is changed by both 0001-a.patch and 0002-b.patch"):
        regenerate(tree, resolve_series(tree, None, root))


def test_crlf_content_survives_regenerate(tree: Path, tmp_path: Path) -> None:
    folder = tmp_path / "crlf/vllm-0.19.0"
    make_series(tree, folder, {"0001-bat.patch": {"build.bat": "@echo off\r\nset X=1\r\n"}})
    series = resolve_series(tree, None, folder.parent)
    run_patch(tree, series, check=False, reverse=False)
    assert (tree / "build.bat").read_bytes() == b"@echo off\r\nset X=1\r\n"
    write_files(tree, {"build.bat": "@echo off\r\nset X=2\r\n"})
    regenerate(tree, series)
    assert b"+set X=2\r\n" in (folder / "0001-bat.patch").read_bytes()
