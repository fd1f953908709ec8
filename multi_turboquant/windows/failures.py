"""Known failures of the Windows vLLM build and runtime: how to recognise each in a log, and the fix.

One table serves the build driver's diagnosis, `mtq windows diagnose LOG` and the troubleshooting
section of docs/windows.md (`mtq windows failures --markdown` writes it).
"""

from __future__ import annotations

import ntpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multi_turboquant.windows.doctor import parse_version

# What the build driver may do on its own when a failure is recognised.
FEWER_JOBS = "fewer-jobs"  # retry the phase with half the parallel jobs
CLEAN_DEPS = "clean-deps"  # drop the FetchContent sub-builds and the CMake cache, configure again
Condition = Callable[[re.Match[str], Mapping[str, str]], bool]


@dataclass(frozen=True)
class Failure:
    key: str
    phase: str  # configure, compile, install or runtime
    pattern: re.Pattern[str]
    cause: str
    fix: str
    action: str | None = None  # FEWER_JOBS, CLEAN_DEPS or None: the fix is for the user
    # Whether a line matching the pattern is this failure, given the build environment; None: always.
    when: Condition | None = None


def _failure(
    key: str, phase: str, pattern: str, cause: str, fix: str, action: str | None = None, when: Condition | None = None
) -> Failure:
    return Failure(key, phase, re.compile(pattern, re.IGNORECASE), cause, fix, action, when)


def _other_cuda(match: re.Match[str], environ: Mapping[str, str]) -> bool:
    """A `Found CUDA` line naming another version than the CUDA_HOME folder's (v12.8, cuda-12.8)."""
    pinned = parse_version(ntpath.basename(environ.get("CUDA_HOME", "").rstrip("/\\")))
    return pinned is not None and parse_version(match["version"]) != pinned


FAILURES = (
    _failure(
        "out-of-memory",
        "compile",
        r"MSB3721|catastrophic error: out of memory|out of heap space|\bC1060\b|\bC1002\b|virtual memory exhausted",
        "parallel nvcc/cicc jobs ran out of memory (each takes up to 8 GB on vLLM's kernels)",
        "lower MAX_JOBS (`mtq windows build --jobs N`); the build retries with half the jobs by itself",
        FEWER_JOBS,
    ),
    _failure(
        "pagefile",
        "compile",
        r"os error 1455|paging file is too small",
        "Windows' commit limit (memory + pagefile) is exhausted",
        "set a pagefile of at least 16 GB (System > Advanced > Performance > Virtual memory) and lower MAX_JOBS;"
        " the build retries with half the jobs by itself",
        FEWER_JOBS,
    ),
    _failure(
        "generator-mismatch",
        "configure",
        r"does not match the generator used previously",
        "a CMake cache (the build folder's or a FetchContent sub-build's in .deps) was made by another generator",
        "delete `.deps\\*-subbuild` and the build folder's `CMakeCache.txt`; the build does this by itself and"
        " configures again",
        CLEAN_DEPS,
    ),
    _failure(
        "alt-token",
        "compile",
        r'error C2018: unknown character|identifier "(?:and|or|not)" is undefined',
        "an `and`/`or`/`not` operator in a kernel: MSVC-hosted nvcc does not know the alternative tokens;"
        " the patch series is not applied, or only partly",
        "`mtq windows patch --check --tree DIR`, then apply it (`mtq windows patch --tree DIR`);"
        " `mtq windows scan --fix` rewrites a file the series does not cover",
    ),
    _failure(
        "nesting-limit",
        "compile",
        r"\bC1061\b",
        "MSVC's limit of 128 nested blocks: Marlin's generated kernel_selector.h is one long `else if` chain",
        "apply the patch series (its Marlin generators write flat `if`s), delete the generated"
        " kernel_selector.h files and build again",
    ),
    _failure(
        "rc-missing",
        "configure",
        r"rc(?:\.exe)?'? (?:is not recognized|not found)|CMAKE_RC_COMPILER-NOTFOUND|No CMAKE_RC_COMPILER|RC Pass 1: .*failed",
        "the Windows SDK's resource compiler is not on PATH (not a Visual Studio developer prompt,"
        " or no Windows SDK installed)",
        "run from the 'x64 Native Tools Command Prompt for VS 2022' and install a Windows 10/11 SDK"
        " with the C++ workload",
    ),
    _failure(
        "unsupported-arch",
        "compile",
        r"Unsupported gpu architecture",
        "TORCH_CUDA_ARCH_LIST names a GPU the pinned nvcc does not know (12.0 needs CUDA 12.8)",
        "pass `--arch` with your GPU's capability only (`mtq windows doctor` shows it) or install a newer CUDA",
    ),
    _failure(
        "cxx17-host",
        "compile",
        r"is_unsigned_v.{0,3}is not a member|is_unsigned_v.{0,20}undefined",
        "the host compiler runs in C++14 mode or is an old MSVC: `std::is_unsigned_v` is C++17",
        "use MSVC 14.3x (VS 2022 17.4 or newer) from the x64 Native Tools prompt and apply patch 0001"
        " (it keeps -std=c++17 for nvcc's host pass)",
    ),
    _failure(
        "small-macro",
        "compile",
        r"rpcndr\.h|'char' followed by 'char'",
        "windows.h includes rpcndr.h, which does `#define small char`: a variable named `small` breaks",
        "apply the patch series, or rename the variable / add `#undef small` after the Windows includes",
    ),
    _failure(
        "unsupported-msvc",
        "compile",
        r"unsupported Microsoft Visual Studio version|STL1002",
        "nvcc and the MSVC toolset disagree: this CUDA does not support this Visual Studio, or the reverse",
        "install the MSVC v143 toolset that your CUDA release lists as supported (or a newer CUDA);"
        " do not pass -allow-unsupported-compiler",
    ),
    _failure(
        "cl-not-found",
        "compile",
        r"Cannot find compiler 'cl\.exe'|'cl' is not recognized|No CMAKE_CXX_COMPILER could be found",
        "cl.exe is not on PATH: the build was not started from a Visual Studio developer prompt",
        "open the 'x64 Native Tools Command Prompt for VS 2022' (or run vcvars64.bat) and start the build again",
    ),
    _failure(
        "long-paths",
        "compile",
        r"filename or extension is too long|path too long|exceeds the maximum path length",
        "a path under the tree or .deps passes Windows' 260-character limit",
        "turn LongPathsEnabled on (`mtq windows doctor` says where) or move the tree near the drive root"
        " (e.g. C:\\src\\vllm)",
    ),
    _failure(
        "posix-header",
        "compile",
        r"Cannot open include file: '(?:unistd|sys/mman|pthread|dlfcn)\.h'",
        "a POSIX-only source is compiled: the patch series is not applied",
        "apply the patch series (`mtq windows patch --tree DIR`)",
    ),
    _failure(
        "locked-module",
        "compile",
        r"LNK1104: cannot open file '[^']*\.pyd'",
        "a Python process has the old native module loaded, so the linker cannot overwrite it",
        "close every Python process that imported vllm (servers, notebooks) and build again",
    ),
    _failure(
        "torch-not-found",
        "configure",
        r'Could not find a package configuration file provided by "Torch"|No module named .torch.',
        "CMake's Python has no torch: the build runs another Python than the one with the CUDA torch",
        "activate the environment with the CUDA build of torch, or pass `--python` with its python.exe",
    ),
    _failure(
        "cuda-version-mismatch",
        "configure",
        r'Found CUDA(?:Toolkit)?: (?P<path>.+?) \(found version "(?P<version>\d+\.\d+)',
        "CMake found another CUDA toolkit than CUDA_HOME: kernels would be built against the wrong runtime",
        "put CUDA_HOME's bin first on PATH, remove CUDA_PATH_Vx_y of other toolkits from the build shell"
        " and configure from scratch (delete the build folder)",
        when=_other_cuda,
    ),
    _failure(
        "dll-load",
        "runtime",
        r"DLL load failed while importing (?:_C|_moe_C|cumem_allocator|_vllm_fa2_C|\w+_C)",
        "a native module cannot find its DLLs: another torch than the one it was built against, or the CUDA"
        " runtime is not on the DLL search path",
        "install exactly the torch of the build, put CUDA_HOME\\bin on PATH, and run `mtq windows verify`",
    ),
    _failure(
        "no-cache-memory",
        "runtime",
        r"No available memory for the cache blocks",
        "the model's weights and activations leave nothing of the GPU memory share for the KV cache",
        "raise --gpu-memory-utilization, lower --max-model-len, pick a compressed --kv-cache-dtype, or close"
        " other programs using the GPU (Windows' desktop keeps some of it)",
    ),
)


@dataclass(frozen=True)
class Diagnosis:
    failure: Failure
    line_number: int  # 1-based line of the log
    line: str


def diagnose(lines: list[str], environ: Mapping[str, str] | None = None) -> list[Diagnosis]:
    """The known failures a log shows, one per kind, in the order of their first line."""
    found: dict[str, Diagnosis] = {}
    for number, line in enumerate(lines, 1):
        for failure in FAILURES:
            if failure.key in found:
                continue
            match = failure.pattern.search(line)
            if match and (failure.when is None or failure.when(match, environ or {})):
                found[failure.key] = Diagnosis(failure, number, line.rstrip())
    return list(found.values())


def describe(diagnosis: Diagnosis) -> str:
    """Several lines: the failure, where the log shows it, its cause and its fix."""
    failure = diagnosis.failure
    return (
        f"{failure.key} (log line {diagnosis.line_number}: {diagnosis.line.strip()[:200]})\n"
        f"  cause: {failure.cause}\n  fix:   {failure.fix}"
    )


DOC_BEGIN = "<!-- failure table: generated by `mtq windows failures --markdown`; do not edit -->"
DOC_END = "<!-- end of the failure table -->"


def with_table(doc: str) -> str:
    """The text of docs/windows.md with the table between its markers replaced by markdown_table()."""
    start, end = doc.find(DOC_BEGIN), doc.find(DOC_END)
    if start < 0 or end < start:
        raise ValueError(f"the document lacks the markers {DOC_BEGIN!r} ... {DOC_END!r}")
    return doc[: start + len(DOC_BEGIN)] + "\n" + markdown_table() + doc[end:]


def markdown_table() -> str:
    """The troubleshooting table of docs/windows.md."""
    lines = ["| failure | phase | log shows (regex) | cause | fix |", "| --- | --- | --- | --- | --- |"]
    for failure in FAILURES:
        pattern = failure.pattern.pattern.replace("|", "\\|")
        lines.append(f"| `{failure.key}` | {failure.phase} | `{pattern}` | {failure.cause} | {failure.fix} |")
    return "\n".join(lines) + "\n"
