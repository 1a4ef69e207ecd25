"""Adaptive seeds: decide, look by look, whether each trick of a sweep helped, hurt, or made no
difference larger than a stated margin, and spend another seed only where the answer is still open
after the correction for testing all the sweep's tricks at once.

A plan runs every variant `min` seeds with its baseline, then adds one seed at a time (variant and
baseline, paired) up to `max`. At each look n (n = min, ..., max) trick j has its paired differences
d_j1..d_jn (variant − baseline, seeds in order, points of mAP).

Noise, pooled per base. σ_d is estimated once for all of a base's tricks: each trick's differences
are centred on its own mean and the squares pooled, s² = Σ_j SS_j / Σ_j (n_j − 1), on Σ_j (n_j − 1)
degrees of freedom (a trick with n_j differences adds n_j − 1). A trick whose own variance is an
outlier does not enter the pool: while three or more tricks have a variance, the trick with the
largest F = s_j² / s²(pool of the others), upper-tail p on (n_j − 1, df of the others), is dropped
when p < SCREEN_LEVEL / k (k the tricks still pooled: a Bonferroni screen, which is Cochran's C test
at level SCREEN_LEVEL), and the screen is repeated on the rest. A dropped trick is tested on its own
variance and n_j − 1 df. Tricks that share a baseline share its seed noise, so their residuals at
the same seed are correlated and the pool holds fewer independent degrees of freedom than it adds
up: with ρ̂ the residuals' correlation at the same seed (shared_correlation) the pool's df is
Σ_j (n_j − 1) / (1 + (k − 1)·ρ̂²), k the tricks pooled (the variance of a mean of k equicorrelated
sample variances). Without it the family-wise error reached 6.1% at ρ = 0.5 in
benchmarks/adaptive_simulation.py.

Tests at a look, with s_j and ν_j the trick's (pooled or own) std and df, se = s_j / √n_j:

- difference: t = mean(d)/se, two-sided p_D on ν_j df;
- equivalence within ±X_j: two one-sided t-tests (TOST), p_E the larger of the two p-values.

Resolution (the futility rule). X = max(margin, R) per base: R is the margin the design can reach
by `max` seeds, the X for which TOST at the last look (level α·w_K/m, its spending weight and Holm's
first step over the m tricks) has power RESOLUTION_POWER when the true change is 0, at the base's
pooled σ_d: R = (t_{1−α·w_K/m, ν_max} + t_{1−(1−power)/2, ν_max}) · s_pool / √max, ν_max the df the
pool would have at `max` seeds. A trick that cannot be told from ±margin by `max` is therefore
tested against ±X and stops as "no effect, |Δ| < X" once that holds (the verdict no_effect, with X
stated beside it). A trick dropped from the pool is tested on its own noise against the same X.

Looks: each test spends α over the planned looks (Lan and DeMets 1983, Pocock-type spending
function α·ln(1 + (e − 1)·t), t = n / max): look k at level α·w_k, w_k = f(t_k) − f(t_{k−1}),
Σ w_k = 1. The sequential p-value p* = min over the looks taken of p_k / w_k is valid whatever the
correlation of the looks (Bonferroni across looks; conservative). Exact group-sequential boundaries
for these looks (Armitage–McPherson–Rowe recursive integration for Z_k = S_{n_k}/√n_k, correlated
√(n_j/n_k)) were computed and tried in their place (2026-12-07): they would let the later looks
test at 2–3× the Bonferroni levels (at α = 0.05, looks 3–8 at 0.25–0.29·α instead of 0.08–0.14·α),
but the tests here are t-tests on a σ_d estimated at each look on few degrees of freedom, whose looks
correlate less than the Z's, and in tests/test_adaptive.py's simulations the false gain/loss rate
rose to 5.8% for one trick at max 8 and the family-wise rate of 8 no-effect tricks to 6.3% (4,000
sweeps), over α. So the union bound stays: it holds whatever the looks' correlation.

Multiplicity: after each look the p* of all m tricks of the sweep (p* = 1 for a trick not yet
looked at) are adjusted by Holm's step-down, separately for the difference and the equivalence
tests. An open trick stops "helped" or "hurt" (by the sign of its mean) once its adjusted p*_D <= α,
"no effect" once its adjusted p*_E <= α, and is "undecided" when neither happened by `max`. A trick
decided raw but not after Holm gets another seed. Stopping on the adjusted p-values keeps the
family-wise error at most α: the p* only fall as looks accrue and Holm's rejections only grow as
p-values fall, so every trick stopped at some look is also rejected by Holm on the p* all tricks
would have had at `max` seeds, which are valid p-values.

No torch here; scipy on first use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import UserInputError

ALPHA = 0.05
SPENDING = "Lan–DeMets Pocock-type α·ln(1 + (e − 1)·t)"
CORRECTION = "Holm"
# The outlier screen of the pooled σ_d: Cochran's C (the largest variance against the pool of the
# others, Bonferroni over the tricks pooled) at this level. Each false drop biases the pool of the
# rest low (at 0.10 the family-wise error of the sequential rule reached 5.9% in the simulation, at
# 0.05 it stays under α); at 0.05 MixUp's outlying seed in the committed bag table is dropped.
SCREEN_LEVEL = 0.05
# The power, at a true change of 0, with which the equivalence test at the reachable margin decides
# by `max` seeds (the resolution rule).
RESOLUTION_POWER = 0.8

HELPED, HURT, NO_EFFECT, UNDECIDED, OPEN = "helped", "hurt", "no_effect", "undecided", "open"
FAILED = "incomplete (a run failed)"
# A variant with a run-health warning (ablate/health.py: the detector collapsed) on its side or its
# baseline's: the report decides nothing from it, so it gets no more seeds and no share of the correction.
COLLAPSED = "undecided (a run collapsed)"


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


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): sorted ascending p_(1) <= ... <= p_(m),
    adjusted p_(i) = max over j <= i of min(1, (m − j + 1) · p_(j)); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = holm_rows(p[ok][None, :])[0]
    return out.tolist()


def holm_rows(p: np.ndarray) -> np.ndarray:
    """Holm's adjustment of each row of p [S, m] (no NaN)."""
    m = p.shape[1]
    order = np.argsort(p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1) * (m - np.arange(m))
    adjusted = np.minimum(1.0, np.maximum.accumulate(ranked, axis=1))
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=1)
    return out


# ----------------------------------------------------------------------------------------------
# one look: moments, the pooled noise per base, the tests


def moments(diffs: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, sum of squares about the mean, df) of diffs [S, k, N] over their first `length` [S, k]
    values (NaN mean where length is 0)."""
    mask = np.arange(diffs.shape[-1]) < length[..., None]
    x = np.where(mask, diffs, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(-1) / length
    ss = (np.where(mask, diffs - mean[..., None], 0.0) ** 2).sum(-1)
    return mean, ss, np.maximum(length - 1, 0)


def pool(ss: np.ndarray, df: np.ndarray, level: float = SCREEN_LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled variance of one base's tricks, each row of ss, df [S, k] a sweep: (variance [S], its df [S],
    pooled [S, k] whether each trick is in the pool). Tricks without df are out; the outlier screen is the
    module docstring's (iterated Cochran's C, largest F against the pool of the others, p < level / k)."""
    from scipy import stats

    rows = np.arange(ss.shape[0])
    pooled = df > 0
    for _ in range(ss.shape[1]):
        count = pooled.sum(1)
        total_ss, total_df = (ss * pooled).sum(1), (df * pooled).sum(1)
        other_ss, other_df = total_ss[:, None] - ss, total_df[:, None] - df
        with np.errstate(invalid="ignore", divide="ignore"):
            f = (ss / df) / (other_ss / other_df)
        testable = pooled & (count[:, None] >= 3) & ~np.isnan(f)
        p = np.where(testable, stats.f.sf(np.where(testable, f, 1.0), np.maximum(df, 1), np.maximum(other_df, 1)),
                     1.0)
        worst = p.argmin(1)
        drop = p[rows, worst] < level / np.maximum(count, 1)
        if not drop.any():
            break
        pooled[rows[drop], worst[drop]] = False
    total_ss, total_df = (ss * pooled).sum(1), (df * pooled).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(total_df > 0, total_ss / np.maximum(total_df, 1), np.nan)
    return var, total_df, pooled


def pooled_sigma(groups: Sequence[Sequence[float]], level: float = SCREEN_LEVEL
                 ) -> tuple[float, float, list[bool], float]:
    """One base's pooled σ_d from its tricks' paired differences (each group one trick's, seeds in order):
    (σ_d, its df after the shared-seed correction, which groups are in the pool, ρ̂); (NaN, 0, ..., 0)
    when no group has two values."""
    groups = [[x for x in g if not math.isnan(x)] for g in groups]
    if not groups:
        return math.nan, 0.0, [], 0.0
    d = _stack(groups, max(len(g) for g in groups))
    length = np.array([[len(g) for g in groups]])
    mean, ss, df = moments(d, length)
    var, total_df, pooled = pool(ss, df, level)
    rho = shared_correlation(d, length, mean, pooled, var)
    dof = total_df / (1 + (pooled.sum(1) - 1) * rho ** 2)
    return float(np.sqrt(var[0])), float(dof[0]), pooled[0].tolist(), float(rho[0])


def shared_correlation(diffs: np.ndarray, length: np.ndarray, mean: np.ndarray, pooled: np.ndarray,
                       var: np.ndarray) -> np.ndarray:
    """ρ̂ [S]: the correlation of the pooled tricks' residuals at the same seed (their shared baseline's
    seed noise), Σ_seeds Σ_{j≠l} r_ji·r_li / (Σ_{j≠l} (n_jl − 1) · s²), n_jl the seeds j and l share,
    clipped to [0, 1]; 0 where it cannot be estimated."""
    mask = (np.arange(diffs.shape[-1]) < length[..., None]) & pooled[..., None]
    r = np.where(mask, diffs - np.nan_to_num(mean)[..., None], 0.0)
    cross = (r.sum(1) ** 2).sum(-1) - (r ** 2).sum((1, 2))
    n = np.where(pooled, length, 0)
    shared = np.minimum(n[:, :, None], n[:, None, :]) - 1
    shared = np.where(pooled[:, :, None] & pooled[:, None, :] & (shared > 0), shared, 0)
    pairs = shared.sum((1, 2)) - np.trace(shared, axis1=1, axis2=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = cross / (pairs * var)
    return np.clip(np.where((pairs > 0) & (var > 0), np.nan_to_num(rho), 0.0), 0.0, 1.0)


@dataclass
class Look:
    """Per trick [S, k] at one look: mean, its noise (std, df, pooled or own), se, the raw p-values,
    and the equivalence margin X = max(margin, reachable)."""
    mean: np.ndarray
    std: np.ndarray
    df: np.ndarray
    pooled: np.ndarray
    se: np.ndarray
    p_difference: np.ndarray
    p_equivalence: np.ndarray
    margin: np.ndarray
    reachable: np.ndarray


def look(diffs: np.ndarray, length: np.ndarray, bases: np.ndarray, margin: float, alpha: float, tricks: int,
         last_weight: float, max_seeds: np.ndarray | int, power: float = RESOLUTION_POWER) -> Look:
    """The tests of each trick on its first `length` [S, k] differences of diffs [S, k, N], its noise pooled
    with the tricks of the same base (bases [k]). `tricks` (m), `last_weight` (w_K) and `max_seeds` set the
    reachable margin R = (t_{1−α·w_K/m, ν_max} + t_{1−(1−power)/2, ν_max}) · s / √max."""
    from scipy import stats

    mean, ss, df = moments(diffs, length)
    std, dof, pooled = np.full(mean.shape, np.nan), np.zeros(mean.shape), np.zeros(mean.shape, dtype=bool)
    dof_max, base_std = np.zeros(mean.shape), np.full(mean.shape, np.nan)
    max_seeds = np.broadcast_to(np.asarray(max_seeds, dtype=float), mean.shape)
    for b in np.unique(bases):
        cols = np.where(bases == b)[0]
        var, total_df, inside = pool(ss[:, cols], df[:, cols])
        shrink = 1 + (inside.sum(1) - 1) * shared_correlation(diffs[:, cols], length[:, cols], mean[:, cols], inside,
                                                              var) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            own = np.where(df[:, cols] > 0, ss[:, cols] / np.maximum(df[:, cols], 1), np.nan)
        std[:, cols] = np.sqrt(np.where(inside, var[:, None], own))
        dof[:, cols] = np.where(inside, (total_df / shrink)[:, None], df[:, cols])
        pooled[:, cols] = inside
        # the resolution is the base's: its pooled σ_d, and the df the pool would have at max seeds
        base_std[:, cols] = np.sqrt(var)[:, None]
        dof_max[:, cols] = (inside.sum(1) / shrink)[:, None] * (max_seeds[:, cols] - 1)
    testable = dof > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        se = std / np.sqrt(length)
        spread = testable & (se > 0)
        safe_se = np.where(spread, se, 1.0)
        reachable = np.where(dof_max > 0, (stats.t.isf(alpha * last_weight / tricks, np.maximum(dof_max, 1))
                                           + stats.t.isf((1 - power) / 2, np.maximum(dof_max, 1)))
                             * base_std / np.sqrt(max_seeds), np.nan)
    x = np.where(np.isnan(reachable), margin, np.maximum(margin, np.nan_to_num(reachable)))
    dfs = np.maximum(dof, 1)
    with np.errstate(invalid="ignore"):  # a trick without differences has a NaN mean; it is not testable
        # no spread at all: the mean decides each test outright
        t0 = np.where(spread, mean / safe_se, np.where(mean == 0, 0.0, np.sign(mean) * np.inf))
        t_low = np.where(spread, (mean + x) / safe_se, np.where(mean + x > 0, np.inf, -np.inf))
        t_high = np.where(spread, (mean - x) / safe_se, np.where(mean - x < 0, -np.inf, np.inf))
    p_d = np.where(testable, np.minimum(1.0, 2 * stats.t.sf(np.abs(np.nan_to_num(t0)), dfs)), 1.0)
    p_e = np.where(testable, np.maximum(stats.t.sf(np.nan_to_num(t_low), dfs), stats.t.sf(-np.nan_to_num(t_high), dfs)),
                   1.0)
    return Look(mean, std, dof, pooled, se, p_d, p_e, x, reachable)


# ----------------------------------------------------------------------------------------------
# the sequential rule


@dataclass
class Outcome:
    """Per trick [S, k]: verdict (after Holm), the seeds it took, the sequential p-values raw and
    Holm-adjusted over the sweep's tricks, and at its last look the mean difference, the 95% t-interval
    half-width as if n were fixed (not a confidence interval after optional stopping), the noise used
    (std, df, pooled) and the equivalence margin X."""
    verdict: np.ndarray
    seeds: np.ndarray
    p_difference: np.ndarray
    p_equivalence: np.ndarray
    p_difference_adjusted: np.ndarray
    p_equivalence_adjusted: np.ndarray
    mean: np.ndarray
    half: np.ndarray
    std: np.ndarray
    df: np.ndarray
    pooled: np.ndarray
    margin: np.ndarray


def run_plan(diffs: np.ndarray, plan: Plan, bases: Sequence[int] | None = None,
             available: np.ndarray | None = None) -> Outcome:
    """The plan applied to each sweep of diffs [S, k, N] (k tricks, the differences of seeds 0..N−1 in
    order; a 2-D array is k = 1). bases [k]: the base of each trick (one base by default); available
    [S, k] or [k]: how many of its differences each trick has (N by default). A trick still open at its
    last available look when that is under max is OPEN (it needs the next seed)."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=float)
    if diffs.ndim == 2:
        diffs = diffs[:, None, :]
    sims, k, n_all = diffs.shape
    bases = np.zeros(k, dtype=int) if bases is None else np.asarray(bases)
    available = np.broadcast_to(np.minimum(n_all if available is None else np.asarray(available), plan.max_seeds),
                                (sims, k))
    shape = (sims, k)
    verdict = np.full(shape, OPEN, dtype=object)
    seeds = np.zeros(shape, dtype=int)
    p_d_star, p_e_star = np.ones(shape), np.ones(shape)
    mean, half, std, dof, margin = (np.full(shape, np.nan) for _ in range(5))
    pooled = np.zeros(shape, dtype=bool)
    for n, w in zip(plan.looks, plan.weights):
        open_ = verdict == OPEN
        looked = open_ & (available >= n)
        if not looked.any():
            break
        # a stopped trick's differences end where it stopped; an open one's at this look
        length = np.where(open_, np.minimum(n, available), seeds)
        at = look(diffs, length, bases, plan.margin, plan.alpha, k, plan.weights[-1], plan.max_seeds)
        p_d_star = np.where(looked, np.minimum(p_d_star, np.minimum(1.0, at.p_difference / w)), p_d_star)
        p_e_star = np.where(looked, np.minimum(p_e_star, np.minimum(1.0, at.p_equivalence / w)), p_e_star)
        seeds[looked] = n
        for out, new in ((mean, at.mean), (std, at.std), (dof, at.df), (margin, at.margin)):
            out[looked] = new[looked]
        pooled[looked] = at.pooled[looked]
        adj_d, adj_e = holm_rows(p_d_star), holm_rows(p_e_star)
        differ = looked & (adj_d <= plan.alpha)
        verdict[differ & (mean > 0)] = HELPED
        verdict[differ & (mean < 0)] = HURT
        verdict[looked & ~differ & (adj_e <= plan.alpha)] = NO_EFFECT
        if n == plan.max_seeds:
            verdict[looked & (verdict == OPEN)] = UNDECIDED
    with np.errstate(invalid="ignore"):
        half = stats.t.ppf(0.975, np.maximum(dof, 1)) * std / np.sqrt(np.maximum(seeds, 1))
    half = np.where(dof > 0, half, np.nan)
    return Outcome(verdict, seeds, p_d_star, p_e_star, holm_rows(p_d_star), holm_rows(p_e_star), mean, half, std,
                   dof, pooled, margin)


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
    p_difference_adjusted: float = math.nan
    p_equivalence_adjusted: float = math.nan
    std: float = math.nan
    df: float = math.nan
    pooled: bool = False
    margin: float = math.nan


def _stack(series: Sequence[Sequence[float]], width: int) -> np.ndarray:
    d = np.full((1, len(series), max(width, 1)), np.nan)
    for j, s in enumerate(series):
        s = list(s)[:width]
        d[0, j, :len(s)] = s
    return d


def decide(pairs: Mapping[str, tuple[str, Sequence[float]]], plan: Plan,
           broken: Sequence[str] = ()) -> list[TrickDecision]:
    """Each variant's decision from its per-seed differences (seeds 0, 1, ... in order), the looks replayed
    as the adaptive sweep took them: noise pooled over the variants of the same baseline, Holm over all
    of them. pairs: variant -> (its baseline, diffs); `broken`: variants whose series a failed run cut
    short, FAILED where they would be open (more seeds cannot complete a series with a hole in it)."""
    names = list(pairs)
    if not names:
        return []
    baselines = [pairs[v][0] for v in names]
    bases = [sorted(set(baselines)).index(b) for b in baselines]
    series = [list(pairs[v][1])[:plan.max_seeds] for v in names]
    o = run_plan(_stack(series, plan.max_seeds), plan, bases, np.array([len(s) for s in series]))
    out = []
    for j, v in enumerate(names):
        verdict = str(o.verdict[0, j])
        if v in broken and verdict == OPEN:
            verdict = FAILED
        out.append(TrickDecision(v, baselines[j], verdict, int(o.seeds[0, j]) if o.seeds[0, j] else len(series[j]),
                                 float(o.mean[0, j]), float(o.half[0, j]), float(o.p_difference[0, j]),
                                 float(o.p_equivalence[0, j]), float(o.p_difference_adjusted[0, j]),
                                 float(o.p_equivalence_adjusted[0, j]), float(o.std[0, j]), float(o.df[0, j]),
                                 bool(o.pooled[0, j]), float(o.margin[0, j])))
    return out


def fixed_decisions(pairs: Mapping[str, tuple[str, Sequence[float]]], margin: float, alpha: float,
                    power: float = RESOLUTION_POWER) -> list[TrickDecision]:
    """A fixed-seed sweep's decisions: one look per variant at all its paired differences (variants under
    two differences are not tested and stay undecided), noise pooled per baseline, Holm over the variants
    tested; the equivalence margin is max(margin, what the variant's seeds can reach)."""
    names = list(pairs)
    tested = [v for v in names if len(pairs[v][1]) >= 2]
    out = {v: TrickDecision(v, pairs[v][0], UNDECIDED, len(pairs[v][1]), math.nan, math.nan, math.nan, math.nan)
           for v in names}
    if tested:
        from scipy import stats

        baselines = [pairs[v][0] for v in tested]
        bases = np.array([sorted(set(baselines)).index(b) for b in baselines])
        series = [list(pairs[v][1]) for v in tested]
        n = np.array([[len(s) for s in series]])
        at = look(_stack(series, int(n.max())), n, bases, margin, alpha, len(tested), 1.0, n, power)
        adj_d, adj_e = holm_rows(at.p_difference), holm_rows(at.p_equivalence)
        half = np.where(at.df > 0, stats.t.ppf(0.975, np.maximum(at.df, 1)) * at.se, np.nan)
        for j, v in enumerate(tested):
            m = float(at.mean[0, j])
            verdict = (HELPED if m > 0 else HURT) if adj_d[0, j] <= alpha else \
                NO_EFFECT if adj_e[0, j] <= alpha else UNDECIDED
            out[v] = TrickDecision(v, baselines[j], verdict, int(n[0, j]), m, float(half[0, j]),
                                   float(at.p_difference[0, j]), float(at.p_equivalence[0, j]), float(adj_d[0, j]),
                                   float(adj_e[0, j]), float(at.std[0, j]), float(at.df[0, j]),
                                   bool(at.pooled[0, j]), float(at.margin[0, j]))
    return [out[v] for v in names]


def simulate(plan: Plan, effect: float, sigma: float, sims: int, seed: int = 0, tricks: int = 1) -> dict[str, float]:
    """Monte Carlo of `sims` adaptive sweeps of `tricks` tricks on one baseline whose per-seed differences are
    Normal(effect, sigma): the share of each verdict over all tricks, the mean seeds per trick, and the
    share of sweeps with any helped or hurt trick ("any_difference", the family-wise error at effect 0)."""
    rng = np.random.default_rng(seed)
    o = run_plan(rng.normal(effect, sigma, size=(sims, tricks, plan.max_seeds)), plan)
    shares = {v: float(np.mean(o.verdict == v)) for v in (HELPED, HURT, NO_EFFECT, UNDECIDED)}
    differ = (o.verdict == HELPED) | (o.verdict == HURT)
    return {**shares, "mean_seeds": float(o.seeds.mean()), "any_difference": float(differ.any(axis=1).mean())}


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
    val mAP in points (ok records only; a variant recorded not_applicable is left out). A variant
    with a run-health warning on either side is COLLAPSED, outside the pool and the correction, as the
    report's decisions leave it (ablate/report/table.py)."""
    values, not_applicable, failed, unhealthy = {}, set(), set(), set()
    for r in records:
        if r.status == "ok" and "mAP" in r.metrics:
            values[(r.variant, int(r.seed))] = 100 * float(r.metrics["mAP"])
            if r.health:
                unhealthy.add(r.variant)
        elif r.status == "not_applicable":
            not_applicable.add(r.variant)
        elif r.status in ("failed", "diverged"):
            failed.add((r.variant, int(r.seed)))
    pairs, broken, collapsed = {}, [], []
    for v, b in variants.items():
        if v in not_applicable:
            continue
        diffs, cut = differences(values, v, b, plan.max_seeds, failed)
        if v in unhealthy or b in unhealthy:
            mean = float(np.mean(diffs)) if diffs else math.nan
            collapsed.append(TrickDecision(v, b, COLLAPSED, len(diffs), mean, math.nan, math.nan, math.nan))
            continue
        pairs[v] = (b, diffs)
        if cut:
            broken.append(v)
    return decide(pairs, plan, broken) + collapsed
