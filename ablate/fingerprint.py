"""The code a run's numbers depend on, as a fingerprint, so a record made by other code is never
reused as if it were fresh.

The config hash says what a run computes; this says with which code. Fingerprinted: the modules
every run executes to train and evaluate (CORE: the loop, the data pipeline, the detectors and
their losses, the trick contract), the source file of each selected trick's class (found from its
`_target_`, inside this package or not), and the torch and torchvision versions (and timm's when
the backbone is timm's: model.backbone.library=timm). Not fingerprinted:
what decides no number of a run (the CLI, the sweeper, the report, run health), and the modules of
tricks a run does not use, so editing one trick retrains only the runs that use it. A helper a trick
imports from another trick's module is not followed: keep shared helpers in the core (tricks/base.py,
models/).

No torch here: the sweeper and the report import this.
"""
from __future__ import annotations

import hashlib
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

PACKAGE_DIR = Path(__file__).resolve().parent
# Relative to the package folder; a folder stands for its *.py files, its subfolders' included.
CORE = ("train.py", "run.py", "loop.py", "hooks.py", "finish.py", "checkpoint.py", "distributed.py", "evaluate.py",
        "bootstrap.py", "config.py", "data", "models", "tricks/__init__.py", "tricks/base.py")
VERSIONED = ("torch", "torchvision")
# An optional library whose version decides a run's numbers only when the run uses it.
TIMM = "timm"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def core_files() -> list[Path]:
    files: list[Path] = []
    for entry in CORE:
        path = PACKAGE_DIR / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def module_file(module: str) -> Path | None:
    """The source file of `module`. Inside this package it is found without importing anything;
    elsewhere through importlib (which imports the parent packages)."""
    parts = module.split(".")
    if parts[0] == PACKAGE_DIR.name:
        base = PACKAGE_DIR.joinpath(*parts[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        # A trick module named by its path of before the tricks were grouped by kind
        # (ablate.tricks.mixup, now ablate.tricks.data.mixup: ablate/tricks/__init__.py MOVED).
        moved = sorted(base.parent.glob(f"*/{base.name}.py")) if base.parent.name == "tricks" else []
        return moved[0] if len(moved) == 1 else None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin not in (None, "built-in", "frozen") else None


def trick_targets(config: dict[str, Any]) -> list[str]:
    """The `_target_` of each selected trick in a resolved config (as plain data)."""
    tricks = config.get("tricks") or {}
    return [str(node["_target_"]) for node in tricks.values() if isinstance(node, dict) and "_target_" in node]


def uses_timm(config: dict[str, Any]) -> bool:
    """Whether a resolved config (plain data) builds its backbone with timm."""
    backbone = (config.get("model") or {}).get("backbone") or {}
    return backbone.get("library") == TIMM


def _label(path: Path) -> str:
    try:
        return path.relative_to(PACKAGE_DIR.parent).as_posix()
    except ValueError:
        return path.as_posix()


def code_fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """{"fingerprint": hash of all below, "files": {file: hash of its bytes}, "versions": {...}} for
    a run of `config` (resolved, plain data)."""
    files: dict[str, str] = {}
    paths: list[Path] = list(core_files())
    for target in trick_targets(config):
        module = target.rsplit(".", 1)[0]
        path = module_file(module)
        if path is None:
            files[f"{module} (not found)"] = "missing"
        else:
            paths.append(path)
    for path in paths:
        files[_label(path)] = _sha(path.read_bytes()) if path.is_file() else "missing"
    versions = {}
    for dist in (*VERSIONED, TIMM) if uses_timm(config) else VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    text = "\n".join([*(f"{k} {v}" for k, v in sorted(files.items())), *(f"{k}=={v}" for k, v in sorted(versions.items()))])
    return {"fingerprint": _sha(text.encode()), "files": files, "versions": versions}


def code_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, for a log line: changed, added and removed files and
    versions; ["made before code fingerprints"] for a record that has none."""
    if not old or "fingerprint" not in old:
        return ["made before code fingerprints"]
    changes: list[str] = []
    for kind in ("files", "versions"):
        a, b = old.get(kind) or {}, new.get(kind) or {}
        changes += [f"{k} changed" if k in a and k in b else (f"{k} added" if k in b else f"{k} removed")
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return changes


def same_code(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    return bool(old) and old.get("fingerprint") == new.get("fingerprint")


def summarize(changes: Iterable[str], limit: int = 4) -> str:
    changes = list(changes)
    more = len(changes) - limit
    return ", ".join(changes[:limit]) + (f" and {more} more" if more > 0 else "")
