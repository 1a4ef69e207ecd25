"""Interleaved training steps of two set-ups in one process, on the same batches.

What `frcnn_budget.py` and `cpu_amp.py` share. Each arm is a config composed as `ablate train`
composes it (its own overrides) and the context its forward runs in (ablate's autocast_for of its
train.amp, unless given). The models are built from the same seed (same architecture, same initial
weights), each with its own optimizer, and take one step each on every batch of ablate's data
pipeline, from the same random state (RoI sampling), the order of the two arms swapped every pair
(A B, B A, A B...) so neither always runs on a cache the other warmed.
A slow spell of this shared machine hits the two steps of a pair alike: the median of the paired
ratios is steady where times measured one after the other are not.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Arm:
    name: str
    overrides: list[str]
    # The forward runs inside this context, as in ablate's loop; None: the one ablate's autocast_for
    # makes of the arm's train.amp on the CPU.
    context: Callable[[], contextlib.AbstractContextManager] | None = None
    cfg: object = None
    model: object = None
    params: list = field(default_factory=list)
    optimizer: object = None
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def compose(overrides: list[str], cache: str | None):
    """The config `ablate train OVERRIDES` runs with; cache None keeps its paths.cache (the
    embedded data set generated once per machine there)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from ablate.config import conf_dir

    extra = [f"paths.cache={cache}"] if cache else []
    with initialize_config_dir(str(conf_dir()), version_base=None):
        return hydra_compose("config", [*overrides, *extra])


def build(arm: Arm, cache: str | None, num_classes: int) -> Arm:
    import torch
    from hydra.utils import instantiate

    from ablate.models import build_model

    arm.cfg = compose(arm.overrides, cache)
    if arm.context is None:
        from ablate.train import autocast_for

        arm.context = autocast_for(torch.device("cpu"), arm.cfg.train.amp)
    torch.manual_seed(0)
    arm.model = build_model(arm.cfg.model, num_classes, arm.cfg.data.image_size)
    arm.model.train()
    arm.params = [p for p in arm.model.parameters() if p.requires_grad]
    arm.optimizer = instantiate(arm.cfg.train.optimizer)(arm.params)
    return arm


def step(arm: Arm, images, targets) -> float:
    """ablate's training step (forward under the arm's context; backward, clipping, AdamW step
    outside it, as ablate's loop does); its wall time."""
    import torch

    start = time.perf_counter()
    with arm.context():
        losses = arm.model(images, targets)
    loss = sum(losses.values())
    arm.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(arm.params, arm.cfg.train.clip_grad_norm)
    arm.optimizer.step()
    elapsed = time.perf_counter() - start
    arm.losses.append(loss.item())
    return elapsed


def interleave(a: Arm, b: Arm, pairs: int, cache: str | None = None, warmup: int = 1) -> dict:
    """`pairs` timed pairs of steps (after `warmup` untimed ones: oneDNN's first-call set-up),
    arm b's step time over arm a's per pair; their median and quartiles."""
    import torch

    from ablate.data import build_data, make_loader
    from ablate.models import label_offset
    from ablate.train import to_device

    base = compose(a.overrides, cache)
    data = build_data(base.data, Path(base.paths.cache))
    for arm in (a, b):
        build(arm, cache, len(data.classes))
        if arm.cfg.data != base.data or arm.cfg.model.family != base.model.family:
            raise SystemExit(f"arms {a.name} and {b.name} must read the same data")
    offset, device = label_offset(base.model.family), torch.device("cpu")
    data.train.set_epoch(0)  # the flips (data.flip_rng=sample), as the loader's order: seed 0
    loader = make_loader(data.train, base.data.batch_size, shuffle=True, num_workers=0, seed=0, drop_last=True)
    ratios, done = [], 0
    while done < warmup + pairs:
        for images, targets in loader:
            if done == warmup + pairs:
                break
            imgs, tgts = to_device(images, targets, device, offset)
            order = (a, b) if done % 2 == 0 else (b, a)
            times = {}
            for arm in order:
                torch.manual_seed(done)  # the same random draws (RoI sampling) for both arms
                times[arm.name] = step(arm, imgs, [dict(t) for t in tgts])
            if done >= warmup:
                a.times.append(times[a.name])
                b.times.append(times[b.name])
                ratios.append(times[b.name] / times[a.name])
            done += 1
    q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"ratio": median, "q1": q1, "q3": q3, "pairs": len(ratios),
            "batch": base.data.batch_size, "image_size": base.data.image_size}
