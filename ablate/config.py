"""Where the configs live, and the small helpers every room uses to read a resolved config.

No torch here: the CLI, the sweeper and the report import this.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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


def trick_names(tricks: Any) -> list[str]:
    """The selected tricks' names, in the order they were selected (cfg.tricks keeps insertion order)."""
    if tricks is None:
        return []
    return [str(k) for k in tricks.keys()]


def variant_name(tricks: Any) -> str:
    names = trick_names(tricks)
    return "+".join(names) if names else "baseline"


def area_scaled(value: int, size: int, reference: int, min_factor: float) -> int:
    """`value`, a count sized for images of side `reference`, for images of side `size`: scaled
    with the image area, value x (size / reference)^2, never below value x min_factor; rounded.

    The config's `${ablate_area_scale:VALUE,SIZE,REFERENCE,MIN_FACTOR}` (conf/model/faster_rcnn.yaml
    sizes its RPN and RoI budgets with it; the rule and its reasons are there)."""
    if value <= 0 or size <= 0 or reference <= 0 or not 0 < min_factor <= 1:
        raise ValueError(f"ablate_area_scale:{value},{size},{reference},{min_factor}: value, size and "
                         "reference must be positive and min_factor in (0, 1]")
    return max(1, round(value * max((size / reference) ** 2, min_factor)))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("ablate_variant"):
        OmegaConf.register_new_resolver("ablate_variant", variant_name)
    if not OmegaConf.has_resolver("ablate_area_scale"):
        OmegaConf.register_new_resolver("ablate_area_scale", area_scaled)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data, without Hydra's own node."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


register_resolvers()
