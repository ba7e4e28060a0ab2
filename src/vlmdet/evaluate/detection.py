"""Detection metrics of pixel-box predictions against ground truth: COCO AP/AR + Hungarian P/R/F1.

`detection_metrics(gt_records, preds_by_image, score_source, f1_iou)` returns one flat dict (and
`set_metrics(detections, score_source, f1_iou)` the same for a `DetectionSet`):

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

Memory: a `DetectionSet` holds ground truth and predictions as flat arrays (per object: an image
index, a category code, 4 float64 pixel coordinates, a float64 score; per image: the image_id string
and the size), so `vlmdet eval-preds` and `vlmdet parse --gt` stream their files into one and keep
no per-image Python objects. COCO is evaluated one GT category at a time, over the images that hold
that category (GT or prediction), building faster-coco-eval's per-annotation dicts for at most
`COCO_CHUNK_IMAGES` images at a time: each chunk's per-image evaluations (`evaluate` with
`separate_eval=True`) are turned at once into compact arrays (`evaluate.coco_curves`: per detection a
score, its rank in its image and a TP/FP/ignored state per area range and IoU threshold) and dropped;
the arrays of a category, concatenated in image order, give its precision/recall curves
(`coco_curves.curves`, bit-identical to faster-coco-eval's `accumulate` of the same evaluations:
tests/test_coco_curves.py), and faster-coco-eval's `summarize` reads the per-category arrays stacked
in category id order. Per-image evaluation does not depend on other images, an image without GT or
prediction of a category adds nothing to its accumulation, and a category without GT is -1
everywhere and left out of every COCO mean, so the numbers are the ones of a single evaluation of
the whole set (tests/test_detection.py checks equality with it).
"""

from __future__ import annotations

import math
from array import array
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vlmdet.errors import UsageError
from vlmdet.evaluate import coco_curves
from vlmdet.match import hungarian_match

COCO_KEYS = ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl",
             "bbox_AR1", "bbox_AR10", "bbox_AR100")

#: images per faster-coco-eval evaluation call (bounds the size of its per-annotation dicts)
COCO_CHUNK_IMAGES = 2048

# faster-coco-eval `stats_as_dict` label (maxDets = [1, 10, 100]) -> our name, in COCO `stats` order.
_FCE_LABELS = {
    "AP_all": "bbox_AP", "AP_50": "bbox_AP50", "AP_75": "bbox_AP75", "AP_small": "bbox_APs",
    "AP_medium": "bbox_APm", "AP_large": "bbox_APl", "AR_all": "bbox_AR1", "AR_second": "bbox_AR10",
    "AR_third": "bbox_AR100",
}

Box = tuple[float, float, float, float]


class DetectionSet:
    """Ground truth and predictions of a set of images as flat arrays.

    Build it with `add_image` (once per image, in order; its GT objects) and `add_predictions` (any
    image, at most once each). Images are numbered 0, 1, ... in `add_image` order; a desc string gets a
    category code (0, 1, ... in first-seen order) in `names`. Read back as numpy arrays (no copy):
    `gt_image [G]` int32 image index, `gt_cat [G]` int32 code, `gt_box [G, 4]` float64 pixel
    `(x1, y1, x2, y2)`, and likewise `pred_image`, `pred_cat`, `pred_box`, plus `pred_score [P]` float64
    (NaN where the prediction has no score). GT rows are in image order; prediction rows in the order
    they were added. `sizes [I, 2]` int32 is `(width, height)` per image.
    """

    def __init__(self) -> None:
        self.image_ids: list[str] = []
        self.index: dict[str, int] = {}  # image_id -> image index
        self.names: dict[str, int] = {}  # desc -> category code
        self.answered = 0  # images given to add_predictions
        self.scored = 0  # predictions with a score
        self._sizes = array("i")
        self._gt = (array("i"), array("i"), array("d"))
        self._pred = (array("i"), array("i"), array("d"), array("d"))

    def _code(self, desc: str) -> int:
        code = self.names.get(desc)
        if code is None:
            code = self.names[desc] = len(self.names)
        return code

    def add_image(self, image_id: str, width: int, height: int, objects: Iterable[tuple[str, Sequence[float]]]) -> int:
        """Add an image and its GT objects `(desc, (x1, y1, x2, y2) pixels)`; returns its index.
        A repeated `image_id` raises `UsageError`."""
        if image_id in self.index:
            raise UsageError(f"duplicate image_id {image_id!r} in the ground truth")
        i = self.index[image_id] = len(self.image_ids)
        self.image_ids.append(image_id)
        self._sizes.extend((int(width), int(height)))
        images, cats, boxes = self._gt
        for desc, box in objects:
            images.append(i)
            cats.append(self._code(desc))
            boxes.extend(float(v) for v in box)
        return i

    def add_predictions(self, image: int, objects: Iterable[tuple[str, Sequence[float], float | None]]) -> None:
        """Add the predictions `(desc, (x1, y1, x2, y2) pixels, score or None)` of image index `image`.
        A non-finite score raises `UsageError`."""
        images, cats, boxes, scores = self._pred
        self.answered += 1
        for desc, box, score in objects:
            if score is not None:
                if not math.isfinite(score):
                    raise UsageError("prediction scores must be finite numbers")
                self.scored += 1
            images.append(image)
            cats.append(self._code(desc))
            boxes.extend(float(v) for v in box)
            scores.append(math.nan if score is None else float(score))

    def size(self, image: int) -> tuple[int, int]:
        """`(width, height)` of image index `image`."""
        return self._sizes[2 * image], self._sizes[2 * image + 1]

    @property
    def sizes(self) -> np.ndarray:
        return np.frombuffer(self._sizes, dtype=np.int32).reshape(-1, 2)

    @property
    def gt_image(self) -> np.ndarray:
        return np.frombuffer(self._gt[0], dtype=np.int32)

    @property
    def gt_cat(self) -> np.ndarray:
        return np.frombuffer(self._gt[1], dtype=np.int32)

    @property
    def gt_box(self) -> np.ndarray:
        return np.frombuffer(self._gt[2], dtype=np.float64).reshape(-1, 4)

    @property
    def pred_image(self) -> np.ndarray:
        return np.frombuffer(self._pred[0], dtype=np.int32)

    @property
    def pred_cat(self) -> np.ndarray:
        return np.frombuffer(self._pred[1], dtype=np.int32)

    @property
    def pred_box(self) -> np.ndarray:
        return np.frombuffer(self._pred[2], dtype=np.float64).reshape(-1, 4)

    @property
    def pred_score(self) -> np.ndarray:
        return np.frombuffer(self._pred[3], dtype=np.float64)


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


def category_ids(ds: DetectionSet) -> np.ndarray:
    """COCO category id per category code: 1-based position of the desc in the sorted desc union."""
    ids = np.zeros(len(ds.names), dtype=np.int64)
    for k, name in enumerate(sorted(ds.names), 1):
        ids[ds.names[name]] = k
    return ids


def _pred_order(ds: DetectionSet) -> np.ndarray:
    """Prediction rows sorted by image index, keeping the added order within an image."""
    return np.argsort(ds.pred_image, kind="stable")


def coco_inputs(ds: DetectionSet, images: np.ndarray | None = None, gt_rows: np.ndarray | None = None,
                pred_rows: np.ndarray | None = None, categories: Sequence[int] | None = None) -> tuple[dict, list[dict]]:
    """The COCO ground-truth dataset dict and the detection list of `ds` (default: everything; or
    the image indices `images` with GT rows `gt_rows` and prediction rows `pred_rows`, listing only the
    category codes `categories`). Image ids are 1-based image indices, annotation ids 1-based GT rows,
    category ids from `category_ids`; boxes become `[x, y, w, h]`; a prediction without a score gets 1.0."""
    cat_id = category_ids(ds)
    if images is None:
        images, gt_rows, pred_rows = np.arange(len(ds.image_ids)), np.arange(len(ds.gt_cat)), _pred_order(ds)
    codes = sorted(ds.names.values(), key=lambda c: cat_id[c]) if categories is None else categories
    sizes = ds.sizes[images].tolist()
    out_images = [{"id": i + 1, "file_name": ds.image_ids[i], "width": w, "height": h}
                  for i, (w, h) in zip(images.tolist(), sizes)]

    def xywh(boxes: np.ndarray) -> list[list[float]]:
        return np.column_stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]).tolist()

    anns = [{"id": row + 1, "image_id": img + 1, "category_id": cat, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for row, img, cat, b in zip(gt_rows.tolist(), ds.gt_image[gt_rows].tolist(),
                                        cat_id[ds.gt_cat[gt_rows]].tolist(), xywh(ds.gt_box[gt_rows]))]
    scores = np.nan_to_num(ds.pred_score[pred_rows], nan=1.0).tolist()
    dets = [{"image_id": img + 1, "category_id": cat, "bbox": b, "score": s}
            for img, cat, b, s in zip(ds.pred_image[pred_rows].tolist(), cat_id[ds.pred_cat[pred_rows]].tolist(),
                                      xywh(ds.pred_box[pred_rows]), scores)]
    names = {code: name for name, code in ds.names.items()}
    dataset = {"images": out_images, "annotations": anns,
               "categories": [{"id": int(cat_id[c]), "name": names[c]} for c in codes]}
    return dataset, dets


def _quiet(*args, **kwargs) -> None:
    pass


def _evaluate_chunk(dataset: dict, dets: list[dict]):
    """faster-coco-eval `evaluate` of one chunk with per-image results kept (`separate_eval`)."""
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(dataset, print_function=_quiet)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), "bbox", print_function=_quiet, separate_eval=True)
    ev.evaluate()
    return ev


def coco_metrics(ds: DetectionSet, chunk_images: int = COCO_CHUNK_IMAGES) -> dict[str, float]:
    """COCO bbox AP/AR (names in `COCO_KEYS`) with faster-coco-eval, one category at a time in chunks
    of at most `chunk_images` images (see the module docstring); all -1 when there is no GT."""
    from faster_coco_eval import COCOeval_faster

    gt_image, gt_cat, pred_cat = ds.gt_image, ds.gt_cat, ds.pred_cat
    if not len(gt_cat):
        return {k: -1.0 for k in COCO_KEYS}
    summary = COCOeval_faster(iouType="bbox", print_function=_quiet)
    params = summary.params
    cat_id = category_ids(ds)
    order = _pred_order(ds)
    pred_image = ds.pred_image[order]
    codes = sorted(np.unique(gt_cat).tolist(), key=lambda c: cat_id[c])
    precision, recall = [], []
    for code in codes:
        g_rows = np.flatnonzero(gt_cat == code)  # GT rows are in image order
        p_sel = pred_cat[order] == code
        p_rows, p_img = order[p_sel], pred_image[p_sel]
        images = np.unique(np.concatenate([gt_image[g_rows], p_img]))
        parts = []
        for start in range(0, len(images), chunk_images):
            chunk = images[start:start + chunk_images]
            g = g_rows[np.searchsorted(gt_image[g_rows], chunk[0]):np.searchsorted(gt_image[g_rows], chunk[-1], "right")]
            p = p_rows[np.searchsorted(p_img, chunk[0]):np.searchsorted(p_img, chunk[-1], "right")]
            ev = _evaluate_chunk(*coco_inputs(ds, chunk, g, p, [code]))
            parts.append(coco_curves.from_evaluations(ev._evalImgs_cpp, len(chunk), len(params.iouThrs)))
            ev = None  # the chunk's per-image evaluations live only until they are compact
        pr, rc = coco_curves.curves(coco_curves.concat(parts), params.recThrs, params.maxDets)
        precision.append(pr)  # [T, R, A, M]
        recall.append(rc)  # [T, A, M]
    params.catIds = [int(cat_id[c]) for c in codes]
    summary.eval = {"precision": np.stack(precision, axis=2), "recall": np.stack(recall, axis=1)}
    summary.summarize()
    stats = summary.stats_as_dict
    return {name: float(stats[label]) for label, name in _FCE_LABELS.items()}


def f1_counts(ds: DetectionSet, f1_iou: float) -> dict[str, list[int]]:
    """`{"": [tp, fp, fn], "_agnostic": [tp, fp, fn]}`: Hungarian matching per image at `f1_iou`,
    class-aware (equal category code) and class-agnostic, summed over images."""
    counts = {"": [0, 0, 0], "_agnostic": [0, 0, 0]}
    n = len(ds.image_ids)
    order = _pred_order(ds)
    p_start = np.searchsorted(ds.pred_image[order], np.arange(n + 1)).tolist()
    g_start = np.searchsorted(ds.gt_image, np.arange(n + 1)).tolist()
    gt_box, gt_cat, pred_box, pred_cat = ds.gt_box, ds.gt_cat, ds.pred_box, ds.pred_cat
    for i in range(n):
        rows = order[p_start[i]:p_start[i + 1]]
        gs, ge = g_start[i], g_start[i + 1]
        if not len(rows) or gs == ge:  # nothing to match: every prediction a FP, every GT a miss
            for c in counts.values():
                c[1] += len(rows)
                c[2] += ge - gs
            continue
        pb, gb = pred_box[rows], gt_box[gs:ge]
        labelled = hungarian_match(pb, gb, iou_gate=f1_iou, pred_labels=pred_cat[rows].tolist(),
                                   gt_labels=gt_cat[gs:ge].tolist())
        agnostic = hungarian_match(pb, gb, iou_gate=f1_iou)
        for suffix, m in (("", labelled), ("_agnostic", agnostic)):
            c = counts[suffix]
            c[0] += len(m.pairs)
            c[1] += len(m.unmatched_pred)
            c[2] += len(m.unmatched_gt)
    return counts


def set_metrics(ds: DetectionSet, score_source: str = "given", f1_iou: float = 0.5) -> dict[str, float | str]:
    """COCO AP/AR + class-aware and class-agnostic Hungarian P/R/F1 of a `DetectionSet` (see the
    module docstring)."""
    n_pred = len(ds.pred_cat)
    if n_pred and ds.scored == 0:
        score_source = "constant"
    elif ds.scored < n_pred:
        score_source = "mixed"
    out: dict[str, float | str] = dict(coco_metrics(ds))
    for suffix, (tp, fp, fn) in f1_counts(ds, f1_iou).items():
        p, r, f1 = _prf(tp, fp, fn)
        out.update({f"precision{suffix}": p, f"recall{suffix}": r, f"f1{suffix}": f1,
                    f"tp{suffix}": float(tp), f"fp{suffix}": float(fp), f"fn{suffix}": float(fn)})
    out["pred_objects"] = float(n_pred)
    out["gt_objects"] = float(len(ds.gt_cat))
    out["images"] = float(len(ds.image_ids))
    out["score_source"] = score_source
    return out


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
    ds = DetectionSet()
    for record in gt_records:
        ds.add_image(*gt_view(record))
    unknown = sorted(set(preds_by_image) - set(ds.index))
    if unknown:
        raise UsageError(f"predictions for {len(unknown)} image_id(s) not in the ground truth, e.g. {unknown[0]!r}")
    views = {iid: [_pred_view(o, iid, i) for i, o in enumerate(objs)] for iid, objs in preds_by_image.items()}
    for iid, objs in views.items():
        ds.add_predictions(ds.index[iid], objs)
    return set_metrics(ds, score_source, f1_iou)
