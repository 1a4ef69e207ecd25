"""The `ablate` command: train one variant, sweep a design, or rebuild a report.

Imports torch only for the commands that train, so `ablate --help` and `ablate report` start fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DESCRIPTION = """\
ablate: a bag-of-tricks ablation harness for object detection.

  ablate train [OVERRIDES...]          train and evaluate one variant
  ablate sweep NAME|FILE [OVERRIDES...] run sweeps/NAME.yaml (or FILE) as a Hydra multirun, then report
  ablate report RUNS_DIR... [--out DIR] rebuild a report from the result.json records on disk
  ablate show-batch [OVERRIDES...] --out FILE.png
                                        draw a training batch after the tricks' data hooks

OVERRIDES use Hydra's grammar, for example:
  tricks=[mixup,warmup] seed=1 model=faster_rcnn model/backbone=resnet18
  data=coco data.root=DIR train.epochs=3 hydra/launcher=joblib profile=smoke
  paths.runs=DIR paths.reports=DIR
Hydra's own flags work too: `ablate train --cfg job` prints the composed config.
"""

TRAIN_HELP = """\
usage: ablate train [OVERRIDES...]

Train and evaluate one variant on the composed config (conf/config.yaml and its groups), and
write its record to runs/train/<variant>/<time>/result.json. Examples:

  ablate train                                   FCOS, tiny backbone, embedded shapes data
  ablate train tricks=[mixup,warmup] seed=1
  ablate train model=faster_rcnn model/backbone=resnet18
  ablate train data=coco data.root=../shared/data/bccd
  ablate train --cfg job                         print the composed config and exit
  ablate train tricks=[mixup] --force            train again even if a record of this config
                                                 and code exists (runtime.reuse=never)
  ablate train -m 'tricks=[mixup]' tricks.mixup.alpha=0.2,1.5
                                                 a multirun: runs/train/<variant>/seed<N>/; jobs that
                                                 would share a folder get variants of their own,
                                                 mixup[tricks.mixup.alpha=0.2] (ablate/sweep/multirun.py)

A complete record of the same config made by the same code (ablate/fingerprint.py) is reused,
not trained again; runtime.reuse=any_code reuses it whatever the code.

Groups: data (shapes, coco), model (fcos, retinanet, faster_rcnn, rfcn), model/backbone (tiny,
darknet19, resnet18, resnet50, resnet101, resnext50, vgg16, squeezenet, densenet121, mobilenet_v2,
mobilenet_v3, shufflenet_v2, efficientnet with model.backbone.size=b0..b7; with timm installed,
pip install -e '.[timm]': darknet53, cspdarknet53, cspresnext50; docs/backbones.md), tricks (a list
of conf/tricks/*.yaml), profile (smoke).
"""

SWEEP_HELP = """\
usage: ablate sweep NAME|FILE [OVERRIDES...]

Run the ablation in sweeps/NAME.yaml (or the sweep FILE) as a Hydra multirun: every variant of
its design at every seed, each in runs/<sweep>/<variant>/seed<N>/. A run with a complete record
there is not trained again; a run interrupted mid-training resumes from its checkpoint. Then
write reports/<sweep>/report.md. Exits non-zero if a run failed or diverged (the others go on).

  ablate sweep quick                        baseline and each trick, one seed
  ablate sweep quick profile=smoke          the same, tiny (seconds)
  ablate sweep quick hydra/launcher=joblib  jobs in parallel processes
  ablate sweep quick data=coco data.root=DIR
  ablate sweep quick --force                train every job again (runtime.reuse=never)
  ablate sweep tune_mixup                   design: search: Optuna trials over MixUp's parameters, a
                                            study in runs/tune_mixup/optuna.db that a relaunch resumes

A record is reused only if the code it depends on is unchanged (ablate/fingerprint.py): after an
edit to a trick, its runs train again; runtime.reuse=any_code keeps them.
"""


def _run_hydra(argv: list[str]) -> None:
    import hydra

    from . import config as ablate_config

    # Composed here first (before torch is imported): bad input stops in one line before Hydra
    # makes a run folder or a sweep runs a job.
    ablate_config.compose_command_line(argv)
    if os.environ.get("RANK", "0") != "0" and not {"-m", "--multirun"} & set(argv):
        # torchrun's other processes of one run: the run's folder is rank 0's (train.main), so
        # they make no folder, config copy or log file of their own (their warnings reach the console).
        argv = [*argv, "hydra.run.dir=.", "hydra.output_subdir=null",
                f"hydra.job_logging.handlers.file.filename={os.devnull}"]
    from .train import main as task

    conf = ablate_config.conf_dir()
    sys.argv = ["ablate"] + argv
    hydra.main(config_path=str(conf), config_name="config", version_base="1.3")(task)()


FORCE = "--force"


def forced(args: list[str]) -> list[str]:
    """`--force` as the override it stands for: train again even where a record could be reused."""
    return [a for a in args if a != FORCE] + (["runtime.reuse=never"] if FORCE in args else [])


def cmd_train(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print(TRAIN_HELP)
        return 0
    _run_hydra(forced(args))
    return 0


def cmd_sweep(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(SWEEP_HELP)
        return 0 if args else 2
    from .config import check_trick_files
    from .sweep import load_sweep, resolve_sweep_path

    path = resolve_sweep_path(args[0])
    design = load_sweep(path)
    check_trick_files(list(design.tricks))
    _run_hydra(["-m", "hydra/sweeper=ablate", f"hydra.sweeper.file={path}", f"sweep_name={design.name}",
                *forced(args[1:])])
    return 0


def cmd_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ablate report",
                                     description="Rebuild a bag-of-tricks report from the result.json "
                                                 "records under one or more runs folders (merged).")
    parser.add_argument("runs", nargs="+", type=Path, help="runs folder(s), e.g. runs/quick")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: the reports folder beside the runs folder the first "
                             "one is in, X/runs/NAME -> X/reports/NAME, as paths.runs and paths.reports "
                             "are; else reports/NAME)")
    parser.add_argument("--title", default=None, help="report title (default: the runs folder's name)")
    args = parser.parse_args(argv)
    from .report import ReportError, build_report

    missing = [str(p) for p in args.runs if not p.is_dir()]
    if missing:
        raise ReportError(f"no such runs folder: {', '.join(missing)}")
    out = args.out or default_report_folder(args.runs[0])
    print(f"report: {build_report(args.runs, out, title=args.title)}")
    return 0


def default_report_folder(runs: Path) -> Path:
    """X/reports/NAME for a runs folder X/runs/NAME (smoke/runs/quick: smoke/reports/quick, so a smoke
    sweep's report rebuilt does not overwrite the committed reports/quick/); else reports/NAME."""
    runs = runs if runs.name not in ("", ".", "..") else runs.resolve()
    if runs.parent.name == "runs":
        return runs.parent.parent / "reports" / runs.name
    return Path("reports") / runs.name


def cmd_show_batch(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ablate show-batch",
        description="Draw the first training batch of a run after its tricks' data hooks (MixUp, CutMix, ...), "
                    "with boxes and labels, to see what a data trick does. Example: "
                    "ablate show-batch tricks=[cutmix] --out cutmix.png")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--num", type=int, default=8, help="images to draw (at most one batch; default 8)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for ablate train")
    args = parser.parse_args(argv)
    from .config import compose_command_line

    cfg = compose_command_line(args.overrides)
    from .show_batch import show_batch  # torch: after the checks

    print(f"batch: {show_batch(cfg, args.out, args.num)}")
    return 0


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "report": cmd_report, "show-batch": cmd_show_batch}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(DESCRIPTION)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__
        print(f"ablate {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"ablate: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} (ablate --help)",
              file=sys.stderr)
        return 2
    from .errors import interrupted, reported

    # Bad input: one line `ablate: error: ...`, exit status 2; Ctrl-C: one line saying how to resume,
    # exit status 130 (ablate/errors.py).
    with interrupted(), reported():
        return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
