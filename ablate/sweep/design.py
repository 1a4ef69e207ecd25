"""Ablation designs: a sweep file says which tricks to ablate, how, and over which seeds; a
design expands it into jobs (a variant at a seed, as Hydra overrides).

A sweep file (sweeps/<name>.yaml, or any path):

    design: one_at_a_time          # one_at_a_time | cumulative | leave_one_out | factorial
    tricks: [warmup, mixup]        # names of conf/tricks/<name>.yaml
    seeds: 3                       # a count (seeds 0..n-1) or a list of seeds, or adaptive:
    seeds: {min: 2, max: 8, margin: 0.3}   # min seeds each, then one more seed at a time only for
                                   # the variants still undecided (ablate/sweep/adaptive.py)
    baseline: [model=fcos]         # optional overrides of every job
    baselines:                     # or several named baselines, each ablated in turn:
      fcos: [model=fcos]           #   variants are named <baseline>/<tricks>
      faster_rcnn:                 # a baseline may ablate only some of the tricks:
        overrides: [model=faster_rcnn]
        tricks: [iou_balanced]

A trick that does not fit a baseline's detector is recorded as not_applicable (n/a in the report).

`design: search` tunes parameters instead of ablating tricks: `tricks` are switched on in every
trial, and `space`, `n_trials`, `sampler`, `pruner`, `direction` and `n_jobs` say what Optuna searches
(ablate/sweep/search.py has the format and its defaults).

No torch here: the sweeper runs in the launching process.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import sweeps_dir
from ..errors import SweepFileError, yaml_problem
from .adaptive import Plan, PlanError
from .space import SearchSpec, parse_search

SEARCH = "search"
DESIGNS = ("one_at_a_time", "cumulative", "leave_one_out", "factorial", SEARCH)
# The keys only a search reads (ablate/sweep/search.py).
SEARCH_KEYS = {"space", "n_trials", "sampler", "pruner", "direction", "n_jobs"}
KEYS = {"design", "tricks", "seeds", "baseline", "baselines", "name", "description"} | SEARCH_KEYS


@dataclass(frozen=True)
class Job:
    variant: str
    tricks: tuple[str, ...]
    seed: int
    # The overrides of this job's baseline (model=..., data=...).
    base: tuple[str, ...] = ()
    # Overrides the design itself sets, after the command line's: a search trial's parameters.
    params: tuple[str, ...] = ()

    def overrides(self) -> list[str]:
        """What makes this job this variant at this seed (after the base and command-line overrides)."""
        return [f"tricks=[{','.join(self.tricks)}]", f"seed={self.seed}", f"variant={self.variant}", *self.params]


@dataclass(frozen=True)
class SweepDesign:
    name: str
    design: str
    tricks: tuple[str, ...]
    seeds: tuple[int, ...]
    # Baseline label -> its overrides; one unnamed ("") baseline unless the file names several.
    baselines: dict[str, tuple[str, ...]]
    path: Path
    # Baseline label -> the tricks it ablates, where it names only some of the sweep's tricks.
    baseline_tricks: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Adaptive seeds: `seeds` are then the first min seeds; more are added round by round.
    adaptive: Plan | None = None
    # design: search: what Optuna searches (ablate/sweep/search.py's SearchSpec).
    search: SearchSpec | None = None

    def variants(self, baseline: str | None = None) -> list[tuple[str, ...]]:
        """The trick combinations the design asks for (of one baseline), baseline (no trick) first."""
        t = self.baseline_tricks.get(baseline, self.tricks) if baseline is not None else self.tricks
        if self.design == "one_at_a_time":
            combos = [()] + [(x,) for x in t]
        elif self.design == "cumulative":
            combos = [t[:k] for k in range(len(t) + 1)]
        elif self.design == "leave_one_out":
            combos = [(), t] + [tuple(x for x in t if x != left) for left in t]
        elif self.design == SEARCH:  # every trial trains all the tricks (ablate/sweep/search.py runs it)
            combos = [t]
        else:  # factorial
            combos = [c for k in range(len(t) + 1) for c in itertools.combinations(t, k)]
        seen, unique = set(), []
        for c in combos:
            if frozenset(c) not in seen:
                seen.add(frozenset(c))
                unique.append(tuple(c))
        return unique

    def all_jobs(self, seeds: tuple[int, ...] | None = None) -> list[Job]:
        """Every variant at each of `seeds` (the design's by default), seed by seed."""
        jobs = []
        for seed in self.seeds if seeds is None else seeds:
            for label, base in self.baselines.items():
                for combo in self.variants(label):
                    name = "+".join(combo) or "baseline"
                    jobs.append(Job(f"{label}/{name}" if label else name, combo, seed, base))
        return jobs

    def jobs(self) -> list[Job]:
        """Seed by seed: every variant of seed 0, then of seed 1... A sweep cut short (a time limit,
        a dead job) leaves whole tables of fewer seeds, each delta paired with its baseline."""
        return self.all_jobs()

    def baseline_of(self, variant: str) -> str:
        """The name of the baseline variant a variant is compared with."""
        label = variant.split("/", 1)[0] if "/" in variant else ""
        return f"{label}/baseline" if label else "baseline"


def resolve_sweep_path(name_or_path: str) -> Path:
    """A sweep name (sweeps/<name>.yaml) or a path to a sweep file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        candidates = [path]
    else:
        candidates = [sweeps_dir() / f"{name_or_path}.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = sorted(p.stem for p in sweeps_dir().glob("*.yaml"))
    raise SweepFileError(f"no sweep file {candidates[0]}; sweeps in {sweeps_dir()}: {', '.join(known) or 'none'}")


def load_sweep(path: Path) -> SweepDesign:
    """Read and check a sweep file; every mistake is a SweepFileError naming the file and the key, so a
    sweep fails before any run starts."""
    path = Path(path)
    raw = _read_sweep_file(path)
    design = raw.get("design", "one_at_a_time")
    if design not in DESIGNS:
        raise SweepFileError(f"{path}: design {design!r} is not one of {DESIGNS}")
    misplaced = sorted(SEARCH_KEYS & set(raw)) if design != SEARCH else []
    if misplaced:
        raise SweepFileError(f"{path}: {', '.join(misplaced)}: only for design: search (this file's design is {design})")
    tricks = raw.get("tricks") or []
    if not isinstance(tricks, list) or not all(isinstance(t, str) for t in tricks):
        raise SweepFileError(f"{path}: tricks must be a list of trick names, got {tricks!r}")
    if len(set(tricks)) != len(tricks):
        raise SweepFileError(f"{path}: tricks lists a name twice: {tricks}")
    seeds, adaptive = _parse_seeds(raw, path)
    baselines, baseline_tricks = _parse_baselines(raw, path, tricks)
    search = None
    if design == SEARCH:
        if adaptive is not None or len(baselines) > 1 or baseline_tricks:
            raise SweepFileError(f"{path}: design: search takes a count or list of seeds and one baseline "
                                 "(overrides of every trial), not adaptive seeds or named baselines")
        search = parse_search(raw, path)
    return SweepDesign(name=str(raw.get("name") or path.stem), design=design, tricks=tuple(tricks),
                       seeds=tuple(seeds), baselines=baselines, path=path, baseline_tricks=baseline_tricks,
                       adaptive=adaptive, search=search)


def _read_sweep_file(path: Path) -> dict:
    """The sweep file as a plain dict (interpolations resolved) with known keys only: a typo in a key
    would otherwise be silently ignored."""
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.YAMLError as e:
        raise SweepFileError(f"{path}: not valid YAML at {yaml_problem(e)}") from None
    except (OSError, OmegaConfBaseException, ValueError) as e:
        raise SweepFileError(f"{path}: cannot read the sweep file ({e})") from None
    if not isinstance(raw, dict):
        raise SweepFileError(f"{path}: a sweep file is a mapping with keys {sorted(KEYS)}")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise SweepFileError(f"{path}: unknown keys {unknown} (known: {sorted(KEYS)})")
    return raw


def _parse_seeds(raw: dict, path: Path) -> tuple[list[int], Plan | None]:
    """The seeds to run first and the adaptive plan, if any: `seeds` is a count, a list, or adaptive
    {min, max, margin[, alpha]} (which starts with min seeds and adds more as the decisions need)."""
    seeds = raw.get("seeds", 1)
    adaptive = None
    if isinstance(seeds, dict):
        unknown = sorted(set(seeds) - {"min", "max", "margin", "alpha"})
        if unknown or not {"min", "max", "margin"} <= set(seeds):
            raise SweepFileError(f"{path}: adaptive seeds are {{min: 2, max: 8, margin: 0.3}} (alpha optional, "
                                 f"0.05), got {seeds!r}")
        try:
            adaptive = Plan(seeds["min"], seeds["max"], float(seeds["margin"]), float(seeds.get("alpha", 0.05)))
        except (PlanError, TypeError, ValueError) as e:
            raise SweepFileError(f"{path}: {e}") from None
        seeds = list(range(adaptive.min_seeds))
    if isinstance(seeds, int) and seeds >= 1:
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SweepFileError(f"{path}: seeds must be a count >= 1, a list of integers or adaptive "
                             f"{{min, max, margin}}, got {raw.get('seeds')!r}")
    return seeds, adaptive


def _parse_baselines(raw: dict, path: Path, tricks: list[str]) -> tuple[dict[str, tuple[str, ...]],
                                                                        dict[str, tuple[str, ...]]]:
    """Each baseline's overrides by name ('' for the single `baseline`), and the tricks of the named
    baselines that run only some of the sweep's tricks."""
    if "baseline" in raw and "baselines" in raw:
        raise SweepFileError(f"{path}: give either baseline (one) or baselines (several, named), not both")
    named = raw.get("baselines") if "baselines" in raw else {"": raw.get("baseline") or []}
    if not isinstance(named, dict) or not named:
        raise SweepFileError(f"{path}: baselines must map names to override lists, e.g. fcos: [model=fcos]")
    baselines, baseline_tricks = {}, {}
    for label, entry in named.items():
        overrides, own = _parse_baseline_entry(path, label, entry, tricks)
        if own is not None:
            baseline_tricks[label] = own
        baselines[label] = tuple(overrides)
    return baselines, baseline_tricks


def _parse_baseline_entry(path: Path, label: str, entry: Any, tricks: list[str]) -> tuple[list, tuple | None]:
    """One baseline's overrides and its own tricks (None when it runs all of them): a list of
    overrides, or for a named baseline a mapping with overrides and tricks."""
    where = f"baselines.{label}" if label else "baseline"
    overrides, own = entry, None
    if isinstance(entry, dict) and label:
        unknown = sorted(set(entry) - {"overrides", "tricks"})
        if unknown:
            raise SweepFileError(f"{path}: {where} has unknown keys {unknown} (known: overrides, tricks)")
        overrides = entry.get("overrides") or []
        if "tricks" in entry:
            own = entry["tricks"] or []
            if not isinstance(own, list) or not set(own) <= set(tricks) or len(set(own)) != len(own):
                raise SweepFileError(f"{path}: {where}.tricks must list some of the sweep's tricks {tricks}, "
                                     f"each once, got {entry['tricks']!r}")
            own = tuple(own)
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise SweepFileError(f"{path}: {where} must be a list of overrides such as [model=faster_rcnn]"
                             + (" or a mapping with overrides and tricks" if label else ""))
    if "/" in label or "=" in label:
        raise SweepFileError(f"{path}: baseline name {label!r} may not contain '/' or '='")
    return overrides, own
