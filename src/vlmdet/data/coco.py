"""COCO instances JSON -> the vlmdet record contract (see docs/DATA.md). LVIS files have the same shape.

`convert_coco(instances_json, images_dir, out_dir, max_objects, max_pixels)` writes
`out_dir/<split>.jsonl` (split = the instances file name without `instances_`, e.g. `val2017`),
resized images under `out_dir/images/`, and `out_dir/manifest.json` (`{"generator", "splits":
{split: entry}}`: several splits converted into one folder share it); it returns this split's entry
(source, jsonl, max_objects, max_pixels, resize_rule, counts, categories).

Rules, in order, per image (images in ascending COCO id; annotations in ascending annotation id):
- `image_id` = str(COCO image id); `desc` = the category name; `bbox` xywh -> xyxy (floats).
- `iscrowd == 1` annotations are skipped (counted `crowd_skipped`).
- boxes reaching outside the image are clipped to [0, W] x [0, H] (counted `clipped`); boxes with
  no area (before or after clipping) are skipped (counted `degenerate_skipped`).
- images left with no objects are kept as records with `"objects": []` (counted `empty_images`): an
  image with nothing to find is a valid (and useful) detection example.
- images with more than `max_objects` objects are dropped whole (counted `dropped_max_objects`);
  object lists are never truncated.
- resize (`RESIZE_RULE`, Qwen-style, 1deddf9 flavour): each side is rounded to the nearest multiple
  of 32 (at least 32); if the area is over `max_pixels`, both sides are scaled by
  beta = sqrt(H*W / max_pixels) and floored to multiples of 32. Images are never scaled up to fill
  the budget. Boxes are scaled by W'/W and H'/H and clamped to [0, W'] x [0, H']. A resized image is
  re-saved (PIL LANCZOS) to `out_dir/images/<file_name>`; an image whose size does not change is
  referenced in place (its path relative to `out_dir`).
Input faults fail with `DataError` before anything is written: a file that is not UTF-8 JSON within
the `io.loads_untrusted` limits, a top level that is not an object, ids that are not all ints or all
strings, a width/height that is not an int >= 1, a category name that is not a non-empty string
(the record contract needs one), a `file_name` that leaves `--images` (absolute, `..`, or a symlink
out), a missing or unreadable image, an image whose file size differs from the JSON's width/height,
an annotation naming an unknown category or image. Resized images are written only after every
image has been checked; if writing one fails, the images written by this call are deleted.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from vlmdet.console import progress as show_progress
from vlmdet.errors import DataError, UsageError
from vlmdet.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, read_untrusted_json

FACTOR = 32
RESIZE_RULE = (
    "qwen_smart_resize_v1: side' = max(32, round(side/32)*32); if W'*H' > max_pixels: "
    "beta = sqrt(W*H/max_pixels), side' = max(32, floor(side/beta/32)*32); never scaled up to fill the "
    "budget; boxes scaled by W'/W, H'/H and clamped to [0, W'] x [0, H']"
)


def smart_resize(width: int, height: int, max_pixels: int | None = None, factor: int = FACTOR) -> tuple[int, int]:
    """Target (width, height): multiples of `factor` under the `max_pixels` budget (rule above)."""
    w = max(factor, round(width / factor) * factor)
    h = max(factor, round(height / factor) * factor)
    if max_pixels is not None and w * h > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w = max(factor, math.floor(width / beta / factor) * factor)
        h = max(factor, math.floor(height / beta / factor) * factor)
    return w, h


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _resave(src: Path, dst: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    with Image.open(src) as im:
        out = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    fmt = "PNG" if dst.suffix.lower() == ".png" else "JPEG"
    out.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    atomic_write_bytes(dst, buf.getvalue(), fsync=False)


def confined(root: Path, name, where: str) -> Path:
    """`root / name` for a relative `name` that stays inside `root` (no absolute path, no `..`, no
    symlink leading out); otherwise `DataError("<where>: ...")`."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: must be a non-empty string (a path), got {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise DataError(f"{where}: {name!r} must be a path inside the images folder (no absolute path, no '..')")
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{where}: {name!r} leads out of the images folder {root} (a symlink)")
    return path


def _check_schema(path: Path, data) -> None:
    """The parts of the COCO schema the converter reads (module docstring); raises `DataError`."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO instances file (the top level is a {type(data).__name__}, not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: not a COCO instances file (no {key!r} list)")
    required = {"categories": ("id", "name"), "images": ("id", "file_name", "width", "height"),
                "annotations": ("id", "image_id", "category_id", "bbox")}
    for key, fields in required.items():
        for i, entry in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise DataError(f"{path}: {key}[{i}]: missing {', '.join(missing)}")
        kinds = {type(e["id"]) for e in data[key]}
        if not kinds <= {int} and not kinds <= {str}:
            raise DataError(f"{path}: {key}: ids must be all ints or all strings, got {sorted(k.__name__ for k in kinds)}")
    for i, c in enumerate(data["categories"]):
        if not isinstance(c["name"], str) or not c["name"].strip():
            raise DataError(f"{path}: categories[{i}]: 'name' must be a non-empty string, got {c['name']!r}")
    for i, im in enumerate(data["images"]):
        for f in ("width", "height"):
            v = im[f]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{path}: images[{i}]: {f!r} must be an int >= 1, got {v!r}")
    for a in data["annotations"]:
        b = a["bbox"]
        if not (isinstance(b, list) and len(b) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)):
            raise DataError(f"{path}: annotation {a['id']}: bbox must be 4 finite numbers [x, y, w, h], got {b!r}")


def convert_coco(
    instances_json: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_objects: int | None = None,
    max_pixels: int | None = None,
    split: str | None = None,
    progress: bool = True,
) -> dict:
    """Convert one COCO-format instances file (see the module docstring for every rule)."""

    instances_json, images_dir, out_dir = Path(instances_json), Path(images_dir), Path(out_dir)
    if max_objects is not None and max_objects < 1:
        raise UsageError(f"max_objects must be >= 1, got {max_objects}")
    if max_pixels is not None and max_pixels < FACTOR * FACTOR:
        raise UsageError(f"max_pixels must be >= {FACTOR * FACTOR}, got {max_pixels}")
    data = read_untrusted_json(instances_json)
    _check_schema(instances_json, data)
    split = split or instances_json.stem.removeprefix("instances_")
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = sorted(data["images"], key=lambda im: im["id"])
    known = {im["id"] for im in images}
    anns = defaultdict(list)
    for a in sorted(data["annotations"], key=lambda a: a["id"]):
        if a["image_id"] not in known:
            raise DataError(f"{instances_json}: annotation {a['id']}: unknown image_id {a['image_id']}")
        if a["category_id"] not in names:
            raise DataError(f"{instances_json}: annotation {a['id']}: unknown category_id {a['category_id']}")
        anns[a["image_id"]].append(a)

    sources = {im["id"]: confined(images_dir, im["file_name"], f"{instances_json}: image {im['id']}: file_name")
               for im in images}
    counts = dict.fromkeys(
        ("images_in", "images_out", "objects_out", "crowd_skipped", "degenerate_skipped", "clipped",
         "empty_images", "dropped_max_objects", "resized"), 0)
    rows, resaves = [], []
    for im in show_progress(images, f"coco {split}", enabled=progress, unit="image", leave=True):
        counts["images_in"] += 1
        W, H = int(im["width"]), int(im["height"])
        src = sources[im["id"]]
        try:
            size = _image_size(src)
        except (OSError, ValueError) as err:
            raise DataError(f"{instances_json}: image {im['id']}: unreadable image {str(src)!r}: {err}") from None
        if size != (W, H):
            raise DataError(f"{instances_json}: image {im['id']}: file {src} is {size[0]}x{size[1]}, JSON says {W}x{H}")
        objects = []
        for a in anns[im["id"]]:
            if a.get("iscrowd", 0):
                counts["crowd_skipped"] += 1
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            box = [x, y, x + w, y + h]
            clipped = [min(max(box[0], 0.0), W), min(max(box[1], 0.0), H), min(max(box[2], 0.0), W), min(max(box[3], 0.0), H)]
            if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
                counts["degenerate_skipped"] += 1
                continue
            counts["clipped"] += clipped != box
            objects.append((names[a["category_id"]], clipped))
        if max_objects is not None and len(objects) > max_objects:
            counts["dropped_max_objects"] += 1
            continue
        W2, H2 = smart_resize(W, H, max_pixels)
        if (W2, H2) != (W, H):
            counts["resized"] += 1
            image = f"images/{Path(im['file_name']).as_posix()}"
            resaves.append((src, out_dir / image, (W2, H2)))
            sx, sy = W2 / W, H2 / H
            objects = [(d, [min(b[0] * sx, W2), min(b[1] * sy, H2), min(b[2] * sx, W2), min(b[3] * sy, H2)]) for d, b in objects]
        else:
            image = Path(os.path.relpath(src.resolve(), out_dir.resolve())).as_posix()
        counts["empty_images"] += not objects
        counts["images_out"] += 1
        counts["objects_out"] += len(objects)
        rows.append({"image_id": str(im["id"]), "image": image, "width": W2, "height": H2,
                     "objects": [{"desc": d, "bbox_2d": b} for d, b in objects]})

    written = []
    try:
        for src, dst, size in show_progress(resaves, f"resize {split}", enabled=progress and bool(resaves), unit="image"):
            _resave(src, dst, size)
            written.append(dst)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out_dir / f"{split}.jsonl", rows)
    entry = {
        "source": str(instances_json),
        "images_dir": str(images_dir),
        "jsonl": f"{split}.jsonl",
        "max_objects": max_objects,
        "max_pixels": max_pixels,
        "resize_rule": RESIZE_RULE,
        "empty_images_policy": "kept as records with no objects",
        "counts": counts,
        "categories": [names[k] for k in sorted(names)],
    }
    manifest_path = out_dir / "manifest.json"
    manifest = {"generator": "vlmdet.data.coco", "splits": {}}
    if manifest_path.exists():  # several splits converted into one folder share the manifest
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("generator") == manifest["generator"] and isinstance(old.get("splits"), dict):
            manifest = old
    manifest["splits"][split] = entry
    atomic_write_json(manifest_path, manifest)
    return entry
