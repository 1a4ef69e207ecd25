"""Bad input ends every command with one line, `ablate: error: <message>` naming the file, key or
value, and exit status 2: no traceback unless HYDRA_FULL_ERROR=1 (ablate/errors.py). Each case is a
subprocess of the `ablate` command as a user runs it, at smoke size."""
import json

import pytest

from ablate import errors
from ablate.config import TrickFileError, check_trick_file, compose, group_options
from ablate.data import DatasetError
from ablate.errors import UserInputError, one_line, reported
from ablate.report import ReportError
from ablate.results import RecordError
from ablate.sweep.adaptive import PlanError
from ablate.sweep.design import SweepFileError
from ablate.tricks import TrickConfigError, TrickConflictError
from conftest import REPO_ROOT, ablate, paths

QUIET = {"HYDRA_FULL_ERROR": "0"}  # as a user runs it, even where the tests' environment sets it


@pytest.fixture
def dirs(tmp_path):
    return {"runs": tmp_path / "runs", "reports": tmp_path / "reports"}


def run(*args, dirs=None, env=None):
    """`ablate ARGS` (with the test's runs and reports folders when `dirs`); its one error line."""
    res = ablate(*args, *(paths(dirs) if dirs else []), env={**QUIET, **(env or {})})
    lines = res.stderr.splitlines()
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("ablate: error: "), res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    return lines[0]


@pytest.fixture
def coco_root(coco_set_factory, tmp_path):
    """A valid two-split COCO set (data=coco data.root=ROOT); returns ROOT."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 24} for i in (1, 2)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8]}]
    coco_set_factory(images, anns, name="instances_train.json")
    coco_set_factory(images, anns, name="instances_val.json")
    return tmp_path / "coco"


@pytest.mark.parametrize("split, broken, says", [
    ("train", "malformed", "malformed JSON at line 1, column 13: Expecting value"),
    ("train", {"image_id": 99}, "annotation id 1 refers to unknown image_id 99"),
    ("val", {"category_id": 7}, "annotation id 1 refers to unknown category_id 7"),
])
def test_a_bad_annotation_file_is_named_in_one_line(coco_root, dirs, split, broken, says):
    ann_file = coco_root / "annotations" / f"instances_{split}.json"
    if broken == "malformed":
        ann_file.write_text('{"images": [,], "annotations": [], "categories": []}')
    else:
        data = json.loads(ann_file.read_text())
        data["annotations"][0].update(broken)
        ann_file.write_text(json.dumps(data))
    line = run("train", "data=coco", f"data.root={coco_root}", "profile=smoke", dirs=dirs)
    assert line == f"ablate: error: {ann_file}: {says}"


def test_a_missing_data_root_stops_before_any_run_folder(tmp_path, dirs):
    line = run("train", "data=coco", f"data.root={tmp_path / 'nowhere'}", "profile=smoke", dirs=dirs)
    assert line == f"ablate: error: {tmp_path / 'nowhere'}: data.root folder not found"
    assert not dirs["runs"].exists()


def test_an_unknown_trick_lists_the_tricks_there_are(dirs):
    line = run("train", "tricks=[no_such_trick]", "profile=smoke", dirs=dirs)
    assert "no trick 'no_such_trick'" in line
    assert line.endswith("tricks: " + ", ".join(group_options("tricks")))
    assert not dirs["runs"].exists()


@pytest.mark.parametrize("target, says", [
    ("ablate.tricks.schedule.warmup.Warmupp", r"_target_ 'ablate.tricks.schedule.warmup.Warmupp': ablate.tricks.schedule.warmup "
                                     r"has no 'Warmupp'; its classes: Warmup$"),
    ("ablate.trickz.warmup.LinearWarmup", r"_target_ 'ablate.trickz.warmup.LinearWarmup': ablate has no 'trickz'"),
    ("no_such_package.Trick", r"_target_ 'no_such_package.Trick': no module 'no_such_package' can be imported"),
])
def test_a_target_that_names_nothing_is_named_with_its_file(tmp_path, target, says):
    (tmp_path / "tricks").mkdir()
    (tmp_path / "tricks" / "typo.yaml").write_text(f"# @package tricks.typo\n_target_: {target}\n")
    with pytest.raises(TrickFileError, match=r"typo.yaml: " + says):
        check_trick_file("typo", tmp_path / "tricks")


def test_hydras_own_unknown_trick_error_lists_the_tricks_there_are():
    """Where Hydra, not ablate's trick-file check, meets the unknown trick (its message alone is
    "Could not load 'tricks/no_such_trick'")."""
    with pytest.raises(Exception) as info:
        compose(["tricks=[no_such_trick]"])
    assert one_line(info.value) == ("In 'config': Could not load 'tricks/no_such_trick'; options in 'tricks': "
                                    + ", ".join(group_options("tricks")))


def test_a_trick_that_does_not_fit_the_detector(dirs, tmp_path):
    line = run("train", "tricks=[iou_balanced]", "profile=smoke", f"paths.cache={tmp_path / 'cache'}", dirs=dirs)
    assert line == ("ablate: error: trick 'iou_balanced' does not fit model=fcos: it needs a two_stage detector "
                    "(model=faster_rcnn or model=rfcn), and fcos is one_stage")


@pytest.mark.parametrize("override, says", [
    ("seed=", "seed='': must be an integer, e.g. seed=0"),
    ("tricks=[a", "override 'tricks=[a': no viable alternative at input '[a'; see https://hydra.cc/"),
    ("train.no_such_key=1", "Could not override 'train.no_such_key'; key 'no_such_key' is not in struct; "
                            "to append to your config use +train.no_such_key=1"),
    ("model=nope", "In 'config': Could not find 'model/nope'; options in 'model': "
                   + ", ".join(sorted(p.stem for p in (REPO_ROOT / "conf" / "model").glob("*.yaml")))),
    ("runtime.reuse=sometimes", "runtime.reuse='sometimes': choose one of same_code, any_code, never"),
    ("train.epochs=-1", "train.epochs=-1: must be an integer >= 1"),
    ("data.image_size=16", "data.image_size=16: must be an integer >= 32"),
    ("data.max_train_images=0", "data.max_train_images=0: must be an integer >= 1 or null"),
])
def test_a_bad_override_stops_before_any_run_folder(dirs, override, says):
    assert run("train", override, "profile=smoke", dirs=dirs).startswith(f"ablate: error: {says}")
    assert not dirs["runs"].exists()


def test_a_sweep_with_a_bad_override_runs_no_job(dirs, tmp_path):
    line = run("sweep", "quick", "profile=smoke", "train.no_such_key=1", dirs=dirs)
    assert "Could not override 'train.no_such_key'" in line
    assert run("sweep", "quick", "profile=smoke", "seed=3", dirs=dirs).endswith("decides seed; edit it instead")
    sweep = tmp_path / "bad.yaml"  # a baseline's override the sweeper composes, not the command line
    sweep.write_text("tricks: [warmup]\nseeds: 1\nbaselines:\n  fcos: [model=fcos]\n  other: [model=nope]\n")
    assert "Could not find 'model/nope'" in run("sweep", str(sweep), "profile=smoke", dirs=dirs)
    assert not dirs["runs"].exists()


def test_report_of_a_missing_folder_or_only_corrupt_records(tmp_path):
    assert run("report", str(tmp_path / "nowhere")) == f"ablate: error: no such runs folder: {tmp_path / 'nowhere'}"
    record = tmp_path / "runs" / "baseline" / "seed0" / "result.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"status": "ok",')
    line = run("report", str(tmp_path / "runs"), "--out", str(tmp_path / "report"))
    assert f"{record}: not valid JSON" in line


def test_show_batch_with_a_bad_override():
    assert "Could not find 'model/nope'" in run("show-batch", "model=nope", "--out", "never.png")


def test_hydra_full_error_shows_the_traceback(tmp_path, dirs):
    res = ablate("train", "data=coco", f"data.root={tmp_path / 'nowhere'}", *paths(dirs), env={"HYDRA_FULL_ERROR": "1"})
    assert res.returncode != 0 and "Traceback (most recent call last)" in res.stderr
    assert "DatasetError: " in res.stderr and "data.root folder not found" in res.stderr


def test_the_input_errors_are_user_input_errors():
    for cls in (TrickFileError, TrickConfigError, TrickConflictError, DatasetError, RecordError, ReportError,
                SweepFileError, PlanError):
        assert issubclass(cls, UserInputError) and issubclass(cls, ValueError), cls


def test_a_bug_keeps_its_traceback_and_full_error_keeps_every_one(monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(KeyError), reported():
        raise KeyError("a bug")
    with pytest.raises(SystemExit) as info, reported():
        raise UserInputError("x.yaml: line one\n  line two\n")
    assert info.value.code == errors.EXIT_BAD_INPUT == 2
    assert capsys.readouterr().err == "ablate: error: x.yaml: line one; line two\n"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(UserInputError), reported():
        raise UserInputError("x.yaml: bad")


def test_a_backbone_without_the_detectors_levels_is_named_in_one_line(dirs):
    line = run("train", "model/backbone=squeezenet", "profile=smoke", dirs=dirs)
    assert "model.levels=[3, 4, 5]: backbone squeezenet has no level [5]" in line


def test_backbone_errors_are_input_errors():
    from ablate.errors import MissingExtraError, WeightsError

    assert issubclass(MissingExtraError, ImportError) and issubclass(MissingExtraError, UserInputError)
    assert issubclass(WeightsError, RuntimeError) and issubclass(WeightsError, UserInputError)


def test_a_sweep_file_that_is_not_yaml_is_named_with_its_line_and_column(dirs, tmp_path):
    sweep = tmp_path / "broken.yaml"
    sweep.write_text("tricks: [warmup\nseeds: 1\n")  # the list is never closed
    line = run("sweep", str(sweep), "profile=smoke", dirs=dirs)
    assert line == (f"ablate: error: {sweep}: not valid YAML at line 2, column 6: expected ',' or ']', "
                    "but got ':' (while parsing a flow sequence)")
    assert not dirs["runs"].exists()


@pytest.mark.parametrize("args, meant", [
    (("train", "train.epoch=3"), "train.epochs=3"),
    (("train", "train.optimzer.lr=0.01"), "train.optimizer.lr=0.01"),
    (("train", "epochs=3"), "train.epochs=3"),  # the leaf's name alone
    (("train", "-m", "train.epoch=3,4"), "train.epochs=3"),  # composed by the multirun's sweeper
    (("sweep", "quick", "train.epoch=3"), "train.epochs=3"),
])
def test_an_unknown_key_names_the_key_spelled_alike(dirs, args, meant):
    line = run(*args, "profile=smoke", dirs=dirs)
    typed = next(a for a in args if "=" in a).split(",")[0]
    assert line.endswith(f"is not in struct; did you mean {meant}? (+{typed} would add a new key)"), line
    assert not dirs["runs"].exists()


def test_a_baselines_unknown_key_names_the_key_spelled_alike(dirs, tmp_path):
    sweep = tmp_path / "typo.yaml"
    sweep.write_text("tricks: [warmup]\nseeds: 1\nbaseline: [train.epoch=2]\n")
    assert "did you mean train.epochs=2?" in run("sweep", str(sweep), "profile=smoke", dirs=dirs)
    assert not dirs["runs"].exists()


@pytest.mark.parametrize("overrides, says", [
    (("tricks=[mixup]", "tricks.mixup.alpha=-1"), "tricks.mixup.alpha=-1: must be a number > 0"),
    (("tricks=[iou_balanced]",), "trick 'iou_balanced' does not fit model=fcos"),
    (("data=coco", "data.root="), "data=coco needs data.root"),
])
def test_bad_input_a_run_meets_leaves_no_run_folder(dirs, shapes_cache, overrides, says):
    """No husk (a failed record, or .hydra/ and an empty log) for `ablate report` to show as a failed
    row, another variant or a phantom base."""
    line = run("train", *overrides, "profile=smoke", dirs=dirs, env={"ABLATE_CACHE": str(shapes_cache)})
    assert line.startswith(f"ablate: error: {says}")
    assert not dirs["runs"].exists()


def test_bad_input_in_a_run_folder_that_holds_more_leaves_it_as_it_was(dirs, shapes_cache, tmp_path):
    run_dir = tmp_path / "mine"
    (run_dir / "notes.txt").parent.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    run("train", "tricks=[mixup]", "tricks.mixup.alpha=-1", "profile=smoke", f"hydra.run.dir={run_dir}", dirs=dirs,
        env={"ABLATE_CACHE": str(shapes_cache)})
    assert (run_dir / "notes.txt").read_text() == "mine" and not (run_dir / "result.json").exists()


def test_ctrl_c_is_one_line_saying_how_to_resume_and_exit_status_130(monkeypatch, capsys):
    from ablate.errors import RunInterrupted, interrupted

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info, interrupted():
        raise KeyboardInterrupt
    assert info.value.code == errors.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "ablate: interrupted: relaunch the same command to resume\n"
    with pytest.raises(SystemExit), interrupted():  # a single run: its folder is named after its start
        raise RunInterrupted("relaunch the same command with hydra.run.dir=runs/train/x/1 to resume")
    assert capsys.readouterr().err == ("ablate: interrupted: relaunch the same command with "
                                       "hydra.run.dir=runs/train/x/1 to resume\n")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(KeyboardInterrupt), interrupted():
        raise KeyboardInterrupt
