"""train/forward.py on the tiny Qwen3-VL: gathered logits equal the full model's logits at those rows."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmdet.format import render_answer
from vlmdet.model.chat import encode_example
from vlmdet.model.collate import Collator, position_ids
from vlmdet.train import forward as F


@pytest.fixture(scope="module")
def batch(loaded):
    img_a = Image.new("RGB", (64, 64), (200, 10, 10))
    img_b = Image.new("RGB", (32, 64), (10, 10, 200))
    exs = [
        encode_example(loaded, img_a, render_answer([("red circle", (10, 20, 300, 400)), ("blue square", (50, 60, 70, 80))])),
        encode_example(loaded, img_b, render_answer([("green triangle", (1, 2, 903, 904))])),
    ]
    return Collator(loaded.pad_id)(exs)


@pytest.fixture(scope="module")
def full_logits(loaded, batch):
    """Reference: the stock full forward, [B, L, V]."""
    with torch.no_grad():
        out = loaded.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"], mm_token_type_ids=batch["mm_token_type_ids"],
        )
    return out.logits


class _Sup:
    """Reference supervised rows of a batch: predicting row t = p - 1 of every labelled position p."""

    def __init__(self, batch):
        labels = batch["labels"]
        self.rows = torch.zeros_like(labels, dtype=torch.bool)
        self.rows[:, :-1] = labels[:, 1:] != -100
        self.target_ids = labels[:, 1:][labels[:, 1:] != -100]


def test_gathered_logits_equal_full_logits_at_rows_and_head_sees_only_rows(loaded, batch, full_logits):
    sup = _Sup(batch)
    shapes = []
    hook = loaded.model.get_output_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        with torch.no_grad():
            got = F.gathered_logits(loaded.model, batch, sup.rows)
    finally:
        hook.remove()
    V = full_logits.shape[-1]
    n = int(sup.rows.sum())
    assert shapes == [(n, V)]  # the output head ran on the N gathered rows only, never [B, L, V]
    assert got.shape == (n, V)
    torch.testing.assert_close(got, full_logits[sup.rows], rtol=1e-5, atol=1e-5)


class _OldTransformersWrapper(torch.nn.Module):
    """A DDP-like wrapper (`.module`) whose forward refuses a tensor `logits_to_keep`, as transformers
    releases before boolean row masks do (they index `hidden[:, logits_to_keep, :]`)."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, **kwargs):
        if not isinstance(kwargs.get("logits_to_keep", 0), int):
            raise IndexError("too many indices for tensor of dimension 3")
        self.calls += 1
        return self.module(**kwargs)


def test_gathered_logits_need_no_tensor_logits_to_keep_and_go_through_the_wrapper(loaded, batch, full_logits):
    sup = _Sup(batch)
    wrapper = _OldTransformersWrapper(loaded.model)
    with torch.no_grad():
        got = F.gathered_logits(wrapper, batch, sup.rows)
    assert wrapper.calls == 1  # one top-level forward (DDP / FSDP bookkeeping sees it)
    torch.testing.assert_close(got, full_logits[sup.rows], rtol=1e-5, atol=1e-5)
    head = loaded.model.get_output_embeddings()
    assert not head._forward_pre_hooks  # the row hook is gone after the call
    with torch.no_grad():  # and a plain forward afterwards is the full one again
        assert loaded.model(input_ids=batch["input_ids"][:1, :5]).logits.shape[:2] == (1, 5)


def test_hidden_states_head_logits_and_inputs_embeds_paths_agree(loaded, batch, full_logits):
    sup = _Sup(batch)
    b, t = sup.rows.nonzero(as_tuple=True)
    pos = position_ids(loaded.model, batch)
    with torch.no_grad():
        h = F.hidden_states(loaded.model, batch, position_ids=pos)
        assert h.shape[:2] == batch["input_ids"].shape
        torch.testing.assert_close(F.head_logits(loaded.model, h[b, t]), full_logits[b, t], rtol=1e-5, atol=1e-5)
        embeds = loaded.model.get_input_embeddings()(batch["input_ids"])
        via_embeds = F.gathered_logits(loaded.model, batch, sup.rows, inputs_embeds=embeds, position_ids=pos)
    torch.testing.assert_close(via_embeds, full_logits[sup.rows], rtol=1e-5, atol=1e-5)


def test_logits_at_several_overlapping_row_sets(loaded, batch, full_logits):
    b1, t1 = torch.tensor([1, 0, 0]), torch.tensor([5, 7, 3])  # unsorted on purpose
    b2, t2 = torch.tensor([0, 1]), torch.tensor([7, 9])  # overlaps (0, 7)
    with torch.no_grad():
        x1, x2 = F.logits_at(loaded.model, batch, (b1, t1), (b2, t2))
    torch.testing.assert_close(x1, full_logits[b1, t1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x2, full_logits[b2, t2], rtol=1e-5, atol=1e-5)


def test_gathered_logits_gradients_match_full_logits_loss(loaded, batch):
    """Same scalar loss through the gathered path and the full-logits path -> same parameter grads."""
    sup = _Sup(batch)
    model = loaded.model
    head = model.get_output_embeddings().weight

    def grad_of(fn):
        model.zero_grad(set_to_none=True)
        fn().backward()
        g = head.grad.clone()
        model.zero_grad(set_to_none=True)
        return g

    def gathered():
        return torch.nn.functional.cross_entropy(F.gathered_logits(model, batch, sup.rows).float(), sup.target_ids)

    def full():
        logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")}).logits
        return torch.nn.functional.cross_entropy(logits[sup.rows].float(), sup.target_ids)

    torch.testing.assert_close(grad_of(gathered), grad_of(full), rtol=1e-4, atol=1e-6)


def test_rows_must_be_bool(loaded, batch):
    with pytest.raises(TypeError, match="bool"):
        F.gathered_logits(loaded.model, batch, batch["attention_mask"])


def test_unwrap_strips_wrappers(loaded):
    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert F.unwrap(Wrap(Wrap(loaded.model))) is loaded.model
    assert F.unwrap(loaded.model) is loaded.model


def test_slot_embeddings_equal_hand_built_inputs_embeds_with_gradients(loaded, batch):
    """The soft context written inside the forward (a hook on the input embeddings) gives the logits and
    the gradients (into E and into the context's source) of the hand-built `inputs_embeds` path."""
    model = loaded.model
    sup = _Sup(batch)
    pos = position_ids(model, batch)
    coord_ids = loaded.coord_ids
    answer = [(batch["labels"][b] != -100).nonzero()[:, 0] for b in (0, 1)]  # answer positions (no image row)
    slots = (torch.tensor([0, 0, 1]), torch.cat([answer[0][2:4], answer[1][5:6]]))
    weight = model.get_input_embeddings().weight
    runs = []
    for hooked in (True, False):
        model.zero_grad()
        torch.manual_seed(0)
        source = torch.randn(3, 1000, requires_grad=True)  # stands in for the previous iteration's coord logits

        def ctx(e_c):  # [1000, D] -> [3, D]
            return torch.softmax(source, -1) @ e_c

        if hooked:
            with F.slot_embeddings(model, batch["input_ids"].shape, slots, ctx, coord_ids):
                logits = F.gathered_logits(model, batch, sup.rows, position_ids=pos)
        else:
            base = model.get_input_embeddings()(batch["input_ids"])
            e_c = model.get_input_embeddings()(torch.tensor(coord_ids))
            embeds = base.index_put(slots, ctx(e_c))
            logits = F.gathered_logits(model, batch, sup.rows, inputs_embeds=embeds, position_ids=pos)
        logits.float().logsumexp(-1).mean().backward()
        runs.append((logits.detach(), source.grad.clone(), weight.grad.clone()))
    (l1, s1, w1), (l2, s2, w2) = runs
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    assert s1.abs().sum() > 0 and w1[coord_ids].abs().sum() > 0  # gradient reaches the source and E(C)
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w1, w2, rtol=1e-4, atol=1e-6)
    model.zero_grad()
    with pytest.raises(RuntimeError, match="no coordinate slot was replaced"):
        with F.slot_embeddings(model, (9, 9), slots, ctx, coord_ids), torch.no_grad():
            F.gathered_logits(model, batch, sup.rows, position_ids=pos)
