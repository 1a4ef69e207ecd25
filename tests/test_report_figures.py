"""The report's figures as a reader sees them: every text inside the canvas, sizes that grow with what they
show, labels that do not collide, colour only where a verdict is decided; on the committed bag-of-tricks
records and on synthetic tables of 3, 10 and 60 variants."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from PIL import Image

from ablate.report import build_report, records_table
from ablate.report.plots import (BAND, DPI, GAIN, LOSS, NEUTRAL, curves_figure, delta_map_figure, pareto_figure,
                                 per_class_figure)
from ablate.report.table import epoch_curves, per_class_deltas
from ablate.results import RunRecord, find_records

REPO = Path(__file__).resolve().parents[1]
BAG = REPO / "reports" / "bag_of_tricks_3seed" / "runs"
CLASSES = [f"class_{c:02d}" for c in range(12)]
BASES = ("fcos", "faster_rcnn", "retinanet")
FIGURES = ("delta_map.png", "curves.png", "pareto.png", "per_class.png")


def drawn_texts(fig: Figure) -> list[Text]:
    """Every Text the figure draws: visible, not empty, and for a tick label, its tick within the axis's
    view (matplotlib keeps labels of ticks outside it, undrawn)."""
    fig.canvas.draw()
    undrawn = set()
    for ax in fig.axes:
        for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            low, high = sorted(limits)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in undrawn]


def outside(fig: Figure) -> list[str]:
    """The texts whose extent leaves the figure's canvas (1 pixel of slack), with where they are."""
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    bad = []
    for t in drawn_texts(fig):
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            bad.append(f"{t.get_text()!r} at {e.bounds} in {box.bounds}")
    tight = fig.get_tightbbox(renderer)  # in inches: everything drawn, within the canvas
    if tight.x0 < -0.01 or tight.y0 < -0.01 or tight.x1 > fig.get_figwidth() + 0.01 or \
            tight.y1 > fig.get_figheight() + 0.01:
        bad.append(f"tight bbox {tight.bounds} beyond {fig.get_size_inches()}")
    return bad


def collisions(fig: Figure, texts: list[Text]) -> list[tuple[str, str]]:
    """The pairs of these texts whose extents overlap."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for (a, x), (b, y) in itertools.combinations(boxes, 2) if x.overlaps(y)]


def pixels(fig: Figure) -> tuple[int, int]:
    w, h = fig.get_size_inches() * DPI
    return round(w), round(h)


# ----------------------------------------------------------------------------------------------
# synthetic sweeps


def record(base: str, trick: str | None, seed: int, points: float, per_class: dict | None = None) -> RunRecord:
    """A run of a sweep with named baselines: variant ``<base>/<trick>`` (``<base>/baseline``), mAP in points,
    val mAP after epochs 3, 6 and 9 (the last one its mAP)."""
    tricks = [trick] if trick else []
    curve = [{"epoch": e, "epoch_loss": 2.0 / e + 0.01 * seed, **({"val_mAP": points / 100 * e / 9} if e % 3 == 0
                                                                 else {})} for e in range(1, 10)]
    return RunRecord(
        status="ok", variant=f"{base}/{trick or 'baseline'}", sweep="synthetic", tricks=tricks, seed=seed,
        config={"seed": seed, "model": {"name": base}, "tricks": {t: {} for t in tricks}},
        config_hash=f"{base}-{trick}-{seed}", base_hash=f"hash-{base}",
        metrics={"mAP": points / 100, "AP50": points / 100 + 0.2},
        per_class_ap=per_class or {}, curve=curve, timings={"train_s": 100.0},
        inference_ms_per_image=10.0 + seed, params=1_000_000 * (1 + BASES.index(base)),
        flops=400_000_000 * (1 + BASES.index(base)), device="cpu", created_at=f"2025-01-01T00:00:{seed:02d}")


def synthetic(n_variants: int, seed: int = 0) -> list[RunRecord]:
    """n_variants tricks spread over three bases, 3 seeds each, with changes from −50 (a collapse) to +5,
    some clearly decided, some not, and per-class AP over 12 classes."""
    rng = np.random.default_rng(seed)
    records = []
    for b, base in enumerate(BASES):
        names = [f"trick_{i:02d}" for i in range(n_variants) if i % len(BASES) == b]
        effects = {None: 0.0, **{n: float(rng.choice([-50.0, -8.0, -1.0, 0.0, 0.3, 2.0, 5.0])) for n in names}}
        for trick, effect in effects.items():
            for s in range(3):
                noise = 0.0 if trick is None else float(rng.normal(0, 0.4 if abs(effect) < 10 else 3.0))
                points = max(40.0 + 10 * b + 0.5 * s + effect + noise, 0.5)
                per_class = {c: max(points + rng.normal(0, 3), 0.0) / 100 for c in CLASSES}
                records.append(record(base, trick, s, points, per_class))
    return records


@pytest.fixture(scope="module")
def bag_report(tmp_path_factory) -> Path:
    """The report of the committed bag-of-tricks records, as `ablate report` writes it."""
    out = tmp_path_factory.mktemp("bag")
    build_report([BAG], out, title="bag_of_tricks")
    return out


@pytest.fixture(scope="module")
def bag() -> tuple[list[RunRecord], object]:
    found, _ = find_records(BAG)
    records = [r for _, r in found]
    return records, records_table(records)


def bag_figures(bag) -> dict[str, Figure]:
    records, table = bag
    return {"delta_map.png": delta_map_figure(table, "bag_of_tricks"),
            "curves.png": curves_figure(epoch_curves(records, table), "bag_of_tricks"),
            "pareto.png": pareto_figure(table, "bag_of_tricks"),
            "per_class.png": per_class_figure(per_class_deltas(records, table), "bag_of_tricks")}


# ----------------------------------------------------------------------------------------------
# the committed bag-of-tricks records


def test_the_bag_reports_figures_keep_every_text_on_a_canvas_of_sensible_size(bag, bag_report):
    for name, fig in bag_figures(bag).items():
        assert outside(fig) == [], name
        width, height = pixels(fig)
        assert 700 <= width <= 2000 and 400 <= height <= 1600, (name, width, height)
        with Image.open(bag_report / name) as png:  # the PNG written is that figure
            assert abs(png.size[0] - width) <= 1 and abs(png.size[1] - height) <= 1, (name, png.size)


def test_the_bag_figures_name_bases_as_the_sweep_file_does(bag):
    for name, fig in bag_figures(bag).items():
        texts = " ".join(t.get_text() for t in drawn_texts(fig))
        assert "model=" not in texts and "anchor_scale" not in texts, name
    forest = bag_figures(bag)["delta_map.png"]
    (ax, *_) = forest.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # One header per base under its name in sweeps/bag_of_tricks.yaml, then the tricks' own names.
    assert labels[:2] == ["fcos (baseline 58.8 mAP)", "warmup"]
    assert "faster_rcnn (baseline 78.4 mAP)" in labels and "retinanet (baseline 1.3 mAP)" in labels
    assert labels.count("ghm") == 2 and "fcos/ghm" not in labels  # under fcos and under retinanet
    # The value column never lies over a label, nor one value over another.
    assert collisions(forest, drawn_texts(forest)) == []


def marker_colors(fig: Figure) -> dict[int, tuple[str, bool]]:
    """Row (y) -> (marker colour, filled) of the forest plot's change markers."""
    ax = fig.axes[0]
    out = {}
    for line in ax.get_lines():
        if line.get_marker() in ("o", "D", "<", ">") and len(line.get_ydata()) == 1:
            y = int(round(float(line.get_ydata()[0])))
            face = line.get_markerfacecolor()
            out[y] = (line.get_color(), face != "white" and to_rgba(face) != to_rgba("white"))
    return out


def test_the_forest_plot_colours_only_decided_verdicts(bag):
    records, table = bag
    fig = delta_map_figure(table, "bag")
    colours = marker_colors(fig)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    fcos = {name: colours[ticks.index(name)] for name in ("warmup", "cutmix", "mixup", "mish", "dropblock")}
    assert fcos["warmup"] == (GAIN, True)  # helped
    assert fcos["cutmix"] == (LOSS, True)  # hurt
    assert fcos["mish"] == (NEUTRAL, True)  # no effect: grey, a filled diamond
    assert fcos["mixup"] == (NEUTRAL, False) and fcos["dropblock"] == (NEUTRAL, False)  # undecided: hollow grey
    verdicts = dict(zip(table["variant"], table["verdict"]))
    assert verdicts["fcos/dropblock"] == "undecided" and verdicts["fcos/mish"] == "no_effect"
    # fcos/ghm's −46.6 lies far beyond every other change: an arrow at the axis edge, its number on the right.
    ghm = ticks.index("ghm")
    assert colours[ghm][0] == LOSS
    arrow = next(line for line in fig.axes[0].get_lines() if line.get_marker() == "<" and line.get_markersize() > 8)
    assert float(arrow.get_xdata()[0]) == pytest.approx(fig.axes[0].get_xlim()[0], abs=1.5)
    assert -15 < fig.axes[0].get_xlim()[0] < -9  # cutmix's −9.5 shown, not −60
    assert "−46.6 [−60.0, −33.2]" in [t.get_text() for t in fig.axes[0].texts]
    # Each base's no-effect margin, a grey band over its rows: ±1.29 (fcos), ±4.22 (faster_rcnn), ±2.35.
    bands = [c.get_paths()[0].get_extents() for c in fig.axes[0].collections
             if to_rgba(c.get_facecolor()[0]) == to_rgba(BAND)]
    margins = table.drop_duplicates("base_hash")["base_hash"].map(
        table.groupby("base_hash")["margin"].max()).tolist()
    assert [round(b.x1, 2) for b in bands] == [round(m, 2) for m in margins] == [1.29, 4.22, 2.35]
    assert all(b.x0 == pytest.approx(-b.x1) for b in bands)


def test_the_pareto_plot_puts_flops_on_x_and_names_points_without_collision(bag):
    _, table = bag
    fig = pareto_figure(table, "bag")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "FLOPs per image (G)"
    names = [t for t in ax.texts if t.get_text()]
    assert collisions(fig, names) == []
    assert len(names) == len(table)  # every variant named (the title would count those left out)
    assert "unnamed" not in fig._suptitle.get_text()
    # Without FLOPs and params, latency, with its spread over seeds as an error bar.
    latency = pareto_figure(table.assign(flops_G=math.nan, params_M=math.nan), "bag")
    assert latency.axes[0].get_xlabel().startswith("inference latency")
    assert any(c.has_xerr for c in latency.axes[0].containers)
    assert not any(c.has_xerr for c in ax.containers)


def test_the_curves_show_val_map_per_epoch_per_base(bag):
    records, table = bag
    fig = curves_figure(epoch_curves(records, table), "bag")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["fcos: training loss per epoch", "fcos: val mAP per epoch (points)"]
    assert "retinanet: val mAP per epoch (points)" in titles
    # These records were evaluated after their last epoch only, and the panel says so.
    assert any("evaluated once" in t.get_text() for t in fig.axes[1].texts)


# ----------------------------------------------------------------------------------------------
# synthetic tables: nothing clipped at any number of variants


@pytest.mark.parametrize("n", [3, 10, 60])
def test_the_forest_plot_grows_with_its_rows(n):
    table = records_table(synthetic(n))
    fig = delta_map_figure(table, "synthetic")
    assert outside(fig) == []
    ax = fig.axes[0]
    rows = [t for t in ax.get_yticklabels() if t.get_text()]
    assert len(rows) == n + len(BASES)  # every variant, under its base's header
    assert collisions(fig, drawn_texts(fig)) == []
    # The row pitch holds whatever their number: the figure grows instead.
    renderer = fig.canvas.get_renderer()
    pitch = ax.get_window_extent(renderer).height / (ax.get_ylim()[0] - ax.get_ylim()[1]) / fig.dpi  # inches
    assert pitch >= 0.25, pitch
    width, height = pixels(fig)
    assert 800 <= width <= 1600 and height <= 0.3 * DPI * (n + 3) + 300


@pytest.mark.parametrize("n", [3, 10, 60])
def test_the_heat_map_is_readable_at_12_classes(n):
    records = synthetic(n)
    deltas = per_class_deltas(records, records_table(records))
    assert deltas.shape == (n, 12)
    fig = per_class_figure(deltas, "synthetic")
    assert outside(fig) == []
    ax = fig.axes[0]
    numbers = [t for t in ax.texts if t.get_text()]
    assert len(numbers) == n * 12  # every cell carries its number
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    cell_w, cell_h = box.width / 12, box.height / n
    for t in numbers:  # each number inside its own cell
        e = t.get_window_extent(renderer)
        assert e.width < cell_w and e.height < cell_h, (t.get_text(), e.bounds, cell_w, cell_h)
    width, height = pixels(fig)
    assert width <= 2000 and height <= 0.3 * DPI * n + 500


@pytest.mark.parametrize("n", [3, 10, 60])
def test_the_other_figures_fit_at_any_number_of_variants(n):
    records = synthetic(n)
    table = records_table(records)
    curves = curves_figure(epoch_curves(records, table), "synthetic")
    pareto = pareto_figure(table, "synthetic")
    for fig in (curves, pareto):
        assert outside(fig) == []
        w, h = pixels(fig)
        assert w <= 3000 and h <= 3000
    names = [t for t in pareto.axes[0].texts if t.get_text()]
    assert collisions(pareto, names) == []
    # val mAP after epochs 3, 6 and 9, the mean over seeds: fcos's baseline is 40, 40.5, 41 at epoch 9.
    panel = next(ax for ax in curves.axes if ax.get_title() == "fcos: val mAP per epoch (points)")
    val = next(line for line in panel.get_lines() if line.get_label() == "baseline")
    assert list(val.get_xdata()) == [3, 6, 9]
    assert float(val.get_ydata()[-1]) == pytest.approx(40.5)


@pytest.mark.parametrize("values", [{}, {f"tricks.mixup.param_{i}": 1 / (i + 1) for i in range(12)}])
def test_a_searchs_importance_plot_fits_its_canvas(tmp_path, values):
    from ablate.report.search import importance_figure, plot_importance

    fig = importance_figure(values, "tune_mixup")
    assert outside(fig) == []
    assert pixels(fig) == (7 * DPI, round((0.5 * len(values) + 2 if values else 2.5) * DPI))
    with Image.open(plot_importance(values, tmp_path / "importance.png", "tune_mixup")) as png:
        assert png.size == pixels(fig)
