"""End to end through the `ablate` command, as a user runs it (subprocesses, smoke profile)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.results import read_record
from conftest import ablate, paths

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dirs(tmp_path, shapes_cache):
    return {"runs": tmp_path / "runs", "reports": tmp_path / "reports", "env": {"ABLATE_CACHE": str(shapes_cache)}}


def test_help_lists_commands_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", "import sys; from ablate.cli import main; main(['--help']);"
                          "assert 'torch' not in sys.modules, 'torch imported'"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("ablate train", "ablate sweep", "ablate report", "tricks=[mixup,warmup]"):
        assert command in out.stdout
    for sub in ("train", "sweep"):
        res = ablate(sub, "--help")
        assert res.returncode == 0 and f"usage: ablate {sub}" in res.stdout
    res = ablate("report", "--help")
    assert res.returncode == 0 and "--out" in res.stdout


def test_unknown_group_option_fails_listing_the_choices(dirs):
    res = ablate("train", "model=nope", *paths(dirs), env=dirs["env"])
    assert res.returncode != 0
    assert "Could not find 'model/nope'" in res.stderr
    assert "fcos" in res.stderr and "faster_rcnn" in res.stderr and "retinanet" in res.stderr


def test_unknown_command_and_sweep():
    assert ablate("fly").returncode == 2
    res = ablate("sweep", "no_such_sweep")
    assert res.returncode == 2 and "quick" in res.stderr


def test_smoke_sweep_writes_a_report_with_a_row_per_variant_and_a_second_launch_trains_nothing(dirs):
    res = ablate("sweep", "quick", "profile=smoke", *paths(dirs), env=dirs["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    records = {p.parent.parent.name: read_record(p) for p in (dirs["runs"] / "quick").glob("*/seed0/result.json")}
    assert set(records) == {"baseline", "warmup", "mixup"}
    assert all(r.status == "ok" for r in records.values())
    assert records["mixup"].tricks == ["mixup"] and records["baseline"].tricks == []
    # every variant shares one baseline config
    assert len({r.base_hash for r in records.values()}) == 1
    report = (dirs["reports"] / "quick" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "Variant" not in line]
    assert {row.split("|")[1].strip() for row in rows} >= {"baseline", "warmup", "mixup"}
    png = dirs["reports"] / "quick" / "delta_map.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one console line per finished run, and the time left
    assert "[1/3] baseline seed 0: ok, mAP " in res.stdout and "[3/3] " in res.stdout
    # COCO evaluation's tables go to each run's log, not the console
    assert "Average Precision" not in res.stdout + res.stderr and "COCO evaluation" not in res.stdout + res.stderr
    run_log = (dirs["runs"] / "quick" / "baseline" / "seed0" / "train.log").read_text()
    assert "COCO evaluation" in run_log and "Average Precision  (AP) @[ IoU=0.50:0.95" in run_log
    # the data set's lines too (five a run); mAP in points on the console as in the report
    assert "[ablate.data][INFO]" not in res.stdout + res.stderr and "[ablate.data][INFO]" in run_log
    base = records["baseline"].metrics
    assert f"[1/3] baseline seed 0: ok, mAP {base['mAP'] * 100:.1f}, " in res.stdout
    assert f"val mAP {base['mAP'] * 100:.1f} (AP50 {base['AP50'] * 100:.1f}, " in res.stdout + res.stderr

    mtimes = {p: p.stat().st_mtime_ns for p in (dirs["runs"] / "quick").glob("*/seed0/result.json")}
    again = ablate("sweep", "quick", "profile=smoke", *paths(dirs), env=dirs["env"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not training again" in again.stdout + again.stderr
    assert "3 of 3 runs kept their complete records (not trained again)" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_a_smoke_sweep_leaves_the_real_runs_and_the_committed_reports_alone(tmp_path, shapes_cache):
    """profile=smoke writes under smoke/ (git-ignored), not reports/<sweep>/ (committed, linked from
    the README) nor runs/<sweep>/ (where its other config would move the real records aside)."""
    res = ablate("sweep", "quick", "profile=smoke", env={"ABLATE_CACHE": str(shapes_cache)}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "smoke" / "reports" / "quick" / "report.md").is_file()
    assert len(list((tmp_path / "smoke" / "runs" / "quick").glob("*/seed0/result.json"))) == 3
    assert not (tmp_path / "reports").exists() and not (tmp_path / "runs").exists()
    assert "/smoke/" in (REPO / ".gitignore").read_text().splitlines()


def broken_sweep(tmp_path, tricks: str):
    """A copy of conf/ with a trick `broken` that fails when its run builds it (an argument its class
    does not take: the file itself passes the check before the sweep), and a sweep `mine` of `tricks`."""
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "tricks" / "broken.yaml").write_text("# @package tricks.broken\n_target_: ablate.tricks.schedule.warmup.Warmup\n"
                                                 "no_such_argument: 1\n")
    sweep = tmp_path / "mine.yaml"
    sweep.write_text(f"design: one_at_a_time\ntricks: [{tricks}]\nseeds: 1\n")
    return conf, sweep


def test_a_failing_variant_does_not_stop_the_others(dirs, tmp_path):
    conf, sweep = broken_sweep(tmp_path, "broken, warmup")
    res = ablate("sweep", str(sweep), "profile=smoke", *paths(dirs), env=dict(dirs["env"], ABLATE_CONF=str(conf)))
    assert res.returncode != 0
    assert "1 of 3 runs did not finish: broken seed 0: failed" in res.stderr
    broken = read_record(dirs["runs"] / "mine" / "broken" / "seed0" / "result.json")
    assert broken.status == "failed" and "no_such_argument" in broken.error
    assert read_record(dirs["runs"] / "mine" / "warmup" / "seed0" / "result.json").status == "ok"
    report = (dirs["reports"] / "mine" / "report.md").read_text()
    assert "Runs that did not finish" in report and "broken" in report


def test_report_command_rebuilds_from_disk(dirs, tmp_path):
    res = ablate("sweep", "quick", "profile=smoke", *paths(dirs), env=dirs["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "rebuilt"
    res = subprocess.run([sys.executable, "-c", "import sys; from ablate.cli import main; "
                          f"code = main(['report', '{dirs['runs'] / 'quick'}', '--out', '{out}']); "
                          "assert 'torch' not in sys.modules; sys.exit(code)"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (out / "report.md").read_text().count("| baseline") == 1
    assert ablate("report", str(tmp_path / "nothing_here")).returncode == 2


def test_show_batch_draws_the_batch_after_the_data_tricks(dirs, tmp_path):
    out = tmp_path / "batch.png"
    res = ablate("show-batch", "tricks=[cutmix]", "profile=smoke", f"paths.cache={dirs['env']['ABLATE_CACHE']}",
                 "--out", str(out), "--num", "4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ablate("show-batch", "tricks=[nope]", "--out", str(out)).returncode != 0


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_other_hydra_launchers_run_the_sweep(dirs, launcher):
    pytest.importorskip({"joblib": "hydra_plugins.hydra_joblib_launcher",
                         "submitit_local": "hydra_plugins.hydra_submitit_launcher"}[launcher])
    res = ablate("sweep", "quick", "profile=smoke", f"hydra/launcher={launcher}", *paths(dirs), env=dirs["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    statuses = {p.parent.parent.name: read_record(p).status
                for p in (dirs["runs"] / "quick").glob("*/seed0/result.json")}
    assert statuses == {"baseline": "ok", "warmup": "ok", "mixup": "ok"}
    assert (dirs["reports"] / "quick" / "report.md").is_file()


def test_a_trick_that_does_not_fit_a_baseline_is_na_not_a_failure(dirs, tmp_path):
    sweep = tmp_path / "fit.yaml"
    sweep.write_text("tricks: [iou_balanced]\nseeds: 1\nbaselines:\n  fcos: [model=fcos]\n"
                     "  faster_rcnn: [model=faster_rcnn]\n")
    res = ablate("sweep", str(sweep), "profile=smoke", *paths(dirs), env=dirs["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    na = read_record(dirs["runs"] / "fit" / "fcos" / "iou_balanced" / "seed0" / "result.json")
    assert na.status == "not_applicable" and "does not fit model=fcos" in na.error
    assert read_record(dirs["runs"] / "fit" / "faster_rcnn" / "iou_balanced" / "seed0" / "result.json").status == "ok"
    report = (dirs["reports"] / "fit" / "report.md").read_text()
    row = next(line for line in report.splitlines() if "| fcos/iou_balanced " in line)
    assert "n/a" in row and "+0.0" not in row
    assert "## Variants that do not apply" in report


def test_a_variant_that_already_ran_in_another_sweep_is_reused_not_retrained(dirs, tmp_path):
    assert ablate("sweep", "quick", "profile=smoke", *paths(dirs), env=dirs["env"]).returncode == 0
    other = tmp_path / "other.yaml"
    # the same base as sweeps/quick.yaml's (its baseline overrides): only then is a run the same run
    other.write_text("design: cumulative\ntricks: [warmup, mixup]\nseeds: 1\nbaseline: [train.eval_every=3]\n")
    res = ablate("sweep", str(other), "profile=smoke", *paths(dirs), env=dirs["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    runs = dirs["runs"]
    baseline = read_record(runs / "other" / "baseline" / "seed0" / "result.json")
    warmup = read_record(runs / "other" / "warmup" / "seed0" / "result.json")
    stacked = read_record(runs / "other" / "warmup+mixup" / "seed0" / "result.json")
    assert baseline.reused_from == str((runs / "quick" / "baseline" / "seed0").resolve())
    assert baseline.metrics == read_record(runs / "quick" / "baseline" / "seed0" / "result.json").metrics
    assert baseline.sweep == "other" and warmup.reused_from and warmup.variant == "warmup"
    assert stacked.reused_from is None and stacked.status == "ok"  # new: trained
    assert not (runs / "other" / "baseline" / "seed0" / "last.pt").exists()  # nothing trained there


def stopped_in_its_second_run(dirs, sig) -> tuple[subprocess.CompletedProcess, Path]:
    """`ablate sweep quick` (40 smoke epochs a run) sent `sig`, as a whole process group (a terminal's
    Ctrl-C: SIGINT), while its second run trains; its output and the folder of the run it stopped. One
    torch thread: two threads spinning on a loaded machine made a smoke epoch take 20 s instead of 0.5."""
    import signal
    import time

    args = [sys.executable, "-m", "ablate.cli", "sweep", "quick", "profile=smoke", "train.epochs=40",
            "runtime.num_threads=1", *paths(dirs)]
    # A terminal's sweep gets Ctrl-C; a test run in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: give the sweep the terminal's default.
    proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, **dirs["env"], HYDRA_FULL_ERROR="0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    quick = dirs["runs"] / "quick"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            done = list(quick.glob("*/seed0/result.json"))
            training = [p for p in quick.glob("*/seed0/last.pt") if not (p.parent / "result.json").exists()]
            if done and training:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the sweep never reached its second run")
    finally:
        os.killpg(proc.pid, sig)
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"the sweep went on after signal {sig}: {err[-2000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err), training[0].parent


def test_a_sweep_killed_mid_run_resumes_and_keeps_finished_records(dirs, tmp_path):
    """SIGKILL the whole sweep while its second run trains; launch it again."""
    import signal

    _, killed = stopped_in_its_second_run(dirs, signal.SIGKILL)
    quick = dirs["runs"] / "quick"
    finished = {p: p.read_bytes() for p in quick.glob("*/seed0/result.json")}
    assert killed / "result.json" not in finished

    res = ablate("sweep", "quick", "profile=smoke", "train.epochs=40", "runtime.num_threads=1", *paths(dirs),
                 env=dirs["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(p.read_bytes() == data for p, data in finished.items())  # intact and untouched
    assert "resuming from" in (killed / "train.log").read_text()
    statuses = {p.parent.parent.name: read_record(p).status for p in quick.glob("*/seed0/result.json")}
    assert statuses == {"baseline": "ok", "warmup": "ok", "mixup": "ok"}


def test_ctrl_c_ends_a_sweep_in_one_line_and_its_relaunch_counts_every_run(dirs):
    import signal

    res, stopped = stopped_in_its_second_run(dirs, signal.SIGINT)
    assert res.returncode == 130
    assert res.stderr.splitlines() == ["ablate: interrupted: relaunch the same command to resume"]
    assert "kept their complete records" not in res.stdout  # the first run trained in this launch
    assert not (stopped / "result.json").exists()  # no failed record for the run it stopped
    again = ablate("sweep", "quick", "profile=smoke", "train.epochs=40", "runtime.num_threads=1", *paths(dirs),
                   env=dirs["env"])
    assert again.returncode == 0, again.stderr[-3000:]
    counts = [line.split("]")[0] + "]" for line in again.stdout.splitlines()
              if line.startswith("[") and " seed 0: " in line]
    assert counts == ["[2/3]", "[3/3]"]
    assert "1 of 3 runs kept their complete records (not trained again)" in again.stdout


def test_a_failed_sweep_ends_in_one_line_without_a_traceback(dirs, tmp_path):
    # What went wrong is in the line and the records; the harness's traceback only with HYDRA_FULL_ERROR=1.
    conf, sweep = broken_sweep(tmp_path, "broken")
    env = dict(dirs["env"], ABLATE_CONF=str(conf), HYDRA_FULL_ERROR="0")
    res = ablate("sweep", str(sweep), "profile=smoke", *paths(dirs), env=env)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == "ablate: error: 1 of 2 runs did not finish: broken seed 0: failed"
    assert "Traceback" not in res.stderr and "SweepFailed" not in res.stderr


def test_a_report_goes_to_the_reports_folder_beside_its_runs_folder():
    from ablate.cli import default_report_folder

    assert default_report_folder(Path("runs/quick")) == Path("reports/quick")
    assert default_report_folder(Path("smoke/runs/quick")) == Path("smoke/reports/quick")  # not the committed one
    assert default_report_folder(Path("/tmp/x/runs/quick")) == Path("/tmp/x/reports/quick")
    assert default_report_folder(Path("/tmp/elsewhere/quick")) == Path("reports/quick")
