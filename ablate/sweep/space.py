"""The space of a `design: search` sweep file (ablate/sweep/search.py runs it): its keys checked
and read into a `SearchSpec`, without Optuna. sweep/design.py reads a sweep file's search section
through `parse_search`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SweepFileError

DIRECTIONS = ("maximize", "minimize")
TYPES = ("float", "int", "categorical")
# Each sampler's and pruner's arguments a sweep file may set (Optuna's names), with their types.
SAMPLER_ARGS = {"tpe": {"seed": int, "n_startup_trials": int, "multivariate": bool, "constant_liar": bool},
                "random": {"seed": int}}
_PERCENTILE_ARGS = {"n_startup_trials": int, "n_warmup_steps": int, "interval_steps": int, "n_min_trials": int}
PRUNER_ARGS = {"median": _PERCENTILE_ARGS,
               "percentile": {"percentile": float, **_PERCENTILE_ARGS},
               "threshold": {"lower": float, "upper": float, "n_warmup_steps": int, "interval_steps": int},
               "none": {}}
# Keys the design itself sets for every job.
RESERVED_KEYS = ("tricks", "seed", "variant")


@dataclass(frozen=True)
class SearchSpec:
    # Config key -> its distribution as the sweep file gives it, checked ({"type": "float", "low": ...}).
    space: dict[str, dict[str, Any]]
    n_trials: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    direction: str
    # Trials launched together (1: one after the other).
    n_jobs: int = 1


# ---------------------------------------------------------------- the sweep file (no Optuna needed)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_entry(key: str, entry: Any, path: Path) -> dict[str, Any]:
    """One space entry, checked; errors name `space.<key>`."""
    where = f"{path}: space.{key}"

    def fail(why: str) -> SweepFileError:
        return SweepFileError(f"{where}: {why}")

    if not isinstance(entry, dict) or entry.get("type") not in TYPES:
        raise fail(f"give a mapping with type one of {TYPES}, e.g. {{type: float, low: 0.5, high: 2.0}}, "
                   f"got {entry!r}")
    kind = entry["type"]
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise fail(f"unknown keys {unknown} for type {kind} (known: {sorted(allowed)})")
    if kind == "categorical":
        choices = entry.get("choices")
        if (not isinstance(choices, list) or not choices
                or not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices)):
            raise fail(f"choices must be a non-empty list of numbers, strings, booleans or null, got {choices!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise fail(f"choices lists a value twice: {choices}")
        return {"type": kind, "choices": list(choices)}
    low, high = entry.get("low"), entry.get("high")
    number = int if kind == "int" else float
    for name, value in (("low", low), ("high", high)):
        if not _number(value) or (kind == "int" and not isinstance(value, int)):
            raise fail(f"{name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if not low < high:
        raise fail(f"low ({low}) must be below high ({high})")
    log_scale = entry.get("log", False)
    if not isinstance(log_scale, bool):
        raise fail(f"log must be true or false, got {log_scale!r}")
    step = entry.get("step")
    if step is not None and (not _number(step) or step <= 0 or (kind == "int" and not isinstance(step, int))):
        raise fail(f"step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
    if log_scale and step is not None and not (kind == "int" and step == 1):
        raise fail("log and step cannot be combined (Optuna samples a log scale continuously)")
    if log_scale and low <= 0:
        raise fail(f"log: true needs low > 0, got {low}")
    out = {"type": kind, "low": number(low), "high": number(high), "log": log_scale}
    if step is not None:
        out["step"] = number(step)
    return out


def parse_named(value: Any, key: str, table: dict[str, dict[str, type]], default: str,
                path: Path) -> dict[str, Any]:
    """A sampler or pruner: a name, or a mapping {name, ...its arguments}; errors name the key."""
    if value is None:
        value = default
    spec = {"name": value} if isinstance(value, str) else value
    if not isinstance(spec, dict) or spec.get("name") not in table:
        raise SweepFileError(f"{path}: {key} must be one of {', '.join(table)} or a mapping "
                             f"{{name: ..., <its arguments>}}, got {value!r}")
    name, args = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    types = table[name]
    unknown = sorted(set(args) - set(types))
    if unknown:
        raise SweepFileError(f"{path}: {key}.{unknown[0]}: not an argument of {key} {name} "
                             f"(known: {', '.join(types) or 'none'})")
    for arg, value in args.items():
        ok = isinstance(value, bool) if types[arg] is bool else (
            _number(value) and (types[arg] is float or isinstance(value, int)) and value >= 0)
        if not ok:
            want = "true or false" if types[arg] is bool else f"a non-negative {types[arg].__name__}"
            raise SweepFileError(f"{path}: {key}.{arg}: must be {want}, got {value!r}")
    if name == "threshold" and "lower" not in args and "upper" not in args:
        raise SweepFileError(f"{path}: {key}: threshold needs lower or upper (the val mAP it prunes below or above)")
    if name == "percentile" and not (0 <= args.get("percentile", -1) <= 100):
        raise SweepFileError(f"{path}: {key}.percentile: give the percentile (0-100) a trial must beat")
    return {"name": name, **args}


def parse_search(raw: dict[str, Any], path: Path) -> SearchSpec:
    """The search keys of a sweep file, checked (load_sweep has checked the others)."""
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise SweepFileError(f"{path}: space: design: search needs a space, e.g. "
                             "space: {tricks.mixup.alpha: {type: float, low: 0.5, high: 2.0}}")
    entries = {}
    for key, entry in space.items():
        if not isinstance(key, str) or not key or any(c in key for c in "=,[]{} ") or key.startswith("hydra."):
            raise SweepFileError(f"{path}: space.{key}: not a config key (a dotted key such as tricks.mixup.alpha)")
        if key in RESERVED_KEYS:
            raise SweepFileError(f"{path}: space.{key}: the design sets {key}; search the tricks' arguments instead")
        entries[key] = parse_entry(key, entry, path)
    n_trials = raw.get("n_trials")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise SweepFileError(f"{path}: n_trials: the number of trials, an integer >= 1, got {n_trials!r}")
    sampler = parse_named(raw.get("sampler"), "sampler", SAMPLER_ARGS, "tpe", path)
    sampler.setdefault("seed", 0)  # reproducible by default (see sampler_for on resuming)
    pruner = parse_named(raw.get("pruner"), "pruner", PRUNER_ARGS, "median", path)
    direction = raw.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise SweepFileError(f"{path}: direction: one of {DIRECTIONS} (of the val mAP), got {direction!r}")
    n_jobs = raw.get("n_jobs", 1)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise SweepFileError(f"{path}: n_jobs: the trials launched together, an integer >= 1, got {n_jobs!r}")
    return SearchSpec(space=entries, n_trials=n_trials, sampler=sampler, pruner=pruner, direction=direction,
                      n_jobs=n_jobs)
