"""The evaluation text: English prose shipped by a registry package, never written here.

Default: the license texts of Debian's `base-files` package (/usr/share/common-licenses; present on every
Debian/Ubuntu system), distinct texts only (GPL-2, LGPL-2 and LGPL-3 repeat GPL-3 and are left out),
about 36k SmolLM2 tokens. `--text PATH` takes any UTF-8 file instead.
"""
from __future__ import annotations

from pathlib import Path

import torch

LICENSE_DIR = Path("/usr/share/common-licenses")
LICENSES = ("GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "LGPL-2.1", "Artistic", "CC0-1.0", "MPL-1.1", "GPL-1")
# `mtq demo`'s passage: the prose of GPL-3's preamble, from its second paragraph to the terms
PASSAGE = ("GPL-3", "  The licenses for most software", "TERMS AND CONDITIONS")


def load_text(path: str | Path | None = None) -> tuple[str, str]:
    """(text, source description) of `path`, or of the default license corpus."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"text file {str(p)!r} not found")
        return p.read_text(encoding="utf-8", errors="replace"), str(p)
    missing = [n for n in LICENSES if not (LICENSE_DIR / n).is_file()]
    if missing:
        raise ValueError(f"default corpus needs Debian's base-files ({LICENSE_DIR}/{missing[0]} missing); pass --text PATH")
    text = "\n\n".join((LICENSE_DIR / n).read_text(encoding="utf-8") for n in LICENSES)
    return text, f"Debian base-files {LICENSE_DIR}/{{{','.join(LICENSES)}}}"


def prose_passage() -> tuple[str, str]:
    """(text, source) of a passage of English prose from the default corpus: GPL-3's preamble (about 3.3k
    characters), ValueError when Debian's base-files is missing."""
    name, first, end = PASSAGE
    path = LICENSE_DIR / name
    if not path.is_file():
        raise ValueError(f"the passage needs Debian's base-files ({path} missing)")
    text = path.read_text(encoding="utf-8")
    start, stop = text.find(first), text.find(end)
    if not 0 <= start < stop:
        raise ValueError(f"{path} has no preamble from {first.strip()!r} to {end!r}")
    return text[start:stop].strip(), f"Debian base-files {path}, its preamble"


def split_tokens(ids: torch.Tensor, eval_tokens: int, calib_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation tokens from the start, calibration tokens from the end: disjoint, ValueError if too short."""
    if eval_tokens < 2 or calib_tokens < 0:
        raise ValueError(f"need at least 2 evaluation tokens, got {eval_tokens} (calibration {calib_tokens})")
    if eval_tokens + calib_tokens > ids.numel():
        raise ValueError(f"text has {ids.numel()} tokens; {eval_tokens} for evaluation + {calib_tokens} for "
                         "calibration do not fit (use --text with a longer file or fewer tokens)")
    return ids[:eval_tokens], ids[ids.numel() - calib_tokens:]


def spread_windows(ids: list[int], n: int, length: int, phase: float = 0.0) -> list[list[int]]:
    """`n` windows of `length` tokens spread evenly over `ids`, each `phase` (0 <= phase < 1) of a step in."""
    step = len(ids) // n
    start = int(phase * step)
    if not 0 <= phase < 1 or n < 1 or length < 2 or start + length > step:
        raise ValueError(f"{n} windows of {length} tokens at phase {phase} do not fit in {len(ids)} tokens")
    return [ids[i * step + start:i * step + start + length] for i in range(n)]
