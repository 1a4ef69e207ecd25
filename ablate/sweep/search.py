"""design: search: tune a trick's (and training's) parameters with Optuna, run by the ablation sweeper.

A search sweep file (sweeps/tune_mixup.yaml is the example):

    design: search
    tricks: [mixup]                  # switched on in every trial
    space:                           # dotted config keys, each a distribution:
      tricks.mixup.alpha: {type: float, low: 0.5, high: 2.0}             # log: true, step: 0.1
      train.optimizer.lr: {type: float, low: 0.0005, high: 0.005, log: true}
      train.schedule.name: {type: categorical, choices: [step, cosine]}
      data.batch_size: {type: int, low: 2, high: 8, step: 2}             # log: true
    n_trials: 16                     # trials in the study, counting those of earlier launches
    sampler: tpe                     # tpe (default) or random, or {name: tpe, seed: 0, n_startup_trials: 10}
    pruner: median                   # median (default), percentile, threshold or none, or {name: median, ...}
    direction: maximize              # of the val mAP (default maximize)
    n_jobs: 1                        # trials launched together, for a parallel launcher (default 1)
    seeds: 1                         # a trial's value is the mean val mAP over these seeds
    baseline: [train.eval_every=1]   # overrides of every trial (a pruner needs per-epoch val mAP)

The sampler's seed is 0 unless given; the pruners' and samplers' other arguments are Optuna's own
defaults (MedianPruner: n_startup_trials 5, n_warmup_steps 0; TPESampler: n_startup_trials 10).

The study lives in SQLite beside the runs, ${paths.runs}/<sweep>/optuna.db, and each trial is an
ordinary ablate run in ${paths.runs}/<sweep>/trial<N>/seed<S>/, launched through the configured
Hydra launcher one trial after the other (n_jobs trials at once: with hydra/launcher=joblib or
SLURM they train in parallel, each reporting to the same SQLite file). Launching the same sweep again continues the same study:
finished trials are kept, a trial that was running when the search was killed is run again in its
own folder (resuming from its checkpoint), then new trials are asked until the study has n_trials.
The study keeps its trials' base config (`trial_base`): a launch with other overrides (train.epochs=4)
is refused before anything runs, as its trials would not be the study's.
A trial's run reports each evaluation's val mAP (train.eval_every) to the study through
runtime.search_trial, which is not part of the config hash, and stops with status `pruned` when
the pruner says so.

No torch here, and Optuna only where a search runs or is reported (the optional extra `tune`).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import MissingExtraError, UserInputError
from ..results import RECORD_NAME, RecordError, points, read_record
from .design import Job, SweepFileError
from .progress import minutes
from .space import SearchSpec, parse_search  # noqa: F401 (read from here before the split)

log = logging.getLogger("ablate.sweep")

STUDY_FILE = "optuna.db"
LOCK_FILE = "search.lock"
def hydra_value(value: Any) -> str:
    """A parameter's value as Hydra's override grammar reads it back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def param_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{key}={hydra_value(value)}" for key, value in params.items()]


def example_params(spec: SearchSpec) -> dict[str, Any]:
    """A point of the space (the low ends, the first choices): what the sweeper composes to check a trial."""
    return {k: e["choices"][0] if e["type"] == "categorical" else e["low"] for k, e in spec.space.items()}


def trial_jobs(design, number: int, params: dict[str, Any], storage: str) -> list[Job]:
    """A trial's runs, one per seed, in ${paths.runs}/<sweep>/trial<N>/seed<S>; each reports to the study."""
    base = design.baselines[next(iter(design.baselines))]
    jobs = []
    for index, seed in enumerate(design.seeds):
        where = (f"runtime.search_trial={{storage:{hydra_value(storage)},study:{hydra_value(design.name)},"
                 f"trial:{number},seed_index:{index}}}")
        jobs.append(Job(f"trial{number}", design.tricks, seed, base, (*param_overrides(params), where)))
    return jobs


# ---------------------------------------------------------------- Optuna


def require_optuna():
    try:
        import optuna
    except ImportError as e:
        raise MissingExtraError("design: search needs Optuna, which is not installed: pip install -e '.[tune]'") from e
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeper prints one line per trial itself
    return optuna


def storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(Path(sweep_dir) / STUDY_FILE).resolve()}"


def distributions(spec: SearchSpec) -> dict[str, Any]:
    optuna = require_optuna()
    dists = {}
    for key, e in spec.space.items():
        if e["type"] == "categorical":
            dists[key] = optuna.distributions.CategoricalDistribution(e["choices"])
        elif e["type"] == "int":
            dists[key] = optuna.distributions.IntDistribution(e["low"], e["high"], log=e["log"], step=e.get("step", 1))
        else:
            dists[key] = optuna.distributions.FloatDistribution(e["low"], e["high"], log=e["log"], step=e.get("step"))
    return dists


def build_pruner(spec: dict[str, Any]):
    optuna = require_optuna()
    args = {k: v for k, v in spec.items() if k != "name"}
    classes = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
               "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
    return classes[spec["name"]](**args)


def sampler_for(spec: dict[str, Any], finished: int):
    """The sampler, seeded with seed + the number of trials the study already holds: a resumed search
    stays reproducible without drawing again the points its first launch drew (a sampler seeded
    alike would repeat its random start-up trials)."""
    optuna = require_optuna()
    args = {k: v for k, v in spec.items() if k != "name"}
    args["seed"] = args["seed"] + finished
    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}[spec["name"]](**args)


def trial_base(cfg: Any, spec: SearchSpec) -> dict[str, Any]:
    """What every trial of a search shares, from a trial's composed config: the sections that decide
    a run's numbers (results.HASHED_SECTIONS, its seed left out), resolved, without the space's keys."""
    from omegaconf import OmegaConf

    from ..results import HASHED_SECTIONS

    base = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in HASHED_SECTIONS if k != "seed"}
    for key in spec.space:
        *parents, leaf = key.split(".")
        node = base
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return base


def check_base(study, base: dict[str, Any], sweep_dir: Path) -> None:
    """A study holds the trials of one base config: a relaunch with other overrides (train.epochs=4)
    or other defaults in conf/ is refused, naming what differs, instead of continuing (or showing as
    done) a search it does not ask for. A study made before the base was kept takes any."""
    from ..config import dotted_items
    from ..results import config_hash

    stored = study.user_attrs.get("base")
    if stored is None or config_hash(stored) == config_hash(base):
        return
    old, new = dotted_items(stored), dotted_items(base)
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not isinstance(old.get(k, new.get(k)), dict)]
    raise UserInputError(f"{sweep_dir / STUDY_FILE}: its trials ran on another config ({'; '.join(changed[:3])}"
                         f"{'; ...' if len(changed) > 3 else ''}): a search with these overrides needs a study "
                         f"of its own: give it another folder (paths.runs=DIR), or move {sweep_dir} away")


def existing_study(design, sweep_dir: Path):
    """The sweep's study if <sweep dir>/optuna.db holds it, opened to read; else None."""
    if not (Path(sweep_dir) / STUDY_FILE).is_file():
        return None
    try:
        return require_optuna().load_study(study_name=design.name, storage=storage_url(sweep_dir))
    except KeyError:  # the file holds other studies only
        return None


def open_study(design, sweep_dir: Path, base: dict[str, Any] | None = None):
    """The sweep's study in <sweep dir>/optuna.db, created or loaded (a relaunch continues it). Its
    space, direction, pruner and trials' base config (`trial_base`, when given) are kept in the
    study; a sweep file whose space changed since, or another base config, is refused."""
    optuna = require_optuna()
    spec = design.search
    study = optuna.create_study(study_name=design.name, storage=storage_url(sweep_dir), load_if_exists=True,
                                direction=spec.direction, pruner=build_pruner(spec.pruner))
    if study.direction.name.lower() != spec.direction:
        raise SweepFileError(f"{design.path}: direction: {spec.direction}, but the study in {sweep_dir / STUDY_FILE} "
                             f"was made to {study.direction.name.lower()}; name the sweep anew (name: ...) to start another")
    stored = study.user_attrs.get("space")
    if stored is not None and stored != spec.space:
        changed = sorted(k for k in set(stored) | set(spec.space) if stored.get(k) != spec.space.get(k))
        raise SweepFileError(f"{design.path}: space changed since the study in {sweep_dir / STUDY_FILE} began "
                             f"(space.{changed[0]}); name the sweep anew (name: ...) or move that folder away")
    if base is not None:
        check_base(study, base, sweep_dir)
        study.set_user_attr("base", base)
    study.set_user_attr("space", spec.space)
    study.set_user_attr("pruner", spec.pruner)
    study.set_user_attr("tricks", list(design.tricks))
    study.set_user_attr("seeds", list(design.seeds))
    study.sampler = sampler_for(spec.sampler, len(study.trials))
    return study


@contextlib.contextmanager
def search_lock(sweep_dir: Path) -> Iterator[None]:
    """One launch at a time per study: a trial left running in the study is then known to be one a
    killed launch left behind, never one another live launch is training."""
    handle = open(Path(sweep_dir) / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserInputError(f"{sweep_dir}: another launch of this search is running ({LOCK_FILE} is held); "
                                 "wait for it to end") from None
        yield
    finally:
        handle.close()  # releases the lock (as does the death of the process)


# ---------------------------------------------------------------- a trial's run (in the job's process)


def trial_reporter(search_trial: Any, epochs: int) -> Callable[[int, float], bool] | None:
    """For a run that is a search's trial (runtime.search_trial set), a function that reports the
    val mAP of an epoch to its study and returns whether the pruner stops the run; None otherwise.
    Steps count the epochs of all the trial's seeds: seed_index x epochs + epoch."""
    if not search_trial:
        return None
    optuna = require_optuna()
    storage = optuna.storages.RDBStorage(str(search_trial["storage"]))
    study_name, number = str(search_trial["study"]), int(search_trial["trial"])
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    study.pruner = build_pruner(study.user_attrs.get("pruner", {"name": "none"}))
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)
    trial = optuna.trial.Trial(study, trial_id)
    offset = int(search_trial["seed_index"]) * int(epochs)

    def report(epoch: int, value: float) -> bool:
        trial.report(value, offset + epoch)
        return trial.should_prune()

    return report


# ---------------------------------------------------------------- the search (in the sweeper's process)


def trial_outcome(sweep_dir: Path, jobs: list[Job], statuses: list[str]) -> tuple[str, float | None]:
    """A trial's status (ok only if every seed is ok; else the first other status) and its value, the
    mean val mAP over its seeds' records."""
    values = []
    for job, status in zip(jobs, statuses):
        if status != "ok":
            return status, None
        try:
            values.append(read_record(sweep_dir / job.variant / f"seed{job.seed}" / RECORD_NAME).metrics["mAP"])
        except (OSError, RecordError, KeyError):
            return "failed", None
    return "ok", sum(values) / len(values)


def shown_params(params: dict[str, Any]) -> str:
    """A trial's parameters for the console: floats to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_line(study, number: int, status: str, value: float | None, params: dict[str, Any], n_trials: int,
               pace: float) -> str:
    """The console line of a finished trial: its status and value, parameters, the best so far, the time left."""
    finished = sum(t.state.is_finished() for t in study.trials)
    best = ""
    with contextlib.suppress(ValueError):  # no complete trial yet
        best = f"; best {points(study.best_value)} (trial {study.best_trial.number})"
    remaining = n_trials - finished
    eta = f", about {minutes(pace * remaining)} left" if remaining > 0 else ""
    shown = shown_params(params)
    if status == "pruned":  # the val mAP it was stopped at (Optuna keeps the last report as its value)
        stopped = study.trials[number]
        if stopped.value is not None:
            value = stopped.value
            status = f"pruned at step {stopped.last_step}"
    return (f"[{finished}/{n_trials}] trial {number}: {status}" + (f", mAP {points(value)}" if value is not None else "")
            + f" ({shown}){best}{eta}")


def with_all_params(study, frozen, dists: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a trial left running. A search killed while `ask` was drawing them leaves
    a trial with only some (each is stored as it is drawn): the rest are drawn now, by the study's
    sampler as `ask` would have, so the trial is run again with a whole point of the space."""
    missing = {name: dist for name, dist in dists.items() if name not in frozen.params}
    if not missing:
        return frozen.params
    trial = require_optuna().trial.Trial(study, frozen._trial_id)
    for name, dist in missing.items():
        trial._suggest(name, dist)  # Optuna's draw of one parameter; no public call takes a distribution
    return trial.params


def run_search(sweeper, design, arguments: list[str], sweep_dir: Path, out) -> tuple[list, list]:
    """Ask, run, tell, until the study holds n_trials trials; first the trials a killed launch left
    running. Returns every job launched and the launcher's returns, as the other designs do."""
    optuna = require_optuna()

    spec = design.search
    storage = storage_url(sweep_dir)
    all_jobs, returns = [], []
    base = trial_base(trial_config(sweeper, design, arguments), spec)
    with search_lock(sweep_dir):
        study = open_study(design, sweep_dir, base)
        states = optuna.trial.TrialState
        pending, done = _left_running(study, design, sweep_dir, out, states)
        started, trained, job_index = time.monotonic(), 0, done * len(design.seeds)
        while pending or len(study.trials) < spec.n_trials:
            batch_trials = _next_trials(study, design, pending, storage)
            statuses, job_index = _launch_trials(sweeper, design, arguments, batch_trials, job_index,
                                                 all_jobs, returns)
            for number, params, jobs in batch_trials:
                status, value = _tell_trial(study, design, sweep_dir, number, jobs, statuses[number], states)
                trained += 1
                print(trial_line(study, number, status, value, params, spec.n_trials,
                                 (time.monotonic() - started) / trained), file=out, flush=True)
        with contextlib.suppress(ValueError):
            print(f"best: trial {study.best_trial.number}, mAP {points(study.best_value)}, "
                  + shown_params(study.best_params), file=out, flush=True)
    return all_jobs, returns


def _left_running(study, design, sweep_dir: Path, out, states) -> tuple[list, int]:
    """The trials a killed launch left running, with all their parameters, to be trained again first
    (so the study reaches n_trials finished trials), and the count of trials already done; both are
    said on `out`."""
    spec = design.search
    left = [t for t in study.trials if t.state == states.RUNNING]
    done = len(study.trials) - len(left)
    print(f"search {design.name}: study {storage_url(sweep_dir).removeprefix('sqlite:///')}, "
          f"{done} of {spec.n_trials} trials done" + (f", {len(left)} left running" if left else ""),
          file=out, flush=True)
    for t in left:
        print(f"trial {t.number} was running when the search stopped: training it again in "
              f"{sweep_dir / f'trial{t.number}'} (from its checkpoint where there is one)", file=out, flush=True)
    return [(t.number, with_all_params(study, t, distributions(spec))) for t in left], done


def _next_trials(study, design, pending: list, storage: str) -> list[tuple[int, dict, list]]:
    """Up to n_jobs trials to run at once (a parallel launcher, joblib or SLURM, runs their jobs
    together): the pending ones first, then new ones asked of the study. Takes them off `pending`."""
    spec = design.search
    batch_trials = []
    while len(batch_trials) < spec.n_jobs and (pending or len(study.trials) < spec.n_trials):
        if pending:
            number, params = pending.pop(0)
        else:
            trial = study.ask(distributions(spec))
            number, params = trial.number, trial.params
        batch_trials.append((number, params, trial_jobs(design, number, params, storage)))
    return batch_trials


def _launch_trials(sweeper, design, arguments: list[str], batch_trials: list, job_index: int,
                   all_jobs: list, returns: list) -> tuple[dict[int, list[str]], int]:
    """Run the trials' jobs seed by seed, each seed's jobs in one launch; a pruned (or failed) seed ends
    its trial, so later seeds run only for trials still ok. Returns each trial's statuses per seed and
    the next job index; the jobs launched and their returns are added to all_jobs and returns."""
    from hydra.core.utils import JobStatus

    statuses: dict[int, list[str]] = {number: [] for number, _, _ in batch_trials}
    for index in range(len(design.seeds)):
        live = [(number, jobs[index]) for number, _, jobs in batch_trials
                if all(s == "ok" for s in statuses[number])]
        if not live:
            break
        batch = [sweeper.batch([job], arguments)[0] for _, job in live]
        sweeper.validate_batch_is_legal(batch)
        rets = list(sweeper.launcher.launch(batch, initial_job_idx=job_index))
        job_index += len(batch)
        for (number, job), ret in zip(live, rets):
            statuses[number].append(ret.return_value if ret.status == JobStatus.COMPLETED else "failed")
            all_jobs.append(job)
            returns.append(ret)
    return statuses, job_index


def _tell_trial(study, design, sweep_dir: Path, number: int, jobs: list, statuses: list[str],
                states) -> tuple[str, float | None]:
    """Tell the study a trial's outcome (its value, pruned or failed) and keep its status as a user
    attribute. Tricks that do not fit the detector would fail every trial: that stops the search with
    the record's error."""
    status, value = trial_outcome(sweep_dir, jobs, statuses)
    if status == "not_applicable":  # every trial would be: the tricks do not fit the detector
        study.tell(number, state=states.FAIL)
        error = read_record(sweep_dir / jobs[0].variant / f"seed{jobs[0].seed}" / RECORD_NAME).error
        raise UserInputError(f"{design.path}: the search's tricks do not fit: {error}")
    if status == "ok":
        study.tell(number, value)
    else:
        study.tell(number, state=states.PRUNED if status == "pruned" else states.FAIL)
    study.set_user_attr(f"trial{number}_status", status)
    return status, value


def check_search(design, arguments: list[str], sweeper) -> None:
    """Before anything runs: every space key is a key of the composed config (a trick's argument
    needs the trick in `tricks`), a pruner has per-epoch val mAP to prune on (train.eval_every), and
    a trial at a point of the space composes and has good values."""
    from ..config import check_values, key_hints
    from omegaconf import OmegaConf

    spec = design.search
    for arg in arguments:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in spec.space:
            raise UserInputError(f"override {arg!r}: the search's space decides {key} (space.{key} in {design.path})")
    (job,) = trial_jobs(design, 0, {}, "sqlite://")[:1]
    overrides = sweeper.batch([job], arguments)[0]
    with key_hints(overrides, sweeper.job_config):  # a baseline's train.epoch=3: "did you mean train.epochs"
        cfg = sweeper.job_config(overrides)
    for key in spec.space:
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            known = f" ({parent or 'the config'} has: {', '.join(str(k) for k in node)})" if OmegaConf.is_dict(node) \
                else ""
            hint = (" (is the trick in the sweep file's tricks?)" if key.startswith("tricks.") and node is None else "")
            raise SweepFileError(f"{design.path}: space.{key}: no such key in the config{known}{hint}")
    if spec.pruner["name"] != "none" and not cfg.train.eval_every:
        raise SweepFileError(f"{design.path}: pruner: {spec.pruner['name']} prunes on the val mAP of every "
                             "train.eval_every epochs, which is 0: add train.eval_every=1 to baseline, or pruner: none")
    cfg = trial_config(sweeper, design, arguments)
    check_values(cfg)
    study = existing_study(design, Path(str(sweeper.config.hydra.sweep.dir)))
    if study is not None:  # before the sweep's folder is touched (its multirun.yaml rewritten)
        check_base(study, trial_base(cfg, spec), Path(str(sweeper.config.hydra.sweep.dir)))


def trial_config(sweeper, design, arguments: list[str]):
    """The composed config of a trial at a point of the space (`example_params`)."""
    (job,) = trial_jobs(design, 0, example_params(design.search), "sqlite://")[:1]
    return sweeper.job_config(sweeper.batch([job], arguments)[0])
