"""ablate.report's statistics: 95% CIs of ΔmAP, the seeds needed, freebie or special, cumulative and
factorial designs, the summary and the plots. Every expected number is computed by hand in the comments."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import pandas as pd
import pytest

from ablate.report import build_report, records_table
from ablate.report.stats import (Interval, compare, cumulative_steps, detect_design, detectable_change,
                                 factorial_effects, paired_interval, pareto_front, pooled_std, seeds_needed,
                                 seeds_needed_z, trick_kind, welch_interval)
from ablate.report.table import (DELTA_HEADER, epoch_curves, fmt_change, fmt_ci, per_class_deltas)
from ablate.results import COCO_METRICS
from test_report import make_record, md_table, section, write_all

MINUS = "\u2212"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T975_DF2 = 4.302652729749462  # t_{0.975, 2}
T975_DF1 = 12.706204736174694  # t_{0.975, 1}


def rec(variant: str, seed: int, points: float, tricks: list[str] | None = None, **kw):
    """A record with its mAP given in points (the table's unit)."""
    return make_record(variant, tricks=tricks, seed=seed, mAP=points / 100.0, **kw)


def series(variant: str, points: list[float], tricks: list[str] | None = None, created: str = "10", **kw):
    return [rec(variant, s, p, tricks, created_at=f"2025-03-01T{created}:00:0{s}", **kw) for s, p in enumerate(points)]


def report_of(tmp_path: Path, records, name: str = "sw") -> str:
    root = tmp_path / "runs" / name
    write_all(root, records)
    return build_report([root], tmp_path / "out" / name).read_text()


# ----------------------------------------------------------------------------------------------
# intervals


def test_paired_t_interval_by_hand():
    # diffs 1, 2, 3 points: mean 2.0, s_d = 1.0, half-width t_{0.975,2} · 1/√3 = 4.303 / 1.732 = 2.484.
    ci = paired_interval([1.0, 2.0, 3.0])
    assert ci.mean == pytest.approx(2.0) and ci.std == pytest.approx(1.0)
    assert ci.half == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4) == pytest.approx(2.4841, abs=1e-4)
    assert ci.low == pytest.approx(-0.4841, abs=1e-4) and ci.high == pytest.approx(4.4841, abs=1e-4)
    assert ci.n == 3 and ci.df == 2 and ci.method == "paired"
    assert not ci.excludes_zero and ci.sign == 0  # −0.48 < 0 < 4.48
    # 2, 2.5, 3: mean 2.5, s 0.5, half 4.303·0.5/√3 = 1.242 -> [1.26, 3.74], above zero.
    up = paired_interval([2.0, 2.5, 3.0])
    assert up.half == pytest.approx(T975_DF2 * 0.5 / math.sqrt(3)) and up.sign == 1
    assert paired_interval([-3.0, -2.5, -2.0]).sign == -1
    # compare() pairs by seed whatever the order of the dicts.
    paired = compare({2: 45.0, 0: 41.0, 1: 43.0}, {0: 40.0, 1: 41.0, 2: 42.0})
    assert paired.method == "paired" and paired.mean == pytest.approx(2.0) and paired.half == pytest.approx(2.4841,
                                                                                                             abs=1e-4)
    # Two seeds: diffs 1.5, 2.5 -> s = 0.7071, half = 12.706 · 0.7071/√2 = 6.353.
    assert compare({0: 41.5, 1: 44.5}, {0: 40.0, 1: 42.0}).half == pytest.approx(T975_DF1 * 0.5)


def test_one_seed_gives_no_interval():
    one = compare({0: 42.6}, {0: 40.0})
    assert one.mean == pytest.approx(2.6) and not one.has_ci and math.isnan(one.half)
    assert one.method == "paired" and one.n == 1 and one.sign == 0
    # Unpaired with one seed on a side: a difference of means (39.6 − 41.0), no interval.
    lone = compare({2: 39.6}, {0: 40.0, 1: 42.0})
    assert lone.method == "unpaired" and lone.mean == pytest.approx(-1.4) and not lone.has_ci
    # One seed the baseline also ran: paired on it (39.6 − 40.0), still no interval.
    one_of_two = compare({0: 39.6}, {0: 40.0, 1: 42.0})
    assert one_of_two.method == "paired" and one_of_two.mean == pytest.approx(-0.4) and not one_of_two.has_ci
    assert math.isnan(compare({}, {0: 40.0}).mean)


def test_welch_interval_by_hand():
    # a = 42, 44, 46 (mean 44, s² 4); b = 40, 42 (mean 41, s² 2): s_a²/n_a = 4/3, s_b²/n_b = 1, se² = 7/3;
    # ν = (7/3)² / ((4/3)²/2 + 1²/1) = (49/9) / (17/9) = 49/17 = 2.882; t_{0.975, 2.882} = 3.2572;
    # half = 3.2572 · √(7/3) = 4.9755.
    ci = welch_interval([42.0, 44.0, 46.0], [40.0, 42.0])
    assert ci.method == "welch" and ci.mean == pytest.approx(3.0)
    assert ci.df == pytest.approx(49 / 17)
    assert ci.half == pytest.approx(3.257208 * math.sqrt(7 / 3), abs=1e-4) == pytest.approx(4.9755, abs=1e-4)
    # compare() falls back to Welch when neither seed set contains the other...
    assert compare({1: 42.0, 2: 44.0, 3: 46.0}, {0: 40.0, 1: 42.0}).method == "welch"
    # ...and pairs on the seeds both ran when one does: 42 − 40, 44 − 42.
    nested = compare({0: 42.0, 1: 44.0, 2: 46.0}, {0: 40.0, 1: 42.0})
    assert nested.method == "paired" and nested.n == 2 and nested.mean == pytest.approx(2.0) and nested.half == 0.0


def test_ci_cell_formatting():
    assert fmt_ci(2.0, 2.484) == "+2.0 ± 2.5"  # spans zero: no mark
    assert fmt_ci(2.5, 1.242) == "**+2.5 ± 1.2**"  # excludes zero: bold
    assert fmt_ci(-2.5, 1.242) == f"**{MINUS}2.5 ± 1.2**"
    assert fmt_ci(3.0, 4.98, "welch", 2) == "+3.0 ± 5.0 (Welch)"
    assert fmt_ci(2.6, math.nan, "paired", 1) == "+2.6 (1 seed, no CI)"
    assert fmt_ci(math.nan, math.nan) == "n/a"
    assert fmt_change(5.0, "pct") == "+5.0%" and fmt_change(-20.0, "pct") == f"{MINUS}20%"
    assert fmt_change(0.01, "pct") == "0%" and fmt_change(0.25, "abs") == "+0.25 ms"
    assert fmt_change(-1.26, "abs") == f"{MINUS}1.3 ms" and fmt_change(math.nan, "pct") == "n/a"


# ----------------------------------------------------------------------------------------------
# the report's table, summary and notes


@pytest.fixture
def three_seeds() -> list:
    """Baseline 40, 41, 42 and tricks whose paired differences are set by hand:
    wide +1, +2, +3 (CI spans zero), tight +2, +2.5, +3 (above zero), worse −3, −2.5, −2 (below zero),
    and lone at seed 5 only, which the baseline did not run (42, one seed: 42 − mean 41 = +1.0, unpaired)."""
    return (series("baseline", [40.0, 41.0, 42.0], created="09")
            + series("wide", [41.0, 43.0, 45.0], created="10")
            + series("tight", [42.0, 43.5, 45.0], created="11")
            + series("worse", [37.0, 38.5, 40.0], created="12")
            + [rec("lone", 5, 42.0, None, created_at="2025-03-01T13:00:05")])


def test_ci_mark_where_the_corrected_verdict_is_helped_or_hurt(three_seeds, tmp_path: Path):
    report = report_of(tmp_path, three_seeds)
    by = {r["Variant"]: r for r in md_table(report)}
    assert by["baseline"][DELTA_HEADER] == "—"
    # Pooled over wide, tight and worse: SS 2 + 0.5 + 0.5 on 6 df, σ_d = √0.5 = 0.7071. Their residuals at
    # seeds 0, 1, 2 sum to −2, 0, +2 (the baseline's seed noise): ρ̂ = (8 − 3) / (12 · 0.5) = 5/6, so the pool
    # holds 6 / (1 + 2 · (5/6)²) = 2.51 df. wide: t = 2 / (0.7071/√3) = 4.899, p 0.024; tight and worse:
    # t = 6.124, p 0.0144; Holm: 0.0144 · 3 = 0.043 for all three. So wide is helped although its own
    # 95% CI [−0.48, +4.48] spans zero (the old mark).
    assert by["wide"][DELTA_HEADER] == "**+2.0 ± 2.5**" and by["wide"]["Verdict"] == "helped"
    assert by["tight"][DELTA_HEADER] == "**+2.5 ± 1.2**"  # [+1.26, +3.74]
    assert by["worse"][DELTA_HEADER] == f"**{MINUS}2.5 ± 1.2**" and by["worse"]["Verdict"] == "hurt"
    assert by["wide"]["p (Holm)"] == "0.024 (0.043)"
    assert by["lone"][DELTA_HEADER] == "+1.0 (1 seed, no CI)" and by["lone"]["Verdict"] == "undecided"
    assert by["lone"]["p (Holm)"] == "n/a"
    table = pd.read_csv(tmp_path / "out" / "sw" / "table.csv").set_index("variant")
    assert table.loc["wide", "delta_ci_half"] == pytest.approx(2.4841, abs=1e-4)
    assert table.loc["wide", "delta_ci_low"] == pytest.approx(-0.4841, abs=1e-4)
    assert table.loc["tight", "delta_ci_high"] == pytest.approx(2.5 + 1.2421, abs=1e-4)
    assert list(table["delta_sign"]) == [0, 0, 1, -1, 0]
    assert table.loc["wide", "delta_ci_method"] == "paired" and table.loc["wide", "delta_ci_df"] == 2
    assert math.isnan(table.loc["lone", "delta_ci_half"]) and table.loc["lone", "delta_ci_method"] == "unpaired"
    assert table.loc["wide", "sigma_d"] == pytest.approx(math.sqrt(0.5))
    assert table.loc["wide", "sigma_d_df"] == pytest.approx(6 / (1 + 2 * (5 / 6) ** 2))
    assert table.loc["wide", "p_difference_adjusted"] == pytest.approx(table.loc["tight", "p_difference"] * 3)


def test_the_report_leads_with_its_decisions(three_seeds, tmp_path: Path):
    report = report_of(tmp_path, three_seeds)
    decisions = section(report, "Decisions")
    lines = {line.split("**")[1]: line for line in decisions.splitlines() if line.startswith("- **")}
    assert set(lines) == {"Helped", "Hurt", "No effect", "Undecided", "Best variant"}
    assert "`tight` +2.5 [+1.3, +3.7]" in lines["Helped"] and "(p " not in lines["Helped"]  # p: in the table
    assert "`wide` +2.0 [" in lines["Helped"] and "`worse`" not in lines["Helped"]
    # wide's own CI [−0.5, +4.5] spans zero: the line says what its "helped" rests on (σ_d 0.71, Holm 0.043);
    # tight's excludes zero and needs no such word.
    assert (f"`wide` +2.0 [{MINUS}0.5, +4.5] (its own CI spans zero; decided on the base's pooled σ_d 0.71, "
            f"Holm p 0.043)") in lines["Helped"]
    assert "`tight` +2.5 [+1.3, +3.7]," in lines["Helped"] or lines["Helped"].endswith("`tight` +2.5 [+1.3, +3.7].")
    assert f"`worse` {MINUS}2.5 [{MINUS}3.7, {MINUS}1.3]" in lines["Hurt"] and "`tight`" not in lines["Hurt"]
    assert "`lone` +1.0 (1 seed, no CI)" in lines["Undecided"]
    assert "`tight`" not in lines["Undecided"] and "`wide`" not in lines["Undecided"]
    # Best: tight (43.5) over wide (43.0); paired diffs 1, 0.5, 0 -> +0.5 ± 4.303·0.5/√3 = ±1.2: within noise.
    assert "`tight`, 43.5 mAP" in lines["Best variant"] and "runner-up `wide` (43.0)" in lines["Best variant"]
    assert "+0.5 ± 1.2" in lines["Best variant"] and "within noise" in lines["Best variant"]
    assert "after Holm's correction over the 3 variants tested (α = 0.05)" in decisions
    # The decisions come first, then the table; the method at the end, after the plots and the runs.
    order = [report.index(h) for h in ("## Decisions", "| Variant", "## Plots", "## Seed noise and power",
                                       "## Notes")]
    assert order == sorted(order)
    assert report.split("## Decisions")[0].count("\n- ") == 0  # no method or caveat before it
    notes = section(report, "Notes")
    assert notes.startswith("\n- Decisions: Holm's correction over the 3 variants tested, α = 0.05: paired t-tests")


def test_verdicts_after_holm_on_pooled_noise_with_an_outlier_left_out(tmp_path: Path):
    # Baseline 40, 40, 40. Differences: up 2, 3, 4; down −2, −3, −4; flat 0.1, −0.1, 0; noisy 5, −5, 0;
    # edge 1.0, 1.1, 0.9.
    report = report_of(tmp_path, series("baseline", [40.0, 40.0, 40.0], created="09")
                       + series("up", [42.0, 43.0, 44.0], created="10")
                       + series("down", [38.0, 37.0, 36.0], created="11")
                       + series("flat", [40.1, 39.9, 40.0], created="12")
                       + series("noisy", [45.0, 35.0, 40.0], created="13")
                       + series("edge", [41.0, 41.1, 40.9], created="14"))
    table = pd.read_csv(tmp_path / "out" / "sw" / "table.csv").set_index("variant")
    # noisy's variance 25 against the pool of the others, 4.04/8 = 0.505: F = 49.5 on (2, 8) df,
    # p = (1 + 2·49.5/8)^−4 = 3.1e−5 < 0.05/5: left out. Then up's F = 1/(2.04/6) = 2.94 on (2, 6),
    # p = 0.13 > 0.05/4: kept. Pool: √(4.04/8) = 0.7106 on 8 df (residuals at a seed cancel: ρ̂ = 0).
    assert table.loc["up", "sigma_d"] == pytest.approx(math.sqrt(4.04 / 8)) and table.loc["up", "sigma_d_df"] == 8
    assert not table.loc["noisy", "sigma_d_pooled"] and table.loc["noisy", "sigma_d"] == pytest.approx(5.0)
    se = math.sqrt(4.04 / 8) / math.sqrt(3)
    # up: t = 3/se = 7.312 on 8 df, p 8.3e−5, Holm · 5.
    assert table.loc["up", "p_difference"] == pytest.approx(8.29e-5, rel=1e-2)
    assert table.loc["up", "p_difference_adjusted"] == pytest.approx(5 * table.loc["up", "p_difference"])
    # edge: t = 1/se = 2.437, p 0.0407 < α raw (its own 95% CI ±0.25 excludes zero), Holm · 3 = 0.122: undecided.
    assert table.loc["edge", "p_difference"] == pytest.approx(0.0407, abs=2e-4)
    assert table.loc["edge", "p_difference_adjusted"] == pytest.approx(0.1222, abs=5e-4)
    # flat: margin X = max(0.5, (t_{0.99,8} + t_{0.9,8}) · se) = (2.8965 + 1.3968) · 0.4103 = 1.761; TOST
    # t = 1.761/se = 4.293, p 0.0013, Holm · 5 = 0.0066: no effect within ±1.76.
    assert table.loc["flat", "margin"] == pytest.approx(1.7615, abs=1e-3)
    assert table.loc["flat", "p_equivalence_adjusted"] == pytest.approx(5 * 0.00132, abs=2e-4)
    assert dict(table["verdict"].dropna()) == {"up": "helped", "down": "hurt", "flat": "no_effect",
                                               "noisy": "undecided", "edge": "undecided"}
    by = {r["Variant"]: r for r in md_table(report)}
    assert by["flat"]["Verdict"] == r"no effect (\|Δ\| < 1.8)"  # the pipes escaped in the markdown cell
    assert by["edge"][DELTA_HEADER] == "+1.0 ± 0.2" and by["edge"]["p (Holm)"] == "0.041 (0.12)"
    noise = section(report, "Seed noise and power")
    assert "σ_d = 0.71 points, pooled over the paired per-seed differences of 4 variants" in noise
    assert "left out of the pool, its own variance an outlier (Cochran's C at 0.05): `noisy`" in noise
    # Power after the correction: two-sided α/5 = 0.01, σ_d on 4·(n − 1) df. z: (2.5758 + 0.8416)² · (0.7106/0.5)²
    # = 23.6 -> 24; with t, n = 25 (96 df) needs (2.628 + 0.845)² · 2.02 = 24.4 <= 25. Detectable with 3 seeds
    # (8 df): (t_{0.995,8} + t_{0.8,8}) · 0.4103 = (3.3554 + 0.8889) · 0.4103 = 1.74.
    assert "α = 0.05 after Holm's correction over 5 variants (paired, two-sided α/5 = 0.01, its first step)" in noise
    assert "needs **25 seeds** per variant" in noise and "gives 24" in noise
    assert "80% power at that level is 1.74 points" in noise


def test_single_seed_sweep_says_no_interval_can_be_given(tmp_path: Path):
    report = report_of(tmp_path, [rec("baseline", 0, 55.7, created_at="2025-03-01T10:00:00"),
                                  rec("warmup", 0, 58.3, created_at="2025-03-01T11:00:00"),
                                  rec("mixup", 0, 38.0, created_at="2025-03-01T12:00:00")])
    by = {r["Variant"]: r for r in md_table(report)}
    assert by["warmup"][DELTA_HEADER] == "+2.6 (1 seed, no CI)"
    assert by["mixup"][DELTA_HEADER] == f"{MINUS}17.7 (1 seed, no CI)"  # 38.0 − 55.7
    noise = section(report, "Seed noise and power")
    assert "cannot be estimated from this sweep" in noise and "single seed" in noise
    assert "seeds needed" in noise and "**" not in noise  # no number of seeds is claimed
    assert "No confidence interval can be given for `warmup`, `mixup`" in section(report, "Notes")
    decisions = section(report, "Decisions")
    assert "- **Helped**: none." in decisions
    assert "`warmup` +2.6 (1 seed, no CI)" in decisions and "cannot be told from noise" in decisions
    assert "No variant could be tested" in decisions
    assert "- Decisions: none tested" in section(report, "Notes")


def test_welch_interval_in_the_table_when_seeds_differ(tmp_path: Path):
    # Variant at seeds 1, 2, 3 = 42, 44, 46; baseline at seeds 0, 1 = 40, 42 (see test_welch_interval_by_hand):
    # neither seed set contains the other, so the two groups are compared as independent.
    records = series("baseline", [40.0, 42.0]) + [rec("mosaic", s, p, None, created_at=f"2025-03-01T11:00:0{s}")
                                                  for s, p in ((1, 42.0), (2, 44.0), (3, 46.0))]
    report = report_of(tmp_path, records)
    assert {r["Variant"]: r for r in md_table(report)}["mosaic"][DELTA_HEADER] == "+3.0 ± 5.0 (Welch)"
    assert "Unpaired ΔmAP" in section(report, "Notes") and "Welch" in section(report, "Notes")
    # No paired seeds: σ_d ≈ √2 · σ = √2 · √2 = 2.0; n_z = ⌈(2.8016 · 2.0/0.5)²⌉ = ⌈125.6⌉ = 126, t-iterated 128.
    noise = section(report, "Seed noise and power")
    assert "σ = 1.41 points" in noise and "σ_d ≈ √2·σ = 2.00 points" in noise
    assert "**128 seeds**" in noise and "gives 126" in noise and "too few" in noise


def test_a_trick_stopped_before_its_baseline_is_paired_on_the_seeds_it_ran(tmp_path: Path):
    """An adaptive sweep stops a trick at 2 seeds while its baseline runs on for the other tricks: the
    trick's ΔmAP and interval are the paired ones on seeds 0-1, not Welch's over unequal groups."""
    # Baseline 40, 42, 47 (a noisy third seed); mixup 37, 39.5 at seeds 0-1: differences −3.0, −2.5, mean −2.75,
    # s = 0.3536, half t_{0.975,1} · 0.3536/√2 = 12.706 · 0.25 = 3.18. Welch would say 38.25 − 43.0 = −4.75.
    records = series("baseline", [40.0, 42.0, 47.0]) + series("mixup", [37.0, 39.5], created="11")
    report = report_of(tmp_path, records)
    row = {r["Variant"]: r for r in md_table(report)}["mixup"]
    assert row[DELTA_HEADER] == f"{MINUS}2.8 ± 3.2"
    table = pd.read_csv(tmp_path / "out" / "sw" / "table.csv").set_index("variant")
    assert table.loc["mixup", "delta_ci_method"] == "paired" and table.loc["mixup", "delta_seeds"] == 2
    assert table.loc["mixup", "delta_mAP"] == pytest.approx(-2.75)
    assert table.loc["mixup", "delta_ci_half"] == pytest.approx(12.7062 * 0.25, abs=1e-3)
    notes = section(report, "Notes")
    assert "`mixup` (2 of 3)" in notes and "Unpaired" not in notes


# ----------------------------------------------------------------------------------------------
# seeds needed


def test_seeds_needed_by_hand():
    # z_{0.975} + z_{0.8} = 1.95996 + 0.84162 = 2.80158.
    # σ_d = 0.5, δ = 0.5: (2.80158)² = 7.849 -> 8 with z. With t: n = 9 needs (2.3060 + 0.8889)² = 10.21 > 9;
    # n = 10 needs (2.2622 + 0.8834)² = 9.895 ≤ 10 -> 10.
    assert seeds_needed_z(0.5, 0.5) == 8
    assert seeds_needed(0.5, 0.5) == 10
    # σ_d = 1.0: 4 · 7.849 = 31.4 -> 32 with z; with t, n = 33 needs 33.41 > 33, n = 34 needs 33.34 -> 34.
    assert seeds_needed_z(1.0) == 32 and seeds_needed(1.0) == 34
    assert seeds_needed(math.nan) == 0 and seeds_needed(0.0) == 2
    # Detectable change with 3 seeds, σ_d = 1: (t_{0.975,2} + t_{0.8,2}) / √3 = (4.3027 + 1.0607) / 1.7321 = 3.097.
    assert detectable_change(1.0, 3) == pytest.approx(3.0965, abs=1e-3)
    assert math.isnan(detectable_change(1.0, 1))
    # Pooled std: groups 1,2,3 (SS 2) and 2,2.5,3 (SS 0.5): √(2.5/4) = 0.79; one-value groups add nothing.
    sd, dof = pooled_std([[1.0, 2.0, 3.0], [2.0, 2.5, 3.0], [7.0]])
    assert dof == 4 and sd == pytest.approx(math.sqrt(2.5 / 4))
    assert pooled_std([[1.0]]) == (pytest.approx(math.nan, nan_ok=True), 0)


def test_power_paragraph_from_paired_differences(tmp_path: Path):
    # One trick, diffs 1, 2, 3 -> σ_d = 1.00 (2 degrees of freedom): 34 seeds needed (32 with z); with the
    # sweep's 3 seeds the detectable change is 3.10 points.
    report = report_of(tmp_path, series("baseline", [40.0, 41.0, 42.0]) + series("wide", [41.0, 43.0, 45.0], created="11"))
    noise = section(report, "Seed noise and power")
    assert "σ = 1.00 points (std of its mAP over 3 seeds)" in noise
    assert "σ_d = 1.00 points, pooled over the paired per-seed differences of 1 variant" in noise
    assert "(2 degrees of freedom)" in noise
    assert "0.5-point ΔmAP with 80% power at α = 0.05 (paired, two-sided)" in noise  # one variant: no correction
    assert "**34 seeds**" in noise and "gives 32" in noise
    assert ("3 seeds: the smallest ΔmAP a paired comparison over them detects with 80% power at that level is "
            "3.10 points") in noise
    assert "too few to resolve a 0.5-point change" in noise


# ----------------------------------------------------------------------------------------------
# costs and kind


def test_freebie_or_special_from_params_and_flops():
    assert trick_kind(3.0, 2.5, 3.0, 2.5) == "freebie"
    assert trick_kind(3.015, 2.5, 3.0, 2.5) == "freebie"  # +0.5%: within the tolerance
    assert trick_kind(3.03, 2.5, 3.0, 2.5) == "special"  # +1% params
    assert trick_kind(3.0, 2.45, 3.0, 2.5) == "special"  # −2% FLOPs
    assert trick_kind(3.0, math.nan, 3.0, 2.5) == "freebie"  # only params known
    assert trick_kind(math.nan, math.nan, 3.0, 2.5) == ""


def test_cost_columns_are_changes_against_the_baseline(tmp_path: Path):
    base = rec("baseline", 0, 40.0)  # train 120 s, 50 img/s, 8.00 ms, 3.00 M, 2.50 G (make_record)
    base.peak_memory_mb = 1000.0
    ema = rec("ema", 0, 41.0, created_at="2025-03-01T11:00:00")
    ema.params, ema.timings, ema.inference_ms_per_image = 3_010_000, {"train_s": 126.0, "images_per_s": 40.0}, 8.25
    ema.peak_memory_mb = 1000.0
    spp = rec("spp", 0, 42.0, created_at="2025-03-01T12:00:00")
    spp.params, spp.flops, spp.peak_memory_mb = 3_300_000, 2_750_000_000, 1100.0
    gn = rec("gn", 0, 40.5, created_at="2025-03-01T13:00:00")
    gn.flops = 2_525_000_000  # +1% FLOPs, same params
    na = rec("iou_balanced", 0, 0.0, status="not_applicable", error="does not fit model=fcos",
             created_at="2025-03-01T14:00:00")
    report = report_of(tmp_path, [base, ema, spp, gn, na])
    by = {r["Variant"]: r for r in md_table(report)}
    assert list(by["baseline"])[:7] == ["Variant", "Kind", "Seeds", DELTA_HEADER, "Verdict", "p (Holm)", "mAP"]
    b = by["baseline"]
    assert (b["Kind"], b["Train time"], b["Images/s"], b["Peak mem"], b["ms/img"], b["Params"], b["FLOPs"]) == \
        ("—", "120 s", "50.0", "1,000 MB", "8.00 ms", "3.00 M", "2.50 G")
    e = by["ema"]  # params +0.33%: a freebie; 126/120 = +5.0%, 40/50 = −20%, 8.25 − 8.00 = +0.25 ms
    assert (e["Kind"], e["Train time"], e["Images/s"], e["Peak mem"], e["ms/img"], e["Params"], e["FLOPs"]) == \
        ("freebie", "+5.0%", f"{MINUS}20%", "0%", "+0.25 ms", "+0.3%", "0%")
    s = by["spp"]
    assert (s["Kind"], s["Params"], s["FLOPs"], s["Peak mem"]) == ("special", "+10%", "+10%", "+10%")
    assert by["gn"]["Kind"] == "special" and by["gn"]["FLOPs"] == "+1.0%" and by["gn"]["Params"] == "0%"
    # A trick that does not apply: n/a everywhere, never a zero change.
    row = by["iou_balanced"]
    assert all(row[c] == "n/a" for c in ("Kind", DELTA_HEADER, "mAP", "Train time", "ms/img", "Params", "FLOPs"))
    assert not any(cell.startswith(("+0", "0%", "0 ms")) for cell in row.values())
    assert "## Variants that do not apply" in report and "does not fit model=fcos" in report
    table = pd.read_csv(tmp_path / "out" / "sw" / "table.csv").set_index("variant")
    assert table.loc["ema", "train_s_change_pct"] == pytest.approx(5.0)
    assert table.loc["ema", "inference_ms_change"] == pytest.approx(0.25)
    assert table.loc["spp", "params_change_pct"] == pytest.approx(10.0)
    assert table.loc["ema", "kind"] == "freebie" and table.loc["spp", "kind"] == "special"
    assert math.isnan(table.loc["baseline", "train_s_change_pct"])


def test_train_time_is_cpu_seconds_for_a_base_whose_runs_shared_the_cpu(tmp_path: Path):
    # Alone, a CPU run trains at a steady CPU share: baseline 120 s wall, 118 s CPU (0.983); warmup 125 s wall,
    # 120 s CPU (0.96): within x1.25, so wall time is shown: +4.2%.
    def timed(variant, wall, cpu, created):
        r = rec(variant, 0, 40.0, created_at=f"2025-03-01T{created}:00:00")
        r.timings = {"train_s": wall, "train_cpu_s": cpu, "images_per_s": 2000 / wall}
        return r
    alone = report_of(tmp_path, [timed("baseline", 120.0, 118.0, "10"), timed("warmup", 125.0, 120.0, "11")], "alone")
    by = {r["Variant"]: r for r in md_table(alone)}
    assert (by["baseline"]["Train time"], by["warmup"]["Train time"]) == ("120 s", "+4.2%")
    assert "CPU seconds of training" not in alone
    # Beside another job, warmup took 250 s of wall time for 120 s of CPU (0.48 against the baseline's 0.983,
    # x2.05 apart): its +108% would measure the other job. From CPU seconds: 120/118 = +1.7%, and images per
    # CPU second 2000/120 = 16.67 against 2000/118 = 16.95: −1.7%.
    shared = report_of(tmp_path, [timed("baseline", 120.0, 118.0, "10"), timed("warmup", 250.0, 120.0, "11")],
                       "shared")
    by = {r["Variant"]: r for r in md_table(shared)}
    assert (by["baseline"]["Train time"], by["baseline"]["Images/s"]) == ("118 s (CPU)", "16.9 (CPU)")
    assert (by["warmup"]["Train time"], by["warmup"]["Images/s"]) == ("+1.7%", f"{MINUS}1.7%")
    assert "are CPU seconds of training, marked (CPU), not wall time" in shared and "0.48–0.98" in shared
    table = pd.read_csv(tmp_path / "out" / "shared" / "table.csv").set_index("variant")
    assert list(table["timing_basis"]) == ["cpu", "cpu"]
    assert table.loc["warmup", "train_s_change_pct"] == pytest.approx(100 * (120 / 118 - 1))
    # An accelerator's runs have no CPU share (the CPU waits on the device): wall time, whatever the spread.
    gpu = [timed("baseline", 120.0, 118.0, "10"), timed("warmup", 250.0, 120.0, "11")]
    for r in gpu:
        r.device = "cuda:0"
    by = {r["Variant"]: r for r in md_table(report_of(tmp_path, gpu, "gpu"))}
    assert (by["baseline"]["Train time"], by["warmup"]["Train time"]) == ("120 s", "+108%")


def test_a_cpu_peak_that_may_be_an_earlier_runs_is_not_shown(tmp_path: Path):
    # Records made before peak_memory_scope kept the process's peak: in a sweep (one process) the runs after the
    # biggest one all show its peak. Shown as n/a, never as a change; a GPU run's peak was always its own.
    base, ema = rec("baseline", 0, 40.0), rec("ema", 0, 41.0, created_at="2025-03-01T11:00:00")
    base.peak_memory_mb, ema.peak_memory_mb = 1000.0, 1130.0
    ema.peak_memory_scope = ""
    report = report_of(tmp_path, [base, ema], "old")
    by = {r["Variant"]: r for r in md_table(report)}
    assert by["baseline"]["Peak mem"] == "1,000 MB" and by["ema"]["Peak mem"] == "n/a"
    assert "Peak mem is n/a for the CPU runs recorded before each run's peak was its own" in report
    for r in (base, ema):
        r.device = "cuda:0"
    by = {r["Variant"]: r for r in md_table(report_of(tmp_path, [base, ema], "gpu"))}
    assert by["ema"]["Peak mem"] == "+13%"


def test_table_csv_has_all_coco_metrics_and_ci_columns(three_seeds, tmp_path: Path):
    for r in three_seeds:
        r.metrics["AR100"] = r.metrics["mAP"] + 0.1
    report_of(tmp_path, three_seeds)
    table = pd.read_csv(tmp_path / "out" / "sw" / "table.csv")
    for name in COCO_METRICS:
        assert name in table.columns and f"{name}_std" in table.columns
    for column in ("delta_ci_low", "delta_ci_high", "delta_ci_half", "delta_ci_method", "delta_ci_df", "delta_sign",
                   "peak_memory_mb", "kind"):
        assert column in table.columns
    t = table.set_index("variant")
    assert t.loc["baseline", "AR100"] == pytest.approx(51.0) and t.loc["baseline", "AR100_std"] == pytest.approx(1.0)
    assert math.isnan(t.loc["baseline", "AR1"])


def test_metrics_over_seeds_section(three_seeds, tmp_path: Path):
    metrics = section(report_of(tmp_path, three_seeds), "Metrics over seeds")
    # baseline 40, 41, 42: AP50 = mAP + 20 -> 61.0 ± 1.0; tight 42, 43.5, 45 -> 43.5 ± 1.5.
    row = next(line for line in metrics.splitlines() if "`baseline`" in line)
    assert "41.0 ± 1.0" in row and "61.0 ± 1.0" in row
    assert "43.5 ± 1.5" in next(line for line in metrics.splitlines() if "`tight`" in line)


# ----------------------------------------------------------------------------------------------
# designs


def test_detect_design():
    assert detect_design([(), ("a",), ("a", "b"), ("a", "b", "c")]) == ("cumulative", ["a", "b", "c"])
    assert detect_design([("b", "a"), (), ("b",)]) == ("cumulative", ["b", "a"])
    assert detect_design([(), ("a",), ("b",), ("a", "b")]) == ("factorial", ["a", "b"])
    assert detect_design([(), ("a",), ("b",), ("c",)]) == ("", [])  # one at a time
    assert detect_design([(), ("a", "b", "c"), ("b", "c"), ("a", "c"), ("a", "b")]) == ("", [])  # leave one out
    assert detect_design([(), ("a",)]) == ("", [])  # one trick: nothing to add
    assert detect_design([("a",), ("a", "b")]) == ("", [])  # no baseline


def test_cumulative_running_totals(tmp_path: Path):
    # Seeds 0, 1, 2. baseline 40, 41, 42; +a 41, 43, 45; +b 43, 44, 48; +c 42, 43, 46.
    # a: step = total = diffs 1, 2, 3 -> +2.0 ± 2.484.
    # b: step diffs 2, 1, 3 -> +2.0 ± 2.484; total diffs 3, 3, 6 -> mean 4, s √3, half 4.303·√3/√3 = 4.303.
    # c: step diffs −1, −1, −2 -> −1.333, s 0.577, half 1.434; total diffs 2, 2, 4 -> +2.667, s 1.155, half 2.869.
    records = (series("baseline", [40.0, 41.0, 42.0], created="09")
               + series("a", [41.0, 43.0, 45.0], ["a"], created="10")
               + series("a+b", [43.0, 44.0, 48.0], ["a", "b"], created="11")
               + series("a+b+c", [42.0, 43.0, 46.0], ["a", "b", "c"], created="12"))
    values = {frozenset(): {0: 40.0, 1: 41.0, 2: 42.0}, frozenset("a"): {0: 41.0, 1: 43.0, 2: 45.0},
              frozenset("ab"): {0: 43.0, 1: 44.0, 2: 48.0}, frozenset("abc"): {0: 42.0, 1: 43.0, 2: 46.0}}
    steps = cumulative_steps(["a", "b", "c"], values)
    assert [s.added for s in steps] == ["a", "b", "c"]
    assert [s.step.mean for s in steps] == pytest.approx([2.0, 2.0, -4 / 3])
    assert [s.total.mean for s in steps] == pytest.approx([2.0, 4.0, 8 / 3])
    assert steps[1].total.half == pytest.approx(T975_DF2)
    assert steps[2].step.half == pytest.approx(T975_DF2 * math.sqrt(1 / 3) / math.sqrt(3))
    assert steps[2].total.half == pytest.approx(T975_DF2 * math.sqrt(4 / 3) / math.sqrt(3))

    report = report_of(tmp_path, records)
    text = section(report, "Cumulative design")
    assert "starting from the baseline (41.0 mAP)" in text
    rows = md_table("\n" + text)
    assert [r["Adds"] for r in rows] == ["a", "b", "c"]
    assert [r["Δ vs previous row"] for r in rows] == ["+2.0 ± 2.5", "+2.0 ± 2.5", f"{MINUS}1.3 ± 1.4"]
    assert [r["Running total Δ"] for r in rows] == ["+2.0 ± 2.5", "+4.0 ± 4.3", "+2.7 ± 2.9"]
    assert [r["mAP"] for r in rows] == ["43.0", "45.0", "43.7"]
    assert "## Factorial design" not in report


def test_factorial_main_effects_and_interaction(tmp_path: Path):
    # Seeds 0, 1, 2. {} 40, 41, 42; {a} 42, 43, 44; {b} 41, 42, 43; {a, b} 45, 47, 46.
    # main a per seed = ((a + ab) − (∅ + b)) / 2 = 3, 3.5, 2.5 -> +3.0, s 0.5, half 1.242: beyond noise.
    # main b per seed = ((b + ab) − (∅ + a)) / 2 = 2, 2.5, 1.5 -> +2.0 ± 1.242.
    # a × b per seed = ((∅ + ab) − (a + b)) / 2 = 1, 1.5, 0.5 -> +1.0 ± 1.242: spans zero.
    records = (series("baseline", [40.0, 41.0, 42.0], created="09")
               + series("a", [42.0, 43.0, 44.0], ["a"], created="10")
               + series("b", [41.0, 42.0, 43.0], ["b"], created="11")
               + series("a+b", [45.0, 47.0, 46.0], ["a", "b"], created="12"))
    values = {frozenset(): {0: 40.0, 1: 41.0, 2: 42.0}, frozenset("a"): {0: 42.0, 1: 43.0, 2: 44.0},
              frozenset("b"): {0: 41.0, 1: 42.0, 2: 43.0}, frozenset("ab"): {0: 45.0, 1: 47.0, 2: 46.0}}
    effects = {e.name: e.interval for e in factorial_effects(["a", "b"], values)}
    assert set(effects) == {"a", "b", "a × b"}
    assert effects["a"].mean == pytest.approx(3.0) and effects["b"].mean == pytest.approx(2.0)
    assert effects["a × b"].mean == pytest.approx(1.0)
    assert effects["a"].half == pytest.approx(T975_DF2 * 0.5 / math.sqrt(3))
    assert effects["a"].excludes_zero and not effects["a × b"].excludes_zero
    # Different seed sets: effects from the cell means, no CI (means 41, 43, 42, 46 -> a = 3, b = 2, a×b = 1).
    uneven = {**values, frozenset("ab"): {0: 45.0, 1: 47.0}}
    e2 = {e.name: e.interval for e in factorial_effects(["a", "b"], uneven)}
    assert e2["a"].mean == pytest.approx(3.0) and not e2["a"].has_ci
    # A combination without an ok run: no effect.
    assert math.isnan(factorial_effects(["a", "b"], {**values, frozenset("ab"): {}})[0].interval.mean)

    report = report_of(tmp_path, records)
    text = section(report, "Factorial design")
    assert "All 2^2 = 4 combinations of 2 tricks (a, b)" in text
    rows = {r["Effect"]: r["Estimate ± 95% CI"] for r in md_table("\n" + text)}
    assert rows == {"main: a": "**+3.0 ± 1.2**", "main: b": "**+2.0 ± 1.2**", "interaction: a × b": "+1.0 ± 1.2"}
    assert "## Cumulative design" not in report


def test_one_at_a_time_has_no_design_section(three_seeds, tmp_path: Path):
    report = report_of(tmp_path, three_seeds)
    assert "## Cumulative design" not in report and "## Factorial design" not in report


# ----------------------------------------------------------------------------------------------
# plots and their data


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_every_plot_is_a_valid_png_and_linked(three_seeds, tmp_path: Path):
    for r in three_seeds:
        r.per_class_ap = {"cat": r.metrics["mAP"], "dog": r.metrics["mAP"] - 0.1}
        r.curve = [{"epoch": 1, "step": 5, "loss": 2.5, "lr": 0.01},
                   {"epoch": 1, "step": 10, "epoch_loss": 2.0, "val_mAP": r.metrics["mAP"] / 2},
                   {"epoch": 2, "step": 20, "epoch_loss": 1.0, "val_mAP": r.metrics["mAP"]}]
    report = report_of(tmp_path, three_seeds)
    out = tmp_path / "out" / "sw"
    for name in ("delta_map.png", "curves.png", "pareto.png", "per_class.png"):
        width, height = _png_size(out / name)
        assert width >= 400 and height >= 250, name
        assert (out / name).stat().st_size > 5_000, name  # drawn, not blank
        assert f"]({name})" in report, name
    # Files are replaced whole: nothing but the report's files, no temp file left behind.
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "delta_map.png", "pareto.png", "per_class.png",
                                                     "report.md", "runs.csv", "table.csv"]


def test_plots_without_curves_or_per_class_still_written(tmp_path: Path):
    lone = rec("baseline", 0, 40.0)
    lone.inference_ms_per_image = None
    report_of(tmp_path, [lone])
    out = tmp_path / "out" / "sw"
    for name in ("delta_map.png", "curves.png", "pareto.png", "per_class.png"):
        _png_size(out / name)


def test_per_class_deltas_and_curves_by_hand(tmp_path: Path):
    records = []
    for seed, (b, v) in enumerate([(0.40, 0.45), (0.42, 0.45)]):
        base = rec("baseline", seed, 40.0)
        base.per_class_ap = {"cat": b, "dog": 0.30, "cow": -1.0}
        base.curve = [{"epoch": 1, "step": 1, "epoch_loss": 2.0 + seed}, {"epoch": 2, "step": 2, "epoch_loss": 1.0,
                                                                           "val_mAP": 0.40 + seed / 100}]
        trick = rec("mixup", seed, 41.0, created_at="2025-03-01T11:00:00")
        trick.per_class_ap = {"cat": v, "dog": 0.28, "cow": -1.0}
        trick.curve = [{"epoch": 1, "step": 5, "loss": 3.0}, {"epoch": 1, "step": 10, "loss": 1.0}]  # no epoch entry
        records += [base, trick]
    table = records_table(records)
    deltas = per_class_deltas(records, table)
    # cat: (45 − 40 + 45 − 42) / 2 = +4.0; dog: 28 − 30 = −2.0; cow: −1 (no ground truth) on both sides -> NaN.
    assert list(deltas.index) == ["mixup"] and list(deltas.columns) == ["cat", "cow", "dog"]
    assert deltas.loc["mixup", "cat"] == pytest.approx(4.0) and deltas.loc["mixup", "dog"] == pytest.approx(-2.0)
    assert math.isnan(deltas.loc["mixup", "cow"])
    by_base = epoch_curves(records, table)
    assert list(by_base) == [""]  # one base, unnamed (its runs' names have no "<baseline>/")
    curves = by_base[""]
    assert list(curves) == ["baseline", "mixup"]
    # baseline epoch 1 loss: (2 + 3) / 2 = 2.5; epoch 2: 1.0, val mAP (40 + 41) / 2 = 40.5 points.
    assert list(curves["baseline"]["loss"]) == pytest.approx([2.5, 1.0])
    assert curves["baseline"].loc[2, "val_mAP"] == pytest.approx(40.5) and math.isnan(curves["baseline"].loc[1, "val_mAP"])
    # mixup: no epoch entry, so the mean of its logged step losses in epoch 1: (3 + 1) / 2 = 2.0.
    assert list(curves["mixup"]["loss"]) == pytest.approx([2.0])


def test_pareto_front():
    # (ms, mAP): b is faster and better than c; d is slowest but best; a is fastest.
    points = [(5.0, 40.0), (6.0, 43.0), (7.0, 42.0), (9.0, 45.0), (float("nan"), 50.0), (6.0, 43.0)]
    assert pareto_front(points) == [0, 1, 5, 3]  # ties are both on the front; c and the NaN are not
    assert pareto_front([]) == []
    assert isinstance(Interval(), Interval) and not Interval().has_ci
