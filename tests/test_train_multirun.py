"""`ablate train -m`: every job of a multirun trains in a folder of its own (ablate/sweep/multirun.py).

The folder tests run the real sweeper and launcher in this process with a task that trains nothing;
the end-to-end tests train smoke runs through the `ablate` command, as a user does.
"""
import csv
import json
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from ablate.config import conf_dir
from ablate.results import read_record
from ablate.sweep.multirun import MAX_NAME, label, own_variant_names, shortened, with_variant
from conftest import ablate, paths

ALPHAS = ("tricks=[mixup]", "tricks.mixup.alpha=0.2,1.5")


def test_jobs_sharing_a_folder_are_named_by_the_overrides_that_differ_among_them():
    jobs = [["tricks=[mixup]", "tricks.mixup.alpha=0.2", "seed=0"],
            ["tricks=[mixup]", "tricks.mixup.alpha=1.5", "seed=0"],
            ["tricks=[]", "tricks.mixup.alpha=0.2", "seed=0"]]
    folders = ["runs/train/mixup/seed0", "runs/train/mixup/seed0", "runs/train/baseline/seed0"]
    names = own_variant_names(jobs, ["mixup", "mixup", "baseline"], folders)
    assert names == {0: "mixup[tricks.mixup.alpha=0.2]", 1: "mixup[tricks.mixup.alpha=1.5]"}  # job 2 is alone
    # Two keys differing: both named, in command-line order; a key set in one job only counts as differing.
    jobs = [["train.optimizer.lr=0.001", "model=fcos"], ["train.optimizer.lr=0.01", "model=fcos", "+x=1"]]
    assert own_variant_names(jobs, ["baseline"] * 2, ["f", "f"]) == {
        0: "baseline[train.optimizer.lr=0.001]", 1: "baseline[train.optimizer.lr=0.01,x=1]"}
    assert own_variant_names(jobs, ["baseline"] * 2, ["f", "g"]) == {}
    assert own_variant_names([["seed=0"], ["seed=0"]], ["baseline"] * 2, ["f", "f"]) == {}  # nothing tells them apart
    # An explicit variant override is replaced, not doubled; the name is quoted for Hydra's grammar.
    assert with_variant(["variant=mine", "seed=0"], "mine[seed=0]") == ["seed=0", "variant='mine[seed=0]'"]


def test_names_are_safe_folder_names():
    assert label("model/backbone=resnet18") == "model.backbone=resnet18"
    assert label("data.root='/data/my set'") == "data.root=_data_my_set"
    assert label("++train.note=${oc.env:HOME}") == "train.note=__oc.env_HOME_"
    assert label("train.milestones=[0.5,0.8]") == "train.milestones=[0.5,0.8]"
    long = "baseline[" + ",".join(f"key{i}=value{i}" for i in range(30)) + "]"
    cut = shortened(long)
    assert len(cut) == MAX_NAME and cut.startswith("baseline[key0=value0,") and cut != shortened(long + "x")


def multirun_folders(tmp_path: Path, *overrides: str) -> dict[str, str]:
    """`ablate train -m OVERRIDES` through Hydra's own multirun, with a task that trains nothing:
    each job's folder (relative to the sweep's) -> its variant."""
    def task(cfg):
        return str(Path(HydraConfig.get().runtime.output_dir).relative_to(tmp_path / "train")), str(cfg.variant)

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        batches = GlobalHydra.instance().hydra.multirun(
            config_name="config", task_function=task, with_log_configuration=False,
            overrides=[*overrides, f"paths.runs={tmp_path}"])
    found = dict(ret.return_value for batch in batches for ret in batch)
    assert len(found) == sum(len(batch) for batch in batches), "two jobs ran in one folder"
    return found


def test_jobs_alone_in_their_folders_keep_them(tmp_path):
    assert multirun_folders(tmp_path, "tricks=[],[mixup]") == {"baseline/seed0": "baseline", "mixup/seed0": "mixup"}
    assert multirun_folders(tmp_path, "seed=0,1", "tricks.mixup.alpha=0.5", "tricks=[mixup]") == {
        "mixup/seed0": "mixup", "mixup/seed1": "mixup"}


def test_a_sweep_over_trick_arguments_or_any_key_gives_each_job_its_folder(tmp_path):
    low, high = "mixup[tricks.mixup.alpha=0.2]", "mixup[tricks.mixup.alpha=1.5]"
    assert multirun_folders(tmp_path, *ALPHAS) == {f"{low}/seed0": low, f"{high}/seed0": high}
    # Only the jobs that would share a folder are renamed; the seed, a folder apart already, is not in the names.
    found = multirun_folders(tmp_path, "tricks=[],[mixup]", "model/backbone=tiny,resnet18", "seed=0,1",
                             "hydra.sweeper.max_batch_size=3")
    assert len(found) == 8 and found["mixup[model.backbone=resnet18]/seed1"] == "mixup[model.backbone=resnet18]"
    assert found["baseline[model.backbone=tiny]/seed0"] == "baseline[model.backbone=tiny]"


def test_jobs_no_name_can_tell_apart_stop_the_multirun_before_any_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        multirun_folders(tmp_path, "seed=0,0")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate: error: jobs #0 and #1 of this multirun would train in one folder")
    assert "baseline/seed0 (the same overrides, a value given twice)" in err
    assert not (tmp_path / "train" / "baseline").exists()


@pytest.fixture
def dirs(tmp_path, shapes_cache):
    return {"runs": tmp_path / "runs", "reports": tmp_path / "reports",
            "env": {"ABLATE_CACHE": str(shapes_cache), "OMP_NUM_THREADS": "1"}}


def records_by_folder(root: Path) -> dict[str, object]:
    return {str(p.parent.relative_to(root)): read_record(p) for p in root.glob("*/seed*/result.json")}


def report_rows(runs: Path, out: Path) -> dict[str, dict]:
    """`ablate report RUNS --out OUT`: its table.csv's rows by variant, each checked to be a row of report.md."""
    res = ablate("report", str(runs), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {row["variant"]: row for row in csv.DictReader((out / "table.csv").open())}
    report = (out / "report.md").read_text()
    assert all(f"| {name} " in report for name in rows)
    return rows


def test_a_multirun_over_a_trick_argument_trains_both_reports_both_and_reuses_both(dirs, tmp_path):
    res = ablate("train", "-m", *ALPHAS, "profile=smoke", *paths(dirs), env=dirs["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    records = records_by_folder(dirs["runs"] / "train")
    low, high = "mixup[tricks.mixup.alpha=0.2]", "mixup[tricks.mixup.alpha=1.5]"
    assert sorted(records) == [f"{low}/seed0", f"{high}/seed0"]
    assert not list((dirs["runs"] / "train").glob("*/seed0/result.*.json"))  # nothing moved aside
    for name, alpha in ((low, 0.2), (high, 1.5)):
        record = records[f"{name}/seed0"]
        assert record.status == "ok" and record.variant == name and record.tricks == ["mixup"]
        assert record.config["tricks"]["mixup"]["alpha"] == alpha
    rows = report_rows(dirs["runs"] / "train", tmp_path / "report")
    assert sorted(rows) == [low, high]
    assert [json.loads(rows[n]["trick_args"])["mixup.alpha"] for n in (low, high)] == [0.2, 1.5]

    created = {k: r.created_at for k, r in records.items()}
    mtimes = {p: p.stat().st_mtime_ns for p in (dirs["runs"] / "train").glob("*/seed0/result.json")}
    again = ablate("train", "-m", *ALPHAS, "profile=smoke", *paths(dirs), env=dirs["env"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("not training again") == 2
    assert {k: r.created_at for k, r in records_by_folder(dirs["runs"] / "train").items()} == created
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_a_multirun_over_any_key_gives_two_bases(dirs, tmp_path):
    res = ablate("train", "-m", "train.optimizer.lr=0.001,0.01", "profile=smoke", *paths(dirs), env=dirs["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    records = records_by_folder(dirs["runs"] / "train")
    low, high = "baseline[train.optimizer.lr=0.001]", "baseline[train.optimizer.lr=0.01]"
    assert sorted(records) == [f"{low}/seed0", f"{high}/seed0"]
    assert [records[f"{n}/seed0"].config["train"]["optimizer"]["lr"] for n in (low, high)] == [0.001, 0.01]
    assert records[f"{low}/seed0"].base_hash != records[f"{high}/seed0"].base_hash
    rows = report_rows(dirs["runs"] / "train", tmp_path / "report")
    assert sorted(rows) == [low, high]
    assert [rows[n]["base"] for n in (low, high)] == ["train.optimizer.lr=0.001", "train.optimizer.lr=0.01"]
    assert [rows[n]["base_hash"] for n in (low, high)] == [records[f"{n}/seed0"].base_hash for n in (low, high)]


def test_a_parallel_launcher_gets_the_same_folders(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    assert sorted(multirun_folders(tmp_path, *ALPHAS, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")) == [
        "mixup[tricks.mixup.alpha=0.2]/seed0", "mixup[tricks.mixup.alpha=1.5]/seed0"]
