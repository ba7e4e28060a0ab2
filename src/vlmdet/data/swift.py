"""ms-swift / LLaMA-Factory grounding JSONL -> the vlmdet record contract (`vlmdet data swift IN OUT`).

Input: one JSON object per line, the chat-style grounding data these trainers read:

    {"messages": [{"role": "user", "content": "<image>Find every <ref-object>"},
                  {"role": "assistant", "content": "..."}],
     "images": ["imgs/cat.png"],
     "objects": {"ref": ["cat", "dog"], "bbox": [[90.9, 160.8, 135, 212.8], [10, 20, 50, 60]],
                 "bbox_type": "real"}}

- `images`: exactly one image path (a list of one string, or a string), relative to the folder of IN
  (absolute paths are used as they are). The file is opened for its size.
- `objects` (ms-swift's grounding field): `ref` names the boxes of `bbox` one to one (same length);
  `bbox` holds [x1, y1, x2, y2] boxes; `bbox_type` says their unit, as in ms-swift: `real` (the
  default: pixels of the image file), `norm1000` (0..1000 relative, Qwen2-VL / Qwen3-VL style) or
  `norm1` (0..1 relative). `messages` are not read when `objects` is present (the boxes are rendered
  into the text by the trainer; vlmdet renders its own answer).
- A line without `objects` (LLaMA-Factory's sharegpt grounding data, whose boxes live only in the
  assistant's text) is read with `--text-format qwen25|qwen3`: the last assistant message is parsed with
  that answer format (answer_format.py; qwen25 = pixels of the image file, qwen3 = 0..1000 relative)
  and must parse cleanly (no drop, not truncated).
Each image is resized like `vlmdet data coco` does (`coco.smart_resize`: sides multiples of 32 under
`--max-pixels`), boxes are scaled with it and clipped to the image; a box with no area after clipping
is an error, not a silent skip. `image_id` is `<split>_<line number>`.

Output: `OUT/<split>.jsonl` (split: `--split`, default the stem of IN) and resized images under
`OUT/images/`; files are written atomically, and nothing is written when any line is bad.
Bad input raises `DataError` `IN:line: rule`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlmdet.answer_format import get_format
from vlmdet.data.coco import FACTOR, _image_size, _resave, smart_resize
from vlmdet.errors import DataError, UsageError
from vlmdet.io import atomic_write_jsonl, iter_jsonl

BBOX_TYPES = ("real", "norm1000", "norm1")
TEXT_FORMATS = ("qwen25", "qwen3")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _image_path(row: dict, where: str, root: Path) -> Path:
    images = row.get("images")
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str) or not images[0]:
        raise DataError(f"{where}: 'images' must hold exactly one image path, got {images!r}")
    path = Path(images[0])
    return path if path.is_absolute() else root / path


def _objects_field(obj, where: str, size: tuple[int, int]) -> list[tuple[str, list[float]]]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: 'objects' must be a mapping {{\"ref\": [...], \"bbox\": [...]}}, got {type(obj).__name__}")
    refs, boxes, kind = obj.get("ref"), obj.get("bbox"), obj.get("bbox_type", "real")
    if kind not in BBOX_TYPES:
        raise DataError(f"{where}: objects.bbox_type must be one of {', '.join(BBOX_TYPES)}, got {kind!r}")
    if not isinstance(refs, list) or not isinstance(boxes, list):
        raise DataError(f"{where}: objects.ref and objects.bbox must be lists")
    if len(refs) != len(boxes):
        raise DataError(f"{where}: objects.ref has {len(refs)} names but objects.bbox {len(boxes)} boxes "
                        "(vlmdet needs one name per box)")
    w, h = size
    scale = {"real": (1.0, 1.0), "norm1000": (w / 1000, h / 1000), "norm1": (float(w), float(h))}[kind]
    out = []
    for i, (ref, box) in enumerate(zip(refs, boxes)):
        if not isinstance(ref, str) or not ref.strip():
            raise DataError(f"{where}: objects.ref[{i}] must be a non-empty string, got {ref!r}")
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
            raise DataError(f"{where}: objects.bbox[{i}] must be 4 numbers [x1, y1, x2, y2], got {box!r}")
        out.append((ref, [box[0] * scale[0], box[1] * scale[1], box[2] * scale[0], box[3] * scale[1]]))
    return out


def _text_objects(row: dict, where: str, text_format: str, size) -> list[tuple[str, list[float]]]:
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise DataError(f"{where}: no 'objects' and no 'messages' list")
    answers = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not answers or not isinstance(answers[-1], str):
        raise DataError(f"{where}: no 'objects' and no assistant message to read boxes from")
    fmt = get_format(text_format)
    res = fmt.parse(answers[-1], "desc_first", size)
    if res.failed or res.truncated or res.malformed_container or res.dropped:
        why = ("no JSON list" if res.failed else "truncated" if res.truncated else "broken separator"
               if res.malformed_container else f"record {res.dropped[0].index}: {res.dropped[0].reason}")
        raise DataError(f"{where}: the assistant answer does not parse as {text_format}: {why}")
    return [(o.desc, list(fmt.to_pixels(o, size[0], size[1], size))) for o in res.objects]


def convert_swift(src: str | os.PathLike, out_dir: str | os.PathLike, text_format: str | None = None,
                  max_pixels: int | None = None, split: str | None = None) -> dict:
    """Convert one grounding JSONL file (module docstring); returns counts and the output name."""
    src, out_dir = Path(src), Path(out_dir)
    if text_format is not None and text_format not in TEXT_FORMATS:
        raise UsageError(f"--text-format must be one of {', '.join(TEXT_FORMATS)}, got {text_format!r}")
    if max_pixels is not None and max_pixels < FACTOR * FACTOR:
        raise UsageError(f"--max-pixels must be >= {FACTOR * FACTOR}, got {max_pixels}")
    split = split or src.stem
    root = src.parent
    rows, resaves = [], []
    counts = {"images": 0, "objects": 0, "resized": 0, "from_text": 0, "clipped": 0}
    for lineno, row in iter_jsonl(src):
        where = f"{src}:{lineno}"
        path = _image_path(row, where, root)
        try:
            W, H = _image_size(path)
        except (OSError, ValueError) as err:
            raise DataError(f"{where}: unreadable image {str(path)!r}: {err}") from None
        if "objects" in row:
            objects = _objects_field(row["objects"], where, (W, H))
        elif text_format is not None:
            objects = _text_objects(row, where, text_format, (W, H))
            counts["from_text"] += 1
        else:
            raise DataError(f"{where}: no 'objects' field; boxes written only in the assistant text need "
                            "--text-format qwen25 (pixels) or qwen3 (0..1000)")
        W2, H2 = smart_resize(W, H, max_pixels)
        sx, sy = W2 / W, H2 / H
        kept = []
        for i, (desc, (x1, y1, x2, y2)) in enumerate(objects):
            box = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
            clipped = [min(max(box[0], 0.0), W2), min(max(box[1], 0.0), H2),
                       min(max(box[2], 0.0), W2), min(max(box[3], 0.0), H2)]
            if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
                raise DataError(f"{where}: box {i} {[x1, y1, x2, y2]} has no area inside the {W}x{H} image")
            counts["clipped"] += clipped != box
            kept.append({"desc": desc, "bbox_2d": clipped})
        if (W2, H2) != (W, H):
            image = f"images/{split}_{lineno:06d}{path.suffix.lower() or '.png'}"
            resaves.append((path, out_dir / image, (W2, H2)))
            counts["resized"] += 1
        else:
            image = Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
        counts["images"] += 1
        counts["objects"] += len(kept)
        rows.append({"image_id": f"{split}_{lineno}", "image": image, "width": W2, "height": H2, "objects": kept})
    if not rows:
        raise DataError(f"{src}: no records")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, dst, size in resaves:  # only once every line was checked: nothing half-written on bad input
        _resave(path, dst, size)
    atomic_write_jsonl(out_dir / f"{split}.jsonl", rows)
    return {"jsonl": f"{split}.jsonl", "counts": counts}
