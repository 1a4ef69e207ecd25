"""Composing and checking a command line before Hydra runs it, and the small helpers every room
uses to read a resolved config (the configs themselves are found by ablate/paths.py).

No torch here: the CLI, the sweeper and the report import this.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import DatasetError, UserInputError, yaml_problem
# Where the configs live (ablate/paths.py), also by their names of before: config.conf_dir() and the rest.
from .paths import REPO_ROOT, conf_dir, group_options, sweeps_dir  # noqa: F401


class TrickFileError(UserInputError):
    """A trick file that is missing, malformed, or lacks what every trick file needs."""


def compose(overrides: list[str], multirun: bool = False, config_name: str = "config") -> DictConfig:
    """The config that `hydra.main` composes from these command-line overrides (in a multirun, its
    base config, before the sweeper's jobs), without Hydra's own node; runs nothing, makes no folder.
    Raises Hydra's errors for an unknown option, an unknown key, an override it cannot parse."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = GlobalHydra.instance().hydra.compose_config(
            config_name, list(overrides), run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN,
            with_log_configuration=False)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def coco_root(cfg_data: Any) -> Path:
    """data.root of a data=coco config: a folder that exists."""
    # `data.root=` gives '': the current folder, whose missing annotation files would be named instead.
    if ((isinstance(cfg_data, DictConfig) and OmegaConf.is_missing(cfg_data, "root")) or cfg_data["root"] is None
            or not str(cfg_data["root"]).strip()):
        raise DatasetError("data=coco needs data.root: the folder of a COCO-format set (data.root=DIR)")
    root = Path(str(cfg_data["root"])).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: data.root folder not found")
    return root


REUSE_MODES = ("same_code", "any_code", "never")


# Counts the loop reads as they are, each with the smallest value that makes sense (an image side
# below the detectors' largest stride, 32, leaves no feature map); None: may also be null.
COUNTS = {"train.epochs": 1, "data.batch_size": 1, "eval.batch_size": 1, "data.image_size": 32,
          "train.log_every": 1, "train.eval_every": 0, "data.num_workers": 0,
          "eval.bootstrap.resamples": 2, "eval.bootstrap.seed": 0}
OPTIONAL_COUNTS = {"data.max_train_images": 1, "data.max_val_images": 1}


def check_values(cfg: DictConfig) -> None:
    """The values the code reads as they are, checked before anything runs: an integer seed (an
    override `seed=` gives ''), the counts above, a known runtime.reuse, data.root a folder (data=coco)."""
    for key, low in {**COUNTS, **OPTIONAL_COUNTS}.items():
        value = OmegaConf.select(cfg, key)
        if value is None and key in OPTIONAL_COUNTS:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserInputError(f"{key}={value!r}: must be an integer >= {low}"
                                 + (" or null" if key in OPTIONAL_COUNTS else ""))
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserInputError(f"seed={seed!r}: must be an integer, e.g. seed=0")
    reuse = cfg.runtime.reuse
    if reuse not in REUSE_MODES:
        raise UserInputError(f"runtime.reuse={reuse!r}: choose one of {', '.join(REUSE_MODES)}")
    if cfg.data.name == "coco":
        coco_root(cfg.data)


def compose_command_line(argv: list[str]) -> DictConfig | None:
    """The config that `hydra.main` will compose from this command line, composed and checked
    first, so bad input stops the command in one line (ablate/errors.py) before Hydra makes a run
    folder or a sweep runs a job: the selected tricks' files, then the overrides, then the values
    (not for `--cfg`, which only prints the config). None for Hydra's flags that run nothing
    (--help, --info...) or that move the configs (--config-path, --config-dir): Hydra's to handle."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if (args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun
            or args.config_path or args.config_dir):
        return None
    check_trick_files(selected_tricks(args.overrides))
    def load(overrides: list[str]) -> DictConfig:
        return compose(overrides, multirun=args.multirun, config_name=args.config_name or "config")

    with key_hints(args.overrides, load):
        cfg = load(args.overrides)
    if not args.cfg:
        check_values(cfg)
    return cfg


APPEND_ADVICE = "; to append to your config use "


@contextlib.contextmanager
def key_hints(overrides: list[str], load: Callable[[list[str]], DictConfig]) -> Iterator[None]:
    """Runs a block that composes a config from these overrides; an override of a key the config
    lacks becomes a UserInputError that names the keys spelled alike (`unknown_key_hint`; `load`
    composes the config from other overrides)."""
    try:
        yield
    except Exception as e:
        hint = unknown_key_hint(e, list(overrides), load)
        if hint is None:
            raise
        raise UserInputError(hint) from e


def unknown_key_hint(error: Exception, overrides: list[str], load: Callable[[list[str]], DictConfig]) -> str | None:
    """Hydra's one-line error for an override of a key the config lacks, with the key it has that
    is spelled alike: "...; did you mean train.epochs=3? (+train.epoch=3 would add a new key)".
    None for any other error, or when no key is close."""
    from difflib import get_close_matches

    from .errors import one_line

    line = one_line(error) or ""
    if not line.startswith("Could not override '"):
        return None
    key = line.split("'", 2)[1]
    typed = [o for o in overrides if o.partition("=")[0].lstrip("+~") == key]
    try:  # the config without that override: its keys are the ones the user could have meant
        keys = dotted_keys(OmegaConf.to_container(load([o for o in overrides if o not in typed]), resolve=False))
    except Exception:  # another override is bad too: Hydra's message alone
        return None
    close = get_close_matches(key, keys, n=1, cutoff=0.75) or [
        k for k in keys if get_close_matches(key.rpartition(".")[2], [k.rpartition(".")[2]], cutoff=0.85)][:2]
    if not close:
        return None
    value = typed[0].partition("=")[2] if typed else "..."
    head, _, append = line.partition(APPEND_ADVICE)
    return (f"{head}; did you mean {' or '.join(f'{k}={value}' for k in close)}?"
            + (f" ({append} would add a new key)" if append else ""))


def dotted_keys(node: Any) -> list[str]:
    """Every key of a nested mapping as a dotted path, parents before their children."""
    return list(dotted_items(node))


def dotted_items(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every key of a nested mapping as a dotted path -> its value (a mapping's, then its children's)."""
    items: dict[str, Any] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            items[f"{prefix}{k}"] = v
            items.update(dotted_items(v, f"{prefix}{k}."))
    return items


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _strings(v)]
    inner = getattr(value, "list", None)  # Hydra's ChoiceSweep: tricks=[],[a],[a,b]
    return _strings(inner) if inner is not None else []


def selected_tricks(overrides: list[str]) -> list[str]:
    """The trick names that command-line overrides select (tricks=[a,b], a sweep tricks=[],[a],
    +tricks=...), in order, each once. Overrides Hydra cannot parse are left to Hydra to report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    names: list[str] = []
    for text in overrides:
        if text.startswith("-") or "=" not in text:
            continue
        try:
            (override,) = OverridesParser.create().parse_overrides([text])
        except HydraException:
            continue
        if override.key_or_group == "tricks" and not override.is_delete():
            names += [n for n in _strings(override.value()) if n not in names]
    return names


def check_trick_file(name: str, folder: Path | None = None) -> Path:
    """conf/tricks/<name>.yaml as a trick file must be: present, valid YAML, with its package line
    `# @package tricks.<name>` in its header (without it, Hydra merges the file's keys into
    cfg.tricks itself: `_target_` becomes a trick of its own) and a `_target_`. Checked before a run
    starts, so a bad file stops it before any run folder is made. Returns the file's path."""
    folder = folder or conf_dir() / "tricks"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = group_options(folder.name, folder.parent)
        raise TrickFileError(f"no trick '{name}': {path} does not exist; tricks: {', '.join(known)}")
    text = path.read_text()
    header = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        header.append(line.strip())
    want = f"# @package tricks.{name}"
    packages = [h for h in header if h.replace(" ", "").startswith("#@package")]
    if want not in header:
        found = f" (it says {packages[0]!r})" if packages else ""
        raise TrickFileError(f"{path}: the trick file must start with the line '{want}'{found}: it keeps the "
                             f"options of several selected tricks apart (cfg.tricks.{name}.<arg>); add it as "
                             "the first line")
    try:
        node = OmegaConf.create(text)
    except Exception as e:  # omegaconf wraps yaml's errors in several types
        raise TrickFileError(f"{path}: not valid YAML at {yaml_problem(e)}") from None
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise TrickFileError(f"{path}: a trick file must set _target_ (the trick's class, e.g. "
                             "ablate.tricks.data.mixup.MixUp) and its arguments")
    locate_target(str(node._target_), path)
    return path


def locate_target(target: str, path: Path) -> Any:
    """The object a `_target_` names (module path, then attributes), or a TrickFileError naming the
    file and saying which part was not found (Hydra's own message names neither the file nor what
    the module does have)."""
    import importlib

    parts = target.split(".")
    module, found = None, 0
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            module, found = importlib.import_module(name), i
            break
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):  # the module exists, an import inside it failed
                raise TrickFileError(f"{path}: _target_ {target!r}: importing {name} failed: {e}") from None
    if module is None:
        raise TrickFileError(f"{path}: _target_ {target!r}: no module {parts[0]!r} can be imported")
    obj = module
    for attr in parts[found:]:
        if not hasattr(obj, attr):
            have = sorted(n for n, v in vars(obj).items()
                          if isinstance(v, type) and v.__module__ == getattr(obj, "__name__", None))
            raise TrickFileError(f"{path}: _target_ {target!r}: {'.'.join(parts[:found])} has no {attr!r}"
                                 + (f"; its classes: {', '.join(have)}" if have else ""))
        obj = getattr(obj, attr)
    return obj


def check_trick_files(names: list[str]) -> None:
    for name in names:
        check_trick_file(name)


def trick_names(tricks: Any) -> list[str]:
    """The selected tricks' names, in the order they were selected (cfg.tricks keeps insertion order)."""
    if tricks is None:
        return []
    return [str(k) for k in tricks.keys()]


def variant_name(tricks: Any) -> str:
    names = trick_names(tricks)
    return "+".join(names) if names else "baseline"


def area_scaled(value: int, size: int, reference: int, min_factor: float) -> int:
    """`value`, a count sized for images of side `reference`, for images of side `size`: scaled
    with the image area, value x (size / reference)^2, never below value x min_factor; rounded.

    The config's `${ablate_area_scale:VALUE,SIZE,REFERENCE,MIN_FACTOR}` (conf/model/faster_rcnn.yaml
    sizes its RPN and RoI budgets with it; the rule and its reasons are there)."""
    if value <= 0 or size <= 0 or reference <= 0 or not 0 < min_factor <= 1:
        raise ValueError(f"ablate_area_scale:{value},{size},{reference},{min_factor}: value, size and "
                         "reference must be positive and min_factor in (0, 1]")
    return max(1, round(value * max((size / reference) ** 2, min_factor)))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("ablate_variant"):
        OmegaConf.register_new_resolver("ablate_variant", variant_name)
    if not OmegaConf.has_resolver("ablate_area_scale"):
        OmegaConf.register_new_resolver("ablate_area_scale", area_scaled)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data, without Hydra's own node."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


register_resolvers()
