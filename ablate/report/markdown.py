"""The report.md text. First what a reader came for: what the report covers in a sentence, the decisions
(helped, hurt, no effect, undecided, the best variant), the per-variant table and the ΔmAP forest plot. Then
the cumulative or factorial analysis, metrics over seeds, the plots, run health, the runs that do not apply,
did not finish or could not be read. The method at the end: adaptive seeds, seed noise and power, the notes
(the decision rule, how to read the table, the caveats).

Markdown tables are written here with plain string operations (no ``tabulate`` dependency).
"""
from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ablate.report.stats import (ALPHA, CUMULATIVE, POWER, TARGET_DELTA, compare, cumulative_steps, detect_design,
                                 detectable_change, factorial_effects, paired_differences, seeds_needed,
                                 seeds_needed_z)
from ablate.report.table import (mixed_code, COST_HEADERS, DASH, DELTA_HEADER, HEALTH_HEADER, NA, P_HEADER,
                                 SHARED_CPU_RATIO, TABLE_METRICS, WARN, display_table, fmt_bounds, fmt_ci, fmt_delta, fmt_interval,
                                 fmt_p, fmt_points, fmt_verdict, metrics_table, seed_values, variant_label)
from ablate.sweep.adaptive import COLLAPSED, CORRECTION, OPEN, SCREEN_LEVEL, pooled_sigma
from ablate.results import STATUSES

RIGHT_ALIGNED = {"Seeds", "mAP", DELTA_HEADER, P_HEADER, "AP50", "AP75", "APs", "APm", "APl", "APs/APm/APl", *COST_HEADERS,
                 "Seed"}


def escape_cell(value: object) -> str:
    """A table cell: one line, pipes escaped."""
    text = "" if value is None else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, right: Iterable[str] = RIGHT_ALIGNED) -> str:
    """A GitHub-flavoured markdown table of a DataFrame's cells (as strings), columns padded to line up."""
    right = set(right)
    headers = [escape_cell(c) for c in frame.columns]
    body = [[escape_cell(v) for v in row] for row in frame.astype(object).itertuples(index=False, name=None)]
    widths = [max([len(h), 3, *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    aligned = [c in right for c in frame.columns]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(cells, widths, aligned)) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if a else "-" * w for w, a in zip(widths, aligned)) + " |"
    return "\n".join([line(headers), rule, *(line(r) for r in body)])


def _duration(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return NA
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _display_path(path: str | Path) -> str:
    """A path relative to the working folder when it lies under it, else as is."""
    text = str(path)
    if not text:
        return ""
    try:
        rel = os.path.relpath(text)
    except ValueError:  # another drive (Windows)
        return text
    return text if rel.startswith("..") else rel


def _date_range(created: Iterable[str]) -> str:
    days = sorted({c[:10] for c in created if c})
    if not days:
        return "unknown dates"
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def header_paragraph(table: pd.DataFrame, runs: pd.DataFrame, n_unreadable: int) -> str:
    """What the report covers, in one sentence: runs and their statuses, variants, the bases by name,
    seeds, device, training time, dates (the caveats about them are in the notes, caveat_lines)."""
    counts = runs["status"].value_counts()
    status_bits = ", ".join(f"{int(counts[s])} {s.replace('_', ' ')}" for s in STATUSES if s in counts)
    ok = runs[runs["status"] == "ok"]
    seeds = sorted(set(int(s) for s in ok["seed"])) if len(ok) else []
    seed_text = ("seeds " + ", ".join(str(s) for s in seeds)) if len(seeds) > 1 else \
        (f"seed {seeds[0]}" if seeds else "no seed finished")
    devices = sorted({d for d in runs["device"] if d})
    device_text = ("device " + devices[0]) if len(devices) == 1 else \
        ("devices " + ", ".join(devices)) if devices else "device not recorded"
    train_total = float(ok["train_s"].sum(min_count=1)) if len(ok) else math.nan
    bases = table.drop_duplicates("base_hash")["base"].tolist()
    parts = [
        f"{_plural(len(runs), 'run')} ({status_bits}) of {_plural(len(table), 'variant')}"
        + (f" over {len(bases)} bases ({', '.join(bases)}), each against its own baseline" if len(bases) > 1 else ""),
        seed_text,
        device_text,
        (f"{_duration(train_total)} of training in the ok runs" if not math.isnan(train_total)
         else "no training time recorded"),
        f"runs from {_date_range(runs['created_at'])}",
    ]
    text = "; ".join(parts) + "."
    if n_unreadable:
        text += f" {_plural(n_unreadable, 'record')} could not be read (listed below)."
    return text


def caveat_lines(runs: pd.DataFrame) -> list[str]:
    """The notes' caveats about where the runs come from: several git commits, and code files (or package
    versions) that differ between runs that depend on them."""
    lines = []
    commits = sorted({c[:10] for c in runs["git_commit"] if c})
    if len(commits) > 1:
        lines.append(f"- The runs come from {len(commits)} git commits ({', '.join(commits)}): check they are "
                     f"comparable.")
    mixed = mixed_code(runs)
    if mixed:
        lines.append(f"- The runs were made by different versions of the code they depend on ("
                     f"{', '.join(f'{name}: {n} versions' for name, n in mixed.items())}; see each record's `code`): "
                     "a change between runs of different code mixes the trick's effect with the code's.")
    return lines


def _name(rec: Mapping, several_bases: bool) -> str:
    return f"`{variant_label(rec, several_bases)}`"


def health_lines(table: pd.DataFrame) -> list[str]:
    """The variants with a run-health warning (a collapsed or degenerate run), a collapsed baseline first."""
    several = table["base_hash"].nunique() > 1
    lines = []

    def flagged(r: Mapping) -> str:
        return f"{_name(r, several)} ({r['health']})"

    baselines = table[table["baseline"] & (table["health"] != "")].to_dict("records")
    if baselines:
        one = len(baselines) == 1
        names = ", ".join(flagged(r) for r in baselines)
        lines.append(f"- {WARN} **Collapsed baseline{'' if one else 's'}**: {names}. "
                     f"{'Its' if one else 'Their'} mAP reflects a collapsed or degenerate run, so **every ΔmAP "
                     f"against {'it' if one else 'them'} is meaningless**: no trick of "
                     f"{'this base' if one else 'these bases'} can be judged until the baseline trains properly.")
    variants = table[~table["baseline"] & (table["health"] != "")].to_dict("records")
    if variants:
        lines.append(f"- {WARN} **Collapsed runs**: {', '.join(flagged(r) for r in variants)}. Their mAP reflects a "
                     f"collapsed or degenerate run and must not be read as the trick's effect (left out of the "
                     f"decisions below; the warnings are under “Run health”).")
    return lines


def tested(table: pd.DataFrame) -> int:
    """How many variants the decisions tested (Holm's m): those with a p-value."""
    return int(table["p_difference"].notna().sum())


def decision_rule(m: int) -> str:
    """How the decisions were made, in one sentence (the first of the notes)."""
    if not m:
        return ("- Decisions: none tested (no variant has two seeds paired with its baseline's), so every variant "
                "is undecided.")
    return (f"- Decisions: {CORRECTION}'s correction over the {_plural(m, 'variant')} tested, α = {ALPHA:g}: "
            f"paired t-tests on each base's pooled σ_d (see “Seed noise and power”); no effect = equivalence "
            f"within ±X (two one-sided tests), X the larger of {TARGET_DELTA:g} points and the change the base's "
            f"seeds can resolve. The intervals are each variant's own 95% CI, without the correction; the p-values "
            f"of the differences are in the table's “{P_HEADER}” column.")


def decision_lines(table: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """What the report decided, first thing: collapsed variants and baselines, then what helped, hurt, made
    no difference and stays undecided (after Holm's correction), and the best variant, each variant with
    its ΔmAP and 95% CI; the rule and p-values are in the notes. A variant with a run-health warning, or
    whose baseline has one, is in none of the decision lines; one with a warning is not ranked for Best
    variant."""
    several = table["base_hash"].nunique() > 1
    lines = health_lines(table)  # a collapse first: it says which decisions mean nothing
    computed = table[~table["baseline"] & table["delta_mAP"].notna()]
    rows = computed[_healthy(computed)].to_dict("records")
    if rows:
        lines += _verdict_lines(rows, several)
    elif len(computed):
        lines.append("- No ΔmAP can be read as a trick's effect: every variant that has one, or its baseline, "
                     "collapsed (see above).")
    else:
        lines.append("- No ΔmAP could be computed (no variant with an ok run beside an ok baseline run).")
    best = _best_variant_line(table, runs, several)
    if best:
        lines.append(best)
    m = tested(table)
    lines += ["", (f"Decided by paired t-tests after {CORRECTION}'s correction over the {_plural(m, 'variant')} "
                   f"tested (α = {ALPHA:g}); the method, the seeds' power and the caveats are at the end."
                   if m else "No variant could be tested (none has two seeds paired with its baseline's); the "
                   "seeds' power and the caveats are at the end.")]
    return lines


def _with_ci(r: Mapping, several: bool) -> str:
    """A variant's ΔmAP with its 95% CI, for the decision lines (or why there is no CI, or no test)."""
    if math.isnan(r["delta_ci_half"]):
        return f"{_name(r, several)} {fmt_delta(r['delta_mAP'])} (1 seed, no CI)"
    text = f"{_name(r, several)} {fmt_delta(r['delta_mAP'])} {fmt_bounds(r['delta_ci_low'], r['delta_ci_high'])}"
    return text + (" (not tested: unpaired)" if math.isnan(r["p_difference"]) else "")


def _healthy(rows: pd.DataFrame) -> pd.Series:
    """The rows of variants with no run-health warning on their side or their baseline's: those the
    decisions and the σ_d pool read (a collapsed run measures the collapse, not the trick)."""
    return (rows["health"] == "") & ~rows["baseline_unhealthy"]


def _decided(r: Mapping, several: bool) -> str:
    """A helped or hurt variant with its own 95% CI, and, where that CI spans zero, what the verdict rests
    on instead (the base's pooled σ_d, corrected), so that the line does not read as a contradiction."""
    text = _with_ci(r, several)
    if r["delta_sign"] == 0:
        text += (f" (its own CI spans zero; decided on the base's pooled σ_d {r['sigma_d']:.2f}, "
                 f"{CORRECTION} p {r['p_difference_adjusted']:.2g})")
    return text


def _verdict_lines(rows: Sequence[Mapping], several: bool) -> list[str]:
    """The healthy variants by verdict: helped, hurt, no effect (with its margin), undecided (an adaptive
    sweep's open ones among them, said so); each line says "none" rather than disappearing."""
    by = {v: [r for r in rows if r["verdict"] == v] for v in ("helped", "hurt", "no_effect")}
    undecided = [r for r in rows if r["verdict"] not in by]
    return ["- **Helped**: " + (", ".join(_decided(r, several) for r in by["helped"]) or "none") + ".",
            "- **Hurt**: " + (", ".join(_decided(r, several) for r in by["hurt"]) or "none") + ".",
            "- **No effect** beyond the margin stated: "
            + (", ".join(f"{_with_ci(r, several)} (|Δ| < {r['margin']:.1f})" for r in by["no_effect"]) or "none")
            + ".",
            "- **Undecided**: " + (", ".join(_with_ci(r, several) + (" (open: the sweep stopped before deciding)"
                                                                     if r["verdict"] == OPEN else "")
                                             for r in undecided) or "none") + "."]


def shared_cpu_lines(table: pd.DataFrame) -> list[str]:
    """The bases whose Train time and Images/s are CPU seconds, because their runs shared the CPU."""
    cpu = table[table["timing_basis"] == "cpu"].drop_duplicates("base_hash")
    if not len(cpu):
        return []
    several = table["base_hash"].nunique() > 1
    spans = "; ".join((f"{r['base']} " if several else "") + f"{r['cpu_share_min']:.2f}–{r['cpu_share_max']:.2f}"
                      for r in cpu.to_dict("records"))
    return [f"- Train time and Images/s{' of ' + ', '.join(cpu['base']) if several else ''} are CPU seconds of "
            f"training, marked (CPU), not wall time: the runs shared the CPU with other work (CPU seconds per "
            f"wall second: {spans}; a machine to itself gives a steady share, and these vary by more than "
            f"×{SHARED_CPU_RATIO:g}), so their wall times would measure that work as much as the tricks."]


def equivalence_line(table: pd.DataFrame) -> list[str]:
    """The equivalence tests behind "no effect", for the notes: each such variant's margin and p, raw and
    adjusted."""
    several = table["base_hash"].nunique() > 1
    rows = table[table["verdict"] == "no_effect"].to_dict("records")
    if not rows:
        return []
    return ["- No effect rests on the equivalence test within ±X (two one-sided tests): "
            + "; ".join(f"{_name(r, several)} |Δ| < {r['margin']:.2f}: p {r['p_equivalence']:.2g}, {CORRECTION} "
                        f"{r['p_equivalence_adjusted']:.2g}" for r in rows) + "."]


def _best_variant_line(table: pd.DataFrame, runs: pd.DataFrame, several: bool) -> str:
    """The best healthy variant by mAP and whether its margin over the runner-up is beyond seed noise;
    with several bases, the best of each base (a two-stage baseline outscoring every one-stage variant says
    nothing of a trick); '' when no variant has an ok run without a run-health warning."""
    if not several:
        return _best_of(table, runs, several, "- **Best variant**")
    lines = [_best_of(table[table["base_hash"] == base], runs, several, "  - ")
             for base in table["base_hash"].drop_duplicates()]
    lines = [line for line in lines if line]
    return "\n".join(["- **Best variant** of each base (variants of different detectors are not ranked together):",
                       *lines]) if lines else ""


def _best_of(table: pd.DataFrame, runs: pd.DataFrame, several: bool, lead: str) -> str:
    """The best healthy variant of `table` and its margin over the runner-up, after `lead`."""
    healthy = table[table["mAP"].notna() & (table["health"] == "")]
    ranked = healthy.sort_values("mAP", ascending=False, kind="stable").to_dict("records")
    if not ranked:
        return ""
    best = ranked[0]
    text = f"{lead}{': ' if lead.endswith('**') else ''}{_name(best, several)}, {fmt_points(best['mAP'])} mAP"
    if len(ranked) == 1:
        return text + (" (the only variant with an ok run)." if len(table[table["mAP"].notna()]) == 1 else
                       " (the only variant with an ok run and no run-health warning).")
    second = ranked[1]
    margin = compare(seed_values(runs, best), seed_values(runs, second))
    text += (f"; its margin over the runner-up {_name(second, several)} ({fmt_points(second['mAP'])}) is "
             f"{fmt_interval(margin, mark=False)}")
    if not margin.has_ci:
        return text + ": with a single seed it cannot be told from noise."
    if margin.excludes_zero:
        return text + ", beyond noise (95% CI excludes zero)."
    return text + ", within noise (the 95% CI spans zero)."


def noise_lines(table: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """Per base: the baseline's seed-to-seed spread, the pooled std of a paired difference (the outlier
    screen and its df), the seeds needed to detect a TARGET_DELTA-point change after the correction,
    and what this sweep's seeds can detect and resolve."""
    several = table["base_hash"].nunique() > 1
    lines = []
    m = max(tested(table), 1)
    alpha = ALPHA / m  # Holm's first step: what the smallest p-value must beat
    level = (f"α = {ALPHA:g} after {CORRECTION}'s correction over {_plural(m, 'variant')} (paired, two-sided "
             f"α/{m} = {alpha:.2g}, its first step)" if m > 1 else f"α = {ALPHA:g} (paired, two-sided)")
    for base in table.loc[table["baseline"], "base_hash"].drop_duplicates():
        lines.append(_base_noise_line(table[table["base_hash"] == base], runs, several, alpha, level))
    if not lines:
        lines.append("- No baseline has an ok run: the seed-to-seed spread cannot be estimated.")
    return lines


def _base_noise_line(block: pd.DataFrame, runs: pd.DataFrame, several: bool, alpha: float, level: str) -> str:
    """One base's line of "Seed noise and power": its spread, σ_d and where it comes from, then the
    seeds needed and what this sweep's seeds resolve (or why neither can be said)."""
    delta, power = TARGET_DELTA, POWER
    base_row = block[block["baseline"]].iloc[0]
    prefix = f"**{base_row['base']}**: " if several else ""
    if base_row["health"]:  # its spread would be the collapse's, not the seeds'
        return (f"- {prefix}The baseline collapsed ({base_row['health']}; see “Run health”): its seed-to-seed "
                f"spread measures the collapse, not the seed noise, so this base gets no σ_d and no power "
                f"statement.")
    baseline = seed_values(runs, base_row)
    n_b = len(baseline)
    sigma = float(np.std(list(baseline.values()), ddof=1)) if n_b >= 2 else math.nan
    sigma_d, source, per_seed = _sigma_d(block, runs, baseline, sigma, several)
    text = f"- {prefix}{_spread_text(sigma, n_b)}."
    if math.isnan(sigma_d):
        return text + (" Without it neither a confidence interval nor the number of seeds needed can be given; "
                       "run at least 2 seeds (3 or more for intervals of usable width).")
    z_a, z_b = f"z{_sub(f'{1 - alpha / 2:.4g}')}", f"z{_sub(f'{power:g}')}"
    n_t = seeds_needed(sigma_d, delta, alpha, power, df_per_seed=per_seed)
    n_z = seeds_needed_z(sigma_d, delta, alpha, power)
    text += (f" The std of a paired difference is {source}. To detect a {delta:g}-point ΔmAP with "
             f"{power:.0%} power at {level} needs **{_plural(n_t, 'seed')}** per variant "
             f"(n = (({z_a} + {z_b})·σ_d/δ)² gives {n_z}; with t quantiles on the pooled df, iterated, {n_t}).")
    # σ_d is known, so the baseline ran two seeds or more.
    mde = detectable_change(sigma_d, n_b, alpha, power, df_per_seed=per_seed)
    verdict = "enough to resolve" if n_b >= n_t else "too few to resolve"
    text += (f" This sweep ran the baseline over {_plural(n_b, 'seed')}: the smallest ΔmAP a paired comparison "
             f"over them detects with {power:.0%} power at that level is {mde:.2f} points, {verdict} a "
             f"{delta:g}-point change.")
    margins = block.loc[~block["baseline"] & block["margin"].notna(), "margin"]
    if len(margins):
        text += f" Equivalence (“no effect”) is tested within ±{margins.max():.2f} points."
    return text


def _spread_text(sigma: float, n_b: int) -> str:
    """The baseline's seed-to-seed spread in words, or why it is unknown (one seed, or no ok run)."""
    if n_b >= 2:
        return (f"The baseline's seed-to-seed spread is σ = {sigma:.2f} points "
                f"(std of its mAP over {n_b} seeds)")
    if n_b == 1:
        return "The seed-to-seed spread cannot be estimated from this sweep: the baseline ran a single seed"
    return "The baseline has no ok run, so its seed-to-seed spread is unknown"


def _partly_paired_lines(table: pd.DataFrame) -> list[str]:
    """A note naming the variants paired on fewer seeds than one side ran (an adaptive sweep's trick that
    stopped before its baseline), whose ΔmAP is therefore not the difference of the two mAP columns."""
    baseline_seeds = dict(zip(table.loc[table["baseline"], "base_hash"], table.loc[table["baseline"], "seeds"]))
    bits = []
    for rec in table[~table["baseline"] & table["delta_paired"]].to_dict("records"):
        ran = max(rec["seeds"], baseline_seeds.get(rec["base_hash"], 0))
        if rec["delta_seeds"] < ran:
            bits.append(f"`{rec['variant']}` ({rec['delta_seeds']} of {ran})")
    if not bits:
        return []
    return [f"- ΔmAP paired on the seeds both sides ran, fewer than one side ran (a trick an adaptive sweep "
            f"stopped while its baseline went on, or a failed run): {', '.join(bits)}. Its mAP column and its "
            f"baseline's average each side's own seeds, so their difference need not equal ΔmAP."]


def _sigma_d(block: pd.DataFrame, runs: pd.DataFrame, baseline: Mapping[int, float], sigma: float,
             several: bool) -> tuple[float, str, float]:
    """σ_d, the std of a paired difference, the text saying where it comes from, and the pool's df per
    seed of each variant: pooled over the variants with two paired seeds or more (the outliers left
    out), else √2·σ from the baseline's spread (NaN when that is unknown too)."""
    names, groups = [], []
    # a variant with a collapsed run measures the collapse: outside the pool, as it is outside the decisions
    rows = ~block["baseline"] & block["delta_paired"] & (block["delta_seeds"] >= 2) & _healthy(block)
    for rec in block[rows].to_dict("records"):
        variant = seed_values(runs, rec)
        names.append(_name(rec, several))
        groups.append(paired_differences(variant, baseline).tolist())
    sigma_d, dof, pooled, rho = pooled_sigma(groups)
    raw_df = sum(len(g) - 1 for g, kept in zip(groups, pooled) if kept)
    if dof:
        kept = sum(pooled)
        source = (f"σ_d = {sigma_d:.2f} points, pooled over the paired per-seed differences of "
                  f"{_plural(kept, 'variant')}, each centred on its own mean ({raw_df} degrees of freedom")
        if dof < raw_df - 0.05:
            source += (f"; {dof:.1f} effective, the variants' residuals at the same seed correlating "
                       f"ρ̂ = {rho:.2f} through their shared baseline")
        source += ")"
        dropped = [n for n, k in zip(names, pooled) if not k]
        if dropped:
            source += (f"; left out of the pool, its own variance an outlier (Cochran's C at {SCREEN_LEVEL:g}): "
                       f"{', '.join(dropped)}, tested on its own")
        return sigma_d, source, dof / max(raw_df, 1) * kept  # the pool's df per seed of each variant
    if not math.isnan(sigma):
        sigma_d = math.sqrt(2) * sigma
        return sigma_d, (f"σ_d ≈ √2·σ = {sigma_d:.2f} points, from the baseline's spread (no variant has two "
                         f"paired seeds; this assumes a variant's seed noise is independent of its baseline's, "
                         f"which overstates σ_d when pairing by seed helps)"), 1.0
    return math.nan, "", 1.0


def _sub(text: str) -> str:
    """Subscript digits and dot: 0.975 -> ₀.₉₇₅."""
    return text.translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


def design_sections(table: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """For bases whose trick sets make a cumulative or a full factorial design: the running total of a
    cumulative design, the main effects and two-way interactions of a factorial one. Not analysed, and said
    so, where a trick set ran with several sets of trick arguments: which of them is the design's is unknown."""
    several = table["base_hash"].nunique() > 1
    out: list[str] = []
    for base in table["base_hash"].drop_duplicates():
        block = table[table["base_hash"] == base]
        by_set: dict[frozenset, list[Mapping]] = {}
        for rec in block.to_dict("records"):
            by_set.setdefault(frozenset(rec["tricks"].split("+")) if rec["tricks"] else frozenset(), []).append(rec)
        design, order = detect_design(by_set)
        if not design:
            continue
        label = f" ({block['base'].iloc[0]})" if several else ""
        ambiguous = [_name(r, several) for recs in by_set.values() if len(recs) > 1 for r in recs]
        if ambiguous:
            out += [f"## {design.capitalize()} design{label}", "",
                    f"Not analysed: the trick sets make a {design} design, but some ran with several sets of trick "
                    f"arguments ({', '.join(ambiguous)}), so which of them belongs to the design is unknown. "
                    f"Report the folders of one setting to analyse it.", ""]
            continue
        values = {s: seed_values(runs, recs[0]) for s, recs in by_set.items()}
        names = {s: recs[0]["variant"] for s, recs in by_set.items()}
        if design == CUMULATIVE:
            base_mean = float(np.mean(list(values[frozenset()].values()))) if values[frozenset()] else math.nan
            frame = pd.DataFrame([{
                "Step": str(i),
                "Adds": step.added,
                "Variant": f"`{names[frozenset(step.tricks)]}`",
                "mAP": fmt_points(step.mean),
                "Δ vs previous row": fmt_interval(step.step),
                "Running total Δ": fmt_interval(step.total),
            } for i, step in enumerate(cumulative_steps(order, values), start=1)])
            out += [f"## Cumulative design{label}", "",
                    f"The variants are nested (detected from their trick sets): each adds one trick to the row above, "
                    f"starting from the baseline ({fmt_points(base_mean)} mAP). “Δ vs previous row” is what the "
                    f"added trick brought on top of the ones before it (paired by seed, 95% CI; bold: CI excludes "
                    f"zero); “Running total Δ” is the change against the baseline so far.", "",
                    markdown_table(frame, right={"Step", "mAP", "Δ vs previous row", "Running total Δ"}), ""]
        else:
            effects = factorial_effects(order, values)
            k = len(order)
            frame = pd.DataFrame([{
                "Effect": ("main: " if len(e.tricks) == 1 else "interaction: ") + e.name,
                "Estimate ± 95% CI": fmt_interval(e.interval) if not math.isnan(e.interval.mean)
                else f"{NA} (a combination has no ok run)",
            } for e in effects])
            common = "every combination ran the same seeds" if all(e.interval.method == "paired" for e in effects) \
                else "the combinations ran different seeds, so effects come from their means, without CI"
            out += [f"## Factorial design{label}", "",
                    f"All 2^{k} = {2 ** k} combinations of {k} tricks ({', '.join(order)}) ran (detected from "
                    f"their trick sets). Main effect of a trick: mean mAP of the {2 ** (k - 1)} combinations with "
                    f"it minus the mean of the {2 ** (k - 1)} without. Interaction a × b: mean mAP of the "
                    f"combinations with both or neither minus that of those with exactly one, i.e. ½[(effect of "
                    f"a with b) − (effect of a without b)]; positive when the two tricks help more together. "
                    f"The 95% CI is the t-interval of the effect computed seed by seed ({common}); bold: CI "
                    f"excludes zero.", "",
                    markdown_table(frame, right={"Estimate ± 95% CI"}), ""]
    return out


def metrics_section(table: pd.DataFrame) -> list[str]:
    if not (table["seeds"] >= 2).any():
        return []
    return ["## Metrics over seeds", "",
            "Mean ± sample std over each variant's ok seeds (points); table.csv holds all 12 COCO metrics.", "",
            markdown_table(metrics_table(table), right={"Seeds", *TABLE_METRICS}), ""]


PLOTS = {
    "curves.png": "Training curves per base: loss per epoch, and val mAP at each evaluated epoch (every "
                  "train.eval_every epochs and after the last), of every variant (mean over seeds).",
    "pareto.png": "mAP against the model's cost: FLOPs per image (params where FLOPs are not recorded, latency "
                  "with its spread over seeds where neither is); filled points and the line: the Pareto front (no "
                  "variant both cheaper and better).",
    "per_class.png": "Per-class AP change of each variant against its baseline (points, mean over seeds); a "
                     "change far beyond the others saturates the colour, its number is in the cell.",
}


def plots_section(images: Sequence[str]) -> list[str]:
    lines = ["## Plots", ""]
    for image in images:
        caption = PLOTS.get(image, image)
        lines += [caption, "", f"![{image.removesuffix('.png')}]({image})", ""]
    return lines if len(lines) > 2 else []


def notes(table: pd.DataFrame) -> list[str]:
    """How to read the table, plus the cases that need a warning (no CI, unpaired ΔmAP, missing baselines)."""
    lines = [
        "- Metrics are COCO box metrics (COCOeval; pycocotools and faster-coco-eval give the same numbers, "
        "`eval.backend` in each record's config says which ran) in points (×100): mAP is AP@[.5:.95], AP50 and AP75 at one "
        "IoU threshold, APs/APm/APl by object area. A metric COCO reports as −1 (no ground truth in that area "
        "range) shows as n/a.",
        "- Each number is the mean over the variant's ok runs; the mAP's “± std” is the sample standard deviation "
        "over seeds, shown from two seeds on (the other metrics' are under “Metrics over seeds” and in table.csv). "
        "Seeds counts the ok runs; failed and diverged runs add no number.",
        f"- {DELTA_HEADER}: the variant's mAP minus its baseline's (same model, data and schedule, no tricks). "
        f"On the n seeds both ran (when one side's seeds contain the other's) it is the mean of the per-seed "
        f"differences d_i and the ± is the half-width of their 95% t-interval, t₀.₉₇₅,ₙ₋₁·s_d/√n (the lines of "
        f"the forest plot); when neither seed set contains the other it is the difference of the means with "
        f"Welch's 95% interval, marked (Welch). **Bold**: the verdict after "
        f"{CORRECTION}'s correction is helped or hurt (an interval may exclude zero and the corrected test not, "
        f"or the reverse: the test uses the base's pooled σ_d). With a single seed no interval can be given (1 seed, no CI). "
        f"{DASH} marks the baseline itself; n/a a ΔmAP that cannot be computed (no ok run of the variant or of "
        f"its baseline), never a zero change.",
        "- Costs: the baseline row gives them absolute, the other rows as changes against their baseline. Train time "
        "is the training wall time of one run (without evaluation), Images/s the training throughput, Peak mem the "
        "run's peak memory (an accelerator's allocated memory; on the CPU the process's resident peak since the run "
        "began); ms/img the batch-1 inference latency per image, Params and FLOPs "
        "those of the model as built (M = 10⁶, G = 10⁹).",
        "- Kind, as in YOLOv4: a “freebie” costs nothing at inference (params and FLOPs those of its baseline "
        "within 0.5%), a “special” does (bag of specials); latency is measured, not used, as it is noisy.",
    ]
    lines += shared_cpu_lines(table)
    if table["peak_memory_unscoped"].sum():
        lines.append("- Peak mem is n/a for the CPU runs recorded before each run's peak was its own "
                     "(record.peak_memory_scope): theirs is the process's peak over every run it trained, and a "
                     "sweep's runs share a process.")
    no_ci = table[~table["baseline"] & table["delta_mAP"].notna() & table["delta_ci_half"].isna()]
    if len(no_ci):
        names = ", ".join(f"`{v}`" for v in no_ci["variant"])
        lines.append(f"- No confidence interval can be given for {names}: the variant or its baseline ran a "
                     f"single seed, so this sweep cannot tell their ΔmAP from seed noise.")
    unpaired = table[~table["baseline"] & table["delta_mAP"].notna() & ~table["delta_paired"]]
    if len(unpaired):
        names = ", ".join(f"`{v}`" for v in unpaired["variant"])
        lines.append(f"- Unpaired ΔmAP (neither the variant's ok seeds nor its baseline's contain the other's, so "
                     f"ΔmAP is a difference of means, with Welch's interval where both sides have two seeds or "
                     f"more): {names}.")
    lines += _partly_paired_lines(table)
    missing = table[~table["baseline"] & table["delta_mAP"].isna()]
    if len(missing):
        bits = []
        for rec in missing.itertuples():
            has_base = bool(((table["base_hash"] == rec.base_hash) & table["baseline"]).any())
            why = ("its baseline has no ok run" if has_base else "no baseline run in these folders") \
                if rec.seeds else "no ok run"
            bits.append(f"`{rec.variant}` ({why})")
        lines.append("- ΔmAP is n/a for: " + ", ".join(bits) + ".")
    if (table["health"] != "").any():
        lines.append(f"- {HEALTH_HEADER}: run-health warnings of the variant's ok runs (ablate/health.py, thresholds "
                     f"under `eval.health` in each record's config), with how many of its seeds have each: "
                     f"no_detections (no detection above the score threshold), degenerate_boxes (most boxes of "
                     f"near-zero width or height), single_class (every detection of one class), near_zero_recall "
                     f"(AR100 near zero). Such a run finished (status ok) but its detector collapsed or learned "
                     f"nothing; its numbers are in the table but say nothing about the tricks. {WARN} before a ΔmAP: "
                     f"the variant or its baseline collapsed.")
    dup = table[table["seeds"] > table["seed_list"].str.split().str.len().fillna(0)]
    if len(dup):
        lines.append("- Some seeds ran more than once (the same run in two folders?); for ΔmAP the repeats of a seed "
                     "are averaged first: " + ", ".join(f"`{v}`" for v in dup["variant"]) + ".")
    return lines


def health_section(runs: pd.DataFrame) -> list[str]:
    """The ok runs with run-health warnings, with the numbers each warning was decided on."""
    bad = runs[(runs["status"] == "ok") & (runs["health"] != "")]
    if not len(bad):
        return []
    frame = pd.DataFrame({
        "Variant": [f"`{v}`" for v in bad["variant"]],
        "Seed": bad["seed"].astype(str),
        "Warnings": bad["health"],
        "Details": bad["health_messages"],
        "Run folder": [f"`{_display_path(p)}`" if p else DASH for p in bad["run_dir"]],
    })
    return ["## Run health", "",
            "These runs finished (status ok) but show the signs of a detector that collapsed or learned nothing; "
            "their mAP is not the effect of their tricks.", "",
            markdown_table(frame), ""]


def not_applicable_section(runs: pd.DataFrame) -> list[str]:
    """Variants whose tricks do not fit their detector (or each other): n/a, not a zero change."""
    na = runs[runs["status"] == "not_applicable"].drop_duplicates("variant")
    if not len(na):
        return []
    lines = ["## Variants that do not apply", "",
             "Their tricks do not fit the detector (or each other): nothing was trained, and the table shows n/a.", ""]
    lines += [f"- `{v}`: {e}" for v, e in zip(na["variant"], na["error"])]
    return lines + [""]


def unfinished_section(runs: pd.DataFrame) -> list[str]:
    bad = runs[~runs["status"].isin(["ok", "not_applicable"])]
    if not len(bad):
        return []
    frame = pd.DataFrame({
        "Variant": bad["variant"],
        "Seed": bad["seed"].astype(str),
        "Status": bad["status"],
        "Error": [e if e else DASH for e in bad["error"]],
        "Run folder": [f"`{_display_path(p)}`" if p else DASH for p in bad["run_dir"]],
    })
    return ["## Runs that did not finish", "",
            "These runs add no number to the table above (a failed run is retried by the next sweep; "
            "a diverged one stays as it is, and so does a search's trial its pruner stopped early).", "",
            markdown_table(frame), ""]


def unreadable_section(errors: Sequence[BaseException]) -> list[str]:
    if not errors:
        return []
    lines = ["## Unreadable records", "",
             "These result.json files are truncated, corrupt or of another schema; they are not read as results.", ""]
    lines += [f"- {' '.join(str(e).split())}" for e in errors]
    return lines + [""]


def search_line(searches: Mapping[Path, int]) -> str:
    """One line on the search trials left out of the table (ablate/report/__init__.py), with the command
    that reports each search."""
    bits = [f"{_plural(n, 'run')} of the search in `{_display_path(folder)}` (`ablate report {folder}` reports "
            f"them)" for folder, n in searches.items()]
    return (f"Left out of this report: {'; '.join(bits)}. A search's trials tune parameters with the same "
            f"tricks switched on; they are not variants of an ablation.")


def adaptive_section(info: Mapping, decisions: Sequence) -> list[str]:
    """An adaptive sweep's decisions (ablate/sweep/adaptive.py): per trick the verdict after Holm's
    correction (on which it stopped), the seeds it took, its noise, margin and p-values raw and adjusted,
    the rounds, and the runs against max seeds everywhere and against the fixed design the power statement
    names."""
    m = _tested(decisions)
    runs, round_lines = _adaptive_rounds(info)
    unfinished = ([f"**The sweep has not ended**: it stopped in or after round {len(info['rounds'])} (the runs "
                   f"below count that round whole). Its open tricks are said open; the same command goes on from "
                   f"the records on disk.", ""] if info.get("complete") is False else [])
    return ["## Adaptive seeds", "", *unfinished,
            _adaptive_method(info, m), "",
            markdown_table(pd.DataFrame(_adaptive_rows(decisions)),
                           right=("Seeds", "ΔmAP ± t-interval at the stop", "σ_d",
                                  "p difference (Holm)", "p equivalence (Holm)")), "",
            "Rounds:", "", *round_lines, "",
            _adaptive_savings(info, decisions, runs) + ".", ""]


def _tested(decisions: Sequence) -> int:
    """The tricks the adaptive sweep's correction ran over: all but those a collapsed run took out."""
    return sum(d.verdict != COLLAPSED for d in decisions)


def _adaptive_rows(decisions: Sequence) -> list[dict[str, str]]:
    """The adaptive table's rows, one per trick: what it stopped on, with how many seeds, and why."""
    m = _tested(decisions)
    rows = []
    for d in decisions:
        change = fmt_ci(d.mean, d.half, mark=False) if not math.isnan(d.mean) else DASH
        if d.verdict == COLLAPSED and not math.isnan(d.mean):
            change = f"{fmt_delta(d.mean)} (not tested)"
        noise = DASH if math.isnan(d.std) else f"{d.std:.2f} ({d.df:.0f} df{'' if d.pooled else ', own'})"
        rows.append({"Variant": d.variant,
                     f"Verdict ({CORRECTION} over {m})": "open (run stopped)" if d.verdict == OPEN else
                     fmt_verdict(d.verdict, d.margin),
                     "Seeds": str(d.seeds), "ΔmAP ± t-interval at the stop": change, "σ_d": noise,
                     "p difference (Holm)": fmt_p(d.p_difference, d.p_difference_adjusted),
                     "p equivalence (Holm)": fmt_p(d.p_equivalence, d.p_equivalence_adjusted)})
    return rows


def _adaptive_rounds(info: Mapping) -> tuple[int, list[str]]:
    """The runs the adaptive sweep made in all, and one numbered line per round saying which."""
    runs = 0
    round_lines = []
    for r in info["rounds"]:
        count = len(r["variants"]) * (r["seeds"] if r["round"] == 1 else 1)
        runs += count
        what = (f"seeds 0–{r['seeds'] - 1} of all {len(r['variants'])} variants" if r["round"] == 1
                else f"seed {r['seeds'] - 1} of " + ", ".join(r["variants"]))
        round_lines.append(f"{r['round']}. {what} ({_plural(count, 'run')})")
    return runs, round_lines


def _adaptive_savings(info: Mapping, decisions: Sequence, runs: int) -> str:
    """The runs made against max seeds everywhere and against the fixed design the power statement
    names (per base, the seeds to detect TARGET_DELTA after the correction): what adapting saved.
    The fixed design is left out when a base has no pooled σ_d to size it with."""
    m = _tested(decisions)
    bases = {b: [d for d in decisions if d.baseline == b] for b in dict.fromkeys(info["variants"].values())}
    full = (len(info["variants"]) + len(bases)) * info["max"]
    fixed, fixed_seeds = 0, []
    for b, ds in bases.items():
        pooled = [d for d in ds if d.pooled and d.seeds >= 2 and not math.isnan(d.std)]
        if not pooled:
            fixed = 0
            break
        last = max(pooled, key=lambda d: d.seeds)
        n = seeds_needed(last.std, TARGET_DELTA, info["alpha"] / max(m, 1), POWER,
                         df_per_seed=last.df / (last.seeds - 1))
        fixed += (len(ds) + 1) * n
        fixed_seeds.append(f"{n} for {b}")
    against = f"{_plural(runs, 'run')} against {full} with {info['max']} seeds everywhere " \
              f"({100 * (1 - runs / full):.0f}% of the runs saved)"
    if fixed:
        against += (f", and against {fixed} in the fixed design that detects a {TARGET_DELTA:g}-point change with "
                    f"{POWER:.0%} power after the correction at this sweep's pooled σ_d (seeds per variant: "
                    f"{', '.join(fixed_seeds)}; {100 * (1 - runs / fixed):.0f}% saved)")
    return against


def _adaptive_method(info: Mapping, m: int) -> str:
    """The paragraph that says how the adaptive sweep decided, with this sweep's plan filled in, so the
    table can be read without ablate/sweep/adaptive.py."""
    margin = info["margin"]
    return (f"Each trick ran {info['min']} seeds with its baseline, then one more seed at a time while open, "
            f"up to {info['max']}. After each round every trick's sequential p-values (each test spends "
            f"α = {info['alpha']:g} over the planned looks: {info['spending']} spending, a union bound over the "
            f"looks) are adjusted by {info.get('correction', CORRECTION)}'s step-down over {_plural(m, 'trick')}, and a "
            f"trick stops only on the adjusted p-value: helped or hurt (the paired test of no change rejects), or "
            f"no effect (equivalence within ±X, two one-sided tests). A trick decided raw but not after the "
            f"correction gets another seed. The tests use each base's pooled σ_d (the tricks' differences each "
            f"centred on its own mean; a trick whose own variance is an outlier by Cochran's C at "
            f"{info.get('screen_level', SCREEN_LEVEL):g} is left out and tested on its own). X is the larger of "
            f"the plan's margin ±{margin:g} and the margin the design can reach by {info['max']} seeds at the "
            f"pooled σ_d (80% power at no change); where X > {margin:g} the plan's margin was out of reach and "
            f"“no effect” means no effect larger than ±X. The ± beside ΔmAP is the 95% t-interval at the stopping "
            f"look as if the seeds had been fixed: it is not a confidence interval after optional stopping (an "
            f"early stop favours a larger |ΔmAP|).")


def render_markdown(title: str, table: pd.DataFrame, runs: pd.DataFrame, errors: Sequence[BaseException],
                    runs_dirs: Sequence[Path | str], image: str = "delta_map.png",
                    plots: Sequence[str] = tuple(PLOTS), now: datetime | None = None,
                    adaptive: Sequence[str] = (), searches: Mapping[Path, int] | None = None) -> str:
    """report.md: what it covers in a sentence, the decisions, the table and the forest plot first; the
    analyses, plots and the runs that did not count next; the method notes (adaptive seeds, seed noise
    and power, how to read the table, the caveats) at the end."""
    now = now or datetime.now().astimezone()
    dirs = " ".join(str(d) for d in runs_dirs)
    sweeps = sorted({s for s in runs["sweep"] if s})
    parts = [f"# {title}", "", header_paragraph(table, runs, len(errors)), ""]
    if len(sweeps) > 1 or (sweeps and sweeps[0] != title):
        parts += [f"Sweep{'s' if len(sweeps) > 1 else ''} in the records: {', '.join(sweeps)}.", ""]
    if searches:
        parts += [search_line(searches), ""]
    parts += ["## Decisions", "", *decision_lines(table, runs), ""]
    parts += [markdown_table(display_table(table)), "",
              f"![ΔmAP per variant with its 95% CI]({image})", "",
              "ΔmAP and its 95% CI per variant, under its base; coloured where the verdict is helped or hurt, the "
              "grey band each base's no-effect margin.", ""]
    parts += design_sections(table, runs)
    parts += metrics_section(table)
    parts += plots_section(plots)
    parts += health_section(runs)
    parts += not_applicable_section(runs)
    parts += unfinished_section(runs)
    parts += unreadable_section(errors)
    parts += list(adaptive)
    parts += ["## Seed noise and power", "", *noise_lines(table, runs), ""]
    parts += ["## Notes", "", decision_rule(tested(table)), *equivalence_line(table), *notes(table),
              *caveat_lines(runs), ""]
    parts += ["---", "",
              f"Built by `ablate report {dirs}` on {now:%Y-%m-%d %H:%M} from the result.json records alone "
              f"(table.csv: one row per variant, runs.csv: one row per run; numbers in points).", ""]
    return "\n".join(parts)
