"""Tricks: built from cfg.tricks, checked against each other and against the detector.

The contract is base.py (hooks, slots, argument checks); the tricks are grouped by what they
change, which is also the hook they use: data/ (on_batch), loss/ (the loss slots, on_model),
network/ (model surgery, on_model), schedule/ (on_lr_factor, on_step and eval_model).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from hydra.errors import InstantiationException
from hydra.utils import instantiate


from .base import (FAMILY_EXAMPLES, SLOTS, BatchContext, LRFactor, Trick, TrickArgumentError, TrickConfigError, TrickConflictError,
                   check_choice, check_fraction, check_number)


def instantiate_trick(name: str, node) -> Trick:
    """The trick of cfg.tricks.<name>; an argument its class refuses is named as the user types it,
    tricks.<name>.<arg>, with the file it comes from."""
    where = f"conf/tricks/{name}.yaml or an override tricks.{name}.<arg>=..."
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, TrickArgumentError):
            raise TrickConfigError(f"{cause.message(f'tricks.{name}.')} ({where})") from None
        if isinstance(cause, (TypeError, ValueError)):
            raise TrickConfigError(f"tricks.{name} ({node._target_}): {cause} ({where})") from None
        raise


def build_tricks(cfg_tricks, cfg_model) -> list[Trick]:
    """Instantiate the selected tricks (in selection order) and check they can run together on
    this detector, before anything trains."""
    tricks: list[Trick] = []
    for name, node in (cfg_tricks or {}).items():
        if node is None or "_target_" not in node:
            raise ValueError(f"tricks.{name}: conf/tricks/{name}.yaml must set _target_ (the trick's class) "
                             f"and start with '# @package tricks.{name}'")
        trick = instantiate_trick(str(name), node)
        if not isinstance(trick, Trick):
            raise TypeError(f"tricks.{name}: {node._target_} is not an ablate.tricks.Trick")
        trick.name = str(name)
        tricks.append(trick)
    check_compatible(tricks, cfg_model.family, cfg_model.name)
    return tricks


def lr_factor(main: LRFactor, tricks: list[Trick], total_steps: int) -> LRFactor:
    """The LR factor per iteration: the main schedule through each trick's on_lr_factor, those that
    replace the schedule (claim lr_schedule) first, then the others (warmup) in selection order, so
    a warmup multiplies whichever schedule runs, whatever the order the tricks were selected in."""
    ordered = [t for t in tricks if "lr_schedule" in t.claims] + [t for t in tricks if "lr_schedule" not in t.claims]
    for trick in ordered:
        main = trick.on_lr_factor(main, total_steps)
    return main


def check_compatible(tricks: list[Trick], family: str, model_name: str) -> None:
    for trick in tricks:
        unknown = [slot for slot in trick.claims if slot not in SLOTS]
        if unknown:
            raise TrickConflictError(
                f"trick '{trick.name}' ({type(trick).__module__}.{type(trick).__name__}) claims unknown slot(s) "
                f"{', '.join(map(repr, unknown))}; the slots are {', '.join(SLOTS)} (ablate/tricks/base.py SLOTS: "
                "add a new one there, with what it means)")
        if family not in trick.fits and model_name not in trick.fits:
            needed = " or ".join(trick.fits)
            examples = " or ".join(FAMILY_EXAMPLES.get(f, f"model={f}") for f in trick.fits)
            reason = trick.unfit_reasons.get(family)
            raise TrickConflictError(
                f"trick '{trick.name}' does not fit model={model_name}: it needs a {needed} detector "
                f"({examples}), and {model_name} is {family}" + (f": {reason}" if reason else ""))
    owner: dict[str, str] = {}
    for trick in tricks:
        for slot in trick.claims:
            if slot in owner:
                raise TrickConflictError(
                    f"tricks '{owner[slot]}' and '{trick.name}' both claim the '{slot}' slot; select one of them")
            owner[slot] = trick.name


__all__ = ["SLOTS", "BatchContext", "Trick", "TrickArgumentError", "TrickConfigError", "TrickConflictError",
           "build_tricks", "lr_factor", "check_choice", "check_compatible", "check_fraction", "check_number"]


# ---------------------------------------------------------------- the paths of before

# Where each trick module lived before the tricks were grouped by kind (ablate.tricks.<module>,
# now ablate.tricks.<kind>.<module>): a user's YAML whose _target_ names a class by its old path,
# and a user's trick that imports from an old path, keep working.
MOVED = {**dict.fromkeys(("mixup", "cutmix", "mosaic", "erasing", "random_crop", "photometric", "multiscale",
                          "scale_jitter", "rotation"), "data"),
         **dict.fromkeys(("label_smoothing", "ghm", "box_loss", "cls_loss", "ohem", "pisa", "iou_balanced"), "loss"),
         **dict.fromkeys(("activation", "dropblock", "droppath", "dropout", "group_norm", "frn", "sync_bn", "cbn",
                          "weighted_residual", "csp", "last_level_block", "neck"), "network"),
         **dict.fromkeys(("warmup", "cosine", "ema"), "schedule")}


class _OldPath(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ablate.tricks.<module> of before as the module at its new place (one module object,
    two names)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, module = fullname.rpartition(".")
        if package != __name__ or module not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = spec.name.rpartition(".")[2]
        return importlib.import_module(f"{__name__}.{MOVED[module]}.{module}")

    def exec_module(self, module):
        pass  # executed at its new place


if not any(isinstance(finder, _OldPath) for finder in sys.meta_path):
    sys.meta_path.append(_OldPath())
