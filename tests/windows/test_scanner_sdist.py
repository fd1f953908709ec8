"""The scanner and the kernel patch (0002) against the real vLLM sdists.

The sdists are downloaded once into ``${MTQ_CACHE_DIR:-~/.cache/multi-turboquant}/sdists``;
the tests skip only when the package index cannot be reached.
"""
from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.fetch import cache_dir, download, find_sdist, index_url, sha256_of
from multi_turboquant.windows.scanner import scan_path

PATCHES = Path(__file__).resolve().parents[2] / "multi_turboquant" / "windows" / "patches"
# sha256 published on PyPI for the sdists the series are made for
SDIST_SHA256 = {
    "0.19.0": "81e59cf87175e7a62eb8d9acf5989484bbd17089d5eface353f89067bda282d9",
    "0.27.1": "eec2d54d137ac1e59cb4c39226dfee1943eefc8f4788f5821d7300d6acbdb646",
}
# Every site the original Windows patch fixed in vLLM 0.19.0, with the rule that must report it.
ORIGINAL_SITES_0190 = {
    "csrc/core/math.hpp": "gcc-builtin",
    "csrc/moe/grouped_topk_kernels.cu": "gcc-attribute",
    "csrc/quantization/awq/gemm_kernels.cu": "gcc-asm",
    "csrc/quantization/activation_kernels.cu": "gcc-int-type",
    "csrc/topk.cu": "designated-init",
    "csrc/quantization/gptq_allspark/allspark_qgemm_w8a16.cu": "alt-token",
    "csrc/quantization/fused_kernels/fused_layernorm_dynamic_per_token_quant.cu": "alt-token",
    "csrc/attention/merge_attn_states.cu": "device-std-math",
    "csrc/quantization/utils.cuh": "device-var-template",
    "csrc/mamba/mamba_ssm/selective_scan_fwd.cu": "math-constant",
    "csrc/quantization/marlin/generate_kernels.py": "else-if-chain",
    "csrc/moe/marlin_moe_wna16/generate_kernels.py": "subprocess-rm",
    "csrc/cumem_allocator.cpp": "ssize-t",
}
# Files whose 0002 hunks go beyond `scan --fix` (documented in the series README).
HAND_EDITED = (
    "csrc/quantization/utils.cuh",
    "generate_kernels.py",
    "cooperative_topk.cuh",
    "topk_histogram_4096.cuh",
    "custom_all_gather_reduce_scatter.cuh",
)
# Left unfixed on purpose (Hopper-only machete dispatch; not in the original series either).
KNOWN_UNFIXED = ("machete_pytorch.cu",)


def sdist_archive(version: str) -> Path:
    """The cached sdist of ``version``, downloaded (and verified) first if needed."""
    cached = cache_dir() / f"vllm-{version}.tar.gz"
    if cached.is_file() and sha256_of(cached) == SDIST_SHA256[version]:
        return cached
    try:
        sdist = find_sdist(version, index_url())
        archive = download(sdist, cache_dir())
    except KitError as exc:
        if "cannot reach" in str(exc):
            pytest.skip(f"package index unreachable: {exc}")
        raise
    except OSError as exc:
        pytest.skip(f"package index unreachable: {exc}")
    assert sha256_of(archive) == SDIST_SHA256[version]
    return archive


def extract(version: str, dest: Path, wanted: Callable[[str], bool]) -> Path:
    """Extract the sdist members whose path below ``vllm-VERSION/`` satisfies ``wanted`` into ``dest``."""
    root = f"vllm-{version}/"
    with tarfile.open(sdist_archive(version)) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(root) and wanted(m.name[len(root) :])]
        for member in members:
            member.name = member.name[len(root) :]
        tar.extractall(dest, members=members, filter="data")
    return dest


def git_apply(tree: Path, patch: Path) -> None:
    proc = subprocess.run(["git", "apply", "-p1", str(patch)], cwd=tree, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def changed_files(before: Path, after: Path) -> set[str]:
    changed = set()
    for path in after.rglob("*"):
        if path.is_file():
            rel = path.relative_to(after).as_posix()
            old = before / rel
            if not old.is_file() or old.read_bytes() != path.read_bytes():
                changed.add(rel)
    return changed


@pytest.fixture(scope="module", params=sorted(SDIST_SHA256))
def csrc_trees(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path, Path]:
    """(version, pristine, after `scan --fix`, after patch 0002) copies of the sdist's csrc/."""
    version = request.param
    base = tmp_path_factory.mktemp(f"vllm-{version}")
    pristine = extract(version, base / "pristine", lambda rel: rel.startswith("csrc/"))
    fixed, series = base / "fixed", base / "series"
    shutil.copytree(pristine, fixed)
    shutil.copytree(pristine, series)
    scan_path(fixed, fix=True)
    git_apply(series, PATCHES / f"vllm-{version}" / "0002-msvc-cuda-kernels.patch")
    return version, pristine, fixed, series


def test_scan_reports_every_site_of_the_original_patch(csrc_trees: tuple[str, Path, Path, Path]) -> None:
    version, tree, _, _ = csrc_trees
    if version != "0.19.0":
        pytest.skip("the original patch was made for vLLM 0.19.0")
    report = scan_path(tree)
    found = {(Path(f.path).relative_to(tree).as_posix(), f.rule) for f in report.findings}
    missing = {site for site in ORIGINAL_SITES_0190.items() if site not in found}
    assert not missing
    merge = [f for f in report.findings if f.path.endswith("merge_attn_states.cu")]
    assert {f.rule for f in merge} == {"device-std-math", "uint-type"}


def test_series_kernels_equal_scan_fix(csrc_trees: tuple[str, Path, Path, Path]) -> None:
    """0002 is exactly `scan --fix` plus the documented hand edits."""
    _, pristine, fixed, series = csrc_trees
    by_fix, by_series = changed_files(pristine, fixed), changed_files(pristine, series)
    assert by_fix and by_fix <= by_series
    assert {f for f in by_series - by_fix if not f.endswith(HAND_EDITED)} == set()
    differing = {f for f in by_fix if (fixed / f).read_bytes() != (series / f).read_bytes()}
    assert {f for f in differing if not f.endswith(HAND_EDITED)} == set()


def test_series_leaves_only_known_hazards(csrc_trees: tuple[str, Path, Path, Path]) -> None:
    _, _, _, series = csrc_trees
    remaining = scan_path(series).findings
    assert [f.format() for f in remaining if not f.path.endswith(KNOWN_UNFIXED)] == []


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_patched_math_header_compiles(csrc_trees: tuple[str, Path, Path, Path], tmp_path: Path) -> None:
    _, _, _, series = csrc_trees
    (header,) = [p for p in series.rglob("core/math.hpp")]
    program = tmp_path / "use_math.cpp"
    program.write_text(
        f'#include <cstdint>\n#include "{header}"\n'
        "static_assert(next_pow_2(1000) == 1024, \"next_pow_2\");\nint main() { return 0; }\n"
    )
    proc = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", str(program)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
