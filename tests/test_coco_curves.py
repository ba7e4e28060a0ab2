"""evaluate/coco_curves.py: hand-computed curves, and bit-identity with faster-coco-eval's own
`accumulate` on the same per-image evaluations (random sets: many categories, tied scores, crowd
and ignored GT, empty images, images past the maxDets limits, non-default maxDets)."""

import random

import numpy as np
import pytest

from vlmdet.evaluate.coco_curves import FP, TP, Matches, concat, curves, from_evaluations


def test_curves_by_hand():
    # one area range, one IoU threshold; detections (score, rank, state) in image order
    m = Matches(score=np.array([0.9, 0.5, 0.7, 0.7, 0.2]), rank=np.array([0, 1, 0, 1, 2], dtype=np.int32),
                state=np.array([[[TP, 0, FP, TP, TP]]], dtype=np.uint8), valid_gt=np.array([4]))
    precision, recall = curves(m, rec_thrs=[0.0, 0.25, 0.5, 0.6, 0.75, 1.0], max_dets=[1, 2, 3])
    assert precision.shape == (1, 6, 1, 3) and recall.shape == (1, 1, 3)
    # maxDets 1: ranks 0 -> scores 0.9 (TP), 0.7 (FP): recall [.25, .25], precision [1, .5] -> [1, .5]
    assert precision[0, :, 0, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0] and recall[0, 0, 0] == 0.25
    # maxDets 2: 0.9 TP, 0.7 FP, 0.7 TP (tie: image order), 0.5 ignored -> tp 1 1 2 2, counted 1 2 3 3:
    # recall [.25 .25 .5 .5], precision [1 .5 2/3 2/3] made non-increasing from the right [1 2/3 2/3 2/3]
    assert precision[0, :, 0, 1].tolist() == [1.0, 1.0, 2 / 3, 0.0, 0.0, 0.0] and recall[0, 0, 1] == 0.5
    # maxDets 3 adds 0.2 TP: recall .75, precision 3/4 at the end
    assert precision[0, :, 0, 2].tolist() == [1.0, 1.0, 0.75, 0.75, 0.75, 0.0] and recall[0, 0, 2] == 0.75


def test_curves_without_valid_gt_or_without_detections():
    m = Matches(score=np.zeros(0), rank=np.zeros(0, dtype=np.int32), state=np.zeros((2, 3, 0), dtype=np.uint8),
                valid_gt=np.array([0, 2]))
    precision, recall = curves(m, rec_thrs=[0.0, 0.5], max_dets=[10])
    assert (precision[:, :, 0] == -1).all() and (recall[:, 0] == -1).all()  # no valid GT: undefined
    assert (precision[:, :, 1] == 0).all() and (recall[:, 1] == 0).all()  # GT but no detection


def test_concat_keeps_chunk_order():
    a = Matches(np.array([0.5]), np.array([0], dtype=np.int32), np.full((1, 2, 1), TP, dtype=np.uint8), np.array([1]))
    b = Matches(np.array([0.5, 0.1]), np.array([0, 1], dtype=np.int32), np.full((1, 2, 2), FP, dtype=np.uint8),
                np.array([3]))
    c = concat([a, b])
    assert c.score.tolist() == [0.5, 0.5, 0.1] and c.rank.tolist() == [0, 0, 1]
    assert c.state[0].tolist() == [[TP, FP, FP]] * 2 and c.valid_gt.tolist() == [4]


def _random_coco(seed, n_images=60, n_cats=9):
    """A COCO dataset + detections drawing every case the accumulation must handle."""
    rng = random.Random(seed)
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        w, h = rng.choice([(64, 48), (320, 240), (640, 480)])
        images.append({"id": i, "width": w, "height": h})
        if i % 7 == 0:
            continue  # an empty image
        objs = []
        for _ in range(rng.randint(0, 6)):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cat = rng.randint(1, n_cats)
            objs.append((cat, [x, y, bw, bh]))
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, bw, bh],
                   "area": bw * bh, "iscrowd": int(rng.random() < 0.1)}
            if rng.random() < 0.05:
                ann["ignore"] = 1
            anns.append(ann)
        n_dets = 130 if i % 11 == 0 else rng.randint(0, 12)  # past maxDets=100 in some images
        for _ in range(n_dets):
            if objs and rng.random() < 0.7:
                cat, (x, y, bw, bh) = rng.choice(objs)
                s = 0.15 * bw
                box = [x + rng.gauss(0, s), y + rng.gauss(0, s), max(bw + rng.gauss(0, s), 1), max(bh + rng.gauss(0, s), 1)]
                if rng.random() < 0.15:
                    cat = rng.randint(1, n_cats)
            else:
                bw, bh = rng.uniform(2, w / 3), rng.uniform(2, h / 3)
                box, cat = [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh], rng.randint(1, n_cats)
            score = rng.choice([0.25, 0.5, 0.75]) if rng.random() < 0.4 else rng.random()  # many ties
            dets.append({"image_id": i, "category_id": cat, "bbox": box, "score": score})
        dets.append({"image_id": i, "category_id": n_cats + 1, "bbox": [1, 1, 8, 8], "score": 0.5})  # no GT: -1
    dataset = {"images": images, "annotations": anns,
               "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cats + 2)]}
    return dataset, dets


@pytest.mark.parametrize("seed,max_dets", [(0, None), (1, None), (2, [1, 3, 5]), (3, [2, 100])])
def test_bit_identical_to_faster_coco_eval_accumulate(seed, max_dets):
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731
    dataset, dets = _random_coco(seed)
    coco_gt = COCO(dataset, print_function=quiet)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), "bbox", print_function=quiet, separate_eval=True)
    if max_dets is not None:
        ev.params.maxDets = max_dets
    ev.evaluate()
    ev.accumulate()
    p = ev.params
    n_images, n_areas, n_thr = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    ref_precision, ref_recall = ev.eval["precision"], ev.eval["recall"]  # [T, R, K, A, M], [T, K, A, M]
    assert len(p.catIds) == 10 and (ref_precision == -1).any() and (ref_precision > 0).any()
    for k in range(len(p.catIds)):
        evaluations = ev._evalImgs_cpp[k * n_areas * n_images:(k + 1) * n_areas * n_images]  # [area][image]
        whole = from_evaluations(evaluations, n_images, n_thr)
        # the same from chunks of 7 images, joined
        chunks = [from_evaluations([evaluations[a * n_images + i] for a in range(n_areas) for i in range(s, min(s + 7, n_images))],
                                   min(7, n_images - s), n_thr) for s in range(0, n_images, 7)]
        for matches in (whole, concat(chunks)):
            precision, recall = curves(matches, p.recThrs, p.maxDets)
            assert np.array_equal(precision, ref_precision[:, :, k]), k  # bit-identical, not approximately
            assert np.array_equal(recall, ref_recall[:, k]), k
