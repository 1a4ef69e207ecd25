"""Tracking hand-off (ablate/tracking.py): smoke runs with logger=tensorboard and logger=mlflow, read
back with the libraries' own readers and compared with the run's record."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import ablate.hooks as hooks_mod  # the checkpointer hook saves through its module's save_checkpoint
import ablate.train as train_mod
from ablate.config import compose, register_resolvers
from ablate.errors import MissingExtraError, UserInputError
from ablate.fingerprint import code_fingerprint
from ablate.results import COCO_METRICS, base_hash, config_hash, read_record
from ablate.tracking import MLFLOW_RUN_FILE, MlflowTracker, open_trackers
from conftest import ablate, paths

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

SMOKE = ("profile=smoke", "train.epochs=2", "train.eval_every=1")  # 2 epochs of 4 steps, evaluated after each


@pytest.fixture
def dirs(tmp_path, shapes_cache, monkeypatch):
    # MLflow 3 opens its file store only with this set; the tracker sets it in its own process.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return {"runs": tmp_path / "runs", "reports": tmp_path / "reports", "env": {"ABLATE_CACHE": str(shapes_cache)}}


def trained(dirs, *overrides) -> Path:
    """`ablate train` of the smoke profile with these overrides; its run folder."""
    res = ablate("train", *SMOKE, *overrides, *paths(dirs), env=dirs["env"])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (record,) = Path(dirs["runs"]).glob("*/*/*/result.json")
    return record.parent


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def step_points(record) -> list[dict]:
    return [p for p in record.curve if "loss" in p]


def epoch_points(record) -> list[dict]:
    return [p for p in record.curve if "epoch_loss" in p]


def test_tensorboard_event_files_hold_the_records_curve_and_metrics(dirs):
    run_dir = trained(dirs, "logger=tensorboard")
    record = read_record(run_dir / "result.json")
    assert record.status == "ok" and not (run_dir / MLFLOW_RUN_FILE).exists()
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    approx = lambda v: pytest.approx(v, rel=1e-6, abs=1e-7)  # noqa: E731 (event files keep float32)

    # Every logged step: the curve's loss and LR (log_every=1: steps 1..8).
    steps = step_points(record)
    assert [s for s, _ in scalars(events, "train/loss")] == [p["step"] for p in steps] == list(range(1, 9))
    assert [v for _, v in scalars(events, "train/loss")] == [approx(p["loss"]) for p in steps]
    assert [v for _, v in scalars(events, "train/lr")] == [approx(p["lr"]) for p in steps]
    # The loss parts FCOS returns add up to the total, step by step.
    parts = ("classification", "bbox_regression", "bbox_ctrness")
    by_part = {k: [v for _, v in scalars(events, f"train/{k}")] for k in parts}
    for i, (_, total) in enumerate(scalars(events, "train/loss")):
        assert sum(by_part[k][i] for k in parts) == pytest.approx(total, rel=1e-5)
    # Each epoch's point: its mean loss and parts (the mean of its 4 steps), at the epoch's last step.
    epochs = epoch_points(record)
    assert scalars(events, "epoch/loss") == [(p["step"], approx(p["epoch_loss"])) for p in epochs]
    for k in parts:
        assert scalars(events, f"epoch/{k}") == [(p["step"], approx(p[k])) for p in epochs]
        assert [v for _, v in scalars(events, f"epoch/{k}")] == [
            approx(sum(by_part[k][4 * e:4 * e + 4]) / 4) for e in range(2)]
    # val mAP after epoch 1 (eval_every=1) and at the end (the final evaluation).
    assert scalars(events, "val/mAP") == [(4, approx(epochs[0]["val_mAP"])), (8, approx(record.metrics["mAP"]))]
    # The final metrics and costs, at the last step.
    for name in COCO_METRICS:
        assert scalars(events, f"metrics/{name}") == [(8, approx(record.metrics[name]))]
    for name, value in record.per_class_ap.items():
        assert scalars(events, f"ap_per_class/{name}") == [(8, approx(value))]
    assert scalars(events, "timings/images_per_s") == [(8, approx(record.timings["images_per_s"]))]
    assert scalars(events, "costs/params") == [(8, approx(record.params))]
    assert scalars(events, "costs/flops") == [(8, approx(record.flops))]
    assert scalars(events, "costs/inference_ms_per_image") == [(8, approx(record.inference_ms_per_image))]
    text = events.Tensors("run/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"config_hash: {record.config_hash}" in text and "variant: baseline" in text
    # The logger is no part of the run's identity: the record's hash is that of the config without it.
    assert record.config_hash == config_hash(record.config)
    assert record.config["logger"] == {"tensorboard": {"subdir": "tensorboard", "flush_secs": 30}}


def test_mlflow_run_holds_tags_params_and_the_metric_history(dirs):
    run_dir = trained(dirs, "logger=mlflow", "tricks=[warmup]", "sweep_name=tracked")
    record = read_record(run_dir / "result.json")
    assert record.status == "ok" and not (run_dir / "tensorboard").exists()
    client = MlflowClient(tracking_uri=(Path(dirs["runs"]) / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert json.loads((run_dir / MLFLOW_RUN_FILE).read_text())["run_id"] == run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "warmup/seed0"
    tags = run.data.tags
    assert {k: tags[k] for k in ("sweep", "variant", "seed", "config_hash", "base_hash", "tricks", "status")} == {
        "sweep": "tracked", "variant": "warmup", "seed": "0", "config_hash": record.config_hash,
        "base_hash": record.base_hash, "tricks": "warmup", "status": "ok"}
    params = run.data.params
    assert params["train.optimizer.lr"] == "0.002" and params["model.backbone.name"] == "tiny"
    assert params["tricks.warmup.mode"] == "linear" and params["train.epochs"] == "2"
    assert params["tricks"] == "warmup" and params["variant"] == "warmup" and params["sweep"] == "tracked"

    def history(key):
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    steps = step_points(record)
    assert history("train/loss") == [(p["step"], p["loss"]) for p in steps]  # float64: exact
    assert history("train/lr") == [(p["step"], p["lr"]) for p in steps]
    epochs = epoch_points(record)
    assert history("epoch/loss") == [(p["step"], p["epoch_loss"]) for p in epochs]
    assert history("val/mAP") == [(4, epochs[0]["val_mAP"]), (8, record.metrics["mAP"])]
    metrics = run.data.metrics
    assert {name: metrics[f"metrics/{name}"] for name in (*COCO_METRICS, "mAP_se")} == record.metrics
    assert metrics["timings/images_per_s"] == record.timings["images_per_s"]
    assert metrics["costs/params"] == record.params and metrics["costs/flops"] == record.flops


def test_the_logger_changes_neither_the_config_hash_nor_the_code_fingerprint():
    register_resolvers()
    configs = {}
    for logger in ("none", "tensorboard", "mlflow", "[tensorboard,mlflow]"):
        cfg = compose(["profile=smoke", "tricks=[warmup]", f"logger={logger}"])
        configs[logger] = train_mod.ablate_config.to_container(cfg)
    assert configs["none"]["logger"] == {}
    assert set(configs["[tensorboard,mlflow]"]["logger"]) == {"tensorboard", "mlflow"}
    assert len({config_hash(c) for c in configs.values()}) == 1
    assert len({base_hash(c) for c in configs.values()}) == 1
    assert len({code_fingerprint(c)["fingerprint"] for c in configs.values()}) == 1


def test_a_resumed_run_appends_to_the_same_runs_without_duplicating_steps(dirs, monkeypatch, single_thread):
    register_resolvers()
    cfg = compose(["profile=smoke", "train.epochs=3", "logger=[tensorboard,mlflow]", f"paths.cache={dirs['env']['ABLATE_CACHE']}",
                   *paths(dirs)])
    run_dir = Path(dirs["runs"]) / "run"
    real_save = hooks_mod.save_checkpoint

    def killed_in_the_second_epoch(path, state):
        if state["epoch"] == 1:  # the second epoch's steps are logged, its checkpoint never written
            raise RuntimeError("killed")
        real_save(path, state)

    monkeypatch.setattr(hooks_mod, "save_checkpoint", killed_in_the_second_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        train_mod.run_and_record(cfg, run_dir, Path(dirs["runs"]), multirun=False)
    client = MlflowClient(tracking_uri=(Path(dirs["runs"]) / "mlruns").resolve().as_uri())
    run_id = json.loads((run_dir / MLFLOW_RUN_FILE).read_text())["run_id"]
    killed = client.get_run(run_id)
    assert killed.info.status == "FAILED" and killed.data.tags["status"] == "failed"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 9))

    monkeypatch.setattr(hooks_mod, "save_checkpoint", real_save)
    assert train_mod.run_and_record(cfg, run_dir, Path(dirs["runs"]), multirun=False) == "ok"
    record = read_record(run_dir / "result.json")
    losses = [(p["step"], p["loss"]) for p in step_points(record)]
    assert [s for s, _ in losses] == list(range(1, 13))  # resumed after epoch 1: epochs 2 and 3 again

    # MLflow: the same run continued; steps 5..8, logged twice, kept once (the first time's values:
    # a resumed epoch repeats itself exactly, so they are the record's).
    assert json.loads((run_dir / MLFLOW_RUN_FILE).read_text())["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == losses
    assert [m.step for m in client.get_metric_history(run_id, "epoch/loss")] == [4, 8, 12]
    # TensorBoard: two event files; the reader drops what the killed start logged after its checkpoint.
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert scalars(events, "train/loss") == [(s, pytest.approx(v, rel=1e-6)) for s, v in losses]
    assert [s for s, _ in scalars(events, "epoch/loss")] == [4, 8, 12]
    assert scalars(events, "metrics/mAP") == [(12, pytest.approx(record.metrics["mAP"], rel=1e-6))]


def test_a_missing_library_names_the_extra_and_an_unknown_tracker_is_refused(tmp_path, monkeypatch):
    for module, logger in (("torch.utils.tensorboard", "tensorboard"), ("mlflow.tracking", "mlflow")):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # import fails as if not installed
            with pytest.raises(MissingExtraError, match=r"logger=%s needs .*pip install -e '\.\[tracking\]'" % logger):
                with open_trackers({"logger": {logger: {}}}, tmp_path):
                    pass
    with pytest.raises(UserInputError, match="logger=wandb: no such tracker"):
        with open_trackers({"logger": {"wandb": {}}}, tmp_path):
            pass


@pytest.mark.parametrize("status, ended", [("ok", "FINISHED"), ("pruned", "KILLED"), ("diverged", "FAILED"),
                                           ("failed", "FAILED")])
def test_an_mlflow_run_ends_in_the_state_of_its_records_status(tmp_path, monkeypatch, status, ended):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    record = SimpleNamespace(sweep="s", variant="baseline", seed=0, config_hash="c", base_hash="b", tricks=[],
                             status="failed", device="cpu", git_commit=None, config={}, curve=[])
    tracker = MlflowTracker({"tracking_uri": str(tmp_path / "mlruns"), "allow_file_store": True,
                             "experiment": "e", "run_name": "r"}, tmp_path)
    tracker.begin(record, resume_step=0)
    tracker.end(status)
    run = MlflowClient(tracking_uri=tracker.uri).get_run(tracker.run_id)
    assert run.info.status == ended and run.data.tags["status"] == status


def test_a_logger_that_meets_only_reused_runs_says_so(dirs):
    """`ablate sweep quick logger=tensorboard` after `ablate sweep quick`: every record is reused, no
    run trains, no event file is written, and each run says so in a warning with how to train again."""
    first = ablate("sweep", "quick", "profile=smoke", *paths(dirs), env=dirs["env"])
    assert first.returncode == 0, first.stderr[-2000:]
    assert "nothing is logged" not in first.stdout + first.stderr
    again = ablate("sweep", "quick", "profile=smoke", "logger=tensorboard", *paths(dirs), env=dirs["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    warned = [line for line in (again.stdout + again.stderr).splitlines() if "[WARNING]" in line
              and "not training again, so nothing is logged to tensorboard (trackers log the runs that train; "
                  "--force trains it again)" in line]
    assert len(warned) == 3 and not list(Path(dirs["runs"]).rglob("tensorboard"))
