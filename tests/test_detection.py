"""evaluate/detection.py: hand-computed F1/AP cases and faster-coco-eval vs pycocotools parity."""

import contextlib
import copy
import io
import random

import numpy as np
import pytest

from vlmdet.data.records import GtObject, Record
from vlmdet.errors import UsageError
from vlmdet.evaluate.detection import (COCO_KEYS, DetectionSet, _pred_view, coco_inputs, coco_metrics,
                                       detection_metrics, gt_view)


def gt(image_id, objs, w=100, h=100):
    return {"image_id": image_id, "width": w, "height": h,
            "objects": [{"desc": d, "bbox_2d": list(b)} for d, b in objs]}


def pred(desc, box, score=None):
    p = {"desc": desc, "bbox_2d": list(box)}
    if score is not None:
        p["score"] = score
    return p


CAT, DOG = [0, 0, 10, 10], [20, 20, 30, 30]


def test_f1_class_aware_and_agnostic_by_hand():
    gts = [gt("a", [("cat", CAT), ("dog", DOG)])]
    preds = {"a": [pred("cat", CAT), pred("cat", DOG), pred("bird", [50, 50, 60, 60])]}
    m = detection_metrics(gts, preds)
    # class-aware: cat matched; "cat" on the dog box and the bird are FPs; the dog is missed
    assert (m["tp"], m["fp"], m["fn"]) == (1.0, 2.0, 1.0)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # class-agnostic: both GT boxes matched, only the bird is a FP
    assert (m["tp_agnostic"], m["fp_agnostic"], m["fn_agnostic"]) == (2.0, 1.0, 0.0)
    assert m["precision_agnostic"] == pytest.approx(2 / 3) and m["recall_agnostic"] == 1.0
    assert m["f1_agnostic"] == pytest.approx(0.8)
    assert (m["pred_objects"], m["gt_objects"], m["images"]) == (3.0, 2.0, 1.0)


def test_images_without_gt_and_without_preds_count():
    gts = [gt("a", [("cat", CAT)]), gt("empty", []), gt("nopred", [("dog", DOG)])]
    preds = {"a": [pred("cat", CAT, 0.9)], "empty": [pred("cat", CAT, 0.95), pred("dog", DOG, 0.1)]}
    m = detection_metrics(gts, preds)
    assert (m["tp"], m["fp"], m["fn"]) == (1.0, 2.0, 1.0)
    # cat: the FP on the empty image outranks the TP -> precision 1/2 at recall 1 -> AP 0.5;
    # dog: never detected -> AP 0; mean over the two classes = 0.25
    assert m["bbox_AP50"] == pytest.approx(0.25)
    assert m["bbox_AP"] == pytest.approx(0.25)


def test_f1_iou_threshold():
    gts = [gt("a", [("cat", [0, 0, 10, 10])])]
    preds = {"a": [pred("cat", [0, 0, 10, 6])]}  # IoU 0.6
    assert detection_metrics(gts, preds, f1_iou=0.5)["tp"] == 1.0
    m = detection_metrics(gts, preds, f1_iou=0.7)
    assert (m["tp"], m["fp"], m["fn"], m["f1"]) == (0.0, 1.0, 1.0, 0.0)


def test_ap_by_hand_score_order_and_no_gt_category():
    gts = [gt("a", [("cat", CAT)])]
    good_first = {"a": [pred("cat", CAT, 0.9), pred("cat", [60, 60, 70, 70], 0.8)]}
    fp_first = {"a": [pred("cat", CAT, 0.8), pred("cat", [60, 60, 70, 70], 0.9)]}
    assert detection_metrics(gts, good_first)["bbox_AP"] == pytest.approx(1.0)
    assert detection_metrics(gts, fp_first)["bbox_AP"] == pytest.approx(0.5)
    # a class with no GT does not enter AP, but its prediction is a FP for F1
    with_dog = {"a": good_first["a"] + [pred("dog", DOG, 0.99)]}
    m = detection_metrics(gts, with_dog)
    assert m["bbox_AP"] == pytest.approx(1.0)
    assert m["fp"] == 2.0


def test_ar_and_area_ranges_by_hand():
    # two small (10x10) cats in one image, both found: AR@1 = 1/2, AR@10 = 1; no medium/large GT
    gts = [gt("a", [("cat", CAT), ("cat", DOG)])]
    m = detection_metrics(gts, {"a": [pred("cat", CAT, 0.9), pred("cat", DOG, 0.8)]})
    assert m["bbox_AR1"] == pytest.approx(0.5)
    assert m["bbox_AR10"] == pytest.approx(1.0) and m["bbox_AR100"] == pytest.approx(1.0)
    assert m["bbox_APs"] == pytest.approx(1.0)
    assert m["bbox_APm"] == -1.0 and m["bbox_APl"] == -1.0


def test_no_predictions_and_no_gt():
    gts = [gt("a", [("cat", CAT)])]
    m = detection_metrics(gts, {})
    assert m["bbox_AP"] == 0.0 and m["f1"] == 0.0 and m["fn"] == 1.0 and m["precision"] == 0.0
    m = detection_metrics([gt("a", [])], {"a": [pred("cat", CAT)]})
    assert all(m[k] == -1.0 for k in COCO_KEYS)
    assert (m["fp"], m["recall"]) == (1.0, 0.0)


def test_score_source():
    gts = [gt("a", [("cat", CAT), ("dog", DOG)])]
    assert detection_metrics(gts, {"a": [pred("cat", CAT)]}, score_source="given")["score_source"] == "constant"
    assert detection_metrics(gts, {"a": [pred("cat", CAT, 0.3)]}, score_source="coord_logprob")["score_source"] == "coord_logprob"
    assert detection_metrics(gts, {"a": [pred("cat", CAT, 0.3), pred("dog", DOG)]})["score_source"] == "mixed"


def test_record_and_dict_give_the_same_numbers():
    d = gt("a", [("cat", CAT), ("dog", DOG)], w=64, h=48)
    rec = Record("a", "a.png", 64, 48, (GtObject("cat", tuple(map(float, CAT))), GtObject("dog", tuple(map(float, DOG)))), None)
    assert gt_view(rec) == gt_view(d) == ("a", 64, 48, [("cat", (0.0, 0.0, 10.0, 10.0)), ("dog", (20.0, 20.0, 30.0, 30.0))])
    preds = {"a": [pred("cat", [1, 1, 10, 10], 0.7), pred("dog", [0, 0, 5, 5], 0.2)]}
    assert detection_metrics([rec], preds) == detection_metrics([d], preds)


def test_bad_inputs():
    with pytest.raises(UsageError, match="not in the ground truth"):
        detection_metrics([gt("a", [])], {"b": []})
    with pytest.raises(UsageError, match="duplicate image_id 'a'"):
        detection_metrics([gt("a", []), gt("a", [])], {})
    with pytest.raises(UsageError, match="prediction 0 of image 'a'"):
        detection_metrics([gt("a", [])], {"a": [{"bbox_2d": CAT}]})


def _random_set(seed, n_images=30, classes=("red circle", "blue square", "green triangle", "cat", "dog")):
    rng = random.Random(seed)
    gts, preds = [], {}
    for i in range(n_images):
        w, h = rng.choice([(64, 64), (640, 480), (320, 224)])
        objs = []
        for _ in range(0 if i % 7 == 0 else rng.randint(1, 6)):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            objs.append((rng.choice(classes), [x1, y1, x1 + bw, y1 + bh]))
        gts.append(gt(f"img{i}", objs, w, h))
        if i % 5 == 3:
            continue  # an image with no predictions
        ps = []
        for desc, (x1, y1, x2, y2) in objs:
            if rng.random() < 0.85:
                s = 0.1 * (x2 - x1)
                box = [x1 + rng.gauss(0, s), y1 + rng.gauss(0, s), x2 + rng.gauss(0, s), y2 + rng.gauss(0, s)]
                box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
                ps.append(pred(desc if rng.random() < 0.85 else rng.choice(classes), box, rng.random()))
        for _ in range(rng.randint(0, 3)):
            x1, y1 = rng.uniform(0, w - 10), rng.uniform(0, h - 10)
            ps.append(pred(rng.choice(classes), [x1, y1, x1 + rng.uniform(2, 60), y1 + rng.uniform(2, 60)], rng.random()))
        preds[f"img{i}"] = ps
    return gts, preds


def _detection_set(gts, preds):
    ds = DetectionSet()
    for g in gts:
        ds.add_image(*gt_view(g))
    for k, v in preds.items():
        ds.add_predictions(ds.index[k], [_pred_view(o, k, i) for i, o in enumerate(v)])
    return ds


def _pycocotools_stats(gts, preds):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, dets = coco_inputs(_detection_set(gts, preds))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dataset)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:9]]


@pytest.mark.parametrize("seed,constant", [(0, False), (1, False), (2, False), (3, True)])
def test_parity_with_pycocotools(seed, constant):
    gts, preds = _random_set(seed)
    if constant:  # all scores tied: both libraries must break ties the same way (input order)
        for ps in preds.values():
            for p in ps:
                del p["score"]
    assert any(not g["objects"] for g in gts) and len(preds) < len(gts)
    m = detection_metrics(gts, preds)
    ours = [m[k] for k in COCO_KEYS]
    ref = _pycocotools_stats(gts, preds)
    assert 0.05 < ref[0] < 0.95  # a non-trivial operating point
    assert ours == pytest.approx(ref, abs=1e-9)


def _single_evaluation(ds):
    """The reference: one faster-coco-eval evaluation of the whole set, every category listed."""
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731
    dataset, dets = coco_inputs(ds)
    coco_gt = COCO(dataset, print_function=quiet)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), "bbox", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(v) for v in ev.stats[:9]]


@pytest.mark.parametrize("seed,constant", [(0, False), (4, False), (5, True)])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_per_category_coco_equals_one_evaluation(seed, constant, chunk):
    gts, preds = _random_set(seed)
    preds["img1"] = preds.get("img1", []) + [pred("unicorn", [1, 1, 9, 9], 0.99)]  # a category without GT
    if constant:  # ties: the concatenation order of images decides
        for ps in preds.values():
            for p in ps:
                p.pop("score", None)
    ds = _detection_set(gts, preds)
    ours = coco_metrics(ds, chunk_images=chunk)
    ref = _single_evaluation(ds)
    assert 0.05 < ref[0] < 0.95 and ref[3] != ref[5]  # a non-trivial operating point, sizes differ
    assert [ours[k] for k in COCO_KEYS] == ref  # bit-identical, not approximately equal


def test_detection_set_arrays_by_hand():
    ds = DetectionSet()
    assert ds.add_image("a", 64, 48, [("cat", (1, 2, 3, 4)), ("dog", (5.5, 6, 7, 8))]) == 0
    assert ds.add_image("b", 10, 20, []) == 1
    ds.add_predictions(1, [("dog", (0, 0, 5, 5), 0.25)])
    ds.add_predictions(0, [("bird", (1, 1, 2, 2), None)])
    assert ds.names == {"cat": 0, "dog": 1, "bird": 2} and ds.index == {"a": 0, "b": 1}
    assert ds.sizes.tolist() == [[64, 48], [10, 20]] and ds.size(1) == (10, 20)
    assert ds.gt_image.tolist() == [0, 0] and ds.gt_cat.tolist() == [0, 1]
    assert ds.gt_box.tolist() == [[1, 2, 3, 4], [5.5, 6, 7, 8]]
    assert ds.pred_image.tolist() == [1, 0] and ds.pred_cat.tolist() == [1, 2]
    assert ds.pred_box.tolist() == [[0, 0, 5, 5], [1, 1, 2, 2]]
    assert ds.pred_score[0] == 0.25 and np.isnan(ds.pred_score[1])
    assert (ds.answered, ds.scored) == (2, 1)
    # COCO inputs: images in index order, predictions sorted by image, ids from the sorted desc union
    dataset, dets = coco_inputs(ds)
    assert [c["name"] for c in dataset["categories"]] == ["bird", "cat", "dog"]
    assert [(a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in dataset["annotations"]] == [
        (1, 1, 2, [1, 2, 2, 2], 4), (2, 1, 3, [5.5, 6, 1.5, 2], 3.0)]
    assert [(d["image_id"], d["category_id"], d["score"]) for d in dets] == [(1, 1, 1.0), (2, 3, 0.25)]
    with pytest.raises(UsageError, match="duplicate image_id 'a'"):
        ds.add_image("a", 2, 2, [])
    with pytest.raises(UsageError, match="finite"):
        ds.add_predictions(1, [("dog", (0, 0, 5, 5), float("inf"))])
