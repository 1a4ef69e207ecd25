"""Sweeps on a real SLURM cluster through Hydra's submitit launcher (conf/hydra/launcher/slurm.yaml):
a smoke sweep whose jobs show in squeue, a job cancelled mid-training and the sweep relaunched, a
job preempted (SIGUSR2) and requeued, resuming from its checkpoint.

They need a cluster: `scripts/slurm-cluster up` starts a single-node one on this machine (as root,
Debian/Ubuntu), then `pytest -m slurm`. Without one they are skipped; `.ci/run` brings one up and
sets ABLATE_REQUIRE_SLURM=1, which makes a missing cluster a failure instead."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ablate.results import read_record

from conftest import REPO_ROOT

pytestmark = pytest.mark.slurm

# Long enough that a signal sent once the first checkpoint exists lands mid-training, SLURM's
# KillWait (5 s) included, short enough to keep the module near two minutes: 30 epochs of 64 images
# at smoke size (16 images, ~0.17 s an epoch on an idle 2-core machine, let a cancelled run finish
# within KillWait).
EPOCHS = 30
TRAIN_IMAGES = ["data.generator.num_train=64", "data.max_train_images=64"]


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


def cluster_partition() -> str:
    """The cluster's default partition; skips (or fails under ABLATE_REQUIRE_SLURM=1) without a cluster
    that answers both sinfo and sacct (submitit learns a job's end from sacct)."""
    why = None
    if shutil.which("sinfo") is None:
        why = "no SLURM commands (sinfo) on PATH"
    else:
        try:
            sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=15)
            sacct = subprocess.run(["sacct", "-n", "-X"], capture_output=True, text=True, timeout=15)
        except subprocess.TimeoutExpired:
            sinfo = sacct = None
        if sinfo is None or sinfo.returncode != 0 or not sinfo.stdout.strip():
            why = f"sinfo does not answer: {last_line(sinfo.stderr) if sinfo else 'timed out'}"
        elif sacct.returncode != 0:
            why = f"sacct does not answer (no accounting): {last_line(sacct.stderr)}"
    if why:
        message = f"no SLURM cluster ({why}); `scripts/slurm-cluster up` starts one"
        if os.environ.get("ABLATE_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    partitions = [line.split()[0] for line in sinfo.stdout.splitlines()]
    return next((p.rstrip("*") for p in partitions if p.endswith("*")), partitions[0])


@pytest.fixture(scope="module")
def partition():
    return cluster_partition()


def sweep_file(tmp_path: Path, name: str, tricks: list[str]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"design: one_at_a_time\ntricks: {json.dumps(tricks)}\nseeds: 1\n")
    return path


def start_sweep(sweep: Path, root: Path, partition: str, cache: Path, epochs: int) -> subprocess.Popen:
    """`ablate sweep` on SLURM as a user runs it: one CPU, 1 GB and no GPU per job, a time limit
    (60 min) far beyond the run, so a SIGUSR2 means preemption to submitit, not a timeout."""
    args = [sys.executable, "-m", "ablate.cli", "sweep", str(sweep), "profile=smoke", f"train.epochs={epochs}",
            *TRAIN_IMAGES, "runtime.num_threads=1", f"paths.runs={root / 'runs'}", f"paths.reports={root / 'reports'}",
            "hydra/launcher=slurm", f"hydra.launcher.partition={partition}", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=60",
            f"hydra.launcher.name=ablate-test-{root.name}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                            env=dict(os.environ, ABLATE_CACHE=str(cache)))


def squeue(name: str) -> dict[str, str]:
    """Job id -> state of the jobs of that name."""
    out = subprocess.run(["squeue", "-h", "--name", name, "-o", "%i %T"], capture_output=True, text=True,
                         timeout=30).stdout
    return dict(line.split() for line in out.splitlines())


def watch(proc: subprocess.Popen, name: str, until=None, seen=None, timeout: float = 240) -> list[tuple[str, str]]:
    """Poll squeue while the sweep runs (or until `until()` is true); the (job, state) changes seen,
    appended to `seen` (the changes seen before)."""
    seen, t0 = seen if seen is not None else [], time.monotonic()
    last = dict(seen)
    while proc.poll() is None and not (until and until()):
        assert time.monotonic() - t0 < timeout, f"sweep still running after {timeout} s; jobs seen {seen}"
        now = squeue(name)
        seen += [(job, state) for job, state in now.items() if last.get(job) != state]
        last = now
        time.sleep(0.3)
    return seen


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def wait_until_gone(name: str, timeout: float = 60) -> None:
    """Jobs of a failed launch go on running: relaunching before they end would train one run twice."""
    t0 = time.monotonic()
    while squeue(name):
        assert time.monotonic() - t0 < timeout, f"jobs {squeue(name)} still queued after {timeout} s"
        time.sleep(0.5)


def slurm_job_of(run_dir: Path) -> str:
    """The SLURM job (array task) a run trains in: Hydra records it as hydra.job.id in the run folder."""
    return str(OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.job.id)


def epoch_points(record) -> list[int]:
    return [p["epoch"] for p in record.curve if "epoch_loss" in p]


def test_a_smoke_sweep_runs_as_slurm_jobs(tmp_path, partition, shapes_cache):
    root = tmp_path / "smoke"
    proc = start_sweep(REPO_ROOT / "sweeps" / "quick.yaml", root, partition, shapes_cache, epochs=1)
    seen = watch(proc, f"ablate-test-{root.name}")
    out = finish(proc)
    print("squeue saw:", seen)
    assert proc.returncode == 0, out
    assert {state for _, state in seen} & {"PENDING", "RUNNING"}, f"no job of the sweep seen in squeue: {seen}"
    runs = root / "runs" / "quick"
    records = {v: read_record(runs / v / "seed0" / "result.json") for v in ("baseline", "warmup", "mixup")}
    assert {v: r.status for v, r in records.items()} == {v: "ok" for v in records}
    # each run trained in its own SLURM job, which sacct saw complete
    jobs = sorted(slurm_job_of(runs / v / "seed0") for v in records)
    assert len(set(jobs)) == 3 and all("_" in j for j in jobs), jobs  # one array of 3 tasks
    states = subprocess.run(["sacct", "-n", "-X", "-o", "JobID,State", "-j", jobs[0].split("_")[0]],
                            capture_output=True, text=True).stdout.split()
    assert dict(zip(states[::2], states[1::2])) == {j: "COMPLETED" for j in jobs}
    assert (root / "reports" / "quick" / "report.md").exists()


def test_a_cancelled_job_is_finished_by_relaunching_the_sweep(tmp_path, partition, shapes_cache):
    root, name = tmp_path / "cancel", "ablate-test-cancel"
    sweep = sweep_file(tmp_path, "pair", ["warmup"])
    runs = root / "runs" / "pair"
    cancelled = runs / "baseline" / "seed0"
    proc = start_sweep(sweep, root, partition, shapes_cache, epochs=EPOCHS)
    seen = watch(proc, name, until=lambda: (cancelled / "last.pt").exists())
    job = slurm_job_of(cancelled)
    subprocess.run(["scancel", job], check=True)
    assert not (cancelled / "result.json").exists(), "the run finished before it was cancelled"
    watch(proc, name, seen=seen)
    out = finish(proc)
    print(f"cancelled {job}; squeue saw:", seen)
    assert proc.returncode != 0 and "CANCELLED" in out, out[-3000:]
    # SLURM kills a cancelled job KillWait (5 s) after its SIGTERM, which submitit ignores
    assert not (cancelled / "result.json").exists(), "the run finished within KillWait: raise EPOCHS here"
    wait_until_gone(name)
    other = runs / "warmup" / "seed0" / "result.json"
    other_before = other.read_bytes()

    proc = start_sweep(sweep, root, partition, shapes_cache, epochs=EPOCHS)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert other.read_bytes() == other_before  # kept, not trained again
    record = read_record(cancelled / "result.json")
    assert record.status == "ok" and epoch_points(record) == list(range(1, EPOCHS + 1))
    log = (cancelled / "train.log").read_text()
    resumed = [line for line in log.splitlines() if "resuming from" in line]
    print("relaunch:", resumed)
    assert len(resumed) == 1, log
    assert read_record(other).status == "ok"


def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, partition, shapes_cache):
    root, name = tmp_path / "preempt", "ablate-test-preempt"
    sweep = sweep_file(tmp_path, "single", [])
    run = root / "runs" / "single" / "baseline" / "seed0"
    # the same run, not interrupted, beside it: the resumed run must end with the same numbers
    reference_root = tmp_path / "reference"
    reference = start_sweep(sweep, reference_root, partition, shapes_cache, epochs=EPOCHS)
    proc = start_sweep(sweep, root, partition, shapes_cache, epochs=EPOCHS)
    seen = watch(proc, name, until=lambda: (run / "last.pt").exists())
    job = slurm_job_of(run)
    # A preemption as submitit's own SlurmJob._interrupt(timeout=False) fakes it: SIGTERM (ignored),
    # then SIGUSR2, the signal submitit asks for (--signal=USR2@...). Its handler checkpoints
    # (hydra-submitit-launcher's checkpoint(): the same job again) and requeues the job.
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    watch(proc, name, seen=seen)
    out = finish(proc)
    print(f"preempted {job}; squeue saw:", seen)
    assert proc.returncode == 0, out[-3000:]
    assert finish(reference) is not None and reference.returncode == 0
    submitit_log = "".join(p.read_text() for p in (root / "runs" / "single" / ".submitit").rglob("*_log.*"))
    assert "this job is preempted" in submitit_log and f"Requeued job {job}" in submitit_log, submitit_log[-3000:]
    assert [state for j, state in seen if j == job].count("RUNNING") == 2, seen  # ran, requeued, ran again
    log = (run / "train.log").read_text()
    resumed = [line for line in log.splitlines() if "resuming from" in line]
    print("after the requeue:", resumed)
    assert len(resumed) == 1 and str(run / "last.pt") in resumed[0], log
    after_epoch = int(resumed[0].rsplit(" ", 1)[1])
    assert 1 <= after_epoch < EPOCHS
    record = read_record(run / "result.json")
    expected = read_record(reference_root / "runs" / "single" / "baseline" / "seed0" / "result.json")
    assert record.status == "ok" and epoch_points(record) == list(range(1, EPOCHS + 1))
    # resumed after epoch N, it repeats the uninterrupted run exactly (per-epoch seeds, restored state)
    assert [p["epoch_loss"] for p in record.curve if "epoch_loss" in p] == \
        [p["epoch_loss"] for p in expected.curve if "epoch_loss" in p]
    assert record.metrics == expected.metrics
