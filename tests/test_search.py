"""design: search (ablate/sweep/search.py): Optuna trials as ablate runs, a study in SQLite that a
killed search resumes, pruning on the per-epoch val mAP, the search's report, and the sweep file's
errors. Smoke size: the CLI runs in subprocesses as a user runs it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir

from ablate.config import conf_dir
from ablate.report import build_report
from ablate.results import RECORD_NAME, RunRecord, find_indexed, index_record, read_record, write_record
from ablate.sweep import SweepFileError, load_sweep
from ablate.errors import UserInputError
from ablate.sweep.design import Job
from ablate.sweep.search import (distributions, open_study, sampler_for, search_lock, trial_line, trial_outcome,
                                  with_all_params)
from ablate.train import train_and_evaluate
from conftest import REPO_ROOT, ablate, paths

SPACE = """\
space:
  tricks.mixup.alpha: {type: float, low: 0.5, high: 2.0}
  train.optimizer.lr: {type: float, low: 0.0005, high: 0.005, log: true}
"""


def search_file(tmp_path: Path, n_trials: int, body: str = SPACE, extra: str = "pruner: none\n") -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(f"design: search\ntricks: [mixup]\n{body}n_trials: {n_trials}\n{extra}")
    return path


@pytest.fixture
def dirs(tmp_path):
    return {"runs": tmp_path / "runs", "reports": tmp_path / "reports"}


def study_of(sweep_dir: Path, name: str = "tune"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def record_of(sweep_dir: Path, number: int):
    return read_record(sweep_dir / f"trial{number}" / "seed0" / RECORD_NAME)


# ---------------------------------------------------------------- the sweep file


@pytest.mark.parametrize("body, says", [
    ("space:\n  tricks.mixup.alpha: {type: float, low: 2.0, high: 0.5}\n",
     "space.tricks.mixup.alpha: low (2.0) must be below high (0.5)"),
    ("space:\n  train.optimizer.lr: {type: float, low: 0.0, high: 0.01, log: true}\n",
     "space.train.optimizer.lr: log: true needs low > 0, got 0.0"),
    ("space:\n  data.batch_size: {type: int, low: 2.5, high: 8}\n",
     "space.data.batch_size: low must be an integer, got 2.5"),
    ("space:\n  tricks.mixup.alpha: {type: normal, low: 0.5, high: 2.0}\n",
     "space.tricks.mixup.alpha: give a mapping with type one of ('float', 'int', 'categorical')"),
    ("space:\n  tricks.mixup.alpha: {type: float, low: 0.5, high: 2.0, lg: true}\n",
     "space.tricks.mixup.alpha: unknown keys ['lg'] for type float"),
    ("space:\n  train.schedule.name: {type: categorical, choices: []}\n",
     "space.train.schedule.name: choices must be a non-empty list"),
    ("space:\n  train.optimizer.lr: {type: float, low: 0.001, high: 0.01, log: true, step: 0.001}\n",
     "space.train.optimizer.lr: log and step cannot be combined"),
    ("space:\n  seed: {type: int, low: 0, high: 3}\n", "space.seed: the design sets seed"),
    ("space: {}\n", "space: design: search needs a space"),
])
def test_a_bad_space_entry_is_one_line_naming_its_key(tmp_path, body, says):
    with pytest.raises(SweepFileError) as info:
        load_sweep(search_file(tmp_path, 4, body))
    message = str(info.value)
    assert says in message and "\n" not in message
    assert message.startswith(str(tmp_path / "tune.yaml"))


@pytest.mark.parametrize("extra, says", [
    ("sampler: {name: tpe, sed: 1}\n", "sampler.sed: not an argument of sampler tpe (known: seed, n_startup_trials"),
    ("pruner: hyperband\n", "pruner must be one of median, percentile, threshold, none"),
    ("pruner: {name: threshold}\n", "pruner: threshold needs lower or upper"),
    ("pruner: {name: median, n_warmup_steps: -1}\n", "pruner.n_warmup_steps: must be a non-negative int, got -1"),
    ("direction: up\n", "direction: one of ('maximize', 'minimize')"),
    ("n_jobs: 0\n", "n_jobs: the trials launched together, an integer >= 1, got 0"),
])
def test_bad_search_settings_name_their_key(tmp_path, extra, says):
    with pytest.raises(SweepFileError, match=None) as info:
        load_sweep(search_file(tmp_path, 4, extra=extra))
    assert says in str(info.value)


def test_search_keys_belong_to_a_search_and_n_trials_is_a_count(tmp_path):
    (tmp_path / "a.yaml").write_text("design: one_at_a_time\ntricks: [mixup]\nn_trials: 4\n")
    with pytest.raises(SweepFileError, match="n_trials: only for design: search"):
        load_sweep(tmp_path / "a.yaml")
    with pytest.raises(SweepFileError, match="n_trials: the number of trials, an integer >= 1, got 0"):
        load_sweep(search_file(tmp_path, 0))
    spec = load_sweep(search_file(tmp_path, 4, extra="")).search
    # What an omitted sampler, pruner and direction mean (design docstring): TPE seeded 0, median, maximize.
    assert (spec.sampler, spec.pruner, spec.direction) == ({"name": "tpe", "seed": 0}, {"name": "median"}, "maximize")
    assert spec.space["train.optimizer.lr"] == {"type": "float", "low": 0.0005, "high": 0.005, "log": True}


def test_without_optuna_a_search_says_which_extra_to_install(monkeypatch):
    from ablate.errors import MissingExtraError
    from ablate.sweep.search import require_optuna

    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed: `import optuna` fails
    with pytest.raises(MissingExtraError, match=r"design: search needs Optuna, which is not installed: "
                                                r"pip install -e '\.\[tune\]'"):
        require_optuna()


def test_a_space_key_the_config_lacks_stops_the_sweep_in_one_line(tmp_path, dirs, shapes_cache):
    body = "space:\n  tricks.mixup.alfa: {type: float, low: 0.5, high: 2.0}\n"
    res = ablate("sweep", str(search_file(tmp_path, 2, body)), "profile=smoke", *paths(dirs),
                 env={"HYDRA_FULL_ERROR": "0", "ABLATE_CACHE": str(shapes_cache)})
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.splitlines() == [
        f"ablate: error: {tmp_path / 'tune.yaml'}: space.tricks.mixup.alfa: no such key in the config "
        "(tricks.mixup has: _target_, alpha, prob, off_last_fraction, loss_weights)"]
    assert not (dirs["runs"] / "tune").exists()  # checked before the sweep's folder is made


# ---------------------------------------------------------------- the study


def test_a_reopened_study_draws_new_points_and_refuses_another_space(tmp_path):
    design = load_sweep(search_file(tmp_path, 4))
    study = open_study(design, tmp_path)
    first = study.ask(distributions(design.search))
    study.tell(first, 0.1)
    again = open_study(design, tmp_path)  # a relaunch: the sampler seeded 0 + 1 trial
    assert again.ask(distributions(design.search)).params != first.params
    # Seeded 0 as the first launch was, it would draw trial 0's point again: why the seed is offset.
    again.sampler = sampler_for(design.search.sampler, 0)
    assert again.ask(distributions(design.search)).params == first.params
    changed = load_sweep(search_file(tmp_path, 4, SPACE.replace("high: 2.0", "high: 3.0")))
    with pytest.raises(SweepFileError, match=r"space changed since the study in .*optuna.db began "
                                             r"\(space.tricks.mixup.alpha\)"):
        open_study(changed, tmp_path)


def test_one_launch_of_a_search_at_a_time(tmp_path):
    with search_lock(tmp_path):
        with pytest.raises(UserInputError, match="another launch of this search is running"):
            with search_lock(tmp_path):
                pass
    with search_lock(tmp_path):  # released when the launch ends
        pass


def test_a_trials_value_is_the_mean_val_map_of_its_seeds_and_any_other_status_wins(tmp_path):
    jobs = [Job("trial2", ("mixup",), seed, ()) for seed in (0, 1)]
    for seed, mAP in ((0, 0.25), (1, 0.375)):
        write_record(RunRecord(status="ok", variant="trial2", sweep="s", tricks=["mixup"], seed=seed, config={},
                               config_hash="h", base_hash="b", metrics={"mAP": mAP}), tmp_path / "trial2" / f"seed{seed}")
    assert trial_outcome(tmp_path, jobs, ["ok", "ok"]) == ("ok", 0.3125)
    assert trial_outcome(tmp_path, jobs, ["pruned"]) == ("pruned", None)
    assert trial_outcome(tmp_path, jobs, ["ok", "diverged"]) == ("diverged", None)


# ---------------------------------------------------------------- pruning, in the run


def make_cfg(cache, *overrides):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=["profile=smoke", f"paths.cache={cache}", "tricks=[mixup]",
                                            "train.epochs=3", "train.eval_every=1", *overrides])


@pytest.mark.parametrize("lower, seed_index", [(0.99, 1), (0.0, 0)])
def test_a_trial_reports_each_evaluation_and_stops_when_its_pruner_says(tmp_path, shapes_cache, lower, seed_index):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="t", storage=url, direction="maximize")
    # Below 99 mAP points every trial is pruned at its first report; nothing is below 0.
    study.set_user_attr("pruner", {"name": "threshold", "lower": lower})
    study.ask({"tricks.mixup.alpha": optuna.distributions.FloatDistribution(0.5, 2.0)})
    trial = f"runtime.search_trial={{storage:'{url}',study:t,trial:0,seed_index:{seed_index}}}"
    record = train_and_evaluate(make_cfg(shapes_cache, trial), tmp_path / "run")
    epochs = [p["epoch"] for p in record.curve if "epoch_loss" in p]
    reported = study_of(tmp_path, "t").trials[0].intermediate_values
    evaluated = {p["epoch"]: p["val_mAP"] for p in record.curve if "val_mAP" in p}
    if lower:
        assert record.status == "pruned" and record.error.startswith("pruned after epoch 1 (val mAP ")
        assert epochs == [1] and record.metrics == {}
        # step = seed_index x epochs + epoch: seed 1's epoch 1 is step 4
        assert reported == {4: evaluated[1]}
        index_record(tmp_path / "runs", record, tmp_path / "run")  # a pruned run is no full run of its config
        assert find_indexed(tmp_path / "runs", record.config_hash) is None
    else:
        assert record.status == "ok" and epochs == [1, 2, 3] and record.metrics["mAP"] == evaluated[3]
        assert reported == {1: evaluated[1], 2: evaluated[2]}  # the last epoch's is the final evaluation


# ---------------------------------------------------------------- the search, killed and resumed


def test_a_killed_search_resumes_and_keeps_its_finished_trials(tmp_path, dirs, shapes_cache):
    sweep = search_file(tmp_path, 3)
    sweep_dir = dirs["runs"] / "tune"
    env = {"HYDRA_FULL_ERROR": "0", "ABLATE_CACHE": str(shapes_cache)}
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "sweep", str(sweep), "profile=smoke", *paths(dirs)],
                            cwd=REPO_ROOT, env=dict(os.environ, **env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (sweep_dir / "trial1" / "seed0" / RECORD_NAME).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the search ended before its second trial"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = study_of(sweep_dir)
    done = {t.number: t.params for t in killed.trials if t.state.is_finished()}
    left = [t.number for t in killed.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert 0 in done and len(done) < 3
    kept = {n: (sweep_dir / f"trial{n}" / "seed0" / RECORD_NAME).stat().st_mtime_ns for n in done}

    res = ablate("sweep", str(sweep), "profile=smoke", *paths(dirs), env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"{len(done)} of 3 trials done" in res.stdout
    for number in left:
        assert f"trial {number} was running when the search stopped: training it again" in res.stdout
    study = study_of(sweep_dir)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for number, params in done.items():  # kept as they were, not trained again
        assert study.trials[number].params == params
        assert (sweep_dir / f"trial{number}" / "seed0" / RECORD_NAME).stat().st_mtime_ns == kept[number]
    for t in study.trials:  # each trial is its run: its value is the record's val mAP, with its parameters
        record = record_of(sweep_dir, t.number)
        assert t.value == record.metrics["mAP"] and record.variant == f"trial{t.number}"
        assert record.config["tricks"]["mixup"]["alpha"] == t.params["tricks.mixup.alpha"]
        assert record.config["train"]["optimizer"]["lr"] == t.params["train.optimizer.lr"]


def test_a_trial_left_running_is_run_again_and_the_report_shows_the_search(tmp_path, dirs, shapes_cache):
    sweep = search_file(tmp_path, 2, extra="pruner: none\nn_jobs: 2\n")
    design = load_sweep(sweep)
    sweep_dir = dirs["runs"] / "tune"
    sweep_dir.mkdir(parents=True)
    # As a launch killed mid-trial leaves it: trial 0 running in the study.
    left = open_study(design, sweep_dir).ask(distributions(design.search))
    # It and a new trial 1 run together, in two joblib processes.
    res = ablate("sweep", str(sweep), "profile=smoke", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 "runtime.num_threads=1", *paths(dirs), env={"HYDRA_FULL_ERROR": "0", "ABLATE_CACHE": str(shapes_cache)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "search tune: study" in res.stdout and "0 of 2 trials done, 1 left running" in res.stdout
    assert f"trial 0 was running when the search stopped: training it again in {sweep_dir / 'trial0'}" in res.stdout
    study = study_of(sweep_dir)
    assert len(study.trials) == 2 and study.trials[0].params == left.params
    assert record_of(sweep_dir, 0).config["tricks"]["mixup"]["alpha"] == left.params["tricks.mixup.alpha"]

    report = build_report([sweep_dir], tmp_path / "report")
    text = report.read_text()
    best = study.best_trial
    assert f"Trial {best.number}: val mAP {best.value * 100:.1f}." in text
    for name, value in best.params.items():
        assert f"| {name} | {value:.4g} |" in " ".join(text.split())
    assert "## Trials" in text and "## Parameter importance" in text
    for t in study.trials:
        assert f"`{sweep_dir / f'trial{t.number}'}`" in text
    png = (tmp_path / "report" / "importance.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    importance = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    for name, value in importance.items():
        assert f"| {name} | {value:.3f} |" in " ".join(text.split())


def test_the_bag_of_tricks_report_counts_a_pruned_run_as_one_that_did_not_finish(tmp_path):
    def record(variant, status, metrics, error=None):
        return RunRecord(status=status, variant=variant, sweep="s", tricks=[] if variant == "baseline" else [variant],
                         seed=0, config={}, config_hash=variant, base_hash="b", metrics=metrics, error=error)

    write_record(record("baseline", "ok", {"mAP": 0.5}), tmp_path / "runs" / "baseline" / "seed0")
    write_record(record("mixup", "pruned", {}, "pruned after epoch 1 (val mAP 0.1000)"),
                 tmp_path / "runs" / "mixup" / "seed0")
    text = " ".join(build_report([tmp_path / "runs"], tmp_path / "report").read_text().split())
    assert "2 runs (1 ok, 1 pruned) of 2 variants" in text
    assert "## Runs that did not finish" in text
    assert "| mixup | 0 | pruned | pruned after epoch 1 (val mAP 0.1000) |" in text


def test_a_trial_killed_while_its_parameters_were_drawn_gets_the_rest_on_resume(tmp_path):
    # ask() stores each parameter as it draws it: a kill in between leaves a running trial with some.
    design = load_sweep(search_file(tmp_path, 2))
    dists = distributions(design.search)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    first = next(iter(dists))
    half = study.ask({first: dists[first]})
    frozen = study.trials[half.number]
    params = with_all_params(study, frozen, dists)
    assert set(params) == set(dists) and params[first] == frozen.params[first]
    assert study.trials[half.number].params == params  # stored in the study, as ask would have
    assert with_all_params(study, study.trials[half.number], dists) == params  # whole: unchanged


def test_a_trials_console_line_gives_mAP_in_points_as_the_report_does():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.523, params={"a": 1.0},
                                              distributions={"a": optuna.distributions.FloatDistribution(0, 2)}))
    line = trial_line(study, 0, "ok", 0.523, {"a": 1.0}, 2, 60.0)
    assert line == "[1/2] trial 0: ok, mAP 52.3 (a=1); best 52.3 (trial 0), about 1.0 min left"


def test_a_search_relaunched_with_other_overrides_is_refused_not_shown_as_done(tmp_path, dirs, shapes_cache):
    """A study holds one base config: `train.epochs=2` after a 1-epoch search would otherwise print
    "1 of 1 trials done" and the old result."""
    env = {"HYDRA_FULL_ERROR": "0", "ABLATE_CACHE": str(shapes_cache)}
    sweep = search_file(tmp_path, 1)
    first = ablate("sweep", str(sweep), "profile=smoke", *paths(dirs), env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    sweep_dir = dirs["runs"] / "tune"
    kept = (sweep_dir / "multirun.yaml").read_bytes()
    res = ablate("sweep", str(sweep), "profile=smoke", "train.epochs=2", *paths(dirs), env=env)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.splitlines() == [
        f"ablate: error: {sweep_dir / 'optuna.db'}: its trials ran on another config (train.epochs: 1 -> 2): a "
        f"search with these overrides needs a study of its own: give it another folder (paths.runs=DIR), or move "
        f"{sweep_dir} away"]
    assert len(study_of(sweep_dir).trials) == 1 and (sweep_dir / "multirun.yaml").read_bytes() == kept
    # the same overrides again: the study, as it was, is done
    again = ablate("sweep", str(sweep), "profile=smoke", *paths(dirs), env=env)
    assert again.returncode == 0 and "1 of 1 trials done" in again.stdout
    # in another folder the new search runs
    other = {"runs": tmp_path / "epochs2", "reports": tmp_path / "reports2"}
    assert ablate("sweep", str(sweep), "profile=smoke", "train.epochs=2", *paths(other), env=env).returncode == 0
    assert study_of(other["runs"] / "tune").user_attrs["base"]["train"]["epochs"] == 2
