"""Adaptive seeds: decide, look by look, whether a trick helped, hurt, or made no difference that
matters, and spend another seed only where the answer is still open.

A plan runs every variant `min` seeds with its baseline, then adds one seed at a time (variant and
baseline, paired) up to `max`. At each look n (n = min, ..., max) the paired differences
d_1..d_n (variant − baseline, seeds in order, points of mAP) give two tests:

- difference: the paired t-test of mean(d) = 0, two-sided, p_D;
- equivalence: two one-sided t-tests (TOST) of mean(d) <= −margin and mean(d) >= +margin, p_E the
  larger of the two p-values: a small p_E says the change lies inside ±margin.

Looking again after each seed inflates false claims, so each test spends its error rate α over the
planned looks (Lan and DeMets 1983, Pocock-type spending function α·ln(1 + (e − 1)·t), t = n / max
the information fraction): look k is tested at level α·w_k, w_k = f(t_k) − f(t_{k−1}), Σ w_k = 1.
Whatever the correlation between looks, the union bound keeps the chance of any false claim over
all looks at most α (Bonferroni across looks; conservative, valid for t-tests at any n). The
sequential p-value p* = min over the looks taken of p_k / w_k is valid for the same reason, so the
tricks of a sweep are compared with Holm's step-down adjustment on these p*.

A trick is decided "helped" or "hurt" once p*_D <= α (by the sign of the mean), "no effect" (within
±margin) once p*_E <= α, and is "undecided" when neither happened by `max` seeds.

No torch here; scipy on first use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..errors import UserInputError

ALPHA = 0.05
SPENDING = "Lan–DeMets Pocock-type α·ln(1 + (e − 1)·t)"

HELPED, HURT, NO_EFFECT, UNDECIDED, OPEN = "helped", "hurt", "no effect", "undecided", "open"
FAILED = "incomplete (a run failed)"


class PlanError(UserInputError):
    """An adaptive seeds plan that cannot run."""


@dataclass(frozen=True)
class Plan:
    min_seeds: int
    max_seeds: int
    margin: float
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        if not (isinstance(self.min_seeds, int) and isinstance(self.max_seeds, int) and 2 <= self.min_seeds
                <= self.max_seeds):
            raise PlanError(f"seeds.min={self.min_seeds}, seeds.max={self.max_seeds}: need integers with "
                            "2 <= min <= max (a paired test needs two seeds)")
        if not self.margin > 0:
            raise PlanError(f"seeds.margin={self.margin}: must be > 0 (points of mAP)")
        if not 0 < self.alpha < 1:
            raise PlanError(f"seeds.alpha={self.alpha}: must be in (0, 1)")

    @property
    def looks(self) -> list[int]:
        return list(range(self.min_seeds, self.max_seeds + 1))

    @property
    def weights(self) -> list[float]:
        """Each look's share of α (sums to 1)."""
        spent = [math.log(1 + (math.e - 1) * n / self.max_seeds) for n in self.looks]
        return [spent[0]] + [b - a for a, b in zip(spent, spent[1:])]


def _t_sf(x: np.ndarray, df: np.ndarray | float) -> np.ndarray:
    from scipy import stats

    return stats.t.sf(x, df)


def look_pvalues(diffs: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(p_D, p_E) for each row of diffs [S, n] (n >= 2): the two-sided paired t-test of a zero mean,
    and TOST's p of equivalence within ±margin. Rows whose differences are all equal (no spread)
    give p 0 where the mean decides the test outright, 1 where it does not."""
    n = diffs.shape[1]
    mean = diffs.mean(axis=1)
    sd = diffs.std(axis=1, ddof=1)
    se = sd / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = np.where(se > 0, mean / se, np.where(mean == 0, 0.0, np.sign(mean) * np.inf))
        t_low = np.where(se > 0, (mean + margin) / se, np.where(mean + margin > 0, np.inf, -np.inf))
        t_high = np.where(se > 0, (mean - margin) / se, np.where(mean - margin < 0, -np.inf, np.inf))
    p_d = np.minimum(1.0, 2 * _t_sf(np.abs(t0), n - 1))
    p_e = np.maximum(_t_sf(t_low, n - 1), _t_sf(-t_high, n - 1))
    return p_d, p_e


@dataclass
class Outcome:
    """Per row of a decision: verdict, the seeds it took (looks seen), sequential p-values, and the
    mean difference with its 95% paired CI half-width at the last look."""
    verdict: np.ndarray
    seeds: np.ndarray
    p_difference: np.ndarray
    p_equivalence: np.ndarray
    mean: np.ndarray
    half: np.ndarray = field(default_factory=lambda: np.array([]))


def run_plan(diffs: np.ndarray, plan: Plan) -> Outcome:
    """The plan applied to each row of diffs [S, k] (the differences of seeds 0..k−1 in order). A row
    still open at its last available look when k < max is OPEN (it needs seed k)."""
    from scipy import stats

    diffs = np.atleast_2d(np.asarray(diffs, dtype=float))
    rows, available = diffs.shape
    verdict = np.full(rows, OPEN, dtype=object)
    seeds = np.zeros(rows, dtype=int)
    p_d_star, p_e_star = np.ones(rows), np.ones(rows)
    mean, half = np.full(rows, math.nan), np.full(rows, math.nan)
    for n, w in zip(plan.looks, plan.weights):
        if n > available:
            break
        live = verdict == OPEN
        if not live.any():
            break
        d = diffs[live, :n]
        p_d, p_e = look_pvalues(d, plan.margin)
        p_d_star[live] = np.minimum(p_d_star[live], np.minimum(1.0, p_d / w))
        p_e_star[live] = np.minimum(p_e_star[live], np.minimum(1.0, p_e / w))
        seeds[live] = n
        m = d.mean(axis=1)
        mean[live] = m
        half[live] = stats.t.ppf(0.975, n - 1) * d.std(axis=1, ddof=1) / math.sqrt(n)
        differ = p_d_star[live] <= plan.alpha
        equiv = ~differ & (p_e_star[live] <= plan.alpha)
        v = np.full(live.sum(), OPEN, dtype=object)
        v[differ & (m > 0)] = HELPED
        v[differ & (m < 0)] = HURT
        v[equiv] = NO_EFFECT
        if n == plan.max_seeds:
            v[v == OPEN] = UNDECIDED
        verdict[live] = v
    return Outcome(verdict, seeds, p_d_star, p_e_star, mean, half)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): sorted ascending p_(1) <= ... <= p_(m),
    adjusted p_(i) = max over j <= i of min(1, (m − j + 1) · p_(j)); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out.tolist()
    idx = np.where(ok)[0][np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


@dataclass
class TrickDecision:
    variant: str
    baseline: str
    verdict: str
    seeds: int
    mean: float
    half: float
    p_difference: float
    p_equivalence: float
    verdict_holm: str = ""


def decide(pairs: Mapping[str, tuple[str, Sequence[float]]], plan: Plan,
           broken: Sequence[str] = ()) -> list[TrickDecision]:
    """Each variant's decision from its per-seed differences (seeds 0, 1, ... in order), with the
    Holm-adjusted verdict across all variants beside it. pairs: variant -> (its baseline, diffs);
    `broken`: variants whose series a failed run cut short, FAILED where they would be open (more
    seeds cannot complete a series with a hole in it)."""
    out = []
    for variant, (baseline, diffs) in pairs.items():
        if len(diffs) < plan.min_seeds:
            out.append(TrickDecision(variant, baseline, OPEN, len(diffs), math.nan, math.nan, 1.0, 1.0))
            continue
        o = run_plan(np.asarray([list(diffs)[:plan.max_seeds]]), plan)
        out.append(TrickDecision(variant, baseline, str(o.verdict[0]), int(o.seeds[0]), float(o.mean[0]),
                                 float(o.half[0]), float(o.p_difference[0]), float(o.p_equivalence[0])))
    for d in out:
        if d.variant in broken and d.verdict == OPEN:
            d.verdict = FAILED
    adj_d = holm([d.p_difference for d in out])
    adj_e = holm([d.p_equivalence for d in out])
    for d, pd_, pe in zip(out, adj_d, adj_e):
        if d.verdict in (OPEN, FAILED):
            d.verdict_holm = d.verdict
        elif pd_ <= plan.alpha:
            d.verdict_holm = HELPED if d.mean > 0 else HURT
        elif pe <= plan.alpha:
            d.verdict_holm = NO_EFFECT
        else:
            d.verdict_holm = UNDECIDED if d.verdict != OPEN else OPEN
    return out


def simulate(plan: Plan, effect: float, sigma: float, sims: int, seed: int = 0) -> dict[str, float]:
    """Monte Carlo of `sims` adaptive comparisons whose per-seed differences are Normal(effect, sigma):
    the share of each verdict and the mean number of seeds used."""
    rng = np.random.default_rng(seed)
    o = run_plan(rng.normal(effect, sigma, size=(sims, plan.max_seeds)), plan)
    shares = {v: float(np.mean(o.verdict == v)) for v in (HELPED, HURT, NO_EFFECT, UNDECIDED)}
    return {**shares, "mean_seeds": float(o.seeds.mean())}


# ----------------------------------------------------------------------------------------------
# a sweep's records -> decisions


ADAPTIVE_FILE = "adaptive.json"


def differences(values: Mapping[tuple[str, int], float], variant: str, baseline: str, max_seeds: int,
                failed: set = frozenset()) -> tuple[list[float], bool]:
    """variant − baseline at seeds 0, 1, ... while both have a value (the seeds of an adaptive sweep
    are consecutive; a missing one ends the series), and whether a failed run of either ended it."""
    out = []
    for seed in range(max_seeds):
        if (variant, seed) not in values or (baseline, seed) not in values:
            return out, (variant, seed) in failed or (baseline, seed) in failed
        out.append(values[(variant, seed)] - values[(baseline, seed)])
    return out, False


def decisions_from_records(records: Sequence, variants: Mapping[str, str], plan: Plan) -> list[TrickDecision]:
    """The plan's decision for each variant (name -> its baseline's name), from the records'
    val mAP in points (ok records only; a variant recorded not_applicable is left out)."""
    values, not_applicable, failed = {}, set(), set()
    for r in records:
        if r.status == "ok" and "mAP" in r.metrics:
            values[(r.variant, int(r.seed))] = 100 * float(r.metrics["mAP"])
        elif r.status == "not_applicable":
            not_applicable.add(r.variant)
        elif r.status in ("failed", "diverged"):
            failed.add((r.variant, int(r.seed)))
    pairs, broken = {}, []
    for v, b in variants.items():
        if v in not_applicable:
            continue
        diffs, cut = differences(values, v, b, plan.max_seeds, failed)
        pairs[v] = (b, diffs)
        if cut:
            broken.append(v)
    return decide(pairs, plan, broken)
