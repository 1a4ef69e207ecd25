"""ablate report: variants with run-health warnings (a collapsed detector) are flagged in report.md and table.csv."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablate.report import build_report
from ablate.report.table import DELTA_HEADER
from ablate.results import RunRecord
from test_report import make_record, md_table, section, write_all

WARN = "\u26a0"
DEGENERATE = {"code": "degenerate_boxes", "message": "300 of 300 detections with score >= 0.05 (100%) have a width "
                                                     "or height below 1 px (threshold 50%)",
              "degenerate": 300, "detections": 300, "fraction": 1.0, "min_box_size": 1.0, "threshold": 0.5}
RECALL = {"code": "near_zero_recall", "message": "AR100 0.000 is below 0.01: the detections find almost none of "
                                                 "the objects", "AR100": 0.0, "threshold": 0.01}


def flagged(record: RunRecord, *warnings: dict) -> RunRecord:
    record.health = [dict(w) for w in warnings]
    return record


def summary(report: str) -> list[str]:
    return [line for line in section(report, "Decisions").splitlines() if line.startswith("- ")]


def test_collapsed_variant_is_flagged_in_table_summary_and_csv(tmp_path: Path):
    root = tmp_path / "runs"
    write_all(root, [
        make_record("baseline", seed=0, mAP=0.40),
        make_record("baseline", seed=1, mAP=0.42),
        flagged(make_record("mixup", seed=0, mAP=0.0, AR100=0.0), DEGENERATE, RECALL),
        flagged(make_record("mixup", seed=1, mAP=0.0, AR100=0.0), DEGENERATE),
        make_record("ls", seed=0, mAP=0.41),
        make_record("ls", seed=1, mAP=0.43),
    ])
    out = tmp_path / "out"
    report = build_report([root], out).read_text()

    rows = md_table(report)
    assert list(rows[0])[:3] == ["Variant", "Health", "Kind"]  # next to the variant
    by = {r["Variant"]: r for r in rows}
    assert by["mixup"]["Health"] == f"{WARN} collapsed: degenerate_boxes (2/2 seeds), near_zero_recall (1/2 seeds)"
    assert by["baseline"]["Health"] == "ok" and by["ls"]["Health"] == "ok"
    assert by["mixup"][DELTA_HEADER].startswith(f"{WARN} ")  # −41.0 ± ...: the collapse, not the trick
    assert by["ls"][DELTA_HEADER] == "**+1.0 ± 0.0**"  # untouched (equal paired differences: a zero-width CI)
    assert by["mixup"]["mAP"] == "0.0 ± 0.0"  # the numbers are still shown

    lines = summary(report)
    collapsed = [line for line in lines if "Collapsed runs" in line]
    assert len(collapsed) == 1  # a line of its own
    assert "`mixup` (degenerate_boxes (2/2 seeds), near_zero_recall (1/2 seeds))" in collapsed[0]
    assert "collapsed or degenerate run" in collapsed[0] and "must not be read as the trick's effect" in collapsed[0]
    assert "Collapsed baseline" not in report
    # Left out of Helped / Hurt / Undecided, and of the ranking.
    for line in lines:
        if line.startswith(("- **Helped**", "- **Hurt**", "- **Undecided**", "- **Best variant**")):
            assert "`mixup`" not in line, line
    assert any(line.startswith("- **Helped**") and "`ls`" in line for line in lines)

    health = section(report, "Run health")
    assert "300 of 300 detections" in health and "AR100 0.000 is below 0.01" in health
    assert "degenerate_boxes, near_zero_recall" in health  # seed 0's codes
    assert "Health: run-health warnings" in section(report, "Notes")
    # σ_d pools ls alone (differences +1, +1: its own ~0), not mixup's −40, −42, as the decisions leave it out
    noise = section(report, "Seed noise and power")
    assert "pooled over the paired per-seed differences of 1 variant" in noise

    table = pd.read_csv(out / "table.csv").set_index("variant")
    assert table.loc["mixup", "health"] == "degenerate_boxes (2/2 seeds), near_zero_recall (1/2 seeds)"
    assert table["health"].isna()[["baseline", "ls"]].all()  # '' when healthy
    assert table.loc["mixup", "health_runs"] == 2 and table.loc["ls", "health_runs"] == 0
    assert not table["baseline_unhealthy"].any()
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["health"].fillna("")) == ["", "", "", "", "degenerate_boxes",
                                                 "degenerate_boxes, near_zero_recall"]


def test_collapsed_baseline_is_flagged_first_and_voids_every_delta(tmp_path: Path):
    root = tmp_path / "runs"
    write_all(root, [
        flagged(make_record("baseline", seed=0, mAP=0.0, AR100=0.0), DEGENERATE),
        flagged(make_record("baseline", seed=1, mAP=0.0, AR100=0.0), DEGENERATE),
        make_record("mixup", seed=0, mAP=0.40),
        make_record("mixup", seed=1, mAP=0.44),
    ])
    out = tmp_path / "out"
    report = build_report([root], out).read_text()

    lines = summary(report)
    assert "Collapsed baseline" in lines[0]  # the first thing the summary says
    assert "`baseline` (degenerate_boxes (2/2 seeds))" in lines[0]
    assert "collapsed or degenerate run" in lines[0] and "every ΔmAP against it is meaningless" in lines[0]
    # mixup's +42 points is no trick's effect: neither Helped nor Undecided, nor the best variant's margin.
    assert not any(line.startswith(("- **Helped**", "- **Hurt**", "- **Undecided**")) for line in lines)
    assert any("No ΔmAP can be read as a trick's effect" in line for line in lines)
    best = next(line for line in lines if line.startswith("- **Best variant**"))
    assert "`mixup`" in best and "`baseline`" not in best

    by = {r["Variant"]: r for r in md_table(report)}
    assert report.count("| baseline ") == 1  # one table row; the Run health section names it as code
    assert by["baseline"]["Health"] == f"{WARN} collapsed: degenerate_boxes (2/2 seeds)"
    assert by["mixup"]["Health"] == f"{WARN} baseline collapsed, ΔmAP meaningless"
    assert by["mixup"][DELTA_HEADER].startswith(f"{WARN} ")

    table = pd.read_csv(out / "table.csv").set_index("variant")
    assert table.loc["baseline", "health"] == "degenerate_boxes (2/2 seeds)"
    assert bool(table.loc["mixup", "baseline_unhealthy"]) and not bool(table.loc["baseline", "baseline_unhealthy"])
    # a collapsed baseline's spread is the collapse's: no σ_d, no seeds needed
    noise = section(report, "Seed noise and power")
    assert "The baseline collapsed (degenerate_boxes (2/2 seeds)" in noise
    assert "σ_d =" not in noise and "seeds** per variant" not in noise


def test_healthy_sweep_shows_no_health_marks(tmp_path: Path):
    root = tmp_path / "runs"
    write_all(root, [make_record("baseline", seed=0, mAP=0.40), make_record("mixup", seed=0, mAP=0.42)])
    out = tmp_path / "out"
    report = build_report([root], out).read_text()
    assert "Health" not in md_table(report)[0]
    assert WARN not in report and "## Run health" not in report and "Collapsed" not in report
    table = pd.read_csv(out / "table.csv")
    assert "health" in table.columns and table["health"].isna().all()
    assert (table["health_runs"] == 0).all()
