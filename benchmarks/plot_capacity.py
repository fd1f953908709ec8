"""KV-cache capacity against throughput, both relative to `auto` of the same run, as a PNG, from the end-to-end
results of `anchor_bench.py` (a JSON file with one row per kv_cache_dtype: capacity, decode, long_out, short_out).

    python benchmarks/plot_capacity.py benchmarks/results/vllm-h200/anchor.json docs/img/capacity_vs_speed.png
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multi_turboquant.eval.plot import FAMILY_COLORS, KIND_STYLE, place_labels, plot_script, pyplot  # noqa: E402

METRICS = (("decode", "o", "decode tok/s"), ("long_out", "v", "output tok/s, 4,000-token prompts"),
           ("short_out", "^", "output tok/s, 200-token prompts"))


def color(row: dict) -> str:
    if row["kind"] == "format":
        return next((c for f, c in FAMILY_COLORS.items() if row["kv_cache_dtype"].startswith(f)), "black")
    return "black" if row["kv_cache_dtype"] == "auto" else KIND_STYLE.get(row["kind"], ("", "black"))[1]


def plot_capacity(rows: list[dict], path: Path, title: str) -> Path | None:
    """One vertical bar per kv_cache_dtype at its capacity, a marker per throughput metric; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    labels = []
    for row in rows:
        ys = [row[key] for key, _, _ in METRICS if row.get(key) is not None]
        if not ys:
            continue
        ax.plot([row["capacity"]] * 2, [min(ys), max(ys)], color=color(row), lw=1.2, alpha=0.6, zorder=1)
        for key, marker, _ in METRICS:
            if row.get(key) is not None:
                ax.scatter([row["capacity"]], [row[key]], marker=marker, s=48, color=color(row), zorder=3)
        labels.append((row["capacity"], max(ys), row["kv_cache_dtype"]))
    ax.axhline(1.0, color="black", lw=0.8, ls="--", zorder=0)
    for key, marker, text in METRICS:
        ax.scatter([], [], marker=marker, color="dimgray", label=text)
    ax.set_xlim(0, max(r["capacity"] for r in rows) * 1.15)
    ax.set_ylim(0, max(1.2, max(r.get(k) or 0 for r in rows for k, _, _ in METRICS) * 1.15))
    ax.set_xlabel("KV-cache capacity (tokens) × auto")
    ax.set_ylabel("throughput × auto (dashed line: auto)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    place_labels(ax, labels, fontsize=8.5)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw(data: dict, png: Path, title: str | None) -> Path | None:
    default = " · ".join(str(data[k]) for k in ("model", "card", "date") if data.get(k))
    return plot_capacity(data["rows"], png, title or default)


def main(argv: list[str] | None = None) -> int:
    return plot_script(argv, __doc__, draw)


if __name__ == "__main__":
    sys.exit(main())
