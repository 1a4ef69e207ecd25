"""benchmarks/coco_size.py at a small size: it writes its set, measures each figure in fresh
processes and prints the table (the COCO-size run takes ~40 min: benchmarks/README.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's /proc/PID/smaps_rollup")
def test_the_coco_size_benchmark_runs_small(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "coco_size.py"), "--dir", str(tmp_path), "--images", "300",
           "--boxes", "2000", "--val-images", "40", "--val-boxes", "300", "--workers", "0", "2",
           "--dist-workers", "--eval-sets", "8/250", "--calls", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "data" / "images").iterdir())) == 300 + 40 + 4  # links, and the 4 JPEGs
    res = json.loads((tmp_path / "results.json").read_text())["after"]
    assert res["read"]["first"]["images"] == 300
    assert res["read"]["cached"]["read_s"] < res["read"]["first"]["read_s"]
    assert res["memory"]["2"]["processes"] == 3 and res["memory"]["2"]["accesses"] == 300
    evaluation = res["eval"]["8/250"]
    assert evaluation["detections"] == 250 and len(evaluation["pycocotools"]["calls_s"]) == 2
    assert evaluation["pycocotools"]["mAP"] == pytest.approx(evaluation["faster_coco_eval"]["mAP"], abs=1e-6)
    assert "| 1 process, 2 workers: PSS / 1 process 0 workers |" in proc.stdout
