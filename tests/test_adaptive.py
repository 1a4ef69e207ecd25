"""Adaptive seeds (ablate/sweep/adaptive.py): the sequential rule's error rates by Monte Carlo on
simulated sweeps with known effects, hand-computed looks, Holm's adjustment, and a smoke sweep
that adds seeds only where the answer is open and takes the same rounds when launched again."""
import json
import math
import re

import numpy as np
import pytest

from ablate.results import read_record
from ablate.sweep.adaptive import (HELPED, HURT, NO_EFFECT, OPEN, UNDECIDED, Plan, PlanError, decide,
                                   decisions_from_records, holm, look, pooled_sigma, run_plan, simulate)
from ablate.sweep.design import SweepFileError, load_sweep
from conftest import REPO_ROOT, ablate, paths

SIMS = 20_000


def tolerance(rate: float, sims: int = SIMS) -> float:
    """Three standard errors of a Monte Carlo share."""
    return 3 * math.sqrt(rate * (1 - rate) / sims)


@pytest.mark.parametrize("plan", [Plan(2, 8, 0.3), Plan(3, 5, 0.5), Plan(2, 2, 0.3), Plan(4, 12, 0.2, alpha=0.1)])
@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_no_effect_is_called_a_gain_or_loss_at_most_alpha_of_the_time(plan, sigma):
    rates = simulate(plan, effect=0.0, sigma=sigma, sims=SIMS, seed=1)
    assert rates[HELPED] + rates[HURT] <= plan.alpha + tolerance(plan.alpha)


@pytest.mark.parametrize("plan", [Plan(2, 8, 0.3), Plan(3, 5, 0.5), Plan(4, 12, 0.2, alpha=0.1)])
@pytest.mark.parametrize("sign", [1, -1])
def test_an_effect_of_the_margin_is_called_no_effect_at_most_alpha_of_the_time(plan, sign):
    # the hardest case for the equivalence claim: the true change sits on the margin (σ_d small enough
    # that every plan here can reach its margin, so the margin tested is the plan's)
    rates = simulate(plan, effect=sign * plan.margin, sigma=0.05, sims=SIMS, seed=2)
    assert rates[NO_EFFECT] <= plan.alpha + tolerance(plan.alpha)


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_eight_tricks_of_no_effect_make_any_false_gain_or_loss_at_most_alpha_of_the_time(sigma):
    # the family-wise error over a sweep of 8 tricks (the old rule stopped on raw p-values: its Holm
    # verdicts kept this, but it stopped tricks Holm would not decide)
    rates = simulate(Plan(2, 8, 1.0), effect=0.0, sigma=sigma, sims=4000, seed=6, tricks=8)
    assert rates["any_difference"] <= 0.05 + tolerance(0.05, 4000)


def test_clear_effects_and_clear_non_effects_are_decided_early():
    plan = Plan(2, 8, 0.3)
    gain = simulate(plan, effect=1.5, sigma=0.5, sims=SIMS, seed=3)
    assert gain[HELPED] >= 0.95 and gain["mean_seeds"] < 5
    loss = simulate(plan, effect=-1.5, sigma=0.5, sims=SIMS, seed=4)
    assert loss[HURT] >= 0.95
    tiny = simulate(plan, effect=0.0, sigma=0.05, sims=SIMS, seed=5)
    assert tiny[NO_EFFECT] >= 0.95 and tiny["mean_seeds"] < 4


def test_look_by_hand():
    # one trick, d = [1, 2]: mean 1.5, sd 0.7071, se 0.5, t = 3 on 1 df (Cauchy): p = 1 − 2·atan(3)/π
    at = look(np.array([[[1.0, 2.0]]]), np.array([[2]]), np.array([0]), margin=0.3, alpha=0.05, tricks=1,
              last_weight=1.0, max_seeds=2, power=0.8)
    assert at.p_difference[0, 0] == pytest.approx(1 - 2 * math.atan(3) / math.pi)
    # reachable margin at max 2 seeds: (t_{0.95,1} + t_{0.9,1})·0.7071/√2 = (6.3138 + 3.0777)·0.5 = 4.6957 > 0.3
    assert at.margin[0, 0] == pytest.approx(4.6957, abs=1e-3)
    # TOST within ±4.6957: the larger p is that of H0 mean >= +X, t = (4.6957 − 1.5)/0.5 = 6.391, P(T >= 6.391)
    assert at.p_equivalence[0, 0] == pytest.approx(0.5 - math.atan(6.3915) / math.pi, abs=1e-4)
    # no spread: the mean decides outright
    at = look(np.array([[[0.1, 0.1], [0.0, 0.0], [5.0, 5.0]]]), np.full((1, 3), 2), np.arange(3), margin=0.3,
              alpha=0.05, tricks=3, last_weight=1.0, max_seeds=2)
    assert at.p_difference[0].tolist() == [0.0, 1.0, 0.0] and at.p_equivalence[0].tolist() == [0.0, 0.0, 1.0]


def test_pooled_noise_drops_an_outlying_trick():
    # Three tricks with residuals (−1, 0, 1), (1, 0, −1), (−1, 0, 1): variance 1 each on 2 df; a fourth with
    # residuals (−10, 0, 10): variance 100. F = 100 / (6/6) on (2, 6) df: p = (1 + 2·100/6)^−3 = 2.5e−5
    # < 0.05/4: dropped; among the other three each F = 1 (p 0.42): kept. Pool: √(6/6) = 1.0 on 6 df (the
    # residuals at a seed cancel, ρ̂ = 0). Kept, the fourth would make it √(206/8) = 5.07.
    sigma, df, pooled, rho = pooled_sigma([[0, 1, 2], [7, 6, 5], [1, 2, 3], [0, 10, 20]])
    assert pooled == [True, True, True, False]
    assert sigma == pytest.approx(1.0) and df == pytest.approx(6.0) and rho == 0.0
    # the same four with no outlier: all pooled, √((2 + 2 + 2 + 8)/8) = 1.323
    sigma, df, pooled, _ = pooled_sigma([[0, 1, 2], [7, 6, 5], [1, 2, 3], [0, 2, 4]])
    assert pooled == [True] * 4 and sigma == pytest.approx(math.sqrt(14 / 8))


def test_tricks_sharing_their_baselines_seed_noise_pool_fewer_degrees_of_freedom():
    # Residuals (−1, 0, 1) in all three tricks: perfectly correlated at each seed, ρ̂ = 1, so the pool of
    # 6 df holds 6 / (1 + 2·1²) = 2, one trick's worth.
    sigma, df, pooled, rho = pooled_sigma([[0, 1, 2], [5, 6, 7], [1, 2, 3]])
    assert rho == pytest.approx(1.0) and df == pytest.approx(2.0) and sigma == pytest.approx(1.0)


def test_a_trick_decided_raw_but_not_after_holm_gets_another_seed():
    plan = Plan(2, 4, 0.3)
    # d = [1.0, 1.02]: se 0.01, t = 101 on 1 df, p = 2·atan(1/101)/π = 0.0063; / w_1 = ln(1 + (e − 1)/2)
    # = 0.6201: p* = 0.0102 <= α. Alone it is decided at two seeds.
    alone = decide({"a": ("base_a", [1.0, 1.02])}, plan)[0]
    assert alone.verdict == HELPED and alone.p_difference == pytest.approx(0.0102, abs=1e-4)
    # Beside 7 tricks of no effect (each on its own baseline, so no pooling: p* 1), Holm makes it 8 · 0.0102
    # = 0.0813 > α: still open, it needs seed 2 (the old rule stopped it as helped raw, undecided after Holm).
    others = {name: (f"base_{name}", [0.5, -0.5]) for name in "bcdefgh"}
    got = decide({"a": ("base_a", [1.0, 1.02]), **others}, plan)[0]
    assert got.verdict == OPEN and got.seeds == 2
    assert got.p_difference <= plan.alpha < got.p_difference_adjusted == pytest.approx(8 * 0.0102, abs=1e-3)
    # The third seed decides it: d = [1.0, 1.02, 1.01], t = 175 on 2 df, p* = 3.3e−5 / 0.2079, Holm · 8 = 0.0013.
    got = decide({"a": ("base_a", [1.0, 1.02, 1.01]), **others}, plan)[0]
    assert got.verdict == HELPED and got.seeds == 3 and got.p_difference_adjusted == pytest.approx(0.00126, abs=2e-5)


def test_spending_weights_and_the_sequential_p_value():
    plan = Plan(2, 8, 0.3)
    w = plan.weights
    assert sum(w) == pytest.approx(1.0) and len(w) == 7
    assert w[0] == pytest.approx(math.log(1 + (math.e - 1) * 2 / 8))
    # d = [1, 2]: p 0.2048 / w_1 0.357 = 0.57 > α; open after two seeds
    out = run_plan(np.array([[1.0, 2.0]]), plan)
    assert out.verdict[0, 0] == OPEN and out.seeds[0, 0] == 2
    assert out.p_difference[0, 0] == pytest.approx((1 - 2 * math.atan(3) / math.pi) / w[0])
    # at max seeds without a decision: undecided, not open. d = [1.0, 1.4]: t = 1.2/0.2 = 6 on 1 df, p 0.105;
    # equivalence within the reachable (6.3138 + 3.0777)·0.2 = 1.878: t = (1.878 − 1.2)/0.2 = 3.39, p 0.091
    assert run_plan(np.array([[1.0, 1.4]]), Plan(2, 2, 0.3)).verdict[0, 0] == UNDECIDED


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, math.nan]) == [0.5, pytest.approx(math.nan, nan_ok=True)]


def test_decide_replays_the_looks_with_the_correction():
    plan = Plan(2, 4, 0.3)
    pairs = {"gain": ("baseline", [1.0, 1.1, 0.9, 1.05]), "loss": ("baseline", [-2.0, -2.2, -1.9]),
             "same": ("baseline", [0.01, -0.01, 0.0]), "young": ("baseline", [0.2])}
    got = {d.variant: d for d in decide(pairs, plan)}
    assert got["gain"].verdict == HELPED and got["loss"].verdict == HURT
    assert got["gain"].seeds == got["loss"].seeds == 2
    # At two seeds the pool of gain, loss and same (σ_d 0.092 on 3 df) and Holm over 4 leave same open
    # (p_E 0.061); at three, with gain and loss stopped at two: pool √(0.0252/4) = 0.079 on 4 df, decided.
    assert got["same"].verdict == NO_EFFECT and got["same"].seeds == 3 and got["same"].margin == pytest.approx(0.3)
    assert got["same"].std == pytest.approx(0.07937, abs=1e-5) and got["same"].df == 4
    assert got["young"].verdict == OPEN  # fewer than min seeds
    for d in got.values():  # Holm over the 4 tricks never lowers a p-value
        assert d.p_difference_adjusted >= d.p_difference


def test_bad_plans_are_refused_naming_the_key(tmp_path):
    with pytest.raises(PlanError, match="seeds.min=1"):
        Plan(1, 4, 0.3)
    with pytest.raises(PlanError, match="seeds.margin=0"):
        Plan(2, 4, 0)
    path = tmp_path / "s.yaml"
    path.write_text("tricks: [warmup]\nseeds: {min: 2, max: 4}\n")
    with pytest.raises(SweepFileError, match=r"adaptive seeds are \{min: 2, max: 8, margin: 0.3\}"):
        load_sweep(path)
    path.write_text("tricks: [warmup]\nseeds: {min: 3, max: 2, margin: 0.3}\n")
    with pytest.raises(SweepFileError, match="2 <= min <= max"):
        load_sweep(path)
    path.write_text("tricks: [warmup]\nseeds: {min: 2, max: 4, margin: 0.3}\n")
    design = load_sweep(path)
    assert design.seeds == (0, 1) and design.adaptive == Plan(2, 4, 0.3)


def test_a_smoke_adaptive_sweep_adds_seeds_only_to_undecided_variants_and_resumes_the_same(tmp_path, shapes_cache):
    d = {"runs": tmp_path / "runs", "reports": tmp_path / "reports"}
    env = {"ABLATE_CACHE": str(shapes_cache)}
    sweep = tmp_path / "adapt.yaml"
    # a margin of 1e-6 points: only a change can decide, so an undecided variant is likely
    sweep.write_text("tricks: [warmup, mixup]\nseeds: {min: 2, max: 4, margin: 0.000001}\n")
    res = ablate("sweep", str(sweep), "profile=smoke", *paths(d), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = d["runs"] / "adapt"
    info = json.loads((runs / "adaptive.json").read_text())
    assert info["complete"] is True
    records = [read_record(p) for p in runs.glob("*/seed*/result.json")]
    seeds = {}
    for r in records:
        seeds.setdefault(r.variant, set()).add(r.seed)
    assert seeds["warmup"] >= {0, 1} and seeds["mixup"] >= {0, 1} and seeds["baseline"] >= {0, 1}
    # replayed from the records: seed s (s = 2, 3) went exactly to the variants still open after s
    # seeds, and to their baseline
    plan = Plan(2, 4, 0.000001)
    expected = []
    for seed in (2, 3):
        upto = [r for r in records if r.seed < seed]
        still_open = {x.variant for x in decisions_from_records(upto, info["variants"], plan) if x.verdict == OPEN}
        if not still_open:
            break
        expected.append(sorted(still_open | {"baseline"}))
    assert [r["variants"] for r in info["rounds"][1:]] == expected
    for variant in ("baseline", "warmup", "mixup"):
        assert seeds[variant] == set(range(2 + sum(variant in got for got in expected))), (variant, seeds)
    report = (d["reports"] / "adapt" / "report.md").read_text()
    assert "## Adaptive seeds" in report and "% of the runs saved" in report

    first = (runs / "adaptive.json").read_text()
    again = ablate("sweep", str(sweep), "profile=smoke", *paths(d), env=env)
    assert again.returncode == 0 and not re.search(r"training \S+ \(seed \d\)", again.stdout + again.stderr)
    assert (runs / "adaptive.json").read_text() == first


def test_a_sweep_stopped_between_rounds_leaves_its_plan_and_rounds_so_far(tmp_path, monkeypatch):
    # adaptive.json is written before each round, so `ablate report` on an interrupted sweep (Ctrl-C, a dead
    # job, the end of a session) shows its rounds and open tricks; "complete" only once it has ended.
    from ablate.results import RunRecord, write_record
    from ablate.sweep.sweeper import AblationSweeper

    path = tmp_path / "adapt.yaml"
    path.write_text("tricks: [warmup]\nseeds: {min: 2, max: 4, margin: 0.3}\n")
    design = load_sweep(path)
    sweep_dir = tmp_path / "runs"
    launched = []

    def launch(jobs, arguments, first_index):
        if launched:  # round 2 is interrupted
            raise KeyboardInterrupt
        for job in jobs:  # round 1: warmup +1.0 and +1.4 over the baseline, open after 2 seeds
            mAP = 0.40 + 0.01 * job.seed + (0.010 + 0.004 * job.seed if job.tricks else 0.0)
            write_record(RunRecord(status="ok", variant=job.variant, sweep="adapt", tricks=list(job.tricks),
                                   seed=job.seed, config={}, config_hash=f"{job.variant}{job.seed}", base_hash="b",
                                   metrics={"mAP": mAP}), sweep_dir / job.variant / f"seed{job.seed}")
        launched.append(jobs)
        return []

    sweeper = AblationSweeper()
    monkeypatch.setattr(sweeper, "launch", launch)
    with pytest.raises(KeyboardInterrupt):
        sweeper.sweep_adaptive(design, [], sweep_dir)
    info = json.loads((sweep_dir / "adaptive.json").read_text())
    assert info["complete"] is False and info["variants"] == {"warmup": "baseline"}
    assert [(r["round"], r["seeds"], r["variants"]) for r in info["rounds"]] == [
        (1, 2, ["baseline", "warmup"]), (2, 3, ["baseline", "warmup"])]


def test_a_failed_run_ends_its_variants_series_instead_of_asking_for_more_seeds():
    from ablate.results import RunRecord
    from ablate.sweep.adaptive import FAILED

    def rec(variant, seed, status="ok", mAP=0.5):
        return RunRecord(status=status, variant=variant, sweep="s", tricks=[], seed=seed, config={}, config_hash="h",
                         base_hash="b", metrics={"mAP": mAP} if status == "ok" else {})

    records = [rec("baseline", 0), rec("baseline", 1), rec("a", 0, mAP=0.51), rec("a", 1, "failed"),
               rec("b", 0, mAP=0.52), rec("b", 1, mAP=0.49)]
    got = {d.variant: d.verdict for d in decisions_from_records(records, {"a": "baseline", "b": "baseline"},
                                                                 Plan(2, 4, 0.3))}
    assert got == {"a": FAILED, "b": OPEN}


def test_a_collapsed_variant_gets_no_more_seeds_and_no_share_of_the_correction():
    # The report decides nothing from a variant with a run-health warning (its own or its baseline's); the
    # sweep must not spend seeds on it nor count it in Holm's m, or it would stop later than the report decides.
    from ablate.results import RunRecord
    from ablate.sweep.adaptive import COLLAPSED, decide

    def rec(variant, seed, mAP, health=()):
        return RunRecord(status="ok", variant=variant, sweep="s", tricks=[], seed=seed, config={}, config_hash="h",
                         base_hash="b", metrics={"mAP": mAP}, health=list(health))

    single = [{"code": "single_class", "message": "all detections of one class"}]
    records = [rec("baseline", 0, 0.50), rec("baseline", 1, 0.51), rec("a", 0, 0.01, single), rec("a", 1, 0.40),
               rec("b", 0, 0.52), rec("b", 1, 0.525), rec("c", 0, 0.49), rec("c", 1, 0.505)]
    plan = Plan(2, 8, 0.3)
    got = {d.variant: d for d in decisions_from_records(records, {"a": "baseline", "b": "baseline", "c": "baseline"},
                                                        plan)}
    assert got["a"].verdict == COLLAPSED and got["a"].seeds == 2 and got["a"].mean == pytest.approx(-30.0)
    alone = {d.variant: d for d in decide({"b": ("baseline", [2.0, 1.5]), "c": ("baseline", [-1.0, -0.5])}, plan)}
    for v in ("b", "c"):  # pooled and corrected over b and c only: a took no share
        assert got[v].verdict == alone[v].verdict
        assert got[v].p_difference_adjusted == pytest.approx(alone[v].p_difference_adjusted)
        assert got[v].std == pytest.approx(alone[v].std)
    # A collapsed baseline takes its variants out with it.
    records[0].health = single
    got = {d.variant: d.verdict for d in decisions_from_records(records, {"a": "baseline", "b": "baseline"}, plan)}
    assert got == {"a": COLLAPSED, "b": COLLAPSED}


def test_the_simulations_replay_reads_effects_and_pooled_noise_from_records(tmp_path):
    # benchmarks/adaptive_simulation.py --records: each trick's mean paired difference, and its base's pooled
    # σ_d. fcos: a, b against the baseline 40, 41: a +1, +2 (mean 1.5), b −1, 0 (mean −0.5); residuals ±0.5 each,
    # pooled variance (0.5 + 0.5) / 2 = 0.5. frcnn: c +0.5 at one seed: no σ of its own, its base has no pool.
    # fcos/z collapsed at seed 1 (a health warning): left out, as the sweep leaves it, and out of the pool.
    # ρ̂ of fcos: residuals at seed 0 sum to −1, at seed 1 to +1: (1 + 1 − 4 · 0.25) / (2 pairs · 0.5) = 1.
    import importlib
    import sys as _sys
    from pathlib import Path as _Path

    from test_report import make_record, write_all

    _sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "benchmarks"))
    simulation = importlib.import_module("adaptive_simulation")
    records = []
    for seed, (base, a, b, z) in enumerate([(40.0, 41.0, 39.0, 30.0), (41.0, 43.0, 41.0, 1.0)]):
        records += [make_record("fcos/baseline", tricks=[], seed=seed, mAP=base / 100, base="f"),
                    make_record("fcos/a", tricks=["a"], seed=seed, mAP=a / 100, base="f"),
                    make_record("fcos/b", tricks=["b"], seed=seed, mAP=b / 100, base="f"),
                    make_record("fcos/z", tricks=["z"], seed=seed, mAP=z / 100, base="f")]
    records[-1].health = [{"code": "no_detections", "message": "no detection"}]
    records += [make_record("frcnn/baseline", tricks=[], seed=0, mAP=0.7, base="r"),
                make_record("frcnn/c", tricks=["c"], seed=0, mAP=0.705, base="r")]
    for r in records:
        r.config_hash += f"-{r.variant}"
    write_all(tmp_path, records)
    table, rho, collapsed = simulation.from_records(tmp_path)
    assert set(table) == {"fcos/a", "fcos/b", "frcnn/c"} and collapsed == ["fcos/z"]
    assert rho == {0: pytest.approx(1.0), 1: 0.0}
    assert table["fcos/a"][0] == pytest.approx(1.5) and table["fcos/b"][0] == pytest.approx(-0.5)
    assert table["fcos/a"][1] == pytest.approx(math.sqrt(0.5)) and table["fcos/b"][1] == pytest.approx(math.sqrt(0.5))
    assert table["frcnn/c"][0] == pytest.approx(0.5) and math.isnan(table["frcnn/c"][1])
    assert (table["fcos/a"][2], table["frcnn/c"][2]) == (0, 1)


def test_the_committed_bag_tables_verdicts_and_seeds_are_what_its_records_decide():
    """reports/bag_of_tricks/table.csv (the README's table) against the rule replayed on its committed
    records: a change to the rule or the table that is not followed by a rebuilt report fails here."""
    import pandas as pd

    from ablate.report import adaptive_lines, adopt_decisions, records_table
    from ablate.results import find_records

    report = REPO_ROOT / "reports" / "bag_of_tricks"
    runs = report / "runs" / "bag_of_tricks"
    found, errors = find_records(runs)
    assert found and not errors
    info = json.loads((runs / "adaptive.json").read_text())
    assert info.get("complete", True), "the committed bag sweep is marked unfinished"
    table = records_table([r for _, r in found])
    _, decisions = adaptive_lines([runs], found)
    adopt_decisions(table, decisions)
    committed = pd.read_csv(report / "table.csv")
    assert list(committed["variant"]) == list(table["variant"])
    assert list(committed["seeds"]) == list(table["seeds"])
    assert list(committed["verdict"].fillna("")) == list(table["verdict"].fillna(""))
    assert {d.variant for d in decisions} == set(info["variants"])
    stops = {d.variant: d.seeds for d in decisions}
    assert all(stops[v] <= table.set_index("variant").loc[v, "seeds"] for v in stops)
