"""Registers ablate's sweepers with Hydra: hydra/sweeper=ablate (`ablate sweep`) and
hydra/sweeper=ablate_train (the default of conf/config.yaml, so of `ablate train -m`).

Hydra only instantiates plugins that live in the hydra_plugins namespace package; the sweepers
themselves are ablate.sweep.sweeper.AblationSweeper and ablate.sweep.multirun.MultirunSweeper.
"""
from dataclasses import dataclass
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore

from ablate.sweep.multirun import MultirunSweeper as _MultirunSweeper
from ablate.sweep.sweeper import AblationSweeper as _AblationSweeper


class AblationSweeper(_AblationSweeper):
    """Defined here because Hydra looks plugins up by the module that defines them."""


@dataclass
class AblationSweeperConf:
    _target_: str = "hydra_plugins.ablate_sweeper.ablate_sweeper.AblationSweeper"
    # The sweep file: design, tricks, seeds, baseline overrides (see ablate/sweep/design.py).
    file: Optional[str] = None
    # Rebuild reports/<sweep>/ from the records once the launcher returns.
    report: bool = True


ConfigStore.instance().store(group="hydra/sweeper", name="ablate", node=AblationSweeperConf, provider="ablate")


class MultirunSweeper(_MultirunSweeper):
    """Defined here because Hydra looks plugins up by the module that defines them."""


@dataclass
class MultirunSweeperConf:
    _target_: str = "hydra_plugins.ablate_sweeper.ablate_sweeper.MultirunSweeper"
    # Hydra's BasicSweeper's options, as hydra/sweeper=basic has them.
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="ablate_train", node=MultirunSweeperConf, provider="ablate")
