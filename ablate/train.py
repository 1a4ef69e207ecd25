"""The Hydra task: one run = one variant at one seed, trained, evaluated and recorded, unless a
complete record of it can be reused.

`main(cfg)` is the Hydra task function; `train_and_evaluate(cfg, run_dir)` does the work (build
the `Run`, `fit` it, `finish` it) and returns the run's record, which it also writes to
run_dir/result.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import config as ablate_config
from . import distributed
from . import tracking
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint  # noqa: F401 (the names of before the split)
from .errors import RunInterrupted, UserInputError, reported
from .finish import evaluate_model, evaluated, finish, peak_memory_mb  # noqa: F401
from .fingerprint import code_changes, code_fingerprint, same_code, summarize
from .gpus import claimed_gpu
from .hooks import default_hooks
from .loop import Diverged, epoch_seed, fit, to_device  # noqa: F401
from .results import (RECORD_NAME, RecordError, RunRecord, config_hash, find_indexed, index_record, read_record,
                      write_record)
from .run import (Run, apply_model_tricks, autocast_for, lr_schedule, new_record, prepare_model,  # noqa: F401
                  seed_everything, select_device)
from .tricks import TrickConflictError

log = logging.getLogger("ablate.train")


def train_and_evaluate(cfg: DictConfig, run_dir: Path, tracker: tracking.Trackers | None = None) -> RunRecord:
    """One run: built from its config (ablate/run.py), fit (ablate/loop.py, with the harness's
    hooks of ablate/hooks.py), finished (ablate/finish.py: evaluated, measured, recorded)."""
    run = Run.build(cfg, run_dir, tracker)
    fit(run, default_hooks(run))
    return finish(run)


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
        run_dir = Path(distributed.from_primary(hc.runtime.output_dir))
        try:
            return run_task(cfg, run_dir, multirun)
        except KeyboardInterrupt:
            if multirun:
                raise  # the same command resumes a multirun: its folders are <variant>/seed<N>
            # A single run's folder is named after its start time: the same command would begin anew.
            raise RunInterrupted(f"relaunch the same command with hydra.run.dir={run_dir} to resume") from None


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
    # A single run's new folder holds only what Hydra wrote (.hydra/, the log) until the run starts.
    fresh = not multirun and distributed.is_primary() and holds_only_hydras(run_dir)
    with gpu as index:
        if index is not None:
            cfg.runtime.device = f"cuda:{index}"
            log.info("this job trains on GPU %d", index)
        try:
            return run_and_record(cfg, run_dir, runs_root, multirun)
        except UserInputError:
            if fresh:  # bad input ran nothing: no husk of a run left behind for `ablate report` to meet
                remove_run_folder(run_dir, runs_root)
            raise


def remove_run_folder(run_dir: Path, runs_root: Path) -> None:
    """Remove a run's folder, then the folders above it that it leaves empty, up to paths.runs."""
    shutil.rmtree(run_dir, ignore_errors=True)
    root, folder = runs_root.resolve(), run_dir.resolve().parent
    while folder == root or root in folder.parents:
        try:
            folder.rmdir()  # only an empty one
        except OSError:
            return
        folder = folder.parent


def holds_only_hydras(run_dir: Path) -> bool:
    """Whether a run folder holds nothing but what Hydra writes into it before the task (its
    .hydra/ copy of the config and the job's log)."""
    return all(p.name == ".hydra" or (p.is_file() and p.suffix == ".log") for p in Path(run_dir).iterdir())


def reused_status(cfg: DictConfig, run_dir: Path, multirun: bool) -> str | None:
    """The status of a complete record that stands for this run (written into run_dir when it
    comes from another sweep's folder), or None: the run trains."""
    config = ablate_config.to_container(cfg)
    chash, code, reuse = config_hash(config), code_fingerprint(config), str(cfg.runtime.reuse)
    done = existing_record(run_dir, chash, code, reuse)
    if done is not None:
        say_reused(cfg, f"{run_dir}: complete record found ({done.status}), not training again")
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
            say_reused(cfg, f"{run_dir}: the same config ran in {found[0]}; its record is reused, not trained again")
            return reused.status
    return None


def say_reused(cfg: DictConfig, message: str) -> None:
    """Log that a run's record is reused: a warning when trackers are selected, which see only the
    runs that train (logger=tensorboard after a sweep without it would otherwise write nothing, unsaid)."""
    trackers = sorted(cfg.get("logger") or {})
    if not trackers:
        log.info("%s", message)
        return
    log.warning("%s, so nothing is logged to %s (trackers log the runs that train; --force trains it again)",
                message, ", ".join(trackers))


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
        if not multirun and isinstance(e, UserInputError):
            raise  # bad input, nothing trained: `main` says it in one line, `run_task` removes the folder
        tail = "".join(traceback.format_exception(e)).strip().splitlines()[-15:]
        record = new_record(cfg, "failed")
        record.error = "\n".join(tail)
        if distributed.is_primary():
            write_record(record, run_dir)
        log.error("run failed: %s", e)
        if multirun:
            return "failed"
        raise
