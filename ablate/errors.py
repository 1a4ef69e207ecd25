"""Errors a user can act on: bad input is told in one line, and the command exits with status 2.

Every error of ablate's about its input (trick files and arguments, tricks that do not fit,
annotation files and data folders, sweep files, run records, config values) is a
:class:`UserInputError` whose message names the file, key or value. So are, here, Hydra's own
errors composing the config (an unknown option of a config group, an unknown key, an override its
grammar cannot parse). `reported()` turns any of them into the line `ablate: error: <message>` on
stderr and exit status 2, with no traceback unless HYDRA_FULL_ERROR=1. Any other exception is a bug
and keeps its traceback.

No torch here: the CLI, the sweeper and the report import this.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, NoReturn

from .paths import group_options

EXIT_BAD_INPUT = 2
# A command stopped by Ctrl-C: the shells' status for a process SIGINT ended (128 + 2).
EXIT_INTERRUPTED = 130
RESUME = "relaunch the same command to resume"


class UserInputError(ValueError):
    """Bad input a user can fix; the message names the file, key or value and what is wrong."""


class DatasetError(UserInputError):
    """Bad input data: the message names the file and what is wrong with it (ablate/data/; here
    because the torch-free config check raises it too, for a missing data.root)."""


class SweepFileError(UserInputError):
    """A sweep file that is missing or says something this harness cannot run."""


class MissingExtraError(UserInputError, ImportError):
    """A feature needs an optional dependency that is not installed: the message names the extra
    to install (pip install -e '.[NAME]')."""


class WeightsError(UserInputError, RuntimeError):
    """Pretrained weights that cannot be loaded (offline, or a wrong file): the message names the
    file to put where, or how to train from scratch instead."""


def yaml_problem(error: Exception) -> str:
    """A YAML parser's error in one clause, "line L, column C: <problem> (while <context>)", with the
    1-based place PyYAML counts from 0 (its own message spans four lines and repeats the file)."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None or not problem:
        return _joined([str(error)])
    context = getattr(error, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C in a run whose relaunch needs more than the same command (a single `ablate train`,
    whose folder is named after the time it began): the message says how to resume it."""


@contextlib.contextmanager
def interrupted() -> Iterator[None]:
    """Runs the block; Ctrl-C ends the process with one line, `ablate: interrupted: <how to resume>`,
    and exit status 130, no traceback unless HYDRA_FULL_ERROR=1. A sweep's complete runs are kept and
    its interrupted run resumes from its checkpoint, so the same command resumes it."""
    try:
        yield
    except KeyboardInterrupt as e:
        if full_error():
            raise
        print(f"ablate: interrupted: {str(e) or RESUME}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None


def full_error() -> bool:
    """HYDRA_FULL_ERROR=1: show every error with its full traceback, as Hydra does."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _joined(texts: list[str]) -> str:
    """Texts of several lines as one: the lines stripped, the empty ones and Hydra's caret lines
    left out, joined as clauses ('; ', a line's end dot dropped, the next one's capital lowered)."""
    lines = [line.strip() for text in texts for line in str(text).splitlines()]
    lines = [line for line in lines if line.strip("^ ")]
    clauses = []
    for i, line in enumerate(lines):
        if i < len(lines) - 1 and line.endswith(".") and not line.endswith(".."):
            line = line[:-1]
        if i and line[:1].isupper() and line[1:2].islower():
            line = line[0].lower() + line[1:]
        clauses.append(line)
    return "; ".join(clauses)


def _missing_config(error) -> str:
    """Hydra's 'Could not find/load GROUP/NAME' without its search path, with the group's options."""
    head = str(error).split("\nConfig search path:")[0].split("\n\nAvailable options")[0]
    group = (error.missing_cfg_file or "").rpartition("/")[0]
    options = list(error.options or []) or (group_options(group) if group else [])
    return _joined([head] + ([f"options in '{group}': {', '.join(options)}"] if options else []))


def one_line(error: BaseException) -> str | None:
    """The message of an input error, in one line; None for any other exception (a bug)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, UserInputError):
        return _joined([str(error)])
    if isinstance(error, MissingConfigException):
        return _missing_config(error)
    if isinstance(error, OverrideParseException):
        return _joined([f"override {error.override!r}: {error.message}"])
    if isinstance(error, ConfigCompositionException):
        # Hydra prints an OmegaConf cause below its message; here it follows the first line:
        # "Could not override 'train.x'; key 'x' is not in struct; to append to your config use +train.x=1"
        first, _, rest = str(error).partition("\n")
        cause = error.__cause__
        why = str(cause).splitlines()[0] if isinstance(cause, OmegaConfBaseException) and str(cause) else ""
        return _joined([first, why, rest])
    return None


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Runs the block; an input error (see `one_line`) ends the process with `ablate: error:
    <message>` on stderr and exit status 2. With HYDRA_FULL_ERROR=1, and for any other exception,
    the exception goes on with its traceback."""
    try:
        yield
    except Exception as e:
        message = one_line(e)
        if message is None or full_error():
            raise
        print(f"ablate: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT) from None


def stop(error: Exception, status: int = 1) -> NoReturn:
    """End a command that ran but could not finish (runs that failed, a cluster job cancelled) with
    one line, `ablate: error: <message>`, and exit status 1: what happened is in the message and the
    run's records and logs, a traceback of the harness would add nothing (it comes with
    HYDRA_FULL_ERROR=1)."""
    if full_error():
        raise error
    print(f"ablate: error: {_joined([str(error)])}", file=sys.stderr, flush=True)
    raise SystemExit(status) from None

