"""boxes.py: hand-computed tables for area / IoU / CIoU / canonicalize, torch and numpy agreeing."""

import math

import numpy as np
import pytest
import torch

from vlmdet.boxes import box_area, box_iou, canonicalize, pairwise_ciou

# (box a, box b, IoU by hand)
IOU_TABLE = [
    ("identical", [0, 0, 2, 2], [0, 0, 2, 2], 1.0),
    ("disjoint", [0, 0, 1, 1], [2, 2, 3, 3], 0.0),
    ("nested", [0, 0, 4, 4], [1, 1, 3, 3], 4 / 16),
    ("touching edge", [0, 0, 1, 1], [1, 0, 2, 1], 0.0),
    ("half overlap", [0, 0, 2, 2], [1, 0, 3, 2], 2 / 6),
    ("corner overlap", [0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),
    ("zero-area vs box", [1, 1, 1, 1], [0, 0, 2, 2], 0.0),
    ("zero-area vs zero-area", [1, 1, 1, 1], [1, 1, 1, 1], 0.0),
    ("line inside box", [0, 1, 2, 1], [0, 0, 2, 2], 0.0),
    ("inverted box counts as empty", [2, 2, 0, 0], [0, 0, 2, 2], 0.0),
]


@pytest.mark.parametrize("name,a,b,expected", IOU_TABLE, ids=[r[0] for r in IOU_TABLE])
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_box_iou_table(name, a, b, expected, backend):
    conv = (lambda x: torch.tensor(x, dtype=torch.float64)) if backend == "torch" else (lambda x: np.array(x, float))
    got = box_iou(conv([a]), conv([b]))
    assert got.shape == (1, 1)
    assert float(got[0, 0]) == pytest.approx(expected, abs=1e-12)
    # symmetric
    assert float(box_iou(conv([b]), conv([a]))[0, 0]) == pytest.approx(expected, abs=1e-12)


def test_box_iou_matrix_shape_and_entries():
    a = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [10, 10, 11, 11]])
    b = torch.tensor([[0.0, 0, 2, 2], [1, 0, 3, 2]])
    got = box_iou(a, b)
    assert got.shape == (3, 2)
    expected = torch.tensor([[1.0, 2 / 6], [1 / 7, 2 / 6], [0.0, 0.0]])
    assert torch.allclose(got, expected, atol=1e-6)


def test_box_area_table():
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [3, 3, 1, 1], [0.5, 0.25, 1.0, 1.0]])
    assert box_area(boxes).tolist() == [6.0, 0.0, 0.0, 0.375]
    assert box_area(torch.tensor(boxes)).tolist() == [6.0, 0.0, 0.0, 0.375]
    # leading dims are kept
    assert box_area(np.zeros((2, 3, 4))).shape == (2, 3)


def naive_ciou(a, b, eps=1e-7):
    """The CIoU formula written out per pair with math only (independent of boxes.py)."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    wa, ha, wb, hb = max(ax2 - ax1, 0), max(ay2 - ay1, 0), max(bx2 - bx1, 0), max(by2 - by1, 0)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    iou = inter / (wa * ha + wb * hb - inter + eps)
    cx_a, cy_a, cx_b, cy_b = (ax1 + ax2) / 2, (ay1 + ay2) / 2, (bx1 + bx2) / 2, (by1 + by2) / 2
    rho2 = (cx_a - cx_b) ** 2 + (cy_a - cy_b) ** 2
    c2 = (max(ax2, bx2) - min(ax1, bx1)) ** 2 + (max(ay2, by2) - min(ay1, by1)) ** 2 + eps
    v = 4 / math.pi**2 * (math.atan(wb / (hb + eps)) - math.atan(wa / (ha + eps))) ** 2
    alpha = v / (1 - iou + v + eps)
    return iou - rho2 / c2 - alpha * v


def test_ciou_identical_is_one():
    a = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(pairwise_ciou(a, a.clone()), torch.ones(2, dtype=torch.float64), atol=1e-5)


def test_ciou_hand_value_same_shape_shifted():
    # two unit squares, b shifted by 1 in x: IoU 0, rho^2 = 1, enclosing 2x1 -> c^2 = 5, v = 0
    a = np.array([[0.0, 0.0, 1.0, 1.0]])
    b = np.array([[1.0, 0.0, 2.0, 1.0]])
    assert pairwise_ciou(a, b)[0] == pytest.approx(-1 / 5, abs=1e-6)
    # nested, same centre and aspect ratio: CIoU = IoU
    a = np.array([[0.0, 0.0, 4.0, 4.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0]])
    assert pairwise_ciou(a, b)[0] == pytest.approx(0.25, abs=1e-6)


def test_ciou_matches_naive_formula_on_random_pairs():
    gen = np.random.default_rng(0)
    xy = gen.uniform(0, 1, size=(200, 2, 2))
    a = np.stack([np.minimum(xy[:, 0, 0], xy[:, 0, 1]), np.minimum(xy[:, 1, 0], xy[:, 1, 1]),
                  np.maximum(xy[:, 0, 0], xy[:, 0, 1]), np.maximum(xy[:, 1, 0], xy[:, 1, 1])], axis=1)
    b = np.roll(a, 1, axis=0)
    b[::7] = a[::7]  # some identical pairs
    expected = np.array([naive_ciou(p, q) for p, q in zip(a, b)])
    got_np = pairwise_ciou(a, b)
    got_t = pairwise_ciou(torch.tensor(a), torch.tensor(b)).numpy()
    assert got_np.shape == (200,)
    np.testing.assert_allclose(got_np, expected, atol=1e-9)
    np.testing.assert_allclose(got_t, expected, atol=1e-9)
    assert (got_np <= 1 + 1e-9).all() and (got_np >= -1 - 1e-9).all()


def test_ciou_zero_area_is_finite_and_differentiable():
    a = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.2, 0.2, 0.6, 0.2]], requires_grad=True)
    b = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.1, 0.1, 0.5, 0.5]])
    c = pairwise_ciou(a, b)
    assert torch.isfinite(c).all()
    assert float(c[0].detach()) == pytest.approx(0.0, abs=1e-6)
    (1 - c).sum().backward()
    assert torch.isfinite(a.grad).all()
    assert a.grad[1].abs().sum() > 0


def test_ciou_gradient_moves_pred_towards_target():
    pred = torch.tensor([[0.1, 0.1, 0.4, 0.4]], requires_grad=True)
    gt = torch.tensor([[0.3, 0.3, 0.7, 0.7]])
    loss = (1 - pairwise_ciou(pred, gt)).sum()
    loss.backward()
    # gradient descent step increases CIoU
    with torch.no_grad():
        stepped = pred - 0.05 * pred.grad
    assert pairwise_ciou(stepped, gt) > pairwise_ciou(pred.detach(), gt)


CANON_TABLE = [
    ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]),
    ([0.3, 0.4, 0.1, 0.2], [0.1, 0.2, 0.3, 0.4]),
    ([0.5, 1.2, -0.1, 0.3], [0.0, 0.3, 0.5, 1.0]),
    ([-1.0, -1.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]),
]


@pytest.mark.parametrize("box,expected", CANON_TABLE)
def test_canonicalize_table(box, expected):
    np.testing.assert_allclose(canonicalize(np.array([box])), [expected])
    got = canonicalize(torch.tensor([[box, box]]))
    assert got.shape == (1, 2, 4)
    assert torch.allclose(got, torch.tensor([[expected, expected]]))
