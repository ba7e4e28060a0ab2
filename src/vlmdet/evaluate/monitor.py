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
PNGs (`draw_sample`): the image (nearest-neighbour upscaled so the short side is >= 384 px), GT boxes
dashed white, predictions solid magenta, matched pairs numbered alike and joined by a line, a class label
on every box, the score on predictions, and a legend strip under the image.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any, Sequence

from vlmdet.io import atomic_write_bytes, atomic_write_json

#: Box colours: white (GT, dashed) and magenta (predictions), each with a dark halo; the default synthetic
#: classes are red / green / blue on grey, so neither colour nor the halo can be mistaken for an object.
GT_COLOUR = (255, 255, 255)
PRED_COLOUR = (255, 0, 255)
HALO = (0, 0, 0)
LEGEND_BG = (40, 40, 40)
LEGEND_HEIGHT = 40
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


def _dashed_rect(draw, r, colour, width: int, dash: int) -> None:
    """Outline of rectangle `r` = [x1, y1, x2, y2] in `dash`-px dashes (gaps of the same length)."""
    x1, y1, x2, y2 = r
    for a, b, fixed, horizontal in ((x1, x2, y1, True), (x1, x2, y2, True), (y1, y2, x1, False), (y1, y2, x2, False)):
        t = a
        while t < b:
            e = min(t + dash, b)
            xy = [(t, fixed), (e, fixed)] if horizontal else [(fixed, t), (fixed, e)]
            draw.line(xy, fill=colour, width=width)
            t += 2 * dash


def _label(draw, font, xy, text: str, fg, bg, bounds, taken: list) -> None:
    """`text` on a filled `bg` plate with its top-left corner near `xy`, kept inside `bounds` (w, h) and
    moved up or down (in plate heights) off the plates already in `taken` (which it joins)."""
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    w, h = r - l + 4, b - t + 3
    x = min(max(0, xy[0]), max(0, bounds[0] - w))

    def place(y):
        y = min(max(0, y), max(0, bounds[1] - h))
        return [x, y, x + w, y + h]

    def free(p):
        return all(p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1] for q in taken)

    tries = [place(xy[1] + d * (h + 1)) for k in range(6) for d in ((k, -k) if k else (0,))]
    plate = next((p for p in tries if free(p)), tries[0])
    taken.append(plate)
    draw.rectangle(plate, fill=bg, outline=HALO)
    draw.text((plate[0] + 2 - l, plate[1] + 1 - t), text, fill=fg, font=font)


def pair_labels(sample: dict) -> tuple[list[str], list[str]]:
    """Box labels `(gt_labels, pred_labels)` of one dump sample: a matched pair shares its number
    (`#1 red circle` on the GT, `#1 red circle 0.93` on the prediction, `(wrong class)` when the descs
    differ); an unmatched GT is `FN <desc>`, an unmatched prediction `FP <desc> <score>`. Numbers follow
    the order of `matches`; a score is printed with 2 decimals, none when the box has no score."""
    gts, objs = sample.get("gt") or [], sample.get("objects") or []
    gt_pair: dict[int, int] = {}
    pred_pair: dict[int, int] = {}
    for k, m in enumerate(sample.get("matches") or [], 1):
        p, g = m.get("pred"), m.get("gt")
        if isinstance(p, int) and isinstance(g, int) and 0 <= p < len(objs) and 0 <= g < len(gts):
            pred_pair[p], gt_pair[g] = (k, g), k
    gt_labels = [f"#{gt_pair[j]} {g.get('desc', '')}" if j in gt_pair else f"FN {g.get('desc', '')}"
                 for j, g in enumerate(gts)]
    pred_labels = []
    for i, o in enumerate(objs):
        score = o.get("score")
        tail = "" if not isinstance(score, (int, float)) else f" {score:.2f}"
        if i in pred_pair:
            k, g = pred_pair[i]
            wrong = "" if o.get("desc") == gts[g].get("desc") else " (wrong class)"
            pred_labels.append(f"#{k} {o.get('desc', '')}{tail}{wrong}")
        else:
            pred_labels.append(f"FP {o.get('desc', '')}{tail}")
    return gt_labels, pred_labels


def draw_sample(sample: dict, image=None, min_side: int = 384):
    """PIL image of one dump sample (the picture of the module docstring): the image upscaled
    (nearest, integer factor 1..8) so its short side reaches `min_side` px; GT boxes dashed white,
    predictions solid magenta, every box with a dark halo and a label plate (`pair_labels`: GT labels
    under the box, prediction labels above it); a thin magenta line joins the centres of each matched
    pair; a legend strip under the image. None of these colours is a class colour of the synthetic data.
    `image`: a PIL image to draw on instead of opening `sample["image"]`."""
    from PIL import Image, ImageDraw, ImageFont

    if image is None:
        with Image.open(sample["image"]) as im:
            image = im.convert("RGB")
    else:
        image = image.convert("RGB")
    w, h = image.size
    scale = max(1, min(8, math.ceil(min_side / max(1, min(w, h)))))
    if scale > 1:
        image = image.resize((w * scale, h * scale), Image.NEAREST)
    W, H = image.size
    font = ImageFont.load_default(size=11)
    canvas = Image.new("RGB", (W, H + LEGEND_HEIGHT), LEGEND_BG)
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)

    def rect(box):
        try:
            x1, y1, x2, y2 = (float(v) * scale for v in box)
        except (TypeError, ValueError):
            return None
        return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]

    gts, objs = sample.get("gt") or [], sample.get("objects") or []
    gt_rects = [rect(g.get("bbox_2d")) for g in gts]
    pred_rects = [rect(o.get("bbox_2d")) for o in objs]
    for r in pred_rects:
        if r:
            draw.rectangle([r[0] - 1, r[1] - 1, r[2] + 1, r[3] + 1], outline=HALO, width=4)
            draw.rectangle(r, outline=PRED_COLOUR, width=2)
    for r in gt_rects:  # on top: the dashes stay visible on a prediction that hugs the GT
        if r:
            _dashed_rect(draw, r, HALO, 4, 1 << 20)  # one dash per edge: a solid dark line under the dashes
            _dashed_rect(draw, r, GT_COLOUR, 2, 6)
    for m in sample.get("matches") or []:
        p, g = m.get("pred"), m.get("gt")
        if isinstance(p, int) and isinstance(g, int) and 0 <= p < len(objs) and 0 <= g < len(gts) \
                and pred_rects[p] and gt_rects[g]:
            a, b = pred_rects[p], gt_rects[g]
            line = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)]
            draw.line(line, fill=HALO, width=3)
            draw.line(line, fill=PRED_COLOUR, width=1)
    gt_labels, pred_labels = pair_labels(sample)
    taken: list = []
    for r, text in zip(gt_rects, gt_labels):
        if r:
            _label(draw, font, (r[0], r[3] + 2), text, HALO, GT_COLOUR, (W, H), taken)
    for r, text in zip(pred_rects, pred_labels):
        if r:
            _label(draw, font, (r[0], r[1] - 17), text, GT_COLOUR, PRED_COLOUR, (W, H), taken)

    y = H + 5
    _dashed_rect(draw, [6, y + 2, 26, y + 12], GT_COLOUR, 2, 4)
    draw.text((32, y), "ground truth (#k = matched pair, FN = missed)", fill=GT_COLOUR, font=font)
    y += 17
    draw.rectangle([6, y + 2, 26, y + 12], outline=PRED_COLOUR, width=2)
    draw.text((32, y), "prediction + score (FP = unmatched)", fill=GT_COLOUR, font=font)
    return canvas


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
