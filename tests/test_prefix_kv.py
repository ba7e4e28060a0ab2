"""Channel-A prefix reuse (`train/prefix_kv.py`) against the full-recompute path on the tiny Qwen3-VL.

Tolerance: the loss to 1e-6 relative; every parameter gradient to max |g_reuse - g_full| <= 1e-5 *
max |g_full| of that tensor (float32 round-off of the suffix rows; measured <= 1e-6). A reuse path
that loses the prefix (or its gradient) misses by ~1e-1 (checked by `test_a_broken_prefix_is_caught`).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from vlmdet.config import Config
from vlmdet.train import prefix_kv
from vlmdet.train.channel_a import channel_a_loss, pass_terms, soft_context_forwards
from vlmdet.train.objective import supervised_rows

REL_GRAD = 1e-5
MODEL_MODE = "train"  # conftest's `loaded`


def checkpointing_enable(model, **kwargs):
    """Gradient checkpointing under its name in this transformers (`activation_checkpointing_enable`
    from 5.23, `gradient_checkpointing_enable` before); both default to non-reentrant."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)


@pytest.fixture(scope="module")
def checkpointed(loaded):
    """The same model with (non-reentrant) gradient checkpointing, as the GPU configs run it."""
    model = copy.deepcopy(loaded.model)
    checkpointing_enable(model)
    return model


def stage2_cfg(**stage2) -> Config:
    cfg = Config(stage=2)
    cfg.losses.ce_on_coord_slots = False
    cfg.losses.smoothl1 = 2.0
    cfg.losses.ciou = 1.0
    cfg.losses.soft_ce = 0.5
    cfg.losses.coord_gate = 1.0
    cfg.losses.text_gate = 0.5  # final-iteration text rows: some before the suffix, some in it
    cfg.stage2.a1_anchor = {"smoothl1": 0.5}
    for k, v in stage2.items():
        setattr(cfg.stage2, k, v)
    return cfg


def loss_and_grads(model, batch, cfg, coord_ids):
    model.zero_grad(set_to_none=True)
    loss, _ = channel_a_loss(model, batch, cfg.losses, coord_ids, cfg.stage2)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def assert_same(full, reuse):
    (l0, g0), (l1, g1) = full, reuse
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=0.0)
    assert g1.keys() == g0.keys()
    for name, g in g0.items():
        err = float((g1[name] - g).abs().max())
        assert err <= REL_GRAD * float(g.abs().max()) + 1e-12, (name, err, float(g.abs().max()))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("ctx_mode", ["soft", "st", "hard"])
@pytest.mark.parametrize("grad_mode", ["unroll", "em_detach"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_loss_and_gradients_equal_the_full_recompute(loaded, checkpointed, batch, n, grad_mode, ctx_mode, checkpointing):
    model = checkpointed if checkpointing else loaded.model
    cfg = dict(n_softctx_iter=n, softctx_grad_mode=grad_mode, ctx_embed_mode=ctx_mode)
    full = loss_and_grads(model, batch, stage2_cfg(**cfg, reuse_prefix=False), loaded.coord_ids)
    reuse = loss_and_grads(model, batch, stage2_cfg(**cfg, reuse_prefix=True), loaded.coord_ids)
    assert_same(full, reuse)
    vision = [g for name, g in full[1].items() if ".visual." in name]
    assert vision and all(float(g.abs().max()) > 0 for g in vision)  # the comparison covers the vision tower
    with torch.no_grad():
        sup = supervised_rows(batch, stage2_cfg().losses)
        out = soft_context_forwards(model, batch, sup, loaded.coord_ids, n_iter=n)
    assert out.prefix_reused == (n > 1)


def _final_loss_only(model, batch, coord_ids, n, grad_mode, reuse):
    """smoothl1 on the final iteration's coord logits only, backward; returns the vision tower's gradients."""
    cfg = stage2_cfg(n_softctx_iter=n, softctx_grad_mode=grad_mode)
    sup = supervised_rows(batch, cfg.losses)
    model.zero_grad(set_to_none=True)
    out = soft_context_forwards(model, batch, sup, coord_ids, n_iter=n, grad_mode=grad_mode, reuse_prefix=reuse)
    terms, _, _ = pass_terms(out, sup, coord_ids, cfg.losses, {})
    terms["smoothl1"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if ".visual." in n and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("grad_mode", ["unroll", "em_detach"])
def test_final_iteration_loss_reaches_the_vision_tower_through_the_kept_prefix(loaded, batch, grad_mode):
    # with reuse the final forward runs no vision encoder: its only way back to it is the kept keys/values
    full = _final_loss_only(loaded.model, batch, loaded.coord_ids, 2, grad_mode, reuse=False)
    reuse = _final_loss_only(loaded.model, batch, loaded.coord_ids, 2, grad_mode, reuse=True)
    assert full.keys() == reuse.keys() and full
    for name, g in full.items():
        assert float(g.abs().max()) > 0
        assert float((reuse[name] - g).abs().max()) <= REL_GRAD * float(g.abs().max())


@pytest.mark.parametrize("grad_mode, graphs", [("unroll", [True, True]), ("em_detach", [False, True])])
def test_every_recorded_iteration_back_propagates_into_the_prefix(loaded, batch, monkeypatch, grad_mode, graphs):
    """N = 3: the keys/values each later iteration attends over (prefix ++ suffix) get a gradient in their
    prefix rows from the final loss: iterations 1 and 2 under unroll, only 2 under em_detach (1 keeps no graph)."""
    seen = []
    real = prefix_kv._ContextLayer.update

    def update(self, k, v, *a, **kw):
        keys, values = real(self, k, v, *a, **kw)
        if keys.requires_grad:
            keys.retain_grad()
        seen.append((keys, self.keys.shape[-2]))
        return keys, values

    monkeypatch.setattr(prefix_kv._ContextLayer, "update", update)
    cfg = stage2_cfg(n_softctx_iter=3, softctx_grad_mode=grad_mode)
    sup = supervised_rows(batch, cfg.losses)
    out = soft_context_forwards(loaded.model, batch, sup, loaded.coord_ids, n_iter=3, grad_mode=grad_mode)
    terms, _, _ = pass_terms(out, sup, loaded.coord_ids, cfg.losses, {})
    terms["smoothl1"].backward()
    loaded.model.zero_grad(set_to_none=True)
    n_layers = loaded.model.config.text_config.num_hidden_layers
    assert len(seen) == 2 * n_layers  # iterations 1 and 2, every layer
    for it, want in enumerate(graphs):
        for keys, start in seen[it * n_layers : (it + 1) * n_layers]:
            got = keys.grad is not None and float(keys.grad[..., :start, :].abs().sum()) > 0
            assert got == want, (it, want)


def test_a_broken_prefix_is_caught(loaded, batch, monkeypatch):
    """The tolerance can fail: keys of the kept prefix scaled by 0.99 move the gradients far beyond it."""
    real = prefix_kv._ContextLayer.update
    monkeypatch.setattr(prefix_kv._ContextLayer, "update",
                        lambda self, k, v, *a, **kw: (torch.cat([0.99 * self.keys, k], -2), real(self, k, v)[1]))
    full = loss_and_grads(loaded.model, batch, stage2_cfg(reuse_prefix=False), loaded.coord_ids)
    broken = loss_and_grads(loaded.model, batch, stage2_cfg(reuse_prefix=True), loaded.coord_ids)
    with pytest.raises(AssertionError):
        assert_same(full, broken)


def test_no_coord_slot_or_n1_or_switched_off_runs_the_full_path(loaded, batch):
    sup = supervised_rows(batch, stage2_cfg().losses)
    with torch.no_grad():
        assert soft_context_forwards(loaded.model, batch, sup, loaded.coord_ids, n_iter=2).prefix_reused
        assert not soft_context_forwards(loaded.model, batch, sup, loaded.coord_ids, n_iter=1).prefix_reused
        assert not soft_context_forwards(loaded.model, batch, sup, loaded.coord_ids, n_iter=2, reuse_prefix=False).prefix_reused
        empty = torch.zeros(0, dtype=torch.long)
        no_coord = type(sup)(**{**vars(sup), "coord_b": empty, "coord_t": empty, "coord_bins": empty})
        assert not soft_context_forwards(loaded.model, batch, no_coord, loaded.coord_ids, n_iter=2).prefix_reused


@pytest.fixture
def fresh_warnings(monkeypatch, caplog):
    monkeypatch.setattr(prefix_kv, "_warned", set())
    caplog.set_level(logging.WARNING, logger=prefix_kv.__name__)
    return caplog


def _fallback_matches_full(model, batch, coord_ids, caplog, reason):
    full = loss_and_grads(model, batch, stage2_cfg(reuse_prefix=False), coord_ids)
    for _ in range(2):
        assert_same(full, loss_and_grads(model, batch, stage2_cfg(reuse_prefix=True), coord_ids))
    warned = [r.getMessage() for r in caplog.records if r.name == prefix_kv.__name__]
    assert len(warned) == 1 and reason in warned[0] and "stage2.reuse_prefix" in warned[0], warned  # once
    sup = supervised_rows(batch, stage2_cfg().losses)  # with grad: checkpointing is only active then
    assert not soft_context_forwards(model, batch, sup, coord_ids, n_iter=2).prefix_reused


def test_unsupported_attention_falls_back_with_one_warning(loaded, batch, fresh_warnings, monkeypatch):
    monkeypatch.setattr(prefix_kv, "ATTENTION", ("eager",))  # the tiny model runs sdpa
    assert "'sdpa'" in prefix_kv.unsupported_reason(loaded.model)
    _fallback_matches_full(loaded.model, batch, loaded.coord_ids, fresh_warnings, "attention implementation 'sdpa'")


def test_reentrant_checkpointing_falls_back_with_one_warning(loaded, batch, fresh_warnings):
    model = copy.deepcopy(loaded.model)
    checkpointing_enable(model, use_reentrant=True)
    _fallback_matches_full(model, batch, loaded.coord_ids, fresh_warnings, "reentrant gradient checkpointing")


def test_a_forward_that_drops_the_cache_falls_back_with_one_warning(checkpointed, loaded, batch, fresh_warnings, monkeypatch):
    import contextlib

    # without the replay-safe flag, transformers' checkpointed layers drop the cache: nothing is recorded
    monkeypatch.setattr(prefix_kv, "_cache_through_checkpointing", lambda inner: contextlib.nullcontext())
    _fallback_matches_full(checkpointed, batch, loaded.coord_ids, fresh_warnings, "did not hand every decoder layer")


def test_checkpointing_flag_is_set_only_during_the_forwards(checkpointed, loaded, batch):
    layers = prefix_kv._decoder_layers(checkpointed)
    assert layers and all(m.gradient_checkpointing for m in layers)
    loss_and_grads(checkpointed, batch, stage2_cfg(), loaded.coord_ids)
    assert all("_can_checkpoint_with_cache" not in vars(m) and not m._can_checkpoint_with_cache for m in layers)


def test_config_switch_is_a_typed_bool():
    from pathlib import Path

    from vlmdet.config import load_config
    from vlmdet.errors import UsageError

    a_only = Path(__file__).resolve().parents[1] / "configs" / "stage2" / "a_only.yaml"
    assert load_config(a_only).stage2.reuse_prefix is True
    assert load_config(a_only, ["stage2.reuse_prefix=false"]).stage2.reuse_prefix is False
    with pytest.raises(UsageError, match="stage2.reuse_prefix: expected bool"):
        load_config(a_only, ["stage2.reuse_prefix=1"])
    with pytest.raises(UsageError, match="did you mean 'stage2.reuse_prefix'"):
        load_config(a_only, ["stage2.reuse_prefixes=true"])
