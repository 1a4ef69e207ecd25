"""Registers ablate's sweeper with Hydra as hydra/sweeper=ablate.

Hydra only instantiates plugins that live in the hydra_plugins namespace package; the sweeper
itself is ablate.sweep.sweeper.AblationSweeper.
"""
from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore

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
