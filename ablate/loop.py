"""The training loop alone: batches, the tricks' batch hooks, forward, backward, step, and calls
to hooks (ablate/hooks.py) for everything else the harness does around it.

A hook has the methods of `Hook`, each given the `Run` (ablate/run.py); the loop calls them in
the order of the list it is given:

    before_train                     once, before the first epoch (or the first after a resume)
    before_epoch(epoch)              the epoch's seed is set, its loader made
    after_loss(step)                 the step's losses are known, before backward (divergence)
    after_step(step)                 after the optimizer and scheduler step (EMA, timers, the curve)
    after_epoch(epoch, point)        `point` is the epoch's curve point, which hooks fill in order
    after_train                      once, however the loop ended (not on an exception)

A hook that sets `run.stop` ends training after the epoch (a pruned search trial); `Diverged`,
raised by a hook, ends it with status diverged.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from . import distributed
from .tricks.base import BatchContext


class Diverged(RuntimeError):
    """The loss stopped being finite."""


@dataclasses.dataclass
class Step:
    """One training step, as the hooks see it."""
    epoch: int  # counted from 0
    step: int  # optimizer steps taken before this one
    loss: torch.Tensor
    value: float  # the loss, averaged over processes
    parts: dict[str, float]  # each loss term, averaged over processes
    images: int  # images of the global batch
    data_wait_s: float  # waiting for the batch
    tricks_s: float  # the tricks' batch hooks
    model_s: float = 0.0  # forward, backward and optimizer step


class Hook:
    """A hook of the loop: override the events it needs (see the module's docstring)."""

    def before_train(self, run) -> None: ...

    def before_epoch(self, run, epoch: int) -> None: ...

    def after_loss(self, run, step: Step) -> None: ...

    def after_step(self, run, step: Step) -> None: ...

    def after_epoch(self, run, epoch: int, point: dict[str, Any]) -> None: ...

    def after_train(self, run) -> None: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed per (run seed, epoch): shuffling, flips and tricks of an epoch do not depend on
    how the run got there, so a run resumed from a checkpoint repeats the same epoch."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


def to_device(images, targets, device: torch.device, offset: int):
    """Float images in [0, 1] on the device; labels shifted to the model's class indices."""
    images = [img.to(device, non_blocking=True).float().div_(255) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    for t in targets:
        t["labels"] = t["labels"] - offset
    return images, targets


def fit(run, hooks: list[Hook]) -> None:
    """Train `run` from its first epoch to the last (or until a hook stops it); a non-finite loss
    ends it with status diverged."""
    def call(event: str, *args) -> None:
        for hook in hooks:
            getattr(hook, event)(run, *args)

    cfg = run.cfg
    call("before_train")
    try:
        for epoch in range(run.first_epoch, cfg.train.epochs):
            eseed = epoch_seed(int(cfg.seed), epoch)
            torch.manual_seed(eseed)  # the tricks' and the model's torch draws of this epoch (dropblock, samplers)
            run.data.train.set_epoch(eseed)  # the flips: per image, untouched by those draws (data.flip_rng)
            ctx_rng = np.random.default_rng(eseed)
            # On several processes, this process's share of each global batch of the same order.
            loader = distributed.rank_loader(run.data.train, cfg.data.batch_size, cfg.data.num_workers, eseed)
            run.model.train()
            call("before_epoch", epoch)
            for images, targets, waited in timed(loader):
                ctx = BatchContext(epoch=epoch, num_epochs=cfg.train.epochs, step=run.step,
                                   total_steps=run.total_steps, rng=ctx_rng)
                step = train_step(run, images, targets, ctx, waited, lambda s: call("after_loss", s))
                call("after_step", step)
            call("after_epoch", epoch, {"epoch": epoch + 1, "step": run.step})
            if run.stop:
                break
    except Diverged as e:
        run.record.status, run.record.error = "diverged", str(e)
    call("after_train")


def timed(loader):
    """The loader's batches, each with the seconds spent waiting for it."""
    it = iter(loader)
    while True:
        t_wait = time.perf_counter()
        try:
            images, targets = next(it)
        except StopIteration:
            return
        yield images, targets, time.perf_counter() - t_wait


def train_step(run, images, targets, ctx: BatchContext, waited: float, after_loss) -> Step:
    """One step: the batch on the device, the tricks' on_batch, forward, `after_loss`, backward,
    optimizer and scheduler step."""
    images, targets = to_device(images, targets, run.device, run.label_offset)
    t_tricks = time.perf_counter()
    for trick in run.tricks:
        images, targets = trick.on_batch(images, targets, ctx)
    t_model = time.perf_counter()
    with run.autocast():
        losses = run.train_model(images, targets)
    loss = sum(losses.values())
    # Averaged over the processes (one process: the values themselves).
    value, parts, step_images = distributed.step_values(loss, losses, len(images))
    step = Step(epoch=ctx.epoch, step=run.step, loss=loss, value=value, parts=parts, images=step_images,
                data_wait_s=waited, tricks_s=t_model - t_tricks)
    after_loss(step)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.train.clip_grad_norm:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, run.cfg.train.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    # Forward, backward and optimizer step: the model's own cost, the floor of a step
    # (on CUDA, kernels still queued at this point are counted in the next step's).
    step.model_s = time.perf_counter() - t_model
    run.step += 1
    return step
