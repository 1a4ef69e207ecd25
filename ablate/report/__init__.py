"""``ablate report``: the ablation table with 95% CIs, the plots and report.md, from the run records alone.

Nothing here imports torch or torchvision (directly or indirectly): the report starts fast on any
laptop, with the result.json files copied off the training machine.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ablate.report.markdown import PLOTS, render_markdown
from ablate.report.search import build_search_report, is_search
from ablate.report.plots import plot_curves, plot_delta_map, plot_pareto, plot_per_class
from ablate.report.table import (display_table, epoch_curves, paired_differences, per_class_deltas, records_table,
                                 runs_table)
from ablate.errors import UserInputError
from ablate.results import RECORD_NAME, atomic_write_text, find_records
from ablate.sweep.adaptive import ADAPTIVE_FILE, Plan, decisions_from_records

__all__ = ["ReportError", "build_report", "records_table", "runs_table", "display_table", "paired_differences"]

log = logging.getLogger("ablate.report")


class ReportError(UserInputError):
    """Nothing to report: no readable result.json under the given folders."""


def adaptive_lines(runs_dirs: list[Path], records: list) -> list[str]:
    """The "Adaptive seeds" section when a runs folder holds an adaptive sweep's plan (adaptive.json):
    each trick's decision, the rounds, and the runs saved; none otherwise."""
    import json

    from ablate.report.markdown import adaptive_section

    for d in runs_dirs:
        path = Path(d) / ADAPTIVE_FILE
        if path.is_file():
            info = json.loads(path.read_text())
            plan = Plan(info["min"], info["max"], info["margin"], info["alpha"])
            return adaptive_section(info, decisions_from_records(records, info["variants"], plan))
    return []


def build_report(runs_dirs: list[Path], out_dir: Path, title: str | None = None) -> Path:
    """A search's folder (design: search, holding optuna.db) gets the search's report (ablate/report/search.py).
    Otherwise: read every result.json under ``runs_dirs``; write report.md, table.csv, runs.csv and the plots
    (delta_map.png, curves.png, pareto.png, per_class.png) into ``out_dir``; return the path of report.md.

    Unreadable records are logged, listed in the report and never read as results. Raises ReportError
    when no readable record is found.
    """
    if isinstance(runs_dirs, (str, Path)):
        runs_dirs = [runs_dirs]
    runs_dirs = [Path(d) for d in runs_dirs]
    out_dir = Path(out_dir)
    if not runs_dirs:
        raise ReportError("no runs folder given")
    if len(runs_dirs) == 1 and is_search(runs_dirs[0]):  # design: search: its trials, not a table of tricks
        return build_search_report(runs_dirs[0], out_dir, title)

    found, errors = find_records(*runs_dirs)
    if not found:  # one error, which names the unreadable records
        where = ", ".join(f"{d}" + ("" if d.is_dir() else " (does not exist)") for d in runs_dirs)
        message = f"no readable {RECORD_NAME} under {where}"
        if errors:
            message += f"; {len(errors)} unreadable: " + "; ".join(str(e) for e in errors[:5])
        raise ReportError(message)
    for error in errors:
        log.warning("unreadable record, left out of the report: %s", error)

    paths = [p for p, _ in found]
    records = [r for _, r in found]
    table = records_table(records)
    runs = runs_table(records, paths)
    if title is None:
        title = " + ".join(dict.fromkeys(d.resolve().name or str(d) for d in runs_dirs))

    out_dir.mkdir(parents=True, exist_ok=True)
    plot_delta_map(table, out_dir / "delta_map.png", title)
    plot_curves(epoch_curves(records, table), out_dir / "curves.png", title)
    plot_pareto(table, out_dir / "pareto.png", title)
    plot_per_class(per_class_deltas(records, table), out_dir / "per_class.png", title)
    atomic_write_text(out_dir / "table.csv", table.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(out_dir / "runs.csv", runs.drop(columns=["code_files"]).to_csv(index=False, float_format="%.10g"))
    report = out_dir / "report.md"
    adaptive = adaptive_lines(runs_dirs, records)
    atomic_write_text(report, render_markdown(title, table, runs, errors, runs_dirs, plots=tuple(PLOTS),
                                              adaptive=adaptive))
    log.info("report of %d runs (%d variants) written to %s", len(records), len(table), report)
    return report
