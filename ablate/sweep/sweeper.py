"""The ablation sweeper: a Hydra Sweeper that expands a sweep file's design into jobs and hands
them to whichever Hydra launcher is configured (basic, joblib, submitit_local, submitit_slurm).

Every job runs in the stable folder ${paths.runs}/<sweep>/<variant>/seed<N>, so a sweep launched
again finds what it finished. When the launcher returns, the report is rebuilt from the records.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ..config import check_values, key_hints
from ..errors import UserInputError, reported, stop
from ..results import atomic_write_text, find_records
from .adaptive import ADAPTIVE_FILE, CORRECTION, OPEN, SCREEN_LEVEL, SPENDING, decisions_from_records
from .design import load_sweep
from .progress import Progress

log = logging.getLogger("ablate.sweep")


class SweepFailed(RuntimeError):
    """Some runs of a sweep did not finish; the others did, and the report lists both."""


class AblationSweeper(Sweeper):
    def __init__(self, file: str | None = None, report: bool = True):
        self.file = file
        self.report = report
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def job_config(self, overrides: list[str]) -> DictConfig:
        """A job's config, composed as the launcher will."""
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    @staticmethod
    def batch(jobs: list, arguments: list[str]) -> list[list[str]]:
        return [list(job.base) + list(arguments) + job.overrides() for job in jobs]

    def launch(self, jobs: list, arguments: list[str], first_index: int) -> list:
        batch = self.batch(jobs, arguments)
        self.validate_batch_is_legal(batch)
        with Progress(jobs, Path(str(self.config.hydra.sweep.dir)), sys.stdout):
            try:
                return list(self.launcher.launch(batch, initial_job_idx=first_index))
            except Exception as e:
                if type(e).__name__ != "UncompletedJobError":  # submitit's, for a job SLURM ended
                    raise
                # "Job 19_0 (task: 0) with path ...", "has not produced any output (state: CANCELLED)"
                what = " ".join(str(e).splitlines()[:2])
                stop(SweepFailed(f"a cluster job ended before its run did ({what}); wait until squeue no longer "
                                 "lists this sweep's jobs, then launch the same command again: complete runs "
                                 "are kept, interrupted ones resume from their checkpoints"))

    def check(self, design, arguments: list[str]) -> None:
        """Bad input stops the sweep in one line (ablate/errors.py) before any job runs or its folder
        is made: a command-line override the sweep file decides, any job that does not compose (an
        unknown option or key in a baseline's overrides) or has a bad value (config.check_values).
        The jobs of the first seed stand for all: a job's seed decides neither."""
        for arg in arguments:
            key = arg.split("=", 1)[0].lstrip("+~")
            if key in ("tricks", "seed", "variant"):
                raise UserInputError(f"override {arg!r}: the sweep file {design.path} decides {key}; edit it instead")
            if "," in arg.split("=", 1)[-1] and "[" not in arg:
                raise UserInputError(f"override {arg!r}: a sweep over values belongs in a sweep file, not on the "
                                     "command line")
        if design.search is not None:
            from .search import check_search  # the space's keys exist; a pruner has evaluations to prune on

            check_search(design, arguments, self)
            return
        for overrides in self.batch(design.all_jobs(design.seeds[:1]), arguments):
            with key_hints(overrides, self.job_config):  # a baseline's train.epoch=3: "did you mean train.epochs"
                check_values(self.job_config(overrides))

    def sweep_adaptive(self, design, arguments: list[str], sweep_dir: Path) -> tuple[list, list]:
        """Round 1: every variant at seeds 0..min−1. Then, while some variant is open (not decided after
        Holm's correction over the sweep's tricks) and has fewer than max seeds, one more seed for those
        variants and their baselines. Decisions are
        made from the records on disk, so a relaunched sweep (its finished runs reused) takes the
        same rounds."""
        plan = design.adaptive
        variants = {job.variant: design.baseline_of(job.variant) for job in design.all_jobs((0,))
                    if job.tricks}
        jobs = design.all_jobs(tuple(range(plan.min_seeds)))
        log.info("sweep %s (%s design, adaptive seeds %d..%d, margin %g): round 1, %d runs in %s", design.name,
                 design.design, plan.min_seeds, plan.max_seeds, plan.margin, len(jobs), sweep_dir)
        plan_info = {"min": plan.min_seeds, "max": plan.max_seeds, "margin": plan.margin, "alpha": plan.alpha,
                     "spending": SPENDING, "correction": CORRECTION, "screen_level": SCREEN_LEVEL,
                     "variants": variants, "rounds": [], "complete": False}
        rounds = plan_info["rounds"]

        def save(complete: bool = False) -> None:
            # after each round, so a sweep stopped between rounds (Ctrl-C, a dead job, the end of a
            # session) is reported with its rounds so far and its open tricks said open
            plan_info["complete"] = complete
            atomic_write_text(sweep_dir / ADAPTIVE_FILE, json.dumps(plan_info, indent=2) + "\n")

        rounds.append({"round": 1, "seeds": plan.min_seeds, "variants": sorted({j.variant for j in jobs})})
        save()
        returns = self.launch(jobs, arguments, 0)
        for seed in range(plan.min_seeds, plan.max_seeds):
            found, _ = find_records(sweep_dir)
            # only the seeds this round has: a relaunch finds later seeds on disk already
            decisions = decisions_from_records([r for _, r in found if r.seed < seed], variants, plan)
            still_open = {d.variant for d in decisions if d.verdict == OPEN}
            if not still_open:
                break
            wanted = still_open | {variants[v] for v in still_open}
            more = [job for job in design.all_jobs((seed,)) if job.variant in wanted]
            log.info("adaptive round %d: seed %d for %d open variant(s): %s", len(rounds) + 1, seed,
                     len(still_open), ", ".join(sorted(still_open)))
            rounds.append({"round": len(rounds) + 1, "seeds": seed + 1, "variants": sorted(wanted)})
            save()
            returns += self.launch(more, arguments, len(jobs))
            jobs += more
        save(complete=True)
        return jobs, returns

    def sweep(self, arguments: list[str]) -> Any:
        if not self.file:
            raise ValueError("hydra/sweeper=ablate needs hydra.sweeper.file=<sweep yaml> (or use `ablate sweep NAME`)")
        with reported():
            design = load_sweep(Path(self.file))
            self.check(design, arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if design.search is not None:
            from .search import run_search  # Optuna only for a search

            with reported():  # Optuna missing, a study of another space: one line
                jobs, returns = run_search(self, design, arguments, sweep_dir, sys.stdout)
        elif design.adaptive is None:
            jobs = design.jobs()
            log.info("sweep %s (%s design): %d baseline(s), %d seed(s): %d runs in %s", design.name,
                     design.design, len(design.baselines), len(design.seeds), len(jobs), sweep_dir)
            returns = self.launch(jobs, arguments, 0)
        else:
            jobs, returns = self.sweep_adaptive(design, arguments, sweep_dir)
        not_ok = []
        for job, ret in zip(jobs, returns):
            if ret.status == JobStatus.COMPLETED:
                status = ret.return_value
            else:
                status = f"failed ({ret._return_value!r})"
            if status not in ("ok", "not_applicable", "pruned"):  # pruned: a search's trial stopped early
                not_ok.append(f"{job.variant} seed {job.seed}: {status}")

        if self.report:
            from ..report import build_report  # pandas and matplotlib only when needed

            out = Path(str(self.config.paths.reports)) / design.name
            path = build_report([sweep_dir], out, title=design.name)
            print(f"report: {path}")
        if not_ok:
            stop(SweepFailed(f"{len(not_ok)} of {len(jobs)} runs did not finish: " + "; ".join(not_ok)))
        return returns
