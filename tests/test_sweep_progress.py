"""The sweep's console lines (ablate/sweep/progress.py): one per run finished in this launch, from
the records on disk, and the time left from the launch's pace."""
import io
from types import SimpleNamespace

from ablate.results import RunRecord, write_record
from ablate.sweep.progress import Progress


def job(variant, seed=0):
    return SimpleNamespace(variant=variant, seed=seed)


def record(variant, status="ok", mAP=0.5, wall_s=120.0, reused_from=None):
    return RunRecord(status=status, variant=variant, sweep="s", tricks=[], seed=0, config={}, config_hash="h",
                     base_hash="b", metrics={"mAP": mAP} if status == "ok" else {}, timings={"wall_s": wall_s},
                     reused_from=reused_from)


def test_a_line_per_finished_run_with_the_time_left_from_the_launchs_pace(tmp_path):
    now = [0.0]
    jobs = [job("baseline"), job("mixup"), job("warmup"), job("cutmix")]
    old = write_record(record("cutmix", mAP=0.4), tmp_path / "cutmix" / "seed0")  # complete before the launch
    progress = Progress(jobs, tmp_path, io.StringIO(), clock=lambda: now[0])
    assert progress.poll() == []
    now[0] = 300.0
    write_record(record("baseline", mAP=0.585, wall_s=290.0), tmp_path / "baseline" / "seed0")
    # mAP in points, as the report gives it; 300 s for one trained run, 2 still to train (cutmix's complete record will be reused)
    assert progress.poll() == ["[1/4] baseline seed 0: ok, mAP 58.5, 4.8 min; about 10.0 min left (2 to train)"]
    assert progress.poll() == []  # reported once
    now[0] = 400.0
    write_record(record("mixup", reused_from="/runs/other/mixup/seed0"), tmp_path / "mixup" / "seed0")
    write_record(record("warmup", status="not_applicable"), tmp_path / "warmup" / "seed0")
    lines = progress.poll()
    # the pace is still 400 s per trained run (a reused record trains nothing): warmup left
    assert lines == ["[2/4] mixup seed 0: ok, mAP 50.0, reused; about 6.7 min left (1 to train)",
                     "[3/4] warmup seed 0: not_applicable, 2.0 min"]
    # cutmix's record was not rewritten: counted at the end, not as a finished run
    assert old.exists() and progress.poll() == []


def test_the_watcher_prints_as_runs_finish_and_sums_up_the_runs_left_alone(tmp_path):
    out = io.StringIO()
    write_record(record("mixup"), tmp_path / "mixup" / "seed0")
    with Progress([job("baseline"), job("mixup")], tmp_path, out, interval=0.01):
        write_record(record("baseline", mAP=0.6, wall_s=30.0), tmp_path / "baseline" / "seed0")
    assert out.getvalue().splitlines() == ["[1/2] baseline seed 0: ok, mAP 60.0, 30 s",
                                           "1 of 2 runs kept their complete records (not trained again)"]


def test_a_relaunch_counts_the_kept_runs_and_an_interrupted_launch_claims_none_kept(tmp_path):
    jobs = [job("baseline"), job("warmup"), job("mixup")]
    out = io.StringIO()
    # An interrupted launch: baseline finished, warmup stopped mid-training (no record), mixup never began.
    with Progress(jobs, tmp_path, out, interval=60):
        write_record(record("baseline", mAP=0.3, wall_s=30.0), tmp_path / "baseline" / "seed0")
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == ["[1/3] baseline seed 0: ok"]
    # Its relaunch: baseline's record kept, counted in the lines of the runs after it.
    out = io.StringIO()
    with Progress(jobs, tmp_path, out, interval=60):
        write_record(record("warmup", mAP=0.4, wall_s=30.0), tmp_path / "warmup" / "seed0")
        write_record(record("mixup", mAP=0.2, wall_s=30.0), tmp_path / "mixup" / "seed0")
    lines = out.getvalue().splitlines()
    assert [line.split(" seed")[0] for line in lines[:2]] == ["[2/3] warmup", "[3/3] mixup"]
    assert lines[2:] == ["1 of 3 runs kept their complete records (not trained again)"]
