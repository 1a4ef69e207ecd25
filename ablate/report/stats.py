"""The report's statistics: confidence intervals of a change, seeds needed, freebie or special, and the
effects of cumulative and factorial designs. Plain numbers in, plain numbers out (points of mAP).

No torch here (see ``ablate.report``); scipy is imported on first use, so ``import ablate.report`` stays fast.

Formulas (n seeds, d_i the per-seed differences variant − baseline):

- paired 95% CI: mean(d) ± t_{0.975, n−1} · s_d / √n, s_d the sample std (ddof 1) of the d_i;
- Welch's 95% CI (neither seed set contains the other; otherwise the d_i are taken on the seeds both
  ran): mean(a) − mean(b) ± t_{0.975, ν} · √(s_a²/n_a + s_b²/n_b), with
  ν = (s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1));
- seeds for a paired test to detect a change δ with power 1 − β at two-sided level α:
  n = ((z_{1−α/2} + z_{1−β}) · σ_d / δ)², and with the t-distribution the smallest n ≥ 2 such that
  n ≥ ((t_{1−α/2, n−1} + t_{1−β, n−1}) · σ_d / δ)²;
- the change detectable with n seeds: (t_{1−α/2, n−1} + t_{1−β, n−1}) · σ_d / √n.

With σ_d pooled over k variants the t quantiles take its df, k·(n − 1) (less where the variants'
residuals correlate), and after Holm's correction over m variants α is α/m (its first step).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

LEVEL = 0.95
# The change a sweep should be able to resolve, in points of mAP, and the power to resolve it with.
TARGET_DELTA = 0.5
ALPHA = 0.05
POWER = 0.8
# Freebie: the variant's params and FLOPs are its baseline's within this relative tolerance.
FREEBIE_TOLERANCE = 0.005

PAIRED = "paired"
WELCH = "welch"
UNPAIRED = "unpaired"  # seed sets differ and one side has a single seed: a difference of means, no CI


def _t_ppf(q: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def _z_ppf(q: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(q))


@dataclass
class Interval:
    """A change (points) with its confidence interval; ``half`` is NaN when no interval can be given."""

    mean: float = math.nan
    half: float = math.nan
    method: str = ""  # PAIRED, WELCH, UNPAIRED, or "" when there is nothing to compare
    # Paired: the number of paired seeds; otherwise the smaller group's size.
    n: int = 0
    df: float = math.nan
    # Paired: the sample std of the per-seed differences (NaN under two seeds).
    std: float = math.nan

    @property
    def has_ci(self) -> bool:
        return not math.isnan(self.half)

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def sign(self) -> int:
        """+1 when the whole interval lies above zero, −1 below zero, 0 when it spans zero or is missing."""
        if not self.has_ci or math.isnan(self.mean):
            return 0
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0

    @property
    def excludes_zero(self) -> bool:
        return self.sign != 0


def paired_interval(diffs: Sequence[float], level: float = LEVEL) -> Interval:
    """The t-interval of the mean of paired differences; no interval (half NaN) under two values."""
    d = np.asarray([x for x in diffs if not math.isnan(x)], dtype=float)
    n = int(d.size)
    if n == 0:
        return Interval(method=PAIRED)
    mean = float(d.mean())
    if n < 2:
        return Interval(mean=mean, method=PAIRED, n=n)
    s = float(d.std(ddof=1))
    half = _t_ppf(1 - (1 - level) / 2, n - 1) * s / math.sqrt(n)
    return Interval(mean=mean, half=half, method=PAIRED, n=n, df=float(n - 1), std=s)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """Welch's interval of mean(a) − mean(b) for independent groups; no interval when a group has one value."""
    a = np.asarray([x for x in a if not math.isnan(x)], dtype=float)
    b = np.asarray([x for x in b if not math.isnan(x)], dtype=float)
    if a.size == 0 or b.size == 0:
        return Interval()
    mean = float(a.mean() - b.mean())
    n = int(min(a.size, b.size))
    if n < 2:
        return Interval(mean=mean, method=UNPAIRED, n=n)
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    se2 = va + vb
    if se2 == 0:  # every seed gave the same number on both sides
        return Interval(mean=mean, half=0.0, method=WELCH, n=n, df=float(a.size + b.size - 2))
    df = se2 ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = _t_ppf(1 - (1 - level) / 2, df) * math.sqrt(se2)
    return Interval(mean=mean, half=half, method=WELCH, n=n, df=df)


def paired_differences(variant: Mapping[int, float], baseline: Mapping[int, float]) -> np.ndarray | None:
    """Per-seed differences variant − baseline on the seeds both ran, in seed order, when one side's seeds
    contain the other's (the same seeds; an adaptive sweep's trick that stopped before its baseline, whose
    other tricks went on; a run that failed on one side). None when neither contains the other (seed sets
    that merely overlap, or none): then the two groups are compared as independent.

    Pairing by seed removes the part of the seed noise the two runs share (same data order, same
    initialisation of the shared layers), so the spread of these differences, not the spread of
    either mAP, is what says whether a trick helps.
    """
    a, b = set(variant), set(baseline)
    if not a or not b or not (a <= b or b <= a):
        return None
    return np.asarray([variant[s] - baseline[s] for s in sorted(a & b)], dtype=float)


def compare(variant: Mapping[int, float], baseline: Mapping[int, float], level: float = LEVEL) -> Interval:
    """variant − baseline: paired by seed on ``paired_differences``, else Welch's interval of the two groups."""
    if not variant or not baseline:
        return Interval()
    diffs = paired_differences(variant, baseline)
    if diffs is not None:
        return paired_interval(diffs, level)
    return welch_interval(list(variant.values()), list(baseline.values()), level)


# ----------------------------------------------------------------------------------------------
# seed noise and power


def pooled_std(groups: Iterable[Sequence[float]]) -> tuple[float, int]:
    """The pooled sample std of several groups (each about its own mean), and its degrees of freedom.

    Groups under two values add nothing; (NaN, 0) when no group has two.
    """
    ss, dof = 0.0, 0
    for g in groups:
        x = np.asarray([v for v in g if not math.isnan(v)], dtype=float)
        if x.size >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            dof += int(x.size - 1)
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def seeds_needed_z(sigma_d: float, delta: float = TARGET_DELTA, alpha: float = ALPHA, power: float = POWER) -> int:
    """n = ⌈((z_{1−α/2} + z_{power}) · σ_d / δ)²⌉ (normal approximation), at least 2."""
    if math.isnan(sigma_d) or delta <= 0:
        return 0
    n = ((_z_ppf(1 - alpha / 2) + _z_ppf(power)) * sigma_d / delta) ** 2
    return max(2, math.ceil(n - 1e-9))


def seeds_needed(sigma_d: float, delta: float = TARGET_DELTA, alpha: float = ALPHA, power: float = POWER,
                 limit: int = 100_000, df_per_seed: float = 1.0) -> int:
    """The smallest n ≥ 2 with n ≥ ((t_{1−α/2,ν} + t_{power,ν}) · σ_d / δ)², ν = df_per_seed·(n − 1): the
    z-formula with t quantiles (df_per_seed > 1 when σ_d is pooled over that many variants' differences).

    0 when σ_d is unknown. The t-version is never below the z-version, so the search starts there.
    """
    if math.isnan(sigma_d) or delta <= 0:
        return 0
    n = seeds_needed_z(sigma_d, delta, alpha, power)
    while n < limit:
        df = df_per_seed * (n - 1)
        need = ((_t_ppf(1 - alpha / 2, df) + _t_ppf(power, df)) * sigma_d / delta) ** 2
        if n >= need - 1e-9:
            return n
        n += 1
    return limit


def detectable_change(sigma_d: float, n: int, alpha: float = ALPHA, power: float = POWER,
                      df_per_seed: float = 1.0) -> float:
    """The change (points) a paired comparison over n seeds detects with the given power, σ_d on
    df_per_seed·(n − 1) df; NaN under two seeds."""
    if n < 2 or math.isnan(sigma_d):
        return math.nan
    df = df_per_seed * (n - 1)
    return (_t_ppf(1 - alpha / 2, df) + _t_ppf(power, df)) * sigma_d / math.sqrt(n)


# ----------------------------------------------------------------------------------------------
# freebie or special


def relative_change(value: float, base: float) -> float:
    """(value − base) / base; NaN when either is missing or the base is zero (0 when both are zero)."""
    if value is None or base is None or math.isnan(value) or math.isnan(base):
        return math.nan
    if base == 0:
        return 0.0 if value == 0 else math.nan
    return (value - base) / abs(base)


def trick_kind(params: float, flops: float, base_params: float, base_flops: float,
               tolerance: float = FREEBIE_TOLERANCE) -> str:
    """"freebie" when params and FLOPs equal the baseline's within ``tolerance`` (no inference cost),
    "special" when either grows or shrinks beyond it, "" when neither can be compared."""
    changes = [c for c in (relative_change(params, base_params), relative_change(flops, base_flops))
               if not math.isnan(c)]
    if not changes:
        return ""
    return "freebie" if all(abs(c) <= tolerance + 1e-12 for c in changes) else "special"


# ----------------------------------------------------------------------------------------------
# designs, detected from the trick sets a base ran


CUMULATIVE = "cumulative"
FACTORIAL = "factorial"


def detect_design(combos: Iterable[Iterable[str]]) -> tuple[str, list[str]]:
    """The design a base's trick combinations make, and its tricks in order.

    cumulative: the combinations are nested, each adding one trick to the previous one, from none to k ≥ 2
    tricks (the order is the order they were added); factorial: all 2^k subsets of k ≥ 2 tricks (tricks
    sorted by name). ("", []) otherwise (one at a time, leave one out, or an incomplete design).
    """
    sets = {frozenset(c) for c in combos}
    if frozenset() not in sets:
        return "", []
    tricks = frozenset().union(*sets)
    k = len(tricks)
    if k < 2:
        return "", []
    chain = sorted(sets, key=len)
    if len(sets) == k + 1 and all(len(s) == i for i, s in enumerate(chain)) \
            and all(a < b for a, b in zip(chain, chain[1:])):
        return CUMULATIVE, [next(iter(b - a)) for a, b in zip(chain, chain[1:])]
    if len(sets) == 2 ** k:  # distinct subsets of k tricks, as many as there are: all of them
        return FACTORIAL, sorted(tricks)
    return "", []


@dataclass
class Step:
    """One row of a cumulative design: the trick it adds, its mean mAP, the change against the previous row
    (paired by seed) and the running total against the baseline."""

    added: str
    tricks: tuple[str, ...]
    mean: float
    step: Interval
    total: Interval


def cumulative_steps(order: Sequence[str], values: Mapping[frozenset, Mapping[int, float]]) -> list[Step]:
    """Rows of a cumulative design; ``values`` maps each trick set (baseline: the empty set) to seed -> mAP."""
    steps = []
    base = values.get(frozenset(), {})
    previous = base
    for k, trick in enumerate(order, start=1):
        current = values.get(frozenset(order[:k]), {})
        mean = float(np.mean(list(current.values()))) if current else math.nan
        steps.append(Step(trick, tuple(order[:k]), mean, compare(current, previous), compare(current, base)))
        previous = current
    return steps


@dataclass
class Effect:
    """A main effect (one trick) or two-way interaction (two tricks) of a 2^k factorial design, in points."""

    tricks: tuple[str, ...]
    interval: Interval

    @property
    def name(self) -> str:
        return " × ".join(self.tricks)


def factorial_effects(tricks: Sequence[str], values: Mapping[frozenset, Mapping[int, float]],
                      level: float = LEVEL) -> list[Effect]:
    """Main effects and two-way interactions of a full 2^k design, from each cell's seed -> mAP.

    With the ±1 coding x_t = +1 when trick t is in the cell: main effect of t = mean mAP of the cells with t
    − mean of the cells without; interaction of a and b = mean of the cells with x_a·x_b = +1 − mean of those
    with −1, i.e. ½[(effect of a with b) − (effect of a without b)]. When every cell ran the same seeds (two
    or more) the effect is computed per seed and its CI is the t-interval over seeds; otherwise it is computed
    from the cells' means, without CI. Effects are NaN when a cell has no ok run.
    """
    tricks = list(tricks)
    cells = [frozenset(c) for r in range(len(tricks) + 1) for c in itertools.combinations(tricks, r)]
    if any(not values.get(c) for c in cells):
        terms = [(t,) for t in tricks] + list(itertools.combinations(tricks, 2))
        return [Effect(term, Interval()) for term in terms]
    seed_sets = {frozenset(values[c]) for c in cells}
    common = sorted(next(iter(seed_sets))) if len(seed_sets) == 1 else []
    half_cells = len(cells) / 2

    def contrast(term: tuple[str, ...], y: Mapping[frozenset, float]) -> float:
        total = 0.0
        for c in cells:
            sign = 1
            for t in term:
                sign *= 1 if t in c else -1
            total += sign * y[c]
        return total / half_cells

    effects = []
    for term in [(t,) for t in tricks] + list(itertools.combinations(tricks, 2)):
        if common:
            per_seed = [contrast(term, {c: values[c][s] for c in cells}) for s in common]
            interval = paired_interval(per_seed, level)
        else:
            means = {c: float(np.mean(list(values[c].values()))) for c in cells}
            interval = Interval(mean=contrast(term, means), method=UNPAIRED, n=min(len(values[c]) for c in cells))
        effects.append(Effect(tuple(term), interval))
    return effects


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, value) points no other point beats: none has cost ≤ and value ≥ with one strict.

    Points with a NaN are never on the front. Returned in order of increasing cost.
    """
    ok = [i for i, (c, v) in enumerate(points) if not (math.isnan(c) or math.isnan(v))]
    front = []
    for i in ok:
        ci, vi = points[i]
        dominated = any(points[j][0] <= ci and points[j][1] >= vi and (points[j][0] < ci or points[j][1] > vi)
                        for j in ok if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
