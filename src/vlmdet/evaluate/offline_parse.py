"""`vlmdet parse RAW.jsonl`: parse health (and, with `--gt`, detection metrics) of raw model answers.

RAW.jsonl holds one line per image: `{"image_id": "...", "text": "<the model's raw answer>"}`
(`image_id` a non-empty string, unique; `text` a string, possibly empty). Each text goes through the
strict parser (`parse.parse_prediction`, `--field-order`), and the per-sample results are
aggregated by `evaluate.health.parse_health` (drop histogram, truncation/failure rates, ...) and
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
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Mapping

from vlmdet.answer_format import get_format
from vlmdet.console import is_count
from vlmdet.data.records import load_records
from vlmdet.errors import DataError
from vlmdet.evaluate.detection import detection_metrics
from vlmdet.evaluate.health import parse_health
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


def read_raw(path: Path, with_size: bool = False) -> list[tuple]:
    """`(line, image_id, text)` per RAW line (+ the `input_size` or None with `with_size`); DataError
    `file:line: rule` on a broken line."""
    rows, seen = [], {}
    for lineno, obj in iter_jsonl(path):
        size = input_size(obj, f"{path}:{lineno}") if with_size else None
        image_id, text = obj.get("image_id"), obj.get("text")
        if not isinstance(image_id, str) or not image_id:
            raise DataError(f"{path}:{lineno}: 'image_id' must be a non-empty string, got {image_id!r}")
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: 'text' must be a string (the raw answer), got {type(text).__name__}")
        if image_id in seen:
            raise DataError(f"{path}:{lineno}: duplicate image_id {image_id!r} (first on line {seen[image_id]})")
        seen[image_id] = lineno
        rows.append((lineno, image_id, text, size) if with_size else (lineno, image_id, text))
    return rows


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


def run(args: argparse.Namespace) -> int:
    fmt = get_format(args.answer_format)
    rows = read_raw(args.raw, with_size=True)
    by_id = {}
    if args.gt is not None:
        records = load_records(args.gt, check_images=False)
        by_id = {r.image_id: r for r in records}
        for lineno, image_id, _, _ in rows:
            if image_id not in by_id:
                close = difflib.get_close_matches(image_id, by_id, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DataError(f"{args.raw}:{lineno}: image_id {image_id!r} is not in {args.gt}{hint}")
    sizes = [size if size is not None else (by_id[i].width, by_id[i].height) if i in by_id else None
             for _, i, _, size in rows]
    results = [fmt.parse(text, args.field_order, size) for (_, _, text, _), size in zip(rows, sizes)]
    metrics: dict = dict(parse_health(results))
    if args.answer_format == "coordjson":  # coordinate slots are a CoordJSON notion
        metrics.update(leak_metrics(sl.kind for (_, _, text, _), res in zip(rows, results)
                                    for sl in text_slots(text, res)))
    report = [format_metrics({k: v for k, v in metrics.items() if not k.startswith("drop/")},
                             f"parse health of {len(rows)} answers ({args.raw})"), drop_histogram(metrics)]

    if args.gt is not None:
        preds = {}
        for (_, image_id, _, _), size, res in zip(rows, sizes, results):
            rec = by_id[image_id]
            preds[image_id] = [{"desc": o.desc, "bbox_2d": list(fmt.to_pixels(o, rec.width, rec.height, size))}
                               for o in res.objects]
        det = detection_metrics(records, preds, score_source="constant")
        det["images_without_answer"] = float(len(records) - len(preds))
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
