"""Where the configs and sweep files are found: conf/ and sweeps/ beside the package (an editable
install), or where $ABLATE_CONF and $ABLATE_SWEEPS point.

Imports nothing of ablate: errors.py (Hydra's "no such option" message lists a group's options)
and config.py both use it.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def conf_dir() -> Path:
    """The Hydra config folder: $ABLATE_CONF, else conf/ beside the package (editable install)."""
    path = Path(os.environ.get("ABLATE_CONF", REPO_ROOT / "conf"))
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"ablate's configs are not at {path} (no config.yaml there). Install ablate from its "
            "repository with `pip install -e .`, or point ABLATE_CONF at its conf/ folder.")
    return path


def sweeps_dir() -> Path:
    return Path(os.environ.get("ABLATE_SWEEPS", REPO_ROOT / "sweeps"))


def group_options(group: str, conf: Path | None = None) -> list[str]:
    """The options of a config group: the names of conf/<group>/*.yaml."""
    return sorted(p.stem for p in ((conf or conf_dir()) / group).glob("*.yaml"))
