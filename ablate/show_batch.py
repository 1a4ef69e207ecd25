"""What the model sees: the first training batch of a run, after its batch tricks, drawn as a grid.

``show_batch(cfg, out, num_images)`` takes a resolved config (as ``train_and_evaluate`` does),
builds the data and the tricks, takes the first batch of epoch 0 exactly as ``ablate/train.py``
does (same epoch seed, same loader, same float conversion, same BatchContext), applies each
trick's ``on_batch`` and writes a PNG of the first ``num_images`` images with their boxes,
class names and (where a trick set target["weights"]) box weights. No model is built: labels
stay the dataset's 1..K. The global torch random state is restored afterwards, and matplotlib is
used through its object API (no pyplot), so nothing leaks into the caller.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from omegaconf import DictConfig

from .config import trick_names
from .results import atomic_write
from .data import build_data, make_loader
from .train import epoch_seed, to_device
from .tricks import BatchContext, build_tricks

#: Grid layout: at most COLUMNS images a row, each CELL_INCHES square, at DPI dots per inch.
COLUMNS = 4
CELL_INCHES = 3.0
DPI = 100
# One colour per class (tab10), cycled.
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf"]


def grid_shape(num_images: int) -> tuple[int, int]:
    """(rows, columns) of the grid for this many images."""
    cols = max(1, min(COLUMNS, num_images))
    return math.ceil(num_images / cols), cols


def image_size_px(num_images: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that show_batch writes for this many images."""
    rows, cols = grid_shape(num_images)
    return round(cols * CELL_INCHES * DPI), round(rows * CELL_INCHES * DPI)


def first_batch(cfg: DictConfig, num_images: int):
    """(images, targets, classes) of epoch 0's first training batch after the tricks' on_batch,
    the first ``num_images`` of them (the whole batch when it is smaller)."""
    tricks = build_tricks(cfg.tricks, cfg.model)
    data = build_data(cfg.data, Path(cfg.paths.cache))
    seed, epoch = int(cfg.seed), 0
    steps_per_epoch = math.ceil(len(data.train) / cfg.data.batch_size)
    with torch.random.fork_rng(devices=[]):
        eseed = epoch_seed(seed, epoch)
        torch.manual_seed(eseed)  # epoch 0's torch draws, as in training
        data.train.set_epoch(eseed)  # and its flips
        ctx_rng = np.random.default_rng(eseed)
        loader = make_loader(data.train, cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                             seed=eseed)
        images, targets = next(iter(loader))
        images, targets = to_device(images, targets, torch.device("cpu"), 0)
        ctx = BatchContext(epoch=epoch, num_epochs=cfg.train.epochs, step=0,
                           total_steps=cfg.train.epochs * steps_per_epoch, rng=ctx_rng)
        for trick in tricks:
            images, targets = trick.on_batch(images, targets, ctx)
    return images[:num_images], targets[:num_images], data.classes


def _draw(images, targets, classes: list[str], title: str) -> Figure:
    rows, cols = grid_shape(len(images))
    fig = Figure(figsize=(cols * CELL_INCHES, rows * CELL_INCHES), dpi=DPI)
    FigureCanvasAgg(fig)
    for k in range(rows * cols):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.set_axis_off()
        if k >= len(images):
            continue
        img, tgt = images[k], targets[k]
        h, w = img.shape[1:]
        ax.imshow(img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), extent=(0, w, h, 0),
                  interpolation="nearest")
        weights = tgt.get("weights")
        for n, (box, label) in enumerate(zip(tgt["boxes"].tolist(), tgt["labels"].tolist())):
            x0, y0, x1, y1 = box
            colour = _COLOURS[(int(label) - 1) % len(_COLOURS)]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2))
            name = classes[int(label) - 1] if 1 <= int(label) <= len(classes) else str(int(label))
            if weights is not None:
                name = f"{name} {float(weights[n]):.2f}"
            ax.text(x0, y0, name, fontsize=6, color="white", va="bottom", ha="left", clip_on=True,
                    bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.6, "alpha": 0.8})
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_title(f"image {tgt.get('image_id', k)}  {w}x{h}", fontsize=7)
    # Room at the top for the title (0.3 inch) above the first row's own titles.
    fig.suptitle(title, fontsize=11, y=1 - 0.06 / (rows * CELL_INCHES), va="top")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / (rows * CELL_INCHES),
                        wspace=0.04, hspace=0.12)
    return fig


def show_batch(cfg: DictConfig, out: Path, num_images: int) -> Path:
    """Draw epoch 0's first training batch of ``cfg`` after its batch tricks; write it to ``out``
    (PNG, atomically) and return the path. ``num_images`` is capped at the batch size."""
    if num_images < 1:
        raise ValueError(f"num_images={num_images}: must be at least 1")
    out = Path(out)
    images, targets, classes = first_batch(cfg, num_images)
    names = trick_names(cfg.tricks)
    title = (f"tricks: {', '.join(names)}" if names else "baseline (no trick)") + \
        f"  |  {cfg.data.name}, seed {int(cfg.seed)}, epoch 1, first batch"
    fig = _draw(images, targets, classes, title)
    return atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=DPI, metadata={"Software": None}),
                        binary=True)
