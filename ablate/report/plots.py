"""The report's PNG plots, drawn with matplotlib's Agg canvas (no display, no pyplot state, no torch)."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ablate.report.table import fmt_delta

GAIN = "#2ca02c"
LOSS = "#d62728"
NEUTRAL = "#7f7f7f"
DPI = 120


def save_png(fig: Figure, path: Path) -> Path:
    """Save a figure atomically: to a temp file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            FigureCanvasAgg(fig)
            fig.savefig(f, format="png", dpi=DPI)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def delta_map_figure(table: pd.DataFrame, title: str) -> Figure:
    """Horizontal bars of ΔmAP (points) per non-baseline variant, in table order from the top.

    Green for a gain, red for a loss; error bars of ± the std of the paired per-seed differences
    where there are two seeds or more. Variants without a ΔmAP (no baseline) are left out.
    """
    rows = table[~table["baseline"] & table["delta_mAP"].notna()]
    several_bases = table["base_hash"].nunique() > 1
    labels = [f"{r.variant} ({r.base})" if several_bases and r.base else str(r.variant)
              for r in rows.itertuples()]
    values = [float(v) for v in rows["delta_mAP"]]
    errors = [float(s) if r_paired and not math.isnan(s) else 0.0
              for s, r_paired in zip(rows["delta_mAP_std"], rows["delta_paired"])]

    n = len(values)
    fig = Figure(figsize=(7, 0.5 * max(n, 1) + 2))
    ax = fig.add_subplot()
    if n == 0:
        ax.text(0.5, 0.5, "no ΔmAP to plot: no variant with an ok baseline run",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        ys = list(range(n))
        colors = [GAIN if v > 0 else LOSS if v < 0 else NEUTRAL for v in values]
        ax.barh(ys, values, color=colors, height=0.6, zorder=2)
        with_err = [i for i, e in enumerate(errors) if e > 0]
        if with_err:
            ax.errorbar([values[i] for i in with_err], [ys[i] for i in with_err],
                        xerr=[errors[i] for i in with_err], fmt="none", ecolor="black", elinewidth=1, capsize=3,
                        zorder=3)
        ax.axvline(0, color="black", linewidth=0.8, zorder=1)
        ax.set_yticks(ys, labels)
        ax.invert_yaxis()
        ax.grid(axis="x", linestyle=":", linewidth=0.6, zorder=0)
        # Value labels just past the bar (or its error bar).
        span = max(max(abs(v) + e for v, e in zip(values, errors)), 0.1)
        for y, v, e in zip(ys, values, errors):
            text = fmt_delta(v, e if e else math.nan)
            ax.text(v + math.copysign(e + 0.03 * span, v if v else 1), y, text,
                    va="center", ha="left" if v >= 0 else "right", fontsize=8)
        ax.set_xlim(-1.6 * span if min(values) < 0 else -0.15 * span,
                    1.6 * span if max(values) > 0 else 0.15 * span)
        ax.set_xlabel("ΔmAP vs baseline (COCO mAP@[.5:.95], points)")
        ax.set_ylabel("variant")
    ax.set_title(f"{title}: ΔmAP per variant" + (" (± std of paired seed differences)" if any(errors) else ""),
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_delta_map(table: pd.DataFrame, path: Path, title: str) -> Path:
    return save_png(delta_map_figure(table, title), path)
