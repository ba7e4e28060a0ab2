"""`vlmdet parse RAW.jsonl`: parse health (and, with `--gt`, detection metrics) of raw model answers.

RAW.jsonl holds one line per image: `{"image_id": "...", "text": "<the model's raw answer>"}`
(`image_id` a non-empty string, unique; `text` a string, possibly empty). Each text goes through the
strict parser (`parse.parse_prediction`, `--field-order`), and the per-sample results are
aggregated by `evaluate.health.ParseHealth` (drop histogram, truncation/failure rates, ...) and
`slots.leak_metrics` over `slots.text_slots` (coord_slots, coord_slot_leak_rate, leak/<kind>: every
`bbox_2d` element of every lexically complete record is one coordinate slot; raw text has no token
ids and no probabilities, so there is no coord_vocab_mass_gen here).

With `--gt GT.jsonl` (the data contract of docs/DATA.md; image files are NOT needed or opened), each
valid object's bins are mapped to pixels with its GT image's size (`coords.bins_to_pixel_box`) and
`evaluate.detection.detection_metrics` adds COCO AP/AR and P/R/F1 with constant scores
(`score_source: "constant"`). Every RAW image_id must be in GT; GT images without a RAW line count
as images with an empty answer (reported as `images_without_answer`).

Output: a readable table on stdout; with `--out FILE` also the flat JSON object of named floats (plus
`score_source` with `--gt`), written atomically to FILE; with `--out -` that JSON on stdout instead of the
table. Nothing is written next to RAW.jsonl.

`--format qwen3|qwen25` reads a stock model's grounding answers instead (answer_format.py: digits,
optional ```json fence, `label` or `desc`), under the same strict rules and drop reasons; a `qwen25`
line may give `input_width` / `input_height`, the size of the image the model saw (default: its GT size).
Bad input files raise `DataError` (`file:line: rule`, exit 2); model answers never do.

Both files are streamed: GT goes into an `evaluate.detection.DetectionSet` (flat arrays), each RAW line
is parsed and reduced to running counts (`evaluate.health.ParseHealth`, slot kinds) and its objects'
pixel boxes, and its text is dropped; memory grows with the number of objects, not with the text.
The first broken line (GT first, then RAW) stops the run.
"""

from __future__ import annotations

import argparse
import difflib
import json
from array import array
from collections import Counter
from pathlib import Path
from typing import Iterator, Mapping

from vlmdet.answer_format import get_format
from vlmdet.console import is_count
from vlmdet.data.records import validate_record
from vlmdet.errors import DataError
from vlmdet.evaluate.detection import DetectionSet, set_metrics
from vlmdet.evaluate.health import ParseHealth
from vlmdet.format import FIELD_ORDERS
from vlmdet.io import iter_jsonl, atomic_write_json
from vlmdet.slots import leak_metrics, text_slots


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("raw", type=Path, help='JSONL of {"image_id": str, "text": str}, one line per image')
    parser.add_argument("--field-order", choices=FIELD_ORDERS, default="desc_first",
                        help="field order the model was trained to write (default: desc_first)")
    parser.add_argument("--format", dest="answer_format", choices=("coordjson", "qwen3", "qwen25"), default="coordjson",
                        help="answer format of the texts (answer_format.py): coordjson (default), qwen3 (0..1000 "
                             "relative digits), qwen25 (pixels of the image the model saw: input_width/input_height "
                             "on the line, default the GT size)")
    parser.add_argument("--gt", type=Path, default=None,
                        help="GT JSONL (see docs/DATA.md): adds COCO AP/AR and P/R/F1 with constant scores")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="also write the metrics as JSON to FILE ('-': the JSON on stdout instead of the table)")


def input_size(row: dict, where: str) -> tuple[int, int] | None:
    """(input_width, input_height) of a line (the size of the image the model saw, for qwen25), or
    None when the line does not give them; DataError `file:line: rule` when they are not 2 positive ints."""
    w, h = row.get("input_width"), row.get("input_height")
    if w is None and h is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        raise DataError(f"{where}: 'input_width' and 'input_height' must both be positive integers, got {w!r}, {h!r}")
    return (w, h)


def read_ground_truth(path: Path) -> DetectionSet:
    """The GT JSONL (docs/DATA.md rules, image files not opened) streamed into a `DetectionSet`;
    DataError `file:line: rule` at the first broken line or repeated image_id."""
    ds = DetectionSet()
    lines = array("i")
    for lineno, obj in iter_jsonl(path):
        rec = validate_record(obj, f"{path}:{lineno}", path.parent, check_images=False)
        first = ds.index.get(rec.image_id)
        if first is not None:
            raise DataError(f"{path}:{lineno}: duplicate image_id {rec.image_id!r} (first on line {lines[first]})")
        ds.add_image(rec.image_id, rec.width, rec.height, ((o.desc, o.bbox) for o in rec.objects))
        lines.append(lineno)
    return ds


class LineIds:
    """The join of a predictions file with the GT: each line's `image_id` must be a GT image (when
    there is a GT; else the rule `unknown.format(image_id)`, plus a "did you mean") and appear at most
    once. `check(image_id, where, lineno)` returns the GT image index (None without GT) or raises
    `DataError("where: rule")`."""

    def __init__(self, ds: DetectionSet | None, unknown: str = "image_id {!r} is not in the GT file") -> None:
        self.ds, self.unknown = ds, unknown
        self.first = array("i", bytes(4 * len(ds.image_ids))) if ds is not None else None  # line per GT image
        self.seen: dict[str, int] = {}  # without GT: image_id -> line

    def check(self, image_id: str, where: str, lineno: int) -> int | None:
        if self.ds is None:
            if image_id in self.seen:
                raise DataError(f"{where}: duplicate image_id {image_id!r} (first on line {self.seen[image_id]})")
            self.seen[image_id] = lineno
            return None
        i = self.ds.index.get(image_id)
        if i is None:
            close = difflib.get_close_matches(image_id, self.ds.index, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{where}: {self.unknown.format(image_id)}{hint}")
        if self.first[i]:
            raise DataError(f"{where}: duplicate image_id {image_id!r} (first on line {self.first[i]})")
        self.first[i] = lineno
        return i


def iter_raw(path: Path, ids: LineIds) -> Iterator[tuple[int | None, str, tuple[int, int] | None]]:
    """`(GT image index or None, text, input size or None)` per RAW line, streamed; DataError
    `file:line: rule` on a broken line (see the module docstring and `LineIds`)."""
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        size = input_size(obj, where)
        image_id, text = obj.get("image_id"), obj.get("text")
        if not isinstance(image_id, str) or not image_id:
            raise DataError(f"{where}: 'image_id' must be a non-empty string, got {image_id!r}")
        if not isinstance(text, str):
            raise DataError(f"{where}: 'text' must be a string (the raw answer), got {type(text).__name__}")
        yield ids.check(image_id, where, lineno), text, size


def format_metrics(metrics: Mapping[str, float | str], title: str = "") -> str:
    """A two-column text table of `metrics` (name, value) for the terminal; counts (`console.is_count`)
    print as integers, other floats with 4 decimals."""

    width = max((len(k) for k in metrics), default=0)
    lines = [title] if title else []
    for k, v in metrics.items():
        if isinstance(v, float) and v.is_integer() and is_count(k):
            text = str(int(v))
        elif isinstance(v, float):
            text = f"{v:.4f}"
        else:
            text = str(v)
        lines.append(f"  {k:<{width}}  {text}")
    return "\n".join(lines)


def drop_histogram(metrics: dict) -> str:
    """Drop reasons as a text bar chart (reason, count, bar of `#` scaled to the largest count)."""
    drops = {k[len("drop/"):]: int(v) for k, v in metrics.items() if k.startswith("drop/")}
    top = max(drops.values(), default=0)
    width = max(len(r) for r in drops)
    lines = ["drop histogram"]
    for reason, count in drops.items():
        bar = "#" * (round(30 * count / top) if top else 0)
        lines.append(f"  {reason:<{width}}  {count:>6}  {bar}".rstrip())
    return "\n".join(lines)


def read_answers(path: Path, ds: DetectionSet | None, answer_format: str = "coordjson",
                 field_order: str = "desc_first", gt_name: str = "the GT file") -> tuple[ParseHealth, Counter]:
    """Stream RAW: parse each text, count it in a `ParseHealth` and (CoordJSON) its coordinate slot
    kinds, and add its objects as unscored pixel-box predictions of its GT image to `ds` (when given);
    the text is then dropped. Returns `(health, slot kind counts)`."""
    fmt = get_format(answer_format)
    health, kinds = ParseHealth(), Counter()
    for image, text, size in iter_raw(path, LineIds(ds, f"image_id {{!r}} is not in {gt_name}")):
        if size is None and image is not None:
            size = ds.size(image)
        res = fmt.parse(text, field_order, size)
        health.add(res)
        if answer_format == "coordjson":  # coordinate slots are a CoordJSON notion
            kinds.update(sl.kind for sl in text_slots(text, res))
        if image is not None:
            w, h = ds.size(image)
            ds.add_predictions(image, [(o.desc, fmt.to_pixels(o, w, h, size), None) for o in res.objects])
    return health, kinds


def run(args: argparse.Namespace) -> int:
    ds = read_ground_truth(args.gt) if args.gt is not None else None
    health, kinds = read_answers(args.raw, ds, args.answer_format, args.field_order, str(args.gt))
    metrics: dict = dict(health.metrics())
    if args.answer_format == "coordjson":
        metrics.update(leak_metrics(kinds.elements()))
    report = [format_metrics({k: v for k, v in metrics.items() if not k.startswith("drop/")},
                             f"parse health of {health.samples} answers ({args.raw})"), drop_histogram(metrics)]

    if ds is not None:
        det = set_metrics(ds, score_source="constant")
        det["images_without_answer"] = float(len(ds.image_ids) - ds.answered)
        report.append(format_metrics(det, f"detection vs {args.gt} (constant scores)"))
        metrics.update(det)

    if args.out == "-":
        print(json.dumps(metrics, indent=2))
        return 0
    print("\n\n".join(report))
    if args.out is not None:
        atomic_write_json(Path(args.out), metrics)
        print(f"\nwrote {args.out}")
    return 0
