"""`vlmdet eval-preds --gt GT.jsonl --pred PRED.jsonl --out metrics.json`: score any detector.

PRED.jsonl holds one line per image:
`{"image_id": "...", "objects": [{"desc": "...", "bbox_2d": [x1, y1, x2, y2], "score": 0.9}, ...]}`
with pixel boxes in the GT image's size and an optional finite `score` (without scores the AP uses a
constant 1.0 and `score_source` says `"constant"`). Unknown extra keys are ignored.

The join is strict and by `image_id` only: every PRED line must name a GT image, at most once. GT
images without a PRED line have no predictions (their objects are misses). GT is read with the
docs/DATA.md rules without opening the image files (`offline_parse.read_ground_truth`). Both files
are streamed into an `evaluate.detection.DetectionSet` (flat arrays): memory grows with the number of
objects, with no per-image Python objects.

Each of these raises `DataError("PRED:line: rule")` (exit 2): a malformed line, a missing or
non-string `image_id`, an unknown or duplicate `image_id`, `objects` not a list, an object without a
non-empty string `desc`, a `bbox_2d` that is not 4 finite numbers, a box outside the image or
degenerate (rule: `0 <= x1 < x2 <= W` and `0 <= y1 < y2 <= H`, the GT rule), a non-numeric score.

`--format qwen3|qwen25` reads the geometry of a stock model's grounding answer (answer_format.py):
`qwen3` boxes are 0..1000 relative (pixel = v / 1000 * W), `qwen25` boxes are pixels of the image the
model saw, given per line as `input_width` / `input_height` (default: the GT size), scaled to the GT
size; `label` is accepted in place of `desc`. The checks above then apply to the converted pixel box.

Output: `evaluate.detection.detection_metrics` (COCO AP/AR, class-aware and class-agnostic
P/R/F1 at `--f1-iou`, counts, `score_source`) as a flat JSON object, written atomically, and a table.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from vlmdet.answer_format import DigitObject, get_format
from vlmdet.errors import DataError
from vlmdet.evaluate.detection import DetectionSet, set_metrics
from vlmdet.evaluate.offline_parse import LineIds, format_metrics, input_size, read_ground_truth
from vlmdet.io import atomic_write_json, iter_jsonl
from vlmdet.options import bounded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", type=Path, required=True, help="GT JSONL (see docs/DATA.md); image files are not opened")
    parser.add_argument("--pred", type=Path, required=True,
                        help='JSONL of {"image_id", "objects": [{"desc", "bbox_2d" (pixels), "score"?}]}')
    parser.add_argument("--out", type=Path, default=None,
                        help="metrics JSON path (default: <PRED stem>.metrics.json next to PRED)")
    parser.add_argument("--f1-iou", type=bounded(float, lambda v: 0 < v <= 1, "in (0, 1]"), default=0.5, help="IoU threshold of the Hungarian F1 (default 0.5)")
    parser.add_argument("--format", dest="answer_format", choices=("coordjson", "qwen3", "qwen25"), default="coordjson",
                        help="unit of bbox_2d: coordjson = pixels of the GT image (what `vlmdet eval` writes; default), "
                             "qwen3 = 0..1000 relative, qwen25 = pixels of the image the model saw "
                             "(input_width/input_height on the line, default the GT size); qwen formats accept "
                             "'label' for 'desc'")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_predictions(path: Path, ds: DetectionSet, answer_format: str = "coordjson") -> None:
    """Stream PRED into `ds` (the GT set): each line's objects become predictions of its GT image,
    pixel boxes of the GT image (see the module docstring); `answer_format` says the unit of `bbox_2d`
    (see `--format`)."""
    digits = answer_format != "coordjson"
    ids = LineIds(ds, "unknown image_id {!r}: not in the GT file")
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        image_id = row.get("image_id")
        if not isinstance(image_id, str) or not image_id:
            raise DataError(f"{where}: 'image_id' must be a non-empty string, got {image_id!r}")
        image = ids.check(image_id, where, lineno)
        width, height = ds.size(image)
        objects = row.get("objects")
        if not isinstance(objects, list):
            raise DataError(f"{where}: 'objects' must be a list, got {type(objects).__name__}")
        size = input_size(row, where) if answer_format == "qwen25" else None
        out = []
        for i, o in enumerate(objects):
            at = f"{where}: objects[{i}]"
            if not isinstance(o, dict):
                raise DataError(f"{at} must be an object, got {type(o).__name__}")
            name = "label" if digits and "desc" not in o else "desc"
            desc, box = o.get(name), o.get("bbox_2d")
            if not isinstance(desc, str) or not desc.strip():
                raise DataError(f"{at}: '{name}' must be a non-empty string, got {desc!r}")
            if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
                raise DataError(f"{at}: 'bbox_2d' must be 4 finite numbers [x1, y1, x2, y2], got {box!r}")
            if digits:  # to pixels of the GT image; the bounds below then read in that unit
                box = list(get_format(answer_format).to_pixels(DigitObject(desc, tuple(float(v) for v in box), i, (0, 0)),
                                                               width, height, size))
            x1, y1, x2, y2 = box
            if x2 <= x1 or y2 <= y1:
                raise DataError(f"{at}: degenerate box {box} (need x1 < x2 and y1 < y2)")
            if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                raise DataError(f"{at}: box {box} outside the {width}x{height} image "
                                f"(need 0 <= x1, 0 <= y1, x2 <= {width}, y2 <= {height})")
            score = o.get("score")
            if "score" in o and not _number(score):
                raise DataError(f"{at}: 'score' must be a finite number, got {score!r}")
            out.append((desc, box, None if score is None else float(score)))
        ds.add_predictions(image, out)


def run(args: argparse.Namespace) -> int:
    ds = read_ground_truth(args.gt)
    read_predictions(args.pred, ds, args.answer_format)
    metrics = set_metrics(ds, score_source="given", f1_iou=args.f1_iou)
    out = args.out if args.out is not None else args.pred.with_name(args.pred.stem + ".metrics.json")
    atomic_write_json(out, metrics)
    print(format_metrics(metrics, f"{args.pred} vs {args.gt} ({len(ds.image_ids)} images, F1 at IoU {args.f1_iou})"))
    print(f"\nwrote {out}")
    return 0
