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
from ablate.results import RECORD_NAME, RunRecord, atomic_write_text, find_records
from ablate.sweep.adaptive import (ADAPTIVE_FILE, HELPED, HURT, NO_EFFECT, OPEN, UNDECIDED, Plan,
                                   decisions_from_records)

__all__ = ["ReportError", "build_report", "records_table", "runs_table", "display_table", "paired_differences"]

log = logging.getLogger("ablate.report")


class ReportError(UserInputError):
    """Nothing to report: no readable result.json under the given folders."""


def adaptive_lines(runs_dirs: list[Path], found: list[tuple[Path, RunRecord]]) -> tuple[list[str], list]:
    """The "Adaptive seeds" section when a runs folder holds an adaptive sweep's plan (adaptive.json):
    each trick's decision, the rounds, and the runs saved, and the decisions; ([], []) otherwise. The
    decisions read that folder's records alone: they name variants as its sweep did, which other folders'
    runs may share with other settings or trick arguments."""
    import json

    from ablate.report.markdown import adaptive_section

    for d in runs_dirs:
        path = Path(d) / ADAPTIVE_FILE
        if path.is_file():
            info = json.loads(path.read_text())
            plan = Plan(info["min"], info["max"], info["margin"], info["alpha"])
            records = [r for p, r in found if Path(d) in p.parents]
            decisions = decisions_from_records(records, info["variants"], plan)
            return adaptive_section(info, decisions), decisions
    return [], []


def adopt_decisions(table, decisions: list) -> None:
    """The adaptive sweep's decisions (on which it stopped) in place of the table's one-look ones, for the
    variants named alike. table.csv's verdict keeps to helped, hurt, no_effect, undecided (and open while the
    sweep runs), as a fixed-seed table's does: a variant left undecided because a run collapsed or failed says
    why in its health and status columns and in the "Adaptive seeds" section."""
    for d in decisions:
        rows = (table["variant"] == d.variant) & ~table["baseline"]
        if rows.any():
            verdict = d.verdict if d.verdict in (HELPED, HURT, NO_EFFECT, UNDECIDED, OPEN) else UNDECIDED
            table.loc[rows, ["verdict", "p_difference", "p_difference_adjusted", "p_equivalence",
                             "p_equivalence_adjusted", "margin", "sigma_d", "sigma_d_df", "sigma_d_pooled"]] = [
                verdict, d.p_difference, d.p_difference_adjusted, d.p_equivalence, d.p_equivalence_adjusted,
                d.margin, d.std, d.df, d.pooled]


def split_search_trials(found: list[tuple[Path, RunRecord]], runs_dirs: list[Path]
                        ) -> tuple[list[tuple[Path, RunRecord]], dict[Path, int]]:
    """The records that are not a search's trials, and per search folder (design: search, found under or
    as one of runs_dirs) how many of its trials' records were left out. A trial tunes parameters: its
    tricks ran in every trial, so beside an ablation's variants it would be read as one more variant."""
    roots = set(runs_dirs)
    searches: dict[Path, bool] = {}
    kept, left_out = [], {}
    for path, record in found:
        folder = None
        for parent in path.parents:
            if parent not in searches:
                searches[parent] = is_search(parent)
            if searches[parent]:
                folder = parent
                break
            if parent in roots:
                break
        if folder is None:
            kept.append((path, record))
        else:
            left_out[folder] = left_out.get(folder, 0) + 1
    return kept, left_out


def build_report(runs_dirs: list[Path], out_dir: Path, title: str | None = None) -> Path:
    """A search's folder (design: search, holding optuna.db) gets the search's report (ablate/report/search.py).
    Otherwise: read every result.json under ``runs_dirs`` but a search's trials (a folder under them, or one of
    them, holding optuna.db: left out, logged and named in report.md with the command that reports them);
    write report.md, table.csv, runs.csv and the plots (delta_map.png, curves.png, pareto.png, per_class.png)
    into ``out_dir``; return the path of report.md.

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
    found, searches = split_search_trials(found, runs_dirs)
    for folder, n in searches.items():
        log.warning("%d records of the search in %s left out of the table (its trials, not variants): "
                    "`ablate report %s` reports them", n, folder, folder)
    if not found and searches:
        raise ReportError("only a search's trials under " + ", ".join(str(d) for d in runs_dirs) + ": "
                          + "; ".join(f"`ablate report {folder}` reports them" for folder in searches))
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

    adaptive, decisions = adaptive_lines(runs_dirs, found)
    adopt_decisions(table, decisions)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_delta_map(table, out_dir / "delta_map.png", title)
    plot_curves(epoch_curves(records, table), out_dir / "curves.png", title)
    plot_pareto(table, out_dir / "pareto.png", title)
    plot_per_class(per_class_deltas(records, table), out_dir / "per_class.png", title)
    atomic_write_text(out_dir / "table.csv", table.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(out_dir / "runs.csv", runs.drop(columns=["code_files"]).to_csv(index=False, float_format="%.10g"))
    report = out_dir / "report.md"
    atomic_write_text(report, render_markdown(title, table, runs, errors, runs_dirs, plots=tuple(PLOTS),
                                              adaptive=adaptive, searches=searches))
    log.info("report of %d runs (%d variants) written to %s", len(records), len(table), report)
    return report
