"""Tricks' overhead: each trick's training step against its baseline's, step by step.

    python benchmarks/tricks.py                    # every trick in conf/tricks/
    python benchmarks/tricks.py --tricks mixup cutmix --steps 40
    python benchmarks/tricks.py --tricks droppath csp --overrides model/backbone=resnet18 model.backbone.pretrained=false

--overrides go to both arms (after the model is chosen): a trick that needs another backbone
(droppath, weighted_residual, csp need residual stages) is measured on it.

For each trick, in one process: its baseline (FCOS for one-stage tricks, Faster R-CNN for
two-stage ones, the model a trick names otherwise) and the baseline with the trick are built from
the same config, as `ablate train` builds them; they then train alternately, one step each, on
the same batches from ablate's data pipeline. A slow spell of the machine hits neighbouring
steps alike, so the median of the paired step-time ratios is steady where whole runs are not
(warmup, which changes nothing in a step, is the control: its ratio should be 1).

Two figures per trick:
- the step-time ratio, trick over baseline (the hook included);
- for a batch-level trick (one with an `on_batch` hook: MixUp, CutMix...), the share of the trick
  step spent inside its hook. Target: at most 5%. A trick that changes the model or the loss has
  no such overhead: its step-time change is its real price, reported as such.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import train_step


def trick_kind(name: str) -> tuple[list[str], str]:
    """(the baseline models it fits, first choice first; 'batch' or 'model') of a trick, from its
    config and class."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from ablate.config import conf_dir
    from ablate.tricks import Trick

    node = OmegaConf.load(conf_dir() / "tricks" / f"{name}.yaml")
    cls = get_class(node._target_)
    by_family = {"one_stage": ["fcos", "retinanet"], "two_stage": ["faster_rcnn"]}
    models = list(dict.fromkeys(m for f in cls.fits for m in by_family.get(f, [f])))
    return models, "batch" if cls.on_batch is not Trick.on_batch else "model"


def paired_steps(trick: str, model_name: str, steps: int, cache: str, overrides: list[str]) -> dict:
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ablate.config import conf_dir
    from ablate.data import build_data, make_loader
    from ablate.models import build_model, label_offset
    from ablate.tricks import BatchContext, build_tricks
    from ablate.train import to_device

    arms = []
    for tricks in ([], [trick]):
        with initialize_config_dir(str(conf_dir()), version_base=None):
            cfg = compose("config", [f"model={model_name}", *overrides, f"tricks=[{','.join(tricks)}]", f"paths.cache={cache}",
                                     "data.max_train_images=320"])
        torch.manual_seed(0)
        built = build_tricks(cfg.tricks, cfg.model)
        data = build_data(cfg.data, Path(cfg.paths.cache))
        model = build_model(cfg.model, len(data.classes), cfg.data.image_size)
        for t in built:
            model = t.on_model(model)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        arms.append((built, model, params, instantiate(cfg.train.optimizer)(params)))
    offset, device = label_offset(cfg.model.family), torch.device("cpu")
    total = steps + 1
    ratios, hook_shares = [], []
    data.train.set_epoch(0)  # the flips (data.flip_rng=sample), as the loader's order: seed 0
    loader = make_loader(data.train, cfg.data.batch_size, shuffle=True, num_workers=0, seed=0)
    step = 0
    while step < total:
        for images, targets in loader:
            if step == total:
                break
            times = []
            for built, model, params, optimizer in arms:
                imgs, tgts = to_device(images, targets, device, offset)
                ctx = BatchContext(epoch=0, num_epochs=1, step=step, total_steps=total, rng=np.random.default_rng(step))
                start = time.perf_counter()
                for t in built:
                    imgs, tgts = t.on_batch(imgs, tgts, ctx)
                hook = time.perf_counter() - start
                train_step(model, params, optimizer, cfg.train.clip_grad_norm, imgs, tgts)
                times.append(time.perf_counter() - start)
            if step > 0:  # the first step pays oneDNN's warm-up
                ratios.append(times[1] / times[0])
                hook_shares.append(hook / times[1])
            step += 1
    return {"ratio": statistics.median(ratios), "hook": statistics.median(hook_shares), "steps": len(ratios)}


def main() -> None:
    from ablate.config import conf_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tricks", nargs="*", default=sorted(p.stem for p in (conf_dir() / "tricks").glob("*.yaml")))
    parser.add_argument("--steps", type=int, default=30, help="paired steps per trick")
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides for both arms, e.g. model/backbone=resnet18")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name in args.tricks:
            from ablate.tricks import TrickConflictError

            models, kind = trick_kind(name)
            r = None
            for model in models:  # the first detector the trick applies to (giou is FCOS's own loss)
                try:
                    r = paired_steps(name, model, args.steps, cache, args.overrides)
                    break
                except TrickConflictError as e:
                    print(f"  {name} on {model}: not applicable ({e})", flush=True)
            rows.append((name, kind, model if r else ", ".join(models), r))
            if r is None:  # e.g. droppath on the default tiny backbone, which has no residual blocks
                print(f"  {name}: not applicable on any default baseline", flush=True)
                continue
            print(f"  {name} on {model}: step time x{r['ratio']:.3f} of the baseline's (median of {r['steps']} "
                  f"paired steps); {100 * r['hook']:.2f}% of its step in batch hooks", flush=True)
    print("\ntrick | kind | baseline | step time / baseline's | share of its step in its batch hook")
    print("---|---|---|---|---")
    for name, kind, model, r in rows:
        if r is None:
            print(f"{name} | {kind} | {model} | not applicable | -")
            continue
        share = f"{100 * r['hook']:.2f}%" if kind == "batch" else "no batch hook (model, loss or schedule)"
        print(f"{name} | {kind} | {model} | {r['ratio']:.3f} | {share}")


if __name__ == "__main__":
    main()
