"""COCO precision/recall curves of one category, accumulated from compact per-detection arrays.

faster-coco-eval's `accumulate` reads the per-image evaluations of a whole category at once, as C++
objects of a few hundred bytes each (one per image x area range), and copies them when it is called:
over 2 KB per image of memory for a class found in most images. This module keeps only what the
accumulation reads, as numpy arrays, so a category's per-image evaluations can be dropped chunk by
chunk (`evaluate.detection.coco_metrics`); its `curves` is COCO's accumulation of them.

`Matches` holds the detections of one category, images in evaluation order and each image's
detections in the order the per-image evaluation left them (score-sorted, cut at the largest maxDets):

- `score [N]` float64: the detection score;
- `rank [N]` int32: the detection's position in its image's list (it counts for a maxDets m when
  `rank < m`);
- `state [A, T, N]` uint8 per area range a and IoU threshold t: `TP` (1, matched to a GT object that
  is not ignored), `FP` (2, unmatched and not ignored) or 0 (ignored: matched to an ignored GT object,
  or unmatched and outside the area range);
- `valid_gt [A]` int64: GT objects of the category not ignored in area range a.

`from_evaluations` builds it from faster-coco-eval's per-image evaluations of one category (read
through their pickle state: `(detection_matches [T*D] GT id or 0, ground_truth_matches,
detection_scores [D], ground_truth_ignores [G], detection_ignores [T*D], matched_annotations)`,
laid out `[t][d]`); `concat` joins the `Matches` of consecutive image chunks.

`curves(matches, rec_thrs, max_dets)` returns `precision [T, R, A, M]` and `recall [T, A, M]`
(float64, -1 where the area range has no valid GT object), the values faster-coco-eval's C++
`accumulate` computes for one category: for each area range and maxDets, detections with
`rank < maxDets` are stably sorted by decreasing score (ties keep image order); the running counts
give recall = TP / valid GT and precision = TP / (TP + FP) (0 before the first counted detection);
recall is the last one (0 without detections); precision is made non-increasing from the right and
read at the first detection whose recall reaches each recall threshold (0 past the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any, Sequence

import numpy as np

TP, FP = 1, 2


@dataclass
class Matches:
    """Compact per-detection match arrays of one category (see the module docstring)."""

    score: np.ndarray  # [N] float64
    rank: np.ndarray  # [N] int32
    state: np.ndarray  # [A, T, N] uint8: TP, FP or 0 (ignored)
    valid_gt: np.ndarray  # [A] int64


def from_evaluations(evaluations: Sequence[Any], n_images: int, n_thresholds: int) -> Matches:
    """`Matches` of faster-coco-eval (>= 1.6.6: pickle state) per-image evaluations of one category, laid out
    `[area range][image]` (`n_images` per area range, each with `n_thresholds` IoU thresholds)."""
    n_areas = len(evaluations) // n_images
    valid_gt = np.empty(n_areas, dtype=np.int64)
    for a in range(n_areas):
        states = [e.__getstate__() for e in evaluations[a * n_images:(a + 1) * n_images]]
        if a == 0:  # the detections and their scores are the same in every area range
            counts = np.fromiter((len(s[2]) for s in states), dtype=np.int64, count=n_images)
            n = int(counts.sum())
            score = np.fromiter(chain.from_iterable(s[2] for s in states), dtype=np.float64, count=n)
            starts = np.cumsum(counts) - counts
            image = np.repeat(np.arange(n_images), counts)
            rank = np.arange(n) - starts[image]
            # detection j, threshold t sits at n_thresholds * starts[image] + t * counts[image] + rank in
            # the concatenation of the images' [t][d] lists
            at = (n_thresholds * starts[image] + rank)[None, :] + np.arange(n_thresholds)[:, None] * counts[image][None, :]
            state = np.empty((n_areas, n_thresholds, n), dtype=np.uint8)
        matched = np.fromiter(chain.from_iterable(s[0] for s in states), dtype=np.int64, count=n * n_thresholds)[at]
        ignored = np.fromiter(chain.from_iterable(s[4] for s in states), dtype=bool, count=n * n_thresholds)[at]
        state[a] = TP * ((matched > 0) & ~ignored) + FP * ((matched == 0) & ~ignored)
        gt_ignored = np.fromiter(chain.from_iterable(s[3] for s in states), dtype=bool)
        valid_gt[a] = len(gt_ignored) - np.count_nonzero(gt_ignored)
    return Matches(score, rank.astype(np.int32), state, valid_gt)


def concat(parts: Sequence[Matches]) -> Matches:
    """One `Matches` of consecutive image chunks, in the given order."""
    return Matches(np.concatenate([p.score for p in parts]), np.concatenate([p.rank for p in parts]),
                   np.concatenate([p.state for p in parts], axis=2), np.sum([p.valid_gt for p in parts], axis=0))


def curves(matches: Matches, rec_thrs: Sequence[float], max_dets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """`(precision [T, R, A, M], recall [T, A, M])` of one category (see the module docstring)."""
    n_areas, n_thr, _ = matches.state.shape
    rec_thrs = np.asarray(rec_thrs, dtype=np.float64)
    precision = np.full((n_thr, len(rec_thrs), n_areas, len(max_dets)), -1.0)
    recall = np.full((n_thr, n_areas, len(max_dets)), -1.0)
    for m, limit in enumerate(max_dets):
        kept = np.flatnonzero(matches.rank < limit)
        order = kept[np.argsort(-matches.score[kept], kind="stable")]
        n = len(order)
        for a in range(n_areas):
            if matches.valid_gt[a] == 0:
                continue
            if n == 0:
                precision[:, :, a, m] = recall[:, a, m] = 0.0
                continue
            for t in range(n_thr):  # one threshold at a time: a few arrays of n, not of T x n
                state = matches.state[a, t, order]
                tp = np.cumsum(state == TP)
                counted = tp + np.cumsum(state == FP)
                rc = tp / matches.valid_gt[a]
                pr = np.divide(tp, counted, out=np.zeros(n), where=counted > 0)
                pr = np.maximum.accumulate(pr[::-1])[::-1]
                recall[t, a, m] = rc[-1]
                at = np.searchsorted(rc, rec_thrs, side="left")
                precision[t, :, a, m] = np.where(at < n, pr[np.minimum(at, n - 1)], 0.0)
    return precision, recall
