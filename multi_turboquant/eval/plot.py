"""PNG plots (matplotlib, Agg): ΔPPL against bits per coordinate for the formats and the peers, and the label
placement the benchmark plots share."""
from __future__ import annotations

from pathlib import Path

FAMILY_COLORS = {"turboquant": "tab:blue", "isoquant": "tab:orange", "planarquant": "tab:green"}
KIND_STYLE = {"peer": ("s", "tab:red", "vLLM presets (turboquant_*)"),
              "baseline": ("^", "tab:gray", "fp8 / int8 / int4"),
              "pair": ("D", "tab:purple", "keys and values in different formats"),
              "variant": ("x", "tab:olive", "prototypes and ablations")}
SHORT_NAMES = {"fp8 e4m3 (per-tensor scale)": "fp8", "int8 per-token-head": "int8", "int4 per-token-head": "int4"}
FLOOR_PCT = 0.1  # ΔPPL at or below this (int8's is about zero) is drawn at the floor, its value in the label
# the block-rotation families share bits per coordinate: set them slightly apart so the arrows do not overlap
X_NUDGE = {"isoquant": 0.985, "planarquant": 1.015}


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def place_labels(ax, points: list[tuple[float, float, str]], fontsize: float = 7.5) -> None:
    """Write each (x, y, text) beside its point, at the first of a few offsets where it covers no marker and no
    label written before it (the first offset when every one does). Call after the axes limits are final."""
    renderer = ax.figure.canvas.get_renderer()
    taken = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        taken.append((px - 4, py - 4, px + 4, py + 4))
    offsets = [(dx, dy) for dy in (3, -3, 10, -10, 17, -17) for dx in (5, -5)]
    for x, y, text in points:
        for i, (dx, dy) in enumerate(offsets):
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top")
            b = label.get_window_extent(renderer)
            box = (b.x0, b.y0, b.x1, b.y1)
            if not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
                break
            if i < len(offsets) - 1:
                label.remove()
        taken.append(box)


def _family(name: str) -> str:
    return next((f for f in FAMILY_COLORS if name.startswith(f)), "")


def plot_dppl(results: list, path: str | Path, title: str = "") -> Path | None:
    """ΔPPL % (log) against bits per coordinate (log) for every row but the reference; None without matplotlib or
    without such a row (a partial result holding the reference alone).

    Rows are objects with name, kind, calibrated, bits and dppl_pct (`quality.Result`). A format measured with
    and without calibration gets a hollow marker (default), a filled one (calibrated) and an arrow between them."""
    rows = [r for r in results if r.bits < 16]
    plt = pyplot()
    if plt is None or not rows:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5.6))
    labels, handles = [], {}

    def point(r, marker, color, filled=True, label_text=None):
        x = r.bits * X_NUDGE.get(_family(r.name), 1.0) if r.kind == "format" else r.bits
        y = max(r.dppl_pct, FLOOR_PCT)
        ax.scatter([x], [y], marker=marker, s=42, zorder=3, color=color if filled else "white",
                   edgecolors=color, linewidths=1.4)
        if label_text:
            labels.append((x, y, label_text))
        return x, y

    formats = [r for r in rows if r.kind == "format"]
    default = {r.name: r for r in formats if not r.calibrated}
    for r in formats:
        color = FAMILY_COLORS.get(_family(r.name), "black")
        base = r.name.removesuffix(" +calib")
        if r.calibrated:
            end = point(r, "o", color, label_text=base)
            if base in default:
                start = (default[base].bits * X_NUDGE.get(_family(base), 1.0), max(default[base].dppl_pct, FLOOR_PCT))
                ax.annotate("", end, start, arrowprops={"arrowstyle": "->", "color": color, "lw": 1.0,
                                                        "shrinkA": 4, "shrinkB": 4}, zorder=2)
        else:
            point(r, "o", color, filled=False,
                  label_text=None if any(c.name == f"{r.name} +calib" for c in formats) else r.name)
    for r in rows:
        if r.kind in KIND_STYLE:
            marker, color, legend = KIND_STYLE[r.kind]
            name = SHORT_NAMES.get(r.name, r.name).removesuffix(" +calib")
            name = name.removeprefix("turboquant_") if r.kind == "peer" else name
            point(r, marker, color, label_text=name if r.dppl_pct > FLOOR_PCT else f"{name} ({r.dppl_pct:+.2f}%)")
            handles[legend] = ax.scatter([], [], marker=marker, color=color)
    if formats:
        handles["format, default (hollow) → calibrated (filled)"] = ax.scatter(
            [], [], marker="o", color="white", edgecolors="black", linewidths=1.4)
        for family, color in FAMILY_COLORS.items():
            if any(_family(r.name) == family for r in formats):
                handles[f"{family} (this project)"] = ax.scatter([], [], marker="o", color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = min(r.bits for r in rows), max(r.bits for r in rows)
    ticks = [t for t in (2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 12) if lo * 0.9 <= t <= hi * 1.1]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(lo * 0.93, hi * 1.12)
    ax.set_ylim(FLOOR_PCT * 0.7, max(max(r.dppl_pct for r in rows), 1.0) * 1.8)
    ax.set_xlabel("bits per coordinate (K and V, metadata included)")
    ax.set_ylabel("ΔPPL vs bf16 KV cache (%, log scale)")
    ax.set_title(title or "KV-cache format quality: lower left is better", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if handles:
        ax.legend(handles.values(), handles.keys(), fontsize=7.5, loc="lower left")
    fig.tight_layout()
    place_labels(ax, labels)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_script(argv: list[str] | None, doc: str, draw) -> int:
    """The command line of a benchmarks/plot_*.py script: `DATA.json PNG [--title T]`. `draw(data, png, title)`
    plots the parsed JSON (title None: the script's default) and returns None when matplotlib is missing."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("data", type=Path, help="JSON results file")
    parser.add_argument("png", type=Path, help="PNG to write")
    parser.add_argument("--title", help="plot title (default: from the results file)")
    args = parser.parse_args(argv)
    if draw(json.loads(args.data.read_text(encoding="utf-8")), args.png, args.title) is None:
        raise SystemExit(f"{parser.prog} needs matplotlib")
    print(f"wrote {args.png}")
    return 0
