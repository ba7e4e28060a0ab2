"""The embedded default data set: coloured shapes with multi-word class names ("red circle").

`make_synth(out_dir, ...)` writes, in the record contract of docs/DATA.md::

    out_dir/images/{train,val}_XXXXXX.png
    out_dir/train.jsonl, out_dir/val.jsonl     image paths relative to out_dir, unique image_ids
    out_dir/manifest.json                      parameters, counts, bin coverage

Images: `size` x `size` RGB (a multiple of 32), a grey background (per-image level) with mild
Gaussian noise, 1..`max_objects` shapes drawn anti-aliased at float positions (coverage from a signed
distance, pixel centres at integer coordinates), so boxes are continuous sub-pixel floats and
practically all 1000 coordinate bins occur (integer boxes on
128 px images cover only 129 bins, and unseen coord tokens derail generation).

Box convention: `[x1, y1, x2, y2]` is the exact extent of the shape in pixel coordinates (pixel i
covers [i - 0.5, i + 0.5]); every box lies inside [0, size - 1]. Shapes: circle (box = its bounding
square), square (axis-aligned), triangle (upright isosceles, apex at the top centre), diamond.
Overlap is bounded: a new box's intersection with every earlier box is at most `max_overlap` of the
smaller box's area (so no object hides inside another; drawn in order, later on top). An object
that finds no free place in 50 tries is left out (so an image may have fewer than drawn, never 0).
Objects are stored sorted by (y1, x1) of their bins (`format.sort_objects`).

Boxes are stored rounded to 4 decimals (1e-4 px). Deterministic: image i of a split is drawn from `numpy.random.default_rng([seed, split, i])`, so the
same arguments give the same bytes, and the train images do not depend on `n_val`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from vlmdet.console import progress as show_progress
from vlmdet.coords import NUM_BINS, pixel_box_to_bins
from vlmdet.errors import UsageError
from vlmdet.format import sort_objects
from vlmdet.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl

#: name -> RGB
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "magenta": (210, 60, 200),
    "cyan": (40, 200, 210),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

DEFAULT_COLOURS: tuple[str, ...] = ("red", "green", "blue")
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: The default classes ("<colour> <shape>"), colour-major.
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in DEFAULT_COLOURS for s in DEFAULT_SHAPES)

_SPLITS = {"train": 0, "val": 1}


def class_names(colours=DEFAULT_COLOURS, shapes=DEFAULT_SHAPES) -> tuple[str, ...]:
    return tuple(f"{c} {s}" for c in colours for s in shapes)


def overlap(a, b) -> float:
    """Intersection over the smaller box's area (1.0 when one box contains the other)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _sdf(shape: str, box, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Signed distance (approximate outside corners; negative inside) of `shape` filling `box`,
    at pixel centres `xs` [1, w] and `ys` [h, 1]."""
    x1, y1, x2, y2 = box
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    if shape == "circle":
        return np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) - hw
    if shape == "square":
        return np.maximum(np.abs(xs - cx) - hw, np.abs(ys - cy) - hh)
    # polygons: the max of the edge half-planes' distances, which bleeds past sharp corners, so it
    # is also cut by the box itself (keeps the drawn shape within half a pixel of its box)
    in_box = np.maximum(np.abs(xs - cx) - hw, np.abs(ys - cy) - hh)
    if shape == "diamond":
        return np.maximum((np.abs(xs - cx) * hh + np.abs(ys - cy) * hw - hw * hh) / np.hypot(hw, hh), in_box)
    if shape == "triangle":  # apex (cx, y1), base y2 from x1 to x2
        side = (np.abs(xs - cx) * (2 * hh) - hw * (ys - y1)) / np.hypot(2 * hh, hw)
        return np.maximum(side, in_box)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _draw(canvas: np.ndarray, shape: str, box, rgb: np.ndarray) -> None:
    """Alpha-blend `shape` (coverage = clip(0.5 - sdf, 0, 1)) into `canvas` [H, W, 3] float, in place."""
    h, w = canvas.shape[:2]
    c0, r0 = max(0, int(np.floor(box[0])) - 1), max(0, int(np.floor(box[1])) - 1)
    c1, r1 = min(w, int(np.ceil(box[2])) + 2), min(h, int(np.ceil(box[3])) + 2)
    xs = np.arange(c0, c1, dtype=np.float64)[None, :]
    ys = np.arange(r0, r1, dtype=np.float64)[:, None]
    alpha = np.clip(0.5 - _sdf(shape, box, xs, ys), 0.0, 1.0)[..., None]
    region = canvas[r0:r1, c0:c1]
    region *= 1.0 - alpha
    region += alpha * rgb


def _sample_image(rng: np.random.Generator, size: int, classes, max_objects, min_frac, max_frac, max_overlap, noise):
    """One image: (uint8 array [size, size, 3], list of (desc, box)). Boxes are float pixels."""
    n = int(rng.integers(1, max_objects + 1))
    objects: list[tuple[str, tuple[float, float, float, float]]] = []
    lim = size - 1.0
    for _ in range(n):
        for _attempt in range(50):  # rejection sampling for bounded overlap
            colour, shape = classes[int(rng.integers(len(classes)))]
            side = float(rng.uniform(min_frac, max_frac)) * size
            if shape in ("triangle", "diamond"):
                w, h = side, side * float(rng.uniform(0.8, 1.2))
            else:
                w = h = side
            x1, y1 = float(rng.uniform(0.0, lim - w)), float(rng.uniform(0.0, lim - h))
            box = (x1, y1, x1 + w, y1 + h)
            if all(overlap(box, b) <= max_overlap for _, b in objects):
                objects.append((f"{colour} {shape}", box))
                break
    level = float(rng.uniform(100.0, 160.0))
    canvas = np.full((size, size, 3), level, dtype=np.float64)
    for desc, box in objects:
        colour, shape = desc.split(" ", 1)
        rgb = np.asarray(COLOURS[colour], dtype=np.float64) + rng.uniform(-12.0, 12.0, size=3)
        _draw(canvas, shape, box, rgb)
    canvas += rng.normal(0.0, noise, size=(size, size, 1))  # luminance noise, same in R, G, B
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def bin_coverage(records: list[dict]) -> dict:
    """How many of the 1000 bins occur: `x` (x1 and x2), `y` (y1 and y2) and `overall` (any slot).
    `records` are contract dicts (pixel boxes)."""
    xs: set[int] = set()
    ys: set[int] = set()
    for r in records:
        for o in r["objects"]:
            b = pixel_box_to_bins(o["bbox_2d"], r["width"], r["height"])
            xs.update((b[0], b[2]))
            ys.update((b[1], b[3]))
    return {"x": len(xs), "y": len(ys), "overall": len(xs | ys), "of": NUM_BINS}


def make_synth(
    out_dir: str | os.PathLike,
    n_train: int = 2000,
    n_val: int = 100,
    seed: int = 0,
    size: int = 128,
    *,
    colours=DEFAULT_COLOURS,
    shapes=DEFAULT_SHAPES,
    max_objects: int = 4,
    min_frac: float = 0.125,
    max_frac: float = 0.5,
    max_overlap: float = 0.2,
    noise: float = 4.0,
    progress: bool = False,
) -> dict:
    """Write the synthetic data set into `out_dir` and return its manifest (also in manifest.json).

    `size`: image side in pixels (multiple of 32). Objects per image: uniform in 1..`max_objects`;
    class uniform over `colours` x `shapes`; side uniform in [`min_frac`, `max_frac`] x `size`;
    pairwise box overlap (intersection over the smaller box) <= `max_overlap`, so no object is
    more than that fraction covered by its box neighbours; `noise`: std of the background noise in grey levels.
    """

    if size < 32 or size % 32:
        raise UsageError(f"size must be a positive multiple of 32, got {size}")
    if not (0 < min_frac <= max_frac < 1):
        raise UsageError(f"need 0 < min_frac <= max_frac < 1, got {min_frac}, {max_frac}")
    if max_objects < 1:
        raise UsageError(f"max_objects must be >= 1, got {max_objects}")
    for c in colours:
        if c not in COLOURS:
            raise UsageError(f"unknown colour {c!r}; known: {', '.join(COLOURS)}")
    for s in shapes:
        if s not in SHAPES:
            raise UsageError(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    classes = [(c, s) for c in colours for s in shapes]
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts: dict = {}
    split_records: dict[str, list[dict]] = {}
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        per_class = {f"{c} {s}": 0 for c, s in classes}
        for i in show_progress(range(n), f"synth {split}", enabled=progress, unit="image"):
            rng = np.random.default_rng([seed, _SPLITS[split], i])
            pixels, objects = _sample_image(rng, size, classes, max_objects, min_frac, max_frac, max_overlap, noise)
            name = f"{split}_{i:06d}"
            image = f"images/{name}.png"
            atomic_write_bytes(out / image, _png_bytes(pixels), fsync=False)
            boxes = [tuple(round(v, 4) for v in box) for _, box in objects]  # as stored in the file
            keyed = [(desc, pixel_box_to_bins(box, size, size), box) for (desc, _), box in zip(objects, boxes)]
            ordered = sort_objects(keyed)  # reads (desc, bins) from the first two fields
            rows.append(
                {
                    "image_id": name,
                    "image": image,
                    "width": size,
                    "height": size,
                    "objects": [{"desc": d, "bbox_2d": list(box)} for d, _, box in ordered],
                }
            )
            for desc, _ in objects:
                per_class[desc] += 1
        atomic_write_jsonl(out / f"{split}.jsonl", rows)
        split_records[split] = rows
        counts[split] = {"images": n, "objects": sum(len(r["objects"]) for r in rows), "per_class": per_class}
    manifest = {
        "generator": "vlmdet.data.synth",
        "seed": seed,
        "size": size,
        "class_names": [f"{c} {s}" for c, s in classes],
        "params": {
            "max_objects": max_objects,
            "min_frac": min_frac,
            "max_frac": max_frac,
            "max_overlap": max_overlap,
            "noise": noise,
        },
        "box_convention": "pixel floats [x1, y1, x2, y2], pixel i covers [i-0.5, i+0.5], boxes inside [0, size-1]",
        "counts": counts,
        "bin_coverage": {split: bin_coverage(rows) for split, rows in split_records.items()},
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
