"""The report's PNG plots, drawn with matplotlib's Agg canvas (no display, no pyplot state, no torch):
delta_map.png (ΔmAP with its 95% CI), curves.png (loss and val mAP per epoch), pareto.png (mAP against
inference latency) and per_class.png (per-class AP change)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ablate.report.stats import pareto_front
from ablate.results import atomic_write
from ablate.report.table import NA, fmt_delta, variant_label

GAIN = "#2ca02c"
LOSS = "#d62728"
NEUTRAL = "#7f7f7f"
DPI = 120


def save_png(fig: Figure, path: Path) -> Path:
    """Save a figure atomically (results.atomic_write)."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI), binary=True)


def delta_map_figure(table: pd.DataFrame, title: str) -> Figure:
    """Horizontal bars of ΔmAP (points) per non-baseline variant, in table order from the top.

    Error bars are the 95% CI of the change (paired t-interval, or Welch's where the seeds differ);
    a bar whose CI excludes zero is drawn solid and its label bold, one within noise (or with a single
    seed, no error bar) pale. Green for a gain, red for a loss. Variants without a ΔmAP are left out.
    """
    rows = table[~table["baseline"] & table["delta_mAP"].notna()]
    several_bases = table["base_hash"].nunique() > 1
    labels = [variant_label(r, several_bases) for r in rows.to_dict("records")]
    values = [float(v) for v in rows["delta_mAP"]]
    errors = [float(h) if not math.isnan(h) else 0.0 for h in rows["delta_ci_half"]]
    has_ci = [not math.isnan(h) for h in rows["delta_ci_half"]]
    significant = [int(s) != 0 for s in rows["delta_sign"]]

    n = len(values)
    fig = Figure(figsize=(7, 0.5 * max(n, 1) + 2))
    ax = fig.add_subplot()
    if n == 0:
        _empty(ax, "no ΔmAP to plot: no variant with an ok baseline run")
    else:
        ys = list(range(n))
        colors = [GAIN if v > 0 else LOSS if v < 0 else NEUTRAL for v in values]
        for y, v, c, sig in zip(ys, values, colors, significant):
            ax.barh(y, v, color=c, height=0.6, zorder=2, alpha=1.0 if sig else 0.4,
                    edgecolor=c, linewidth=1)
        with_err = [i for i in range(n) if has_ci[i]]
        if with_err:
            ax.errorbar([values[i] for i in with_err], [ys[i] for i in with_err],
                        xerr=[errors[i] for i in with_err], fmt="none", ecolor="black", elinewidth=1, capsize=3,
                        zorder=3)
        ax.axvline(0, color="black", linewidth=0.8, zorder=1)
        ax.set_yticks(ys, labels)
        ax.invert_yaxis()
        ax.grid(axis="x", linestyle=":", linewidth=0.6, zorder=0)
        # Value labels past the bar and its error bar, on the side away from zero.
        span = max(max(abs(v) + e for v, e in zip(values, errors)), 0.1)
        for y, v, e, ci, sig in zip(ys, values, errors, has_ci, significant):
            text = fmt_delta(v) + (f" ± {e:.1f}" if ci else " (1 seed)")
            ax.text(v + math.copysign(e + 0.03 * span, v if v else 1), y, text, va="center",
                    ha="left" if v >= 0 else "right", fontsize=8, fontweight="bold" if sig else "normal")
        # Room for the labels on the side of the bars that carry them, a margin on the other.
        low = min(min(v - e for v, e in zip(values, errors)), 0.0)
        high = max(max(v + e for v, e in zip(values, errors)), 0.0)
        width = max(high - low, 0.1)
        ax.set_xlim(low - (0.4 if min(values) < 0 else 0.05) * width,
                    high + (0.4 if max(values) >= 0 else 0.05) * width)
        ax.set_xlabel("ΔmAP vs baseline (COCO mAP@[.5:.95], points)")
        ax.set_ylabel("variant")
    ax.set_title(f"{title}: ΔmAP per variant" + (" (error bars: 95% CI; solid: CI excludes 0)" if any(has_ci) else ""),
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_delta_map(table: pd.DataFrame, path: Path, title: str) -> Path:
    return save_png(delta_map_figure(table, title), path)


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def _colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def curves_figure(curves: Mapping[str, pd.DataFrame], title: str) -> Figure:
    """Training loss per epoch and, where recorded, val mAP per epoch of every variant (mean over its seeds)."""
    has_val = any(c["val_mAP"].notna().any() for c in curves.values())
    panels = 2 if has_val else 1
    fig = Figure(figsize=(6 * panels + 2.5, 4.5))
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    if not curves:
        _empty(axes[0], "no training curve in the records")
        fig.suptitle(f"{title}: training curves", fontsize=10)
        return fig
    colors = _colors(len(curves))
    for (label, curve), color in zip(curves.items(), colors):
        loss = curve["loss"].dropna()
        axes[0].plot(loss.index, loss.values, marker="o", markersize=3, linewidth=1.2, color=color, label=label)
        if has_val:
            val = curve["val_mAP"].dropna()
            axes[1].plot(val.index, val.values, marker="o", markersize=3, linewidth=1.2, color=color, label=label)
    axes[0].set_title("training loss per epoch (mean over seeds)", fontsize=9)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    if has_val:
        axes[1].set_title("val mAP per epoch (mean over seeds)", fontsize=9)
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("mAP (points)")
    epochs = sorted({int(e) for c in curves.values() for e in c.index})
    for ax in axes:
        ax.grid(linestyle=":", linewidth=0.6)
        if epochs and len(epochs) <= 20:  # whole epochs on the axis, also for a one-epoch run
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.suptitle(f"{title}: training curves", fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(curves: Mapping[str, pd.DataFrame], path: Path, title: str) -> Path:
    return save_png(curves_figure(curves, title), path)


def pareto_figure(table: pd.DataFrame, title: str) -> Figure:
    """mAP (mean ± std over seeds) against inference latency per variant, the Pareto front (no variant
    both faster and better) joined and filled, the others hollow."""
    several_bases = table["base_hash"].nunique() > 1
    rows = table[table["mAP"].notna() & table["inference_ms"].notna()]
    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot()
    if not len(rows):
        _empty(ax, "no variant with both an mAP and an inference time")
        ax.set_title(f"{title}: mAP against inference cost", fontsize=10)
        return fig
    recs = rows.to_dict("records")
    points = [(float(r["inference_ms"]), float(r["mAP"])) for r in recs]
    front = pareto_front(points)
    on_front = set(front)
    for i, (r, (x, y)) in enumerate(zip(recs, points)):
        std = r["mAP_std"]
        color = "black" if r["baseline"] else (GAIN if i in on_front else NEUTRAL)
        ax.errorbar([x], [y], yerr=[std] if not math.isnan(std) else None, fmt="o",
                    markersize=7, markerfacecolor=color if i in on_front else "white", markeredgecolor=color,
                    ecolor=color, elinewidth=0.8, capsize=2, zorder=3)
        ax.annotate(variant_label(r, several_bases), (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
    fx = [points[i][0] for i in front]
    fy = [points[i][1] for i in front]
    ax.plot(fx, fy, drawstyle="steps-post", color=GAIN, linewidth=1.2, zorder=2, label="Pareto front")
    ax.set_xlabel("inference latency (ms per image, batch 1)")
    ax.set_ylabel("mAP (points, mean ± std over seeds)")
    ax.grid(linestyle=":", linewidth=0.6)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{title}: mAP against inference cost (filled: on the Pareto front)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_pareto(table: pd.DataFrame, path: Path, title: str) -> Path:
    return save_png(pareto_figure(table, title), path)


def per_class_figure(deltas: pd.DataFrame, title: str) -> Figure:
    """A heatmap of the per-class AP change (points) of each variant (rows) against its baseline, per class
    (columns): green a gain, red a loss, white no change or missing; values written in when the grid is small."""
    n_rows, n_cols = deltas.shape
    if not n_rows or not n_cols or not deltas.notna().any().any():
        fig = Figure(figsize=(7, 3))
        _empty(fig.add_subplot(), "no per-class AP to compare (no variant and baseline with per-class AP)")
        fig.suptitle(f"{title}: per-class AP change", fontsize=10)
        return fig
    width = min(max(6.0, 0.55 * n_cols + 3), 30.0)
    height = min(max(2.5, 0.4 * n_rows + 2), 30.0)
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    data = deltas.to_numpy(dtype=float)
    limit = max(float(np.nanmax(np.abs(data))), 0.1)
    image = ax.imshow(np.ma.masked_invalid(data), cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(n_cols), [str(c) for c in deltas.columns], rotation=45 if n_cols > 6 else 0,
                  ha="right" if n_cols > 6 else "center", fontsize=8)
    ax.set_yticks(range(n_rows), [str(i) for i in deltas.index], fontsize=8)
    if n_rows * n_cols <= 300:
        for i in range(n_rows):
            for j in range(n_cols):
                v = data[i, j]
                ax.text(j, i, NA if math.isnan(v) else fmt_delta(v), ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="ΔAP vs baseline (points)")
    ax.set_title(f"{title}: per-class AP change against the baseline (mean over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_per_class(deltas: pd.DataFrame, path: Path, title: str) -> Path:
    return save_png(per_class_figure(deltas, title), path)
