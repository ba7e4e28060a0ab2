"""losses.py against naive python references (explicit loops over floats) and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from vlmdet import losses as L

# ------------------------------------------------------------------------------------------ helpers


def _lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def _gauss(t, sigma, k=1000):
    w = [math.exp(-0.5 * ((i - t) / sigma) ** 2) for i in range(k)]
    s = sum(w)
    return [v / s for v in w]


def _rand_coord_logits(n, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1000, generator=g, dtype=torch.float64) * scale


# ------------------------------------------------------------------------------------------ token CE


def test_token_ce_matches_weighted_mean_reference():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [2.0, -1.0, 0.0], [0.3, 0.2, 0.1]])
    labels = torch.tensor([1, 2, 0, -100])
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0])
    num = den = 0.0
    for row, y, w in zip(logits.tolist(), labels.tolist(), weights.tolist()):
        if y < 0:
            continue
        num += w * (_lse(row) - row[y])
        den += w
    assert L.token_ce(logits, labels, weights).item() == pytest.approx(num / den, rel=1e-6)


def test_token_ce_zero_weight_is_zero_and_has_grad():
    logits = torch.randn(3, 5, requires_grad=True)
    out = L.token_ce(logits, torch.tensor([0, 1, 2]), torch.zeros(3))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 5))


# ------------------------------------------------------------------------------------------ coord terms


@pytest.mark.parametrize("t", [0, 1, 500, 998, 999])
def test_coord_ce_soft_ce_w1_match_loop_reference(t):
    s = _rand_coord_logits(2, seed=t)
    tb = torch.tensor([t, (t * 7) % 1000])
    ce = L.coord_ce(s, tb)
    sce = L.coord_soft_ce(s, tb, sigma=2.0)
    w1 = L.coord_w1(s, tb, sigma=2.0)
    for r in range(2):
        row = s[r].tolist()
        tt = int(tb[r])
        p = _softmax(row)
        q = _gauss(tt, 2.0)
        lse = _lse(row)
        assert ce[r].item() == pytest.approx(lse - row[tt], rel=1e-5)
        assert sce[r].item() == pytest.approx(-sum(qi * (x - lse) for qi, x in zip(q, row)), rel=1e-5)
        cp = cq = acc = 0.0
        for i in range(1000):
            cp += p[i]
            cq += q[i]
            acc += abs(cp - cq)
        assert w1[r].item() == pytest.approx(acc / 999, rel=1e-4, abs=1e-6)


def test_w1_hand_values():
    # a (near) delta at bin 0 against a delta target at 999 (sigma -> one-hot): W1 = 1 (the whole range)
    s = torch.full((1, 1000), -1e4)
    s[0, 0] = 0.0
    assert L.coord_w1(s, torch.tensor([999]), sigma=0.0).item() == pytest.approx(1.0, abs=1e-6)
    # delta at 100 vs delta at 400: 300 bins apart -> 300/999
    s = torch.full((1, 1000), -1e4)
    s[0, 100] = 0.0
    assert L.coord_w1(s, torch.tensor([400]), sigma=0.0).item() == pytest.approx(300 / 999, abs=1e-6)
    # perfect prediction of the Gaussian target: W1 = 0, soft CE = entropy of q
    q = L.gaussian_targets(torch.tensor([321]), 2.0)
    s = torch.log(q)
    assert L.coord_w1(s, torch.tensor([321])).item() == pytest.approx(0.0, abs=1e-6)
    h = -(q * torch.log(q.clamp_min(1e-30))).sum().item()
    assert L.coord_soft_ce(s, torch.tensor([321])).item() == pytest.approx(h, rel=1e-4)


def test_gaussian_target_normalized_and_truncated_at_edges():
    q = L.gaussian_targets(torch.tensor([0, 999, 500]), sigma=2.0)
    assert torch.allclose(q.sum(-1), torch.ones(3))
    ref = _gauss(0, 2.0)
    assert q[0, :5].tolist() == pytest.approx(ref[:5], rel=1e-5)
    assert q[0].argmax().item() == 0 and q[1].argmax().item() == 999


def test_expected_bins_and_half_half():
    s = torch.full((1, 1000), -1e4)
    s[0, 0] = s[0, 999] = 0.0
    assert L.expected_bins(s).item() == pytest.approx(499.5)  # normalized 0.5, not an argmax
    s = _rand_coord_logits(3, seed=3)
    for T in (1.0, 0.5, 2.0):
        e = L.expected_bins(s, T)
        for r in range(3):
            p = _softmax([x / T for x in s[r].tolist()])
            assert e[r].item() == pytest.approx(sum(pi * k for k, pi in enumerate(p)), rel=1e-5)


def test_coord_entropy_reference_and_sign():
    s = _rand_coord_logits(2, seed=5)
    h = L.coord_entropy(s, 1.0)
    for r in range(2):
        p = _softmax(s[r].tolist())
        assert h[r].item() == pytest.approx(-sum(pi * math.log(pi) for pi in p if pi > 0), rel=1e-5)
    assert L.coord_entropy(torch.zeros(1, 1000)).item() == pytest.approx(math.log(1000), rel=1e-6)
    # +weight sharpens: a gradient step that lowers the loss raises the top probability
    x = s[:1].clone().float().requires_grad_(True)
    L.coord_entropy(x).sum().backward()
    x2 = x.detach() - 1.0 * x.grad
    assert torch.softmax(x2, -1).max() > torch.softmax(x.detach(), -1).max()


# ------------------------------------------------------------------------------------------ gates


def _gate_ref(row, cids, T):
    z = []
    for v in row:
        v = 0.0 if math.isnan(v) else v
        v = max(-1e4, min(1e4, v))
        z.append(v / T)
    return max(0.0, _lse(z) - _lse([z[c] for c in cids]))


@pytest.mark.parametrize("T", [1.0, 0.5, 3.0])
def test_coord_gate_matches_reference(T):
    g = torch.Generator().manual_seed(1)
    V = 1300
    cids = torch.randperm(V, generator=g)[:1000]
    logits = torch.randn(4, V, generator=g, dtype=torch.float64) * 2
    gate = L.coord_gate_loss(logits, cids, T)
    for r in range(4):
        assert gate[r].item() == pytest.approx(_gate_ref(logits[r].tolist(), cids.tolist(), T), rel=1e-5)
    mass = L.coord_vocab_mass(logits, cids, T)
    for r in range(4):
        p = _softmax([x / T for x in logits[r].tolist()])
        assert mass[r].item() == pytest.approx(sum(p[c] for c in cids.tolist()), rel=1e-5)


@pytest.mark.parametrize(
    "bad, expect_finite",
    [(float("nan"), True), (float("inf"), True), (float("-inf"), True)],
)
def test_coord_gate_sanitizes_nonfinite(bad, expect_finite):
    V = 1010
    cids = list(range(10, 1010))
    logits = torch.zeros(3, V)
    logits[0, 0] = bad  # non-coord
    logits[1, 500] = bad  # coord
    logits[2, :] = bad  # everything
    gate = L.coord_gate_loss(logits, cids)
    assert torch.isfinite(gate).all() == expect_finite
    for r in range(3):
        ref_row = [max(-1e4, min(1e4, v)) if not math.isnan(v) else 0.0 for v in logits[r].tolist()]
        assert gate[r].item() == pytest.approx(_gate_ref(ref_row, cids, 1.0), rel=1e-6, abs=2e-3)  # float32 ulp at 1e4 is ~1e-3
    if bad == float("inf"):
        assert gate[0].item() == pytest.approx(1e4 - math.log(1000), rel=1e-6)  # text token at +1e4
        assert gate[1].item() == pytest.approx(0.0, abs=1e-6)


def test_text_gate_matches_reference_and_is_stable():
    V = 1200
    cids = list(range(200, 1200))
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, V, generator=g, dtype=torch.float64)
    logits[2, 200:] += 60.0  # coord mass ~ 1 - 1e-26: naive -log(1 - p) would be inf
    tg = L.text_gate_loss(logits, cids)
    for r in range(2):
        p = _softmax(logits[r].tolist())
        mass = sum(p[c] for c in cids)
        assert tg[r].item() == pytest.approx(-math.log(1 - mass), rel=1e-5)
    row = logits[2].tolist()
    ref = _lse(row) - _lse(row[:200])
    assert math.isfinite(tg[2].item()) and tg[2].item() == pytest.approx(ref, rel=1e-6)
    assert tg[2].item() > 55


# ------------------------------------------------------------------------------------------ the blind spot


def test_seed_blind_spot_coord_sliced_terms_ignore_text_mass_gate_does_not():
    """Raising every non-coord logit by c moves probability to text tokens at the coord slot: the
    coord-sliced terms cannot see it (identical values), the gate rises monotonically (see docs/TRAINING.md)."""
    V = 1100
    cids = torch.arange(100, 1100)
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, V, generator=g)
    tb = torch.tensor([17, 640])
    base = None
    prev_gate = None
    for c in [-5.0, 0.0, 2.0, 5.0, 10.0, 20.0]:
        zc = z.clone()
        mask = torch.ones(V, dtype=torch.bool)
        mask[cids] = False
        zc[:, mask] += c
        s = zc[:, cids]
        row = (
            L.coord_ce(s, tb),
            L.coord_soft_ce(s, tb),
            L.coord_w1(s, tb),
            L.expected_bins(s),
            L.coord_entropy(s),
        )
        gate = L.coord_gate_loss(zc, cids)
        if base is None:
            base = row
        else:
            for a, b in zip(row, base):
                assert torch.equal(a, b)
            assert (gate > prev_gate).all()
        prev_gate = gate
    # at c = 20 almost no mass is left on coords: gate ~ c + log(#text) - lse(coord) >> 1
    assert (prev_gate > 10).all()


# ------------------------------------------------------------------------------------------ boxes


def _ciou_ref(a, b, eps=1e-7):
    """1 - CIoU with vlmdet.boxes' conventions (eps added to union, c^2 and the aspect denominators)."""

    def canon(x):
        x1, y1, x2, y2 = x
        c = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
        return [min(max(v, 0.0), 1.0) for v in c]

    a, b = canon(a), canon(b)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    wa, ha, wb, hb = a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1]
    iou = inter / (wa * ha + wb * hb - inter + eps)
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2 + eps
    rho2 = ((a[0] + a[2] - b[0] - b[2]) / 2) ** 2 + ((a[1] + a[3] - b[1] - b[3]) / 2) ** 2
    v = 4 / math.pi**2 * (math.atan(wb / (hb + eps)) - math.atan(wa / (ha + eps))) ** 2
    alpha = v / (1 - iou + v + eps)
    return 1 - (iou - rho2 / c2 - alpha * v)


@pytest.mark.parametrize(
    "pred, gt, hand",
    [
        ([0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5], 0.0),  # identical
        ([0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], 1.0 + 0.5 / 2.0),  # touching corners: IoU 0, rho^2/c^2 = 0.5/2
        ([0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.4, 0.4], 1 - 0.25 + (0.02 / 0.32)),  # nested squares, same aspect
        ([0.5, 0.5, 0.1, 0.1], [0.1, 0.1, 0.5, 0.5], 0.0),  # flipped corners canonicalize to the GT
        ([-0.5, -0.2, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], 0.0),  # clipped to the GT
        ([0.3, 0.3, 0.3, 0.3], [0.1, 0.2, 0.6, 0.4], None),  # degenerate prediction: finite
        ([0.0, 0.0, 0.1, 0.4], [0.2, 0.1, 0.9, 0.3], None),
    ],
)
def test_box_ciou_hand_and_reference(pred, gt, hand):
    out = L.box_ciou(torch.tensor([pred], dtype=torch.float64), torch.tensor([gt], dtype=torch.float64))
    assert torch.isfinite(out).all()
    assert out.item() == pytest.approx(_ciou_ref(pred, gt), abs=1e-6)
    if hand is not None:
        assert out.item() == pytest.approx(hand, abs=1e-6)


def test_box_smoothl1_hand_values():
    pred = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]])
    gt = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 1.0, 0.0]])
    out = L.box_smoothl1(pred, gt, beta=1.0)
    assert out.tolist() == pytest.approx([0.0, (0.5 * 0.25 + 0.5 * 1.0) / 4])
    out = L.box_smoothl1(pred, gt, beta=0.1)  # |d| >= beta -> |d| - beta/2
    assert out[1].item() == pytest.approx(((0.5 - 0.05) + (1.0 - 0.05)) / 4)


# ------------------------------------------------------------------------------------------ gradients


def test_gradients_are_finite_and_point_the_right_way():
    V = 1050
    cids = torch.arange(50, 1050)
    z = torch.randn(3, V, requires_grad=True)
    tb = torch.tensor([10, 500, 990])
    terms = {
        "coord_ce": L.coord_ce(z[:, cids], tb),
        "soft_ce": L.coord_soft_ce(z[:, cids], tb),
        "w1": L.coord_w1(z[:, cids], tb),
        "entropy": L.coord_entropy(z[:, cids]),
        "coord_gate": L.coord_gate_loss(z, cids),
        "text_gate": L.text_gate_loss(z, cids),
    }
    for name, val in terms.items():
        (g,) = torch.autograd.grad(val.sum(), z)
        assert torch.isfinite(g).all(), name
        assert g.abs().sum() > 0, name
    # coord CE / soft CE: descending the gradient raises the target's logit relative to the rest
    (g,) = torch.autograd.grad(L.coord_ce(z[:, cids], tb).sum(), z)
    for r, t in enumerate(tb.tolist()):
        assert g[r, 50 + t] < 0
    # the gate pushes every coord logit up and every text logit down; coord-sliced terms leave text logits alone
    (g,) = torch.autograd.grad(L.coord_gate_loss(z, cids).sum(), z)
    assert (g[:, cids] <= 0).all() and (g[:, :50] > 0).all()
    (g,) = torch.autograd.grad(L.coord_w1(z[:, cids], tb).sum(), z)
    assert (g[:, :50] == 0).all()
    # CIoU / SmoothL1 gradients move the prediction towards the GT
    pred = torch.tensor([[0.2, 0.2, 0.4, 0.5]], requires_grad=True)
    gt = torch.tensor([[0.3, 0.1, 0.6, 0.5]])
    for fn in (L.box_ciou, lambda p, q: L.box_smoothl1(p, q, 1.0)):
        (g,) = torch.autograd.grad(fn(pred, gt).sum(), pred)
        moved = pred.detach() - 0.05 * g / g.norm()
        assert fn(moved, gt).item() < fn(pred.detach(), gt).item()



def test_token_ce_gradient_matches_autograd_reference_and_gradcheck():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 8, -100, 2, 2])
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.0, 1.0], dtype=torch.float64)

    def ref(z):
        ce = torch.nn.functional.cross_entropy(z, labels.clamp_min(0), reduction="none")
        w = weights * (labels >= 0)
        return (w * ce).sum() / w.sum()

    (g1,) = torch.autograd.grad(L.token_ce(logits, labels, weights) * 3.0, logits)
    (g2,) = torch.autograd.grad(ref(logits) * 3.0, logits)
    assert L.token_ce(logits, labels, weights).item() == pytest.approx(ref(logits).item(), rel=1e-6)
    torch.testing.assert_close(g1.double(), g2, rtol=1e-5, atol=1e-7)
    # the custom backward against numerical differences (float64 end to end)
    w = weights * (labels >= 0)
    assert torch.autograd.gradcheck(lambda z: L._WeightedCE.apply(z, labels.clamp_min(0), w / w.sum()), (logits,))
