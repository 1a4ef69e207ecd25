"""The report.md text: header, the per-variant table, the ΔmAP chart, notes, unfinished and unreadable runs.

Markdown tables are written here with plain string operations (no ``tabulate`` dependency).
"""
from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from ablate.report.table import DASH, NA, display_table, fmt_delta
from ablate.results import STATUSES

RIGHT_ALIGNED = {"Seeds", "mAP", "ΔmAP", "AP50", "AP75", "APs", "APm", "APl", "Train time (s)", "Images/s",
                 "Inference (ms/img)", "Params (M)", "FLOPs (G)", "Seed"}


def escape_cell(value: object) -> str:
    """A table cell: one line, pipes escaped."""
    text = "" if value is None else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, right: Iterable[str] = RIGHT_ALIGNED) -> str:
    """A GitHub-flavoured markdown table of a DataFrame's cells (as strings), columns padded to line up."""
    right = set(right)
    headers = [escape_cell(c) for c in frame.columns]
    body = [[escape_cell(v) for v in row] for row in frame.astype(object).itertuples(index=False, name=None)]
    widths = [max([len(h), 3, *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    aligned = [c in right for c in frame.columns]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(cells, widths, aligned)) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if a else "-" * w for w, a in zip(widths, aligned)) + " |"
    return "\n".join([line(headers), rule, *(line(r) for r in body)])


def _duration(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return NA
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _display_path(path: str | Path) -> str:
    """A path relative to the working folder when it lies under it, else as is."""
    text = str(path)
    if not text:
        return ""
    try:
        rel = os.path.relpath(text)
    except ValueError:  # another drive (Windows)
        return text
    return text if rel.startswith("..") else rel


def _date_range(created: Iterable[str]) -> str:
    days = sorted({c[:10] for c in created if c})
    if not days:
        return "unknown dates"
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def header_paragraph(table: pd.DataFrame, runs: pd.DataFrame, n_unreadable: int) -> str:
    counts = runs["status"].value_counts()
    status_bits = ", ".join(f"{int(counts[s])} {s.replace('_', ' ')}" for s in STATUSES if s in counts)
    ok = runs[runs["status"] == "ok"]
    seeds = sorted(set(int(s) for s in ok["seed"])) if len(ok) else []
    seed_text = ("seeds " + ", ".join(str(s) for s in seeds)) if len(seeds) > 1 else \
        (f"seed {seeds[0]}" if seeds else "no seed finished")
    devices = sorted({d for d in runs["device"] if d})
    device_text = ("device " + devices[0]) if len(devices) == 1 else \
        ("devices " + ", ".join(devices)) if devices else "device not recorded"
    train_total = float(ok["train_s"].sum(min_count=1)) if len(ok) else math.nan
    n_bases = table["base_hash"].nunique()
    parts = [
        f"{_plural(len(runs), 'run')} ({status_bits}) of {_plural(len(table), 'variant')}"
        + (f" over {n_bases} bases (models or settings, each with its own baseline)" if n_bases > 1 else ""),
        seed_text,
        device_text,
        (f"{_duration(train_total)} of training in the ok runs" if not math.isnan(train_total)
         else "no training time recorded"),
        f"runs from {_date_range(runs['created_at'])}",
    ]
    text = "; ".join(parts) + "."
    commits = sorted({c[:10] for c in runs["git_commit"] if c})
    if len(commits) > 1:
        text += f" The runs come from {len(commits)} git commits ({', '.join(commits)}): check they are comparable."
    if n_unreadable:
        text += f" {_plural(n_unreadable, 'record')} could not be read (listed below)."
    best = table[~table["baseline"] & table["delta_mAP"].notna()]
    if len(best):
        top = best.loc[best["delta_mAP"].idxmax()]
        seeds_note = f", {int(top['delta_seeds'])} paired seeds" if top["delta_paired"] else ", unpaired"
        text += (f" Largest ΔmAP: **{top['variant']}** {fmt_delta(top['delta_mAP'], top['delta_mAP_std'])}"
                 f" points{seeds_note}.")
    return text


def notes(table: pd.DataFrame) -> list[str]:
    """How to read the table, plus the cases that need a warning (unpaired ΔmAP, missing baselines)."""
    lines = [
        "- Metrics are COCO box metrics (pycocotools) in points (×100): mAP is AP@[.5:.95], AP50 and AP75 at one "
        "IoU threshold, APs/APm/APl by object area. A metric COCO reports as −1 (no ground truth in that area "
        "range) shows as n/a.",
        "- Each number is the mean over the variant's ok runs; “± std” is the sample standard deviation over "
        "seeds, shown from two seeds on. Seeds counts the ok runs; failed and diverged runs add no number.",
        f"- ΔmAP is the variant's mAP minus its baseline's (same model, data and schedule, no tricks). When both "
        f"ran the same seeds it is the mean of the per-seed differences and its ± is their std (the error bars of "
        f"the chart); a gain within about one std of zero is not distinguishable from seed noise. {DASH} marks the "
        f"baseline itself; n/a a ΔmAP that cannot be computed (no ok run of the variant or of its baseline).",
        "- Train time is the training wall time of one run (without evaluation); Images/s the training throughput; "
        "Inference the batch-1 latency per image; Params and FLOPs those of the model as built.",
    ]
    unpaired = table[~table["baseline"] & table["delta_mAP"].notna() & ~table["delta_paired"]]
    if len(unpaired):
        names = ", ".join(f"`{v}`" for v in unpaired["variant"])
        lines.append(f"- Unpaired ΔmAP (the variant's ok seeds differ from its baseline's, so ΔmAP is a difference "
                     f"of means, without ±): {names}.")
    missing = table[~table["baseline"] & table["delta_mAP"].isna()]
    if len(missing):
        bits = []
        for rec in missing.itertuples():
            has_base = bool(((table["base_hash"] == rec.base_hash) & table["baseline"]).any())
            why = ("its baseline has no ok run" if has_base else "no baseline run in these folders") \
                if rec.seeds else "no ok run"
            bits.append(f"`{rec.variant}` ({why})")
        lines.append("- ΔmAP is n/a for: " + ", ".join(bits) + ".")
    dup = table[table["seeds"] > table["seed_list"].str.split().str.len().fillna(0)]
    if len(dup):
        lines.append("- Some seeds ran more than once (the same run in two folders?); for ΔmAP the repeats of a seed "
                     "are averaged first: " + ", ".join(f"`{v}`" for v in dup["variant"]) + ".")
    return lines


def not_applicable_section(runs: pd.DataFrame) -> list[str]:
    """Variants whose tricks do not fit their detector (or each other): n/a, not a zero change."""
    na = runs[runs["status"] == "not_applicable"].drop_duplicates("variant")
    if not len(na):
        return []
    lines = ["## Variants that do not apply", "",
             "Their tricks do not fit the detector (or each other): nothing was trained, and the table shows n/a.", ""]
    lines += [f"- `{v}`: {e}" for v, e in zip(na["variant"], na["error"])]
    return lines + [""]


def unfinished_section(runs: pd.DataFrame) -> list[str]:
    bad = runs[~runs["status"].isin(["ok", "not_applicable"])]
    if not len(bad):
        return []
    frame = pd.DataFrame({
        "Variant": bad["variant"],
        "Seed": bad["seed"].astype(str),
        "Status": bad["status"],
        "Error": [e if e else DASH for e in bad["error"]],
        "Run folder": [f"`{_display_path(p)}`" if p else DASH for p in bad["run_dir"]],
    })
    return ["## Runs that did not finish", "",
            "These runs add no number to the table above (a failed run is retried by the next sweep; "
            "a diverged one stays as it is).", "",
            markdown_table(frame), ""]


def unreadable_section(errors: Sequence[BaseException]) -> list[str]:
    if not errors:
        return []
    lines = ["## Unreadable records", "",
             "These result.json files are truncated, corrupt or of another schema; they are not read as results.", ""]
    lines += [f"- {' '.join(str(e).split())}" for e in errors]
    return lines + [""]


def render_markdown(title: str, table: pd.DataFrame, runs: pd.DataFrame, errors: Sequence[BaseException],
                    runs_dirs: Sequence[Path | str], image: str = "delta_map.png",
                    now: datetime | None = None) -> str:
    now = now or datetime.now().astimezone()
    dirs = " ".join(str(d) for d in runs_dirs)
    sweeps = sorted({s for s in runs["sweep"] if s})
    parts = [f"# {title}", "", header_paragraph(table, runs, len(errors)), ""]
    if len(sweeps) > 1 or (sweeps and sweeps[0] != title):
        parts += [f"Sweep{'s' if len(sweeps) > 1 else ''} in the records: {', '.join(sweeps)}.", ""]
    parts += [markdown_table(display_table(table)), "",
              f"![ΔmAP per variant]({image})", "",
              "## Notes", "", *notes(table), ""]
    parts += not_applicable_section(runs)
    parts += unfinished_section(runs)
    parts += unreadable_section(errors)
    parts += ["---", "",
              f"Built by `ablate report {dirs}` on {now:%Y-%m-%d %H:%M} from the result.json records alone "
              f"(table.csv: one row per variant, runs.csv: one row per run; numbers in points).", ""]
    return "\n".join(parts)
