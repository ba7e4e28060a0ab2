"""Monitor dumps: the raw rollouts behind the eval metrics, failures first (docs/EVALUATION.md).

`write_dump(path, step, samples, n_samples, max_text_chars, draw_images)` writes

    monitor_dumps/step_XXXXXX.json    {"step", "kind": "eval_rollout", "n_total", "samples": [...]}
    monitor_dumps/step_XXXXXX/<image_id>.png   one per dumped sample (when `draw_images`)

Each sample is a dict in the ARCHITECTURE.md format, built by `evaluate/runner.py`:

    {"image_id", "image" (absolute path), "width", "height",
     "raw_text": the decoded response up to the first end-of-turn (untruncated unless max_text_chars > 0),
     "flags": {"failed", "truncated", "malformed_container", "empty_pred", "hit_max_new_tokens"},
     "objects": [{"index", "desc", "bins": [4 ints], "bbox_2d": [4 px floats], "score"}],
     "drops": [{"reason", "index", "span": [a, b], "text": "{...}"}],
     "gt": [{"desc", "bbox_2d": [4 px floats]}],
     "matches": [{"pred": i, "gt": j, "iou": f}],   # pred = position in "objects", gt = position in "gt"
     "coord_slots": n,   # bbox_2d value positions in the rollout (vlmdet.slots), dropped records included
     "leaked_slots": [{"offset": char offset in raw_text (== its length for an end-of-turn slot),
                       "token": response token index, "kind": digit|word|structure|end_of_turn|other,
                       "text": the token's decoded text, "mass": coordinate-vocabulary mass there or null}]}

Selection (`select_samples`): samples with a drop or any flag other than `empty_pred` set come
first, then the rest; within each group the lowest per-sample F1 first (F1 = 2·matches / (preds + GT),
1.0 when both are empty); ties keep evaluation order. Text is written as UTF-8 (not ASCII-escaped).
PNGs: the image (nearest-neighbour upscaled so the short side is >= 256 px), GT boxes green, predicted
boxes red labelled `desc score`.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any, Sequence

from vlmdet.io import atomic_write_bytes, atomic_write_json

GT_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 0, 0)
CLIP_SUFFIX = "...<truncated>"


def sample_f1(sample: dict) -> float:
    """Per-sample F1 of the dump's matches: 2·|matches| / (|objects| + |gt|); 1.0 when both empty."""
    denom = len(sample["objects"]) + len(sample["gt"])
    return 1.0 if denom == 0 else 2.0 * len(sample["matches"]) / denom


def has_problem(sample: dict) -> bool:
    """A drop, a leaked coordinate slot, or a failed / truncated / malformed / max-tokens rollout (an empty
    answer alone is not)."""
    flags = sample["flags"]
    return bool(sample["drops"]) or bool(sample.get("leaked_slots")) or any(
        v for k, v in flags.items() if k != "empty_pred")


def select_samples(samples: Sequence[dict], n: int) -> list[dict]:
    """The `n` samples to dump: problems first, then lowest F1 (stable)."""
    order = sorted(range(len(samples)), key=lambda i: (not has_problem(samples[i]), sample_f1(samples[i]), i))
    return [samples[i] for i in order[: max(0, n)]]


def clip_text(text: str, max_chars: int) -> str:
    """`text` unchanged when max_chars <= 0 or it fits; else its first max_chars chars + "...<truncated>"."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    return text[:max_chars] + CLIP_SUFFIX


def png_name(image_id: str) -> str:
    """A file name for an image_id: characters outside [A-Za-z0-9._-] become "_"."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(image_id)) + ".png"


def draw_sample(sample: dict, image=None):
    """PIL image of one dump sample: GT green, predictions red with `desc score` labels."""
    from PIL import Image, ImageDraw

    if image is None:
        image = Image.open(sample["image"]).convert("RGB")
    else:
        image = image.convert("RGB")
    w, h = image.size
    scale = max(1, min(8, math.ceil(256 / max(1, min(w, h)))))
    if scale > 1:
        image = image.resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)

    def rect(box):
        x1, y1, x2, y2 = (v * scale for v in box)
        return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]

    for g in sample["gt"]:
        draw.rectangle(rect(g["bbox_2d"]), outline=GT_COLOUR, width=2)
    for o in sample["objects"]:
        r = rect(o["bbox_2d"])
        draw.rectangle(r, outline=PRED_COLOUR, width=2)
        score = o.get("score")
        label = o["desc"] if score is None else f"{o['desc']} {score:.3g}"
        draw.text((r[0] + 2, r[1] + 1), label, fill=PRED_COLOUR)
    return image


def write_dump(
    path: str | Path,
    step: int,
    samples: Sequence[dict],
    n_samples: int = 10,
    max_text_chars: int = 0,
    draw_images: bool = True,
    kind: str = "eval_rollout",
) -> dict:
    """Select, clip and write the dump JSON (and the PNGs next to it, in `<path without .json>/`).
    Returns the written payload. A PNG that cannot be drawn (unreadable image) is skipped and named in
    the payload's `png_errors`; the dump itself never fails because of an image."""
    path = Path(path)
    chosen = []
    for s in select_samples(samples, n_samples):
        s = dict(s)
        s["raw_text_chars"] = len(s["raw_text"])
        s["raw_text"] = clip_text(s["raw_text"], max_text_chars)
        s["f1"] = sample_f1(s)
        chosen.append(s)
    payload: dict[str, Any] = {"step": int(step), "kind": kind, "n_total": len(samples), "samples": chosen}
    if draw_images:
        png_dir = path.with_suffix("")
        errors = []
        used: set[str] = set()
        for s in chosen:
            try:
                img = draw_sample(s)
            except OSError as err:
                errors.append(f"{s['image_id']}: {err}")
                continue
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            name = png_name(s["image_id"])
            k = 1
            while name in used:  # two image_ids that sanitize to the same name
                k += 1
                name = png_name(f"{s['image_id']}_{k}")
            used.add(name)
            target = png_dir / name
            atomic_write_bytes(target, buf.getvalue())
            s["png"] = str(target)
        if errors:
            payload["png_errors"] = errors
    atomic_write_json(path, payload)
    return payload
