"""match.py: table cases by hand, greedy-vs-Hungarian, labels, and a brute-force cross-check."""

import random

import numpy as np
import pytest

from vlmdet.match import MatchResult, hungarian_match

GT2 = [[0, 0, 10, 10], [20, 20, 30, 30]]


def test_empty_preds():
    r = hungarian_match([], GT2)
    assert (r.pairs, r.ious, r.unmatched_pred, r.unmatched_gt) == ([], [], [], [0, 1])


def test_empty_gt():
    r = hungarian_match(np.array(GT2, float), np.zeros((0, 4)))
    assert (r.pairs, r.unmatched_pred, r.unmatched_gt) == ([], [0, 1], [])


def test_both_empty():
    assert hungarian_match([], []) == MatchResult([], [], [], [])


def test_perfect_match_in_swapped_order():
    r = hungarian_match([GT2[1], GT2[0]], GT2)
    assert r.pairs == [(0, 1), (1, 0)]
    assert r.ious == [1.0, 1.0]
    assert r.unmatched_pred == [] and r.unmatched_gt == []


def test_all_below_gate():
    # IoU of [0,0,10,10] with [5,0,15,10] is 50/150 = 1/3
    preds = [[5, 0, 15, 10], [100, 100, 110, 110]]
    r = hungarian_match(preds, [[0, 0, 10, 10]], iou_gate=0.5)
    assert r.pairs == [] and r.unmatched_pred == [0, 1] and r.unmatched_gt == [0]
    # at a gate of exactly that IoU the pair is feasible (IoU >= gate)
    r = hungarian_match(preds, [[0, 0, 10, 10]], iou_gate=1 / 3)
    assert r.pairs == [(0, 0)] and r.ious == [pytest.approx(1 / 3)]


def test_hungarian_beats_greedy():
    gt = [[0, 0, 10, 10], [4, 0, 14, 10]]
    pred_a = [1, 0, 11, 10]  # IoU 90/110 with gt0, 70/130 with gt1
    pred_b = [-3, 0, 7, 10]  # IoU 70/130 with gt0, 30/170 (< gate) with gt1
    # greedy by IoU would take (a, gt0) first and leave b without a partner: 1 match
    r = hungarian_match([pred_a, pred_b], gt, iou_gate=0.3)
    assert r.pairs == [(0, 1), (1, 0)]
    assert r.ious == [pytest.approx(70 / 130), pytest.approx(70 / 130)]


def test_labels_prevent_match():
    preds = [[0, 0, 10, 10], [20, 20, 30, 30]]
    r = hungarian_match(preds, GT2, pred_labels=["cat", "dog"], gt_labels=["cat", "cat"])
    assert r.pairs == [(0, 0)] and r.unmatched_pred == [1] and r.unmatched_gt == [1]
    # the same boxes class-agnostic
    assert hungarian_match(preds, GT2).pairs == [(0, 0), (1, 1)]


def test_labels_pick_the_right_class_over_higher_iou():
    gt = [[0, 0, 10, 10], [1, 0, 11, 10]]
    r = hungarian_match([[0, 0, 10, 10]], gt, pred_labels=["b"], gt_labels=["a", "b"])
    assert r.pairs == [(0, 1)] and r.ious == [pytest.approx(90 / 110)]


def test_cheap_dummies_leave_poor_pairs_unmatched():
    # 1 - IoU = 2/3 > fp_cost + fn_cost = 0.4: unmatched is cheaper
    r = hungarian_match([[5, 0, 15, 10]], [[0, 0, 10, 10]], iou_gate=0.3, fp_cost=0.2, fn_cost=0.2)
    assert r.pairs == []
    r = hungarian_match([[5, 0, 15, 10]], [[0, 0, 10, 10]], iou_gate=0.3, fp_cost=0.5, fn_cost=0.5)
    assert r.pairs == [(0, 0)]


def test_bad_inputs():
    with pytest.raises(ValueError):
        hungarian_match([[0, 0, 1]], GT2)
    with pytest.raises(ValueError):
        hungarian_match(GT2, GT2, pred_labels=["a", "b"])
    with pytest.raises(ValueError):
        hungarian_match(GT2, GT2, pred_labels=["a"], gt_labels=["a", "b"])


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _brute_force_cost(preds, gts, gate, fp, fn, pl, gl):
    """Minimum total cost over every partial one-to-one matching of feasible pairs."""
    best = float("inf")

    def rec(i, used, cost, k):
        nonlocal best
        if i == len(preds):
            best = min(best, cost + fp * (len(preds) - k) + fn * (len(gts) - k))
            return
        rec(i + 1, used, cost, k)
        for j in range(len(gts)):
            if j in used:
                continue
            iou = _iou(preds[i], gts[j])
            if iou >= gate and (pl is None or pl[i] == gl[j]):
                rec(i + 1, used | {j}, cost + 1 - iou, k + 1)

    rec(0, frozenset(), 0.0, 0)
    return best


def _random_box(rng):
    x, y = rng.uniform(0, 10), rng.uniform(0, 10)
    return [x, y, x + rng.uniform(0.5, 5), y + rng.uniform(0.5, 5)]


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force(seed):
    rng = random.Random(seed)
    preds = [_random_box(rng) for _ in range(rng.randint(0, 5))]
    gts = [_random_box(rng) for _ in range(rng.randint(0, 5))]
    gate = rng.choice([0.0, 0.1, 0.3, 0.5])
    fp, fn = rng.choice([(1.0, 1.0), (0.5, 2.0), (0.2, 0.3)])
    pl = gl = None
    if seed % 2:
        pl = [rng.choice("ab") for _ in preds]
        gl = [rng.choice("ab") for _ in gts]
    r = hungarian_match(preds, gts, gate, fp, fn, pl, gl)
    # a valid matching of feasible pairs, consistent bookkeeping
    assert sorted({p for p, _ in r.pairs} | set(r.unmatched_pred)) == list(range(len(preds)))
    assert sorted({g for _, g in r.pairs} | set(r.unmatched_gt)) == list(range(len(gts)))
    assert len({g for _, g in r.pairs}) == len(r.pairs) == len({p for p, _ in r.pairs})
    assert r.pairs == sorted(r.pairs)
    for (p, g), iou in zip(r.pairs, r.ious):
        assert iou == pytest.approx(_iou(preds[p], gts[g]))
        assert iou >= gate
        if pl is not None:
            assert pl[p] == gl[g]
    cost = sum(1 - i for i in r.ious) + fp * len(r.unmatched_pred) + fn * len(r.unmatched_gt)
    assert cost == pytest.approx(_brute_force_cost(preds, gts, gate, fp, fn, pl, gl), abs=1e-9)
