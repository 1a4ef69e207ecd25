"""The per-run record: one ``result.json`` per run, the only thing the report reads.

No torch here: ``ablate report`` must run on any laptop and start fast.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from .errors import UserInputError

SCHEMA_VERSION = 1
RECORD_NAME = "result.json"
# not_applicable: the run's tricks do not fit its detector or each other (a design may ask for
# such a combination); it trains nothing and the report shows "n/a", never a zero change.
# pruned: a search's trial stopped early by its pruner (ablate/sweep/search.py): final for that
# trial, but not a full run of its config, so never indexed for reuse by other sweeps.
STATUSES = ("ok", "failed", "diverged", "not_applicable", "pruned")

# COCOeval's 12 stats, in its order, under the names COCO gives them.
COCO_METRICS = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# Config sections that decide what a run computes; `paths` and `runtime` (device, threads,
# progress bar) do not, so runs that differ only there share one hash.
HASHED_SECTIONS = ("seed", "data", "model", "tricks", "train", "eval")
# Keys inside hashed sections that decide no number of a run: the run-health thresholds only decide
# which warnings its record carries. Left out, so setting them neither retrains finished runs nor
# splits records made before they existed from those made after into two bases.
UNHASHED_KEYS = (("eval", "health"),)
# Where a trick's class lives decides no number either: a built-in trick's _target_ by its path
# now (ablate.tricks.data.mixup.MixUp) hashes as by its path of before the tricks were grouped by
# kind (ablate.tricks.mixup.MixUp, which still imports), so the records and checkpoints made before
# the move keep their config hash: reused, resumed, and one row with the new runs in a report.
_TRICK_KIND = re.compile(r"^ablate\.tricks\.(?:data|loss|network|schedule)\.")


def points(fraction: float, digits: int = 1) -> str:
    """A COCO metric (a fraction in the record) as a person reads it everywhere, in the report as on
    the console: in points, 0.523 -> "52.3"."""
    return f"{fraction * 100:.{digits}f}"


class RecordError(UserInputError):
    """A result.json that is missing, truncated, corrupt or of another schema."""


@dataclass
class RunRecord:
    status: str
    variant: str
    sweep: str
    tricks: list[str]
    seed: int
    config: dict[str, Any]
    config_hash: str
    # Hash of the config without its tricks and seed: runs with the same base_hash share a baseline (a
    # variant is one base_hash, one list of tricks and one tricks_hash, their arguments).
    base_hash: str
    # The 12 COCO_METRICS and mAP_se, the bootstrap standard error of mAP over the val images
    # (ablate/bootstrap.py; absent in records made before it).
    metrics: dict[str, float] = field(default_factory=dict)
    per_class_ap: dict[str, float] = field(default_factory=dict)
    # Run-health warnings (ablate/health.py: {"code", "message", numbers...}); empty when the run looks
    # healthy or predates the check. A collapsed run keeps status ok: the warning sits beside it.
    health: list[dict[str, Any]] = field(default_factory=list)
    # One entry per logged iteration or epoch: {"epoch", "step", "loss", "lr", ...}.
    curve: list[dict[str, Any]] = field(default_factory=list)
    # wall_s, train_s, train_cpu_s, eval_s, images_per_s, data_wait_s, data_wait_fraction, batch_tricks_s,
    # batch_tricks_fraction, model_s, harness_fraction, checkpoint_s, bootstrap_s, time_to_first_step_s
    timings: dict[str, float] = field(default_factory=dict)
    inference_ms_per_image: float | None = None
    params: int | None = None
    flops: int | None = None
    peak_memory_mb: float | None = None
    # What peak_memory_mb covers (ablate/finish.py): "run" (this run's peak), "process" (on the CPU, the
    # peak of every run its process trained so far: a sweep's runs share one); "" in records made before
    # it, whose CPU peaks are the process's.
    peak_memory_scope: str = ""
    device: str = ""
    error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    # The code the run's numbers depend on (ablate/fingerprint.py): {"fingerprint", "files", "versions"};
    # a record is reused only by a run of the same config and the same code. Empty in older records.
    code: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    # The run folder this record was copied from, when an identical config had already run.
    reused_from: str | None = None
    # A run on several processes (ablate/distributed.py): {"world_size", "backend"}; None in one process.
    distributed: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise RecordError(f"status {self.status!r} is not one of {STATUSES}")
        if not isinstance(self.health, list) or not all(
                isinstance(w, dict) and isinstance(w.get("code"), str) for w in self.health):
            raise RecordError(f"health must be a list of warnings with a code, got {self.health!r}")

    @property
    def complete(self) -> bool:
        """A record is complete when the run ended for good (failures are retried)."""
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "RunRecord":
        if not isinstance(data, dict):
            raise RecordError(f"{source}: a record must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RecordError(f"{source}: schema_version {version!r}, this ablate reads {SCHEMA_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise RecordError(f"{source}: missing keys {missing}")
        unknown = sorted(data.keys() - names)
        if unknown:
            raise RecordError(f"{source}: unknown keys {unknown}")
        try:
            return cls(**data)
        except RecordError as e:
            raise RecordError(f"{source}: {e}") from None


def config_hash(config: dict[str, Any], sections: tuple[str, ...] = HASHED_SECTIONS) -> str:
    """A short stable hash of the sections of a resolved config that decide a run's result."""
    picked = {k: config.get(k) for k in sections}
    if isinstance(picked.get("tricks"), dict):
        picked["tricks"] = {name: _flat_target(node) for name, node in picked["tricks"].items()}
    for section, key in UNHASHED_KEYS:
        if isinstance(picked.get(section), dict) and key in picked[section]:
            picked[section] = {k: v for k, v in picked[section].items() if k != key}
    text = json.dumps(picked, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flat_target(node: Any) -> Any:
    """A trick's node with its _target_ by the flat path of before (see _TRICK_KIND)."""
    if isinstance(node, dict) and isinstance(node.get("_target_"), str):
        return {**node, "_target_": _TRICK_KIND.sub("ablate.tricks.", node["_target_"])}
    return node


def base_hash(config: dict[str, Any]) -> str:
    """The hash of the config with its tricks and seed taken out: what a variant is compared against."""
    return config_hash(config, tuple(s for s in HASHED_SECTIONS if s not in ("tricks", "seed")))


def tricks_hash(config: dict[str, Any]) -> str:
    """The hash of the config's tricks section alone: the selected tricks with their arguments. Two runs of
    one base and the same trick names but another tricks_hash ran the tricks with other arguments
    (tricks.mixup.alpha=0.2 against 1.5): two variants, not two runs of one."""
    return config_hash(config, ("tricks",))


PROC_STATUS = Path("/proc/self/status")


def proc_status(key: str) -> str | None:
    """The first word of a line of Linux's /proc/self/status ("Umask", "VmHWM"); None where there is none."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key and value.split():
                return value.split()[0]
    except OSError:
        pass
    return None


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only be read by
    setting it, which another thread's file creation could meet)."""
    shown = proc_status("Umask")
    if shown is not None:
        return int(shown, 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO], Any], binary: bool = False) -> Path:
    """Write a file so that readers see the old content or the new, never half of it: `write`
    fills a temporary file in the same folder, which is synced to disk and renamed over `path`. The
    file gets the mode any new file gets (0666 less the umask): mkstemp's 0600 would hide a sweep's
    records and checkpoints from the rest of a team sharing its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_record(record: RunRecord, run_dir: Path) -> Path:
    path = Path(run_dir) / RECORD_NAME
    atomic_write_text(path, json.dumps(record.to_dict(), indent=1, allow_nan=True) + "\n")
    return path


def read_record(path: Path) -> RunRecord:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RecordError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); truncated or corrupt") from None
    return RunRecord.from_dict(data, source=str(path))


INDEX_DIR = ".index"


def index_record(runs_root: Path, record: RunRecord, run_dir: Path) -> None:
    """Note where the complete run of a config lives: runs_root/.index/<config_hash> holds its folder
    (not a pruned run's: it stopped early)."""
    if record.status == "pruned":
        return
    atomic_write_text(Path(runs_root) / INDEX_DIR / record.config_hash, str(Path(run_dir).resolve()) + "\n")


def find_indexed(runs_root: Path, chash: str) -> tuple[Path, RunRecord] | None:
    """The folder and complete record of a run of this very config under runs_root, if any ran."""
    entry = Path(runs_root) / INDEX_DIR / chash
    try:
        run_dir = Path(entry.read_text().strip())
        record = read_record(run_dir / RECORD_NAME)
    except (OSError, RecordError):
        return None
    if record.config_hash != chash or not record.complete or record.reused_from or record.status == "pruned":
        return None
    return run_dir, record


def find_records(*roots: Path) -> tuple[list[tuple[Path, RunRecord]], list[RecordError]]:
    """All records under the given folders, and the errors of those that could not be read."""
    found: list[tuple[Path, RunRecord]] = []
    errors: list[RecordError] = []
    for root in roots:
        for path in sorted(Path(root).rglob(RECORD_NAME)):
            try:
                found.append((path, read_record(path)))
            except RecordError as e:
                errors.append(e)
    return found, errors
