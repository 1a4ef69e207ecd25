"""One run on several processes (ablate/distributed.py): the global batch shared out, the launch
environment read, and real 2-process runs on gloo (torchrun) against one process.

The equivalence runs use RetinaNet with the group_norm trick and no flips: RetinaNet normalises
each image's loss by that image's positives and averages over images, GroupNorm normalises each
image alone, so one process at batch B and two at B/2 compute the same losses and, DDP averaging
the two halves' gradients, the same steps. Only float32 summation order differs (a convolution's
weight gradient summed over 4 images, or over 2 and 2 then averaged). Tolerance: rtol 1e-5 on
every logged step loss over 2 epochs (8 AdamW steps), about 100 float32 ulps; measured here up to
~1e-6. Any real difference (a wrong share of the batch, a wrong LR, per-process BatchNorm, flips)
moves the loss at the 1e-2 level (FCOS with BatchNorm on 2 processes: see the README).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ablate import distributed
from ablate.config import conf_dir
from ablate.data import make_loader
from ablate.errors import UserInputError
from ablate.testing import one_thread
from ablate.train import train_and_evaluate

from conftest import REPO_ROOT

EQUIVALENT = ["profile=smoke", "model=retinanet", "tricks=[group_norm]", "data.hflip=0", "train.epochs=2"]
RTOL = 1e-5


class Indices(torch.utils.data.Dataset):
    """Item i is (i, {}): the loader's batches show which indices it drew."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return i, {}


def batches(loader) -> list[list[int]]:
    return [list(images) for images, _ in loader]


def test_each_process_gets_its_share_of_the_one_process_batches():
    one = batches(make_loader(Indices(), 4, shuffle=True, num_workers=0, seed=7))
    shares = [batches(distributed.rank_loader(Indices(), 4, 0, 7, rank_=r, processes=2)) for r in (0, 1)]
    assert one != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # shuffled
    assert [len(b) for b in shares[0]] == [2, 2, 1] and [len(b) for b in shares[1]] == [2, 2, 1]
    assert [a + b for a, b in zip(*shares)] == one
    assert batches(distributed.rank_loader(Indices(), 4, 0, 7, rank_=0, processes=1)) == one


def test_share_of_a_batch():
    assert distributed.share_of([5, 6, 7, 8], 0, 2) == [5, 6]
    assert distributed.share_of([5, 6, 7, 8], 1, 2) == [7, 8]
    assert distributed.share_of([5, 6, 7], 1, 2) == [7]
    # fewer images than processes: padded with the batch's own, so every process steps
    assert distributed.share_of([9], 0, 2) == [9] and distributed.share_of([9], 1, 2) == [9]


def test_global_batch_must_divide_over_the_processes():
    assert distributed.per_process_batch(16, 4) == 4
    with pytest.raises(UserInputError, match=r"data.batch_size=6 cannot be split evenly over 4 processes"):
        distributed.per_process_batch(6, 4)


def test_backend_follows_the_device():
    assert distributed.backend_for("auto", "cpu") == "gloo"
    assert distributed.backend_for("auto", "cuda:1") == "nccl"
    assert distributed.backend_for("gloo", "cuda") == "gloo"
    with pytest.raises(UserInputError, match=r"runtime.distributed.backend='mpi': choose one of auto, gloo, nccl"):
        distributed.backend_for("mpi", "cpu")


def test_launch_environment_of_torchrun():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29511"}
    assert distributed.launch_environment(env) == distributed.LaunchEnvironment(1, 2, 1, "10.0.0.5", 29511, "torchrun")
    assert distributed.launch_environment({"PATH": "/bin"}) is None


def test_launch_environment_of_slurm_tasks(monkeypatch):
    pytest.importorskip("submitit")
    for key in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NODELIST": "gpu[03-04]"}
    seen = []
    for procid, localid, node in ((0, 0, 0), (3, 1, 1)):
        for key, value in {**slurm, "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid),
                           "SLURM_NODEID": str(node)}.items():
            monkeypatch.setenv(key, value)
        seen.append(distributed.launch_environment())
    assert [(e.rank, e.world_size, e.local_rank, e.master_addr, e.launcher) for e in seen] == [
        (0, 4, 0, "gpu03", "submitit"), (3, 4, 1, "gpu03", "submitit")]
    # the port comes from the job id: every task of the job meets at the same one
    assert seen[0].master_port == seen[1].master_port and 20000 <= seen[0].master_port <= 60000


# ---------------------------------------------------------------- real processes (gloo, CPU)


def child_env(cache) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", ABLATE_CACHE=str(cache),
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))


def torchrun(processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]


def train_command(processes: int, run_dir: Path, *overrides: str) -> list[str]:
    return torchrun(processes) + ["-m", "ablate.cli", "train", *EQUIVALENT, f"paths.runs={run_dir.parent / 'runs'}",
                     f"hydra.run.dir={run_dir}", *overrides]


def run(cmd, cache) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(cache), cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def losses(record: dict) -> list[float]:
    return [p["loss"] for p in record["curve"] if "loss" in p]


@pytest.fixture(scope="module")
def equivalent_runs(tmp_path_factory, shapes_cache):
    """The same config on one process (in this one) and on two (torchrun), each in a fixed folder."""
    root = tmp_path_factory.mktemp("ddp")
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[*EQUIVALENT, f"paths.cache={shapes_cache}"])
    with one_thread():
        train_and_evaluate(cfg, root / "p1")
    run(train_command(2, root / "p2"), shapes_cache)
    return root


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(equivalent_runs):
    one, two = read(equivalent_runs / "p1" / "result.json"), read(equivalent_runs / "p2" / "result.json")
    assert one["status"] == two["status"] == "ok"
    assert len(losses(one)) == len(losses(two)) == 8  # 2 epochs of 16 images at batch 4
    assert losses(two) == pytest.approx(losses(one), rel=RTOL)
    assert two["metrics"]["mAP"] == pytest.approx(one["metrics"]["mAP"], abs=1e-3)
    assert (one["distributed"], two["distributed"]) == (None, {"world_size": 2, "backend": "gloo"})
    # the world size is hashed on several processes; one process keeps the hash it always had
    assert "processes" not in one["config"]["train"] and two["config"]["train"]["processes"] == 2
    assert one["config_hash"] != two["config_hash"]
    # rank 1 made no Hydra folder or log of its own (in the working folder either)
    assert sorted(p.name for p in (equivalent_runs / "p2").iterdir()) == [".hydra", "last.pt", "result.json",
                                                                           "train.log"]
    assert not (REPO_ROOT / "train.log").exists()


@pytest.mark.slow
def test_only_rank_0_writes_and_sync_bn_needs_gpus(tmp_path, shapes_cache):
    run(torchrun(2) + [str(REPO_ROOT / "tests" / "ddp_worker.py"), str(tmp_path), str(shapes_cache)], shapes_cache)
    reports = [read(tmp_path / f"report{r}.json") for r in (0, 1)]
    assert [(r["processes"], r["backend"], r["status"], r["train_processes"]) for r in reports] == [
        (2, "gloo", "ok", 2)] * 2
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["last.pt", "result.json"]
    assert not (tmp_path / "rank1").exists() or not any((tmp_path / "rank1").iterdir())
    # sync_bn gets past "one process" on the real group and stops at the CPU backend, with its reason
    for r in reports:
        assert r["sync_bn"].startswith("trick 'sync_bn' is not applicable: torch.nn.SyncBatchNorm synchronises "
                                       "GPU tensors only")


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_same_result(equivalent_runs, tmp_path, shapes_cache):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_command(2, run_dir), env=child_env(shapes_cache), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run_dir / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # Both training processes, mid-run (torchrun starts them in sessions of their own), then torchrun.
    for pid in children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    time.sleep(1)  # nothing is left to write a record
    assert (run_dir / "last.pt").exists() and not (run_dir / "result.json").exists()
    killed_after = torch.load(run_dir / "last.pt", weights_only=True)["epoch"] + 1
    assert killed_after == 1

    run(train_command(2, run_dir), shapes_cache)
    assert f"resuming from {run_dir / 'last.pt'} after epoch {killed_after}" in (run_dir / "train.log").read_text()
    resumed, whole = read(run_dir / "result.json"), read(equivalent_runs / "p2" / "result.json")
    assert resumed["status"] == "ok" and resumed["config_hash"] == whole["config_hash"]
    assert losses(resumed) == pytest.approx(losses(whole), rel=RTOL)
    assert resumed["metrics"]["mAP"] == pytest.approx(whole["metrics"]["mAP"], abs=1e-6)
