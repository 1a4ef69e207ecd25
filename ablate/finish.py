"""The end of a run: evaluate the weights the tricks pick, check the run's health, measure its
costs (latency, FLOPs, parameters, memory, timings) and write its record (rank 0 alone).
"""
from __future__ import annotations

import logging
import math
import resource
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from . import distributed
from .bootstrap import map_standard_error
from .data import make_loader
from .evaluate import coco_metrics, count_flops, measure_latency, predict
from .health import assess
from .models import count_parameters, label_offset
from .results import RunRecord, points, proc_status, write_record

log = logging.getLogger("ablate.train")


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
        log.warning("the bootstrap's matching gives mAP %s where COCOeval gives %s: mAP_se (%s) is the "
                    "standard error of another mAP", points(full, 4), points(mAP, 4), points(se, 2))
    return se


_CLEAR_REFS = Path("/proc/self/clear_refs")
_peak_is_the_runs = False  # whether reset_peak_memory could start the peak at this run


def reset_peak_memory(device: torch.device) -> None:
    """Start this run's peak memory at what is in use now. On the CPU the peak is the process's resident
    peak (VmHWM), which would otherwise keep an earlier run's: the basic launcher trains every run of a
    sweep in one process, joblib's workers several each. Linux resets it by writing 5 to clear_refs; where
    that cannot be done, peak_memory_mb reads the process's lifetime peak."""
    global _peak_is_the_runs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        _peak_is_the_runs = True
        return
    try:
        _CLEAR_REFS.write_text("5")
        _peak_is_the_runs = proc_status("VmHWM") is not None
    except OSError:
        _peak_is_the_runs = False


def peak_memory_scope() -> str:
    """What peak_memory_mb measured, for record.peak_memory_scope: "run" (since reset_peak_memory) or
    "process" (the process's lifetime peak: on the CPU where the peak cannot be reset)."""
    return "run" if _peak_is_the_runs else "process"


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak memory allocated by this run. CPU: peak resident memory of the process since
    reset_peak_memory (VmHWM on Linux; elsewhere the process's lifetime peak, ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = proc_status("VmHWM")  # kB
    if peak is not None:
        return int(peak) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def finish(run) -> RunRecord:
    """Evaluate (a run still ok), measure, record; returns the record, written to run_dir/result.json."""
    cfg, record = run.cfg, run.record
    model = run.model
    if record.status == "ok" and distributed.is_primary():  # evaluated and recorded by rank 0
        t_eval = time.perf_counter()
        model = evaluated(model, run.tricks)
        record.metrics, record.per_class_ap, detections = evaluate_model(model, run.data, cfg, run.device,
                                                                         run.autocast)
        t_bootstrap = time.perf_counter()
        record.metrics["mAP_se"] = map_se(run.data, detections, record.metrics["mAP"], cfg.eval.bootstrap)
        run.totals["bootstrap_s"] = time.perf_counter() - t_bootstrap
        run.totals["eval_s"] += time.perf_counter() - t_eval
        check_health(run, detections)
        record.curve[-1]["val_mAP"] = record.metrics["mAP"]
        sample = [run.data.val[i][0] for i in range(min(cfg.eval.latency_images, len(run.data.val)))]
        record.inference_ms_per_image = measure_latency(model, sample, run.device, run.autocast())
        record.flops = count_flops(model, sample[0], run.device)
        log.info("val mAP %s (AP50 %s, AP75 %s)", *(points(record.metrics[k]) for k in ("mAP", "AP50", "AP75")))
    record.params = count_parameters(model)
    record.peak_memory_mb = peak_memory_mb(run.device)
    record.peak_memory_scope = peak_memory_scope()
    record.timings = timings(run.totals, time.perf_counter() - run.started, run.time_to_first_step)
    run.tracker.log_final(record)
    if distributed.is_primary():
        write_record(record, run.run_dir)
        if not cfg.runtime.keep_checkpoint:
            run.checkpoint_path.unlink(missing_ok=True)
    distributed.barrier()
    return record


def check_health(run, detections: list) -> None:
    """A detector that collapsed still ends with status ok: say so beside it (ablate/health.py)."""
    run.record.health = assess(detections, run.record.metrics, len(run.data.val), len(run.data.classes),
                               **run.cfg.eval.health)
    for warning in run.record.health:
        log.warning("run health: %s: %s", warning["code"], warning["message"])


def timings(totals: dict[str, float], wall_s: float, time_to_first_step: float | None) -> dict[str, float]:
    """record.timings from the run's totals (ablate/hooks.py: Timer)."""
    def share(seconds: float) -> float:
        return seconds / totals["train_s"] if totals["train_s"] else 0.0

    return {
        "wall_s": wall_s,
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
