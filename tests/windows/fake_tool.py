"""A fake cmake / python that replays the recorded logs in tests/windows/logs (run as `fake_tool.py TOOL ARGS...`).

Environment:
  FAKE_CALLS                 file to append one JSON line per call (tool, phase, argv, build variables)
  FAKE_FAIL=PHASE:LOG[:RC]   that phase replays LOG.log and exits RC (default 1) instead of succeeding
  FAKE_FAIL_ABOVE_JOBS=N     ... only while `-j` is above N
  FAKE_FAIL_WHILE=PATH       ... only while PATH exists
  FAKE_CRASH=PHASE:N         that phase replays N lines of its log, then kills itself
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

LOGS = Path(__file__).with_name("logs")
RECORDED = ("MAX_JOBS", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "VLLM_TARGET_DEVICE", "VLLM_VERSION_OVERRIDE")


def phase_of(tool: str, argv: list[str]) -> str:
    if tool == "python":
        return "install"
    return "compile" if "--build" in argv else "configure"


def failing(phase: str, argv: list[str]) -> tuple[str, int] | None:
    spec = os.environ.get("FAKE_FAIL", "")
    if not spec.startswith(f"{phase}:"):
        return None
    log, _, rc = spec[len(phase) + 1 :].partition(":")
    above = os.environ.get("FAKE_FAIL_ABOVE_JOBS")
    if above is not None and int(argv[argv.index("-j") + 1]) <= int(above):
        return None
    while_path = os.environ.get("FAKE_FAIL_WHILE")
    if while_path is not None and not Path(while_path).exists():
        return None
    return log, int(rc or 1)


def main(tool: str, argv: list[str]) -> int:
    phase = phase_of(tool, argv)
    with open(os.environ["FAKE_CALLS"], "a") as calls:
        record = {"tool": tool, "phase": phase, "argv": argv} | {name: os.environ.get(name) for name in RECORDED}
        calls.write(json.dumps(record) + "\n")
    failure = failing(phase, argv)
    lines = (LOGS / f"{failure[0] if failure else phase}.log").read_text().splitlines()
    crash_phase, _, crash_at = os.environ.get("FAKE_CRASH", "").partition(":")
    for number, line in enumerate(lines):
        if crash_phase == phase and number == int(crash_at):
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        print(line, flush=True)
    if failure:
        return failure[1]
    if phase == "configure":
        build_dir = Path(argv[argv.index("-B") + 1])
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / "build.ninja").write_text("# fake\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
