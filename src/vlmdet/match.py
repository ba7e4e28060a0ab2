"""One-to-one matching of predicted boxes to ground-truth boxes (Hungarian, with a gate and dummies).

The assignment is solved exactly with `scipy.optimize.linear_sum_assignment` on an augmented square
cost matrix of size (P + G) x (G + P):

                      G real GT columns            P dummy columns ("pred unmatched")
    P pred rows    [ 1 - IoU  or  inf        |    fp_cost                         ]
    G dummy rows   [ fn_cost ("GT unmatched")|    0                               ]

A pred/GT pair is feasible when IoU >= `iou_gate` (and, when labels are given, the labels are
equal); infeasible pairs cost `inf` and are never chosen. The result minimises
    sum over pairs (1 - IoU) + fp_cost * #unmatched preds + fn_cost * #unmatched GT,
so with the default costs (fp_cost + fn_cost = 2 > 1 - IoU) it matches as many feasible pairs as
possible, and among those maximises the summed IoU. Unlike greedy-by-IoU it never lets one
high-IoU pair block two good ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from vlmdet.boxes import box_iou


@dataclass(slots=True)
class MatchResult:
    """`pairs` are `(pred index, gt index)` sorted by pred index, `ious[i]` is the IoU of `pairs[i]`;
    `unmatched_pred` / `unmatched_gt` are ascending indices."""

    pairs: list[tuple[int, int]] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)
    unmatched_pred: list[int] = field(default_factory=list)
    unmatched_gt: list[int] = field(default_factory=list)


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {arr.shape}")
    return arr


def hungarian_match(
    pred_boxes,
    gt_boxes,
    iou_gate: float = 0.3,
    fp_cost: float = 1.0,
    fn_cost: float = 1.0,
    pred_labels: Sequence[Hashable] | None = None,
    gt_labels: Sequence[Hashable] | None = None,
) -> MatchResult:
    """Match `pred_boxes [P,4]` to `gt_boxes [G,4]` (lists, numpy arrays or anything `np.asarray`
    takes; both in one unit: bins or pixels). With `pred_labels` (len P) and `gt_labels` (len G),
    only pairs with equal labels may match (class-aware); without them matching is class-agnostic."""
    pred = _as_boxes(pred_boxes)
    gt = _as_boxes(gt_boxes)
    n_pred, n_gt = len(pred), len(gt)
    if (pred_labels is None) != (gt_labels is None):
        raise ValueError("give both pred_labels and gt_labels, or neither")
    if pred_labels is not None and (len(pred_labels) != n_pred or len(gt_labels) != n_gt):
        raise ValueError(f"labels ({len(pred_labels)}, {len(gt_labels)}) do not match boxes ({n_pred}, {n_gt})")
    if n_pred == 0 or n_gt == 0:
        return MatchResult([], [], list(range(n_pred)), list(range(n_gt)))

    iou = box_iou(pred, gt)  # [P, G]
    feasible = iou >= iou_gate
    if pred_labels is not None:
        feasible &= np.asarray([[p == g for g in gt_labels] for p in pred_labels], dtype=bool)

    cost = np.zeros((n_pred + n_gt, n_gt + n_pred))
    cost[:n_pred, :n_gt] = np.where(feasible, 1.0 - iou, np.inf)
    cost[:n_pred, n_gt:] = fp_cost
    cost[n_pred:, :n_gt] = fn_cost
    rows, cols = linear_sum_assignment(cost)

    pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if r < n_pred and c < n_gt]
    pairs.sort()
    matched_pred = {p for p, _ in pairs}
    matched_gt = {g for _, g in pairs}
    return MatchResult(
        pairs=pairs,
        ious=[float(iou[p, g]) for p, g in pairs],
        unmatched_pred=[i for i in range(n_pred) if i not in matched_pred],
        unmatched_gt=[j for j in range(n_gt) if j not in matched_gt],
    )
