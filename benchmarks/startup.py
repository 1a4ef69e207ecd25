"""Start-up: `ablate --help` and `ablate report`, which import no torch, and a run's time to its
first training step.

    python benchmarks/startup.py
    python benchmarks/startup.py --repeats 10

Prints the median wall time of `ablate --help` (target: under 1 s) and of rebuilding the
committed example report (`ablate report reports/quick/runs`), each in a fresh process, with
`python -c "import torch"` alongside as the yardstick of what they avoid; then the time to the
first training step recorded in the example's records.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "reports" / "quick" / "runs"


def timed(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ablate = shutil.which("ablate")
    cli = [ablate] if ablate else [sys.executable, "-m", "ablate.cli"]
    checks = {"`ablate --help`": cli + ["--help"],
              "`python -c 'import torch'` (yardstick)": [sys.executable, "-c", "import torch"]}
    with tempfile.TemporaryDirectory() as tmp:
        if EXAMPLE.is_dir():
            checks["`ablate report reports/quick/runs`"] = cli + ["report", str(EXAMPLE), "--out", tmp]
        for name, cmd in checks.items():
            print(f"{name}: {timed(cmd, args.repeats):.3f} s (median of {args.repeats})", flush=True)
    probe = "import sys, ablate.cli, ablate.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    print(f"torch imported by the CLI and the report modules: {out.stdout.strip()}")
    for path in sorted(EXAMPLE.rglob("result.json")):
        t = json.loads(path.read_text()).get("timings", {})
        print(f"time to first training step, {path.parent.relative_to(EXAMPLE)}: "
              f"{t.get('time_to_first_step_s', float('nan')):.2f} s")


if __name__ == "__main__":
    main()
