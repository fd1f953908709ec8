"""A progress bar fed by Ninja's `[N/M]` status lines."""

from __future__ import annotations

import re
from typing import TextIO

NINJA_STATUS = re.compile(r"^\[(\d+)/(\d+)\]")
WIDTH = 30


def ninja_step(line: str) -> tuple[int, int] | None:
    """(N, M) of a Ninja status line `[N/M] Building CUDA object ...`, else None."""
    match = NINJA_STATUS.match(line)
    return (int(match[1]), int(match[2])) if match and int(match[2]) > 0 else None


class ProgressBar:
    """Draws `[####    ] N/M (P%)`: in place on a terminal, else one line per tenth of the way."""

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.label = label
        self.tty = out.isatty()
        self.shown = -1  # the last tenth printed (not on a terminal)
        self.drawn = False

    def feed(self, line: str) -> None:
        step = ninja_step(line)
        if step is None:
            return
        done, total = step
        percent = min(100, 100 * done // total)
        if not self.tty and percent // 10 == self.shown:
            return
        self.shown = percent // 10
        filled = WIDTH * percent // 100
        text = f"  {self.label} [{'#' * filled}{' ' * (WIDTH - filled)}] {done}/{total} ({percent}%)"
        self.out.write(f"\r{text}" if self.tty else f"{text}\n")
        self.out.flush()
        self.drawn = True

    def close(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\n")
            self.out.flush()
