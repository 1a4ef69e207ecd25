"""The report of a search (design: search, ablate/sweep/search.py): its trials, the best parameters
and how much each parameter mattered, from the study in <sweep dir>/optuna.db and the trials' records.

Writes report.md, trials.csv, runs.csv and importance.png. Optuna (the extra `tune`) reads the
study; no torch here.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ablate.report.markdown import _display_path, markdown_table
from ablate.report.plots import NEUTRAL, empty_figure, new_figure, save_png, set_title
from ablate.report.table import DASH, runs_table
from ablate.results import atomic_write_text, find_records
from ablate.sweep.search import STUDY_FILE, require_optuna, storage_url

IMPORTANCE_PLOT = "importance.png"


def is_search(runs_dir: Path) -> bool:
    return (Path(runs_dir) / STUDY_FILE).is_file()


def load_study(runs_dir: Path):
    """The one study in <runs_dir>/optuna.db (a search sweep keeps one, named after the sweep)."""
    optuna = require_optuna()
    url = storage_url(runs_dir)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(url)]
    return optuna.load_study(study_name=names[0], storage=url)


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trials_frame(study, runs_dir: Path) -> pd.DataFrame:
    """One row per trial: number, state (and the run's status where it says more), val mAP in points,
    its parameters, the epochs its runs trained, its run folder."""
    params = list(study.user_attrs.get("space") or {})
    rows = []
    for t in study.trials:
        status = study.user_attrs.get(f"trial{t.number}_status", "")
        state = t.state.name.lower()
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({"trial": t.number, "state": state if status in ("", "ok", "pruned") else f"{state} ({status})",
                     "value": t.value * 100 if t.value is not None else math.nan,
                     "last_step": last, **{p: t.params.get(p) for p in params},
                     "run_dir": str(Path(runs_dir) / f"trial{t.number}")})
    return pd.DataFrame(rows, columns=["trial", "state", "value", "last_step", *params, "run_dir"])


def importances(study) -> dict[str, float]:
    """Each parameter's share of the variation in val mAP over the complete trials: Optuna's
    get_param_importances with PED-ANOVA (named, so Optuna 4 and 5 agree: their defaults differ).
    Empty below two complete trials."""
    optuna = require_optuna()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    return optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())


def importance_figure(values: dict[str, float], title: str) -> Figure:
    """Each searched parameter's importance, the most important on top."""
    heading = f"{title}: parameter importance"
    if not values:
        return empty_figure(new_figure(7, 2.5), "no importance: fewer than two complete trials", heading)
    fig = new_figure(7, 0.5 * len(values) + 2)
    ax = fig.add_subplot()
    names = list(values)[::-1]
    ax.barh(range(len(names)), [values[n] for n in names], color=NEUTRAL, height=0.6, zorder=2)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("importance (share of the val mAP's variation, PED-ANOVA)")
    ax.grid(axis="x", alpha=0.3, zorder=0)
    set_title(fig, heading)
    return fig


def plot_importance(values: dict[str, float], path: Path, title: str) -> Path:
    return save_png(importance_figure(values, title), path)


def search_markdown(title: str, study, trials: pd.DataFrame, values: dict[str, float], runs_dir: Path) -> str:
    states = trials["state"].str.split(" ").str[0].value_counts()
    settings = study.user_attrs
    pruner = settings.get("pruner", {}).get("name", "?")
    lines = [f"# {title}: search", "",
             f"Study `{study.study_name}` in `{_display_path(Path(runs_dir) / STUDY_FILE)}`: "
             f"{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}), "
             f"{study.direction.name.lower()} the val mAP (points, the mean over seeds "
             f"{', '.join(map(str, settings.get('seeds', [])))}); tricks {', '.join(settings.get('tricks', [])) or 'none'}; "
             f"pruner {pruner}.", ""]
    try:
        best = study.best_trial
    except ValueError:
        lines += ["No trial is complete yet: no best parameters.", ""]
    else:
        lines += ["## Best parameters", "", f"Trial {best.number}: val mAP {best.value * 100:.1f}.", "",
                  markdown_table(pd.DataFrame({"Parameter": list(best.params),
                                               "Value": [_value(v) for v in best.params.values()]}),
                                 right=("Value",)), ""]
    params = [c for c in trials.columns if c not in ("trial", "state", "value", "last_step", "run_dir")]
    shown = pd.DataFrame({
        "Trial": trials["trial"].astype(str), "State": trials["state"],
        "val mAP": [f"{v:.1f}" if not math.isnan(v) else DASH for v in trials["value"]],
        **{p: [_value(v) if v is not None else DASH for v in trials[p]] for p in params},
        "Last report": [str(int(s)) if s is not None and not pd.isna(s) else DASH for s in trials["last_step"]],
        "Run folder": [f"`{_display_path(p)}`" for p in trials["run_dir"]]})
    lines += ["## Trials", "",
              "A pruned trial's val mAP is that of its last evaluation (Last report: the step, seed index x "
              "epochs + epoch), where its pruner stopped it.", "",
              markdown_table(shown, right=("Trial", "val mAP", *params, "Last report")), ""]
    lines += ["## Parameter importance", ""]
    if values:
        lines += [f"![parameter importance]({IMPORTANCE_PLOT})", "",
                  "Optuna's `get_param_importances` (PED-ANOVA) over the complete trials: each parameter's "
                  "share of what separates the best trials from the rest. With a few trials it is a hint, "
                  "not a measurement.", "",
                  markdown_table(pd.DataFrame({"Parameter": list(values),
                                               "Importance": [f"{v:.3f}" for v in values.values()]}),
                                 right=("Importance",)), ""]
    else:
        lines += ["Fewer than two complete trials: nothing to compare.", ""]
    return "\n".join(lines)


def build_search_report(runs_dir: Path, out_dir: Path, title: str | None = None) -> Path:
    """report.md, trials.csv, runs.csv and importance.png of the search in runs_dir, in out_dir."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    study = load_study(runs_dir)
    title = title or study.study_name
    trials = trials_frame(study, runs_dir)
    values = importances(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_importance(values, out_dir / IMPORTANCE_PLOT, title)
    atomic_write_text(out_dir / "trials.csv", trials.to_csv(index=False, float_format="%.10g"))
    found, _ = find_records(runs_dir)
    if found:
        runs = runs_table([r for _, r in found], [p for p, _ in found])
        atomic_write_text(out_dir / "runs.csv", runs.drop(columns=["code_files"]).to_csv(index=False,
                                                                                        float_format="%.10g"))
    report = out_dir / "report.md"
    atomic_write_text(report, search_markdown(title, study, trials, values, runs_dir))
    return report
