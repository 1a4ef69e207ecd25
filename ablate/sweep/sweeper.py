"""The ablation sweeper: a Hydra Sweeper that expands a sweep file's design into jobs and hands
them to whichever Hydra launcher is configured (basic, joblib, submitit_local, submitit_slurm).

Every job runs in the stable folder ${paths.runs}/<sweep>/<variant>/seed<N>, so a sweep launched
again finds what it finished. When the launcher returns, the report is rebuilt from the records.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from .design import load_sweep

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

    def sweep(self, arguments: list[str]) -> Any:
        if not self.file:
            raise ValueError("hydra/sweeper=ablate needs hydra.sweeper.file=<sweep yaml> (or use `ablate sweep NAME`)")
        design = load_sweep(Path(self.file))
        for arg in arguments:
            key = arg.split("=", 1)[0].lstrip("+~")
            if key in ("tricks", "seed", "variant"):
                raise ValueError(f"override {arg!r}: the sweep file {design.path} decides {key}; edit it instead")
            if "," in arg.split("=", 1)[-1] and "[" not in arg:
                raise ValueError(f"override {arg!r}: a sweep over values belongs in a sweep file, not on the command line")
        jobs = design.jobs()
        batch = [list(job.base) + list(arguments) + job.overrides() for job in jobs]
        self.validate_batch_is_legal(batch)

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("sweep %s (%s design): %d baseline(s), %d seed(s): %d runs in %s", design.name,
                 design.design, len(design.baselines), len(design.seeds), len(jobs), sweep_dir)

        returns = self.launcher.launch(batch, initial_job_idx=0)
        not_ok = []
        for job, ret in zip(jobs, returns):
            if ret.status == JobStatus.COMPLETED:
                status = ret.return_value
            else:
                status = f"failed ({ret._return_value!r})"
            if status not in ("ok", "not_applicable"):
                not_ok.append(f"{job.variant} seed {job.seed}: {status}")

        if self.report:
            from ..report import build_report  # pandas and matplotlib only when needed

            out = Path(str(self.config.paths.reports)) / design.name
            path = build_report([sweep_dir], out, title=design.name)
            log.info("report: %s", path)
            print(f"report: {path}")
        if not_ok:
            raise SweepFailed(f"{len(not_ok)} of {len(jobs)} runs did not finish: " + "; ".join(not_ok))
        return returns
