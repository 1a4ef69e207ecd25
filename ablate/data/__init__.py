"""The data room: COCO-format reading and validation, the embedded shapes set, Dataset and loader.

``build_data(cfg.data, cache_dir)`` is the entry point: it returns a :class:`DataBundle` with the
train and val datasets, the label map and the val ground truth for pycocotools.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import coco_root
from .coco import CocoSplit, DatasetError, check_same_categories, read_coco
from .dataset import DetectionDataset, collate, make_loader
from .shapes import ensure_shapes, generator_hash

# The folder under paths.cache that holds the parsed annotation files (coco.py: read_coco).
INDEX_CACHE = "coco_index"

__all__ = ["DataBundle", "DatasetError", "DetectionDataset", "build_data", "collate", "make_loader",
           "generator_hash"]


@dataclass
class DataBundle:
    train: DetectionDataset
    val: DetectionDataset
    # Class names: label k (1..K) is classes[k-1].
    classes: list[str]
    # Contiguous model label (1..K) -> COCO category_id.
    label_to_cat_id: dict[int, int]
    # The val annotation json (used images only) as a dict for pycocotools:
    # COCO(); .dataset = val_coco_gt; .createIndex().
    val_coco_gt: dict
    # The folder the data came from (for shapes: the generated cache folder).
    root: Path


def _resolve(root: Path, rel: Any) -> Path:
    path = Path(str(rel)).expanduser()
    return path if path.is_absolute() else root / path


def build_data(cfg_data: Any, cache_dir: Path) -> DataBundle:
    """Read (for shapes: first generate) the data set that ``cfg_data`` (the ``data`` config) names."""
    name = cfg_data["name"]
    if name == "shapes":
        if cfg_data["generator"] is None:
            raise DatasetError("data=shapes needs data.generator")
        root = ensure_shapes(cfg_data["generator"], Path(cache_dir))
    elif name == "coco":
        root = coco_root(cfg_data)
    else:
        raise DatasetError(f"unknown data set name {name!r}: expected shapes or coco")

    images_dir = _resolve(root, cfg_data["images"])
    # The parsed annotation files are kept beside the generated data: a second run reads them back.
    index_cache = Path(cache_dir) / INDEX_CACHE
    train_split = read_coco(_resolve(root, cfg_data["train_annotations"]), images_dir, cfg_data["max_train_images"],
                            index_cache, ground_truth=False)
    val_split = read_coco(_resolve(root, cfg_data["val_annotations"]), images_dir, cfg_data["max_val_images"],
                          index_cache, ground_truth=True)
    check_same_categories(train_split, val_split)

    def dataset(split: CocoSplit, train: bool, cache_ram_mb: float) -> DetectionDataset:
        return DetectionDataset(split, image_size=cfg_data["image_size"], train=train, hflip=cfg_data["hflip"],
                                cache_ram_mb=cache_ram_mb, flip_rng=cfg_data["flip_rng"], name=f"{name} {'train' if train else 'val'}")

    # One RAM budget for both splits: train takes its share first, val what is left.
    train = dataset(train_split, True, cfg_data["cache_ram_mb"])
    val = dataset(val_split, False, cfg_data["cache_ram_mb"] - train.cached_mb)
    return DataBundle(train=train, val=val,
                      classes=list(train_split.category_names), label_to_cat_id=train_split.label_to_cat_id,
                      val_coco_gt=val_split.coco_gt, root=root)
