"""The harness's own concerns around the loop, as hooks (ablate/loop.py: `Hook`): the tricks'
after-step hooks, divergence, timers, the progress bar, the loss curve and trackers, periodic
evaluation, checkpoints and a search trial's pruner. `default_hooks` lists them in the order the
loop calls them; the order matters only within an event (the epoch point is filled in turn).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

from tqdm import tqdm

from . import distributed
from .checkpoint import save_checkpoint
from .finish import evaluate_model, evaluated
from .loop import Diverged, Hook, Step
from .results import points
from .sweep.search import trial_reporter

log = logging.getLogger("ablate.train")


class TrickSteps(Hook):
    """Each trick's on_step after the optimizer step (EMA); its cost is the harness's share."""

    def after_step(self, run, step: Step) -> None:
        for trick in run.tricks:
            trick.on_step(run.model, run.step)


class DivergenceCheck(Hook):
    """A non-finite loss ends the run (status diverged) before it reaches the weights."""

    def after_loss(self, run, step: Step) -> None:
        if not math.isfinite(step.value):
            raise Diverged(f"loss is {step.value} at epoch {step.epoch + 1}, step {step.step} "
                           f"({ {k: round(v, 4) for k, v in step.parts.items()} })")

    def after_train(self, run) -> None:
        if run.record.status == "diverged":
            log.error("run diverged: %s", run.record.error)


class Timer(Hook):
    """run.totals: training wall and CPU seconds, the step split into data wait, the tricks' batch
    hooks and the model's forward/backward/step, images seen, and the time to the first step."""

    def before_epoch(self, run, epoch: int) -> None:
        self.t_epoch, self.cpu_epoch = time.perf_counter(), time.process_time()

    def after_step(self, run, step: Step) -> None:
        totals = run.totals
        totals["data_wait_s"] += step.data_wait_s
        totals["batch_tricks_s"] += step.tricks_s
        totals["model_s"] += step.model_s
        totals["images"] += step.images
        if run.time_to_first_step is None:
            run.time_to_first_step = time.perf_counter() - run.started

    def after_epoch(self, run, epoch: int, point: dict[str, Any]) -> None:
        run.totals["train_s"] += time.perf_counter() - self.t_epoch
        # CPU seconds of this process: on a shared machine, steadier than wall time.
        run.totals["train_cpu_s"] += time.process_time() - self.cpu_epoch


class ProgressBar(Hook):
    """A bar per epoch on an interactive terminal (runtime.progress), never in log files."""

    def before_train(self, run) -> None:
        log.info("training %s (seed %d) on %s: %d images, %d epochs of %d steps", run.record.variant,
                 run.record.seed, run.record.device, len(run.data.train), run.cfg.train.epochs, run.steps_per_epoch)

    def before_epoch(self, run, epoch: int) -> None:
        self.bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{run.cfg.train.epochs}", leave=False,
                        disable=not (run.cfg.runtime.progress and sys.stderr.isatty() and distributed.is_primary()))

    def after_step(self, run, step: Step) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{step.value:.3f}")

    def after_epoch(self, run, epoch: int, point: dict[str, Any]) -> None:
        self.bar.close()


class LossCurve(Hook):
    """The loss and LR of every train.log_every-th step in the record's curve and the trackers, and
    the epoch's mean loss and loss terms in its point."""

    def before_train(self, run) -> None:
        run.tracker.start(run.record, run.step)

    def before_epoch(self, run, epoch: int) -> None:
        self.loss, self.parts, self.batches = 0.0, {}, 0

    def after_step(self, run, step: Step) -> None:
        self.loss += step.value
        self.batches += 1
        for k, v in step.parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v
        if run.step % run.cfg.train.log_every == 0:
            run.record.curve.append({"epoch": step.epoch + 1, "step": run.step, "loss": step.value, "lr": run.lr})
            run.tracker.log_step(run.step, step.value, step.parts, run.lr)

    def after_epoch(self, run, epoch: int, point: dict[str, Any]) -> None:
        n = max(self.batches, 1)
        point["epoch_loss"] = self.loss / n
        point.update({k: v / n for k, v in self.parts.items()})


class PeriodicEval(Hook):
    """Val mAP every train.eval_every epochs (not after the last: finish evaluates it), by rank 0
    alone; the others wait at the checkpointer's barrier."""

    def after_epoch(self, run, epoch: int, point: dict[str, Any]) -> None:
        every, epochs = run.cfg.train.eval_every, run.cfg.train.epochs
        if every and (epoch + 1) % every == 0 and epoch + 1 < epochs and distributed.is_primary():
            t_eval = time.perf_counter()
            metrics, _, _ = evaluate_model(evaluated(run.model, run.tricks), run.data, run.cfg, run.device,
                                           run.autocast)
            run.totals["eval_s"] += time.perf_counter() - t_eval
            point["val_mAP"] = metrics["mAP"]


class EpochLog(Hook):
    """The epoch's point in the record's curve, the trackers and the log."""

    def after_epoch(self, run, epoch: int, point: dict[str, Any]) -> None:
        run.record.curve.append(point)
        run.tracker.log_epoch(point)
        log.info("epoch %d/%d: loss %.4f, lr %.2e%s", epoch + 1, run.cfg.train.epochs, point["epoch_loss"], run.lr,
                 f", val mAP {points(point['val_mAP'])}" if "val_mAP" in point else "")


class Checkpointer(Hook):
    """last.pt at each epoch's end (runtime.checkpoint), by rank 0; then every process meets."""

    def after_epoch(self, run, epoch: int, point: dict[str, Any]) -> None:
        if run.cfg.runtime.checkpoint and distributed.is_primary():
            t_save = time.perf_counter()
            save_checkpoint(run.checkpoint_path, run.state_dict(epoch))
            run.totals["checkpoint_s"] += time.perf_counter() - t_save
        distributed.barrier()


class SearchPruner(Hook):
    """A search trial reports each val mAP to its study and stops when pruned (ablate/sweep/search.py);
    rank 0 asks (it has val mAP), every process stops with it."""

    def __init__(self, prune):
        self.prune = prune

    def after_epoch(self, run, epoch: int, point: dict[str, Any]) -> None:
        pruned = self.prune is not None and "val_mAP" in point and self.prune(epoch + 1, point["val_mAP"])
        if distributed.from_primary(pruned):
            mAP = f" (val mAP {points(point['val_mAP'])})" if "val_mAP" in point else ""  # rank 0 evaluated
            run.record.status, run.record.error = "pruned", f"pruned after epoch {epoch + 1}{mAP}"
            log.info("search trial %s", run.record.error)
            run.stop = True


def default_hooks(run) -> list[Hook]:
    """The harness's hooks of a run, in the order the loop calls them."""
    return [TrickSteps(), DivergenceCheck(), Timer(), ProgressBar(), LossCurve(), PeriodicEval(), EpochLog(),
            Checkpointer(), SearchPruner(trial_reporter(run.cfg.runtime.get("search_trial"), run.cfg.train.epochs))]
