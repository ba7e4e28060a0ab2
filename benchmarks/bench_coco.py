"""COCO bbox evaluation time: faster-coco-eval (what vlmdet uses) vs pycocotools, side by side.

Both libraries score the same generated detection set (same COCO dicts, built by
`vlmdet.evaluate.detection.coco_inputs` from a `DetectionSet`); each timing covers building the GT index, loading the
results, evaluate, accumulate and summarize. Each library runs `--repeats` times (alternating);
the best time of each is reported, with the ratio and a check that the 12 COCO stats agree.

    .venv/bin/python benchmarks/bench_coco.py [--images 500] [--classes 5] [--preds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import random
import time


def make_set(n_images: int, n_classes: int, preds_per_image: int, seed: int = 0):
    """GT views and predictions (`detection.gt_view` / `(desc, box, score)` shapes): 1-8 GT per
    image; about `preds_per_image` predictions, most of them noisy copies of GT (some relabelled)."""
    rng = random.Random(seed)
    classes = [f"class {k}" for k in range(n_classes)]
    gts, preds = [], {}
    for i in range(n_images):
        w, h = 640, 480
        objs = []
        for _ in range(rng.randint(1, 8)):
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            objs.append((rng.choice(classes), (x1, y1, x1 + bw, y1 + bh)))
        image_id = f"img{i:05d}"
        gts.append((image_id, w, h, objs))
        ps = []
        for _ in range(preds_per_image):
            desc, (x1, y1, x2, y2) = rng.choice(objs)
            s = 0.15 * (x2 - x1)
            box = (x1 + rng.gauss(0, s), y1 + rng.gauss(0, s), x2 + rng.gauss(0, s), y2 + rng.gauss(0, s))
            box = (box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1))
            ps.append((desc if rng.random() < 0.8 else rng.choice(classes), box, rng.random()))
        preds[image_id] = ps
    return gts, preds


def run_faster(dataset, dets):
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *a, **k: None  # noqa: E731
    gt = COCO(copy.deepcopy(dataset), print_function=quiet)
    dt = gt.loadRes(copy.deepcopy(dets))
    ev = COCOeval_faster(gt, dt, "bbox", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(v) for v in ev.stats[:12]]


def run_pycocotools(dataset, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:12]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--preds", type=int, default=10, help="predictions per image")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from vlmdet.evaluate.detection import DetectionSet, coco_inputs

    gts, preds = make_set(args.images, args.classes, args.preds)
    ds = DetectionSet()
    for image_id, w, h, objs in gts:
        ds.add_image(image_id, w, h, objs)
    for image_id, ps in preds.items():
        ds.add_predictions(ds.index[image_id], ps)
    dataset, dets = coco_inputs(ds)
    print(f"set: {args.images} images, {args.classes} classes, {len(dataset['annotations'])} GT boxes, "
          f"{len(dets)} predictions")
    best = {"faster-coco-eval": float("inf"), "pycocotools": float("inf")}
    stats = {}
    for _ in range(args.repeats):
        for name, fn in (("faster-coco-eval", run_faster), ("pycocotools", run_pycocotools)):
            t0 = time.perf_counter()
            stats[name] = fn(dataset, dets)
            best[name] = min(best[name], time.perf_counter() - t0)
    diff = max(abs(a - b) for a, b in zip(stats["faster-coco-eval"], stats["pycocotools"]))
    for name, t in best.items():
        print(f"{name:<17} {t:8.3f} s  (best of {args.repeats})")
    print(f"speed-up          {best['pycocotools'] / best['faster-coco-eval']:8.2f} x")
    print(f"bbox_AP           {stats['faster-coco-eval'][0]:.6f} (max |stat difference| {diff:.1e})")


if __name__ == "__main__":
    main()
