"""Detection metrics of pixel-box predictions against ground truth: COCO AP/AR + Hungarian P/R/F1.

`detection_metrics(gt_records, preds_by_image, score_source, f1_iou)` returns one flat dict:

- COCO (faster-coco-eval, bbox, maxDets 1/10/100, COCO area ranges): `bbox_AP` (IoU .50:.95),
  `bbox_AP50`, `bbox_AP75`, `bbox_APs`, `bbox_APm`, `bbox_APl`, `bbox_AR1`, `bbox_AR10`, `bbox_AR100`.
  Categories are the desc strings (union of GT and prediction descs, exact string match). As in
  COCO, a category with no GT object does not enter AP/AR (its predictions do not lower AP; they do
  count as false positives in the F1 below). Every GT record is a COCO image, so images with no GT
  (their predictions are false positives of their class) and images with no prediction (their GT
  are misses) both count. A value COCO cannot define (e.g. no GT at all, or no GT of a size range)
  is COCO's -1.
- Hungarian matching per image (`match.hungarian_match`, gate = `f1_iou`, unit costs), micro-summed
  over images: class-aware `tp`, `fp`, `fn`, `precision`, `recall`, `f1` (a pair must have equal
  desc) and the same with suffix `_agnostic` (desc ignored). precision = tp/(tp+fp), recall =
  tp/(tp+fn), f1 = 2PR/(P+R); each is 0 when its denominator is 0.
- `pred_objects`, `gt_objects`, `images` (counts) and `score_source` (a string).

Scores: a prediction without `"score"` gets 1.0. When no prediction has a score, `score_source` is
`"constant"`; when only some have one it is `"mixed"`; otherwise it is the given `score_source`.
With tied scores, COCO's stable sort keeps the input order (GT record order, then list order), so AP
from constant scores depends on generation order: read it next to F1.

All numbers are floats except `score_source`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from vlmdet.errors import UsageError
from vlmdet.match import hungarian_match

COCO_KEYS = ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl",
             "bbox_AR1", "bbox_AR10", "bbox_AR100")

# faster-coco-eval `stats_as_dict` label (maxDets = [1, 10, 100]) -> our name, in COCO `stats` order.
_FCE_LABELS = {
    "AP_all": "bbox_AP", "AP_50": "bbox_AP50", "AP_75": "bbox_AP75", "AP_small": "bbox_APs",
    "AP_medium": "bbox_APm", "AP_large": "bbox_APl", "AR_all": "bbox_AR1", "AR_second": "bbox_AR10",
    "AR_third": "bbox_AR100",
}

Box = tuple[float, float, float, float]


def gt_view(record: Any) -> tuple[str, int, int, list[tuple[str, Box]]]:
    """`(image_id, width, height, [(desc, (x1, y1, x2, y2) pixels), ...])` of a GT record given either
    as a `data.records.Record` (attributes; objects with `.desc`, `.bbox`) or as a plain dict in the
    docs/DATA.md JSON shape (`objects: [{"desc", "bbox_2d"}]`)."""
    if isinstance(record, Mapping):
        objects = [(o["desc"], tuple(float(v) for v in o["bbox_2d"])) for o in record["objects"]]
        return record["image_id"], int(record["width"]), int(record["height"]), objects
    objects = [(o.desc, tuple(float(v) for v in o.bbox)) for o in record.objects]
    return record.image_id, int(record.width), int(record.height), objects


def _pred_view(obj: Any, image_id: str, i: int) -> tuple[str, Box, float | None]:
    where = f"prediction {i} of image {image_id!r}"
    if not isinstance(obj, Mapping) or not isinstance(obj.get("desc"), str) or "bbox_2d" not in obj:
        raise UsageError(f"{where}: expected {{'desc': str, 'bbox_2d': [x1, y1, x2, y2], 'score'?: float}}")
    box = obj["bbox_2d"]
    if len(box) != 4:
        raise UsageError(f"{where}: 'bbox_2d' must have 4 numbers, got {box!r}")
    score = obj.get("score")
    return obj["desc"], tuple(float(v) for v in box), (None if score is None else float(score))


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f1


def _xywh(box: Box) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def coco_inputs(gts: Sequence, preds: Mapping[str, Sequence]) -> tuple[dict, list[dict]]:
    """The COCO ground-truth dataset dict and the detection list for `gts` (from `gt_view`) and
    `preds` (image_id -> [(desc, box, score)]). Image ids are 1-based positions in `gts`; category
    ids are 1-based positions of the sorted desc union; boxes become `[x, y, w, h]`."""
    names = sorted({d for _, _, _, objs in gts for d, _ in objs} | {d for ps in preds.values() for d, _, _ in ps})
    cat_id = {n: k for k, n in enumerate(names, 1)}
    images, anns, dets = [], [], []
    for img_id, (image_id, w, h, objs) in enumerate(gts, 1):
        images.append({"id": img_id, "file_name": image_id, "width": w, "height": h})
        for desc, box in objs:
            xywh = _xywh(box)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id[desc], "bbox": xywh,
                         "area": xywh[2] * xywh[3], "iscrowd": 0})
        for desc, box, score in preds.get(image_id, ()):
            dets.append({"image_id": img_id, "category_id": cat_id[desc], "bbox": _xywh(box),
                         "score": 1.0 if score is None else score})
    dataset = {"images": images, "annotations": anns, "categories": [{"id": k, "name": n} for n, k in cat_id.items()]}
    return dataset, dets


def coco_metrics(dataset: dict, dets: list[dict]) -> dict[str, float]:
    """COCO bbox AP/AR (names in `COCO_KEYS`) with faster-coco-eval; all -1 when there is no GT."""
    if not dataset["annotations"]:
        return {k: -1.0 for k in COCO_KEYS}
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731
    coco_gt = COCO(dataset, print_function=quiet)
    coco_dt = coco_gt.loadRes(dets)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = ev.stats_as_dict
    return {name: float(stats[label]) for label, name in _FCE_LABELS.items()}


def detection_metrics(
    gt_records: Iterable[Any],
    preds_by_image: Mapping[str, Sequence[Mapping[str, Any]]],
    score_source: str = "given",
    f1_iou: float = 0.5,
) -> dict[str, float | str]:
    """COCO AP/AR + class-aware and class-agnostic Hungarian P/R/F1 (see the module docstring).

    `gt_records`: `Record`s or record dicts (docs/DATA.md) (`image_id`, `width`, `height`, `objects` with `desc` and
    pixel `bbox_2d`); `image_id`s must be unique. `preds_by_image`: image_id -> list of
    `{"desc": str, "bbox_2d": [x1, y1, x2, y2] pixels, "score"?: float}`; an image missing from it has
    no predictions; an image_id not among the GT records raises `UsageError`.
    """
    gts = [gt_view(r) for r in gt_records]
    ids = [g[0] for g in gts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UsageError(f"duplicate image_id {dup!r} in the ground truth")
    unknown = sorted(set(preds_by_image) - set(ids))
    if unknown:
        raise UsageError(f"predictions for {len(unknown)} image_id(s) not in the ground truth, e.g. {unknown[0]!r}")
    preds = {iid: [_pred_view(o, iid, i) for i, o in enumerate(objs)] for iid, objs in preds_by_image.items()}

    all_scores = [s for ps in preds.values() for _, _, s in ps]
    if all_scores and all(s is None for s in all_scores):
        score_source = "constant"
    elif any(s is None for s in all_scores):
        score_source = "mixed"
    if any(s is not None and not math.isfinite(s) for s in all_scores):
        raise UsageError("prediction scores must be finite numbers")

    out: dict[str, float | str] = dict(coco_metrics(*coco_inputs(gts, preds)))

    counts = {"": [0, 0, 0], "_agnostic": [0, 0, 0]}
    for image_id, _, _, objs in gts:
        ps = preds.get(image_id, [])
        pred_boxes, gt_boxes = [b for _, b, _ in ps], [b for _, b in objs]
        labelled = hungarian_match(pred_boxes, gt_boxes, iou_gate=f1_iou,
                                   pred_labels=[d for d, _, _ in ps], gt_labels=[d for d, _ in objs])
        agnostic = hungarian_match(pred_boxes, gt_boxes, iou_gate=f1_iou)
        for suffix, m in (("", labelled), ("_agnostic", agnostic)):
            c = counts[suffix]
            c[0] += len(m.pairs)
            c[1] += len(m.unmatched_pred)
            c[2] += len(m.unmatched_gt)
    for suffix, (tp, fp, fn) in counts.items():
        p, r, f1 = _prf(tp, fp, fn)
        out.update({f"precision{suffix}": p, f"recall{suffix}": r, f"f1{suffix}": f1,
                    f"tp{suffix}": float(tp), f"fp{suffix}": float(fp), f"fn{suffix}": float(fn)})
    out["pred_objects"] = float(len(all_scores))
    out["gt_objects"] = float(sum(len(objs) for _, _, _, objs in gts))
    out["images"] = float(len(gts))
    out["score_source"] = score_source
    return out

