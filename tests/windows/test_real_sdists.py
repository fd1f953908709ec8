"""The shipped patch series against the real vLLM sdists (downloaded once into the sdist cache).

What CI runs for every series: fetch the sdist with `mtq windows fetch`'s code, check the series with
`git apply --check` semantics (in order, on a scratch index), apply it, and un-apply it again.
"""

from __future__ import annotations

from pathlib import Path

import shutil

import pytest

from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.fetch import fetch_sdist
from multi_turboquant.windows.gittools import changed_paths
from multi_turboquant.windows.patchseries import (
    PATCHES_DIR,
    Series,
    read_text,
    regenerate,
    resolve_series,
    run_patch,
    series_names,
)

VERSIONS = ("0.19.0", "0.27.1")


def hunks_by_patch(series: Series) -> dict[str, list[tuple[str, list[str]]]]:
    return {p.name: [(f.path, [h.header for h in f.hunks]) for f in p.files] for p in series.patches}


def assert_regenerates_same_hunks(tree: Path, series: Series, root: Path) -> None:
    """`--regenerate` on the patched tree gives back the series' patches, file for file and hunk for hunk."""
    copy = root / series.folder.name
    shutil.copytree(series.folder, copy)
    regenerate(tree, resolve_series(tree, series.version, root))
    assert hunks_by_patch(resolve_series(tree, series.version, root)) == hunks_by_patch(series)


@pytest.mark.network
@pytest.mark.parametrize("version", VERSIONS)
def test_series_applies_to_the_real_sdist(version: str, tmp_path: Path) -> None:
    series_file = PATCHES_DIR / f"vllm-{version}" / "series"
    if not series_file.is_file() or not series_names(read_text(series_file).splitlines()):
        pytest.skip(f"no patches for vLLM {version} yet ({series_file} is missing or empty)")
    tree = tmp_path / f"vllm-{version}"
    try:
        fetch_sdist(version, tree)
    except KitError as exc:
        if "cannot reach" in str(exc):
            pytest.skip(f"package index unreachable: {exc}")
        raise
    series = resolve_series(tree, version)
    assert "apply cleanly" in run_patch(tree, series, check=True, reverse=False)
    assert "applied" in run_patch(tree, series, check=False, reverse=False)
    assert "already applied" in run_patch(tree, series, check=True, reverse=False)
    assert_regenerates_same_hunks(tree, series, tmp_path / "regenerated")
    assert "un-applied" in run_patch(tree, series, check=False, reverse=True)
    assert changed_paths(tree) == []
