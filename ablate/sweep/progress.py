"""A sweep's console: one line per run it finishes, and the time left.

Whatever the launcher (in-process, joblib workers, SLURM jobs), a finished run leaves its record
in <sweep dir>/<variant>/seed<N>/result.json, so the sweeper's process watches the records: a job
is done in this launch when its record appears or is rewritten. A record a job left unchanged (a
complete run reused in place) is counted at the end in one line, and in the count of finished runs
of the lines after it, so a relaunch's last line reads [N/N]. The time left is the launch's
elapsed time per run trained so far, times the runs still to train (those without a complete
record at the start), which accounts for parallel launchers without knowing them.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, TextIO

from ..results import RECORD_NAME, RecordError, points, read_record


def minutes(seconds: float) -> str:
    """A duration as the progress lines give it: seconds under a minute, else minutes."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Progress:
    def __init__(self, jobs: list, sweep_dir: Path, out: TextIO, interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.paths = [Path(sweep_dir) / job.variant / f"seed{job.seed}" / RECORD_NAME for job in jobs]
        self.labels = [f"{job.variant} seed {job.seed}" for job in jobs]
        self.out, self.interval, self.clock = out, interval, clock
        self.start_mtime = [self._mtime(p) for p in self.paths]
        self.complete_at_start = {i for i, p in enumerate(self.paths) if self._complete(p)}
        self.done: set[int] = set()
        self.trained = 0
        self.started = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _mtime(path: Path) -> int | None:
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return None

    @staticmethod
    def _complete(path: Path) -> bool:
        try:
            return read_record(path).complete
        except (OSError, RecordError):
            return False

    def poll(self) -> list[str]:
        """The lines of the runs finished since the last poll."""
        lines = []
        for i, path in enumerate(self.paths):
            mtime = self._mtime(path)
            if i in self.done or mtime is None or mtime == self.start_mtime[i]:
                continue
            try:
                record = read_record(path)
            except (OSError, RecordError):
                continue  # being written: the next poll reads it
            self.done.add(i)
            how = f", mAP {points(record.metrics['mAP'])}" if "mAP" in record.metrics else ""
            if record.reused_from:
                took = "reused"
            else:
                self.trained += 1
                took = minutes(record.timings.get("wall_s", 0.0))
            lines.append(f"[{self.finished_by(i)}/{len(self.paths)}] {self.labels[i]}: {record.status}{how}, {took}"
                         f"{self.time_left()}")
        return lines

    def finished_by(self, index: int) -> int:
        """How many runs are finished once run `index` is: those finished in this launch, and those
        before it in launch order whose complete records were kept (a relaunch counts them too, so
        its last line reads [N/N])."""
        kept = sum(1 for j in range(index) if j in self.complete_at_start and j not in self.done)
        return len(self.done) + kept

    def kept(self) -> int:
        """Runs whose complete record this launch left as it was (not those it never reached)."""
        return sum(1 for i, p in enumerate(self.paths) if i not in self.done and self._complete(p))

    def time_left(self) -> str:
        to_train = [i for i in range(len(self.paths)) if i not in self.done and i not in self.complete_at_start]
        if not to_train:
            return ""
        if not self.trained:
            return f"; {len(to_train)} to train"
        per_run = (self.clock() - self.started) / self.trained
        return f"; about {minutes(per_run * len(to_train))} left ({len(to_train)} to train)"

    def _print(self, lines: list[str]) -> None:
        for line in lines:
            print(line, file=self.out, flush=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._print(self.poll())

    def __enter__(self) -> "Progress":
        self._thread = threading.Thread(target=self._watch, name="ablate-sweep-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._print(self.poll())
        kept = self.kept()
        if kept:
            self._print([f"{kept} of {len(self.paths)} runs kept their complete records (not trained again)"])
