"""`mtq windows doctor`: checks the vLLM build environment and works out the variables the build uses.

Every look at the machine goes through a `Probes` object, so tests can describe a Windows machine
(several CUDA toolkits, no cl.exe, a small pagefile, ...) while running on Linux.
"""

from __future__ import annotations

import ctypes
import glob
import json
import ntpath
import os
import posixpath
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import ModuleType

GIB = 1024**3
# Parallel nvcc/cicc jobs of vLLM's kernels peak around 8 GB each: 32 GB -> 4 jobs, 64 GB -> 8.
MEMORY_PER_JOB = 8 * GIB
MIN_PAGEFILE = 16 * GIB
# The first CUDA release whose nvcc compiles for a compute capability (newer ones are rejected).
MIN_CUDA_FOR_CAPABILITY = {
    (8, 0): (11, 0),
    (8, 6): (11, 1),
    (8, 9): (11, 8),
    (9, 0): (11, 8),
    (10, 0): (12, 8),
    (12, 0): (12, 8),
}
OK, WARN, ERROR, SKIP = "ok", "warn", "error", "skip"


@dataclass(frozen=True)
class CudaInstall:
    """A CUDA toolkit directory, or a Visual Studio `CUDA X.Y.props` integration file."""

    version: str
    path: str


@dataclass(frozen=True)
class TorchInfo:
    version: str
    cuda: str | None  # torch.version.cuda; None for a CPU-only build


@dataclass
class Probes:
    """Everything the doctor reads from the machine; replace any field to simulate another one."""

    platform: str
    environ: Mapping[str, str]
    cuda_toolkits: Callable[[], list[CudaInstall]]
    msbuild_cuda_props: Callable[[], list[CudaInstall] | None]  # None: no Visual Studio to look at
    gpu_capabilities: Callable[[], list[tuple[int, int]] | None]  # None: no way to ask
    physical_memory: Callable[[], int | None]
    pagefile_size: Callable[[], int | None]
    long_paths_enabled: Callable[[], bool | None]  # None: cannot read the setting
    cpu_count: Callable[[], int]
    torch: Callable[[], TorchInfo | None]
    which: Callable[[str], str | None]
    exists: Callable[[str], bool]
    run: Callable[[list[str]], str | None]  # stdout+stderr, None when the program cannot run

    @property
    def windows(self) -> bool:
        return self.platform == "win32"

    @property
    def path(self) -> ModuleType:
        """Path functions of the probed platform (ntpath when simulating Windows on Linux)."""
        return ntpath if self.windows else posixpath

    @classmethod
    def system(cls) -> Probes:
        """Probes of this machine."""
        windows = sys.platform == "win32"
        environ = dict(os.environ)
        return cls(
            platform=sys.platform,
            environ=environ,
            cuda_toolkits=lambda: find_cuda_toolkits(environ, _toolkit_dirs(windows, environ)),
            msbuild_cuda_props=lambda: find_msbuild_cuda_props(_vs_roots(environ)) if windows else None,
            gpu_capabilities=_gpu_capabilities,
            physical_memory=_physical_memory,
            pagefile_size=_pagefile_size,
            long_paths_enabled=_long_paths_enabled,
            cpu_count=lambda: os.cpu_count() or 1,
            torch=_torch_info,
            which=shutil.which,
            exists=os.path.exists,
            run=_run,
        )


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN, ERROR or SKIP
    message: str


@dataclass
class DoctorReport:
    platform: str
    checks: list[Check] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(check.status == status for check in self.checks)

    def add(self, name: str, status: str, message: str) -> None:
        self.checks.append(Check(name, status, message))

    def to_json(self) -> str:
        return json.dumps(
            {
                "platform": self.platform,
                "checks": [asdict(check) for check in self.checks],
                "environment": self.environment,
                "errors": self.count(ERROR),
                "warnings": self.count(WARN),
            },
            indent=2,
        )

    def to_text(self) -> str:
        lines = [f"mtq windows doctor (platform: {self.platform})"]
        lines += [f"  [{check.status:^5}] {check.name}: {check.message}" for check in self.checks]
        lines.append("Environment for the vLLM build:")
        lines += [f"  {name}={value}" for name, value in self.environment.items()]
        lines.append(f"{self.count(ERROR)} error(s), {self.count(WARN)} warning(s)")
        return "\n".join(lines)


def build_environment(report: DoctorReport) -> dict[str, str]:
    """The environment variables the vLLM build should run with, as the doctor worked them out."""
    return dict(report.environment)


# ---------------------------------------------------------------------------------------- parsing
def parse_version(text: str | None) -> tuple[int, int] | None:
    """The first `major.minor` in text, e.g. '12.8' from 'v12.8' or 'release 12.8, V12.8.93'."""
    match = re.search(r"(\d+)\.(\d+)", text or "")
    return (int(match[1]), int(match[2])) if match else None


def _dotted(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def parse_nvcc_release(output: str) -> tuple[int, int] | None:
    """The CUDA release from `nvcc --version` output."""
    match = re.search(r"release (\d+)\.(\d+)", output)
    return (int(match[1]), int(match[2])) if match else None


def parse_cl_banner(output: str) -> tuple[str, str] | None:
    """(version, target) from cl.exe's banner, e.g. ('19.44.35211', 'x64')."""
    match = re.search(r"Version (\d+(?:\.\d+)+) for (\S+)", output)
    return (match[1], match[2]) if match else None


def parse_compute_caps(output: str) -> list[tuple[int, int]]:
    """Compute capabilities from `nvidia-smi --query-gpu=compute_cap --format=csv,noheader`."""
    return [(int(m[1]), int(m[2])) for m in re.finditer(r"^\s*(\d+)\.(\d+)\s*$", output, re.MULTILINE)]


def _arch_versions(arch_list: str) -> set[tuple[int, int]]:
    """The capabilities named by a TORCH_CUDA_ARCH_LIST such as '8.6;8.9+PTX' or '9.0a 12.0'."""
    return {(int(m[1]), int(m[2])) for m in re.finditer(r"(\d+)\.(\d+)", arch_list)}


# ------------------------------------------------------------------------------- system probes
def find_cuda_toolkits(environ: Mapping[str, str], dirs: Iterable[str]) -> list[CudaInstall]:
    """CUDA toolkits from CUDA_PATH_Vx_y variables (set by the Windows installer) and candidate dirs."""
    found: dict[str, CudaInstall] = {}
    for name, value in environ.items():
        match = re.fullmatch(r"CUDA_PATH_V(\d+)_(\d+)", name.upper())
        if match and os.path.isdir(value):
            found.setdefault(os.path.normcase(value), CudaInstall(f"{match[1]}.{match[2]}", value))
    for path in dirs:
        version = parse_version(os.path.basename(path.rstrip("/\\")))
        if version and os.path.isdir(path):
            found.setdefault(os.path.normcase(path), CudaInstall(_dotted(version), path))
    return sorted(found.values(), key=lambda tk: parse_version(tk.version) or (0, 0))


def _getenv(environ: Mapping[str, str], name: str) -> str | None:
    """environ[name], ignoring case as Windows does (a copy of os.environ there has upper-case keys)."""
    return next((value for key, value in environ.items() if key.upper() == name.upper()), None)


def _toolkit_dirs(windows: bool, environ: Mapping[str, str]) -> list[str]:
    if windows:
        program_files = _getenv(environ, "ProgramFiles") or r"C:\Program Files"
        return glob.glob(os.path.join(glob.escape(program_files), "NVIDIA GPU Computing Toolkit", "CUDA", "v*"))
    return glob.glob("/usr/local/cuda-*") + glob.glob("/opt/cuda-*")


def _vs_roots(environ: Mapping[str, str]) -> list[str]:
    found = (_getenv(environ, name) for name in ("ProgramFiles", "ProgramFiles(x86)"))
    return [os.path.join(root, "Microsoft Visual Studio") for root in found if root]


def find_msbuild_cuda_props(vs_roots: Iterable[str]) -> list[CudaInstall]:
    """The `CUDA X.Y.props` files in the BuildCustomizations folders of installed Visual Studios."""
    pattern = os.path.join("*", "*", "MSBuild", "Microsoft", "VC", "*", "BuildCustomizations", "CUDA *.props")
    found = []
    for root in vs_roots:
        for path in sorted(glob.glob(os.path.join(glob.escape(root), pattern))):
            version = parse_version(os.path.basename(path))
            if version:
                found.append(CudaInstall(_dotted(version), path))
    return found


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout + proc.stderr


def _gpu_capabilities() -> list[tuple[int, int]] | None:
    smi = shutil.which("nvidia-smi")
    output = _run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"]) if smi else None
    return parse_compute_caps(output) if output is not None else None


def _torch_info() -> TorchInfo | None:
    try:
        import torch
    except ImportError:
        return None
    return TorchInfo(torch.__version__, torch.version.cuda)


if sys.platform == "win32":  # probes that only Windows can answer
    import winreg

    class _MemoryStatusEx(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong),
            ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    def _memory_status() -> _MemoryStatusEx:
        status = _MemoryStatusEx()
        status.dwLength = ctypes.sizeof(_MemoryStatusEx)
        ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))
        return status

    def _physical_memory() -> int | None:
        return _memory_status().ullTotalPhys

    def _pagefile_size() -> int | None:
        """The commit limit less physical memory."""
        status = _memory_status()
        return max(0, status.ullTotalPageFile - status.ullTotalPhys)

    def _long_paths_enabled() -> bool | None:
        """The LongPathsEnabled setting (paths over 260 characters)."""
        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
                return bool(winreg.QueryValueEx(key, "LongPathsEnabled")[0])
        except OSError:
            return None

else:

    def _physical_memory() -> int | None:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None

    def _pagefile_size() -> int | None:
        return None

    def _long_paths_enabled() -> bool | None:
        return None


# ----------------------------------------------------------------------------------- the checks
class _Doctor:
    """Runs the checks in order; later checks use what earlier ones found."""

    def __init__(self, probes: Probes, vllm_version: str | None) -> None:
        self.p = probes
        self.env = probes.environ
        self.vllm_version = vllm_version
        self.report = DoctorReport(probes.platform)
        self.cuda_version: tuple[int, int] | None = None
        self.nvcc_version: tuple[int, int] | None = None

    def run(self) -> DoctorReport:
        torch = self.p.torch()
        self.check_cuda_home(torch)
        self.check_nvcc()
        self.check_msbuild()
        self.check_torch(torch)
        self.check_arch_list()
        self.check_max_jobs()
        self.check_scm_version()
        self.check_constant("VLLM_TARGET_DEVICE", "cuda")
        self.check_constant("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        if self.p.windows:  # torch's extension builder then uses the compiler of the VS prompt
            self.check_constant("DISTUTILS_USE_SDK", "1")
        self.check_cl()
        self.check_ninja()
        self.check_pagefile()
        self.check_long_paths()
        return self.report

    def add(self, name: str, status: str, message: str) -> None:
        self.report.add(name, status, message)

    def set_env(self, name: str, value: str) -> None:
        self.report.environment[name] = value

    def check_cuda_home(self, torch: TorchInfo | None) -> None:
        toolkits = self.p.cuda_toolkits()
        listing = ", ".join(f"{tk.version} ({tk.path})" for tk in toolkits) or "none found"
        torch_cuda = parse_version(torch.cuda) if torch else None
        matching = [tk for tk in toolkits if parse_version(tk.version) == torch_cuda]
        pinned = self.env.get("CUDA_HOME")
        if pinned:
            source = "CUDA_HOME from the environment"
        elif matching:
            pinned, source = matching[-1].path, f"the toolkit matching torch's CUDA {matching[-1].version}"
        elif self.env.get("CUDA_PATH"):
            pinned, source = self.env["CUDA_PATH"], "CUDA_PATH from the environment"
        elif toolkits:
            pinned, source = toolkits[-1].path, "the newest installed toolkit"
        else:
            self.add("CUDA_HOME", ERROR, "no CUDA toolkit found: install one (the version of torch's CUDA build)")
            return
        if not self.p.exists(pinned):
            self.add("CUDA_HOME", ERROR, f"{pinned} ({source}) does not exist")
            return
        known = [tk for tk in toolkits if self.p.path.normcase(tk.path) == self.p.path.normcase(pinned)]
        self.cuda_version = parse_version(known[0].version if known else self.p.path.basename(pinned))
        self.set_env("CUDA_HOME", pinned)
        self.set_env("CUDA_PATH", pinned)
        self.add("CUDA_HOME", OK, f"{pinned} ({source})")
        if len(toolkits) > 1:
            self.add(
                "CUDA toolkits",
                WARN,
                f"several installed: {listing}; the build is pinned to {pinned} through CUDA_HOME and CUDA_PATH",
            )
        else:
            self.add("CUDA toolkits", OK, listing)
        cuda_path = self.env.get("CUDA_PATH")
        if cuda_path and self.p.path.normcase(cuda_path) != self.p.path.normcase(pinned):
            self.add("CUDA_PATH", WARN, f"the environment has CUDA_PATH={cuda_path}; the build overrides it")

    def check_msbuild(self) -> None:
        props = self.p.msbuild_cuda_props()
        if props is None:
            self.add("MSBuild CUDA integration", SKIP, "not checked: no Visual Studio on this platform")
            return
        pinned = self.cuda_version or self.nvcc_version
        others = [prop for prop in props if parse_version(prop.version) != pinned]
        if others:
            self.add(
                "MSBuild CUDA integration",
                WARN,
                "Visual Studio's BuildCustomizations point at "
                + ", ".join(f"CUDA {prop.version} ({prop.path})" for prop in others)
                + ", not the pinned toolkit: CMake's Visual Studio generator would use them; build with Ninja"
                " or reinstall the pinned toolkit's Visual Studio integration",
            )
        else:
            self.add("MSBuild CUDA integration", OK, ", ".join(prop.path for prop in props) or "none installed")

    def nvcc_release(self, program: str) -> tuple[int, int] | None:
        output = self.p.run([program, "--version"])
        return parse_nvcc_release(output) if output else None

    def check_nvcc(self) -> None:
        exe = "nvcc.exe" if self.p.windows else "nvcc"
        cuda_home = self.report.environment.get("CUDA_HOME")
        home_nvcc = self.p.path.join(cuda_home, "bin", exe) if cuda_home else None
        on_path = self.p.which("nvcc")
        nvcc = home_nvcc if home_nvcc and self.p.exists(home_nvcc) else on_path
        self.nvcc_version = self.nvcc_release(nvcc) if nvcc else None
        if self.nvcc_version is None:
            self.add("nvcc", ERROR, f"cannot run nvcc ({nvcc or 'not found'}): install the CUDA toolkit")
            return
        self.add("nvcc", OK, f"CUDA {_dotted(self.nvcc_version)} ({nvcc})")
        if on_path and self.p.path.normcase(on_path) != self.p.path.normcase(nvcc):
            path_version = self.nvcc_release(on_path)
            if path_version != self.nvcc_version:
                shown = _dotted(path_version) if path_version else "unknown"
                self.add(
                    "nvcc on PATH",
                    WARN,
                    f"{on_path} is CUDA {shown}, not the pinned toolkit: put {self.p.path.dirname(nvcc)} first on PATH",
                )

    def check_torch(self, torch: TorchInfo | None) -> None:
        if torch is None:
            self.add("torch", WARN, "torch is not installed in this Python; vLLM's build needs a CUDA build of it")
            return
        if torch.cuda is None:
            self.add("torch", ERROR, f"torch {torch.version} is a CPU-only build: install a CUDA build (e.g. cu128)")
            return
        torch_cuda = parse_version(torch.cuda)
        message = f"torch {torch.version}, CUDA {torch.cuda}"
        if self.nvcc_version is None or torch_cuda == self.nvcc_version:
            self.add("torch", OK, message)
        elif torch_cuda and torch_cuda[0] != self.nvcc_version[0]:
            self.add(
                "torch",
                ERROR,
                f"{message}, but nvcc is CUDA {_dotted(self.nvcc_version)}: the major versions must match",
            )
        else:
            self.add(
                "torch",
                WARN,
                f"{message}, but nvcc is CUDA {_dotted(self.nvcc_version)}: kernels are built for another "
                "runtime than torch's; install the matching toolkit or torch build",
            )

    def check_arch_list(self) -> None:
        caps = self.p.gpu_capabilities()
        given = self.env.get("TORCH_CUDA_ARCH_LIST")
        if caps:
            self.check_nvcc_knows(caps)
        if given:
            self.set_env("TORCH_CUDA_ARCH_LIST", given)
            missing = sorted(set(caps or ()) - _arch_versions(given))
            if missing:
                self.add(
                    "TORCH_CUDA_ARCH_LIST",
                    WARN,
                    f"the environment's {given!r} leaves out this machine's GPU ("
                    + ", ".join(map(_dotted, missing))
                    + ")",
                )
            else:
                self.add("TORCH_CUDA_ARCH_LIST", OK, f"{given} (from the environment)")
        elif caps:
            value = ";".join(_dotted(cap) for cap in sorted(set(caps)))
            self.set_env("TORCH_CUDA_ARCH_LIST", value)
            self.add("TORCH_CUDA_ARCH_LIST", OK, f"{value} (from the installed GPU)")
        else:
            reason = "no NVIDIA GPU found" if caps == [] else "cannot ask the GPU (nvidia-smi not found)"
            self.add("TORCH_CUDA_ARCH_LIST", WARN, f"{reason}: set TORCH_CUDA_ARCH_LIST, e.g. 8.9 or 12.0")

    def check_nvcc_knows(self, caps: list[tuple[int, int]]) -> None:
        if self.nvcc_version is None:
            return
        too_new = [cap for cap in caps if MIN_CUDA_FOR_CAPABILITY.get(cap, (0, 0)) > self.nvcc_version]
        for cap in too_new:
            need = _dotted(MIN_CUDA_FOR_CAPABILITY[cap])
            self.add(
                "GPU support",
                ERROR,
                f"the GPU's compute capability {_dotted(cap)} needs CUDA {need} or newer; nvcc is {_dotted(self.nvcc_version)}",
            )

    def check_max_jobs(self) -> None:
        given = self.env.get("MAX_JOBS")
        memory = self.p.physical_memory()
        cpus = self.p.cpu_count()
        if memory is None:
            suggested, basis = 2, "cannot read the physical memory"
        else:
            suggested = min(cpus, max(1, round(memory / MEMORY_PER_JOB)))
            basis = f"{memory / GIB:.0f} GB of memory, {cpus} CPUs"
        if given is None:
            self.set_env("MAX_JOBS", str(suggested))
            self.add("MAX_JOBS", WARN if memory is None else OK, f"{suggested} ({basis})")
        elif not given.isdecimal() or int(given) < 1:  # isdigit() also passes "²", which int() refuses
            self.add("MAX_JOBS", ERROR, f"the environment's MAX_JOBS={given!r} is not a positive number")
        else:
            self.set_env("MAX_JOBS", given)
            if memory is not None and int(given) > suggested:
                self.add("MAX_JOBS", WARN, f"{given} from the environment; {basis} suit {suggested}")
            else:
                self.add("MAX_JOBS", OK, f"{given} (from the environment)")

    def check_scm_version(self) -> None:
        name = "SETUPTOOLS_SCM_PRETEND_VERSION"
        given = self.env.get(name)
        value = self.vllm_version or given
        if not value:
            self.add(name, WARN, "vLLM version unknown: pass --version or --tree")
            return
        self.set_env(name, value)
        if given and given != value:
            self.add(name, WARN, f"{value} (from --version or the tree; the environment's {given} is overridden)")
        else:
            self.add(name, OK, value)

    def check_constant(self, name: str, value: str) -> None:
        self.set_env(name, value)
        given = self.env.get(name)
        if given is not None and given != value:
            self.add(name, WARN, f"{value} (the environment's {given!r} is overridden)")
        else:
            self.add(name, OK, value)

    def check_cl(self) -> None:
        if not self.p.windows:
            self.add("cl.exe", SKIP, "not checked: Windows only")
            return
        cl = self.p.which("cl")
        if cl is None:
            self.add(
                "cl.exe",
                ERROR,
                "not on PATH: run from the 'x64 Native Tools Command Prompt for VS 2022' (or call vcvars64.bat)",
            )
            return
        banner = parse_cl_banner(self.p.run([cl]) or "")
        if banner is None:
            self.add("cl.exe", WARN, f"{cl}: cannot read its version")
        elif banner[1] != "x64":
            self.add("cl.exe", ERROR, f"{cl} targets {banner[1]}: use the x64 Native Tools prompt (vcvars64.bat)")
        else:
            self.add("cl.exe", OK, f"MSVC {banner[0]} for x64 ({cl})")

    def check_ninja(self) -> None:
        ninja = self.p.which("ninja")
        version = (self.p.run([ninja, "--version"]) or "").strip() if ninja else ""
        if version:
            self.add("ninja", OK, f"{version} ({ninja})")
        else:
            self.add("ninja", ERROR, "not found: `pip install ninja` (without it CMake falls back to MSBuild)")

    def check_pagefile(self) -> None:
        if not self.p.windows:
            self.add("pagefile", SKIP, "not checked: Windows only")
            return
        size = self.p.pagefile_size()
        if size is None:
            self.add("pagefile", WARN, "cannot read the pagefile size")
        elif size < MIN_PAGEFILE:
            self.add(
                "pagefile",
                WARN,
                f"{size / GIB:.1f} GB; parallel nvcc jobs can exhaust the commit limit: "
                f"set a pagefile of at least {MIN_PAGEFILE // GIB} GB",
            )
        else:
            self.add("pagefile", OK, f"{size / GIB:.1f} GB")

    def check_long_paths(self) -> None:
        if not self.p.windows:
            self.add("long paths", SKIP, "not checked: Windows only")
            return
        enabled = self.p.long_paths_enabled()
        if enabled:
            self.add("long paths", OK, "LongPathsEnabled is on")
        else:
            state = "off" if enabled is False else "unreadable"
            self.add(
                "long paths",
                WARN,
                f"LongPathsEnabled is {state}: vLLM's source and build paths pass 260 characters; turn it on "
                r"(HKLM\SYSTEM\CurrentControlSet\Control\FileSystem) or keep the tree near the drive root",
            )


def diagnose(probes: Probes, vllm_version: str | None = None) -> DoctorReport:
    """Check the build environment described by `probes` and collect the build variables."""
    return _Doctor(probes, vllm_version).run()
