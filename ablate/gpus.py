"""One GPU per job when parallel jobs (joblib, submitit_local) share a machine with several GPUs.

A job claims the first GPU nobody holds, by an exclusive lock on a file per GPU
(`<runs>/.gpus/<host>-gpu<i>.lock`, `fcntl.flock`), and holds it while it trains. The lock
goes with the process if the job dies, so a killed job never keeps its GPU. Assigning by job
number instead would put two jobs on one GPU, and leave another idle, as soon as jobs finish
out of order. With more jobs than GPUs, a job waits for one to free.

The job then trains on `cuda:<i>`: the same as `CUDA_VISIBLE_DEVICES=<i>` for the job, which
cannot be set once CUDA has started in a reused worker process.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Iterator

log = logging.getLogger("ablate.gpus")


def try_claim(lock_dir: Path, count: int) -> tuple[int, IO] | None:
    """(index, open lock file) of the first of `count` GPUs free on this host, or None."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for index in range(count):
        f = open(lock_dir / f"{host}-gpu{index}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        return index, f
    return None


@contextlib.contextmanager
def claimed_gpu(lock_dir: Path, count: int, poll_s: float = 5.0) -> Iterator[int]:
    """Hold one of `count` GPUs for the duration of the block; yields its index."""
    waited = False
    while (claim := try_claim(lock_dir, count)) is None:
        if not waited:
            log.info("all %d GPUs are held by other jobs of this machine: waiting for one", count)
            waited = True
        time.sleep(poll_s)
    index, f = claim
    try:
        yield index
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
