"""`mtq windows doctor` against simulated Windows machines (and the real probes on this one)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from multi_turboquant.cli import main
from multi_turboquant.windows import doctor
from multi_turboquant.windows.doctor import (
    GIB,
    CudaInstall,
    DoctorReport,
    Probes,
    TorchInfo,
    build_environment,
    diagnose,
    find_cuda_toolkits,
    find_msbuild_cuda_props,
)

TOOLKITS = r"C:\Program Files\NVIDIA GPU Computing Toolkit\CUDA"
CUDA_128 = CudaInstall("12.8", rf"{TOOLKITS}\v12.8")
CUDA_126 = CudaInstall("12.6", rf"{TOOLKITS}\v12.6")
VS = r"C:\Program Files\Microsoft Visual Studio\2022\Community\MSBuild\Microsoft\VC\v170\BuildCustomizations"
CL = r"C:\VS\VC\Tools\MSVC\14.44.35207\bin\Hostx64\x64\cl.exe"
NINJA = r"C:\venv\Scripts\ninja.exe"


def nvcc_banner(version: str) -> str:
    return f"nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release {version}, V{version}.93\n"


def windows(
    toolkits: list[CudaInstall] = (CUDA_128,),
    environ: dict[str, str] | None = None,
    programs: dict[str, str] | None = None,
    **fields: object,
) -> Probes:
    """A healthy Windows build machine (CUDA 12.8, torch cu128, RTX 4090, 64 GB); override what a test needs.

    `programs` maps a program path to its output; those whose name is on PATH are found by `which`.
    """
    outputs = {
        rf"{CUDA_128.path}\bin\nvcc.exe": nvcc_banner("12.8"),
        rf"{CUDA_126.path}\bin\nvcc.exe": nvcc_banner("12.6"),
        CL: "Microsoft (R) C/C++ Optimizing Compiler Version 19.44.35211 for x64\nusage: cl [ option... ]",
        NINJA: "1.11.1\n",
    }
    outputs.update(programs or {})
    on_path = {"cl": CL, "ninja": NINJA, "nvcc": rf"{CUDA_128.path}\bin\nvcc.exe"}
    probes = Probes(
        platform="win32",
        environ=environ or {},
        cuda_toolkits=lambda: list(toolkits),
        msbuild_cuda_props=lambda: [CudaInstall("12.8", rf"{VS}\CUDA 12.8.props")],
        gpu_capabilities=lambda: [(8, 9)],
        physical_memory=lambda: 64 * GIB,
        pagefile_size=lambda: 32 * GIB,
        long_paths_enabled=lambda: True,
        cpu_count=lambda: 24,
        torch=lambda: TorchInfo("2.7.0+cu128", "12.8"),
        which=lambda name: on_path.get(name) if on_path.get(name) in outputs else None,
        exists=lambda path: any(
            path == p or p.startswith(path + "\\") for p in [*outputs, *(t.path for t in toolkits)]
        ),
        run=lambda cmd: outputs.get(cmd[0]),
    )
    return dataclasses.replace(probes, **fields)


def statuses(report: DoctorReport) -> dict[str, tuple[str, str]]:
    return {check.name: (check.status, check.message) for check in report.checks}


def only_problem(report: DoctorReport, name: str, status: str) -> str:
    """The message of check `name`, asserting it is the one check that is neither ok nor skipped."""
    problems = {c.name: c.status for c in report.checks if c.status not in ("ok", "skip")}
    assert problems == {name: status}, report.to_text()
    return statuses(report)[name][1]


def test_healthy_windows_machine() -> None:
    report = diagnose(windows(), "0.19.0")
    assert {c.status for c in report.checks} == {"ok"}, report.to_text()
    assert build_environment(report) == {
        "CUDA_HOME": CUDA_128.path,
        "CUDA_PATH": CUDA_128.path,
        "TORCH_CUDA_ARCH_LIST": "8.9",
        "MAX_JOBS": "8",
        "SETUPTOOLS_SCM_PRETEND_VERSION": "0.19.0",
        "VLLM_TARGET_DEVICE": "cuda",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "DISTUTILS_USE_SDK": "1",
    }


def test_several_toolkits_pin_the_one_matching_torch() -> None:
    probes = windows(
        toolkits=[CUDA_126, CUDA_128],
        environ={"CUDA_PATH": CUDA_126.path},
        torch=lambda: TorchInfo("2.7.0+cu126", "12.6"),
        msbuild_cuda_props=lambda: [CudaInstall("12.6", rf"{VS}\CUDA 12.6.props")],
    )
    report = diagnose(probes, "0.19.0")
    found = statuses(report)
    assert (
        found["CUDA toolkits"][0] == "warn"
        and "12.6" in found["CUDA toolkits"][1]
        and "12.8" in found["CUDA toolkits"][1]
    )
    assert found["CUDA_HOME"] == ("ok", rf"{CUDA_126.path} (the toolkit matching torch's CUDA 12.6)")
    assert found["nvcc on PATH"][0] == "warn" and rf"put {CUDA_126.path}\bin first on PATH" in found["nvcc on PATH"][1]
    assert report.environment["CUDA_HOME"] == report.environment["CUDA_PATH"] == CUDA_126.path


def test_cuda_home_from_the_environment_wins() -> None:
    report = diagnose(windows(toolkits=[CUDA_126, CUDA_128], environ={"CUDA_HOME": CUDA_128.path}), "0.19.0")
    assert statuses(report)["CUDA_HOME"] == ("ok", rf"{CUDA_128.path} (CUDA_HOME from the environment)")


def test_cuda_path_pointing_elsewhere_is_overridden() -> None:
    report = diagnose(windows(toolkits=[CUDA_126, CUDA_128], environ={"CUDA_PATH": CUDA_126.path}), "0.19.0")
    assert "CUDA_PATH" in statuses(report) and statuses(report)["CUDA_PATH"][0] == "warn"
    assert report.environment["CUDA_PATH"] == CUDA_128.path


def test_cuda_home_that_does_not_exist() -> None:
    report = diagnose(windows(environ={"CUDA_HOME": r"D:\cuda"}), "0.19.0")
    assert statuses(report)["CUDA_HOME"] == ("error", r"D:\cuda (CUDA_HOME from the environment) does not exist")
    assert "CUDA_HOME" not in report.environment


def test_no_cuda_toolkit() -> None:
    report = diagnose(windows(toolkits=[], which=lambda name: None), "0.19.0")
    found = statuses(report)
    assert found["CUDA_HOME"][0] == "error" and "no CUDA toolkit found" in found["CUDA_HOME"][1]
    assert found["nvcc"][0] == "error"


def test_msbuild_integration_of_another_cuda() -> None:
    probes = windows(msbuild_cuda_props=lambda: [CudaInstall("12.4", rf"{VS}\CUDA 12.4.props")])
    message = only_problem(diagnose(probes, "0.19.0"), "MSBuild CUDA integration", "warn")
    assert rf"CUDA 12.4 ({VS}\CUDA 12.4.props)" in message and "Ninja" in message


def test_missing_cl_exe() -> None:
    probes = windows(which=lambda name: {"ninja": NINJA, "nvcc": None}.get(name))
    message = only_problem(diagnose(probes, "0.19.0"), "cl.exe", "error")
    assert "x64 Native Tools Command Prompt" in message


def test_cl_exe_for_x86() -> None:
    probes = windows(programs={CL: "Microsoft (R) C/C++ Optimizing Compiler Version 19.44.35211 for x86\n"})
    assert "targets x86" in only_problem(diagnose(probes, "0.19.0"), "cl.exe", "error")


def test_missing_ninja() -> None:
    probes = windows(which=lambda name: {"cl": CL}.get(name))
    assert "pip install ninja" in only_problem(diagnose(probes, "0.19.0"), "ninja", "error")


@pytest.mark.parametrize(
    ("gigabytes", "cpus", "jobs"), [(32, 24, "4"), (64, 24, "8"), (31.8, 24, "4"), (64, 6, "6"), (4, 8, "1")]
)
def test_max_jobs_from_physical_memory(gigabytes: float, cpus: int, jobs: str) -> None:
    report = diagnose(windows(physical_memory=lambda: int(gigabytes * GIB), cpu_count=lambda: cpus), "0.19.0")
    assert report.environment["MAX_JOBS"] == jobs


def test_max_jobs_from_the_environment() -> None:
    assert diagnose(windows(environ={"MAX_JOBS": "3"}), "0.19.0").environment["MAX_JOBS"] == "3"
    report = diagnose(windows(environ={"MAX_JOBS": "16"}, physical_memory=lambda: 32 * GIB), "0.19.0")
    assert "16 from the environment; 32 GB of memory, 24 CPUs suit 4" in only_problem(report, "MAX_JOBS", "warn")
    report = diagnose(windows(environ={"MAX_JOBS": "many"}), "0.19.0")
    assert "not a positive number" in only_problem(report, "MAX_JOBS", "error")
    report = diagnose(windows(environ={"MAX_JOBS": "\u00b2"}), "0.19.0")  # a digit to str.isdigit, not to int()
    assert "not a positive number" in only_problem(report, "MAX_JOBS", "error")
    report = diagnose(windows(physical_memory=lambda: None), "0.19.0")
    assert report.environment["MAX_JOBS"] == "2" and "cannot read the physical memory" in only_problem(
        report, "MAX_JOBS", "warn"
    )


def test_small_pagefile() -> None:
    message = only_problem(diagnose(windows(pagefile_size=lambda: 4 * GIB), "0.19.0"), "pagefile", "warn")
    assert message.startswith("4.0 GB") and "at least 16 GB" in message


@pytest.mark.parametrize(("enabled", "state"), [(False, "off"), (None, "unreadable")])
def test_long_paths_disabled(enabled: bool | None, state: str) -> None:
    message = only_problem(diagnose(windows(long_paths_enabled=lambda: enabled), "0.19.0"), "long paths", "warn")
    assert message.startswith(f"LongPathsEnabled is {state}")


def test_nvcc_minor_mismatch_with_torch() -> None:
    report = diagnose(windows(torch=lambda: TorchInfo("2.7.0+cu126", "12.6")), "0.19.0")
    message = only_problem(report, "torch", "warn")
    assert "CUDA 12.6" in message and "nvcc is CUDA 12.8" in message


def test_nvcc_major_mismatch_with_torch() -> None:
    cuda13 = CudaInstall("13.0", rf"{TOOLKITS}\v13.0")
    probes = windows(
        toolkits=[cuda13],
        programs={rf"{cuda13.path}\bin\nvcc.exe": nvcc_banner("13.0")},
        which=lambda name: {"cl": CL, "ninja": NINJA}.get(name),
        msbuild_cuda_props=lambda: [],
        torch=lambda: TorchInfo("2.7.0+cu126", "12.6"),
    )
    assert "major versions must match" in only_problem(diagnose(probes, "0.19.0"), "torch", "error")


def test_cpu_only_and_missing_torch() -> None:
    report = diagnose(windows(torch=lambda: TorchInfo("2.7.0+cpu", None)), "0.19.0")
    assert "CPU-only" in only_problem(report, "torch", "error")
    assert "not installed" in only_problem(diagnose(windows(torch=lambda: None), "0.19.0"), "torch", "warn")


def test_gpu_too_new_for_nvcc() -> None:
    probes = windows(
        gpu_capabilities=lambda: [(12, 0)],
        toolkits=[CUDA_126],
        torch=lambda: TorchInfo("2.7.0", "12.6"),
        which=lambda name: {"cl": CL, "ninja": NINJA}.get(name),
        msbuild_cuda_props=lambda: [CudaInstall("12.6", rf"{VS}\CUDA 12.6.props")],
    )
    report = diagnose(probes, "0.19.0")
    assert "needs CUDA 12.8 or newer; nvcc is 12.6" in only_problem(report, "GPU support", "error")
    assert report.environment["TORCH_CUDA_ARCH_LIST"] == "12.0"


def test_arch_list_of_several_gpus_and_from_the_environment() -> None:
    report = diagnose(windows(gpu_capabilities=lambda: [(8, 9), (8, 6), (8, 9)]), "0.19.0")
    assert report.environment["TORCH_CUDA_ARCH_LIST"] == "8.6;8.9"
    report = diagnose(windows(environ={"TORCH_CUDA_ARCH_LIST": "8.0;8.6+PTX"}), "0.19.0")
    assert "leaves out this machine's GPU (8.9)" in only_problem(report, "TORCH_CUDA_ARCH_LIST", "warn")
    assert report.environment["TORCH_CUDA_ARCH_LIST"] == "8.0;8.6+PTX"
    report = diagnose(windows(environ={"TORCH_CUDA_ARCH_LIST": "8.9"}), "0.19.0")
    assert statuses(report)["TORCH_CUDA_ARCH_LIST"] == ("ok", "8.9 (from the environment)")


@pytest.mark.parametrize(("caps", "reason"), [([], "no NVIDIA GPU found"), (None, "nvidia-smi not found")])
def test_no_gpu_to_read(caps: list | None, reason: str) -> None:
    report = diagnose(windows(gpu_capabilities=lambda: caps), "0.19.0")
    assert reason in only_problem(report, "TORCH_CUDA_ARCH_LIST", "warn")
    assert "TORCH_CUDA_ARCH_LIST" not in report.environment


def test_vllm_version_and_overridden_variables() -> None:
    assert "pass --version" in only_problem(diagnose(windows()), "SETUPTOOLS_SCM_PRETEND_VERSION", "warn")
    report = diagnose(windows(environ={"SETUPTOOLS_SCM_PRETEND_VERSION": "0.1.dev1"}), "0.19.0")
    assert "0.1.dev1 is overridden" in only_problem(report, "SETUPTOOLS_SCM_PRETEND_VERSION", "warn")
    report = diagnose(windows(environ={"VLLM_TARGET_DEVICE": "cpu"}), "0.19.0")
    assert "'cpu' is overridden" in only_problem(report, "VLLM_TARGET_DEVICE", "warn")
    assert report.environment["VLLM_TARGET_DEVICE"] == "cuda"


def test_linux_reports_what_it_cannot_check() -> None:
    probes = windows(
        platform="linux",
        msbuild_cuda_props=lambda: None,
        toolkits=[CudaInstall("12.8", "/usr/local/cuda-12.8")],
        programs={"/usr/local/cuda-12.8/bin/nvcc": nvcc_banner("12.8"), "/usr/bin/ninja": "1.11.1"},
        which=lambda name: {"ninja": "/usr/bin/ninja"}.get(name),
    )
    report = diagnose(probes, "0.19.0")
    skipped = {c.name for c in report.checks if c.status == "skip"}
    assert skipped == {"cl.exe", "pagefile", "long paths", "MSBuild CUDA integration"}
    assert all("not checked" in statuses(report)[name][1] for name in skipped)
    assert report.environment["CUDA_HOME"] == "/usr/local/cuda-12.8" and "DISTUTILS_USE_SDK" not in report.environment
    assert report.count("error") == 0 and report.count("warn") == 0


def test_json_report_round_trips() -> None:
    report = diagnose(windows(pagefile_size=lambda: GIB), "0.19.0")
    data = json.loads(report.to_json())
    assert data["environment"] == build_environment(report)
    assert data["warnings"] == 1 and data["errors"] == 0
    assert {"name": "pagefile", "status": "warn", "message": statuses(report)["pagefile"][1]} in data["checks"]


def test_parsers() -> None:
    assert doctor.parse_nvcc_release(nvcc_banner("12.8")) == (12, 8)
    assert doctor.parse_nvcc_release("command not found") is None
    assert doctor.parse_cl_banner("Microsoft (R) C/C++ Optimizing Compiler Version 19.29.30154 for x86") == (
        "19.29.30154",
        "x86",
    )
    assert doctor.parse_compute_caps("8.9\n12.0\n[N/A]\n") == [(8, 9), (12, 0)]


def test_find_cuda_toolkits_and_msbuild_props(tmp_path: Path) -> None:
    (tmp_path / "v12.6").mkdir()
    (tmp_path / "v12.8").mkdir()
    (tmp_path / "notes").mkdir()
    environ = {"CUDA_PATH_V12_8": str(tmp_path / "v12.8"), "CUDA_PATH_V11_8": str(tmp_path / "gone")}
    found = find_cuda_toolkits(environ, [str(tmp_path / name) for name in ("v12.8", "v12.6", "notes")])
    assert found == [CudaInstall("12.6", str(tmp_path / "v12.6")), CudaInstall("12.8", str(tmp_path / "v12.8"))]

    custom = tmp_path / "VS/2022/Community/MSBuild/Microsoft/VC/v170/BuildCustomizations"
    custom.mkdir(parents=True)
    for name in ("CUDA 12.4.props", "CUDA 12.4.targets", "CUDA 12.8.props"):
        (custom / name).write_text("")
    props = find_msbuild_cuda_props([str(tmp_path / "VS")])
    assert [p.version for p in props] == ["12.4", "12.8"] and props[0].path == str(custom / "CUDA 12.4.props")


def test_cli_on_this_machine(capsys: pytest.CaptureFixture[str], tree: Path) -> None:
    code = main(["windows", "doctor", "--json", "--tree", str(tree)])
    data = json.loads(capsys.readouterr().out)
    assert code == (1 if data["errors"] else 0)
    assert data["environment"]["SETUPTOOLS_SCM_PRETEND_VERSION"] == "0.19.0"
    assert data["environment"]["VLLM_TARGET_DEVICE"] == "cuda"


def test_cli_missing_tree(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["windows", "doctor", "--tree", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_without_git_still_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree with .git but no git on PATH: the version is unknown, the report is still printed."""
    (tmp_path / ".git").mkdir()
    monkeypatch.setattr("shutil.which", lambda name: None)
    code = main(["windows", "doctor", "--json", "--tree", str(tmp_path)])
    captured = capsys.readouterr()
    assert "git is not installed" not in captured.err
    data = json.loads(captured.out)
    assert code == (1 if data["errors"] else 0)
    assert "SETUPTOOLS_SCM_PRETEND_VERSION" not in data["environment"]


def test_system_probes_read_program_files_whatever_its_case(tmp_path: Path) -> None:
    """On Windows, dict(os.environ) has upper-case keys: PROGRAMFILES, not ProgramFiles."""
    program_files = tmp_path / "Program Files [x]"  # glob characters in the folder name are literal
    (program_files / "NVIDIA GPU Computing Toolkit" / "CUDA" / "v12.8").mkdir(parents=True)
    upper = {"PROGRAMFILES": str(program_files), "PROGRAMFILES(X86)": str(tmp_path / "x86")}
    assert doctor._toolkit_dirs(True, upper) == [str(program_files / "NVIDIA GPU Computing Toolkit" / "CUDA" / "v12.8")]
    assert doctor._vs_roots(upper) == [
        str(program_files / "Microsoft Visual Studio"),
        str(tmp_path / "x86" / "Microsoft Visual Studio"),
    ]
    assert doctor._vs_roots({"ProgramFiles": "P"}) == [os.path.join("P", "Microsoft Visual Studio")]
    assert doctor._vs_roots({}) == []
