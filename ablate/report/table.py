"""Run records -> pandas tables: one row per run, one row per variant, and the display strings.

No torch here (see ``ablate.report``). Metrics are fractions in the records (0.523); every table
here holds them in points (52.3), the unit of published bag-of-tricks tables.

A *variant* is the set of runs with the same ``base_hash`` and the same tricks; its *baseline* is
the variant with the same ``base_hash`` and no tricks. Only runs with status ``ok`` contribute
numbers; failed and diverged runs are counted in the ``status`` column and listed in the report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ablate.results import STATUSES, RunRecord

# COCO metrics shown in the table, in the table's order.
TABLE_METRICS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")

NA = "n/a"
DASH = "\u2014"  # em dash: the baseline's own ΔmAP
MINUS = "\u2212"  # minus sign, as in printed tables

# Numeric per-variant columns of `records_table` (besides the metric means and stds).
TIMING_COLUMNS = ("train_s", "images_per_s", "inference_ms", "params_M", "flops_G")

# Display column -> (numeric column, digits).
_NUMBER_COLUMNS = {
    "Train time (s)": ("train_s", None),
    "Images/s": ("images_per_s", 1),
    "Inference (ms/img)": ("inference_ms", None),
    "Params (M)": ("params_M", None),
    "FLOPs (G)": ("flops_G", None),
}

GroupKey = tuple[str, tuple[str, ...]]


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


def paired_differences(variant: Mapping[int, float], baseline: Mapping[int, float]) -> np.ndarray | None:
    """Per-seed differences variant − baseline, in seed order, when both ran the same seeds; else None.

    Pairing by seed removes the part of the seed noise the two runs share (same data order, same
    initialisation of the shared layers), so the spread of these differences, not the spread of
    either mAP, is what says whether a trick helps.
    """
    if not variant or set(variant) != set(baseline):
        return None
    seeds = sorted(variant)
    return np.asarray([variant[s] - baseline[s] for s in seeds], dtype=float)


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


def group_key(record: RunRecord) -> GroupKey:
    return (record.base_hash, tuple(record.tricks))


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
            "base_hash": record.base_hash,
            "config_hash": record.config_hash,
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
        row["error"] = last_line(record.error)
        row["run_dir"] = str(Path(path).parent) if path is not None else ""
        rows.append(row)
    columns = ["variant", "tricks", "seed", "status", "base_hash", "config_hash", "sweep", *TABLE_METRICS,
               "train_s", "images_per_s", "inference_ms", "params_M", "flops_G", "peak_memory_mb",
               "device", "created_at", "git_commit", "error", "run_dir"]
    return pd.DataFrame(rows, columns=columns)


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


def base_labels(configs: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """A short readable label per base_hash: the config keys in which the bases differ (model first)."""
    if len(configs) <= 1:
        return {h: "" for h in configs}
    skip = ("tricks", "seed", "paths", "runtime", "variant", "sweep_name", "hydra")
    flat = {h: {k: v for k, v in _flatten(c).items() if k.split(".")[0] not in skip}
            for h, c in configs.items()}
    keys = sorted(set().union(*flat.values()))
    # A builder's _target_ changes with the name beside it and says nothing more.
    differing = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1 and not k.endswith("._target_")]
    # Names first (model.name says more than model.fpn_channels), then model, data, train keys.
    order = {"model": 0, "data": 1, "train": 2, "eval": 3}
    differing.sort(key=lambda k: (not k.endswith(".name"), order.get(k.split(".")[0], 9), k))
    labels = {}
    for h, f in flat.items():
        parts = [f"{k.removesuffix('.name')}={f.get(k)}" for k in differing[:2]]
        labels[h] = ", ".join(parts) if parts else h[:8]
    if len(set(labels.values())) < len(labels):  # differences beyond the first two keys
        labels = {h: f"{lab} [{h[:8]}]" if lab != h[:8] else lab for h, lab in labels.items()}
    return labels


def _status_text(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    if counts.get("ok", 0) == total:
        return "ok"
    return ", ".join(f"{s} ({counts[s]}/{total})" for s in STATUSES if counts.get(s))


def records_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per variant, numeric, in report order; metrics and ΔmAP in points.

    Columns: variant, tricks, base, base_hash, baseline (bool), status, runs, seeds (ok runs),
    seed_list, mAP, mAP_std, delta_mAP, delta_mAP_std, delta_paired, delta_seeds, AP50, AP50_std,
    ... APl, APl_std, train_s, images_per_s, inference_ms, params_M, flops_G (means over ok runs).
    ``delta_mAP`` is NaN for a baseline and for a variant whose baseline has no ok run.
    """
    records = list(records)
    groups: dict[GroupKey, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)

    def first_created(recs: list[RunRecord]) -> str:
        return min((r.created_at or "\uffff") for r in recs)

    # Per-seed mAP of each group's ok runs, for the ΔmAP.
    seed_maps = {key: per_seed((r.seed, _metric_points(r, "mAP")) for r in recs if r.status == "ok")
                 for key, recs in groups.items()}

    # Blocks per base, ordered by their first run; inside, the baseline then the variants by first run.
    bases: dict[str, list[GroupKey]] = {}
    for key in groups:
        bases.setdefault(key[0], []).append(key)
    base_order = sorted(bases, key=lambda b: (min(first_created(groups[k]) for k in bases[b]), b))
    base_configs = {}
    for b in base_order:
        keys = bases[b]
        source = groups[(b, ())] if (b, ()) in groups else groups[keys[0]]
        base_configs[b] = source[0].config
    labels = base_labels(base_configs)

    rows = []
    for b in base_order:
        keys = sorted(bases[b], key=lambda k: (k[1] != (), first_created(groups[k]), groups[k][0].variant))
        for key in keys:
            recs = groups[key]
            ok = [r for r in recs if r.status == "ok"]
            counts = {s: sum(r.status == s for r in recs) for s in STATUSES}
            is_baseline = key[1] == ()
            row: dict[str, Any] = {
                "variant": recs[0].variant,
                "tricks": "+".join(key[1]),
                "base": labels[b],
                "base_hash": b,
                "baseline": is_baseline,
                "status": _status_text(counts),
                "runs": len(recs),
                "seeds": len(ok),
                "seed_list": " ".join(str(s) for s in sorted({r.seed for r in ok})),
            }
            for name in TABLE_METRICS:
                values = [_metric_points(r, name) for r in ok]
                row[name] = _mean(values)
                row[f"{name}_std"] = _std(values)
                if name == "mAP":
                    delta = Delta()
                    if not is_baseline and (b, ()) in groups:
                        delta = delta_against(seed_maps[key], seed_maps[(b, ())])
                    row["delta_mAP"] = delta.mean
                    row["delta_mAP_std"] = delta.std
                    row["delta_paired"] = delta.paired
                    row["delta_seeds"] = delta.n
            row["train_s"] = _mean(_num((r.timings or {}).get("train_s")) for r in ok)
            row["images_per_s"] = _mean(_num((r.timings or {}).get("images_per_s")) for r in ok)
            row["inference_ms"] = _mean(_num(r.inference_ms_per_image) for r in ok)
            row["params_M"] = _mean(_num(r.params) / 1e6 for r in ok)
            row["flops_G"] = _mean(_num(r.flops) / 1e9 for r in ok)
            row["first_created_at"] = first_created(recs).replace("\uffff", "")
            rows.append(row)

    columns = ["variant", "tricks", "base", "base_hash", "baseline", "status", "runs", "seeds", "seed_list", "mAP",
               "mAP_std", "delta_mAP", "delta_mAP_std", "delta_paired", "delta_seeds"]
    for name in TABLE_METRICS[1:]:
        columns += [name, f"{name}_std"]
    columns += [*TIMING_COLUMNS, "first_created_at"]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"baseline": bool, "delta_paired": bool, "runs": int, "seeds": int, "delta_seeds": int})


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


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The report's table: strings, one row per variant, in the order of ``table``.

    A ``Base`` column comes first when the table holds several bases; a ``Status`` column comes
    last when any run of any variant did not finish.
    """
    several_bases = table["base_hash"].nunique() > 1
    show_status = bool((table["status"] != "ok").any())
    rows = []
    for rec in table.to_dict("records"):
        row: dict[str, str] = {}
        if several_bases:
            row["Base"] = rec["base"]
        row["Variant"] = rec["variant"]
        row["Tricks"] = rec["tricks"].replace("+", ", ") if rec["tricks"] else "(none)"
        row["Seeds"] = str(rec["seeds"])
        row["mAP"] = fmt_points(rec["mAP"], rec["mAP_std"])
        if rec["baseline"]:
            row["ΔmAP"] = DASH
        else:
            row["ΔmAP"] = fmt_delta(rec["delta_mAP"], rec["delta_mAP_std"])
        for name in TABLE_METRICS[1:]:
            row[name] = fmt_points(rec[name])
        for title, (column, digits) in _NUMBER_COLUMNS.items():
            row[title] = fmt_number(rec[column], digits)
        if show_status:
            row["Status"] = rec["status"]
        rows.append(row)
    columns = (["Base"] if several_bases else []) + ["Variant", "Tricks", "Seeds", "mAP", "ΔmAP",
                                                      *TABLE_METRICS[1:], *_NUMBER_COLUMNS]
    if show_status:
        columns.append("Status")
    return pd.DataFrame(rows, columns=columns, dtype=object)
