"""The training loop: one run = one variant at one seed, trained, evaluated and recorded.

`main(cfg)` is the Hydra task function; `train_and_evaluate(cfg, run_dir)` does the work and
returns the run's record, which it also writes to run_dir/result.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import platform
import random
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

import ablate
from . import config as ablate_config
from . import distributed
from . import tracking
from .data import build_data, make_loader
from .errors import UserInputError, reported
from .bootstrap import map_standard_error
from .evaluate import coco_metrics, count_flops, measure_latency, predict
from .health import assess
from .gpus import claimed_gpu
from .models import build_model, count_parameters, label_offset
from .models.losses import LossSlotError
from .results import (RECORD_NAME, atomic_write, RecordError, RunRecord, base_hash, config_hash, find_indexed, index_record,
                      read_record, write_record)
from .fingerprint import code_changes, code_fingerprint, same_code, summarize
from .sweep.search import trial_reporter
from .tricks import BatchContext, TrickConflictError, build_tricks, lr_factor
from .tricks.base import cosine_annealing

log = logging.getLogger("ablate.train")
CHECKPOINT = "last.pt"


class Diverged(RuntimeError):
    """The loss stopped being finite."""


# ---------------------------------------------------------------- set-up


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


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed per (run seed, epoch): shuffling, flips and tricks of an epoch do not depend on
    how the run got there, so a run resumed from a checkpoint repeats the same epoch."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


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


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak memory allocated by this run. CPU: peak resident memory of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def new_record(cfg: DictConfig, status: str) -> RunRecord:
    """A record of this run's identity (config, hashes, versions), results to be filled in."""
    config = ablate_config.to_container(cfg)
    return RunRecord(status=status, variant=str(cfg.variant), sweep=str(cfg.sweep_name),
                     tricks=ablate_config.trick_names(cfg.tricks), seed=int(cfg.seed), config=config,
                     config_hash=config_hash(config), base_hash=base_hash(config), versions=versions(),
                     git_commit=git_commit(), code=code_fingerprint(config),
                     created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a run killed while saving keeps its previous checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path: Path, expected_hash: str, code: dict[str, Any] | None = None,
                    reuse: str = "same_code") -> dict[str, Any] | None:
    """The checkpoint to resume from: of this config, and of this code unless reuse is any_code
    (half a run trained by other code is trained again from the start)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: train from scratch, but say so
        log.warning("checkpoint %s cannot be read (%s): training from the start", path, e)
        return None
    if state.get("config_hash") != expected_hash:
        log.warning("checkpoint %s belongs to another config (hash %s, this run %s): training from the start",
                    path, state.get("config_hash"), expected_hash)
        return None
    if reuse == "never":
        log.info("checkpoint %s not resumed: runtime.reuse=never (--force) trains from the start", path)
        return None
    if code is not None and reuse != "any_code" and state.get("code_fingerprint") != code["fingerprint"]:
        log.warning("checkpoint %s was trained by other code (fingerprint %s, now %s): training from the start "
                    "(runtime.reuse=any_code resumes it)", path, state.get("code_fingerprint"), code["fingerprint"])
        return None
    return state


# ---------------------------------------------------------------- the loop


def apply_model_tricks(model: torch.nn.Module, tricks: list, model_name: str) -> torch.nn.Module:
    """Each trick's on_model in order; a loss slot the detector lacks, or a loss of a form its slot
    does not take, is a trick that does not fit it (not_applicable in a sweep), not a crash."""
    for trick in tricks:
        try:
            model = trick.on_model(model)
        except LossSlotError as e:
            raise TrickConflictError(f"trick '{trick.name}' does not fit model={model_name}: {e}") from None
    return model


def to_device(images, targets, device: torch.device, offset: int):
    """Float images in [0, 1] on the device; labels shifted to the model's class indices."""
    images = [img.to(device, non_blocking=True).float().div_(255) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    for t in targets:
        t["labels"] = t["labels"] - offset
    return images, targets


def train_and_evaluate(cfg: DictConfig, run_dir: Path, tracker: tracking.Trackers | None = None) -> RunRecord:
    start = time.perf_counter()
    tracker = tracker or tracking.Trackers([])  # logger=none, or a caller without trackers
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = new_record(cfg, "ok")
    chash = record.config_hash

    if cfg.runtime.num_threads:
        torch.set_num_threads(int(cfg.runtime.num_threads))
    device = select_device(cfg.runtime.device)
    record.device = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    autocast = autocast_for(device, cfg.train.amp)
    seed_everything(int(cfg.seed))

    # Tricks first: a combination that cannot run fails before any data is read.
    tricks = build_tricks(cfg.tricks, cfg.model)
    data = build_data(cfg.data, Path(cfg.paths.cache))
    model = build_model(cfg.model, len(data.classes), cfg.data.image_size)
    offset = label_offset(cfg.model.family)
    model = apply_model_tricks(model, tricks, cfg.model.name)
    model = prepare_model(model, device, cfg.runtime)
    # The module the loop calls: DDP over `model` on several processes (ablate/distributed.py).
    train_model = distributed.wrap(model, device, cfg.runtime.distributed)
    record.distributed = distributed.describe()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.train.optimizer)(params)
    steps_per_epoch = math.ceil(len(data.train) / cfg.data.batch_size)
    total_steps = cfg.train.epochs * steps_per_epoch
    factor = lr_factor(lr_schedule(cfg.train.schedule, total_steps), tricks, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.train.amp
                                  and not torch.cuda.is_bf16_supported())

    ckpt_path = run_dir / CHECKPOINT
    state = (load_checkpoint(ckpt_path, chash, record.code, cfg.runtime.reuse) if cfg.runtime.checkpoint
             else None)
    first_epoch, step = 0, 0
    totals = {"train_s": 0.0, "train_cpu_s": 0.0, "model_s": 0.0, "data_wait_s": 0.0, "batch_tricks_s": 0.0,
              "checkpoint_s": 0.0, "images": 0, "eval_s": 0.0}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        first_epoch, step = state["epoch"] + 1, state["step"]
        for trick in tricks:
            trick.load_state_dict(state.get("tricks", {}).get(trick.name, {}))
        # Totals a checkpoint of an older version lacks start at zero.
        record.curve, totals = state["curve"], {**totals, **state["totals"]}
        log.info("resuming from %s after epoch %d", ckpt_path, state["epoch"] + 1)
    tracker.start(record, step)

    # A search's trial reports each evaluation to its study and stops when pruned (ablate/sweep/search.py).
    prune = trial_reporter(cfg.runtime.get("search_trial"), cfg.train.epochs)
    time_to_first_step = None
    log.info("training %s (seed %d) on %s: %d images, %d epochs of %d steps", record.variant, record.seed,
             record.device, len(data.train), cfg.train.epochs, steps_per_epoch)
    try:
        for epoch in range(first_epoch, cfg.train.epochs):
            eseed = epoch_seed(int(cfg.seed), epoch)
            torch.manual_seed(eseed)  # the tricks' and the model's torch draws of this epoch (dropblock, samplers)
            data.train.set_epoch(eseed)  # the flips: per image, untouched by those draws (data.flip_rng)
            ctx_rng = np.random.default_rng(eseed)
            # On several processes, this process's share of each global batch of the same order.
            loader = distributed.rank_loader(data.train, cfg.data.batch_size, cfg.data.num_workers, eseed)
            model.train()
            epoch_loss, epoch_parts, n_batches = 0.0, {}, 0
            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                       disable=not (cfg.runtime.progress and sys.stderr.isatty() and distributed.is_primary()))
            t_epoch, cpu_epoch = time.perf_counter(), time.process_time()
            it = iter(loader)
            while True:
                t_wait = time.perf_counter()
                try:
                    images, targets = next(it)
                except StopIteration:
                    break
                totals["data_wait_s"] += time.perf_counter() - t_wait
                images, targets = to_device(images, targets, device, offset)
                ctx = BatchContext(epoch=epoch, num_epochs=cfg.train.epochs, step=step, total_steps=total_steps,
                                   rng=ctx_rng)
                t_tricks = time.perf_counter()
                for trick in tricks:
                    images, targets = trick.on_batch(images, targets, ctx)
                t_model = time.perf_counter()
                totals["batch_tricks_s"] += t_model - t_tricks
                with autocast():
                    losses = train_model(images, targets)
                loss = sum(losses.values())
                # Averaged over the processes (one process: the values themselves).
                value, part_values, step_images = distributed.step_values(loss, losses, len(images))
                if not math.isfinite(value):
                    raise Diverged(f"loss is {value} at epoch {epoch + 1}, step {step} "
                                   f"({ {k: round(v, 4) for k, v in part_values.items()} })")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.train.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                # Forward, backward and optimizer step: the model's own cost, the floor of a step
                # (on CUDA, kernels still queued at this point are counted in the next step's).
                totals["model_s"] += time.perf_counter() - t_model
                step += 1
                for trick in tricks:  # after the step (EMA); its cost is the harness's share
                    trick.on_step(model, step)
                totals["images"] += step_images
                if time_to_first_step is None:
                    time_to_first_step = time.perf_counter() - start
                epoch_loss += value
                n_batches += 1
                for k, v in part_values.items():
                    epoch_parts[k] = epoch_parts.get(k, 0.0) + v
                if step % cfg.train.log_every == 0:
                    record.curve.append({"epoch": epoch + 1, "step": step, "loss": value,
                                         "lr": optimizer.param_groups[0]["lr"]})
                    tracker.log_step(step, value, part_values, optimizer.param_groups[0]["lr"])
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
            bar.close()
            totals["train_s"] += time.perf_counter() - t_epoch
            # CPU seconds of this process: on a shared machine, steadier than wall time.
            totals["train_cpu_s"] += time.process_time() - cpu_epoch
            point = {"epoch": epoch + 1, "step": step, "epoch_loss": epoch_loss / max(n_batches, 1),
                     **{k: v / max(n_batches, 1) for k, v in epoch_parts.items()}}
            if (cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0 and epoch + 1 < cfg.train.epochs
                    and distributed.is_primary()):  # the others wait at the barrier below
                t_eval = time.perf_counter()
                metrics, _, _ = evaluate_model(evaluated(model, tricks), data, cfg, device, autocast)
                totals["eval_s"] += time.perf_counter() - t_eval
                point["val_mAP"] = metrics["mAP"]
            record.curve.append(point)
            tracker.log_epoch(point)
            log.info("epoch %d/%d: loss %.4f, lr %.2e%s", epoch + 1, cfg.train.epochs, point["epoch_loss"],
                     optimizer.param_groups[0]["lr"],
                     f", val mAP {point['val_mAP']:.4f}" if "val_mAP" in point else "")
            if cfg.runtime.checkpoint and distributed.is_primary():
                t_save = time.perf_counter()
                save_checkpoint(ckpt_path, {"epoch": epoch, "step": step, "config_hash": chash,
                                            "code_fingerprint": record.code["fingerprint"],
                                            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                            "curve": record.curve, "totals": totals,
                                            "tricks": {t.name: t.state_dict() for t in tricks}})
                totals["checkpoint_s"] += time.perf_counter() - t_save
            distributed.barrier()
            # The trial's pruner is asked by rank 0 (where val mAP is); every process stops with it.
            pruned = prune is not None and "val_mAP" in point and prune(epoch + 1, point["val_mAP"])
            if distributed.from_primary(pruned):
                mAP = f" (val mAP {point['val_mAP']:.4f})" if "val_mAP" in point else ""  # rank 0 evaluated
                record.status, record.error = "pruned", f"pruned after epoch {epoch + 1}{mAP}"
                log.info("search trial %s", record.error)
                break
    except Diverged as e:
        log.error("run diverged: %s", e)
        record.status, record.error = "diverged", str(e)

    if record.status == "ok" and distributed.is_primary():  # evaluated and recorded by rank 0
        t_eval = time.perf_counter()
        model = evaluated(model, tricks)
        record.metrics, record.per_class_ap, detections = evaluate_model(model, data, cfg, device, autocast)
        t_bootstrap = time.perf_counter()
        record.metrics["mAP_se"] = map_se(data, detections, record.metrics["mAP"], cfg.eval.bootstrap)
        totals["bootstrap_s"] = time.perf_counter() - t_bootstrap
        totals["eval_s"] += time.perf_counter() - t_eval
        # A detector that collapsed still ends with status ok: say so beside it.
        record.health = assess(detections, record.metrics, len(data.val), len(data.classes), **cfg.eval.health)
        for warning in record.health:
            log.warning("run health: %s: %s", warning["code"], warning["message"])
        record.curve[-1]["val_mAP"] = record.metrics["mAP"]
        sample = [data.val[i][0] for i in range(min(cfg.eval.latency_images, len(data.val)))]
        record.inference_ms_per_image = measure_latency(model, sample, device, autocast())
        record.flops = count_flops(model, sample[0], device)
        log.info("val mAP %.4f (AP50 %.4f, AP75 %.4f)", record.metrics["mAP"], record.metrics["AP50"],
                 record.metrics["AP75"])
    record.params = count_parameters(model)
    record.peak_memory_mb = peak_memory_mb(device)
    def share(seconds: float) -> float:
        return seconds / totals["train_s"] if totals["train_s"] else 0.0

    record.timings = {
        "wall_s": time.perf_counter() - start,
        "train_s": totals["train_s"],
        # CPU seconds of the process while training (steadier than wall time on a shared machine).
        "train_cpu_s": totals["train_cpu_s"],
        "eval_s": totals["eval_s"],
        "images_per_s": share(totals["images"]),
        "data_wait_s": totals["data_wait_s"],
        "data_wait_fraction": share(totals["data_wait_s"]),
        # Time in the tricks' batch hooks (MixUp, CutMix...): their overhead on the training step.
        "batch_tricks_s": totals["batch_tricks_s"],
        "batch_tricks_fraction": share(totals["batch_tricks_s"]),
        # Forward, backward and optimizer steps; the rest of train_s is the harness's share.
        "model_s": totals["model_s"],
        "harness_fraction": 1 - share(totals["model_s"]) if totals["train_s"] else 0.0,
        # Time saving the per-epoch checkpoints (not in train_s).
        "checkpoint_s": totals["checkpoint_s"],
        # The bootstrap of metrics.mAP_se (part of eval_s).
        "bootstrap_s": totals.get("bootstrap_s", 0.0),
        "time_to_first_step_s": time_to_first_step if time_to_first_step is not None else float("nan"),
    }
    tracker.log_final(record)
    if distributed.is_primary():
        write_record(record, run_dir)
        if not cfg.runtime.keep_checkpoint:
            ckpt_path.unlink(missing_ok=True)
    distributed.barrier()
    return record


def evaluated(model: torch.nn.Module, tricks: list) -> torch.nn.Module:
    """The model whose weights are evaluated: the trained one, unless a trick offers another (EMA)."""
    for trick in tricks:
        model = trick.eval_model(model)
    return model


def evaluate_model(model, data, cfg: DictConfig, device: torch.device, autocast) -> tuple[dict, dict, list]:
    """COCO metrics, AP per class and the detections (COCO format) on the val set."""
    loader = make_loader(data.val, cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    offset = label_offset(cfg.model.family)
    class_to_cat_id = {label - offset: cat for label, cat in data.label_to_cat_id.items()}
    detections = predict(model, loader, device, class_to_cat_id, autocast())
    names = {data.label_to_cat_id[k + 1]: name for k, name in enumerate(data.classes)}
    metrics, per_class = coco_metrics(data.val_coco_gt, detections, data.val.image_ids, cfg.eval.backend, names)
    return metrics, per_class, detections


def map_se(data, detections: list[dict], mAP: float, settings) -> float:
    """The bootstrap standard error of the run's mAP over its val images (eval.bootstrap)."""
    se, full = map_standard_error(data.val_coco_gt, detections, data.val.image_ids, int(settings.resamples),
                                  int(settings.seed))
    if not math.isclose(full, mAP, rel_tol=1e-6, abs_tol=1e-9):
        # The bootstrap's own matching (ablate/bootstrap.py) should give COCOeval's mAP to rounding.
        log.warning("the bootstrap's matching gives mAP %.6f where COCOeval gives %.6f: mAP_se (%.4f) is the "
                    "standard error of another mAP", full, mAP, se)
    return se


# ---------------------------------------------------------------- the Hydra task


def reusable(record: RunRecord, code: dict[str, Any], reuse: str, where: Path) -> bool:
    """Whether a complete record of this config may stand for this run: made by the same code
    (runtime.reuse=same_code, the default), by any code (any_code: said in the log), or never
    (never: `--force`)."""
    if reuse == "never":
        return False
    if same_code(record.code, code):
        return True
    changes = summarize(code_changes(record.code, code))
    if reuse == "any_code":
        log.warning("%s: reusing a record made by other code (%s), as runtime.reuse=any_code asks", where, changes)
        return True
    log.warning("%s: the record of this config was made by other code (%s): training again "
                "(runtime.reuse=any_code would reuse it)", where, changes)
    return False


def existing_record(run_dir: Path, chash: str, code: dict[str, Any] | None = None,
                    reuse: str = "same_code") -> RunRecord | None:
    """The complete record of this very config (and code, see `reusable`) in run_dir, if there is
    one. A record of another config or other code is moved aside (kept, never overwritten), with
    the checkpoint of that code beside it; a corrupt one is reported and redone."""
    path = run_dir / RECORD_NAME
    if not path.exists():
        return None
    try:
        record = read_record(path)
    except RecordError as e:
        log.warning("%s: redoing the run", e)
        path.rename(path.with_name(f"result.corrupt-{int(time.time())}.json"))
        return None
    if record.config_hash != chash:
        aside = path.with_name(f"result.{record.config_hash}.json")
        log.warning("%s holds a run of another config (hash %s); moved to %s", path, record.config_hash, aside.name)
        path.rename(aside)
        return None
    if not record.complete:
        return None
    if code is None or reusable(record, code, reuse, run_dir):
        return record
    tag = (record.code or {}).get("fingerprint") or f"old-{int(time.time())}"
    if reuse == "never":
        tag = f"forced-{int(time.time())}"
    path.rename(path.with_name(f"result.{tag}.json"))
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        ckpt.rename(ckpt.with_name(f"last.{tag}.pt"))
    log.info("%s: the earlier record and checkpoint moved to result.%s.json and last.%s.pt", run_dir, tag, tag)
    return None


def main(cfg: DictConfig) -> str:
    """Hydra task: train and evaluate one run in Hydra's output folder; returns its status.

    In a multirun a failure is recorded (status failed, with the error's last lines), tricks that
    do not fit are recorded as not_applicable, and the sweep goes on. A single run raises both; bad
    input (ablate.errors.UserInputError) ends it with one line and exit status 2."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    with contextlib.nullcontext() if multirun else reported():
        # Started by torchrun or as one of several submitit tasks: one process group, rank 0's folder.
        distributed.init_from_env(cfg)
        return run_task(cfg, Path(distributed.from_primary(hc.runtime.output_dir)), multirun)


def run_task(cfg: DictConfig, run_dir: Path, multirun: bool) -> str:
    """One run in run_dir, unless a record of it can be reused; returns its status."""
    ablate_config.check_values(cfg)
    # On several processes rank 0 alone looks (it moves records aside); the others take its answer.
    reused = distributed.from_primary(reused_status(cfg, run_dir, multirun) if distributed.is_primary() else None)
    if reused is not None:
        return reused
    runs_root = Path(cfg.paths.runs)
    gpu = contextlib.nullcontext(None)
    if (multirun and cfg.runtime.device == "auto" and torch.cuda.device_count() > 1
            and not distributed.active()):  # a process group has one GPU per process already
        # Parallel jobs (joblib, submitit_local) on a machine with several GPUs: one GPU each.
        gpu = claimed_gpu(runs_root / ".gpus", torch.cuda.device_count())
    with gpu as index:
        if index is not None:
            cfg.runtime.device = f"cuda:{index}"
            log.info("this job trains on GPU %d", index)
        return run_and_record(cfg, run_dir, runs_root, multirun)


def reused_status(cfg: DictConfig, run_dir: Path, multirun: bool) -> str | None:
    """The status of a complete record that stands for this run (written into run_dir when it
    comes from another sweep's folder), or None: the run trains."""
    config = ablate_config.to_container(cfg)
    chash, code, reuse = config_hash(config), code_fingerprint(config), str(cfg.runtime.reuse)
    done = existing_record(run_dir, chash, code, reuse)
    if done is not None:
        log.info("%s: complete record found (%s), not training again", run_dir, done.status)
        return done.status
    runs_root = Path(cfg.paths.runs)
    if multirun:
        # The same variant in another design or sweep (the baseline above all) is trained once.
        found = find_indexed(runs_root, chash)
        if (found is not None and found[0].resolve() != run_dir.resolve()
                and reusable(found[1], code, reuse, found[0])):
            reused = dataclasses.replace(found[1], variant=str(cfg.variant), sweep=str(cfg.sweep_name),
                                         config=ablate_config.to_container(cfg), reused_from=str(found[0]))
            write_record(reused, run_dir)
            log.info("%s: the same config ran in %s; its record is reused, not trained again", run_dir, found[0])
            return reused.status
    return None


def run_and_record(cfg: DictConfig, run_dir: Path, runs_root: Path, multirun: bool) -> str:
    """Train and evaluate; in a multirun, a failure or a misfit is recorded and the sweep goes on."""
    try:
        # Trackers on rank 0 only, as the record (ablate/distributed.py).
        trackers = (tracking.open_trackers(cfg, run_dir) if distributed.is_primary()
                    else contextlib.nullcontext(tracking.Trackers([])))
        with trackers as tracker:  # closed however the run ends
            record = train_and_evaluate(cfg, run_dir, tracker)
        if record.complete and distributed.is_primary():
            index_record(runs_root, record, run_dir)
        return record.status
    except TrickConflictError as e:
        if not multirun:
            raise  # bad input, not a crash: `main` says what to change in one line
        record = new_record(cfg, "not_applicable")
        record.error = str(e)
        if distributed.is_primary():
            write_record(record, run_dir)
        log.warning("not applicable: %s", e)
        return record.status
    except Exception as e:
        tail = "".join(traceback.format_exception(e)).strip().splitlines()[-15:]
        record = new_record(cfg, "failed")
        record.error = "\n".join(tail)
        if distributed.is_primary():
            write_record(record, run_dir)
        if multirun or not isinstance(e, UserInputError):  # bad input: `main` says it in one line
            log.error("run failed: %s", e)
        if multirun:
            return "failed"
        raise
