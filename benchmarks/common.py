"""What the benchmark scripts share: running `ablate` as a user does, and reading its records."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd"


def run_ablate(args: list[str], cache: Path | str) -> float:
    """`ablate ARGS` in a fresh process with ABLATE_CACHE=cache; its wall time. Exits with the
    error's last lines if it fails."""
    env = dict(os.environ, ABLATE_CACHE=str(cache))
    cmd = [sys.executable, "-m", "ablate.cli", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return elapsed


def records(runs: Path) -> dict[str, dict]:
    """Every result.json under runs, by its folder relative to runs."""
    return {p.parent.relative_to(runs).as_posix(): json.loads(p.read_text()) for p in runs.rglob("result.json")}


def train_timings(overrides: list[str], cache: Path | str, runs: Path) -> dict:
    """`ablate train OVERRIDES` into a fresh runs folder; the timings of its record."""
    run_ablate(["train", *overrides, f"paths.runs={runs}"], cache)
    (record,) = records(runs).values()
    return record["timings"]


def train_step(model, params, optimizer, clip_grad_norm: float, images, targets) -> float:
    """One plain training step, as ablate's loop takes it: forward, backward, gradient clipping,
    optimizer step; returns the loss."""
    import torch

    loss = sum(model(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    optimizer.step()
    return loss.item()
