"""One run built from its config: `Run.build(cfg, run_dir)` makes the tricks, data, model,
optimizer, schedule and scaler, and loads the resume state from the run's checkpoint.

A run is then `fit` (ablate/loop.py: the loop and its hooks) and `finish`ed (ablate/finish.py:
evaluation, health, costs, the record); `ablate.train.train_and_evaluate` does the three.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import ablate
from . import config as ablate_config
from . import distributed
from . import tracking
from .checkpoint import CHECKPOINT, load_checkpoint
from .data import DataBundle, build_data
from .finish import reset_peak_memory
from .fingerprint import code_fingerprint
from .models import build_model, label_offset
from .models.losses import LossSlotError
from .results import RunRecord, base_hash, config_hash
from .tricks import TrickConflictError, build_tricks, lr_factor
from .tricks.base import Trick, cosine_annealing

log = logging.getLogger("ablate.train")


# ---------------------------------------------------------------- set-up helpers


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device={name}: CUDA is not available on this machine (use auto or cpu)")
    return device


def autocast_for(device: torch.device, amp) -> Callable[[], contextlib.AbstractContextManager]:
    """The context the forward passes run in, from train.amp: true, mixed precision on CUDA (bf16
    where supported, else fp16) and float32 on CPU; "always", on CPU too, in bf16; false, float32."""
    if not (amp is True or amp is False or amp == "always"):
        raise ValueError(f"train.amp={amp!r}: choose true, false or always (true: mixed precision on CUDA; "
                         "always: on CPU too, bf16; conf/train/default.yaml)")
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return lambda: torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and amp == "always":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def prepare_model(model: torch.nn.Module, device: torch.device, runtime) -> torch.nn.Module:
    """The model on its device, with the runtime's speed settings (the numbers stay the same)."""
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(runtime.cudnn_benchmark)
        if runtime.channels_last:
            model.to(memory_format=torch.channels_last)
    if runtime.compile:
        # The module is kept and only its forward compiled: parameter names (checkpoints,
        # optimizer state) are the same as without compile.
        model.backbone.compile()
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_schedule(cfg_schedule, total_steps: int) -> Callable[[int], float]:
    """The main schedule as an LR factor per iteration."""
    name = cfg_schedule.name
    if name == "constant":
        return lambda step: 1.0
    if name == "cosine":
        return cosine_annealing(total_steps, cfg_schedule.min_factor)
    if name == "step":
        marks = [m * total_steps for m in cfg_schedule.milestones]
        gamma = cfg_schedule.gamma
        return lambda step: gamma ** sum(step >= m for m in marks)
    raise ValueError(f"train.schedule.name={name!r}: choose cosine, step or constant")


def apply_model_tricks(model: torch.nn.Module, tricks: list, model_name: str) -> torch.nn.Module:
    """Each trick's on_model in order; a loss slot the detector lacks, or a loss of a form its slot
    does not take, is a trick that does not fit it (not_applicable in a sweep), not a crash."""
    for trick in tricks:
        try:
            model = trick.on_model(model)
        except LossSlotError as e:
            raise TrickConflictError(f"trick '{trick.name}' does not fit model={model_name}: {e}") from None
    return model


# ---------------------------------------------------------------- the record's identity


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ablate_config.REPO_ROOT), "describe", "--always", "--dirty",
                              "--abbrev=40"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str]:
    import hydra
    import pycocotools
    import torchvision
    return {"ablate": ablate.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__,
            "pycocotools": getattr(pycocotools, "__version__", "unknown")}


def new_record(cfg: DictConfig, status: str) -> RunRecord:
    """A record of this run's identity (config, hashes, versions), results to be filled in."""
    config = ablate_config.to_container(cfg)
    return RunRecord(status=status, variant=str(cfg.variant), sweep=str(cfg.sweep_name),
                     tricks=ablate_config.trick_names(cfg.tricks), seed=int(cfg.seed), config=config,
                     config_hash=config_hash(config), base_hash=base_hash(config), versions=versions(),
                     git_commit=git_commit(), code=code_fingerprint(config),
                     created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


# ---------------------------------------------------------------- the run


def new_totals() -> dict[str, float]:
    """The timers a run adds up (saved in its checkpoint, read into record.timings by finish)."""
    return {"train_s": 0.0, "train_cpu_s": 0.0, "model_s": 0.0, "data_wait_s": 0.0, "batch_tricks_s": 0.0,
            "checkpoint_s": 0.0, "images": 0, "eval_s": 0.0}


@dataclasses.dataclass
class Run:
    """Everything one run trains with, and where it stands (epoch, step, the record so far)."""
    cfg: DictConfig
    run_dir: Path
    record: RunRecord
    tracker: tracking.Trackers
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    tricks: list[Trick]
    data: DataBundle
    model: torch.nn.Module  # the detector: checkpoints, evaluation
    train_model: torch.nn.Module  # what the loop calls: DDP over `model` on several processes
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    label_offset: int
    steps_per_epoch: int
    total_steps: int
    started: float  # perf_counter at the start of the run
    first_epoch: int = 0
    step: int = 0  # optimizer steps taken
    totals: dict[str, float] = dataclasses.field(default_factory=new_totals)
    stop: bool = False  # set by a hook to end training after this epoch (a pruned search trial)
    time_to_first_step: float | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @classmethod
    def build(cls, cfg: DictConfig, run_dir: Path, tracker: tracking.Trackers | None = None) -> "Run":
        started = time.perf_counter()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        record = new_record(cfg, "ok")
        if cfg.runtime.num_threads:
            torch.set_num_threads(int(cfg.runtime.num_threads))
        device = select_device(cfg.runtime.device)
        record.device = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
        seed_everything(int(cfg.seed))

        # Tricks first: a combination that cannot run fails before any data is read.
        tricks = build_tricks(cfg.tricks, cfg.model)
        data = build_data(cfg.data, Path(cfg.paths.cache))
        model = build_model(cfg.model, len(data.classes), cfg.data.image_size)
        model = apply_model_tricks(model, tricks, cfg.model.name)
        model = prepare_model(model, device, cfg.runtime)
        # The module the loop calls: DDP over `model` on several processes (ablate/distributed.py).
        train_model = distributed.wrap(model, device, cfg.runtime.distributed)
        record.distributed = distributed.describe()
        reset_peak_memory(device)

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = instantiate(cfg.train.optimizer)(params)
        steps_per_epoch = math.ceil(len(data.train) / cfg.data.batch_size)
        total_steps = cfg.train.epochs * steps_per_epoch
        factor = lr_factor(lr_schedule(cfg.train.schedule, total_steps), tricks, total_steps)
        scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.train.amp
                                      and not torch.cuda.is_bf16_supported())
        run = cls(cfg=cfg, run_dir=run_dir, record=record, tracker=tracker or tracking.Trackers([]),
                  device=device, autocast=autocast_for(device, cfg.train.amp), tricks=tricks, data=data,
                  model=model, train_model=train_model, params=params, optimizer=optimizer,
                  scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, factor), scaler=scaler,
                  label_offset=label_offset(cfg.model.family), steps_per_epoch=steps_per_epoch,
                  total_steps=total_steps, started=started)
        if cfg.runtime.checkpoint:
            run.resume(load_checkpoint(run.checkpoint_path, record.config_hash, record.code, cfg.runtime.reuse))
        return run

    def resume(self, state: dict[str, Any] | None) -> None:
        """Where a checkpoint left off (ablate/checkpoint.py): weights, optimizer, schedule, scaler,
        the tricks' states, the curve and the timers; nothing without one."""
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.first_epoch, self.step = state["epoch"] + 1, state["step"]
        for trick in self.tricks:
            trick.load_state_dict(state.get("tricks", {}).get(trick.name, {}))
        # Totals a checkpoint of an older version lacks start at zero.
        self.record.curve, self.totals = state["curve"], {**self.totals, **state["totals"]}
        log.info("resuming from %s after epoch %d", self.checkpoint_path, state["epoch"] + 1)

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """The checkpoint after `epoch` (counted from 0): what `resume` reads."""
        return {"epoch": epoch, "step": self.step, "config_hash": self.record.config_hash,
                "code_fingerprint": self.record.code["fingerprint"],
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "curve": self.record.curve, "totals": self.totals,
                "tricks": {t.name: t.state_dict() for t in self.tricks}}

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
