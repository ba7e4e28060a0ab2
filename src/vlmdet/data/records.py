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
import struct
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


#: what PIL raises for a missing, truncated or garbled image file (struct.error from a short header,
#: SyntaxError from a broken PNG chunk)
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, struct.error)


def _image_size(path: Path, decode: bool = False) -> tuple[int, int]:
    """(width, height) read from the file header (PIL opens lazily: no pixel decoding); with `decode`
    every pixel is decoded too (a truncated file fails here, not in the training loader)."""
    from PIL import Image

    with Image.open(path) as im:
        if decode:
            im.load()
        return im.size


def check_image(record: "Record", where: str, decode: bool = False) -> None:
    """The record's image opens (fully decodes with `decode`) and has the record's size; else
    `DataError("<where>: ...")`."""
    try:
        size = _image_size(record.image_path, decode)
    except IMAGE_ERRORS as err:  # missing file, not an image (PIL.UnidentifiedImageError is an OSError)
        raise DataError(f"{where}: unreadable image {str(record.image_path)!r}: {err}") from None
    if size != (record.width, record.height):
        raise DataError(f"{where}: size mismatch: image {record.image!r} is {size[0]}x{size[1]}, "
                        f"record says {record.width}x{record.height}")


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

    record = Record(image_id, image, width, height, tuple(parsed), Path(base_dir) / image)
    if check_images:
        check_image(record, where)
    return record


def load_records(
    path: str | os.PathLike, check_images: bool = True, decode_images: bool = False, workers: int = 1,
    progress: bool = False,
) -> list[Record]:
    """Load and validate a data JSONL file (blank lines are skipped). Raises `DataError` at the first
    broken rule, `file:line: rule`; a duplicate `image_id` names both lines.

    With `check_images` every image is opened (header: size and format); `decode_images` decodes
    every pixel as well. The image checks run on `workers` threads (a tqdm bar with `progress`);
    the error reported is the one on the first line, as in a sequential check."""
    path = Path(path)
    base_dir = path.parent
    seen: dict[str, int] = {}
    records, lines = [], []
    for lineno, obj in iter_jsonl(path):
        rec = validate_record(obj, f"{path}:{lineno}", base_dir, check_images=False)
        if rec.image_id in seen:
            raise DataError(f"{path}:{lineno}: duplicate image_id {rec.image_id!r} (first on line {seen[rec.image_id]})")
        seen[rec.image_id] = lineno
        records.append(rec)
        lines.append(lineno)
    if check_images:
        _check_images(path, records, lines, decode_images, workers, progress)
    return records


def _check_images(path: Path, records: list[Record], lines: list[int], decode: bool, workers: int, progress: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    def check(i: int) -> DataError | None:
        try:
            check_image(records[i], f"{path}:{lines[i]}", decode)
        except DataError as err:
            return err
        return None

    bar = tqdm(total=len(records), desc="images", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for err in pool.map(check, range(len(records))):  # in order: the first failing line wins
            bar.update()
            if err is not None:
                pool.shutdown(cancel_futures=True)
                bar.close()
                raise err
    bar.close()


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
    """The record's image as an RGB `PIL.Image.Image` (decoded; size `width` x `height`). A file that
    does not decode raises `DataError` naming it."""
    from PIL import Image

    try:
        with Image.open(record.image_path) as im:
            return im.convert("RGB")
    except IMAGE_ERRORS as err:
        raise DataError(f"{record.image_path}: image {record.image_id!r} does not decode: {err}") from None
