"""A run's checkpoint, last.pt in its folder: written atomically at each epoch's end (the
`Checkpointer` hook, ablate/hooks.py), read when a run starts again (`Run.build`, ablate/run.py).

Its keys: epoch (counted from 0), step, config_hash, code_fingerprint, model, optimizer, scheduler,
scaler, curve (the record's so far), totals (the timers'), tricks (each trick's state_dict by name).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .results import atomic_write

log = logging.getLogger("ablate.train")
CHECKPOINT = "last.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a run killed while saving keeps its previous checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path: Path, expected_hash: str, code: dict[str, Any] | None = None,
                    reuse: str = "same_code") -> dict[str, Any] | None:
    """The checkpoint to resume from: of this config, and of this code unless reuse is any_code
    (half a run trained by other code is trained again from the start)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: train from scratch, but say so
        log.warning("checkpoint %s cannot be read (%s): training from the start", path, e)
        return None
    if state.get("config_hash") != expected_hash:
        log.warning("checkpoint %s belongs to another config (hash %s, this run %s): training from the start",
                    path, state.get("config_hash"), expected_hash)
        return None
    if reuse == "never":
        log.info("checkpoint %s not resumed: runtime.reuse=never (--force) trains from the start", path)
        return None
    if code is not None and reuse != "any_code" and state.get("code_fingerprint") != code["fingerprint"]:
        log.warning("checkpoint %s was trained by other code (fingerprint %s, now %s): training from the start "
                    "(runtime.reuse=any_code resumes it)", path, state.get("code_fingerprint"), code["fingerprint"])
        return None
    return state
