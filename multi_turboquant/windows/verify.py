"""`mtq windows verify`: check the vLLM installed in this Python (native modules, torch, CUDA, Triton, our plugin)."""

from __future__ import annotations

import importlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType

from multi_turboquant.windows import failures
from multi_turboquant.windows.build import BuildState
from multi_turboquant.windows.doctor import ERROR, OK, SKIP, WARN, Check
from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.native import native_modules

PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_NAME = "multi_turboquant"
PLUGIN_VALUE = "multi_turboquant.vllm.plugin:register"
PLUGIN_MODULE = "multi_turboquant.vllm.plugin"
EntryPoints = Callable[..., metadata.EntryPoints]
LOAD_KERNELS = "import torch; from vllm.platforms import current_platform; current_platform.import_kernels()"
RMS_NORM = (
    LOAD_KERNELS
    + """
from vllm import _custom_ops
x = torch.linspace(-2, 2, 256, device="{device}").reshape(4, 64)
weight = torch.linspace(0.5, 1.5, 64, device="{device}")
out = torch.empty_like(x)
_custom_ops.rms_norm(out, x, weight, 1e-6)
expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
print((out - expected).abs().max().item())
"""
)
CHILD_TIMEOUT = 600
ACCESS_VIOLATION = 0xC0000005  # a Windows process's exit code when it crashed


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, message: str) -> None:
        self.checks.append(Check(name, status, message))

    @property
    def errors(self) -> int:
        return sum(check.status == ERROR for check in self.checks)

    def to_text(self) -> str:
        lines = ["mtq windows verify"]
        lines += [f"  [{check.status:^5}] {check.name}: {check.message}" for check in self.checks]
        lines.append(f"{self.errors} error(s); " + ("vLLM is ready" if not self.errors else "see the fixes above"))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"checks": [asdict(check) for check in self.checks], "errors": self.errors}, indent=2)


def with_fix(text: str) -> str:
    """A one-line error, followed by the fix from the failure table when it is a known one."""
    return text + "".join(f" -- fix: {diagnosis.failure.fix}" for diagnosis in failures.diagnose([text]))


def explain(exc: BaseException) -> str:
    return with_fix(f"{type(exc).__name__}: {exc}".replace("\n", " "))


def run_child(code: str) -> tuple[str, str | None]:
    """Run code in a child of this Python: (its stdout, None) or (stdout, why it failed)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=CHILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return "", f"did not finish in {CHILD_TIMEOUT} s"
    if proc.returncode == 0:
        return proc.stdout, None
    if proc.returncode < 0:
        names = {-sig.value: sig.name for sig in signal.Signals}
        return proc.stdout, f"crashed ({names.get(proc.returncode, f'signal {-proc.returncode}')})"
    if proc.returncode == ACCESS_VIOLATION:
        return proc.stdout, "crashed (access violation)"
    return proc.stdout, with_fix((proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1])


def base_version(version: str) -> str:
    return version.split("+")[0]


def _import(name: str) -> ModuleType | str:
    """The module, or why it cannot be imported."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding (DLL load, missing symbol, ...)
        return explain(exc)


class _Verifier:
    def __init__(self, expected_version: str | None, entry_points: EntryPoints) -> None:
        self.report = VerifyReport()
        self.expected_version = expected_version
        self.entry_points = entry_points

    def run(self) -> VerifyReport:
        torch = _import("torch")
        if isinstance(torch, str):
            self.report.add("torch", ERROR, torch)
            return self.report
        vllm = self.check_vllm()
        gpu = torch.cuda.is_available()
        device = "cuda" if torch.version.cuda else "cpu"
        if vllm is not None:
            self.check_native(vllm.__version__, device)
            self.check_torch(torch, vllm)
            self.check_cuda(torch, vllm.__version__, device, gpu)
        self.check_triton(device, torch.cuda.get_device_capability(0) if gpu else None)
        self.check_plugin()
        if vllm is not None:
            self.check_op(device, gpu)
        return self.report

    def check_vllm(self) -> ModuleType | None:
        vllm = _import("vllm")
        if isinstance(vllm, str):
            self.report.add("vllm", ERROR, vllm)
            return None
        dists = metadata.packages_distributions().get("vllm", [])
        installed = {metadata.version(dist) for dist in dists}
        message = f"{vllm.__version__} ({', '.join(dists) or 'no distribution'}, {vllm.__file__})"
        if installed and installed != {vllm.__version__}:
            self.report.add("vllm", ERROR, f"{message}: the installed metadata says {', '.join(sorted(installed))}")
        elif self.expected_version and base_version(vllm.__version__) != base_version(self.expected_version):
            self.report.add("vllm", ERROR, f"{message}, expected {self.expected_version}")
        else:
            self.report.add("vllm", OK, message)
        return vllm

    def check_native(self, version: str, device: str) -> None:
        """Each module imported in a child Python: a crash there (a bad DLL, a missing CPU feature) is a finding."""
        if device == "cpu":  # vLLM loads the variant of _C this CPU supports
            probes = {"vLLM's CPU kernels": f"{LOAD_KERNELS}; torch.ops._C.rms_norm"}
        else:
            try:
                probes = {name: f"import torch, {name}" for name in native_modules(version, device)}
            except KitError as exc:
                self.report.add("native modules", WARN, str(exc))
                return
        broken = {name: why for name, code in probes.items() if (why := run_child(code)[1]) is not None}
        if broken:
            self.report.add("native modules", ERROR, "; ".join(f"{name}: {why}" for name, why in broken.items()))
        else:
            self.report.add("native modules", OK, f"{', '.join(probes)} import ({device} build)")

    def check_torch(self, torch: ModuleType, vllm: ModuleType) -> None:
        """torch against vLLM's `torch==` pin or, for the kit's editable build, the torch it compiled with."""
        pins = [
            re.sub(r"\s+", "", req.split(";")[0])[len("torch==") :]
            for dist in metadata.packages_distributions().get("vllm", [])
            for req in metadata.requires(dist) or []
            if re.match(r"torch\s*==", req)
        ]
        state = Path(vllm.__file__).parents[1] / "build" / "mtq" / "state.json"
        expected, source = (pins[0], "vLLM's pin") if pins else (BuildState.load(state).torch, f"the build, {state}")
        message = f"torch {torch.__version__}" + (f"; expected {expected} ({source})" if expected else "")
        if expected and base_version(expected) != base_version(torch.__version__):
            self.report.add("torch", ERROR, f"{message}: the native modules need the torch they were built with")
        else:
            self.report.add("torch", OK, message)

    def check_cuda(self, torch: ModuleType, version: str, device: str, gpu: bool) -> None:
        if device == "cpu":
            self.report.add("CUDA", SKIP, "not checked: CPU build of torch")
            return
        cuda = re.search(r"\+cu(\d+)(\d)\b", version)
        runtime = torch.version.cuda
        if cuda and f"{cuda[1]}.{cuda[2]}" != ".".join(runtime.split(".")[:2]):
            self.report.add(
                "CUDA", ERROR, f"vLLM {version} was built for CUDA {cuda[1]}.{cuda[2]}, torch has {runtime}"
            )
        elif not gpu:
            self.report.add("CUDA", SKIP, f"torch CUDA {runtime}; no GPU visible, so nothing runs on it")
        else:
            major, minor = torch.cuda.get_device_capability(0)
            name = torch.cuda.get_device_name(0)
            self.report.add("CUDA", OK, f"torch CUDA {runtime}, {name} (compute capability {major}.{minor})")

    def check_triton(self, device: str, capability: tuple[int, int] | None) -> None:
        """Triton imports and, with a GPU, targets it (backend cuda, arch = its compute capability)."""
        triton = _import("triton")
        if isinstance(triton, str):
            status = ERROR if device == "cuda" else SKIP
            self.report.add("triton", status, f"{triton} (on Windows: `pip install triton-windows`)")
            return
        if capability is None:
            self.report.add("triton", SKIP, f"triton {triton.__version__}; no GPU to target")
            return
        try:
            target = triton.runtime.driver.active.get_current_target()
        except Exception as exc:  # noqa: BLE001 - reported, with the fix when known
            self.report.add("triton", ERROR, f"triton {triton.__version__} has no GPU target: {explain(exc)}")
            return
        message = f"triton {triton.__version__}, target {target.backend} {target.arch}"
        expected = capability[0] * 10 + capability[1]
        if target.backend == "cuda" and target.arch == expected:
            self.report.add("triton", OK, message)
        else:
            self.report.add("triton", ERROR, f"{message}; the GPU is cuda {expected}")

    def check_plugin(self) -> None:
        found = [ep for ep in self.entry_points(group=PLUGIN_GROUP) if ep.name == PLUGIN_NAME]
        if not found:
            self.report.add(
                "plugin", ERROR, f"no entry point {PLUGIN_NAME} in group {PLUGIN_GROUP}: reinstall multi-turboquant"
            )
            return
        if found[0].value != PLUGIN_VALUE:
            self.report.add("plugin", ERROR, f"entry point {PLUGIN_NAME} is {found[0].value}, not {PLUGIN_VALUE}")
            return
        try:
            found[0].load()()
            names = set(importlib.import_module(PLUGIN_MODULE).registered_kv_cache_dtypes())
        except Exception as exc:  # noqa: BLE001 - a missing module or function is the finding
            self.report.add("plugin", ERROR, f"{PLUGIN_VALUE} does not load and register: {explain(exc)}")
            return
        from multi_turboquant.formats import FORMATS

        missing = sorted(set(FORMATS) - names)
        if missing:
            self.report.add("plugin", ERROR, f"registered {sorted(names)}; missing {missing}")
        else:
            self.report.add("plugin", OK, f"registered; kv_cache_dtype accepts {', '.join(sorted(FORMATS))}")

    def check_op(self, device: str, gpu: bool) -> None:
        """vLLM's rms_norm on a tiny tensor against torch, in a child Python: on the GPU, or the CPU for a CPU build."""
        if device == "cuda" and not gpu:
            self.report.add("native op", SKIP, "no GPU: rms_norm not run")
            return
        output, failure = run_child(RMS_NORM.format(device=device))
        if failure is not None:
            self.report.add("native op", ERROR, f"rms_norm on {device} failed: {failure}")
            return
        error = float(output.split()[-1])
        status = OK if error < 1e-4 else ERROR
        self.report.add("native op", status, f"rms_norm on {device}: max error {error:.1e} against torch")


def verify(expected_version: str | None = None, entry_points: EntryPoints = metadata.entry_points) -> VerifyReport:
    """Check the vLLM of this Python; `entry_points` is importlib.metadata's unless a test replaces it."""
    return _Verifier(expected_version, entry_points).run()
