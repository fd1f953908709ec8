"""ΔPPL against bits per coordinate, as a PNG, from the quality.json that `mtq eval quality` writes.

    python benchmarks/plot_quality.py benchmarks/results/quality-20k-h100/all/quality.json docs/img/quality_vs_bits.png
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multi_turboquant.eval.plot import plot_dppl, plot_script  # noqa: E402


def draw(data: dict, png: Path, title: str | None) -> Path | None:
    rows = [SimpleNamespace(**row) for row in data["rows"]]
    return plot_dppl(rows, png, title or data.get("meta", {}).get("title", ""))


def main(argv: list[str] | None = None) -> int:
    return plot_script(argv, __doc__, draw)


if __name__ == "__main__":
    sys.exit(main())
