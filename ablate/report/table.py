"""Run records -> pandas tables: one row per run, one row per variant, and the display strings.

No torch here (see ``ablate.report``). Metrics are fractions in the records (0.523); every table
here holds them in points (52.3), the unit of published bag-of-tricks tables.

A *variant* is the set of runs with the same ``base_hash``, the same tricks and the same trick arguments
(``tricks_hash``: tricks.mixup.alpha=0.2 and 1.5 are two variants, labelled ``mixup [mixup.alpha=0.2]`` and
``mixup [mixup.alpha=1.5]``, unless their runs' names tell them apart already: ``ablate train -m`` names
them ``mixup[tricks.mixup.alpha=0.2]``, ablate/sweep/multirun.py); its *baseline* is the variant with the same
``base_hash`` and no tricks. Only runs with status ``ok`` contribute numbers; failed and diverged runs are
counted in the ``status`` column and listed in the report.
An ok run may carry run-health warnings (``RunRecord.health``, ablate/health.py: the detector collapsed or
learned nothing); its numbers still count, and the variant is flagged in the ``health`` column.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ablate.report.stats import (ALPHA, POWER, TARGET_DELTA, Interval, compare, paired_differences,
                                 relative_change, trick_kind)
from ablate.results import COCO_METRICS, STATUSES, RunRecord, tricks_hash
from ablate.sweep.adaptive import UNDECIDED, fixed_decisions

# COCO metrics shown in the table, in the table's order; table.csv holds all 12 (COCO_METRICS).
TABLE_METRICS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")

NA = "n/a"
DASH = "\u2014"  # em dash: the baseline's own ΔmAP
MINUS = "\u2212"  # minus sign, as in printed tables

# Numeric per-variant columns of `records_table` (besides the metric means and stds).
TIMING_COLUMNS = ("train_s", "images_per_s", "peak_memory_mb", "inference_ms", "params_M", "flops_G")

# A CPU run's CPU seconds per wall second of training is steady on a machine it has to itself; when it
# varies by more than this factor between the runs of one base, something else shared the CPU (another
# job, a second run of the sweep), and their wall times measure that, not the tricks: the base's Train
# time and Images/s are then taken from CPU seconds (timings.train_cpu_s). Measured here: 1-thread runs
# alone 0.96-1.0 CPU s per wall s; beside other work 0.47-0.96 (reports/bag_of_tricks_3seed).
SHARED_CPU_RATIO = 1.25

# Cost column -> (its change column against the baseline, "pct" or "abs").
CHANGE_COLUMNS = {
    "train_s": ("train_s_change_pct", "pct"),
    "images_per_s": ("images_per_s_change_pct", "pct"),
    "peak_memory_mb": ("peak_memory_change_pct", "pct"),
    "inference_ms": ("inference_ms_change", "abs"),
    "params_M": ("params_change_pct", "pct"),
    "flops_G": ("flops_change_pct", "pct"),
}

# Display column -> (numeric column, unit of the absolute value, digits).
_COST_COLUMNS = {
    "Train time": ("train_s", "s", None),
    "Images/s": ("images_per_s", "", 1),
    "Peak mem": ("peak_memory_mb", "MB", 0),
    "ms/img": ("inference_ms", "ms", None),
    "Params": ("params_M", "M", None),
    "FLOPs": ("flops_G", "G", None),
}
COST_HEADERS = tuple(_COST_COLUMNS)
DELTA_HEADER = "ΔmAP ± 95% CI"
VERDICT_HEADER = "Verdict"
P_HEADER = "p (Holm)"
# Per-variant columns of the decisions (after Holm's correction over the tested variants).
VERDICT_COLUMNS = ("verdict", "p_difference", "p_difference_adjusted", "p_equivalence", "p_equivalence_adjusted",
                   "margin", "sigma_d", "sigma_d_df", "sigma_d_pooled")
HEALTH_HEADER = "Health"
WARN = "\u26a0"  # ⚠: a run-health warning


def health_cell(rec: Mapping[str, Any]) -> str:
    """The Health cell of a ``records_table`` row: "ok", "⚠ collapsed: degenerate_boxes (3/3 seeds)", and
    "⚠ baseline collapsed, ΔmAP meaningless" for a variant whose baseline has a run-health warning."""
    parts = []
    if rec["health"]:
        parts.append(f"collapsed: {rec['health']}")
    if rec["baseline_unhealthy"]:
        parts.append("baseline collapsed, ΔmAP meaningless")
    return f"{WARN} " + "; ".join(parts) if parts else "ok"

# (base_hash, tricks, tricks_hash): one variant (see the module docstring).
GroupKey = tuple[str, tuple[str, ...], str]


# ----------------------------------------------------------------------------------------------
# small numeric helpers


def _num(value: Any) -> float:
    """A float, or NaN for None, non-numbers and non-finite values."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _metric_points(record: RunRecord, name: str) -> float:
    """A COCO metric in points; NaN when absent or negative (COCOeval's -1: no ground truth in range)."""
    x = _num(record.metrics.get(name)) if isinstance(record.metrics, dict) else math.nan
    return x * 100.0 if x >= 0 else math.nan


def _mean(values: Iterable[float]) -> float:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    return float(arr.mean()) if arr.size else math.nan


def _std(values: Iterable[float]) -> float:
    """Sample standard deviation (ddof=1), NaN below two values."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    return float(arr.std(ddof=1)) if arr.size >= 2 else math.nan


def health_codes(record: RunRecord) -> list[str]:
    """The codes of a record's run-health warnings, in order, each once (empty: healthy, or a record
    made before the check)."""
    health = record.health if isinstance(record.health, list) else []
    return list(dict.fromkeys(str(w.get("code")) for w in health if isinstance(w, dict) and w.get("code")))


def health_messages(record: RunRecord) -> str:
    """A record's run-health messages in one line ('' when healthy)."""
    health = record.health if isinstance(record.health, list) else []
    return "; ".join(str(w.get("message") or w.get("code")) for w in health if isinstance(w, dict))


def health_text(recs: Sequence[RunRecord]) -> str:
    """The run-health warnings of a variant's ok runs, each code with the share of runs that have it:
    "degenerate_boxes (3/3 seeds), near_zero_recall (2/3 seeds)"; '' when none has any."""
    ok = [r for r in recs if r.status == "ok"]
    counts: dict[str, int] = {}
    for r in ok:
        for code in health_codes(r):
            counts[code] = counts.get(code, 0) + 1
    return ", ".join(f"{code} ({n}/{len(ok)} seed{'' if len(ok) == 1 else 's'})" for code, n in counts.items())


def last_line(text: str | None) -> str:
    """The last non-empty line of an error text (the exception, under its traceback)."""
    if not text:
        return ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------------------------
# ΔmAP


def per_seed(values: Iterable[tuple[int, float]]) -> dict[int, float]:
    """seed -> value, averaging repeated runs of one seed and dropping NaNs."""
    by_seed: dict[int, list[float]] = {}
    for seed, value in values:
        if not math.isnan(value):
            by_seed.setdefault(seed, []).append(value)
    return {seed: float(np.mean(v)) for seed, v in sorted(by_seed.items())}


@dataclass
class Delta:
    """ΔmAP of a variant against its baseline, in points."""

    mean: float = math.nan
    # Sample std of the paired per-seed differences; NaN when unpaired or under two seeds.
    std: float = math.nan
    paired: bool = False
    # The paired per-seed differences (empty when unpaired).
    diffs: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n(self) -> int:
        return int(self.diffs.size)


def delta_against(variant: Mapping[int, float], baseline: Mapping[int, float]) -> Delta:
    """ΔmAP: mean of the paired per-seed differences, or the difference of the means when the seeds differ."""
    if not variant or not baseline:
        return Delta()
    diffs = paired_differences(variant, baseline)
    if diffs is not None:
        return Delta(mean=float(diffs.mean()), std=_std(diffs), paired=True, diffs=diffs)
    return Delta(mean=float(np.mean(list(variant.values())) - np.mean(list(baseline.values()))))


# ----------------------------------------------------------------------------------------------
# tables


def variant_tricks_hash(record: RunRecord) -> str:
    """The hash of the record's trick arguments; '' for a run without tricks, so that every baseline of a
    base is one variant whatever its (empty) tricks section looks like."""
    if not record.tricks:
        return ""
    return tricks_hash(record.config if isinstance(record.config, dict) else {})


def group_key(record: RunRecord) -> GroupKey:
    return (record.base_hash, tuple(record.tricks), variant_tricks_hash(record))


def row_key(row: Mapping[str, Any]) -> GroupKey:
    """The group key of a ``records_table`` row."""
    tricks = str(row["tricks"]) if isinstance(row["tricks"], str) else ""
    return (str(row["base_hash"]), tuple(tricks.split("+")) if tricks else (), str(row["tricks_hash"]))


def runs_table(records: Sequence[RunRecord], paths: Sequence[Path | str | None] | None = None) -> pd.DataFrame:
    """One row per run; metrics in points. ``paths`` are the runs' result.json files (for the run folder)."""
    paths = list(paths) if paths is not None else [None] * len(records)
    rows = []
    for record, path in zip(records, paths):
        row: dict[str, Any] = {
            "variant": record.variant,
            "tricks": "+".join(record.tricks),
            "seed": record.seed,
            "status": record.status,
            "health": ", ".join(health_codes(record)),
            "base_hash": record.base_hash,
            "config_hash": record.config_hash,
            "tricks_hash": variant_tricks_hash(record),
            "sweep": record.sweep,
        }
        for name in TABLE_METRICS:
            row[name] = _metric_points(record, name)
        timings = record.timings if isinstance(record.timings, dict) else {}
        row["train_s"] = _num(timings.get("train_s"))
        row["images_per_s"] = _num(timings.get("images_per_s"))
        row["inference_ms"] = _num(record.inference_ms_per_image)
        row["params_M"] = _num(record.params) / 1e6
        row["flops_G"] = _num(record.flops) / 1e9
        row["peak_memory_mb"] = _num(record.peak_memory_mb)
        row["device"] = record.device
        row["created_at"] = record.created_at
        row["git_commit"] = record.git_commit or ""
        row["code"] = (record.code or {}).get("fingerprint", "") if isinstance(record.code, dict) else ""
        row["code_files"] = code_files(record.code)
        row["error"] = last_line(record.error)
        row["health_messages"] = health_messages(record)
        row["run_dir"] = str(Path(path).parent) if path is not None else ""
        rows.append(row)
    columns = ["variant", "tricks", "seed", "status", "health", "base_hash", "config_hash", "tricks_hash", "sweep",
               *TABLE_METRICS,
               "train_s", "images_per_s", "inference_ms", "params_M", "flops_G", "peak_memory_mb",
               "device", "created_at", "git_commit", "code", "code_files", "error", "health_messages", "run_dir"]
    return pd.DataFrame(rows, columns=columns)


def code_files(code: Any) -> dict[str, str]:
    """What a record's code fingerprint covers, file by file and package by package ({name: hash or
    version}); for a record whose fingerprint lists no files, the whole fingerprint under one name."""
    if not isinstance(code, dict):
        return {}
    files = {**(code.get("files") or {}), **{f"{k} (version)": v for k, v in (code.get("versions") or {}).items()}}
    if not files and code.get("fingerprint"):
        files = {"the code (fingerprint without its files)": code["fingerprint"]}
    return files


def mixed_code(runs: pd.DataFrame) -> dict[str, int]:
    """The files (and package versions) that differ between runs that depend on them: name ->
    number of versions. Runs of different tricks depend on different trick files, so their whole
    fingerprints differ without any code having changed; a file in two versions is a real change."""
    seen: dict[str, set] = {}
    for files in runs.get("code_files", []):
        for name, value in (files or {}).items():
            seen.setdefault(name, set()).add(value)
    return {name: len(values) for name, values in sorted(seen.items()) if len(values) > 1}


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def difference_labels(flat: Mapping[str, Mapping[str, Any]], order: Any = None) -> dict[str, str]:
    """A short readable label per hash of flattened configs: the first two keys (in ``order``, a sort key)
    in which they differ, as key=value; where those do not tell two apart, the hash's first 8 characters too."""
    keys = sorted(set().union(*flat.values()))
    # A builder's _target_ changes with the name beside it and says nothing more.
    differing = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1 and not k.endswith("._target_")]
    differing.sort(key=order)
    labels = {}
    for h, f in flat.items():
        parts = [f"{k.removesuffix('.name')}={f.get(k)}" for k in differing[:2]]
        labels[h] = ", ".join(parts) if parts else h[:8]
    if len(set(labels.values())) < len(labels):  # differences beyond the first two keys
        labels = {h: f"{lab} [{h[:8]}]" if lab != h[:8] else lab for h, lab in labels.items()}
    return labels


def base_labels(configs: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """A short readable label per base_hash: the config keys in which the bases differ (model first)."""
    if len(configs) <= 1:
        return {h: "" for h in configs}
    skip = ("tricks", "seed", "paths", "runtime", "variant", "sweep_name", "hydra")
    flat = {h: {k: v for k, v in _flatten(c).items() if k.split(".")[0] not in skip}
            for h, c in configs.items()}
    # Names first (model.name says more than model.fpn_channels), then model, data, train keys.
    order = {"model": 0, "data": 1, "train": 2, "eval": 3}
    return difference_labels(flat, lambda k: (not k.endswith(".name"), order.get(k.split(".")[0], 9), k))


def sweep_base_names(groups: Mapping[GroupKey, Sequence[RunRecord]]) -> dict[str, str]:
    """Per base_hash, the baseline's name in its sweep file, where the sweep had named baselines: such a
    sweep names its variants ``<baseline>/<tricks>`` (ablate/sweep/design.py), so the part before the '/'
    when every run of the base shares it; '' otherwise."""
    prefixes: dict[str, set[str]] = {}
    for (base, _, _), recs in groups.items():
        for r in recs:
            name = str(r.variant or "")
            prefixes.setdefault(base, set()).add(name.split("/", 1)[0] if "/" in name else "")
    return {base: next(iter(p)) if len(p) == 1 else "" for base, p in prefixes.items()}


def base_names(named: Mapping[str, str], derived: Mapping[str, str]) -> dict[str, str]:
    """Each base's name: the sweep file's (``named``) where there is one, with the override-derived label
    (``derived``, base_labels) beside it where two bases share it (one sweep run twice with other
    overrides); the derived label alone otherwise."""
    counts: dict[str, int] = {}
    for name in named.values():
        counts[name] = counts.get(name, 0) + 1
    names = {}
    for base, label in derived.items():
        name = named.get(base, "")
        names[base] = (f"{name} ({label})" if counts[name] > 1 and label else name) if name else label
    return names


def trick_arguments(config: Any) -> dict[str, Any]:
    """The selected tricks' arguments of a run's config, flattened ("mixup.alpha": 1.5), builders' _target_
    left out."""
    tricks = config.get("tricks") if isinstance(config, dict) else None
    return {k: v for k, v in _flatten(tricks).items() if not k.endswith("._target_") and k != "_target_"}


def trick_labels(configs: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """Per tricks_hash of one base and one list of tricks: '' when it is the only one, else the trick
    arguments in which they differ ("mixup.alpha=1.5")."""
    if len(configs) <= 1:
        return {h: "" for h in configs}
    return difference_labels({h: trick_arguments(c) for h, c in configs.items()})


def variant_names(groups: Mapping[GroupKey, Sequence[RunRecord]]) -> dict[GroupKey, str]:
    """Each variant's name: its runs' variant name, followed by the trick arguments that tell it apart
    ("mixup [mixup.alpha=1.5]") where one base ran the same tricks with several sets of arguments under one
    name; a name no other set of arguments has (`ablate train -m`'s "mixup[tricks.mixup.alpha=1.5]") is kept."""
    configs: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    run_names: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for key, recs in groups.items():
        configs.setdefault(key[:2], {})[key[2]] = recs[0].config
        run_names.setdefault(key[:2], []).append(recs[0].variant)
    labels = {pair: trick_labels(by_hash) for pair, by_hash in configs.items()}
    names = {}
    for key, recs in groups.items():
        name_shared = run_names[key[:2]].count(recs[0].variant) > 1
        args = labels[key[:2]][key[2]] if name_shared else ""
        names[key] = f"{recs[0].variant} [{args}]" if args else recs[0].variant
    return names


def _status_text(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    if counts.get("ok", 0) == total:
        return "ok"
    return ", ".join(f"{s} ({counts[s]}/{total})" for s in STATUSES if counts.get(s))


def records_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per variant, numeric, in report order; metrics and ΔmAP in points.

    Columns: variant (the runs' variant name, with the trick arguments that tell it apart where one base ran the
    same tricks with several: "mixup [mixup.alpha=1.5]"), tricks, tricks_hash ('' for a baseline), trick_args (the
    tricks' arguments as JSON, {"mixup.alpha": 1.5, ...}; '' for a baseline), base (the base's name in its sweep
    file, sweep_base_names, else the config keys in which the bases differ), base_hash, baseline (bool),
    status, health, health_runs, baseline_unhealthy (bool), runs, seeds (ok runs), seed_list,
    mAP, mAP_std, delta_mAP, delta_mAP_std, delta_paired, delta_seeds, delta_ci_low, delta_ci_high,
    delta_ci_half, delta_ci_method, delta_ci_df, delta_sign, AP50, AP50_std, ... ARl, ARl_std (the 12 COCO
    metrics, mean and std over ok runs), train_s, images_per_s, peak_memory_mb, inference_ms, params_M,
    flops_G (means over ok runs), inference_ms_std (its std over ok runs), their changes against the baseline
    (train_s_change_pct, ..., inference_ms_change in ms), kind, first_created_at.

    ``delta_mAP`` is NaN for a baseline and for a variant whose baseline has no ok run. Its 95% CI is the
    t-interval of the per-seed differences on the seeds both ran when one side's seeds contain the other's
    (delta_ci_method "paired", on delta_seeds seeds), Welch's interval of the two groups when neither does
    ("welch"); NaN under two seeds
    (method "paired" with one seed, "unpaired" with one seed on a side). delta_sign is +1 / −1 when the
    CI lies above / below zero, 0 otherwise. ``kind`` is "freebie" (params and FLOPs those of the baseline
    within 0.5%), "special", or "" (baseline, or nothing to compare).

    The decisions (ablate/sweep/adaptive.py, one look at all paired seeds): ``verdict`` helped, hurt, no_effect
    or undecided ('' for a baseline) after Holm's correction over every variant with two or more paired seeds
    and no run-health warning on either side (the others are undecided); ``p_difference`` the paired t-test's p on the base's pooled σ_d
    (``sigma_d``, on ``sigma_d_df`` df; ``sigma_d_pooled`` false for a variant whose own variance was an
    outlier, tested on it) and ``p_difference_adjusted`` Holm's; ``p_equivalence`` and its adjusted value
    for the equivalence within ±``margin``, the larger of TARGET_DELTA and what the base's seeds can resolve.

    ``health`` lists the run-health warning codes of the variant's ok runs with their counts
    ("degenerate_boxes (3/3 seeds)"; '' when healthy), ``health_runs`` counts its ok runs with any warning, and
    ``baseline_unhealthy`` is true for a variant whose baseline has such a run: its ΔmAP is then meaningless.
    """
    groups = _group_records(records)
    # Per-seed mAP of each group's ok runs, for the ΔmAP.
    seed_maps = {key: per_seed((r.seed, _metric_points(r, "mAP")) for r in recs if r.status == "ok")
                 for key, recs in groups.items()}
    bases, base_order = _base_blocks(groups)
    derived = base_labels({b: _base_config(groups, b, bases[b]) for b in base_order})
    labels = base_names(sweep_base_names(groups), derived)
    names = variant_names(groups)

    rows = []
    paired: dict[int, tuple[str, list[float]]] = {}  # row -> (base, paired differences) to decide
    for b in base_order:
        keys = sorted(bases[b], key=lambda k: (k[1] != (), _first_created(groups[k]), names[k]))
        for key in keys:
            row = _variant_row(key, groups[key], names[key], labels[b])
            baseline_key = (b, (), "")
            against = seed_maps[baseline_key] if key[1] and baseline_key in groups else None
            delta = _add_delta_columns(row, seed_maps[key], against)
            if delta.paired and delta.n >= 2:
                paired[len(rows)] = (b, delta.diffs.tolist())
            rows.append(row)
    _use_cpu_time_where_shared(rows)
    _add_baseline_changes(rows)
    _add_decisions(rows, paired)
    table = pd.DataFrame(rows, columns=_table_columns())
    return table.astype({"baseline": bool, "delta_paired": bool, "runs": int, "seeds": int, "delta_seeds": int,
                         "delta_sign": int, "health_runs": int, "baseline_unhealthy": bool, "sigma_d_pooled": bool})


def _group_records(records: Iterable[RunRecord]) -> dict[GroupKey, list[RunRecord]]:
    """The runs of each variant (group_key), in the records' order: a variant's rows average these."""
    groups: dict[GroupKey, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    return groups


def _first_created(recs: Sequence[RunRecord]) -> str:
    """The earliest creation time of some runs ('\\uffff' when none has one, so they sort last): the
    report lists bases and variants in the order they were first run."""
    return min((r.created_at or "\uffff") for r in recs)


def _base_blocks(groups: Mapping[GroupKey, Sequence[RunRecord]]) -> tuple[dict[str, list[GroupKey]], list[str]]:
    """The variants of each base, and the bases ordered by their first run (then by hash), so the
    table shows one block per base in the order the sweep ran them."""
    bases: dict[str, list[GroupKey]] = {}
    for key in groups:
        bases.setdefault(key[0], []).append(key)
    base_order = sorted(bases, key=lambda b: (min(_first_created(groups[k]) for k in bases[b]), b))
    return bases, base_order


def _base_config(groups: Mapping[GroupKey, Sequence[RunRecord]], base: str, keys: Sequence[GroupKey]) -> Any:
    """The config that names a base: its baseline's, else its first variant's (a base may have no
    baseline run), so that base_labels can tell the bases apart."""
    source = groups[(base, (), "")] if (base, (), "") in groups else groups[keys[0]]
    return source[0].config


def _variant_row(key: GroupKey, recs: Sequence[RunRecord], name: str, base_label: str) -> dict[str, Any]:
    """One variant's row without its ΔmAP, baseline changes and verdict (those need other rows): its
    identity, status and health counts, and the means over its ok runs of the metrics and costs."""
    ok = [r for r in recs if r.status == "ok"]
    counts = {s: sum(r.status == s for r in recs) for s in STATUSES}
    row: dict[str, Any] = {
        "variant": name,
        "tricks": "+".join(key[1]),
        "tricks_hash": key[2],
        "trick_args": json.dumps(trick_arguments(recs[0].config)) if key[1] else "",
        "base": base_label,
        "base_hash": key[0],
        "baseline": key[1] == (),
        "status": _status_text(counts),
        "health": health_text(recs),
        "health_runs": sum(bool(health_codes(r)) for r in ok),
        "baseline_unhealthy": False,
        "runs": len(recs),
        "seeds": len(ok),
        "seed_list": " ".join(str(s) for s in sorted({r.seed for r in ok})),
    }
    for metric in COCO_METRICS:
        values = [_metric_points(r, metric) for r in ok]
        row[metric] = _mean(values)
        row[f"{metric}_std"] = _std(values)
    row["train_s"] = _mean(_num((r.timings or {}).get("train_s")) for r in ok)
    row["images_per_s"] = _mean(_num((r.timings or {}).get("images_per_s")) for r in ok)
    row["timing_basis"] = "wall"
    row["train_cpu_s"] = _mean(_num((r.timings or {}).get("train_cpu_s")) for r in ok)
    shares = [_cpu_share(r) for r in ok]
    row["cpu_shares"] = [v for v in shares if not math.isnan(v)]
    row["images_per_cpu_s"] = _mean(_num((r.timings or {}).get("images_per_s")) / v for r, v in zip(ok, shares))
    # A CPU peak that may be an earlier run's (peak_memory_scope not "run") says nothing of this variant.
    unscoped = [r for r in ok if _on_cpu(r) and r.peak_memory_scope != "run"]
    row["peak_memory_mb"] = math.nan if unscoped else _mean(_num(r.peak_memory_mb) for r in ok)
    row["peak_memory_unscoped"] = len(unscoped)
    row["inference_ms"] = _mean(_num(r.inference_ms_per_image) for r in ok)
    row["inference_ms_std"] = _std(_num(r.inference_ms_per_image) for r in ok)  # latency is noisy: its spread
    row["params_M"] = _mean(_num(r.params) / 1e6 for r in ok)
    row["flops_G"] = _mean(_num(r.flops) / 1e9 for r in ok)
    row["first_created_at"] = _first_created(recs).replace("\uffff", "")
    return row


def _add_delta_columns(row: dict[str, Any], seeds: Mapping[int, float],
                       baseline: Mapping[int, float] | None) -> Delta:
    """Fill the row's ΔmAP and its 95% CI against the baseline's per-seed mAP (NaN when there is no
    baseline to compare with: a baseline row, or a base without one); the Delta is returned so the
    caller can collect the paired differences to decide."""
    delta, interval = Delta(), Interval()
    if baseline is not None:
        delta = delta_against(seeds, baseline)
        interval = compare(seeds, baseline)
    row["delta_mAP"] = delta.mean
    row["delta_mAP_std"] = delta.std
    row["delta_paired"] = delta.paired
    row["delta_seeds"] = delta.n
    row["delta_ci_low"] = interval.low
    row["delta_ci_high"] = interval.high
    row["delta_ci_half"] = interval.half
    row["delta_ci_method"] = interval.method
    row["delta_ci_df"] = interval.df
    row["delta_sign"] = interval.sign
    return delta


def _on_cpu(record: RunRecord) -> bool:
    return str(record.device or "").startswith("cpu")


def _cpu_share(record: RunRecord) -> float:
    """CPU seconds of a CPU run's training per wall second (NaN for an accelerator's run, where the CPU
    waits on the device, and for records without train_cpu_s)."""
    timings = record.timings if isinstance(record.timings, dict) else {}
    wall, cpu = _num(timings.get("train_s")), _num(timings.get("train_cpu_s"))
    if not _on_cpu(record) or not wall > 0 or not cpu > 0:
        return math.nan
    return cpu / wall


def _use_cpu_time_where_shared(rows: Sequence[dict[str, Any]]) -> None:
    """Train time and Images/s from CPU seconds for the bases whose runs shared the CPU (their CPU share
    varies by more than SHARED_CPU_RATIO): a trick must not look 2x slower because another job ran beside it.
    Each row keeps its base's share range (cpu_share_min, cpu_share_max) and says its timing_basis."""
    by_base: dict[str, list[float]] = {}
    for row in rows:
        by_base.setdefault(row["base_hash"], []).extend(row.pop("cpu_shares"))
    for row in rows:
        shares = by_base[row["base_hash"]]
        row["cpu_share_min"], row["cpu_share_max"] = (min(shares), max(shares)) if shares else (math.nan, math.nan)
        if shares and max(shares) > SHARED_CPU_RATIO * min(shares):
            row["timing_basis"] = "cpu"
            row["train_s"], row["images_per_s"] = row["train_cpu_s"], row["images_per_cpu_s"]


def _add_baseline_changes(rows: Sequence[dict[str, Any]]) -> None:
    """Costs against the baseline of the same base (NaN for baselines and where either side is missing),
    the freebie/special kind, and whether that baseline is unhealthy: all need the baseline's row."""
    baseline_rows = {row["base_hash"]: row for row in rows if row["baseline"]}
    for row in rows:
        base_row = None if row["baseline"] else baseline_rows.get(row["base_hash"])
        row["baseline_unhealthy"] = base_row is not None and base_row["health_runs"] > 0
        for column, (change, how) in CHANGE_COLUMNS.items():
            if base_row is None:
                row[change] = math.nan
            elif how == "pct":
                row[change] = 100.0 * relative_change(row[column], base_row[column])
            else:
                row[change] = row[column] - base_row[column]
        row["kind"] = "" if base_row is None or not row["seeds"] else \
            trick_kind(row["params_M"], row["flops_G"], base_row["params_M"], base_row["flops_G"])


def _add_decisions(rows: Sequence[dict[str, Any]], paired: Mapping[int, tuple[str, list[float]]]) -> None:
    """The verdict columns: one look at every healthy variant's paired differences, Holm-corrected
    together; the others stay undecided ('' for a baseline) with NaN p-values."""
    # A variant with a run-health warning, or whose baseline has one, measures the collapse, not the trick
    # nor the seed noise: it is neither decided nor pooled.
    paired = {i: v for i, v in paired.items() if not (rows[i]["health"] or rows[i]["baseline_unhealthy"])}
    decisions = fixed_decisions(paired, TARGET_DELTA, ALPHA, POWER)
    for row in rows:
        row.update({c: math.nan for c in VERDICT_COLUMNS})
        row["verdict"] = "" if row["baseline"] else UNDECIDED
        row["sigma_d_pooled"] = False
    for i, d in zip(paired, decisions):
        rows[i].update(verdict=d.verdict, p_difference=d.p_difference, p_difference_adjusted=d.p_difference_adjusted,
                       p_equivalence=d.p_equivalence, p_equivalence_adjusted=d.p_equivalence_adjusted,
                       margin=d.margin, sigma_d=d.std, sigma_d_df=d.df, sigma_d_pooled=d.pooled)


def _table_columns() -> list[str]:
    """records_table's columns, in table.csv's order."""
    columns = ["variant", "tricks", "tricks_hash", "trick_args", "base", "base_hash", "baseline", "status", "health",
               "health_runs", "baseline_unhealthy", "runs", "seeds", "seed_list", "mAP",
               "mAP_std", "delta_mAP", "delta_mAP_std", "delta_paired", "delta_seeds", "delta_ci_low",
               "delta_ci_high", "delta_ci_half", "delta_ci_method", "delta_ci_df", "delta_sign", *VERDICT_COLUMNS]
    for name in COCO_METRICS[1:]:
        columns += [name, f"{name}_std"]
    columns += [*TIMING_COLUMNS, "inference_ms_std", *(c for c, _ in CHANGE_COLUMNS.values()), "timing_basis",
                "train_cpu_s", "peak_memory_unscoped", "images_per_cpu_s", "cpu_share_min", "cpu_share_max", "kind",
                "first_created_at"]
    return columns


def seed_values(runs: pd.DataFrame, variant: Mapping[str, Any], metric: str = "mAP") -> dict[int, float]:
    """seed -> metric (points) of the ok runs of one variant (a ``records_table`` row, or any mapping with its
    base_hash, tricks and tricks_hash), from ``runs_table`` (repeats of a seed averaged)."""
    mask = ((runs["base_hash"] == variant["base_hash"]) & (runs["tricks"].fillna("") == variant["tricks"])
            & (runs["tricks_hash"].fillna("") == variant["tricks_hash"]) & (runs["status"] == "ok"))
    sel = runs[mask]
    return per_seed((int(s), float(v)) for s, v in zip(sel["seed"], sel[metric]))


def short_name(row: Mapping[str, Any]) -> str:
    """A variant's name within its base: the sweep's ``<baseline>/`` prefix left off (``fcos/mixup`` is
    ``mixup`` under the base fcos)."""
    variant, base = str(row["variant"]), str(row["base"])
    return variant.removeprefix(f"{base}/") if base else variant


def variant_label(row: Mapping[str, Any], several_bases: bool) -> str:
    """A variant's name for plots and text: with the base's label when the table holds several bases and
    the name does not start with it already (``fcos/mixup`` under the base fcos)."""
    variant, base = str(row["variant"]), str(row["base"])
    if not several_bases or not base or variant.startswith(f"{base}/"):
        return variant
    return f"{variant} ({base})"


def per_class_deltas(records: Sequence[RunRecord], table: pd.DataFrame) -> pd.DataFrame:
    """Per-class AP change (points) of each non-baseline variant against its baseline: one row per variant
    (plot label, table order), one column per class (sorted). Paired by seed where the seeds match, else a
    difference of means; NaN where a class's AP is missing on either side. Empty when no record has per-class AP.
    """
    # group key -> class -> [(seed, AP points)]
    per_group: dict[GroupKey, dict[str, list[tuple[int, float]]]] = {}
    for r in records:
        if r.status != "ok" or not isinstance(r.per_class_ap, dict) or not r.per_class_ap:
            continue
        classes_of = per_group.setdefault(group_key(r), {})
        for cls, value in r.per_class_ap.items():
            x = _num(value)
            classes_of.setdefault(str(cls), []).append((r.seed, x * 100.0 if x >= 0 else math.nan))
    classes = sorted({c for g in per_group.values() for c in g})
    several = table["base_hash"].nunique() > 1
    rows, index = [], []
    for rec in table.to_dict("records"):
        key, base_key = row_key(rec), (rec["base_hash"], (), "")
        if rec["baseline"] or key not in per_group or base_key not in per_group:
            continue
        row = {}
        for cls in classes:
            v = per_seed(per_group[key].get(cls, []))
            b = per_seed(per_group[base_key].get(cls, []))
            row[cls] = compare(v, b).mean if v and b else math.nan
        rows.append(row)
        index.append(variant_label(rec, several))
    return pd.DataFrame(rows, index=index, columns=classes, dtype=float)


def epoch_curves(records: Sequence[RunRecord], table: pd.DataFrame) -> dict[str, dict[str, pd.DataFrame]]:
    """Training curves per base (its name, table order) and per variant (its short name, table order), the mean
    over its ok runs: a frame indexed by epoch with columns loss (the epoch's mean training loss) and val_mAP
    (points, NaN where not evaluated: a run evaluates every train.eval_every epochs and after the last).
    """
    per_group: dict[GroupKey, list[pd.DataFrame]] = {}
    for r in records:
        frame = record_curve(r) if r.status == "ok" else None
        if frame is not None:
            per_group.setdefault(group_key(r), []).append(frame)
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    for rec in table.to_dict("records"):
        key = row_key(rec)
        if key in per_group:
            mean = pd.concat(per_group[key]).groupby(level=0).mean()  # over the seeds that have the epoch
            mean.index.name = "epoch"
            curves.setdefault(str(rec["base"]), {})[short_name(rec)] = mean
    return curves


def record_curve(record: RunRecord) -> pd.DataFrame | None:
    """One run's curve by epoch: loss (the epoch entry's ``epoch_loss``; for a run without epoch entries, the
    mean of its logged step losses per epoch) and val_mAP in points; None when it has neither."""
    if not isinstance(record.curve, list):
        return None
    loss: dict[int, float] = {}
    val: dict[int, float] = {}
    steps: dict[int, list[float]] = {}
    for point in record.curve:
        epoch = _num(point.get("epoch")) if isinstance(point, dict) else math.nan
        if math.isnan(epoch):
            continue
        epoch = int(epoch)
        if "epoch_loss" in point:
            loss[epoch] = _num(point.get("epoch_loss"))
            if "val_mAP" in point:
                v = _num(point.get("val_mAP"))
                val[epoch] = v * 100.0 if v >= 0 else math.nan
        elif "loss" in point:
            steps.setdefault(epoch, []).append(_num(point.get("loss")))
    if not loss:
        loss = {e: _mean(v) for e, v in steps.items()}
    if not loss and not val:
        return None
    epochs = sorted(set(loss) | set(val))
    return pd.DataFrame({"loss": [loss.get(e, math.nan) for e in epochs],
                         "val_mAP": [val.get(e, math.nan) for e in epochs]}, index=epochs, dtype=float)


def has_baseline(table: pd.DataFrame, base_hash: str) -> bool:
    return bool(((table["base_hash"] == base_hash) & table["baseline"]).any())


# ----------------------------------------------------------------------------------------------
# display strings


def fmt_points(value: float, std: float = math.nan) -> str:
    """52.3, or 52.3 ± 0.4 with a std; n/a when missing."""
    if value is None or math.isnan(value):
        return NA
    text = f"{value:.1f}"
    if std is not None and not math.isnan(std):
        text += f" \u00b1 {std:.1f}"
    return text


def fmt_delta(value: float, std: float = math.nan) -> str:
    """+1.2 / −0.4 (a real minus sign), with ± std when given; n/a when missing."""
    if value is None or math.isnan(value):
        return NA
    rounded = round(value, 1)
    sign = MINUS if rounded < 0 else "+"
    text = f"{sign}{abs(rounded):.1f}"
    if std is not None and not math.isnan(std):
        text += f" \u00b1 {std:.1f}"
    return text


def fmt_number(value: float, digits: int | None = None) -> str:
    """A plain number; with digits=None: 3 significant figures-ish (0.123, 1.23, 12.3, 1234)."""
    if value is None or math.isnan(value):
        return NA
    if digits is None:
        a = abs(value)
        digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 0.1 else 3
    return f"{value:,.{digits}f}"


def fmt_ci(mean: float, half: float, method: str = "paired", n: int = 0, mark: bool = True) -> str:
    """A change with its 95% CI: "+2.0 ± 1.1", bold when the CI excludes zero; "(Welch)" when the seeds
    were not paired; "+2.6 (1 seed, no CI)" when no interval can be given; n/a when there is no change."""
    if mean is None or math.isnan(mean):
        return NA
    if half is None or math.isnan(half):
        return f"{fmt_delta(mean)} (1 seed, no CI)" if n <= 1 else f"{fmt_delta(mean)} (no CI)"
    text = f"{fmt_delta(mean)} \u00b1 {abs(half):.1f}"
    if mark and (mean - half > 0 or mean + half < 0):
        text = f"**{text}**"
    return text + (" (Welch)" if method == "welch" else "")


def fmt_verdict(verdict: str, margin: float = math.nan) -> str:
    """helped, hurt, undecided; "no effect (|Δ| < 1.2)" with the margin it was shown within."""
    if verdict == "no_effect":
        return f"no effect (|Δ| < {margin:.1f})" if not math.isnan(margin) else "no effect"
    return verdict


def fmt_p(p: float, adjusted: float) -> str:
    """A raw p-value and its Holm-adjusted one: "0.047 (0.24)"; n/a without a test."""
    if p is None or math.isnan(p):
        return NA
    return f"{p:.2g} ({adjusted:.2g})"


def fmt_interval(interval: Interval, mark: bool = True) -> str:
    return fmt_ci(interval.mean, interval.half, interval.method, interval.n, mark)


def fmt_bounds(low: float, high: float) -> str:
    """[+0.5, +3.5]: a CI's ends."""
    return f"[{fmt_delta(low)}, {fmt_delta(high)}]"


def fmt_change(value: float, how: str) -> str:
    """A cost change: "+3%", "−0.8%", "0%" (how="pct"), or "+0.2 ms" (how="abs"); n/a when missing."""
    if value is None or math.isnan(value):
        return NA
    if how == "abs":
        a = abs(value)
        digits = 1 if a >= 1 else 2 if a >= 0.01 else 3
        rounded = round(value, digits)
        if rounded == 0:
            return "0 ms"
        return f"{'+' if rounded > 0 else MINUS}{abs(rounded):.{digits}f} ms"
    digits = 0 if round(abs(value), 1) >= 10 else 1
    rounded = round(value, digits)
    if rounded == 0:
        return "0%"
    return f"{'+' if rounded > 0 else MINUS}{abs(rounded):.{digits}f}%"


def fmt_cost(value: float, unit: str, digits: int | None = None) -> str:
    """An absolute cost with its unit (the baseline row): "241 s", "1.54 M"; n/a when missing."""
    text = fmt_number(value, digits)
    return text if text == NA or not unit else f"{text} {unit}"


def fmt_three(values: Sequence[float]) -> str:
    """APs/APm/APl in one cell: "42.8 / 69.1 / 63.4"."""
    return " / ".join(fmt_points(v) for v in values)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The report's table: strings, one row per variant, in the order of ``table``.

    A ``Base`` column comes first when the table holds several bases; a ``Status`` column comes
    last when any run of any variant did not finish; a ``Health`` column follows the variant when any ok run
    has a run-health warning (and the ΔmAP of a flagged variant, or of one whose baseline is flagged, starts
    with ⚠). ΔmAP is bold where the verdict (after Holm) is helped or hurt; the p column holds the raw
    p-value of the difference and Holm's. Costs are absolute for a baseline (and for a variant without one), changes against the baseline
    otherwise.
    """
    several_bases = table["base_hash"].nunique() > 1
    show_status = bool((table["status"] != "ok").any())
    show_health = bool((table["health"] != "").any())
    rows = []
    for rec in table.to_dict("records"):
        row: dict[str, str] = {}
        if several_bases:
            row["Base"] = rec["base"]
        row["Variant"] = rec["variant"]
        if show_health:
            row[HEALTH_HEADER] = health_cell(rec)
        row["Kind"] = DASH if rec["baseline"] else (rec["kind"] or NA)
        row["Seeds"] = str(rec["seeds"])
        if rec["baseline"]:
            row[DELTA_HEADER] = DASH
        else:
            # Without a CI one side has a single seed (paired: one pair; unpaired: one seed on a side).
            n = int(rec["delta_seeds"]) if rec["delta_paired"] else 1
            # bold where the corrected verdict is helped or hurt, not where the per-variant 95% CI excludes zero
            row[DELTA_HEADER] = fmt_ci(rec["delta_mAP"], rec["delta_ci_half"], rec["delta_ci_method"], n, mark=False)
            if rec["verdict"] in ("helped", "hurt"):
                row[DELTA_HEADER] = f"**{row[DELTA_HEADER]}**"
            if (rec["health"] or rec["baseline_unhealthy"]) and row[DELTA_HEADER] != NA:
                row[DELTA_HEADER] = f"{WARN} {row[DELTA_HEADER]}"
        row[VERDICT_HEADER] = DASH if rec["baseline"] else fmt_verdict(rec["verdict"], rec["margin"])
        row[P_HEADER] = DASH if rec["baseline"] else fmt_p(rec["p_difference"], rec["p_difference_adjusted"])
        row["mAP"] = fmt_points(rec["mAP"], rec["mAP_std"])
        row["AP50"] = fmt_points(rec["AP50"])
        row["AP75"] = fmt_points(rec["AP75"])
        row["APs/APm/APl"] = fmt_three([rec["APs"], rec["APm"], rec["APl"]])
        relative = not rec["baseline"] and has_baseline(table, rec["base_hash"])
        for title, (column, unit, digits) in _COST_COLUMNS.items():
            if relative:
                change, how = CHANGE_COLUMNS[column]
                row[title] = fmt_change(rec[change], how) if rec["seeds"] else NA
            else:
                row[title] = fmt_cost(rec[column], unit, digits)
                if column in ("train_s", "images_per_s") and rec.get("timing_basis") == "cpu":
                    row[title] += " (CPU)"  # the base's runs shared the CPU: see the notes
        if show_status:
            row["Status"] = rec["status"]
        rows.append(row)
    columns = (["Base"] if several_bases else []) + ["Variant", *([HEALTH_HEADER] if show_health else []), "Kind",
                                                      "Seeds", DELTA_HEADER, VERDICT_HEADER, P_HEADER, "mAP", "AP50",
                                                      "AP75", "APs/APm/APl",
                                                      *COST_HEADERS]
    if show_status:
        columns.append("Status")
    return pd.DataFrame(rows, columns=columns, dtype=object)


def metrics_table(table: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS) -> pd.DataFrame:
    """Mean ± std over seeds of each metric, one row per variant with an ok run (variant names as code)."""
    several_bases = table["base_hash"].nunique() > 1
    rows = []
    for rec in table.to_dict("records"):
        if not rec["seeds"]:
            continue
        row = {"Base": rec["base"]} if several_bases else {}
        row["Variant"] = f"`{rec['variant']}`"
        row["Seeds"] = str(rec["seeds"])
        for name in metrics:
            row[name] = fmt_points(rec[name], rec[f"{name}_std"])
        rows.append(row)
    columns = (["Base"] if several_bases else []) + ["Variant", "Seeds", *metrics]
    return pd.DataFrame(rows, columns=columns, dtype=object)
