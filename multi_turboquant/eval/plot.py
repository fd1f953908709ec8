"""PNG plot of ΔPPL against bits per coordinate: this project's formats and the peers."""
from __future__ import annotations

from pathlib import Path

STYLE = {"format": ("o", "tab:blue"), "peer": ("s", "tab:red"), "baseline": ("^", "tab:gray"),
         "variant": ("x", "tab:green"), "pair": ("D", "tab:purple")}
LABELS = {"format": "multi-turboquant formats", "peer": "vLLM TurboQuant presets", "baseline": "fp8 / int8 / int4",
          "variant": "spec v2 prototypes and ablations", "pair": "keys and values in different formats"}


def plot_dppl(results: list, path: str | Path, title: str = "") -> Path | None:
    """Scatter of (bits, ΔPPL %) labelled by name; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(9, 6))
    for kind, (marker, color) in STYLE.items():
        pts = [r for r in results if r.kind == kind and r.bits < 16]
        if not pts:
            continue
        ax.scatter([r.bits for r in pts], [max(r.dppl_pct, 1e-2) for r in pts], marker=marker, color=color,
                   label=LABELS[kind])
        for r in pts:
            ax.annotate(r.name, (r.bits, max(r.dppl_pct, 1e-2)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("bits per coordinate (K and V, metadata included)")
    ax.set_ylabel("ΔPPL vs bf16 KV cache (%)")
    ax.set_title(title or "KV-cache format quality")
    ax.grid(True, which="both", alpha=0.3)
    if ax.collections:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
