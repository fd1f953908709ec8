"""`mtq windows build`: configure, compile and install vLLM with the doctor's environment.

The phases follow vLLM's incremental-build workflow: `cmake -G Ninja` into build/mtq/cmake with the
tree as install prefix, `cmake --build --target install` (the native modules land in the tree's
vllm/), then an editable `pip install` that compiles nothing (VLLM_TARGET_DEVICE=empty). Every line
goes to build/mtq/build.log; a failing phase is diagnosed from the table in failures.py, and the
safe fixes (fewer jobs, a clean FetchContent cache) are applied and the phase retried.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from multi_turboquant.windows import failures
from multi_turboquant.windows.doctor import ERROR, Probes, build_environment, diagnose
from multi_turboquant.windows.errors import KitError
from multi_turboquant.windows.patchseries import detect_version
from multi_turboquant.windows.progress import ProgressBar

PHASES = ("configure", "compile", "install")
# Files whose change makes an incremental build start from an empty CMake build folder.
BUILD_INPUTS = ("setup.py", "CMakeLists.txt")
TAIL_LINES = 20
GIT_EXCLUDES = ("*.pyd",)  # vLLM's .gitignore has *.so, build/ and .deps/, but not Windows' modules
ARCH_LIST = re.compile(r"\d+\.\d+a?(?:\+PTX)?(?:[; ]\d+\.\d+a?(?:\+PTX)?)*")


@dataclass
class BuildOptions:
    tree: Path
    jobs: int | None = None  # None: the doctor's MAX_JOBS (or, with resume, the last run's)
    arch: str | None = None  # TORCH_CUDA_ARCH_LIST; None: the doctor's
    resume: bool = False
    python: str = sys.executable


@dataclass
class BuildState:
    """What build/mtq/state.json remembers between runs."""

    inputs: str = ""  # sha256 of BUILD_INPUTS at the last configure
    configured: str = ""  # fingerprint of the last successful configure
    installed: str = ""  # vLLM version of the last editable install
    jobs: int = 0
    failed: str = ""  # phase of the last failure
    torch: str = ""  # the torch version the native modules were last compiled against

    @classmethod
    def load(cls, path: Path) -> BuildState:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")


def inputs_digest(tree: Path) -> str:
    digest = hashlib.sha256()
    for name in BUILD_INPUTS:
        path = tree / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()


def preflight(probes: Probes, tree: Path, version: str | None) -> dict[str, str]:
    """The build's environment; a KitError naming every problem that would stop the build later."""
    missing = [name for name in BUILD_INPUTS if not (tree / name).is_file()]
    if missing:
        raise KitError(f"{tree} is not a vLLM source tree (no {', '.join(missing)})")
    problems = []
    if probes.windows and probes.environ.get("MSYSTEM"):
        problems.append(
            f"running in an MSYS/Git Bash shell ({probes.environ['MSYSTEM']}): use the"
            " 'x64 Native Tools Command Prompt for VS 2022' (cmd or PowerShell)"
        )
    target = probes.environ.get("VSCMD_ARG_TGT_ARCH")
    if probes.windows and target and target != "x64":
        problems.append(f"the developer prompt targets {target}: open the x64 Native Tools prompt")
    if probes.which("cmake") is None:
        problems.append("cmake: not found: `pip install cmake`")
    report = diagnose(probes, version)
    problems += [f"{check.name}: {check.message}" for check in report.checks if check.status == ERROR]
    if problems:
        raise KitError("the build cannot start:\n  " + "\n  ".join(problems) + "\n(`mtq windows doctor` for details)")
    environ = dict(probes.environ) | build_environment(report)
    cuda_bin = probes.path.join(environ["CUDA_HOME"], "bin")
    separator = ";" if probes.windows else ":"
    environ["PATH"] = separator.join(filter(None, [cuda_bin, environ.get("PATH", "")]))
    return environ


@dataclass
class Builder:
    options: BuildOptions
    environ: dict[str, str]
    cmake: str
    nvcc: str
    version: str
    torch: str
    out: TextIO
    log: TextIO | None = None
    state: BuildState = field(default_factory=BuildState)

    @property
    def work(self) -> Path:
        return self.options.tree / "build" / "mtq"

    @property
    def cmake_dir(self) -> Path:
        return self.work / "cmake"

    def say(self, text: str) -> None:
        """A line for the user, also kept in the log."""
        print(text, file=self.out, flush=True)
        if self.log:
            self.log.write(f"=== mtq: {text}\n")

    def command(self, phase: str, jobs: int) -> tuple[list[str], dict[str, str]]:
        tree, env = self.options.tree, dict(self.environ, MAX_JOBS=str(jobs))
        if phase == "configure":  # CMake values with forward slashes: backslashes are escapes in CMake strings
            return [
                self.cmake, "-S", str(tree), "-B", str(self.cmake_dir), "-G", "Ninja",
                "-DCMAKE_BUILD_TYPE=Release", "-DVLLM_TARGET_DEVICE=cuda",
                f"-DVLLM_PYTHON_EXECUTABLE={Path(self.options.python).as_posix()}",
                f"-DCMAKE_INSTALL_PREFIX={tree.as_posix()}", f"-DFETCHCONTENT_BASE_DIR={(tree / '.deps').as_posix()}",
                "-DNVCC_THREADS=1", f"-DCMAKE_CUDA_COMPILER={self.nvcc}",
                *env.get("CMAKE_ARGS", "").split(),  # extra arguments, as vLLM's setup.py takes them
            ], env  # fmt: skip
        if phase == "compile":
            return [self.cmake, "--build", str(self.cmake_dir), "-j", str(jobs), "--target", "install"], env
        env |= {"VLLM_TARGET_DEVICE": "empty", "VLLM_VERSION_OVERRIDE": self.version}  # nothing to compile
        return [self.options.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(tree)], env

    def configure_fingerprint(self) -> str:
        argv, env = self.command("configure", 1)
        return hashlib.sha256(json.dumps([argv, env.get("TORCH_CUDA_ARCH_LIST")]).encode()).hexdigest()

    def run_phase(self, phase: str, jobs: int) -> tuple[int, list[str]]:
        argv, env = self.command(phase, jobs)
        self.say(f"{phase}: {subprocess.list2cmdline(argv)}")
        started = time.monotonic()
        bar = ProgressBar(self.out, phase)
        lines = []
        try:
            proc = subprocess.Popen(
                argv, cwd=self.options.tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", bufsize=1,
            )  # fmt: skip
        except OSError as exc:
            raise KitError(f"cannot run {argv[0]}: {exc}") from exc
        with proc:
            for line in proc.stdout:
                lines.append(line)
                self.log.write(line)
                bar.feed(line)
        bar.close()
        self.say(f"{phase}: exit code {proc.returncode} after {time.monotonic() - started:.1f} s")
        return proc.returncode, lines

    def clean_deps(self) -> list[Path]:
        """Remove the FetchContent sub-builds and the CMake cache (they remember the generator)."""
        doomed = sorted((self.options.tree / ".deps").glob("*-subbuild"))
        doomed += [path for path in (self.cmake_dir / "CMakeCache.txt", self.cmake_dir / "CMakeFiles") if path.exists()]
        for path in doomed:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return doomed

    def explain(self, phase: str, code: int, found: list[failures.Diagnosis], lines: list[str]) -> None:
        if code == 0:
            self.say(f"STOPPED: the {phase} phase succeeded, but its output shows a problem the compile would hit")
        else:
            how = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
            self.say(f"FAILED: the {phase} phase stopped ({how})")
        for diagnosis in found:
            self.say(failures.describe(diagnosis))
        if not found:
            self.say(f"no known failure recognised; the last {TAIL_LINES} lines of the log:")
            for line in lines[-TAIL_LINES:]:
                print(f"  | {line.rstrip()}", file=self.out)

    def attempt(self, phase: str, jobs: int) -> tuple[bool, int]:
        """Run a phase, retrying after the fixes the kit may apply itself; (success, jobs it ended with)."""
        cleaned = False
        while True:
            code, lines = self.run_phase(phase, jobs)
            found = failures.diagnose(lines, self.environ)
            if code == 0 and not (phase == "configure" and found):
                return True, jobs
            self.explain(phase, code, found, lines)
            actions = {diagnosis.failure.action for diagnosis in found}
            if code != 0 and failures.FEWER_JOBS in actions and jobs > 1:
                self.say(f"applying the fix: retrying the {phase} phase with {jobs // 2} jobs instead of {jobs}")
                jobs //= 2
            elif code != 0 and failures.CLEAN_DEPS in actions and not cleaned:
                removed = self.clean_deps()
                self.say(
                    f"applying the fix: removed {', '.join(map(str, removed)) or 'nothing'}; running the {phase} again"
                )
                cleaned = True
            else:
                return False, jobs

    def ignore_outputs(self) -> None:
        """Keep the installed native modules out of `git status` (and so out of `mtq windows patch`)."""
        exclude = self.options.tree / ".git" / "info" / "exclude"
        if not exclude.parent.parent.is_dir():
            return
        text = exclude.read_text() if exclude.is_file() else ""
        missing = [pattern for pattern in GIT_EXCLUDES if pattern not in text.splitlines()]
        if missing:
            exclude.parent.mkdir(exist_ok=True)
            exclude.write_text(text + ("" if text.endswith("\n") or not text else "\n") + "\n".join(missing) + "\n")
            self.say(f"added {', '.join(missing)} to {exclude}")

    def run(self) -> int:
        self.ignore_outputs()
        state_path = self.work / "state.json"
        self.state = previous = BuildState.load(state_path)
        digest = inputs_digest(self.options.tree)
        if not self.options.resume:
            self.say(f"full build: clearing {self.cmake_dir} (use --resume to rebuild only what changed)")
            shutil.rmtree(self.cmake_dir, ignore_errors=True)
        elif previous.inputs and previous.inputs != digest:
            self.say(f"{' or '.join(BUILD_INPUTS)} changed since the last configure: clearing {self.cmake_dir}")
            shutil.rmtree(self.cmake_dir, ignore_errors=True)
        jobs = self.options.jobs or (self.options.resume and previous.jobs) or int(self.environ["MAX_JOBS"])
        configured = (self.cmake_dir / "build.ninja").is_file() and previous.configured == self.configure_fingerprint()
        for number, phase in enumerate(PHASES, 1):
            if phase == "configure" and configured or phase == "install" and previous.installed == self.version:
                self.say(f"[{number}/{len(PHASES)}] {phase}: up to date, skipped")
                continue
            self.say(f"[{number}/{len(PHASES)}] {phase} (MAX_JOBS={jobs})")
            ok, jobs = self.attempt(phase, jobs)
            self.state.jobs = jobs
            if phase == "configure" and ok:
                self.state.inputs, self.state.configured = digest, self.configure_fingerprint()
            if phase == "compile" and ok:
                self.state.torch = self.torch
            if phase == "install" and ok:
                self.state.installed = self.version
            self.state.failed = "" if ok else phase
            self.state.save(state_path)
            if not ok:
                self.say(f"full log: {self.work / 'build.log'}; after fixing, `mtq windows build --resume`")
                return 1
        self.say(f"vLLM {self.version} built and installed; check it with `mtq windows verify`")
        return 0


def build(options: BuildOptions, probes: Probes, out: TextIO | None = None) -> int:
    """Run the build phases; 0 on success, 1 when a phase failed (the diagnosis is printed)."""
    tree = options.tree
    if not tree.is_dir():
        raise KitError(f"tree {tree} does not exist")
    version = detect_version(tree)
    if version is None:
        raise KitError(f"cannot tell the vLLM version of {tree} (no PKG-INFO, vllm/_version.py or vX.Y.Z tag)")
    if options.jobs is not None and options.jobs < 1:
        raise KitError(f"--jobs must be at least 1, not {options.jobs}")
    environ = preflight(probes, tree, version)
    if options.arch:
        if not ARCH_LIST.fullmatch(options.arch):
            raise KitError(f"--arch {options.arch!r} is not a list of compute capabilities such as '8.9' or '8.6;12.0'")
        environ["TORCH_CUDA_ARCH_LIST"] = options.arch
    nvcc = probes.path.join(environ["CUDA_HOME"], "bin", "nvcc.exe" if probes.windows else "nvcc").replace("\\", "/")
    torch = probes.torch()
    builder = Builder(options, environ, probes.which("cmake"), nvcc, version, torch.version, out or sys.stdout)
    builder.work.mkdir(parents=True, exist_ok=True)
    with open(builder.work / "build.log", "w", encoding="utf-8", errors="replace") as log:
        builder.log = log
        return builder.run()
