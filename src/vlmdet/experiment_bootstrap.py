"""`vlmdet experiment bootstrap --gt GT.jsonl --base NAME=PRED.jsonl --arm NAME=PRED.jsonl[,PRED.jsonl ...] [--arm ...]`:
paired bootstrap over images of the COCO AP difference between detectors scored on the same images.

Each PRED.jsonl is a `vlmdet eval-preds` prediction file (`vlmdet eval` writes one per eval:
`<eval folder>/predictions.jsonl`); GT.jsonl is the data set it was made on. A detector given as several
files (e.g. the same setting trained with several seeds) has as its value the mean of their values, on
the full set and on every sample. A bootstrap sample draws
as many image ids as GT.jsonl has, uniformly with replacement (numpy `default_rng(--seed)`), and
recomputes `--metric` (default `bbox_AP50`) of every detector on that multiset of images: an image
drawn k times counts as k images. The same samples serve every detector (paired), so a sample's
difference arm - base keeps what the two share (which images are hard) out of the spread.

Report per arm: the difference on the full set, the mean of the bootstrap differences, the 95 %
percentile interval (2.5th and 97.5th percentile of the `--samples` differences) and the share of
samples where the arm is ahead; the absolute value of each detector on the full set.

The metric is the project's COCO path (`evaluate.detection.coco_metrics`, faster-coco-eval): COCO's
per-image evaluation of one category does not depend on the other images, so each detector's
per-image results (`COCOeval_faster.evaluate` with `separate_eval`) are computed once, and each sample
only re-accumulates them with the drawn multiplicities. On the full set (every multiplicity 1) this is
`coco_metrics` exactly; on a sample it equals `coco_metrics` of a set where each drawn copy is a
separate image (tests/test_experiment_bootstrap.py checks both). Memory: the per-image results of every
detector stay alive (fine for thousands of images; not meant for a million).

Output `--out FILE.json`: `{"gt", "metric", "samples", "seed", "images", "base", "arms": {name: {...}}}`
(written atomically) and the same as a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vlmdet.errors import UsageError
from vlmdet.evaluate.detection import COCO_KEYS, DetectionSet, _FCE_LABELS, category_ids, coco_inputs
from vlmdet.evaluate.offline_parse import read_ground_truth
from vlmdet.evaluate.offline_preds import read_predictions
from vlmdet.io import atomic_write_json
from vlmdet.options import bounded

LEVEL = 0.95


class PerImageCOCO:
    """COCO bbox metrics of a `DetectionSet` over any multiset of its images.

    `metrics(counts)`: `counts [I]` int, how many times each image (in `ds` order) is in the set;
    returns the `COCO_KEYS` dict (-1 where COCO cannot define a value)."""

    def __init__(self, ds: DetectionSet) -> None:
        from faster_coco_eval import COCO, COCOeval_faster

        self.n_images = len(ds.image_ids)
        cat_id = category_ids(ds)
        gt_cat, gt_image = ds.gt_cat, ds.gt_image
        order = np.argsort(ds.pred_image, kind="stable")
        self.parts = []  # per GT category: (image indices, evaluator, per-image results [area][image])
        for code in sorted(np.unique(gt_cat).tolist(), key=lambda c: cat_id[c]):
            g_rows = np.flatnonzero(gt_cat == code)
            p_rows = order[ds.pred_cat[order] == code]
            images = np.unique(np.concatenate([gt_image[g_rows], ds.pred_image[p_rows]]))
            dataset, dets = coco_inputs(ds, images, g_rows, p_rows, [code])
            gt = COCO(dataset, print_function=_quiet)
            ev = COCOeval_faster(gt, gt.loadRes(dets), "bbox", print_function=_quiet, separate_eval=True)
            ev.evaluate()
            self.parts.append((images, ev, list(ev._evalImgs_cpp)))
        self.cat_ids = sorted(int(cat_id[c]) for c in np.unique(gt_cat).tolist())

    def metrics(self, counts: np.ndarray) -> dict[str, float]:
        if not self.parts:
            return {k: -1.0 for k in COCO_KEYS}
        precision, recall = [], []
        for images, ev, per_image in self.parts:
            n = len(images)
            picks = np.repeat(np.arange(n), counts[images]).tolist()
            n_areas = len(per_image) // n
            ev._evalImgs_cpp = [per_image[a * n + j] for a in range(n_areas) for j in picks]
            ev._paramsEval.imgIds = list(range(1, len(picks) + 1))
            ev.accumulate()
            precision.append(ev.eval["precision"])  # [T, R, 1, A, M]
            recall.append(ev.eval["recall"])  # [T, 1, A, M]
        ev.params.catIds = self.cat_ids
        ev.eval = {"precision": np.concatenate(precision, axis=2), "recall": np.concatenate(recall, axis=1)}
        ev.summarize()
        stats = ev.stats_as_dict
        return {name: float(stats[label]) for label, name in _FCE_LABELS.items()}


def _quiet(*args, **kwargs) -> None:
    pass


def _value(detectors: list[PerImageCOCO], counts: np.ndarray, metric: str) -> float:
    return float(np.mean([d.metrics(counts)[metric] for d in detectors]))


def paired_bootstrap(base: PerImageCOCO | list[PerImageCOCO], arms: dict[str, PerImageCOCO | list[PerImageCOCO]],
                     metric: str = "bbox_AP50", samples: int = 1000, seed: int = 0) -> dict:
    """The bootstrap of the module docstring: `{"base": value on the full set, "arms": {name: {"value",
    "delta", "boot_mean", "lo", "hi", "p_ahead"}}}` (`delta` = arm - base on the full set; `lo`/`hi` the
    95 % percentile interval of the sample differences; `p_ahead` the share of samples with arm > base).
    A list of detectors counts as one whose value is their mean."""
    base = base if isinstance(base, list) else [base]
    arms = {name: a if isinstance(a, list) else [a] for name, a in arms.items()}
    n = base[0].n_images
    if any(d.n_images != n for d in base + [d for a in arms.values() for d in a]):
        raise UsageError("every prediction file must be scored against the same GT images")
    rng = np.random.default_rng(seed)
    diffs = {name: np.empty(samples) for name in arms}
    for s in range(samples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        b = _value(base, counts, metric)
        for name, a in arms.items():
            diffs[name][s] = _value(a, counts, metric) - b
    ones = np.ones(n, dtype=np.int64)
    b_full = _value(base, ones, metric)
    out = {"base": b_full, "arms": {}}
    for name, a in arms.items():
        v = _value(a, ones, metric)
        lo, hi = np.percentile(diffs[name], [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        out["arms"][name] = {"value": v, "delta": v - b_full, "boot_mean": float(diffs[name].mean()),
                             "lo": float(lo), "hi": float(hi), "p_ahead": float((diffs[name] > 0).mean())}
    return out


def _named(text: str, option: str) -> tuple[str, list[Path]]:
    name, sep, paths = text.partition("=")
    if not sep or not name or not paths or not all(paths.split(",")):
        raise UsageError(f"{option} {text!r}: expected NAME=PRED.jsonl[,PRED.jsonl ...]")
    for path in paths.split(","):
        if not Path(path).is_file():
            raise UsageError(f"{option} {text!r}: no such file {path}")
    return name, [Path(p) for p in paths.split(",")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt", type=Path, required=True, help="GT JSONL the predictions were made on")
    p.add_argument("--base", required=True, metavar="NAME=PRED.jsonl[,...]", help="the detector every arm is compared with")
    p.add_argument("--arm", action="append", required=True, metavar="NAME=PRED.jsonl[,...]",
                   help="a detector (repeatable); several files: their mean (e.g. one file per seed)")
    p.add_argument("--metric", choices=COCO_KEYS, default="bbox_AP50", help="COCO metric (default bbox_AP50)")
    p.add_argument("--samples", type=bounded(int, lambda v: v >= 10, ">= 10"), default=1000,
                   help="bootstrap samples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draws (default 0)")
    p.add_argument("--out", type=Path, default=None, help="JSON result (default: only the table on stdout)")


def run(args: argparse.Namespace) -> int:
    base_name, base_path = _named(args.base, "--base")
    named = [_named(a, "--arm") for a in args.arm]
    if len({n for n, _ in named} | {base_name}) != len(named) + 1:
        raise UsageError("--base / --arm: every NAME must differ")

    def load(paths: list[Path]) -> list[PerImageCOCO]:
        out = []
        for path in paths:
            ds = read_ground_truth(args.gt)
            read_predictions(path, ds)
            out.append(PerImageCOCO(ds))
        return out

    base = load(base_path)
    res = paired_bootstrap(base, {n: load(p) for n, p in named}, args.metric, args.samples, args.seed)
    print(f"{args.metric} on {base[0].n_images} images of {args.gt}: {base_name} {res['base']:.3f}; paired bootstrap, "
          f"{args.samples} samples (seed {args.seed}), {LEVEL:.0%} percentile interval of arm - {base_name}\n")
    print(f"| arm | {args.metric} | Δ vs {base_name} | 95 % interval | share of samples ahead |\n|---|---|---|---|---|")
    for name, r in res["arms"].items():
        mark = "**" if r["lo"] > 0 or r["hi"] < 0 else ""
        print(f"| {name} | {r['value']:.3f} | {mark}{r['delta']:+.3f}{mark} | [{r['lo']:+.3f}, {r['hi']:+.3f}] "
              f"| {r['p_ahead']:.2f} |")
    if args.out is not None:
        atomic_write_json(args.out, {"gt": str(args.gt), "metric": args.metric, "samples": args.samples,
                                     "seed": args.seed, "images": base[0].n_images, "base_name": base_name, **res})
        print(f"\nwrote {args.out}")
    return 0
