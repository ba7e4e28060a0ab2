"""train/objective.py: weights in one place, named coord terms, coord_diag, metric window."""

from __future__ import annotations

import math

import pytest
import torch

from vlmdet.config import LossesConfig
from vlmdet.model.chat import COORD, DESC, IGNORE, STRUCT
from vlmdet.train import objective as O
from vlmdet.train.trainer import MetricWindow


def _t(v, grad=False):
    return torch.tensor(float(v), requires_grad=grad)


@pytest.mark.parametrize(
    "weights, expect",
    [
        ({"token_ce": 1.0}, 2.0),
        ({"token_ce": 1.0, "coord_gate": 0.5}, 2.0 + 0.5 * 4.0),
        ({"token_ce": 0.0, "coord_gate": 2.0}, 8.0),
        ({"token_ce": 1.0, "coord_gate": -1.0}, 2.0),  # negative weight on an unsigned term: off
        ({"token_ce": 1.0, "entropy": -0.1}, 2.0 - 0.1 * 3.0),  # entropy may be negative (flattens)
        ({"token_ce": 1.0, "entropy": 0.2, "w1": 0.0}, 2.0 + 0.2 * 3.0),
    ],
)
def test_combine_weights_active_terms_only(weights, expect):
    terms = {"token_ce": _t(2.0), "coord_gate": _t(4.0), "entropy": _t(3.0), "w1": _t(100.0)}
    assert O.combine(terms, weights).item() == pytest.approx(expect)


def test_combine_with_losses_config_and_gradient_flows_only_to_active_terms():
    cfg = LossesConfig(token_ce=1.0, coord_gate=0.5, soft_ce=0.0)
    a, b, c = _t(1.0, True), _t(2.0, True), _t(3.0, True)
    total = O.combine({"token_ce": a, "coord_gate": b, "soft_ce": c}, O.weights(cfg))
    assert total.item() == pytest.approx(2.0)
    total.backward()
    assert a.grad.item() == 1.0 and b.grad.item() == 0.5 and c.grad is None


def test_combine_errors():
    with pytest.raises(ValueError, match="every weight is 0"):
        O.combine({"w1": _t(1.0)}, {"w1": 0.0})
    with pytest.raises(ValueError, match="scalar"):
        O.combine({"w1": torch.ones(3)}, {"w1": 1.0})


def test_log_terms_unweighted_with_total():
    logs = O.log_terms({"token_ce": _t(2.5), "coord_gate": _t(0.25)}, _t(7.0))
    assert logs == {"loss/token_ce": 2.5, "loss/coord_gate": 0.25, "loss/total": 7.0}


# --------------------------------------------------------------------------------------------- coord terms


def coord_terms(coord_rows, bins, coord_ids, cfg):
    """The coord terms of the loss table at coord rows only (no CE / text rows)."""
    none = coord_rows[:0]
    x = O.Logits(ce=none, ce_labels=bins[:0], ce_weights=bins[:0].float(), text=none, text_rows=bins[:0].bool(),
                 coord=coord_rows, coord_bins=bins, coord_ids=torch.as_tensor(coord_ids))
    return O.loss_terms(x, O.hyper(cfg), O.active(O.weights(cfg)), names=O.COORD_TERMS)


def _peaked_rows(bins, V=1100, coord_offset=100, peak=30.0, text_logit=None):
    """Full-vocab rows with coord ids 100..1099 and a sharp peak at each target bin."""
    z = torch.zeros(len(bins), V)
    for r, b in enumerate(bins):
        z[r, coord_offset + b] = peak
    if text_logit is not None:
        z[:, :coord_offset] = text_logit
    return z


def test_coord_terms_perfect_prediction_is_near_zero_and_keys_complete():
    coord_ids = list(range(100, 1100))
    bins = [10, 20, 500, 600, 0, 0, 999, 999]
    z = _peaked_rows(bins)
    cfg = LossesConfig(coord_ce=1.0, smoothl1=1.0, ciou=1.0, coord_gate=1.0)
    terms = coord_terms(z, torch.tensor(bins), coord_ids, cfg)
    assert set(terms) == set(O.COORD_TERMS)
    for k in ("coord_ce", "smoothl1", "ciou", "coord_gate", "entropy"):
        assert terms[k].item() == pytest.approx(0.0, abs=1e-4), k
    # soft CE against a sigma=2 Gaussian is the cross-entropy H(q, delta) > 0; W1 is small but positive
    assert terms["soft_ce"].item() > 1.0
    assert 0 < terms["w1"].item() < 2 / 999


def test_coord_terms_gate_sees_text_mass_and_inactive_terms_keep_no_graph():
    coord_ids = list(range(100, 1100))
    bins = [10, 20, 30, 40]
    # each of the 100 text tokens at logit 30 + ln(1) -> text mass = 100/(100+1) per row
    z = _peaked_rows(bins, text_logit=30.0).requires_grad_(True)
    cfg = LossesConfig(token_ce=1.0, coord_gate=1.0, coord_ce=0.0)
    terms = coord_terms(z, torch.tensor(bins), coord_ids, cfg)
    assert terms["coord_gate"].item() == pytest.approx(math.log(101 + 999 * math.exp(-30)), rel=1e-5)
    assert terms["coord_ce"].item() == pytest.approx(0.0, abs=1e-4)  # blind: coord-sliced CE is perfect
    assert terms["coord_gate"].requires_grad
    assert not terms["coord_ce"].requires_grad and not terms["w1"].requires_grad


def test_coord_terms_boxes_use_expected_bins():
    coord_ids = list(range(100, 1100))
    # bins 0 and 999 at equal probability -> expected normalized 0.5 for every coordinate
    z = torch.full((4, 1100), -1e4)
    z[:, 100] = 0.0
    z[:, 1099] = 0.0
    gt = torch.tensor([0, 0, 999, 999])
    cfg = LossesConfig(smoothl1=1.0, smoothl1_beta=1.0)
    terms = coord_terms(z, gt, coord_ids, cfg)
    # pred box [.5,.5,.5,.5] vs gt [0,0,1,1]: every |diff| = 0.5 -> 0.5 * 0.25 = 0.125
    assert terms["smoothl1"].item() == pytest.approx(0.125, rel=1e-5)


def test_coord_terms_empty_and_partial_box():
    z = torch.zeros(0, 1100, requires_grad=True)
    terms = coord_terms(z, torch.zeros(0, dtype=torch.long), list(range(100, 1100)), LossesConfig())
    assert all(v.item() == 0.0 for v in terms.values())
    with pytest.raises(ValueError, match="groups of 4"):
        coord_terms(torch.zeros(3, 1100), torch.zeros(3, dtype=torch.long), list(range(100, 1100)), LossesConfig())


def test_coord_diagnostics_hand_values():
    coord_ids = list(range(100, 1100))
    bins = torch.tensor([10, 20, 30, 40])
    z = _peaked_rows([10, 20, 31, 45])  # two right, two wrong by 1 and 5 bins
    z[2:, :100] = 30.0  # rows 2-3: 100 text tokens tie with the peak -> coord mass 1/101
    d = O.coord_diagnostics(z, bins, coord_ids, 1.0)
    assert d["coord_diag/acc_top1"] == pytest.approx(0.5)
    assert d["coord_diag/expected_bin_mae"] == pytest.approx((0 + 0 + 1 + 5) / 4, abs=1e-3)
    assert d["coord_diag/coord_vocab_mass_mean"] == pytest.approx((1 + 1 + 2 / 101) / 4, abs=1e-4)
    assert d["coord_diag/coord_tokens"] == 4.0
    assert O.coord_diagnostics(torch.zeros(0, 1100), torch.zeros(0), coord_ids) == {"coord_diag/coord_tokens": 0.0}


def test_coord_diagnostics_reference_keys_by_hand():
    """acc_top5, p_gt_mean, margin_mean, expected_bin_abs_err_p90 on 4 slots whose coordinate
    distributions are written out by hand (logit -1e4 = probability 0)."""
    import math

    coord_ids = list(range(100, 1100))
    z = torch.full((4, 1100), -1e4)
    z[:, :100] = -1e4
    ln3 = math.log(3.0)
    # slot 0, target 10: p(10) = 3/4, p(14) = 1/4 -> E = 11, error 1, top-1 right, margin 0
    z[0, 100 + 10], z[0, 100 + 14] = ln3, 0.0
    # slot 1, target 20: p(20) = 1/4, p(26) = 3/4 -> E = 24.5, error 4.5, top-1 wrong, top-5 right, margin ln 3
    z[1, 100 + 20], z[1, 100 + 26] = 0.0, ln3
    # slot 2, target 30: bins 100 (logit 0), 101..104 (logit -1), 30 (logit -2): 30 is 6th -> not in top 5, margin 2
    z[2, 100 + 100] = 0.0
    z[2, 100 + 101:100 + 105] = -1.0
    z[2, 100 + 30] = -2.0
    # slot 3, target 40: all mass on 40 -> E = 40, error 0
    z[3, 100 + 40] = 5.0
    bins = torch.tensor([10, 20, 30, 40])
    zs = 1 + 4 * math.exp(-1) + math.exp(-2)
    p30 = math.exp(-2) / zs
    e2 = (100 + math.exp(-1) * (101 + 102 + 103 + 104) + 30 * math.exp(-2)) / zs
    errors = sorted([1.0, 4.5, abs(e2 - 30), 0.0])
    d = O.coord_diagnostics(z, bins, coord_ids, 1.0)
    assert d["coord_diag/acc_top1"] == pytest.approx(2 / 4)
    assert d["coord_diag/acc_top5"] == pytest.approx(3 / 4)
    assert d["coord_diag/p_gt_mean"] == pytest.approx((0.75 + 0.25 + p30 + 1.0) / 4, rel=1e-5)
    assert d["coord_diag/margin_mean"] == pytest.approx((0 + ln3 + 2 + 0) / 4, rel=1e-5)
    assert d["coord_diag/expected_bin_mae"] == pytest.approx(sum(errors) / 4, rel=1e-4)
    # p90 of 4 values: position 0.9 * 3 = 2.7 between the 3rd and 4th smallest
    assert d["coord_diag/expected_bin_abs_err_p90"] == pytest.approx(errors[2] + 0.7 * (errors[3] - errors[2]), rel=1e-4)
    # tempered (T = 2) on slot 1 alone: logits halved -> p(20) = 1 / (1 + sqrt 3), margin ln 3 / 2
    d2 = O.coord_diagnostics(z[1:2], bins[1:2], coord_ids, 2.0)
    assert d2["coord_diag/p_gt_mean"] == pytest.approx(1 / (1 + math.sqrt(3)), rel=1e-5)
    assert d2["coord_diag/margin_mean"] == pytest.approx(ln3 / 2, rel=1e-5)


# --------------------------------------------------------------------------------------------- metric window


def test_metric_window_means_per_key_and_resets():
    w = MetricWindow()
    w.add({"loss/a": 1.0, "loss/b": 10.0})
    w.add({"loss/a": 3.0})
    w.add({"loss/a": 5.0, "loss/b": 20.0})
    assert w.pop() == {"loss/a": 3.0, "loss/b": 15.0}
    assert w.pop() == {}
    w.add({"x": 2.0}, weight=3.0)
    w.add({"x": 6.0}, weight=1.0)
    assert w.pop() == {"x": 3.0}


def _window_worker(rank, world, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        w = MetricWindow()
        if rank == 0:
            w.add({"loss/a": 1.0})
            w.add({"loss/a": 3.0, "only0": 7.0})
        else:
            w.add({"loss/a": 8.0})
        out.put((rank, w.pop()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metric_window_all_reduces_across_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_window_worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    # global mean over the 3 micro-batches of both ranks; a key seen on one rank only still appears
    expect = {"loss/a": (1.0 + 3.0 + 8.0) / 3, "only0": 7.0}
    assert results[0] == pytest.approx(expect) and results[1] == pytest.approx(expect)


# --------------------------------------------------------------------------------------------- rows and table


def _batch(desc_first=True):
    """One sample by hand: prompt (ignored), then struct, desc, 4 coord slots, struct (<|im_end|>)."""
    slot = [IGNORE, IGNORE, STRUCT, DESC, COORD, COORD, COORD, COORD, STRUCT]
    labels = [-100, -100, 11, 12, 1010, 1020, 1030, 1040, 13]
    bins = [-1, -1, -1, -1, 10, 20, 30, 40, -1]
    t = lambda v: torch.tensor([v])
    return {"labels": t(labels), "slot_class": t(slot), "coord_bins": t(bins)}


@pytest.mark.parametrize(
    "desc_w, on_coord, ce_t, ce_w",
    [
        (1.0, True, [1, 2, 3, 4, 5, 6, 7], [1, 1, 1, 1, 1, 1, 1]),
        (0.25, False, [1, 2, 7], [1, 0.25, 1]),
        (0.0, False, [1, 2, 7], [1, 0, 1]),  # desc rows stay CE rows (weight 0): the text gate reads them
    ],
)
def test_supervised_rows_by_hand(desc_w, on_coord, ce_t, ce_w):
    rows = O.supervised_rows(_batch(), LossesConfig(desc_ce_weight=desc_w, ce_on_coord_slots=on_coord))
    assert rows.ce_t.tolist() == ce_t and rows.ce_b.tolist() == [0] * len(ce_t)
    assert rows.ce_weights.tolist() == pytest.approx(ce_w)
    assert rows.ce_labels.tolist() == [_batch()["labels"][0, t + 1].item() for t in ce_t]
    assert rows.coord_t.tolist() == [3, 4, 5, 6] and rows.coord_bins.tolist() == [10, 20, 30, 40]
    assert rows.text_rows.tolist() == [t + 1 not in (4, 5, 6, 7) for t in ce_t]
    assert rows.n_boxes == 1


def test_supervised_rows_rejects_partial_boxes():
    b = _batch()
    b["labels"][0, 7] = -100
    with pytest.raises(ValueError, match="multiple of 4"):
        O.supervised_rows(b, LossesConfig())


def test_loss_table_is_the_config_and_log_schema():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(LossesConfig)}
    assert set(O.LOSSES) <= fields and set(O.HYPER) == {"sigma", "temperature", "smoothl1_beta"}
    # every LossesConfig field is a term weight, a hyper-parameter or a token-CE row weight
    assert fields == set(O.LOSSES) | set(O.HYPER) | {"desc_ce_weight", "ce_on_coord_slots"}
    assert O.COORD_TERMS == LossesConfig.COORD_TERMS
    assert [n for n, loss in O.LOSSES.items() if loss.signed] == ["entropy"]
    terms = {n: _t(1.0) for n in O.LOSSES}
    assert set(O.log_terms(terms)) == {f"loss/{n}" for n in O.LOSSES}
