"""Channel-A soft self-context on the tiny Qwen3-VL (see docs/STAGE2.md)."""

from __future__ import annotations

import copy

import pytest
import torch

import vlmdet.train.forward as fwd
from vlmdet.config import Config
from vlmdet.model.chat import COORD
from vlmdet.train.channel_a import (
    channel_a_loss,
    context_embeddings,
    pass_terms,
    soft_context_forwards,
)
from vlmdet.train.objective import supervised_rows

MODEL_MODE = "train"  # conftest's `loaded`


def stage2_cfg(**stage2) -> Config:
    cfg = Config(stage=2)
    cfg.losses.ce_on_coord_slots = False
    cfg.losses.smoothl1 = 2.0
    cfg.losses.ciou = 1.0
    cfg.losses.coord_gate = 1.0
    for k, v in stage2.items():
        setattr(cfg.stage2, k, v)
    return cfg


class Recorder:
    """Records every call of the inner multimodal model (`model.model`): grad mode and kwargs, and as
    `embeds` what its input-embedding module returned in that call (soft context included)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        self.embed_handle = model.get_input_embeddings().register_forward_hook(self._embeds)

    def _hook(self, module, args, kwargs):
        self.calls.append({"grad": torch.is_grad_enabled(), **kwargs})

    def _embeds(self, module, args, out):
        self.calls[-1]["embeds"] = out

    def close(self):
        self.handle.remove()
        self.embed_handle.remove()


@pytest.fixture
def recorder(loaded):
    rec = Recorder(loaded.model)
    yield rec
    rec.close()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_runs_exactly_n_forwards_with_ids_positions_and_no_cache(loaded, batch, recorder, n):
    cfg = stage2_cfg(n_softctx_iter=n, reuse_prefix=False)
    loss, logs = channel_a_loss(loaded.model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
    assert len(recorder.calls) == n
    assert logs["stage2/n_forwards"] == n
    B, L = batch["input_ids"].shape
    for call in recorder.calls:
        assert call.get("inputs_embeds") is None and call["input_ids"].shape == (B, L)
        assert call["embeds"].shape[:2] == (B, L)
        assert call["position_ids"].shape == (3, B, L)
        assert call.get("use_cache") is False and call.get(fwd.cache_argument(loaded.model)) is None
        assert call["pixel_values"] is not None
    assert torch.isfinite(loss)


@pytest.mark.parametrize("n", [2, 3])
def test_prefix_reuse_runs_later_iterations_on_the_suffix_rows(loaded, batch, recorder, n):
    cfg = stage2_cfg(n_softctx_iter=n)  # reuse_prefix on by default
    channel_a_loss(loaded.model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
    assert len(recorder.calls) == n
    B, L = batch["input_ids"].shape
    coord_pos = ((batch["slot_class"] == COORD) & (batch["labels"] != -100)).nonzero()[:, 1]
    start = int(coord_pos.min()) - 1  # the predicting row of the earliest coord slot
    first, *later = recorder.calls
    cache = fwd.cache_argument(loaded.model)  # `cache`, or `past_key_values` before transformers 5.24
    assert first["embeds"].shape[:2] == (B, L) and first["pixel_values"] is not None
    assert first[cache].get_seq_length() == 0  # the recording cache: the full forward as without one
    full_pos = first["position_ids"]
    for call in later:
        assert call["embeds"].shape[:2] == (B, L - start) and call["input_ids"].shape == (B, L - start)
        assert call.get("pixel_values") is None and call.get("image_grid_thw") is None
        assert torch.equal(call["position_ids"], full_pos[..., start:])
        assert call[cache].get_seq_length() == start and call["attention_mask"].shape == (B, L)
        assert call.get("use_cache") is False


@pytest.mark.parametrize("reuse", [False, True])
def test_only_coord_rows_change_across_iterations(loaded, batch, recorder, reuse):
    cfg = stage2_cfg(n_softctx_iter=3, reuse_prefix=reuse)
    channel_a_loss(loaded.model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
    e0, e1, e2 = (c["embeds"].detach() for c in recorder.calls)  # the soft context is written inside the forward
    coord = (batch["slot_class"] == COORD) & (batch["labels"] != -100)
    assert int(coord.sum()) == 12
    start = e0.shape[1] - e1.shape[1]  # 0 on the full path; suffix rows only with prefix reuse
    assert (start > 0) == reuse
    e0, coord = e0[:, start:], coord[:, start:]
    for e in (e1, e2):
        assert torch.equal(e[~coord], e0[~coord])  # bitwise: prompt, image placeholders, text, padding
        assert (e[coord] != e0[coord]).any(-1).all()  # every coord slot row replaced
    assert not torch.equal(e1[coord], e2[coord])  # iteration 2 uses iteration 1's logits
    # image placeholder rows are exactly the <|image_pad|> embedding (the vision features replace them later)
    pad_row = loaded.model.get_input_embeddings().weight[loaded.image_token_id].detach()
    img = batch["input_ids"][:, start:] == loaded.image_token_id
    assert (int(img.sum()) > 0) != reuse  # the suffix holds no image row
    assert torch.equal(e2[img], pad_row.expand(int(img.sum()), -1))


def test_soft_context_is_expected_coord_embedding(loaded):
    torch.manual_seed(0)
    E = torch.randn(1000, 8)
    s = torch.full((2, 1000), -1e9)
    s[0, 0] = s[0, 999] = 0.0  # half the mass on bin 0, half on bin 999
    s[1, 7] = 0.0
    soft = context_embeddings(s, E, 1.0, "soft")
    torch.testing.assert_close(soft[0], 0.5 * (E[0] + E[999]))
    torch.testing.assert_close(soft[1], E[7])
    hard = context_embeddings(s, E, 1.0, "hard")
    assert torch.equal(hard[1], E[7]) and (torch.equal(hard[0], E[0]) or torch.equal(hard[0], E[999]))
    s2 = torch.randn(3, 1000, requires_grad=True)
    st = context_embeddings(s2, E, 1.0, "st")
    torch.testing.assert_close(st, E[s2.argmax(-1)])  # hard value
    st.sum().backward()
    assert s2.grad.abs().sum() > 0  # soft gradient


class LogitsHook:
    """Wraps `forward.logits_at` (one call per forward); `edit(iteration, set_index, logits)` may
    replace each returned row set."""

    def __init__(self, edit):
        self.real, self.edit, self.iteration = fwd.logits_at, edit, -1

    def __call__(self, *a, **k):
        self.iteration += 1
        return [self.edit(self.iteration, i, x) for i, x in enumerate(self.real(*a, **k))]


def peaked(target, vocab, like):
    return 30.0 * torch.nn.functional.one_hot(target, vocab).float() + 0.0 * like.sum()


@pytest.mark.parametrize("a1_right", [True, False])
def test_token_ce_uses_a1_logits_and_coord_terms_the_final(loaded, batch, monkeypatch, a1_right):
    cfg = stage2_cfg(n_softctx_iter=2)
    rows = supervised_rows(batch, cfg.losses)
    V = loaded.model.config.text_config.vocab_size
    targets = [torch.tensor(loaded.coord_ids)[rows.coord_bins], rows.ce_labels]  # set 0: coord rows, 1: CE rows

    def edit(it, i, x):
        right = (it == 0) == a1_right  # A1 right and final wrong, or the reverse
        return peaked(targets[i] if right else (targets[i] + 1) % V, V, x)

    monkeypatch.setattr(fwd, "logits_at", LogitsHook(edit))
    _, logs = channel_a_loss(loaded.model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
    low, high = (logs["loss/token_ce"], logs["loss/coord_ce"]) if a1_right else (logs["loss/coord_ce"], logs["loss/token_ce"])
    assert low < 1e-6 and high > 25.0
    assert logs["coord_diag/acc_top1"] == (0.0 if a1_right else 1.0)


def _grad_norms(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    total = sum(float(p.grad.norm()) for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return total


def _run(loaded, batch, cfg):
    sup = supervised_rows(batch, cfg.losses)
    out = soft_context_forwards(loaded.model, batch, sup, loaded.coord_ids, n_iter=cfg.stage2.n_softctx_iter,
                                grad_mode=cfg.stage2.softctx_grad_mode, ctx_embed_mode=cfg.stage2.ctx_embed_mode)
    terms, _, _ = pass_terms(out, sup, loaded.coord_ids, cfg.losses, {})
    return out, terms


def test_em_detach_ce_has_gradient_and_middle_iterations_record_no_graph(loaded, batch, recorder):
    cfg = stage2_cfg(n_softctx_iter=3, softctx_grad_mode="em_detach")
    out, terms = _run(loaded, batch, cfg)
    assert [c["grad"] for c in recorder.calls] == [True, False, True]
    assert terms["token_ce"].requires_grad
    assert _grad_norms(loaded.model, terms["token_ce"]) > 0  # the known A1-under-no_grad bug: this was exactly 0
    recorder.calls.clear()
    _run(loaded, batch, stage2_cfg(n_softctx_iter=3, softctx_grad_mode="unroll"))
    assert [c["grad"] for c in recorder.calls] == [True, True, True]


@pytest.mark.parametrize("mode, reaches_a1", [("unroll", True), ("em_detach", False)])
def test_final_coord_loss_reaches_a1_only_when_unrolled(loaded, batch, mode, reaches_a1):
    out, terms = _run(loaded, batch, stage2_cfg(n_softctx_iter=2, softctx_grad_mode=mode))
    assert out.a1_coord_logits.requires_grad  # A1 always records a graph (CE needs it)
    out.a1_coord_logits.retain_grad()
    out.final_coord_logits.retain_grad()
    terms["smoothl1"].backward()
    assert out.final_coord_logits.grad is not None and out.final_coord_logits.grad.abs().sum() > 0
    a1_grad = out.a1_coord_logits.grad
    assert (a1_grad is not None and float(a1_grad.abs().sum()) > 0) == reaches_a1
    loaded.model.zero_grad(set_to_none=True)


def test_hard_mode_with_a1_on_gt_reproduces_teacher_forcing(loaded, batch, monkeypatch):
    cfg = stage2_cfg(n_softctx_iter=2, ctx_embed_mode="hard")
    rows = supervised_rows(batch, cfg.losses)
    gt = torch.tensor(loaded.coord_ids)[rows.coord_bins]
    force = {"on": True}

    def edit(it, i, x):  # A1 coord rows: all mass on the GT bin
        if force["on"] and it == 0 and i == 0:
            return x + 1e4 * torch.nn.functional.one_hot(gt, x.shape[-1])
        return x

    with torch.no_grad():
        monkeypatch.setattr(fwd, "logits_at", LogitsHook(edit))
        out = soft_context_forwards(loaded.model, batch, rows, loaded.coord_ids, n_iter=2, ctx_embed_mode="hard")
        plain = loaded.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                                      "mm_token_type_ids")}, use_cache=False).logits
        want = plain[rows.coord_b, rows.coord_t]
        torch.testing.assert_close(out.final_coord_logits, want, rtol=1e-5, atol=1e-5)
        force["on"] = False  # hard context from the model's own (wrong) A1 argmax differs: the test can fail
        monkeypatch.setattr(fwd, "logits_at", LogitsHook(edit))
        own = soft_context_forwards(loaded.model, batch, rows, loaded.coord_ids, n_iter=2, ctx_embed_mode="hard")
        assert (own.final_coord_logits - want).abs().max() > 1e-3


def test_n1_is_teacher_forcing_and_ce_masks_coord_slots(loaded, batch):
    cfg = stage2_cfg(n_softctx_iter=1)
    sup = supervised_rows(batch, cfg.losses)
    coord_label = torch.isin(sup.ce_labels, torch.tensor(loaded.coord_ids))
    assert not coord_label.any()  # ce_on_coord_slots false
    labelled = int((batch["labels"] != -100).sum())
    assert sup.ce_labels.numel() == labelled - 12 and sup.coord_t.numel() == 12
    with torch.no_grad():
        _, logs = channel_a_loss(loaded.model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
        plain = loaded.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                                      "mm_token_type_ids")}, use_cache=False).logits
    ce = torch.nn.functional.cross_entropy(plain[sup.ce_b, sup.ce_t], sup.ce_labels)
    assert logs["loss/token_ce"] == pytest.approx(float(ce), rel=1e-4)
    # coord targets: GT bins in document order
    assert sup.coord_bins.tolist() == [10, 20, 300, 400, 50, 60, 70, 80, 1, 2, 903, 904]


def test_a1_anchor_terms_are_logged_and_added(loaded, batch):
    cfg = stage2_cfg(n_softctx_iter=2)
    with torch.no_grad():
        base, logs0 = channel_a_loss(loaded.model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
        cfg.stage2.a1_anchor = {"smoothl1": 0.5}
        anch, logs1 = channel_a_loss(loaded.model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
    assert "loss/a1_smoothl1" in logs1 and "loss/a1_smoothl1" not in logs0
    assert float(anch - base) == pytest.approx(0.5 * logs1["loss/a1_smoothl1"], rel=1e-4)


DIGITS = [str(d) for d in range(10)]


@pytest.mark.slow
def test_gate_keeps_coord_vocab_mass_under_text_pressure(loaded, batch, monkeypatch):
    """The leakage mechanism: something pushes digit tokens up at coord slots; coord-sliced losses do not
    see it, the gate does. Pressure: +6 on the digit logits at every gathered row (a fixed bias on the
    lm_head rows of digit tokens). Same seed, same steps; with the gate the coord-vocab mass ends higher."""
    digit_ids = torch.tensor(loaded.tokenizer.convert_tokens_to_ids(DIGITS))
    bias = torch.zeros(loaded.model.config.text_config.vocab_size)
    bias[digit_ids] = 6.0
    real = fwd.logits_at
    monkeypatch.setattr(fwd, "logits_at", lambda *a, **k: [x + bias for x in real(*a, **k)])
    masses = {}
    for gate in (0.0, 1.0):
        model = copy.deepcopy(loaded.model)
        cfg = stage2_cfg(n_softctx_iter=2)
        cfg.losses.coord_gate = gate
        cfg.losses.coord_ce = 1.0
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(8):
            loss, logs = channel_a_loss(model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            _, logs = channel_a_loss(model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
        masses[gate] = logs["coord_diag/coord_vocab_mass_mean"]
    assert masses[1.0] > masses[0.0] + 0.2, masses


@pytest.mark.parametrize("reuse", [False, True])
def test_text_gate_uses_final_iteration_text_rows(loaded, batch, monkeypatch, reuse):
    from vlmdet.losses import text_gate_loss

    cfg = stage2_cfg(n_softctx_iter=2, reuse_prefix=reuse)
    cfg.losses.text_gate = 0.5
    rows = supervised_rows(batch, cfg.losses)
    seen = {}

    def edit(it, i, x):
        seen[(it, i)] = x.detach()
        return x

    monkeypatch.setattr(fwd, "logits_at", LogitsHook(edit))
    with torch.no_grad():
        _, logs = channel_a_loss(loaded.model, batch, cfg.losses, loaded.coord_ids, cfg.stage2)
    assert set(seen) == {(0, 0), (0, 1), (1, 0), (1, 1)}  # final iteration gathers the text rows too
    final = seen[(1, 1)]
    if reuse:  # the suffix forward computes the rows from the earliest coord slot's on; earlier rows are A1's
        later = rows.ce_t >= rows.coord_t.min()
        assert 0 < final.shape[0] == int(later.sum()) < rows.ce_t.numel()
        final = seen[(0, 1)].clone()
        final[later] = seen[(1, 1)]
    want = float(text_gate_loss(final[rows.text_rows], loaded.coord_ids).mean())
    a1 = float(text_gate_loss(seen[(0, 1)][rows.text_rows], loaded.coord_ids).mean())
    assert logs["loss/text_gate"] == pytest.approx(want, rel=1e-5) and abs(want - a1) > 1e-6


def test_stage2_config_without_ce_on_coord_slots_has_no_ce_row_on_a_coord_token(loaded, batch):
    from vlmdet.config import config_from_dict

    coord_ids = torch.tensor(loaded.coord_ids)
    labelled = int((batch["labels"] != -100).sum())
    default = config_from_dict({"stage": 2, "losses": {"coord_gate": 1.0, "soft_ce": 1.0}})
    sup = supervised_rows(batch, default.losses)
    assert not torch.isin(sup.ce_labels, coord_ids).any()
    assert sup.ce_labels.numel() == labelled - 12 and sup.coord_t.numel() == 12  # 3 boxes
    explicit = config_from_dict({"stage": 2, "losses": {"ce_on_coord_slots": True}})
    sup = supervised_rows(batch, explicit.losses)
    assert int(torch.isin(sup.ce_labels, coord_ids).sum()) == 12  # allowed when asked for
