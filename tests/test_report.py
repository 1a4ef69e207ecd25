"""ablate.report: the table, the ΔmAP chart and report.md, built from result.json records alone."""
from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from ablate.report import ReportError, build_report, records_table
from ablate.report.markdown import markdown_table
from ablate.report.plots import delta_map_figure
from ablate.report.table import (DELTA_HEADER, delta_against, epoch_curves, fmt_delta, fmt_points, paired_differences,
                                 per_class_deltas)
from ablate.results import RunRecord, tricks_hash, write_record
from conftest import assert_imports_without

REPO = Path(__file__).resolve().parents[1]
MINUS = "\u2212"


def make_record(variant: str = "baseline", tricks: list[str] | None = None, seed: int = 0, mAP: float = 0.4,
                status: str = "ok", base: str = "base-a", created_at: str = "2025-03-01T10:00:00",
                error: str | None = None, model: str = "fcos", trick_args: dict | None = None,
                **metrics: float) -> RunRecord:
    """A record; ``trick_args``: its config's tricks section (each trick with no argument by default)."""
    tricks = list(tricks) if tricks is not None else ([] if variant == "baseline" else [variant])
    values = {"mAP": mAP, "AP50": mAP + 0.2, "AP75": mAP - 0.05, "APs": mAP - 0.2, "APm": mAP, "APl": mAP + 0.1}
    values.update(metrics)
    ok = status == "ok"
    return RunRecord(
        status=status, variant=variant, sweep="sw", tricks=tricks, seed=seed,
        config={"seed": seed, "model": {"name": model},
                "tricks": trick_args if trick_args is not None else {t: {} for t in tricks}},
        config_hash=f"{base}-{variant}-{seed}", base_hash=base,
        metrics=values if ok else {},
        timings={"train_s": 120.0, "images_per_s": 50.0} if ok else {"train_s": 3.0},
        inference_ms_per_image=8.0 if ok else None,
        params=3_000_000, flops=2_500_000_000 if ok else None,
        device="cpu", peak_memory_scope="run", error=error, created_at=created_at,
    )


def write_all(root: Path, records: list[RunRecord]) -> None:
    for r in records:
        write_record(r, root / r.variant / f"{r.base_hash}-seed{r.seed}")


def md_table(report: str) -> list[dict[str, str]]:
    """The first markdown table of report.md as a list of {column: cell}."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r)) for r in body]


def section(report: str, name: str) -> str:
    """The text of a '## name' section of report.md ('' when absent)."""
    head = f"## {name}\n"
    if head not in report:
        return ""
    rest = report.split(head, 1)[1]
    return rest.split("\n## ", 1)[0].split("\n---\n", 1)[0]


@pytest.fixture
def paired_sweep(tmp_path: Path) -> Path:
    """Baseline and one trick over seeds 0 and 1 (hand-computable), plus a trick with a single seed the
    baseline did not run (seed 2: nothing to pair with)."""
    root = tmp_path / "runs" / "sw"
    write_all(root, [
        make_record("baseline", seed=0, mAP=0.400, created_at="2025-03-01T10:00:00"),
        make_record("baseline", seed=1, mAP=0.420, created_at="2025-03-01T10:05:00"),
        make_record("mixup", seed=0, mAP=0.415, created_at="2025-03-01T11:00:00"),
        make_record("mixup", seed=1, mAP=0.445, created_at="2025-03-01T11:05:00"),
        make_record("ls", seed=2, mAP=0.396, created_at="2025-03-01T12:00:00"),
    ])
    return root


def test_one_row_per_variant_with_paired_delta(paired_sweep: Path, tmp_path: Path):
    out = tmp_path / "reports" / "sw"
    path = build_report([paired_sweep], out)
    assert path == out / "report.md"
    report = path.read_text()
    assert report.startswith("# sw\n")  # title: the runs folder's name
    rows = md_table(report)
    assert [r["Variant"] for r in rows] == ["baseline", "mixup", "ls"]
    by = {r["Variant"]: r for r in rows}
    # Baseline 40.0, 42.0 -> 41.0 ± 1.4; mixup 41.5, 44.5 -> 43.0 ± 2.1.
    assert by["baseline"]["mAP"] == "41.0 ± 1.4"
    assert by["mixup"]["mAP"] == "43.0 ± 2.1"
    # Paired by seed: differences +1.5 and +2.5 -> mean +2.0, s 0.71 (not the spread of either mAP);
    # 95% CI half-width t_{0.975,1} · 0.7071/√2 = 12.706 · 0.5 = 6.35: spans zero, so no bold.
    assert by["mixup"][DELTA_HEADER] == "+2.0 ± 6.4"
    assert by["mixup"]["Seeds"] == "2"
    # One seed against two: unpaired difference of means, 39.6 - 41.0, with a real minus sign and no CI.
    assert by["ls"][DELTA_HEADER] == f"{MINUS}1.4 (1 seed, no CI)"
    assert by["ls"]["Seeds"] == "1"
    assert "Unpaired ΔmAP" in report and "`ls`" in section(report, "Notes")
    # Other columns in points; costs absolute (with units) for the baseline, changes for the others.
    assert by["mixup"]["AP50"] == "63.0" and by["mixup"]["AP75"] == "38.0"
    assert by["mixup"]["APs/APm/APl"] == "23.0 / 43.0 / 53.0"
    assert by["baseline"]["Train time"] == "120 s" and by["baseline"]["Params"] == "3.00 M"
    assert by["baseline"]["FLOPs"] == "2.50 G" and by["baseline"]["ms/img"] == "8.00 ms"
    assert by["mixup"]["Train time"] == "0%" and by["mixup"]["Params"] == "0%" and by["mixup"]["ms/img"] == "0 ms"
    assert by["mixup"]["Kind"] == "freebie" and by["baseline"]["Kind"] == "—"
    assert list(rows[0])[:8] == ["Variant", "Kind", "Seeds", DELTA_HEADER, "Verdict", "p (Holm)", "mAP", "AP50"]
    assert "Status" not in rows[0]  # every run finished
    assert "![ΔmAP per variant with its 95% CI](delta_map.png)" in report
    assert f"`ablate report {paired_sweep}`" in report
    assert "5 runs (5 ok) of 3 variants" in report


def test_baseline_dash_and_variant_without_baseline_na(tmp_path: Path):
    root = tmp_path / "runs"
    write_all(root, [
        make_record("baseline", seed=0, mAP=0.40, base="a"),
        make_record("mixup", seed=0, mAP=0.42, base="a"),
        make_record("mosaic", seed=0, mAP=0.40, base="b"),  # base b has no baseline run at all
    ])
    report = build_report([root], tmp_path / "out").read_text()
    by = {r["Variant"]: r for r in md_table(report)}
    assert by["baseline"][DELTA_HEADER] == "—"
    assert by["mixup"][DELTA_HEADER] == "+2.0 (1 seed, no CI)"
    assert by["mosaic"][DELTA_HEADER] == "n/a"  # never 0
    assert by["mosaic"]["mAP"] == "40.0"
    assert "`mosaic` (no baseline run in these folders)" in report
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    assert math.isnan(table.set_index("variant").loc["mosaic", "delta_mAP"])
    assert math.isnan(table.set_index("variant").loc["baseline", "delta_mAP"])


def test_failed_and_diverged_runs_listed_and_not_counted(tmp_path: Path):
    root = tmp_path / "runs"
    write_all(root, [
        make_record("baseline", seed=0, mAP=0.40),
        make_record("baseline", seed=1, mAP=0.40),
        make_record("mixup", seed=0, mAP=0.44),
        # A failed seed of mixup: its (made-up) metrics must not count.
        make_record("mixup", seed=1, status="failed", error="Traceback (most recent call last):\n  File x\n"
                                                           "RuntimeError: CUDA out of memory\n"),
        make_record("ema", seed=0, status="failed", error="ValueError: bad decay"),
        make_record("cutout", seed=0, status="diverged", error="loss is nan at step 12"),
    ])
    report = build_report([root], tmp_path / "out").read_text()
    by = {r["Variant"]: r for r in md_table(report)}
    assert set(by) == {"baseline", "mixup", "ema", "cutout"}
    assert by["mixup"]["Seeds"] == "1" and by["mixup"]["mAP"] == "44.0"
    assert by["mixup"]["Status"] == "ok (1/2), failed (1/2)"
    # ok seeds {0} differ from the baseline's {0, 1}: difference of means 44.0 - 40.0, no CI with one seed.
    assert by["mixup"][DELTA_HEADER] == "+4.0 (1 seed, no CI)"
    assert by["ema"]["Status"] == "failed (1/1)"
    assert by["cutout"]["Status"] == "diverged (1/1)"
    for name in ("ema", "cutout"):
        assert by[name]["Seeds"] == "0"
        assert all(by[name][c] == "n/a" for c in ("mAP", DELTA_HEADER, "AP50", "Train time", "Images/s", "Kind"))
    unfinished = section(report, "Runs that did not finish")
    assert "RuntimeError: CUDA out of memory" in unfinished
    assert "Traceback" not in unfinished  # only the last line of the error
    assert "ValueError: bad decay" in unfinished and "loss is nan at step 12" in unfinished
    assert "mixup-seed1" not in section(report, "Notes")
    assert str(root / "mixup" / "base-a-seed1") in unfinished or "mixup/base-a-seed1" in unfinished
    assert "| diverged |" in unfinished
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(runs) == 6
    assert sorted(runs["status"]) == ["diverged", "failed", "failed", "ok", "ok", "ok"]


def test_corrupt_record_is_reported_unreadable_not_counted(paired_sweep: Path, tmp_path: Path, caplog):
    good = (paired_sweep / "mixup" / "base-a-seed1" / "result.json").read_text()
    bad = paired_sweep / "mixup" / "crashed" / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(good[: len(good) // 2])  # truncated mid-write
    with caplog.at_level(logging.WARNING, logger="ablate.report"):
        report = build_report([paired_sweep], tmp_path / "out").read_text()
    unreadable = section(report, "Unreadable records")
    assert str(bad) in unreadable and "not valid JSON" in unreadable
    assert any(str(bad) in r.getMessage() and r.name == "ablate.report" for r in caplog.records)
    by = {r["Variant"]: r for r in md_table(report)}
    assert by["mixup"]["Seeds"] == "2" and by["mixup"][DELTA_HEADER] == "+2.0 ± 6.4"  # unchanged
    assert "5 runs (5 ok)" in report and "1 record could not be read" in report


def test_table_csv_parses_back_numeric(paired_sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    build_report([paired_sweep], out)
    table = pd.read_csv(out / "table.csv")
    assert list(table["variant"]) == ["baseline", "mixup", "ls"]
    for column in ("mAP", "mAP_std", "delta_mAP", "delta_mAP_std", "delta_ci_low", "delta_ci_high", "delta_ci_half",
                   "AP50", "AP75", "APs", "APm", "APl", "train_s", "images_per_s", "inference_ms", "params_M",
                   "flops_G"):
        assert pd.api.types.is_numeric_dtype(table[column]), column
    assert pd.api.types.is_integer_dtype(table["seeds"])
    t = table.set_index("variant")
    assert t.loc["mixup", "mAP"] == pytest.approx(43.0)
    assert t.loc["mixup", "delta_mAP"] == pytest.approx(2.0)
    assert t.loc["mixup", "delta_mAP_std"] == pytest.approx(math.sqrt(0.5))
    # 95% CI of the paired differences 1.5, 2.5: 2.0 ± 12.706 · 0.7071/√2 = 2.0 ± 6.353.
    assert t.loc["mixup", "delta_ci_half"] == pytest.approx(12.7062 * 0.5, abs=1e-3)
    assert t.loc["mixup", "delta_ci_low"] == pytest.approx(2.0 - 6.3531, abs=1e-3)
    assert t.loc["mixup", "delta_ci_method"] == "paired" and t.loc["mixup", "delta_sign"] == 0
    assert bool(t.loc["mixup", "delta_paired"]) and not bool(t.loc["ls", "delta_paired"])
    assert t.loc["ls", "delta_mAP"] == pytest.approx(-1.4)
    assert t.loc["baseline", "mAP_std"] == pytest.approx(math.sqrt(2))
    assert t.loc["mixup", "params_M"] == pytest.approx(3.0) and t.loc["mixup", "flops_G"] == pytest.approx(2.5)
    assert t.loc["mixup", "seeds"] == 2 and bool(t.loc["baseline", "baseline"])
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 5 and runs["mAP"].dtype.kind == "f"
    assert sorted(runs.loc[runs["variant"] == "mixup", "mAP"]) == pytest.approx([41.5, 44.5])
    # Files are replaced whole: no temp file is left behind.
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "delta_map.png", "pareto.png", "per_class.png",
                                                     "report.md", "runs.csv", "table.csv"]


def png_rgb(path: Path) -> np.ndarray:
    """The PNG's pixels as integers 0-255, [height, width, 3]."""
    return (mpimg.imread(path)[..., :3] * 255).round().astype(int)


def pixels_near(rgb: np.ndarray, color: tuple[int, int, int], tol: int = 2) -> int:
    return int((np.abs(rgb - np.array(color)).max(axis=-1) <= tol).sum())


def test_delta_map_png_is_valid(paired_sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    build_report([paired_sweep], out)
    data = (out / "delta_map.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    # (7, 0.28 x 2 rows + 2.3) inches at 120 dpi: one base, so no header row.
    assert (width, height) == (840, 343)
    rgb = png_rgb(out / "delta_map.png")
    # Neither variant is decided (mixup's 2 seeds leave it undecided, ls ran one): grey only, no green or red.
    assert pixels_near(rgb, (140, 140, 140), tol=3) > 100  # NEUTRAL #8c8c8c: their markers and CI
    assert pixels_near(rgb, (44, 160, 44), tol=40) == 0 and pixels_near(rgb, (214, 39, 40), tol=40) == 0


def test_delta_map_png_colours_a_decided_change(tmp_path: Path):
    root = tmp_path / "runs"
    write_all(root, [make_record("baseline", seed=s, mAP=0.40 + 0.01 * s) for s in range(3)]
              + [make_record("mixup", seed=s, mAP=0.45 + 0.01 * s + 0.001 * (s == 1)) for s in range(3)]
              + [make_record("ls", seed=s, mAP=0.35 + 0.01 * s + 0.001 * (s == 2)) for s in range(3)])
    out = tmp_path / "out"
    report = build_report([root], out).read_text()
    assert [(r["Variant"], r["Verdict"]) for r in md_table(report)] == [
        ("baseline", "—"), ("ls", "hurt"), ("mixup", "helped")]
    rgb = png_rgb(out / "delta_map.png")
    assert pixels_near(rgb, (44, 160, 44), tol=3) > 100  # GAIN: mixup's marker and CI
    assert pixels_near(rgb, (214, 39, 40), tol=3) > 100  # LOSS: ls's


@pytest.mark.parametrize("records, deltas", [
    ([make_record("baseline", seed=0, mAP=0.4)], ["—"]),  # a baseline alone
    ([make_record("baseline", seed=0, status="failed", error="ValueError: x"),  # a variant whose baseline failed
      make_record("mixup", seed=0, mAP=0.42)], ["—", "n/a"]),
], ids=["baseline-only", "baseline-failed"])
def test_delta_map_png_without_any_delta_says_so_and_draws_no_bar(tmp_path: Path, records, deltas):
    root = tmp_path / "runs"
    write_all(root, records)
    out = tmp_path / "out"
    report = build_report([root], out).read_text()
    assert [r[DELTA_HEADER] for r in md_table(report)] == deltas
    # The chart is the one-line message, axes off, nothing drawn.
    fig = delta_map_figure(records_table(records), "sw")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["no ΔmAP to plot: no variant with an ok baseline run"]
    assert len(ax.patches) == 0 and len(ax.lines) == 0 and not ax.axison
    assert fig._suptitle.get_text() == "sw: ΔmAP against the baseline"
    # The PNG written is that figure: (7, 2.5) inches at 120 dpi, grey text only (no green or red).
    assert struct.unpack(">II", (out / "delta_map.png").read_bytes()[16:24]) == (840, 300)
    rgb = png_rgb(out / "delta_map.png")
    assert (rgb.max(axis=-1) - rgb.min(axis=-1)).max() == 0  # every pixel grey
    assert (rgb.max(axis=-1) < 128).sum() > 500  # the message and title are written


def test_two_runs_folders_merge(tmp_path: Path):
    first, second = tmp_path / "runs" / "sw1", tmp_path / "runs" / "sw2"
    write_all(first, [make_record("baseline", seed=0, mAP=0.40), make_record("mixup", seed=0, mAP=0.41)])
    write_all(second, [make_record("baseline", seed=1, mAP=0.42), make_record("mixup", seed=1, mAP=0.44)])
    report = build_report([first, second], tmp_path / "out").read_text()
    by = {r["Variant"]: r for r in md_table(report)}
    assert len(by) == 2
    # Paired differences 1.0 and 2.0: +1.5 ± 12.706 · 0.7071/√2 = ± 6.4.
    assert by["mixup"]["Seeds"] == "2" and by["mixup"][DELTA_HEADER] == "+1.5 ± 6.4"
    assert report.startswith("# sw1 + sw2\n")
    assert f"`ablate report {first} {second}`" in report
    titled = build_report([first, second], tmp_path / "out2", title="merged").read_text()
    assert titled.startswith("# merged\n")


def test_no_records_is_a_clear_error(tmp_path: Path):
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    with pytest.raises(ReportError) as info:
        build_report([empty, missing], tmp_path / "out")
    assert isinstance(info.value, ValueError)
    assert str(empty) in str(info.value) and str(missing) in str(info.value)
    assert "does not exist" in str(info.value)
    assert not (tmp_path / "out" / "report.md").exists()


def test_only_unreadable_records_is_an_error(tmp_path: Path):
    bad = tmp_path / "runs" / "x" / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"status": "ok", "vari')
    with pytest.raises(ReportError, match="1 unreadable"):
        build_report([tmp_path / "runs"], tmp_path / "out")


def test_row_order_baselines_first_blocks_per_base(tmp_path: Path):
    root = tmp_path / "runs"
    write_all(root, [
        make_record("mosaic", seed=0, base="a", created_at="2025-03-01T09:00:00"),
        make_record("baseline", seed=0, base="a", created_at="2025-03-01T12:00:00"),
        make_record("cutout", seed=0, base="b", model="retinanet", created_at="2025-03-01T10:00:00"),
        make_record("mixup", seed=0, base="a", created_at="2025-03-01T11:00:00"),
        make_record("baseline", seed=0, base="b", model="retinanet", created_at="2025-03-01T13:00:00"),
        make_record("ema", seed=0, base="a", created_at="2025-03-01T08:00:00"),
    ])
    report = build_report([root], tmp_path / "out").read_text()
    rows = md_table(report)
    assert [(r["Base"], r["Variant"]) for r in rows] == [
        ("model=fcos", "baseline"), ("model=fcos", "ema"), ("model=fcos", "mosaic"), ("model=fcos", "mixup"),
        ("model=retinanet", "baseline"), ("model=retinanet", "cutout"),
    ]
    table = records_table([make_record("mixup", seed=0, created_at="2"), make_record("baseline", created_at="3")])
    assert list(table["variant"]) == ["baseline", "mixup"]


def named(base: str, trick: str | None, model: str, **kw) -> RunRecord:
    """A run of a sweep with named baselines (variant ``<baseline>/<tricks>``, ablate/sweep/design.py), each
    base's model also under another default (the override-derived label would name it)."""
    rec = make_record(f"{base}/{trick or 'baseline'}", tricks=[trick] if trick else [], base=f"hash-{base}",
                      model=model, **kw)
    rec.config["model"]["anchor_scale"] = len(model)
    return rec


def test_bases_are_named_as_the_sweep_file_names_them(tmp_path: Path):
    root = tmp_path / "runs"
    write_all(root, [named("fcos", None, "fcos"), named("fcos", "mixup", "fcos", mAP=0.42),
                     named("two_stage", None, "faster_rcnn"), named("two_stage", "iou_balanced", "faster_rcnn")])
    report = build_report([root], tmp_path / "out").read_text()
    rows = md_table(report)
    assert [(r["Base"], r["Variant"]) for r in rows] == [
        ("fcos", "fcos/baseline"), ("fcos", "fcos/mixup"),
        ("two_stage", "two_stage/baseline"), ("two_stage", "two_stage/iou_balanced")]
    assert "model=" not in report and "anchor_scale" not in report
    assert "`fcos/mixup` +2.0" in report  # the name says the base already: no "(fcos)" after it
    assert "of 4 variants over 2 bases (fcos, two_stage), each against its own baseline;" in report


def test_bases_fall_back_to_their_differing_overrides(tmp_path: Path):
    # A run named without "<baseline>/" in a base: the base has no sweep name, and is labelled by the
    # config keys in which the bases differ.
    records = [named("fcos", None, "fcos"), named("fcos", "mixup", "fcos"), named("rn", None, "retinanet")]
    records[2].variant = "baseline"
    table = records_table(records)
    assert list(table["base"]) == ["fcos", "fcos", "model=retinanet, model.anchor_scale=9"]
    # One sweep run twice with other overrides: two bases of one name, told apart by those overrides.
    twice = [named("fcos", None, "fcos"), named("fcos", None, "fcos")]
    twice[1].base_hash, twice[1].config["model"]["anchor_scale"] = "hash-other", 8
    assert list(records_table(twice)["base"]) == ["fcos (model.anchor_scale=4)", "fcos (model.anchor_scale=8)"]


def test_paired_differences_helper():
    diffs = paired_differences({0: 41.5, 1: 44.5}, {1: 42.0, 0: 40.0})
    assert list(diffs) == pytest.approx([1.5, 2.5])
    # A variant an adaptive sweep stopped at fewer seeds than its baseline pairs on the seeds it ran, and the
    # other way round (a baseline run failed); seed sets that merely overlap do not pair.
    assert list(paired_differences({0: 41.0}, {0: 40.0, 1: 42.0})) == pytest.approx([1.0])
    assert list(paired_differences({0: 41.0, 1: 45.0, 2: 50.0}, {0: 40.0, 1: 42.0})) == pytest.approx([1.0, 3.0])
    assert paired_differences({0: 41.0, 2: 43.0}, {0: 40.0, 1: 42.0}) is None
    assert paired_differences({}, {}) is None
    delta = delta_against({0: 41.5, 1: 44.5}, {0: 40.0, 1: 42.0})
    assert delta.paired and delta.n == 2
    assert delta.mean == pytest.approx(2.0) and delta.std == pytest.approx(math.sqrt(0.5))
    unpaired = delta_against({0: 41.0, 2: 43.0}, {0: 40.0, 1: 42.0})
    assert not unpaired.paired and unpaired.mean == pytest.approx(1.0) and math.isnan(unpaired.std)
    assert math.isnan(delta_against({0: 41.0}, {}).mean)


def test_missing_and_negative_metrics_show_na(tmp_path: Path):
    root = tmp_path / "runs"
    rec = make_record("baseline", seed=0, mAP=0.4, APs=-1.0)  # COCOeval: no small objects
    rec.inference_ms_per_image = None
    rec.timings = {}
    write_all(root, [rec])
    row = md_table(build_report([root], tmp_path / "out").read_text())[0]
    assert row["APs/APm/APl"] == "n/a / 40.0 / 50.0"
    assert row["ms/img"] == "n/a" and row["Train time"] == "n/a"


def test_formatting():
    assert fmt_delta(1.23) == "+1.2"
    assert fmt_delta(-0.44) == f"{MINUS}0.4"
    assert fmt_delta(0.01) == "+0.0"
    assert fmt_delta(float("nan")) == "n/a"
    assert fmt_delta(1.0, 0.25) == "+1.0 ± 0.2"
    assert fmt_points(52.34) == "52.3" and fmt_points(52.34, 0.46) == "52.3 ± 0.5"
    frame = pd.DataFrame({"Variant": ["a|b"], "mAP": ["1.0"]})
    assert markdown_table(frame).splitlines() == ["| Variant | mAP |", "| ------- | --: |", "| a\\|b    | 1.0 |"]


def test_import_does_not_pull_torch():
    assert_imports_without("ablate.report", "torch", "torchvision")


def test_the_header_warns_when_the_runs_were_made_by_different_code(tmp_path):
    root = tmp_path / "runs" / "sw"
    records = [make_record("baseline", seed=s) for s in (0, 1)] + [make_record("mixup", seed=s) for s in (0, 1)]
    core = {"ablate/train.py": "t1"}
    for r in records[:2]:
        r.code = {"fingerprint": "aaaa11112222", "files": dict(core), "versions": {"torch": "2.4"}}
    for r in records[2:]:  # the trick's own file too: another fingerprint, but no code changed
        r.code = {"fingerprint": "cccc55556666", "files": {**core, "ablate/tricks/data/mixup.py": "m1"},
                  "versions": {"torch": "2.4"}}
    write_all(root, records)
    same = build_report([root], tmp_path / "same").read_text()
    assert "versions of the code" not in same
    records[2].code = {"fingerprint": "bbbb33334444", "files": {"ablate/train.py": "t2", "ablate/tricks/data/mixup.py": "m1"},
                       "versions": {"torch": "2.5"}}
    write_all(root, records[2:3])
    mixed = build_report([root], tmp_path / "mixed").read_text()
    # A caveat: among the notes at the end, not before the decisions.
    assert ("The runs were made by different versions of the code they depend on (ablate/train.py: 2 versions, "
            "torch (version): 2 versions; see each record's `code`)" in section(mixed, "Notes"))
    assert "versions of the code" not in mixed.split("## Decisions")[0]
    # records whose fingerprint lists no files are compared by the whole fingerprint
    for r, fp in zip(records, ("a", "a", "b", "b")):
        r.code = {"fingerprint": fp, "files": {}, "versions": {}}
    write_all(root, records)
    old = build_report([root], tmp_path / "old").read_text()
    assert "(the code (fingerprint without its files): 2 versions;" in old


def mixup(alpha: float, seed: int, mAP: float, **kw) -> RunRecord:
    """A MixUp run with the given alpha (its other arguments the defaults)."""
    args = {"mixup": {"_target_": "ablate.tricks.data.mixup.MixUp", "alpha": alpha, "prob": 1.0}}
    return make_record("mixup", seed=seed, mAP=mAP, trick_args=args, created_at=f"2025-03-01T11:0{seed}:{alpha}", **kw)


def test_one_trick_with_two_sets_of_arguments_is_two_variants(tmp_path: Path):
    """MixUp runs at alpha 0.2 and 1.5, seeds 0 and 1, all named mixup (separate `ablate train` commands), reported
    with the baseline: one row per alpha, each paired with the baseline by seed, not one row averaging the two."""
    root = tmp_path / "runs"
    records = [make_record("baseline", seed=0, mAP=0.400), make_record("baseline", seed=1, mAP=0.420),
               mixup(0.2, 0, 0.410), mixup(0.2, 1, 0.434), mixup(1.5, 0, 0.431), mixup(1.5, 1, 0.449),
               make_record("ls", seed=2, mAP=0.396, created_at="2025-03-01T12:00:00")]
    for r in records:
        alpha = r.config["tricks"].get("mixup", {}).get("alpha", "")
        write_record(r, root / r.variant / f"alpha{alpha}-seed{r.seed}")
    out = tmp_path / "out"
    report = build_report([root], out).read_text()
    rows = md_table(report)
    low, high = "mixup [mixup.alpha=0.2]", "mixup [mixup.alpha=1.5]"
    assert [r["Variant"] for r in rows] == ["baseline", low, high, "ls"]  # one config: the name alone
    by = {r["Variant"]: r for r in rows}
    # alpha 0.2: 41.0, 43.4 -> 42.2 ± 1.7; differences 1.0, 1.4 -> +1.2, s 0.283, 95% CI ± 12.706 · 0.283/√2 = 2.5.
    # Its verdict pools σ_d with alpha 1.5's: √((0.08 + 0.02)/2) = 0.2236 on 2 df, t = 1.2/(0.2236/√2) = 7.59,
    # p 0.017, Holm (second of two) 0.017: helped, so bold although its own CI spans zero.
    assert by[low]["mAP"] == "42.2 ± 1.7" and by[low][DELTA_HEADER] == "**+1.2 ± 2.5**" and by[low]["Seeds"] == "2"
    assert by[low]["p (Holm)"] == "0.017 (0.017)"
    # alpha 1.5: 43.1, 44.9 -> 44.0 ± 1.3; differences 3.1, 2.9 -> +3.0, s 0.141, ± 1.3: beyond noise (bold).
    assert by[high]["mAP"] == "44.0 ± 1.3" and by[high][DELTA_HEADER] == "**+3.0 ± 1.3**" and by[high]["Seeds"] == "2"
    assert by["ls"][DELTA_HEADER] == f"{MINUS}1.4 (1 seed, no CI)"
    # The best variant is compared with the runner-up, alpha 1.5 against 0.2 (differences 2.1, 1.5), not with itself.
    assert f"**Best variant**: `{high}`, 44.0 mAP; its margin over the runner-up `{low}` (42.2) is +1.8 ±" in report

    table = records_table(records)
    t = table.set_index("variant")
    assert t.loc[low, "delta_mAP"] == pytest.approx(1.2) and t.loc[high, "delta_mAP"] == pytest.approx(3.0)
    assert bool(t.loc[low, "delta_paired"]) and t.loc[high, "delta_seeds"] == 2
    # table.csv says which arguments each row ran: their hash and the arguments themselves.
    csv = pd.read_csv(out / "table.csv", keep_default_na=False, dtype={"tricks_hash": str, "trick_args": str})
    c = csv.set_index("variant")
    assert c.loc[low, "tricks_hash"] == tricks_hash(records[2].config) != c.loc[high, "tricks_hash"]
    assert c.loc[high, "tricks_hash"] == tricks_hash(records[4].config)
    assert json.loads(c.loc[high, "trick_args"]) == {"mixup.alpha": 1.5, "mixup.prob": 1.0}
    assert c.loc["baseline", "tricks_hash"] == "" and c.loc["baseline", "trick_args"] == ""
    assert list(c.index) == list(t.index) and list(c["tricks_hash"]) == list(table["tricks_hash"])
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False, dtype={"tricks_hash": str})
    assert sorted(runs.loc[runs["tricks_hash"] == c.loc[high, "tricks_hash"], "mAP"]) == pytest.approx([43.1, 44.9])

    # Per-class AP and training curves are kept apart the same way.
    for r, loss in zip(records, (1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0)):
        r.per_class_ap = {"circle": r.metrics["mAP"]}
        r.curve = [{"epoch": 1, "epoch_loss": loss}]
    deltas = per_class_deltas(records, records_table(records))
    assert deltas.loc[low, "circle"] == pytest.approx(1.2) and deltas.loc[high, "circle"] == pytest.approx(3.0)
    curves = epoch_curves(records, records_table(records))[""]
    assert curves[low]["loss"].tolist() == [2.0] and curves[high]["loss"].tolist() == [3.0]


def test_trick_arguments_label_only_the_variants_whose_runs_share_a_name():
    """`ablate train -m 'tricks=[mixup]' tricks.mixup.alpha=0.2,1.5` names its runs apart (ablate/sweep/multirun.py):
    those names are kept; runs of other arguments under one name are labelled by their arguments."""
    low, high = "mixup[tricks.mixup.alpha=0.2]", "mixup[tricks.mixup.alpha=1.5]"
    records = [make_record("baseline"), mixup(0.2, 0, 0.41), mixup(1.5, 0, 0.43)]
    records[1].variant, records[2].variant = low, high
    assert list(records_table(records)["variant"]) == ["baseline", low, high]
    records += [mixup(0.5, 1, 0.42), mixup(1.0, 2, 0.42)]  # two more alphas, both runs named plain "mixup"
    assert list(records_table(records)["variant"]) == [
        "baseline", low, high, "mixup [mixup.alpha=0.5]", "mixup [mixup.alpha=1.0]"]


def test_a_design_with_a_trick_set_run_with_two_sets_of_arguments_is_not_analysed(tmp_path: Path):
    root = tmp_path / "runs"
    both = ["warmup", "mixup"]
    records = [make_record("baseline", seed=0, mAP=0.40), make_record("warmup", seed=0, mAP=0.41)]
    for alpha, mAP in ((0.2, 0.42), (1.5, 0.43)):
        records.append(make_record("warmup+mixup", tricks=both, seed=0, mAP=mAP,
                                   trick_args={"warmup": {}, "mixup": {"alpha": alpha}}))
    for i, r in enumerate(records):
        write_record(r, root / str(i))
    report = build_report([root], tmp_path / "out").read_text()
    assert [r["Variant"] for r in md_table(report)] == [
        "baseline", "warmup", "warmup+mixup [mixup.alpha=0.2]", "warmup+mixup [mixup.alpha=1.5]"]
    cumulative = section(report, "Cumulative design")
    assert cumulative.startswith("\nNot analysed: the trick sets make a cumulative design, but some ran with several "
                                 "sets of trick arguments (`warmup+mixup [mixup.alpha=0.2]`, "
                                 "`warmup+mixup [mixup.alpha=1.5]`)")
    assert "| Step |" not in cumulative


def test_a_search_inside_the_reported_folder_is_left_out_and_named(tmp_path: Path, caplog):
    root = tmp_path / "runs"
    write_all(root / "sw", [make_record("baseline", seed=0, mAP=0.40), make_record("mixup", seed=0, mAP=0.42)])
    search = root / "tune_mixup"
    search.mkdir(parents=True)
    (search / "optuna.db").write_bytes(b"")  # what makes a folder a search's (ablate.report.search.is_search)
    for trial, alpha in enumerate((0.6, 1.9)):  # the same tricks, other arguments, the same base
        rec = make_record(f"trial{trial}", tricks=["mixup"], mAP=0.5, trick_args={"mixup": {"alpha": alpha}})
        write_record(rec, search / f"trial{trial}" / "seed0")
    with caplog.at_level(logging.WARNING, logger="ablate.report"):
        report = build_report([root], tmp_path / "out").read_text()
    assert [r["Variant"] for r in md_table(report)] == ["baseline", "mixup"]
    assert by_variant(md_table(report))["mixup"][DELTA_HEADER] == "+2.0 (1 seed, no CI)"  # the trials in no row
    assert "2 runs (2 ok) of 2 variants" in report
    assert (f"Left out of this report: 2 runs of the search in `{search}` (`ablate report {search}` reports them)."
            in report)
    assert any("2 records of the search in" in r.getMessage() and str(search) in r.getMessage()
               for r in caplog.records)
    # Given beside another folder the search is left out as well; given alone under a parent, nothing is left.
    both = build_report([root / "sw", search], tmp_path / "out2").read_text()
    assert [r["Variant"] for r in md_table(both)] == ["baseline", "mixup"] and f"`ablate report {search}`" in both
    only = tmp_path / "only"
    search.rename(only / "tune" if only.mkdir() is None else only)
    with pytest.raises(ReportError, match=f"`ablate report {only / 'tune'}` reports them"):
        build_report([only], tmp_path / "out3")


def by_variant(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["Variant"]: r for r in rows}


def test_adaptive_decisions_read_the_adaptive_sweeps_folder_only(tmp_path: Path):
    """Its plan names variants as its sweep did; a merged folder's run of the same name with other trick
    arguments must not stand in for one of its seeds."""
    adaptive, other = tmp_path / "runs" / "adapt", tmp_path / "runs" / "other"
    write_all(adaptive, [make_record("baseline", seed=0, mAP=0.400), make_record("baseline", seed=1, mAP=0.420),
                         mixup(0.2, 0, 0.410), mixup(0.2, 1, 0.434)])
    write_all(other, [mixup(1.5, 0, 0.431), mixup(1.5, 1, 0.449)])
    (adaptive / "adaptive.json").write_text(json.dumps({
        "min": 2, "max": 4, "margin": 0.3, "alpha": 0.05, "spending": "Pocock-type", "variants": {"mixup": "baseline"},
        "rounds": [{"round": 1, "seeds": 2, "variants": ["baseline", "mixup"]}]}))
    report = build_report([adaptive, other], tmp_path / "out").read_text()
    decisions = section(report, "Adaptive seeds")
    row = next(line for line in decisions.splitlines() if line.startswith("| mixup "))
    # Differences 1.0, 1.4 of its own seeds (with the other folder's alpha 1.5 runs: +3.0).
    assert "+1.2 ± 2.5" in [cell.strip() for cell in row.strip("|").split("|")]


def test_an_adaptive_sweeps_own_decisions_fill_the_tables_verdicts(tmp_path: Path):
    # Differences 1.0, 1.4 at seeds 0, 1 under a plan of 2..4 seeds: t = 1.2/0.2 = 6 on 1 df, p = 0.1051,
    # sequential p* = p / w_1 = 0.1051 / ln(1 + (e − 1)/2) = 0.1695: open (the sweep was stopped here). One
    # look at fixed seeds would call it undecided; the table takes the sweep's decision.
    adaptive = tmp_path / "runs" / "adapt"
    write_all(adaptive, [make_record("baseline", seed=0, mAP=0.400), make_record("baseline", seed=1, mAP=0.410),
                         make_record("mixup", seed=0, mAP=0.410), make_record("mixup", seed=1, mAP=0.424)])
    (adaptive / "adaptive.json").write_text(json.dumps({
        "min": 2, "max": 4, "margin": 0.3, "alpha": 0.05, "spending": "Pocock-type", "variants": {"mixup": "baseline"},
        "rounds": [{"round": 1, "seeds": 2, "variants": ["baseline", "mixup"]}]}))
    report = build_report([adaptive], tmp_path / "out").read_text()
    table = pd.read_csv(tmp_path / "out" / "table.csv").set_index("variant")
    assert table.loc["mixup", "verdict"] == "open"
    undecided = next(line for line in section(report, "Decisions").splitlines() if line.startswith("- **Undecided**"))
    assert "`mixup` +1.2 [" in undecided and "(open: the sweep stopped before deciding)" in undecided
    assert table.loc["mixup", "p_difference"] == pytest.approx(0.1051 / math.log(1 + (math.e - 1) / 2), abs=1e-3)
    section_text = section(report, "Adaptive seeds")
    assert "stops only on the adjusted p-value" in section_text and "not a confidence interval" in section_text
    assert "has not ended" not in section_text  # a plan without "complete" (made before it) ended
    # 4 runs against 2 variants x 4 seeds = 8 (50% saved); the fixed design for 0.5 points at 80% power,
    # σ_d 0.283 (0.32 = (σ_d/δ)²) on n − 1 df: n = 4 needs (3.182 + 0.978)² · 0.32 = 5.5 > 4, n = 5 needs
    # (2.776 + 0.941)² · 0.32 = 4.4 <= 5: 2 x 5 = 10 runs (60% saved).
    assert "4 runs against 8 with 4 seeds everywhere (50% of the runs saved)" in section_text
    assert "against 10 in the fixed design that detects a 0.5-point change" in section_text
    assert "seeds per variant: 5 for baseline; 60% saved" in section_text


def test_an_adaptive_sweeps_collapsed_variant_is_outside_its_correction(tmp_path: Path):
    # ghm collapsed at seed 0 (a run-health warning): the adaptive section says so, with no p-values, and the
    # correction runs over the one other trick (Holm over 1), as the table's decisions do.
    adaptive = tmp_path / "runs" / "adapt"
    ghm = [make_record("ghm", seed=s, mAP=m) for s, m in ((0, 0.01), (1, 0.30))]
    ghm[0].health = [{"code": "single_class", "message": "all 900 detections are of category 1"}]
    write_all(adaptive, [make_record("baseline", seed=0, mAP=0.400), make_record("baseline", seed=1, mAP=0.410),
                         make_record("mixup", seed=0, mAP=0.410), make_record("mixup", seed=1, mAP=0.424), *ghm])
    (adaptive / "adaptive.json").write_text(json.dumps({
        "min": 2, "max": 4, "margin": 0.3, "alpha": 0.05, "spending": "Pocock-type",
        "variants": {"mixup": "baseline", "ghm": "baseline"}, "complete": False,
        "rounds": [{"round": 1, "seeds": 2, "variants": ["baseline", "ghm", "mixup"]}]}))
    report = build_report([adaptive], tmp_path / "out").read_text()
    text = section(report, "Adaptive seeds")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ghm ") or line.startswith("| mixup ")}
    assert "Verdict (Holm over 1)" in text and "step-down over 1 trick," in text
    # stopped before it ended (adaptive.json's "complete": false): said first
    assert text.lstrip().startswith("**The sweep has not ended**: it stopped in or after round 1")
    assert rows["ghm"][1] == "undecided (a run collapsed)" and rows["ghm"][5:] == ["n/a", "n/a"]
    assert rows["ghm"][2:4] == ["2", "−25.0 (not tested)"]  # (1 − 40) and (30 − 41) over its 2 seeds
    assert rows["mixup"][1] == "open (run stopped)"
    table = pd.read_csv(tmp_path / "out" / "table.csv").set_index("variant")
    # table.csv's verdict keeps to the fixed table's words (why ghm is undecided: its health column)
    assert table.loc["ghm", "verdict"] == "undecided" and table.loc["ghm", "health"]
    assert table.loc["mixup", "verdict"] == "open"


def test_the_best_variant_is_ranked_within_each_base_not_across_detectors(tmp_path: Path):
    # Faster R-CNN's baseline (60 mAP) outscores every FCOS variant: ranked across bases it would be "the
    # best variant", which says nothing of a trick. Each base gets its own best and runner-up.
    root = tmp_path / "runs"
    records = []
    for seed, (fb, fm, tb, ti) in enumerate([(40.0, 42.0, 60.0, 60.5), (41.0, 43.0, 61.0, 61.0)]):
        records += [named("fcos", None, "fcos", seed=seed, mAP=fb / 100),
                    named("fcos", "mish", "fcos", seed=seed, mAP=fm / 100),
                    named("two_stage", None, "faster_rcnn", seed=seed, mAP=tb / 100),
                    named("two_stage", "iou_balanced", "faster_rcnn", seed=seed, mAP=ti / 100)]
    for r in records:
        r.config_hash += f"-{r.seed}"
    write_all(root, records)
    decisions = section(build_report([root], tmp_path / "out").read_text(), "Decisions")
    best = decisions[decisions.index("- **Best variant**"):].splitlines()
    assert best[0] == ("- **Best variant** of each base (variants of different detectors are not ranked "
                       "together):")
    # fcos: mish 42.5 over the baseline 40.5, paired differences 2, 2 (no spread): beyond noise.
    assert best[1].startswith("  - `fcos/mish`, 42.5 mAP; its margin over the runner-up `fcos/baseline` (40.5)")
    # two_stage: iou_balanced 60.75 over the baseline 60.5 (differences 0.5, 0).
    assert best[2].startswith("  - `two_stage/iou_balanced`, 60.8 mAP; its margin over the runner-up "
                              "`two_stage/baseline` (60.5)")
