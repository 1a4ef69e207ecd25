"""The report's PNG plots, drawn with matplotlib's Agg canvas (no display, no pyplot state, no torch):
delta_map.png (a forest plot of ΔmAP with its 95% CI, by base), curves.png (loss and val mAP per epoch, by
base), pareto.png (mAP against FLOPs, else params, else latency with its spread) and per_class.png (per-class
AP change). Each ``*_figure`` function builds a Figure (the tests measure it), ``plot_*`` saves it.

Every figure grows with what it shows (rows of variants, classes, bases) instead of squeezing it, and is
laid out by matplotlib's constrained layout so that no label leaves the canvas.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import Bbox

from ablate.report.stats import pareto_front
from ablate.report.table import NA, fmt_bounds, fmt_delta, fmt_points, fmt_verdict, short_name, variant_label
from ablate.results import atomic_write

GAIN = "#2ca02c"
LOSS = "#d62728"
NEUTRAL = "#8c8c8c"
BAND = "#e6e6e6"  # the no-effect margin
DPI = 120
FONT = 8  # labels and numbers in the plots
TITLE_FONT = 10
ROW_IN = 0.28  # inches per row of the forest plot and the heat map: the figure grows, rows never squeeze
CELL_IN = 0.6  # inches per class column of the heat map
CHAR_IN = 0.072  # about one FONT-point character, to size label columns before drawing
# An axis (or colour scale) covers every value unless the largest few stand OUTLIER_GAP times beyond the
# rest and are at most OUTLIER_SHARE of them (a collapsed run's −47 beside changes of ±3): those are drawn at
# the edge with an arrow (the colour saturates), and their numbers written beside them.
OUTLIER_GAP = 4.0
OUTLIER_SHARE = 0.25
# Verdict -> (colour, marker, filled, legend label): colour only for a decided change.
VERDICTS = {
    "helped": (GAIN, "o", True, "helped"),
    "hurt": (LOSS, "o", True, "hurt"),
    "no_effect": (NEUTRAL, "D", True, "no effect (within the margin)"),
    "undecided": (NEUTRAL, "o", False, "undecided"),
}


def save_png(fig: Figure, path: Path) -> Path:
    """Save a figure atomically (results.atomic_write)."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI), binary=True)


def new_figure(width: float, height: float) -> Figure:
    """A figure with constrained layout and an Agg canvas (its renderer measures text before saving)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def axis_reach(centres: Sequence[float], extents: Sequence[float] | None = None) -> float:
    """The largest magnitude an axis shows: every item's extent (``extents``, by default its centre), but
    for the items whose centre stands OUTLIER_GAP times beyond all smaller centres, when they are at most
    OUTLIER_SHARE of the items; at least 1 point."""
    extents = centres if extents is None else extents
    order = sorted((i for i in range(len(centres)) if not math.isnan(centres[i])), key=lambda i: centres[i])
    kept = len(order)
    for k in range(len(order) - 1, 0, -1):
        if len(order) - k > OUTLIER_SHARE * len(order):
            break
        if centres[order[k]] > OUTLIER_GAP * max(centres[order[k - 1]], 1.0):
            kept = k
            break
    return max([extents[i] for i in order[:kept]] + [1.0])


def set_title(fig: Figure, text: str) -> None:
    """The figure's title, wrapped to its width (each line of ``text`` on its own)."""
    chars = max(int(fig.get_figwidth() * 72 / (TITLE_FONT * 0.62)), 20)
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in text.split("\n")), fontsize=TITLE_FONT)


def empty_figure(fig: Figure, message: str, title: str) -> Figure:
    """The figure of a plot with nothing to draw: the message, axes off, the title."""
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()
    set_title(fig, title)
    return fig


def _verdict(row: Mapping) -> str:
    """The row's verdict as the plots colour it: an adaptive sweep's "open" (stopped before deciding) is
    undecided."""
    return row["verdict"] if row["verdict"] in VERDICTS else "undecided"


# ----------------------------------------------------------------------------------------------
# delta_map.png: the forest plot


def forest_rows(table: pd.DataFrame) -> list[dict]:
    """The forest plot's rows from the top: per base (table order), a header row (its name and baseline mAP,
    left out when the table holds one base) and its variants with a ΔmAP. Each row: y, label, header (bool),
    and for a variant its table row under "rec"."""
    several = table["base_hash"].nunique() > 1
    rows: list[dict] = []
    for base in table["base_hash"].drop_duplicates():
        block = table[table["base_hash"] == base]
        variants = block[~block["baseline"] & block["delta_mAP"].notna()].to_dict("records")
        if not variants:
            continue
        if several:
            baseline = block[block["baseline"]]
            mAP = f" (baseline {fmt_points(float(baseline['mAP'].iloc[0]))} mAP)" if len(baseline) else ""
            rows.append({"label": f"{block['base'].iloc[0] or base[:8]}{mAP}", "header": True})
        rows += [{"label": short_name(r) if several else variant_label(r, False), "header": False, "rec": r}
                 for r in variants]
    for y, row in enumerate(rows):
        row["y"] = y
    return rows


def _value_text(rec: Mapping) -> str:
    """The number beside a row: ΔmAP and its 95% CI, or why there is no CI; a collapse flagged."""
    if math.isnan(rec["delta_ci_half"]):
        text = f"{fmt_delta(rec['delta_mAP'])} (1 seed)"
    else:
        text = f"{fmt_delta(rec['delta_mAP'])} {fmt_bounds(rec['delta_ci_low'], rec['delta_ci_high'])}"
    if rec["health"]:
        text += " \u26a0 collapsed"
    elif rec["baseline_unhealthy"]:
        text += " \u26a0 baseline collapsed"
    return text


def delta_map_figure(table: pd.DataFrame, title: str) -> Figure:
    """A forest plot of ΔmAP (points) per variant against its baseline, grouped under each base's name:
    the change as a marker with its 95% CI as a line, coloured only when the verdict (after Holm's
    correction) is helped or hurt, a diamond for no effect, hollow when undecided; a vertical line at 0
    and, per base, the grey band of its no-effect margin; the numbers and verdicts in columns on the right.
    Changes far beyond the rest (axis_reach) end at the axis edge with an arrow."""
    rows = forest_rows(table)
    variants = [r for r in rows if not r["header"]]
    heading = f"{title}: ΔmAP against " + ("each base's baseline" if table["base_hash"].nunique() > 1 else
                                             "the baseline")
    if not variants:
        fig = new_figure(7, 2.5)
        return empty_figure(fig, "no ΔmAP to plot: no variant with an ok baseline run", heading)
    label_chars = max(len(r["label"]) for r in rows)
    value_chars = max(len(_value_text(r["rec"])) for r in variants)
    width = max(7.0, 4.2 + CHAR_IN * (label_chars + value_chars + 12))
    fig = new_figure(width, ROW_IN * len(rows) + 2.3)
    ax = fig.add_subplot()
    reach = _forest_axis(ax, rows)
    for r in variants:
        _draw_interval(ax, r["y"], r["rec"], reach)
    _forest_columns(ax, variants, value_chars)
    beyond = any(abs(r["rec"]["delta_mAP"]) > reach for r in variants)
    ax.set_yticks([r["y"] for r in rows], [r["label"] for r in rows], fontsize=FONT)
    for tick, r in zip(ax.get_yticklabels(), rows):
        tick.set_fontweight("bold" if r["header"] else "normal")
    ax.tick_params(axis="y", length=0)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("ΔmAP against the baseline (COCO mAP@[.5:.95], points)", fontsize=FONT)
    ax.tick_params(axis="x", labelsize=FONT)
    set_title(fig, heading)
    _forest_legend(fig, rows, beyond)
    return fig


def _forest_axis(ax, rows: Sequence[dict]) -> float:
    """The x range (every CI end and margin within axis_reach, 0 inside), the zero line and each base's
    margin band; returns the reach beyond which an interval is cut with an arrow."""
    recs = [r["rec"] for r in rows if not r["header"]]
    ends = [[v for v in (rec["delta_mAP"], rec["delta_ci_low"], rec["delta_ci_high"]) if not math.isnan(v)]
            for rec in recs]
    margins = [m for _, _, m in _bands(rows)]
    reach = max([axis_reach([abs(rec["delta_mAP"]) for rec in recs], [max(map(abs, e)) for e in ends])]
                + margins)
    low = max(min([v for e in ends for v in e] + [0.0] + [-m for m in margins]), -reach)
    high = min(max([v for e in ends for v in e] + [0.0] + margins), reach)
    pad = 0.06 * max(high - low, 1.0)
    ax.set_xlim(low - pad, high + pad)
    ax.axvline(0, color="black", linewidth=0.8, zorder=1)
    ax.grid(axis="x", linestyle=":", linewidth=0.6, zorder=0)
    for start, stop, margin in _bands(rows):
        ax.fill_betweenx([start - 0.5, stop + 0.5], -margin, margin, color=BAND, linewidth=0, zorder=0)
    for r in rows[1:]:
        if r["header"]:  # a rule between bases
            ax.axhline(r["y"] - 0.5, color=NEUTRAL, linewidth=0.5, zorder=1)
    return reach


def _bands(rows: Sequence[dict]) -> list[tuple[int, int, float]]:
    """(first y, last y, margin) of each base's variant rows with a no-effect margin (the widest of its
    variants': the one the report states)."""
    blocks: dict[str, list[dict]] = {}
    for r in rows:
        if not r["header"]:
            blocks.setdefault(r["rec"]["base_hash"], []).append(r)
    bands = []
    for block in blocks.values():
        margins = [r["rec"]["margin"] for r in block if not math.isnan(r["rec"]["margin"])]
        if margins:
            bands.append((block[0]["y"], block[-1]["y"], max(margins)))
    return bands


def _draw_interval(ax, y: float, rec: Mapping, reach: float) -> None:
    """One variant: its CI line (cut at ±reach with an arrow head) and its marker (at the edge, pointing
    out, when the change itself lies beyond)."""
    color, marker, filled, _ = VERDICTS[_verdict(rec)]
    mean, low, high = rec["delta_mAP"], rec["delta_ci_low"], rec["delta_ci_high"]
    if not math.isnan(low):
        ax.plot([min(max(low, -reach), reach), max(min(high, reach), -reach)], [y, y], color=color, linewidth=1.6,
                zorder=2, solid_capstyle="butt")
        for end, edge, head in ((low, -reach, "<"), (high, reach, ">")):
            if abs(end) > reach and (end > 0) == (edge > 0):
                ax.plot([edge], [y], marker=head, color=color, markersize=6, zorder=3)
    if abs(mean) > reach:  # the change itself beyond the axis: an arrow at the edge, the number says how far
        ax.plot([math.copysign(reach, mean)], [y], marker="<" if mean < 0 else ">", color=color, markersize=9,
                markeredgecolor="black", markeredgewidth=0.6, zorder=4)
        return
    ax.plot([mean], [y], marker=marker, markersize=6.5, color=color, markerfacecolor=color if filled else "white",
            markeredgecolor=color, markeredgewidth=1.3, zorder=4)


def _forest_columns(ax, variants: Sequence[dict], value_chars: int) -> None:
    """The numbers (ΔmAP [95% CI]) and the verdicts in two columns right of the plot, with their headers."""
    at = ax.get_yaxis_transform()  # x in axes fractions, y in data
    verdict_x = 10 + FONT * 0.62 * value_chars + 8  # points right of the axes
    for r in variants:
        rec = r["rec"]
        color = VERDICTS[_verdict(rec)][0]
        ax.annotate(_value_text(rec), (1, r["y"]), xycoords=at, xytext=(10, 0), textcoords="offset points",
                    va="center", fontsize=FONT)
        ax.annotate(fmt_verdict(rec["verdict"], rec["margin"]), (1, r["y"]), xycoords=at,
                    xytext=(verdict_x, 0), textcoords="offset points", va="center", fontsize=FONT, color=color,
                    fontweight="bold" if color != NEUTRAL else "normal")
    for text, x in (("ΔmAP [95% CI]", 10), ("verdict (Holm)", verdict_x)):
        ax.annotate(text, (1, 1), xycoords="axes fraction", xytext=(x, 4), textcoords="offset points",
                    va="bottom", fontsize=FONT, fontweight="bold")


def _forest_legend(fig: Figure, rows: Sequence[dict], beyond: bool) -> None:
    """The marker key, the band's when a margin is drawn and the arrow's when a change lies beyond the axis,
    under the plot."""
    used = {_verdict(r["rec"]) for r in rows if not r["header"]}
    handles = [Line2D([], [], color=c, marker=m, markerfacecolor=c if f else "white", linewidth=1.6, label=lab)
               for v, (c, m, f, lab) in VERDICTS.items() if v in used]
    if _bands(rows):
        handles.append(Patch(color=BAND, label="no-effect margin"))
    if beyond:
        handles.append(Line2D([], [], color=NEUTRAL, marker="<", markeredgecolor="black", markeredgewidth=0.6,
                              linestyle="", markersize=9, label="beyond the axis (see its number)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=FONT,
               frameon=False, handlelength=2.2)


def plot_delta_map(table: pd.DataFrame, path: Path, title: str) -> Path:
    return save_png(delta_map_figure(table, title), path)


# ----------------------------------------------------------------------------------------------
# curves.png


LEGEND_ROWS = 24  # names in one column of a curves legend


def curves_figure(curves: Mapping[str, Mapping[str, pd.DataFrame]], title: str) -> Figure:
    """Per base (one row of panels each, under its name): the training loss per epoch and, where recorded,
    val mAP per epoch (points) of every variant, both the mean over its seeds; a variant keeps its colour
    in every row, the baseline is black."""
    heading = f"{title}: training curves (mean over seeds)"
    bases = {b: c for b, c in curves.items() if c}
    if not bases:
        return empty_figure(new_figure(7, 2.5), "no training curve in the records", heading)
    has_val = any(c["val_mAP"].notna().any() for b in bases.values() for c in b.values())
    names = list(dict.fromkeys(n for b in bases.values() for n in b if n != "baseline"))
    colors = dict(zip(names, _colors(len(names))), baseline="black")
    longest = max(len(n) for b in bases.values() for n in b)
    columns = {b: math.ceil(len(c) / LEGEND_ROWS) for b, c in bases.items()}  # each legend's columns
    heights = [max(3.0, 0.19 * math.ceil(len(c) / columns[b]) + 1.4) for b, c in bases.items()]
    panels = 2 if has_val else 1
    fig = new_figure(5.0 * panels + max(columns.values()) * (CHAR_IN * longest + 0.6), sum(heights) + 0.6)
    grid = fig.add_gridspec(len(bases), panels, height_ratios=heights)
    for i, (base, by_variant) in enumerate(bases.items()):
        axes = [fig.add_subplot(grid[i, j]) for j in range(panels)]
        _curve_panels(axes, base, by_variant, colors)
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=FONT - 1, frameon=False,
                        ncol=columns[base])
    set_title(fig, heading)
    return fig


def _curve_panels(axes, base: str, by_variant: Mapping[str, pd.DataFrame], colors: Mapping[str, object]) -> None:
    """One base's loss panel and, when there are two axes, its val mAP panel (markers at the evaluated
    epochs, joined); says so when every variant was evaluated once only."""
    for name, curve in by_variant.items():
        style = dict(marker="o", markersize=3, linewidth=1.2, color=colors[name], label=name)
        loss = curve["loss"].dropna()
        axes[0].plot(loss.index, loss.values, **style)
        if len(axes) > 1:
            val = curve["val_mAP"].dropna()
            axes[1].plot(val.index, val.values, **{**style, "markersize": 5})
    prefix = f"{base}: " if base else ""
    axes[0].set_title(f"{prefix}training loss per epoch", fontsize=FONT + 1)
    axes[0].set_ylabel("loss", fontsize=FONT)
    if len(axes) > 1:
        axes[1].set_title(f"{prefix}val mAP per epoch (points)", fontsize=FONT + 1)
        axes[1].set_ylabel("mAP (points)", fontsize=FONT)
        if all(c["val_mAP"].notna().sum() <= 1 for c in by_variant.values()):
            axes[1].text(0.02, 0.02, "evaluated once, after the last epoch\n(train.eval_every evaluates more often)",
                         transform=axes[1].transAxes, fontsize=FONT - 1, color=NEUTRAL, va="bottom")
    epochs = sorted({int(e) for c in by_variant.values() for e in c.index})
    for ax in axes:
        ax.grid(linestyle=":", linewidth=0.6)
        ax.set_xlabel("epoch", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        if epochs and len(epochs) <= 20:  # whole epochs on the axis, also for a one-epoch run
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)


def _colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_curves(curves: Mapping[str, Mapping[str, pd.DataFrame]], path: Path, title: str) -> Path:
    return save_png(curves_figure(curves, title), path)


# ----------------------------------------------------------------------------------------------
# pareto.png

# Costs in order of preference: (column, its spread over seeds or None, axis label). FLOPs and params are
# exact; latency at these runs' scale is mostly noise (warmup, its baseline's model, measured ms faster), so
# it is used only when neither is recorded, and then with its spread over seeds.
COSTS = (
    ("flops_G", None, "FLOPs per image (G)"),
    ("params_M", None, "parameters (M)"),
    ("inference_ms", "inference_ms_std", "inference latency (ms per image, batch 1; ± std over seeds)"),
)


def pareto_cost(table: pd.DataFrame) -> tuple[str, str | None, str] | None:
    """The first of COSTS that every variant with an mAP has; None when none is."""
    rows = table[table["mAP"].notna()]
    for cost in COSTS:
        if len(rows) and rows[cost[0]].notna().all():
            return cost
    return None


def pareto_figure(table: pd.DataFrame, title: str) -> Figure:
    """mAP (mean ± std over seeds) against the cost (pareto_cost) per variant, one colour per base (the
    baseline a square); the Pareto front (no variant both cheaper and better) joined and filled, the others
    hollow; points of one cost that would hide each other spread sideways (dodge); each point named where
    its name finds room (label_points), the others counted in the title."""
    cost = pareto_cost(table)
    heading = f"{title}: mAP against {cost[2].split(' (')[0] if cost else 'inference cost'}"
    if cost is None:
        return empty_figure(new_figure(7.5, 3), "no variant with both an mAP and an inference cost", heading)
    column, spread, label = cost
    recs = table[table["mAP"].notna()].to_dict("records")
    points = [(float(r[column]), float(r["mAP"])) for r in recs]
    on_front = set(pareto_front(points))
    bases = list(dict.fromkeys(r["base_hash"] for r in recs))
    colors = dict(zip(bases, _colors(len(bases))))
    fig = new_figure(8.5, 6)
    ax = fig.add_subplot()
    _pareto_axes(ax, points, label)
    _pareto_legend(fig, recs, colors)
    subtitle = "filled and joined: the Pareto front (no variant both cheaper and better)"
    set_title(fig, f"{heading}\n{subtitle}")
    fig.canvas.draw()  # the layout, so that data map to their final pixels
    shown = dodge(ax, points)
    for i, (r, (x, y)) in enumerate(zip(recs, shown)):
        color = colors[r["base_hash"]]
        xerr = r[spread] if spread and not math.isnan(r[spread]) else None
        ax.errorbar([x], [y], yerr=None if math.isnan(r["mAP_std"]) else [r["mAP_std"]], xerr=xerr,
                    fmt="s" if r["baseline"] else "o", markersize=7, markeredgecolor=color, ecolor=color,
                    markerfacecolor=color if i in on_front else "white", elinewidth=0.8, capsize=2, zorder=3)
    front = [shown[i] for i in sorted(on_front, key=lambda i: points[i])]
    steps = [c for a, b in zip(front, front[1:]) for c in ((a, (b[0], a[1])), ((b[0], a[1]), b))]
    ax.plot([x for x, _ in front], [y for _, y in front], drawstyle="steps-post", color="black", linewidth=1.0,
            zorder=2)
    bars = [((x, y - r["mAP_std"]), (x, y + r["mAP_std"])) for r, (x, y) in zip(recs, shown)
            if not math.isnan(r["mAP_std"])]
    bars += [((x - r[spread], y), (x + r[spread], y)) for r, (x, y) in zip(recs, shown)
             if spread and not math.isnan(r[spread])]
    names = [short_name(r) if len(bases) > 1 else variant_label(r, False) for r in recs]
    added, named = label_points(ax, shown, names, steps + bars)
    if named < len(names):  # say so in the title, and name the points again in the layout that makes
        for artist in added:
            artist.remove()
        set_title(fig, f"{heading}\n{subtitle}; {len(names) - named} of {len(names)} unnamed (no room)")
        fig.set_layout_engine("constrained")
        label_points(ax, shown, names, steps + bars)
    return fig


# Markers closer than this (pixels) at one cost are spread sideways this far apart.
DODGE_PX = 9.0


def dodge(ax, points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Where to draw each point: as it is, but for points of one cost whose markers would overlap (under
    DODGE_PX apart on screen), spread sideways DODGE_PX apart around their cost, so that each shows (a
    bag of freebies has one cost per base)."""
    pixels = [ax.transData.transform(p) for p in points]
    back = ax.transData.inverted()
    shown = list(points)
    by_cost: dict[float, list[int]] = {}
    for i, (x, _) in enumerate(points):
        by_cost.setdefault(x, []).append(i)
    for same in by_cost.values():
        same.sort(key=lambda i: pixels[i][1])
        groups = [[same[0]]]
        for i in same[1:]:
            if pixels[i][1] - pixels[groups[-1][-1]][1] < DODGE_PX:
                groups[-1].append(i)
            else:
                groups.append([i])
        for group in groups:
            for k, i in enumerate(group):
                x = pixels[i][0] + (k - (len(group) - 1) / 2) * DODGE_PX
                shown[i] = (float(back.transform((x, pixels[i][1]))[0]), points[i][1])
    return shown


def _pareto_axes(ax, points: Sequence[tuple[float, float]], label: str) -> None:
    """Axis labels, grid, and x limits with room right of the points for their names."""
    xs = [x for x, _ in points]
    span = max(xs) - min(xs) or max(abs(max(xs)), 1.0)
    ax.set_xlim(min(xs) - 0.12 * span, max(xs) + 0.45 * span)
    ys = [y for _, y in points]
    yspan = max(max(ys) - min(ys), 1.0)
    ax.set_ylim(min(ys) - 0.08 * yspan, max(ys) + 0.08 * yspan)
    ax.set_xlabel(label, fontsize=FONT)
    ax.set_ylabel("mAP (points, mean ± std over seeds)", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.grid(linestyle=":", linewidth=0.6)


def _pareto_legend(fig: Figure, recs: Sequence[Mapping], colors: Mapping[str, object]) -> None:
    """Which colour is which base (when there are several), and the baseline's square."""
    handles = []
    if len(colors) > 1:
        names = {r["base_hash"]: r["base"] or r["base_hash"][:8] for r in recs}
        handles = [Line2D([], [], color=c, marker="o", linestyle="", label=names[b]) for b, c in colors.items()]
    handles.append(Line2D([], [], color="black", marker="s", markerfacecolor="white", linestyle="",
                          label="baseline"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=FONT, frameon=False)


# Where a name may go around its point, in points: right, left, then further up or down on either side,
# joined to the point by a leader line.
LABEL_OFFSETS = [(7, 0), (-7, 0)] + [(side * 16, s * k * 9) for k in range(1, 25) for s in (1, -1) for side in (1, -1)]


def label_points(ax, points: Sequence[tuple[float, float]], names: Sequence[str],
                 lines: Sequence[tuple[tuple[float, float], tuple[float, float]]] = ()) -> tuple[list, int]:
    """Each point's name at the first offset (LABEL_OFFSETS) where it overlaps no name placed before it, no
    point and none of the straight ``lines`` (data coordinates: the front, error bars), inside the axes;
    joined to its point by a thin line when moved off it. Points are named from the top down, and the
    figure's layout is kept from then on (a name must stay where it was checked). Returns the artists
    added and how many names found room."""
    fig = ax.figure
    fig.canvas.draw()  # the layout, so that data map to their final pixels
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = [Bbox.from_extents(x - 5, y - 5, x + 5, y + 5) for x, y in (ax.transData.transform(p) for p in points)]
    for a, b in lines:  # horizontal or vertical: their box is the line, 1 pixel wider each side
        (x0, y0), (x1, y1) = ax.transData.transform(a), ax.transData.transform(b)
        taken.append(Bbox.from_extents(min(x0, x1) - 1, min(y0, y1) - 1, max(x0, x1) + 1, max(y0, y1) + 1))
    added, named = [], 0
    for i in sorted(range(len(points)), key=lambda i: -points[i][1]):
        for dx, dy in LABEL_OFFSETS:
            text = ax.annotate(names[i], points[i], xytext=(dx, dy), textcoords="offset points", fontsize=FONT - 1,
                               ha="left" if dx > 0 else "right", va="center")
            box = text.get_window_extent(renderer)
            if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) and \
                    not any(box.overlaps(t) for t in taken):
                taken.append(box)
                added.append(text)
                named += 1
                if dy:  # moved off its point: a leader line back to it
                    added.append(ax.annotate("", points[i], xytext=(dx, dy), textcoords="offset points",
                                             arrowprops=dict(arrowstyle="-", color=NEUTRAL, linewidth=0.5,
                                                             shrinkA=0, shrinkB=4)))
                break
            text.remove()
    return added, named


def plot_pareto(table: pd.DataFrame, path: Path, title: str) -> Path:
    return save_png(pareto_figure(table, title), path)


# ----------------------------------------------------------------------------------------------
# per_class.png


def per_class_figure(deltas: pd.DataFrame, title: str) -> Figure:
    """A heat map of the per-class AP change (points) of each variant (rows) against its baseline, per class
    (columns): green a gain, red a loss, white no change or missing. Cells keep their size (ROW_IN by
    CELL_IN) whatever their number, so the figure grows; each holds its number where it fits. The colour
    scale stops at axis_reach: a collapse's −50 saturates instead of paling every other cell."""
    heading = f"{title}: per-class AP change against the baseline (mean over seeds)"
    n_rows, n_cols = deltas.shape
    if not n_rows or not n_cols or not deltas.notna().any().any():
        return empty_figure(new_figure(7, 2.5), "no per-class AP to compare (no variant and baseline with per-class AP)",
                      heading)
    labels = [str(i) for i in deltas.index]
    classes = [str(c) for c in deltas.columns]
    rotate = n_cols > 6 or max(len(c) for c in classes) * CHAR_IN > CELL_IN
    width = max(6.5, CHAR_IN * max(len(s) for s in labels) + CELL_IN * n_cols + 1.6)
    height = max(ROW_IN * n_rows + (CHAR_IN * max(len(c) for c in classes) * 0.75 if rotate else 0.3) + 1.2, 2.5)
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    data = deltas.to_numpy(dtype=float)
    limit = axis_reach(np.abs(data[~np.isnan(data)]).tolist())
    norm = Normalize(-limit, limit)
    image = ax.imshow(np.ma.masked_invalid(data), cmap="RdYlGn", norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_cols), classes, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                  rotation_mode="anchor", fontsize=FONT)
    ax.set_yticks(range(n_rows), labels, fontsize=FONT)
    ax.tick_params(length=0)
    _cell_numbers(ax, data, norm)
    clipped = bool(np.nanmax(np.abs(data)) > limit)
    bar = fig.colorbar(image, ax=ax, extend="both" if clipped else "neither", fraction=0.9 / max(width, 1),
                       pad=0.02, aspect=max(10, 2 * n_rows))
    bar.set_label("ΔAP (points)", fontsize=FONT)
    bar.ax.tick_params(labelsize=FONT)
    set_title(fig, heading)
    return fig


def _cell_numbers(ax, data: np.ndarray, norm: Normalize) -> None:
    """Each cell's number, in white on dark cells. A cell is CELL_IN wide whatever the grid, room for a
    number like −12.3 at FONT − 1 points."""
    cmap = colormaps["RdYlGn"]
    for (i, j), v in np.ndenumerate(data):
        r, g, b, _ = cmap(norm(v)) if not math.isnan(v) else (1, 1, 1, 1)
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.45
        ax.text(j, i, NA if math.isnan(v) else fmt_delta(v), ha="center", va="center", fontsize=FONT - 1,
                color="white" if dark else "black")


def plot_per_class(deltas: pd.DataFrame, path: Path, title: str) -> Path:
    return save_png(per_class_figure(deltas, title), path)
