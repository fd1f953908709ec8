"""`mtq windows build` against a fake toolchain that replays recorded logs (tests/windows/fake_tool.py)."""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from multi_turboquant.cli import main
from multi_turboquant.windows import build as build_module
from multi_turboquant.windows.build import BuildOptions, BuildState, build
from multi_turboquant.windows.doctor import GIB, CudaInstall, Probes, TorchInfo
from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.failures import CLEAN_DEPS, FAILURES, FEWER_JOBS
from multi_turboquant.windows.gittools import git, init_and_commit
from multi_turboquant.windows.progress import ProgressBar, ninja_step

from .test_doctor import windows

FAKE_TOOL = Path(__file__).with_name("fake_tool.py")
LOGS = Path(__file__).with_name("logs")
BUILD_FAILURES = [f for f in FAILURES if f.phase != "runtime"]


@dataclass
class Toolchain:
    tree: Path
    bin: Path
    calls_file: Path
    environ: dict[str, str]

    def probes(self, **changes: object) -> Probes:
        """A Linux machine with CUDA 12.8 (its nvcc fake), a cu128 torch, an sm_89 GPU, 64 GB and 8 CPUs."""
        cuda = self.environ["FAKE_CUDA"]
        programs = {"cmake": str(self.bin / "cmake"), "ninja": str(self.bin / "ninja"), "nvcc": f"{cuda}/bin/nvcc"}
        outputs = {
            f"{cuda}/bin/nvcc": "Cuda compilation tools, release 12.8, V12.8.93\n",
            programs["ninja"]: "1.11.1\n",
        }
        probes = Probes(
            platform="linux",
            environ=self.environ,
            cuda_toolkits=lambda: [CudaInstall("12.8", cuda)],
            msbuild_cuda_props=lambda: None,
            gpu_capabilities=lambda: [(8, 9)],
            physical_memory=lambda: 64 * GIB,
            pagefile_size=lambda: None,
            long_paths_enabled=lambda: None,
            cpu_count=lambda: 8,
            torch=lambda: TorchInfo("2.13.0+cu128", "12.8"),
            which=programs.get,
            exists=os.path.exists,
            run=lambda cmd: outputs.get(cmd[0]),
        )
        return replace(probes, **changes)

    def calls(self) -> list[dict]:
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]

    def phases(self) -> list[str]:
        return [call["phase"] for call in self.calls()]

    def build(self, *, probes: Probes | None = None, **options: object) -> tuple[int, str]:
        out = io.StringIO()
        options = {"python": str(self.bin / "python")} | options
        code = build(BuildOptions(self.tree, **options), probes or self.probes(), out)
        return code, out.getvalue()

    def state(self) -> BuildState:
        return BuildState.load(self.tree / "build" / "mtq" / "state.json")

    def log(self) -> str:
        return (self.tree / "build" / "mtq" / "build.log").read_text()


@pytest.fixture()
def toolchain(tmp_path: Path) -> Toolchain:
    tree = tmp_path / "vllm"
    for name, text in {
        "PKG-INFO": "Metadata-Version: 2.4\nName: vllm\nVersion: 0.27.1\n",
        "setup.py": "# vLLM's setup.py\n",
        "CMakeLists.txt": "cmake_minimum_required(VERSION 3.26)\n",
    }.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("cmake", "python", "ninja"):
        (fake_bin / tool).write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_TOOL}" {tool} "$@"\n')
        (fake_bin / tool).chmod(0o755)
    cuda = tmp_path / "cuda-12.8"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "bin" / "nvcc").write_text("")
    environ = {"PATH": os.environ["PATH"], "FAKE_CALLS": str(tmp_path / "calls.jsonl"), "FAKE_CUDA": str(cuda)}
    return Toolchain(tree, fake_bin, tmp_path / "calls.jsonl", environ)


def expected_log_lines(*names: str) -> list[str]:
    return [line for name in names for line in (LOGS / f"{name}.log").read_text().splitlines()]


def test_success_runs_the_three_phases_with_the_doctors_environment(toolchain: Toolchain) -> None:
    code, out = toolchain.build()
    assert code == 0, out
    calls = toolchain.calls()
    assert [c["phase"] for c in calls] == ["configure", "compile", "install"]
    configure, compile_, install = (c["argv"] for c in calls)
    cmake_dir = str(toolchain.tree / "build" / "mtq" / "cmake")
    assert configure[:7] == ["-S", str(toolchain.tree), "-B", cmake_dir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"]
    assert f"-DCMAKE_INSTALL_PREFIX={toolchain.tree}" in configure
    assert f"-DCMAKE_CUDA_COMPILER={toolchain.environ['FAKE_CUDA']}/bin/nvcc" in configure
    assert compile_ == ["--build", cmake_dir, "-j", "8", "--target", "install"]  # 64 GB / 8 GB, 8 CPUs
    assert install == ["-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(toolchain.tree)]
    assert {c["CUDA_HOME"] for c in calls} == {toolchain.environ["FAKE_CUDA"]}
    assert [c["TORCH_CUDA_ARCH_LIST"] for c in calls] == ["8.9"] * 3
    assert [c["VLLM_TARGET_DEVICE"] for c in calls] == ["cuda", "cuda", "empty"]
    assert calls[2]["VLLM_VERSION_OVERRIDE"] == "0.27.1"
    log = toolchain.log().splitlines()
    assert [line for line in log if not line.startswith("=== mtq: ")] == expected_log_lines(
        "configure", "compile", "install"
    )
    assert out.index("[1/3] configure") < out.index("[2/3] compile") < out.index("[3/3] install")
    assert "built and installed" in out
    state = toolchain.state()
    assert state == BuildState(state.inputs, state.configured, "0.27.1", 8, "", "2.13.0+cu128")
    assert len(state.inputs) == len(state.configured) == 64


def test_built_modules_are_kept_out_of_git_status(toolchain: Toolchain) -> None:
    (toolchain.tree / ".gitignore").write_text("*.so\nbuild/\n/.deps/\n")  # as in vLLM's
    init_and_commit(toolchain.tree, "pristine")
    (toolchain.tree / "vllm").mkdir()
    (toolchain.tree / "vllm" / "_C.pyd").write_bytes(b"MZ")
    assert toolchain.build()[0] == 0
    assert (toolchain.tree / ".git" / "info" / "exclude").read_text().splitlines()[-1] == "*.pyd"
    assert git(toolchain.tree, "status", "--porcelain").stdout == ""
    toolchain.build()
    assert (toolchain.tree / ".git" / "info" / "exclude").read_text().count("*.pyd") == 1


def test_progress_is_drawn_from_ninja_lines(toolchain: Toolchain) -> None:
    code, out = toolchain.build()
    assert code == 0
    shown = [line for line in out.splitlines() if line.startswith("  compile [")]
    percents = [int(line.rsplit("(", 1)[1].rstrip("%)")) for line in shown]
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) >= 5
    assert shown[-1].endswith("40/40 (100%)") and "#" * 30 in shown[-1]


@pytest.mark.parametrize("failure", BUILD_FAILURES, ids=lambda f: f.key)
def test_each_known_failure_is_diagnosed(toolchain: Toolchain, failure) -> None:
    rc = 0 if failure.key == "cuda-version-mismatch" else 1  # CMake carries on; the kit stops before the compile
    toolchain.environ["FAKE_FAIL"] = f"{failure.phase}:{failure.key}:{rc}"
    code, out = toolchain.build(jobs=4)
    assert code == 1
    assert f"\n{failure.key} (log line " in out and failure.fix in out
    phases = toolchain.phases()
    assert phases[: phases.index(failure.phase)] == list(build_module.PHASES[: phases.index(failure.phase)])
    attempts = {FEWER_JOBS: 3, CLEAN_DEPS: 2}.get(failure.action, 1)  # 4 -> 2 -> 1 jobs; one clean
    assert phases.count(failure.phase) == attempts and "install" not in phases
    assert toolchain.state().failed == failure.phase
    assert "after fixing, `mtq windows build --resume`" in out


def test_out_of_memory_retries_with_fewer_jobs_then_resume_keeps_them(toolchain: Toolchain) -> None:
    toolchain.environ |= {"FAKE_FAIL": "compile:out-of-memory", "FAKE_FAIL_ABOVE_JOBS": "2"}
    code, out = toolchain.build(jobs=8)
    assert code == 0, out
    jobs = [c["argv"][3] for c in toolchain.calls() if c["phase"] == "compile"]
    assert jobs == ["8", "4", "2"]
    assert "retrying the compile phase with 4 jobs instead of 8" in out
    assert toolchain.state().jobs == 2
    toolchain.calls_file.unlink()
    code, out = toolchain.build(resume=True)
    assert code == 0
    assert toolchain.phases() == ["compile"]  # configure and install up to date
    assert toolchain.calls()[0]["argv"][3] == "2"
    assert "configure: up to date, skipped" in out and "install: up to date, skipped" in out


def test_generator_mismatch_cleans_the_fetchcontent_cache_and_configures_again(toolchain: Toolchain) -> None:
    deps = toolchain.tree / ".deps"
    for folder in ("cutlass-subbuild", "cutlass-src"):
        (deps / folder).mkdir(parents=True)
        (deps / folder / "CMakeCache.txt").write_text("CMAKE_GENERATOR:INTERNAL=Visual Studio 17 2022\n")
    toolchain.environ |= {
        "FAKE_FAIL": "configure:generator-mismatch",
        "FAKE_FAIL_WHILE": str(deps / "cutlass-subbuild"),
    }
    code, out = toolchain.build()
    assert code == 0, out
    assert toolchain.phases() == ["configure", "configure", "compile", "install"]
    assert not (deps / "cutlass-subbuild").exists() and (deps / "cutlass-src" / "CMakeCache.txt").exists()
    assert "applying the fix: removed" in out and "cutlass-subbuild" in out


def test_a_crash_mid_way_shows_the_tail_of_the_log(toolchain: Toolchain) -> None:
    toolchain.environ["FAKE_CRASH"] = "compile:10"
    code, out = toolchain.build()
    assert code == 1
    assert "compile phase stopped (killed by signal 9)" in out and "no known failure recognised" in out
    assert "  | [10/40] Building CUDA object" in out and "[11/40]" not in out
    assert toolchain.phases() == ["configure", "compile"] and toolchain.state().failed == "compile"
    toolchain.environ.pop("FAKE_CRASH")
    code, out = toolchain.build(resume=True)
    assert code == 0 and toolchain.phases()[2:] == ["compile", "install"]  # configure kept


def test_full_build_clears_the_cmake_folder_and_resume_clears_it_only_when_setup_changed(toolchain: Toolchain) -> None:
    assert toolchain.build()[0] == 0
    marker = toolchain.tree / "build" / "mtq" / "cmake" / "object.obj"
    marker.write_text("compiled")
    assert toolchain.build(resume=True)[0] == 0 and marker.exists()
    (toolchain.tree / "setup.py").write_text("# changed\n")
    toolchain.calls_file.unlink()
    code, out = toolchain.build(resume=True)
    assert code == 0 and "setup.py or CMakeLists.txt changed since the last configure" in out
    assert not marker.exists() and toolchain.phases() == ["configure", "compile"]
    marker.write_text("compiled")
    assert toolchain.build()[0] == 0 and not marker.exists()


def test_cmake_args_are_passed_on_and_a_change_configures_again(toolchain: Toolchain) -> None:
    toolchain.environ["CMAKE_ARGS"] = "-DVLLM_FA_CMAKE_GPU_ARCHES=89-real -Wno-dev"
    assert toolchain.build()[0] == 0
    assert toolchain.calls()[0]["argv"][-2:] == ["-DVLLM_FA_CMAKE_GPU_ARCHES=89-real", "-Wno-dev"]
    toolchain.environ["CMAKE_ARGS"] = "-Wno-dev"
    toolchain.calls_file.unlink()
    assert toolchain.build(resume=True)[0] == 0 and toolchain.phases() == ["configure", "compile"]


def test_arch_is_passed_and_a_new_one_configures_again(toolchain: Toolchain) -> None:
    assert toolchain.build(arch="8.6;8.9")[0] == 0
    assert {c["TORCH_CUDA_ARCH_LIST"] for c in toolchain.calls()} == {"8.6;8.9"}
    toolchain.calls_file.unlink()
    assert toolchain.build(resume=True, arch="12.0")[0] == 0
    assert toolchain.phases() == ["configure", "compile"]
    with pytest.raises(KitError, match="--arch 'sm_89' is not a list"):
        toolchain.build(arch="sm_89")


def test_missing_tools_stop_the_build_before_anything_runs(toolchain: Toolchain) -> None:
    probes = toolchain.probes(which=lambda name: None, run=lambda cmd: None)
    with pytest.raises(KitError) as error:
        toolchain.build(probes=probes)
    message = str(error.value)
    assert "cmake: not found" in message and "nvcc: cannot run nvcc" in message and "ninja: not found" in message
    assert toolchain.calls() == []


def test_wrong_shell_on_windows_is_refused(toolchain: Toolchain) -> None:
    probes = windows(environ={"MSYSTEM": "MINGW64", "VSCMD_ARG_TGT_ARCH": "x86"})
    with pytest.raises(KitError) as error:
        toolchain.build(probes=probes)
    assert "MSYS/Git Bash shell (MINGW64)" in str(error.value) and "targets x86" in str(error.value)
    assert "cmake: not found" in str(error.value) and toolchain.calls() == []


def test_bad_trees_and_jobs(toolchain: Toolchain, tmp_path: Path) -> None:
    with pytest.raises(KitError, match="does not exist"):
        build(BuildOptions(tmp_path / "nowhere"), toolchain.probes())
    (toolchain.tree / "CMakeLists.txt").unlink()
    with pytest.raises(KitError, match="not a vLLM source tree"):
        toolchain.build()
    with pytest.raises(KitError, match="--jobs must be at least 1"):
        toolchain.build(jobs=0)


def test_cli_exit_codes(toolchain: Toolchain, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(Probes, "system", classmethod(lambda cls: toolchain.probes()))
    argv = ["windows", "build", "--tree", str(toolchain.tree), "--python", str(toolchain.bin / "python")]
    assert main(argv) == 0
    toolchain.environ["FAKE_FAIL"] = "compile:nesting-limit"
    assert main([*argv, "--resume"]) == 1
    assert "nesting-limit (log line" in capsys.readouterr().out
    assert main([*argv, "--jobs", "0"]) == 1
    assert "mtq windows build: error: --jobs must be at least 1" in capsys.readouterr().err


def test_ninja_step_and_bar_on_a_terminal() -> None:
    assert ninja_step("[12/345] Building CUDA object x.obj") == (12, 345)
    assert ninja_step("-- [1/2] not a status line") is None and ninja_step("[0/0] nothing") is None

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    bar = ProgressBar(out, "compile")
    for n in range(1, 5):
        bar.feed(f"[{n}/4] step")
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("4/4 (100%)\n") and "1/4 (25%)" in text
