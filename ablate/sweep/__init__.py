"""Sweeps: ablation designs and the Hydra sweeper that runs them. No torch here."""
from .design import DESIGNS, Job, SweepDesign, SweepFileError, load_sweep, resolve_sweep_path

__all__ = ["DESIGNS", "Job", "SweepDesign", "SweepFileError", "load_sweep", "resolve_sweep_path"]
