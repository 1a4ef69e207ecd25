"""`ablate train -m`: Hydra's basic sweeper, with a folder of its own for every job.

Hydra's BasicSweeper makes one job per combination of the command line's comma lists; each trains
in hydra.sweep.dir/hydra.sweep.subdir, ${paths.runs}/<sweep>/<variant>/seed<N> (conf/config.yaml).
The variant is named after the tricks alone, so jobs that differ in anything else
(tricks.mixup.alpha=0.2,1.5; train.optimizer.lr=0.001,0.01; model=fcos,retinanet) would share one
folder: the second moves the first's record aside and trains in its place (train.existing_record),
the report sees only the last, and a parallel launcher writes the folder from two processes at once.

So this sweeper works out every job's folder as the launcher will, and where several jobs would
share one, names each one's variant after the overrides that differ among them,
`mixup[tricks.mixup.alpha=0.2]`: a folder of its own, the same on every launch of the command (a
relaunch reuses what finished). A job alone in its folder keeps it. Jobs that names cannot tell
apart (the same values twice, a hydra.sweep.subdir without ${variant}) stop the multirun before any
of them runs. `ablate sweep` has its own sweeper (sweeper.py), whose jobs are unique by design.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import key_hints
from ..errors import UserInputError, reported

# What a name keeps of an override: a folder name on any system, a plain string to Hydra's grammar
# once quoted (no quotes, backslashes or ${...}); any other character becomes "_".
UNSAFE = re.compile(r"[^A-Za-z0-9._+\-=,@\[\]]")
# A longer name is cut and ends with a hash of the whole (a file name has at most 255 bytes).
MAX_NAME = 120


def safe(text: str) -> str:
    return UNSAFE.sub("_", text.replace("'", "").replace('"', ""))


def label(override: str) -> str:
    """`key=value` as a part of a variant name: the key without its +/~ prefix, a config group's
    '/' as '.' (model/backbone=resnet18: model.backbone=resnet18), unsafe characters as '_'."""
    key, _, value = override.partition("=")
    return safe(f"{key.lstrip('+~').replace('/', '.')}={value}")


def shortened(name: str) -> str:
    if len(name) <= MAX_NAME:
        return name
    return f"{name[:MAX_NAME - 9]}~{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def shared_folders(folders: Sequence[str]) -> dict[str, list[int]]:
    """Each folder that several jobs would train in -> their indexes."""
    jobs: dict[str, list[int]] = defaultdict(list)
    for index, folder in enumerate(folders):
        jobs[folder].append(index)
    return {folder: members for folder, members in jobs.items() if len(members) > 1}


def own_variant_names(jobs: Sequence[Sequence[str]], variants: Sequence[str],
                      folders: Sequence[str]) -> dict[int, str]:
    """Job index -> a variant name of its own, for each job whose folder another job shares: its
    variant followed by the overrides whose values differ among the jobs of that folder, in
    command-line order (none for jobs with the same overrides). A variant's '/' (a nested folder) is kept."""
    names = {}
    for members in shared_folders(folders).values():
        by_key = [{o.partition("=")[0]: o for o in jobs[i]} for i in members]
        keys = list(dict.fromkeys(k for overrides in by_key for k in overrides))
        differing = [k for k in keys if len({overrides.get(k) for overrides in by_key}) > 1]
        if not differing:  # the same job twice: no name tells them apart (with_own_folders says so)
            continue
        for index, overrides in zip(members, by_key):
            base = "/".join(safe(part) for part in variants[index].split("/"))
            names[index] = shortened(f"{base}[{','.join(label(overrides[k]) for k in differing if k in overrides)}]")
    return names


def with_variant(job: Sequence[str], name: str) -> list[str]:
    """The job's overrides with `variant` set to `name` (in place of a variant override it had)."""
    return [o for o in job if o.partition("=")[0].lstrip("+~") != "variant"] + [f"variant='{name}'"]


def job_folders(configs: Sequence[DictConfig]) -> list[str]:
    """Where the basic launcher puts each job (hydra.core.utils.run_job): hydra.sweep.dir joined
    with hydra.sweep.subdir, resolved with the job's number set and its Hydra config current (a
    subdir may read ${hydra.job.num} or ${hydra:...})."""
    current = HydraConfig.instance()
    saved = current.cfg
    folders = []
    try:
        for num, cfg in enumerate(configs):
            if OmegaConf.is_missing(cfg.hydra.job, "num"):
                with open_dict(cfg):
                    cfg.hydra.job.id = num
                    cfg.hydra.job.num = num
            current.set_config(cfg)
            folders.append(os.path.normpath(os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                                         str(OmegaConf.select(cfg, "hydra.sweep.subdir")))))
    finally:
        current.cfg = saved
    return folders


class MultirunSweeper(BasicSweeper):
    """Hydra's BasicSweeper (hydra/sweeper=basic) whose jobs each train in a folder of their own
    (the module docstring); its options are BasicSweeper's (max_batch_size, params)."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        # BasicSweeper's attributes, set here: its __init__ calls super(BasicSweeper, self) with the
        # class its module holds at that time, and Hydra's plugin scan runs that module again; this
        # class, when imported before the scan, is no subclass of the new one (a TypeError).
        Sweeper.__init__(self)
        self.overrides = None
        self.batch_index = 0
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.hydra_context = None
        self.config = None
        self.launcher = None

    # BasicSweeper.sweep calls self.split_arguments(overrides, max_batch_size): its static method,
    # here a method that can compose the jobs.
    def split_arguments(self, overrides, max_batch_size):  # type: ignore[override]
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        with reported():  # a job that does not compose, or jobs that share a folder: one line
            jobs = self.with_own_folders(jobs)
        if max_batch_size is None:
            return [jobs]
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))

    def job_config(self, overrides: Sequence[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def with_own_folders(self, jobs: list[list[str]]) -> list[list[str]]:
        configs = []
        for job in jobs:
            with key_hints(job, self.job_config):  # train.epoch=3,4: "did you mean train.epochs"
                configs.append(self.job_config(job))
        names = own_variant_names(jobs, [str(cfg.variant) for cfg in configs], job_folders(configs))
        for index, name in names.items():
            configs[index].variant = name  # as the override below sets it, to check the folders again
        for folder, (a, b, *_) in shared_folders(job_folders(configs)).items():
            differ = [o for o in jobs[a] if o not in jobs[b]] + [o for o in jobs[b] if o not in jobs[a]]
            how = f"they differ in {' '.join(differ)}" if differ else "the same overrides, a value given twice"
            raise UserInputError(f"jobs #{a} and #{b} of this multirun would train in one folder, {folder} "
                                 f"({how}): give them different values, or a hydra.sweep.subdir that tells them "
                                 "apart (conf/config.yaml's uses ${variant})")
        return [with_variant(job, names[i]) if i in names else list(job) for i, job in enumerate(jobs)]
