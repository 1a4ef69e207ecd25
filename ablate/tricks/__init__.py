"""Tricks: built from cfg.tricks, checked against each other and against the detector."""
from __future__ import annotations

from hydra.utils import instantiate

from .base import FAMILY_EXAMPLES, BatchContext, Trick


class TrickConflictError(ValueError):
    """Two tricks claim one slot, or a trick does not fit the detector."""


def build_tricks(cfg_tricks, cfg_model) -> list[Trick]:
    """Instantiate the selected tricks (in selection order) and check they can run together on
    this detector, before anything trains."""
    tricks: list[Trick] = []
    for name, node in (cfg_tricks or {}).items():
        if node is None or "_target_" not in node:
            raise ValueError(f"tricks.{name}: conf/tricks/{name}.yaml must set _target_ (the trick's class) "
                             f"and start with '# @package tricks.{name}'")
        trick = instantiate(node, _convert_="all")
        if not isinstance(trick, Trick):
            raise TypeError(f"tricks.{name}: {node._target_} is not an ablate.tricks.Trick")
        trick.name = str(name)
        tricks.append(trick)
    check_compatible(tricks, cfg_model.family, cfg_model.name)
    return tricks


def check_compatible(tricks: list[Trick], family: str, model_name: str) -> None:
    for trick in tricks:
        if family not in trick.fits and model_name not in trick.fits:
            needed = " or ".join(trick.fits)
            examples = " or ".join(FAMILY_EXAMPLES.get(f, f"model={f}") for f in trick.fits)
            raise TrickConflictError(
                f"trick '{trick.name}' does not fit model={model_name}: it needs a {needed} detector "
                f"({examples}), and {model_name} is {family}")
    owner: dict[str, str] = {}
    for trick in tricks:
        for slot in trick.claims:
            if slot in owner:
                raise TrickConflictError(
                    f"tricks '{owner[slot]}' and '{trick.name}' both claim the '{slot}' slot; select one of them")
            owner[slot] = trick.name


__all__ = ["BatchContext", "Trick", "TrickConflictError", "build_tricks", "check_compatible"]
