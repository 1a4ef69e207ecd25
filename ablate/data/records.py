"""A split's per-image records as flat numpy arrays, and the file format of their cache on disk.

Why flat arrays (issue 28): a list of per-image Python objects (a dataclass, its arrays, its
tensors) is copied page by page into every forked DataLoader worker, because reading an object
writes its reference count and the garbage collector writes into every object it walks
(pytorch/pytorch#13246). At COCO size (118k images, 860k boxes) that is a gigabyte per worker.
Here a split is a handful of numpy arrays (boxes and labels of all images concatenated, with
offsets; file names as one byte buffer with offsets): reading a record writes nothing of them, so
the workers share their pages with the main process, as detectron2's and mmengine's serialized
dataset lists do. Loaded from the cache file they are a read-only memory map: processes of one
run (torchrun) share those pages too.

The cache file: a magic line, the length of a JSON header, the header (the key it was made for,
each array's dtype, shape and offset, and the split's metadata), then the arrays, each aligned to
64 bytes. Anything that does not read back as such is an error here (ValueError); the reader
(coco.py) rebuilds the file.
"""
from __future__ import annotations

import json
import mmap
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..results import atomic_write

MAGIC = b"ablate coco index\n"
ALIGN = 64


@dataclass
class ImageRecord:
    """One image of a split and its training targets, in the original pixel coordinates: a view
    of one row of a :class:`RecordTable`, made when asked for (its arrays are read-only)."""

    id: int
    file_name: str
    path: Path
    width: int
    height: int
    # float64 [N, 4] xyxy, clipped to the image, every box of positive width and height.
    boxes: np.ndarray
    # int64 [N], contiguous labels 1..K.
    labels: np.ndarray


@dataclass(eq=False)
class RecordTable:
    """The records of a split's images, in image id order, as flat read-only numpy arrays.

    ``table[i]`` is the :class:`ImageRecord` of image ``i``; image ``i``'s boxes and labels are
    rows ``box_offsets[i]:box_offsets[i + 1]`` of ``boxes`` and ``labels``.
    """

    images_dir: Path
    ids: np.ndarray          # int64 [N], ascending
    widths: np.ndarray       # int64 [N], original pixels
    heights: np.ndarray      # int64 [N]
    names: np.ndarray        # uint8: the UTF-8 file names, one after the other
    name_offsets: np.ndarray  # int64 [N + 1]
    boxes: np.ndarray        # float64 [M, 4] xyxy, original pixels
    labels: np.ndarray       # int64 [M], 1..K
    box_offsets: np.ndarray  # int64 [N + 1]

    ARRAYS = ("ids", "widths", "heights", "names", "name_offsets", "boxes", "labels", "box_offsets")

    @classmethod
    def build(cls, images_dir: Path, ids: np.ndarray, widths: np.ndarray, heights: np.ndarray,
              file_names: list[str], boxes: np.ndarray, labels: np.ndarray, boxes_per_image: np.ndarray
              ) -> "RecordTable":
        encoded = [name.encode("utf-8") for name in file_names]
        name_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=name_offsets[1:])
        box_offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(boxes_per_image, out=box_offsets[1:])
        arrays = {"ids": ids, "widths": widths, "heights": heights,
                  "names": np.frombuffer(b"".join(encoded), dtype=np.uint8), "name_offsets": name_offsets,
                  "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "labels": labels,
                  "box_offsets": box_offsets}
        return cls.from_arrays(Path(images_dir), arrays)

    @classmethod
    def from_arrays(cls, images_dir: Path, arrays: dict[str, np.ndarray]) -> "RecordTable":
        """The table of these arrays (checked for consistency: a cache file may be anything)."""
        table = cls(images_dir, **{name: arrays[name] for name in cls.ARRAYS})
        n, m = len(table.ids), len(table.boxes)
        if (table.widths.shape != (n,) or table.heights.shape != (n,) or table.name_offsets.shape != (n + 1,)
                or table.box_offsets.shape != (n + 1,) or table.labels.shape != (m,)
                or table.boxes.shape != (m, 4) or table.box_offsets[-1] != m
                or table.name_offsets[-1] != len(table.names) or np.any(np.diff(table.box_offsets) < 0)
                or np.any(np.diff(table.name_offsets) < 0)):
            raise ValueError("inconsistent record arrays")
        for name in cls.ARRAYS:
            getattr(table, name).flags.writeable = False
        return table

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.ARRAYS}

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, i: int) -> int:
        """``i`` as a position in the table (negative counts from the end, as a list's)."""
        i = operator.index(i)
        n = len(self.ids)
        if not -n <= i < n:
            raise IndexError(f"record index {i} out of range for {n} images")
        return i + n if i < 0 else i

    def file_name(self, i: int) -> str:
        i = self.index(i)
        return bytes(self.names[self.name_offsets[i]:self.name_offsets[i + 1]]).decode("utf-8")

    def box_range(self, i: int) -> tuple[int, int]:
        i = self.index(i)
        return int(self.box_offsets[i]), int(self.box_offsets[i + 1])

    def __getitem__(self, i: int) -> ImageRecord:
        i = self.index(i)
        lo, hi = self.box_range(i)
        name = self.file_name(i)
        return ImageRecord(id=int(self.ids[i]), file_name=name, path=self.images_dir / name,
                           width=int(self.widths[i]), height=int(self.heights[i]), boxes=self.boxes[lo:hi],
                           labels=self.labels[lo:hi])

    def __iter__(self) -> Iterator[ImageRecord]:
        return (self[i] for i in range(len(self)))


def write_index(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and a JSON-able ``header`` to ``path`` atomically, in the format above."""
    layout: dict[str, dict] = {}
    offset = 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        layout[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
        offset += -(-array.nbytes // ALIGN) * ALIGN
    head = json.dumps({**header, "arrays": layout}).encode("utf-8")
    start = -(-(len(MAGIC) + 8 + len(head)) // ALIGN) * ALIGN

    def write(f) -> None:
        f.write(MAGIC + len(head).to_bytes(8, "little") + head)
        f.write(b"\0" * (start - len(MAGIC) - 8 - len(head)))
        for name, array in arrays.items():
            data = np.ascontiguousarray(array).tobytes()
            f.write(data + b"\0" * (-len(data) % ALIGN))

    atomic_write(path, write, binary=True)


def read_index(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the arrays of an index file, the arrays read-only views of a memory map of
    it. Raises OSError or ValueError (json's, numpy's) when the file is not one whole index."""
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if buf[:len(MAGIC)] != MAGIC:
        raise ValueError("not an index file")
    head_len = int.from_bytes(buf[len(MAGIC):len(MAGIC) + 8], "little")
    head_end = len(MAGIC) + 8 + head_len
    if head_end > len(buf):
        raise ValueError("truncated header")
    header = json.loads(buf[len(MAGIC) + 8:head_end].decode("utf-8"))
    start = -(-head_end // ALIGN) * ALIGN
    arrays = {}
    for name, spec in header.pop("arrays").items():
        dtype, shape = np.dtype(spec["dtype"]), tuple(int(s) for s in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        offset = start + int(spec["offset"])
        if offset < start or offset + count * dtype.itemsize > len(buf):
            raise ValueError(f"array {name} reaches past the end of the file")
        # frombuffer refuses an offset at the very end, where an empty last array stands.
        arrays[name] = (np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape) if count
                        else np.empty(shape, dtype=dtype))
    return header, arrays
