"""The training loop on the smoke profile: determinism, resume, divergence, every baseline, real data."""
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import ablate.hooks as hooks_mod  # the checkpointer hook saves through its module's save_checkpoint
from ablate.config import conf_dir
from ablate.results import COCO_METRICS, read_record
from ablate.train import CHECKPOINT, lr_schedule, train_and_evaluate

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"


def make_cfg(cache, *overrides):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=["profile=smoke", f"paths.cache={cache}", *overrides])


def test_same_seed_same_result_other_seed_other_result(tmp_path, shapes_cache):
    a = train_and_evaluate(make_cfg(shapes_cache, "seed=3", "train.epochs=2"), tmp_path / "a")
    b = train_and_evaluate(make_cfg(shapes_cache, "seed=3", "train.epochs=2"), tmp_path / "b")
    c = train_and_evaluate(make_cfg(shapes_cache, "seed=4", "train.epochs=2"), tmp_path / "c")
    assert a.status == b.status == "ok"
    assert [p["loss"] for p in a.curve if "loss" in p] == [p["loss"] for p in b.curve if "loss" in p]
    assert a.metrics == b.metrics
    assert [p["loss"] for p in a.curve if "loss" in p] != [p["loss"] for p in c.curve if "loss" in p]


def test_record_holds_what_the_report_needs(tmp_path, shapes_cache):
    rec = train_and_evaluate(make_cfg(shapes_cache, "tricks=[warmup]"), tmp_path)
    on_disk = read_record(tmp_path / "result.json")
    assert on_disk == rec
    assert rec.tricks == ["warmup"] and rec.variant == "warmup" and rec.seed == 0
    assert set(rec.metrics) == {*COCO_METRICS, "mAP_se"}
    assert 0 < rec.metrics["mAP_se"] < 1  # 8 val images: their mAP is far from certain
    assert set(rec.per_class_ap) == {"circle", "square", "triangle", "cross", "ring"}
    assert rec.params > 0 and rec.flops > 0 and rec.inference_ms_per_image > 0
    for key in ("wall_s", "train_s", "train_cpu_s", "eval_s", "images_per_s", "data_wait_s", "data_wait_fraction",
                "batch_tricks_s", "batch_tricks_fraction", "model_s", "harness_fraction", "checkpoint_s",
                "bootstrap_s", "time_to_first_step_s"):
        assert rec.timings[key] >= 0, key
    t = rec.timings
    # The step's parts (data wait, tricks' hooks, model) lie within the training time.
    assert t["data_wait_s"] + t["batch_tricks_s"] + t["model_s"] <= t["train_s"]
    assert t["model_s"] > 0 and t["harness_fraction"] == pytest.approx(1 - t["model_s"] / t["train_s"])
    assert t["checkpoint_s"] > 0  # checkpoints are on in this run
    assert rec.config["tricks"]["warmup"]["mode"] == "linear"
    assert rec.versions["torch"] == torch.__version__
    assert (tmp_path / CHECKPOINT).is_file()


def test_a_run_killed_after_an_epoch_resumes_from_its_checkpoint_to_the_same_result(tmp_path, shapes_cache,
                                                                                      monkeypatch):
    overrides = ("train.epochs=3", "tricks=[mixup]")
    whole = train_and_evaluate(make_cfg(shapes_cache, *overrides), tmp_path / "whole")

    real_save = hooks_mod.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 1:  # killed right after the second epoch's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(hooks_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(make_cfg(shapes_cache, *overrides), tmp_path / "killed")
    assert not (tmp_path / "killed" / "result.json").exists()
    monkeypatch.setattr(hooks_mod, "save_checkpoint", real_save)

    resumed = train_and_evaluate(make_cfg(shapes_cache, *overrides), tmp_path / "killed")
    assert resumed.metrics == whole.metrics
    assert [p.get("loss") for p in resumed.curve] == [p.get("loss") for p in whole.curve]


def test_a_resumed_ema_run_ends_with_the_same_average(tmp_path, shapes_cache, monkeypatch):
    """The EMA's state rides in the checkpoint: killed after epoch 2 and resumed, the evaluated
    (averaged) weights, so the metrics, are the whole run's."""
    overrides = ("train.epochs=3", "tricks=[ema]", "tricks.ema.tau=1")
    whole = train_and_evaluate(make_cfg(shapes_cache, *overrides), tmp_path / "whole")
    real_save = hooks_mod.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 1:
            assert state["tricks"]["ema"]["updates"] > 0
            raise KeyboardInterrupt

    monkeypatch.setattr(hooks_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(make_cfg(shapes_cache, *overrides), tmp_path / "killed")
    monkeypatch.setattr(hooks_mod, "save_checkpoint", real_save)
    resumed = train_and_evaluate(make_cfg(shapes_cache, *overrides), tmp_path / "killed")
    assert resumed.metrics == whole.metrics


def test_a_trick_drawing_from_torch_leaves_its_baseline_flips(tmp_path, shapes_cache, monkeypatch):
    """DropBlock draws its blocks from torch's global RNG between the batches; the training images a
    run reads (order and flips) are still its baseline's at the same seed (data.flip_rng=sample)."""
    from ablate.data import DetectionDataset

    reads: dict[str, list] = {}
    real = DetectionDataset.__getitem__

    def recording(self, i):
        image, target = real(self, i)
        if self.train:
            reads[current].append((target["image_id"], target["boxes"].clone()))
        return image, target

    monkeypatch.setattr(DetectionDataset, "__getitem__", recording)
    for current in ("[]", "[dropblock]"):
        reads[current] = []
        rec = train_and_evaluate(make_cfg(shapes_cache, f"tricks={current}", "train.epochs=2", "seed=1"),
                                 tmp_path / current)
        assert rec.status == "ok"
    base, drop = reads["[]"], reads["[dropblock]"]
    assert len(base) == 2 * 16 and [i for i, _ in base] == [i for i, _ in drop]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(base, drop))


def test_an_evaluation_during_training_changes_no_number_of_the_training(tmp_path, shapes_cache):
    """train.eval_every evaluates in the middle of training (its loader draws a seed from torch's global
    RNG); DropBlock draws from that RNG after it. The loop seeds each epoch's draws, so the losses and the
    final metrics are those of the run evaluated only at the end: a curve of val mAP is free of side effects."""
    runs = {every: train_and_evaluate(make_cfg(shapes_cache, "tricks=[dropblock]", "train.epochs=3",
                                               f"train.eval_every={every}"), tmp_path / str(every))
            for every in (0, 1)}
    assert [p for p in runs[1].curve if "val_mAP" in p and p["epoch"] < 3]  # it did evaluate mid-run
    losses = {k: [p["loss"] for p in r.curve if "loss" in p] for k, r in runs.items()}
    assert losses[0] == losses[1]
    assert runs[0].metrics == runs[1].metrics


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, shapes_cache):
    train_and_evaluate(make_cfg(shapes_cache, "train.epochs=1"), tmp_path)
    (tmp_path / "result.json").unlink()
    rec = train_and_evaluate(make_cfg(shapes_cache, "train.epochs=2"), tmp_path)
    assert [p["epoch"] for p in rec.curve if "epoch_loss" in p] == [1, 2]


def test_non_finite_loss_ends_the_run_as_diverged_not_as_an_exception(tmp_path, shapes_cache):
    cfg = make_cfg(shapes_cache, "train.epochs=3", "train.optimizer.lr=1e30", "train.clip_grad_norm=null")
    rec = train_and_evaluate(cfg, tmp_path)
    assert rec.status == "diverged"
    assert "loss is" in rec.error and rec.metrics == {}
    assert read_record(tmp_path / "result.json").status == "diverged"


@pytest.mark.parametrize("model", ["retinanet", "faster_rcnn"])
def test_other_baselines_train_and_evaluate(tmp_path, shapes_cache, model):
    rec = train_and_evaluate(make_cfg(shapes_cache, f"model={model}", "tricks=[mixup,warmup]"), tmp_path)
    assert rec.status == "ok" and set(rec.metrics) == {*COCO_METRICS, "mAP_se"}
    assert rec.config["model"]["name"] == model


def test_incompatible_tricks_stop_before_training(tmp_path, shapes_cache, monkeypatch):
    from ablate.tricks import Trick, TrickConflictError

    class TwoStageOnly(Trick):
        fits = ("two_stage",)

    monkeypatch.setattr("ablate.tricks.schedule.warmup.Warmup.fits", TwoStageOnly.fits)
    with pytest.raises(TrickConflictError, match="'warmup' does not fit model=fcos"):
        train_and_evaluate(make_cfg(shapes_cache, "tricks=[warmup]"), tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()


def test_main_schedules():
    cos = lr_schedule(make_cfg("/tmp", "train.schedule.name=cosine").train.schedule, 100)
    assert cos(0) == pytest.approx(1.0) and cos(100) == pytest.approx(0.05)
    assert cos(50) == pytest.approx(0.05 + 0.95 * 0.5)
    # the default: mmdetection's 1x shape, x0.1 at 8/12 and 11/12 of the run (0.667, 0.917)
    cfg = make_cfg("/tmp").train.schedule
    assert cfg.name == "step"
    step = lr_schedule(cfg, 1200)
    assert [step(t) for t in (0, 800, 801, 1100, 1101, 1199)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.realdata
@pytest.mark.skipif(not BCCD.is_dir(), reason=f"real data set not found at {BCCD}")
def test_bccd_trains_a_few_steps_and_evaluates(tmp_path):
    cfg = make_cfg(tmp_path / "cache", "data=coco", f"data.root={BCCD}", "data.image_size=160",
                   "data.max_train_images=16", "data.max_val_images=8")
    rec = train_and_evaluate(cfg, tmp_path / "run")
    assert rec.status == "ok"
    assert set(rec.per_class_ap) == {"RBC", "WBC", "Platelets"}
    assert all(0.0 <= rec.metrics[k] <= 1.0 for k in ("mAP", "AP50", "AP75"))
    assert not math.isnan(rec.inference_ms_per_image)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the resident peak is reset on Linux only")
def test_a_runs_cpu_peak_memory_is_its_own_not_an_earlier_runs_of_the_same_process():
    # The basic launcher trains a sweep's runs in one process: the process's resident peak would carry a
    # bigger earlier run's into every later record. 300 MB touched and freed, then a run's peak starts.
    from ablate.finish import peak_memory_mb, peak_memory_scope, reset_peak_memory
    cpu = torch.device("cpu")
    big = torch.ones(300 * 2**20 // 4)
    before = peak_memory_mb(cpu)
    del big
    reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < before - 250
    assert peak_memory_scope() == "run"  # the record says its peak is its own (the report shows it)
