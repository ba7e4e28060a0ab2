"""Axis-aligned box geometry: area, IoU matrix, pairwise CIoU, canonicalization.

Boxes are `[..., 4]` arrays `[x1, y1, x2, y2]` in any one unit (pixels, bins or normalized [0, 1]);
every function here is unit-free except `canonicalize`, which clips to the normalized range [0, 1].

Every function takes either `torch.Tensor`s (differentiable; result is a tensor on the same device)
or `numpy.ndarray`s (result is an ndarray), with one code path for both: `_xp` picks the array
module. torch is imported lazily, so numpy users (the matcher, `vlmdet parse`, `vlmdet eval-preds`)
never import it.

Conventions:
- A side with `x2 < x1` (or `y2 < y1`) counts as zero length: `box_area` of an inverted box is 0.
  `canonicalize` first if inverted boxes should be repaired instead.
- IoU is 0 where the union is 0 (two zero-area boxes), never NaN.
"""

from __future__ import annotations

import math

import numpy as np


def _xp(x):
    """The array module of `x`: numpy for ndarrays, else torch."""
    if isinstance(x, np.ndarray):
        return np
    import torch

    return torch


def box_area(boxes):
    """Area of `[..., 4]` boxes -> `[...]`. Negative side lengths count as 0."""
    w = (boxes[..., 2] - boxes[..., 0]).clip(min=0)
    h = (boxes[..., 3] - boxes[..., 1]).clip(min=0)
    return w * h


def _inter_union(a, b, xp):
    """Intersection and union of `[N,4]` x `[M,4]` boxes -> two `[N,M]` arrays."""
    lt = xp.maximum(a[:, None, :2], b[None, :, :2])
    rb = xp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter, union


def box_iou(a, b):
    """IoU matrix of `a [N,4]` and `b [M,4]` -> `[N,M]`; 0 where the union is 0."""
    xp = _xp(a)
    inter, union = _inter_union(a, b, xp)
    safe = xp.where(union > 0, union, xp.ones_like(union))
    return xp.where(union > 0, inter / safe, xp.zeros_like(inter))


def pairwise_ciou(a, b, eps: float = 1e-7):
    """Complete IoU of row-aligned pairs `a [N,4]`, `b [N,4]` -> `[N]` (value in [-1, 1]; the CIoU
    loss is `1 - pairwise_ciou`). `b` plays the ground-truth role in the aspect-ratio term.

        CIoU = IoU - rho^2 / c^2 - alpha * v
        IoU   = inter / (union + eps)
        rho^2 = squared distance between the two box centres
        c^2   = squared diagonal of the smallest box enclosing both, + eps
        v     = 4 / pi^2 * (atan(w_b / (h_b + eps)) - atan(w_a / (h_a + eps)))^2
        alpha = v / (1 - IoU + v + eps)   (a trade-off weight: not differentiated, as in the CIoU paper)

    Side lengths are clipped at 0 (call `canonicalize` first for predicted boxes). Identical boxes of
    positive area give CIoU = 1 up to eps; two identical zero-area boxes give 0.
    """
    xp = _xp(a)
    w_a = (a[:, 2] - a[:, 0]).clip(min=0)
    h_a = (a[:, 3] - a[:, 1]).clip(min=0)
    w_b = (b[:, 2] - b[:, 0]).clip(min=0)
    h_b = (b[:, 3] - b[:, 1]).clip(min=0)

    iw = (xp.minimum(a[:, 2], b[:, 2]) - xp.maximum(a[:, 0], b[:, 0])).clip(min=0)
    ih = (xp.minimum(a[:, 3], b[:, 3]) - xp.maximum(a[:, 1], b[:, 1])).clip(min=0)
    inter = iw * ih
    iou = inter / (w_a * h_a + w_b * h_b - inter + eps)

    cw = xp.maximum(a[:, 2], b[:, 2]) - xp.minimum(a[:, 0], b[:, 0])
    ch = xp.maximum(a[:, 3], b[:, 3]) - xp.minimum(a[:, 1], b[:, 1])
    c2 = cw**2 + ch**2 + eps
    rho2 = ((a[:, 0] + a[:, 2] - b[:, 0] - b[:, 2]) ** 2 + (a[:, 1] + a[:, 3] - b[:, 1] - b[:, 3]) ** 2) / 4

    v = (4 / math.pi**2) * (xp.arctan(w_b / (h_b + eps)) - xp.arctan(w_a / (h_a + eps))) ** 2
    alpha = v / (1 - iou + v + eps)
    if xp is not np:
        alpha = alpha.detach()
    return iou - rho2 / c2 - alpha * v


def canonicalize(boxes):
    """`[..., 4]` normalized boxes -> `[..., 4]` with x1 = min(x1, x2), x2 = max(x1, x2) (same for y),
    then every coordinate clipped to [0, 1]."""
    xp = _xp(boxes)
    x1 = xp.minimum(boxes[..., 0], boxes[..., 2])
    x2 = xp.maximum(boxes[..., 0], boxes[..., 2])
    y1 = xp.minimum(boxes[..., 1], boxes[..., 3])
    y2 = xp.maximum(boxes[..., 1], boxes[..., 3])
    return xp.stack([x1, y1, x2, y2], axis=-1).clip(0, 1)
