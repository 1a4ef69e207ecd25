"""Hand-off to experiment trackers: a run's losses, LR, val mAP and final metrics as TensorBoard
event files in its folder (`logger=tensorboard`) and as an MLflow run (`logger=mlflow`).

Off by default (`logger: none`). The `logger` section is not part of the config hash and this module
is not part of the code fingerprint: a tracker decides no number of the run; it only copies what the
record holds (the per-step `loss`, `lr` and the epoch points of `curve`, `metrics`, `timings`...), plus
the per-step loss parts, which the record keeps only as epoch means.

What train.py calls, in order: `start` (once the checkpoint to resume from is known), `log_step`
after each logged step, `log_epoch` at each epoch's end, `log_final` before the record is written;
`open_trackers` (run_and_record) closes them however the run ends. Every scalar is logged against the
global step, so steps and epochs share one axis.

A resumed run (started again, it finds last.pt) appends without duplicating steps: TensorBoard's
writer gets `purge_step` = the checkpoint's step + 1, so TensorBoard's reader drops what the killed
part logged after the checkpoint (its events stay on disk, hidden); the MLflow run whose id the run
folder keeps (mlflow_run.json) is continued, and a metric is not logged again at a step it already has.

Libraries imported only when selected (the `tracking` extra): tensorboard, mlflow-skinny.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import MissingExtraError, UserInputError
from .results import HASHED_SECTIONS, atomic_write

EXTRA = "tracking"
MLFLOW_RUN_FILE = "mlflow_run.json"
# Keys of a curve point that are no scalar to track (the x-axis, or logged under another name).
POINT_KEYS = ("epoch", "step", "epoch_loss", "val_mAP")


def _missing(library: str, logger: str) -> MissingExtraError:
    return MissingExtraError(f"logger={logger} needs {library}, which is not installed: "
                             f"pip install -e '.[{EXTRA}]'")


def _finite(scalars: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite values (NaN, a missing FLOP count... are left out, not logged as 0)."""
    out = {}
    for key, value in scalars.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


# ---------------------------------------------------------------- what is logged


def step_scalars(loss: float, losses: Mapping[str, Any], lr: float) -> dict[str, float]:
    """After a logged step: the total loss (the curve's `loss`), each loss part, the LR."""
    parts = {f"train/{k}": float(v.item() if hasattr(v, "item") else v) for k, v in losses.items()}
    return _finite({"train/loss": loss, **parts, "train/lr": lr})


def epoch_scalars(point: Mapping[str, Any]) -> dict[str, float]:
    """At an epoch's end: its mean loss and loss parts (the curve's epoch point), val mAP when evaluated."""
    scalars = {"epoch/epoch": point["epoch"], "epoch/loss": point["epoch_loss"],
               **{f"epoch/{k}": v for k, v in point.items() if k not in POINT_KEYS}}
    if "val_mAP" in point:
        scalars["val/mAP"] = point["val_mAP"]
    return _finite(scalars)


def final_scalars(record) -> dict[str, float]:
    """At the end: the 12 COCO metrics, AP per class, the final val mAP, costs and timings."""
    scalars = {**{f"metrics/{k}": v for k, v in record.metrics.items()},
               **{f"ap_per_class/{k}": v for k, v in record.per_class_ap.items()},
               **{f"timings/{k}": v for k, v in record.timings.items()},
               "costs/params": record.params, "costs/flops": record.flops,
               "costs/inference_ms_per_image": record.inference_ms_per_image,
               "costs/peak_memory_mb": record.peak_memory_mb}
    if "mAP" in record.metrics:
        scalars["val/mAP"] = record.metrics["mAP"]
    return _finite(scalars)


def identity(record) -> dict[str, str]:
    """Who the run is: the tags of an MLflow run, the text of a TensorBoard run."""
    return {"sweep": record.sweep, "variant": record.variant, "seed": str(record.seed),
            "config_hash": record.config_hash, "base_hash": record.base_hash, "tricks": ",".join(record.tricks),
            "status": record.status, "device": record.device, "git_commit": record.git_commit or ""}


def flat_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The hashed sections of a resolved config as dotted keys (MLflow params), lists as text."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)

    for section in HASHED_SECTIONS:
        if section in config:
            walk(section, config[section])
    return out


def final_step(record) -> int:
    return int(record.curve[-1]["step"]) if record.curve else 0


# ---------------------------------------------------------------- the trackers


class Tracker:
    """One backend. `write` takes a step's scalars; `begin` and `end` open and close the run."""

    def begin(self, record, resume_step: int) -> None:
        raise NotImplementedError

    def write(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def end(self, status: str) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    def __init__(self, cfg: Mapping[str, Any], run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(run_dir) / str(cfg["subdir"])
        self.flush_secs = int(cfg["flush_secs"])
        self.writer = None

    def begin(self, record, resume_step: int) -> None:
        # Event files of an earlier start: the reader drops their steps from the purge step on, those a
        # resumed run logs again (resume_step + 1), or all of them for a run trained again from the start.
        earlier = self.log_dir.is_dir() and any(self.log_dir.glob("events.out.tfevents.*"))
        purge_step = (resume_step + 1 if resume_step else 0) if earlier else None
        self.writer = self._writer_class(str(self.log_dir), purge_step=purge_step, flush_secs=self.flush_secs)
        if not resume_step:
            self.writer.add_text("run", "\n".join(f"    {k}: {v}" for k, v in identity(record).items()), 0)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def end(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes


# A record's status as an MLflow run's end state: a trial the search's pruner stopped on purpose
# is KILLED (MLflow's "stopped by the user"), not FAILED; failed and diverged runs are FAILED.
MLFLOW_STATUS = {"ok": "FINISHED", "pruned": "KILLED"}


class MlflowTracker(Tracker):
    def __init__(self, cfg: Mapping[str, Any], run_dir: Path):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow (mlflow-skinny)", "mlflow") from None
        self.run_dir = Path(run_dir)
        self.uri = tracking_uri(str(cfg["tracking_uri"]))
        if self.uri.startswith("file:") and cfg["allow_file_store"]:
            # MLflow 3 refuses its file store unless told it is wanted (MLFLOW_ALLOW_FILE_STORE).
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        self.experiment, self.run_name = str(cfg["experiment"]), str(cfg["run_name"])
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self.last_steps: dict[str, int] = {}  # per metric, the last step the MLflow run already has

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except Exception:  # a parallel job of the same sweep created it first
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _resumable_run(self) -> str | None:
        path = self.run_dir / MLFLOW_RUN_FILE
        if not path.is_file():
            return None
        kept = json.loads(path.read_text())
        if kept.get("tracking_uri") != self.uri:
            return None
        try:
            run = self.client.get_run(kept["run_id"])
        except Exception:  # deleted from the store since
            return None
        return run.info.run_id

    def begin(self, record, resume_step: int) -> None:
        from mlflow.entities import Param

        self.run_id = self._resumable_run() if resume_step else None
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            for key in self.client.get_run(self.run_id).data.metrics:
                history = self.client.get_metric_history(self.run_id, key)
                self.last_steps[key] = max(m.step for m in history)
            return
        run = self.client.create_run(self._experiment_id(), run_name=self.run_name,
                                     tags={**identity(record), "run_dir": str(self.run_dir)})
        self.run_id = run.info.run_id
        atomic_write(self.run_dir / MLFLOW_RUN_FILE,
                     lambda f: f.write(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id})))
        params = [Param(k, v) for k, v in {**flat_params(record.config), "tricks": ",".join(record.tricks),
                                           "variant": record.variant, "sweep": record.sweep}.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def write(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items() if step > self.last_steps.get(k, -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, status: str) -> None:
        if self.run_id is None:
            return
        self.client.set_tag(self.run_id, "status", status)
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FAILED"))


def tracking_uri(value: str) -> str:
    """A tracking URI as MLflow takes it; a plain path (the default, under paths.runs) made an
    absolute file: URI, so the store does not depend on the folder a job runs in."""
    if "://" in value or value.startswith(("file:", "sqlite:", "databricks")):
        return value
    return Path(value).resolve().as_uri()


BACKENDS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}


class Trackers:
    """The selected trackers (none, one or several) as one: what train.py calls."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers
        self.status = "failed"  # until log_final says otherwise

    def start(self, record, step: int) -> None:
        """Open the runs; `step` is the checkpoint's step when the run resumes, else 0."""
        for tracker in self.trackers:
            tracker.begin(record, step)

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.write(step, scalars)

    def log_step(self, step: int, loss: float, losses: Mapping[str, Any], lr: float) -> None:
        if self.trackers:
            self._write(step, step_scalars(loss, losses, lr))

    def log_epoch(self, point: Mapping[str, Any]) -> None:
        if self.trackers:
            self._write(int(point["step"]), epoch_scalars(point))

    def log_final(self, record) -> None:
        self.status = record.status
        if self.trackers:
            self._write(final_step(record), final_scalars(record))

    def close(self, failed: bool = False) -> None:
        for tracker in self.trackers:
            tracker.end("failed" if failed else self.status)


@contextlib.contextmanager
def open_trackers(cfg, run_dir: Path) -> Iterator[Trackers]:
    """The trackers `cfg.logger` selects (a missing library fails here, before training), closed and
    flushed however the run ends: a failed run's MLflow run is marked FAILED."""
    selected = dict(cfg.get("logger") or {})
    unknown = sorted(set(selected) - set(BACKENDS))
    if unknown:
        raise UserInputError(f"logger={','.join(unknown)}: no such tracker (conf/logger/); "
                             f"choose none, {', '.join(BACKENDS)}")
    trackers = Trackers([BACKENDS[name](selected[name], Path(run_dir)) for name in selected])
    try:
        yield trackers
    except BaseException:
        trackers.close(failed=True)
        raise
    trackers.close()
