"""Helpers for a trick's tests, so a trick author's test is a few lines (docs/adding-a-trick.md):

    from ablate.testing import build_trick, loss_history, really_on

    def test_my_trick_changes_training():
        really_on("my_trick", model="fcos")          # its hooks ran, its slots were used, losses differ

A trick is built from its YAML (`build_trick`, `trick_config`), a detector from its model config
with the tiny backbone (`tiny_model`, `model_config`), a batch of two small images (`tiny_batch`);
`loss_history` trains a few steps with the tricks' hooks as the harness calls them. Everything runs
on one CPU thread in well under a second per step.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config import conf_dir
from .models import build_model, label_offset
from .models.losses import slot_holders
from .tricks import BatchContext, Trick, build_tricks, lr_factor

__all__ = ["trick_config", "build_trick", "model_config", "tiny_model", "tiny_batch", "batch_context",
           "one_thread", "train_steps", "loss_history", "HookSpy", "really_on", "fixed_batch_history",
           "eval_detections"]

IMAGE_SIZE = 96


def trick_config(*names: str, **overrides: Any) -> DictConfig:
    """cfg.tricks as `tricks=[names...]` composes it: conf/tricks/<name>.yaml for each, in order;
    overrides by dotted key from cfg.tricks, e.g. trick_config("mixup", **{"mixup.prob": 1.0})."""
    cfg = OmegaConf.create({n: OmegaConf.load(conf_dir() / "tricks" / f"{n}.yaml") for n in names})
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def model_config(name: str, backbone: str = "tiny", **backbone_overrides: Any) -> DictConfig:
    """conf/model/<name>.yaml with conf/model/backbone/<backbone>.yaml (the tiny one, 8 channels wide
    unless told otherwise): a detector that builds and steps in milliseconds."""
    cfg = OmegaConf.load(conf_dir() / "model" / f"{name}.yaml")
    cfg.pop("defaults", None)
    if backbone == "tiny":
        backbone_overrides = {"width": 8, **backbone_overrides}
    cfg.backbone = OmegaConf.merge(OmegaConf.load(conf_dir() / "model" / "backbone" / f"{backbone}.yaml"),
                                   backbone_overrides)
    return cfg


def build_trick(name: str, model: str = "fcos", **overrides: Any) -> Trick:
    """The trick of conf/tricks/<name>.yaml, built and checked as a run builds it (arguments, slots,
    fits on `model`); overrides by key within the trick, e.g. build_trick("mixup", prob=1.0)."""
    cfg = trick_config(name, **{f"{name}.{k}": v for k, v in overrides.items()})
    (trick,) = build_tricks(cfg, model_config(model))
    return trick


def tiny_model(name: str, seed: int = 0, tricks: Sequence[Trick] = (), num_classes: int = 2,
               **model_overrides: Any) -> nn.Module:
    """The detector `name` (tiny backbone) built from `seed`, with the tricks' on_model applied in order;
    model_overrides set keys of its model config (e.g. score_thresh=0.0)."""
    torch.manual_seed(seed)
    cfg = model_config(name)
    for key, value in model_overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    model = build_model(cfg, num_classes=num_classes, image_size=IMAGE_SIZE)
    for trick in tricks:
        model = trick.on_model(model)
    return model


def tiny_batch(model: str = "fcos", weights: Sequence[float] | None = None, n: int = 2, seed: int = 0):
    """Images in [0, 1] and targets for detector `model`: the first image (96x96) has two boxes of
    dataset labels 1 and 2 (shifted to the model's class indices), the second (80x96) none; each
    further one (n > 2) has one box. `weights` gives the first image's boxes per-box weights (as
    MixUp writes them)."""
    g = torch.Generator().manual_seed(seed)
    offset = label_offset(model_config(model).family)
    images = [torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=g), torch.rand(3, IMAGE_SIZE - 16, IMAGE_SIZE, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 40.0, 80.0, 70.0]]),
                "labels": torch.tensor([1, 2]) - offset},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    for i in range(2, n):
        images.append(torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=g))
        x, y = (torch.rand(2, generator=g) * 40).tolist()
        targets.append({"boxes": torch.tensor([[x, y, x + 40.0, y + 36.0]]), "labels": torch.tensor([1 + i % 2]) - offset})
    if weights is not None:
        targets[0]["weights"] = torch.tensor(weights, dtype=torch.float32)
        for t in targets[1:]:
            t["weights"] = torch.ones(len(t["boxes"]))
    return images[:n], targets[:n]


def batch_context(step: int = 0, total_steps: int = 1, seed: int = 0, epoch: int = 0, num_epochs: int = 1) -> BatchContext:
    return BatchContext(epoch=epoch, num_epochs=num_epochs, step=step, total_steps=total_steps,
                        rng=np.random.default_rng(seed))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: as fast for these tiny models, and far faster when another process keeps
    the cores busy (two threads then wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class HookSpy:
    """Counts the calls of the hooks a trick overrides, and the calls of whatever it put in the
    detector's slots (a loss set in on_model but never called is a silent no-op)."""

    HOOKS = ("on_model", "on_lr_factor", "on_batch", "on_step", "eval_model")

    def __init__(self, trick: Trick):
        self.trick = trick
        self.calls = {h: 0 for h in self.HOOKS if getattr(type(trick), h) is not getattr(Trick, h)}
        self.slot_calls: dict[str, int] = {}
        for hook in self.calls:
            setattr(trick, hook, self._counted(hook, getattr(trick, hook)))

    def _counted(self, hook: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            self.calls[hook] += 1
            out = fn(*args, **kwargs)
            if hook == "on_model":
                self._watch_slots(out)
            if hook == "on_lr_factor":
                return self._counted_factor(out)
            return out
        return wrapper

    def _counted_factor(self, factor: Callable[[int], float]) -> Callable[[int], float]:
        self.calls["lr_factor(step)"] = 0

        def counted(step: int) -> float:
            self.calls["lr_factor(step)"] += 1
            return factor(step)
        return counted

    def _watch_slots(self, model: nn.Module) -> None:
        for slot, holder in slot_holders(model).items():
            value = getattr(holder, holder.slot_attrs[slot])
            if value is None or slot not in self.trick.claims:
                continue
            self.slot_calls[slot] = 0
            original = value.__call__ if not isinstance(value, nn.Module) else value.forward

            def counted(*args, _slot=slot, _fn=original, **kwargs):
                self.slot_calls[_slot] += 1
                return _fn(*args, **kwargs)
            if isinstance(value, nn.Module):
                value.forward = counted
            else:  # a sampler: wrap the instance's call through a small subclass
                value.__class__ = type(type(value).__name__, (type(value),),
                                       {"__call__": lambda self, *a, _c=counted, **k: _c(*a, **k)})

    def never_ran(self) -> list[str]:
        return [h for h, n in {**self.calls, **{f"slot {s}": n for s, n in self.slot_calls.items()}}.items() if n == 0]


def train_steps(model: str, tricks: Sequence[Trick] = (), steps: int = 3, seed: int = 0, lr: float = 1e-3,
                batch_size: int = 4) -> tuple[list[float], nn.Module]:
    """`steps` AdamW steps of the tiny `model` on tiny batches, the tricks' hooks called as the
    harness calls them (on_model, on_lr_factor, on_batch, on_step); (the summed loss of each step,
    the trained model)."""
    with one_thread():
        net = tiny_model(model, seed, tricks)
        factor = lr_factor(lambda step: 1.0, list(tricks), steps)
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        net.train()
        history = []
        for step in range(steps):
            images, targets = tiny_batch(model, n=batch_size, seed=seed + step)
            ctx = batch_context(step, steps, seed=seed + step)
            for trick in tricks:
                images, targets = trick.on_batch(images, targets, ctx)
            torch.manual_seed(seed + step)  # the RoI sampler draws at random
            loss = sum(net(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            for trick in tricks:
                trick.on_step(net, step + 1)
            history.append(float(loss.detach()))
        return history, net


def fixed_batch_history(model: str, steps: int, lr: float) -> list[dict[str, float]]:
    """Each loss part, at each of `steps` AdamW steps of the tiny `model` on one fixed tiny batch
    (an overfit test: the loss must fall); the RoI sampler's draws seeded per step, as train_steps."""
    with one_thread():
        net = tiny_model(model).train()
        images, targets = tiny_batch(model)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
        history = []
        for step in range(steps):
            torch.manual_seed(step)
            losses = net(images, targets)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


def eval_detections(model: str, num_classes: int = 2, **model_overrides: Any) -> list[dict[str, torch.Tensor]]:
    """The tiny `model` in eval mode on the tiny batch, its detections checked against what the COCO
    evaluation reads (ablate/evaluate.py): per image exactly boxes [N, 4] (x1, y1, x2, y2 in the
    input image's pixels, inside it), scores [N] in [0, 1] and int64 labels [N] that are dataset
    classes (1..K after the family's label offset: never the background), N <= detections_per_img.
    model_overrides as tiny_model's (an untrained head whose scores start below its threshold needs
    a lower one to detect anything). Returns them for the head's own checks."""
    with one_thread(), torch.no_grad():
        net = tiny_model(model, num_classes=num_classes, **model_overrides).eval()
        images, _ = tiny_batch(model)
        out = net(images)
    cfg = model_config(model)
    offset, limit = label_offset(cfg.family), cfg.get("detections_per_img", 100)
    assert len(out) == len(images)
    for det, image in zip(out, images):
        assert set(det) == {"boxes", "scores", "labels"}, set(det)
        n = len(det["scores"])
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,) and 0 < n <= limit, (det["boxes"].shape, n)
        assert det["labels"].dtype == torch.int64
        dataset_labels = det["labels"] + offset
        assert dataset_labels.min() >= 1 and dataset_labels.max() <= num_classes, det["labels"]
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
        assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all() and (det["boxes"] >= 0).all()
        assert (det["boxes"][:, 2] <= image.shape[2]).all() and (det["boxes"][:, 3] <= image.shape[1]).all()
    return out


def loss_history(model: str, tricks: Sequence[Trick] = (), steps: int = 3, seed: int = 0, lr: float = 1e-3,
                 batch_size: int = 4) -> list[float]:
    """The summed training loss of each of `steps` steps (see train_steps)."""
    return train_steps(model, tricks, steps, seed, lr, batch_size)[0]


def really_on(name: str, model: str = "fcos", steps: int = 3, **overrides: Any) -> HookSpy:
    """Fails (AssertionError) unless the trick `name`, trained a few steps on `model`, called every
    hook it overrides, used every slot it set, and changed the loss history against the baseline's
    from the same seed, or, for a trick that picks the weights to evaluate (EMA), evaluates other
    weights than the trained ones. Returns the spy with the counts."""
    trick = build_trick(name, model, **overrides)
    spy = HookSpy(trick)
    with_trick, net = train_steps(model, [trick], steps)
    if "eval_model" in spy.calls:
        evaluated = trick.eval_model(net)
    silent = spy.never_ran()
    assert not silent, f"trick '{name}' on {model}: never ran: {', '.join(silent)}"
    if "eval_model" in spy.calls:
        differ = any(not torch.equal(a, b) for a, b in zip(evaluated.state_dict().values(), net.state_dict().values()))
        assert differ, f"trick '{name}' on {model}: evaluates the trained weights themselves: it changes nothing"
        return spy
    baseline = loss_history(model, [], steps)
    same = all(abs(a - b) <= 1e-6 * max(abs(b), 1e-12) for a, b in zip(with_trick, baseline))
    assert not same, f"trick '{name}' on {model}: the loss history is the baseline's ({baseline}): it changes nothing"
    return spy
