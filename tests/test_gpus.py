"""One GPU per parallel job: claims by file lock, released when the job ends or dies."""
import multiprocessing
import time

from ablate.gpus import claimed_gpu, try_claim


def test_concurrent_jobs_get_different_gpus_and_a_freed_one_is_taken_again(tmp_path):
    first = try_claim(tmp_path, 2)
    second = try_claim(tmp_path, 2)
    assert first[0] == 0 and second[0] == 1
    assert try_claim(tmp_path, 2) is None  # both held
    first[1].close()  # the first job ends: its lock goes with its file
    third = try_claim(tmp_path, 2)
    assert third is not None and third[0] == 0
    second[1].close()
    third[1].close()


def _hold_gpu(lock_dir, ready, stop):
    with claimed_gpu(lock_dir, 1) as index:
        ready.put(index)
        stop.wait(30)


def test_a_job_waits_for_a_gpu_and_a_killed_job_frees_its_own(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    holder = ctx.Process(target=_hold_gpu, args=(tmp_path, ready, stop))
    holder.start()
    assert ready.get(timeout=60) == 0
    assert try_claim(tmp_path, 1) is None  # held by the other process
    holder.kill()  # SIGKILL: no clean-up ran
    holder.join()
    start = time.monotonic()
    with claimed_gpu(tmp_path, 1, poll_s=0.05) as index:
        assert index == 0
    assert time.monotonic() - start < 5
