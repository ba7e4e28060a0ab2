"""The data contract: one JSON record per image (see docs/DATA.md), loading and validation.

A line of a data JSONL file::

    {"image_id": "000017", "image": "images/000017.png", "width": 128, "height": 128,
     "objects": [{"desc": "red circle", "bbox_2d": [12.25, 30.5, 60.0, 71.75]}]}

- `image_id`: non-empty string, unique in the file. Every join (GT <-> predictions <-> dumps) is by it.
- `image`: path of the image file, relative to the JSONL file's folder (or absolute).
- `width`, `height`: ints >= 2, the pixel size of the image file as stored (no runtime resizing).
- `objects`: list (may be empty) of `{"desc": non-empty str, "bbox_2d": [x1, y1, x2, y2]}`, pixel
  floats in the stored image. Box rule: all four finite numbers with `0 <= x1 < x2 <= W` and
  `0 <= y1 < y2 <= H` (a box may end at the image border W/H, as COCO boxes do; `coords` clamps
  such an edge to bin 999). `x2 <= x1` or `y2 <= y1` is a degenerate box.
- Unknown extra keys (in a record or an object) are ignored, so converters may carry provenance
  such as `category_id`; they are not kept by `load_records` and not written by `record_to_json`.

Every rule violation raises `DataError("<file>:<line>: <rule>")`; the first error stops loading.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmdet.coords import pixel_box_to_bins
from vlmdet.errors import DataError
from vlmdet.io import iter_jsonl


@dataclass(frozen=True, slots=True)
class GtObject:
    """One ground-truth object: `desc` (class name / phrase) and `bbox` `(x1, y1, x2, y2)` in pixels."""

    desc: str
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Record:
    """One image with its objects. `image` is the path as written in the file; `image_path` is it
    resolved against the JSONL file's folder. `width`/`height` are the image file's pixel size."""

    image_id: str
    image: str
    width: int
    height: int
    objects: tuple[GtObject, ...]
    image_path: Path

    def bins(self) -> list[tuple[str, tuple[int, int, int, int]]]:
        """`(desc, bins)` per object, in file order; bins via `coords.pixel_box_to_bins`."""
        return [(o.desc, pixel_box_to_bins(o.bbox, self.width, self.height)) for o in self.objects]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) read from the file header (PIL opens lazily: no pixel decoding)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def validate_record(obj: Any, where: str, base_dir: str | os.PathLike = ".", check_images: bool = True) -> Record:
    """Check one parsed JSON value against the contract and return it as a `Record`.

    `where` prefixes every error (normally `"<file>:<line>"`); `base_dir` is the folder that relative
    image paths are resolved against. With `check_images`, the image must open with PIL and its size
    must equal `width` x `height`. Duplicate `image_id`s are a file-level rule (see `load_records`).
    """

    def fail(rule: str) -> DataError:
        return DataError(f"{where}: {rule}")

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("image_id", "image", "width", "height", "objects"):
        if key not in obj:
            raise fail(f"missing field {key!r}")
    image_id, image, width, height, objects = (obj[k] for k in ("image_id", "image", "width", "height", "objects"))
    if not isinstance(image_id, str) or not image_id:
        raise fail(f"'image_id' must be a non-empty string, got {image_id!r}")
    if not isinstance(image, str) or not image:
        raise fail(f"'image' must be a non-empty string (a path), got {image!r}")
    for name, v in (("width", width), ("height", height)):
        if not _is_int(v) or v < 2:
            raise fail(f"{name!r} must be an int >= 2, got {v!r}")
    if not isinstance(objects, list):
        raise fail(f"'objects' must be a list, got {type(objects).__name__}")

    parsed = []
    for i, o in enumerate(objects):
        at = f"objects[{i}]"
        if not isinstance(o, dict):
            raise fail(f"{at} must be an object, got {type(o).__name__}")
        desc = o.get("desc")
        if not isinstance(desc, str):
            raise fail(f"{at}: 'desc' missing or not a string")
        if not desc.strip():
            raise fail(f"{at}: empty desc")
        box = o.get("bbox_2d")
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise fail(f"{at}: 'bbox_2d' must be 4 finite numbers [x1, y1, x2, y2], got {box!r}")
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 <= x1 or y2 <= y1:
            raise fail(f"{at}: degenerate box {box} (need x1 < x2 and y1 < y2)")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise fail(f"{at}: box {box} outside the image (need 0 <= x1, 0 <= y1, x2 <= {width}, y2 <= {height})")
        parsed.append(GtObject(desc, (x1, y1, x2, y2)))

    image_path = Path(base_dir) / image
    if check_images:
        try:
            size = _image_size(image_path)
        except (OSError, ValueError) as err:  # missing file, not an image (PIL.UnidentifiedImageError is an OSError)
            raise fail(f"unreadable image {str(image_path)!r}: {err}") from None
        if size != (width, height):
            raise fail(f"size mismatch: image {image!r} is {size[0]}x{size[1]}, record says {width}x{height}")
    return Record(image_id, image, width, height, tuple(parsed), image_path)


def load_records(path: str | os.PathLike, check_images: bool = True) -> list[Record]:
    """Load and validate a data JSONL file (blank lines are skipped). Raises `DataError` at the first
    broken rule, `file:line: rule`; a duplicate `image_id` names both lines."""
    path = Path(path)
    base_dir = path.parent
    seen: dict[str, int] = {}
    records = []
    for lineno, obj in iter_jsonl(path):
        rec = validate_record(obj, f"{path}:{lineno}", base_dir, check_images)
        if rec.image_id in seen:
            raise DataError(f"{path}:{lineno}: duplicate image_id {rec.image_id!r} (first on line {seen[rec.image_id]})")
        seen[rec.image_id] = lineno
        records.append(rec)
    return records


def record_to_json(record: Record) -> dict:
    """The contract dict of a record (the inverse of `validate_record`; boxes as pixel floats)."""
    return {
        "image_id": record.image_id,
        "image": record.image,
        "width": record.width,
        "height": record.height,
        "objects": [{"desc": o.desc, "bbox_2d": list(o.bbox)} for o in record.objects],
    }


def load_image(record: Record):
    """The record's image as an RGB `PIL.Image.Image` (decoded; size `width` x `height`)."""
    from PIL import Image

    with Image.open(record.image_path) as im:
        return im.convert("RGB")
