"""Collator padding, explicit mRoPE positions (inputs_embeds equivalence), left-padded generation."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlmdet.format import render_answer
from vlmdet.model.chat import encode_example
from vlmdet.model.collate import Collator, position_ids


def _image(w, h, seed):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def examples(loaded):
    a = encode_example(loaded, _image(64, 64, 0), render_answer([("red circle", (1, 2, 300, 400))]), None)
    b = encode_example(
        loaded, _image(96, 64, 1), render_answer([("dog", (5, 6, 7, 8)), ("blue square", (9, 10, 11, 12))]), None
    )
    return [a, b]


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads(examples, side):
    batch = Collator(pad_id=7, padding_side=side)(examples)
    la, lb = (e["input_ids"].shape[0] for e in examples)
    assert lb > la
    L = lb
    assert batch["input_ids"].shape == (2, L)
    sl = slice(0, la) if side == "right" else slice(L - la, L)
    pad = slice(la, L) if side == "right" else slice(0, L - la)
    assert torch.equal(batch["input_ids"][0, sl], examples[0]["input_ids"])
    assert torch.equal(batch["input_ids"][1], examples[1]["input_ids"])
    assert bool((batch["input_ids"][0, pad] == 7).all())
    assert batch["attention_mask"][0].tolist() == [1 if i in range(L)[sl] else 0 for i in range(L)]
    assert bool((batch["labels"][0, pad] == -100).all())
    assert bool((batch["coord_bins"][0, pad] == -1).all())
    assert bool((batch["slot_class"][0, pad] == 0).all()) and batch["slot_class"].dtype == torch.int8
    assert bool((batch["mm_token_type_ids"][0, pad] == 0).all())
    assert batch["pixel_values"].shape[0] == sum(e["pixel_values"].shape[0] for e in examples)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6]]


def _logits(model, **kw):
    with torch.no_grad():
        return model(use_cache=False, **kw).logits


def test_position_ids_skip_padding_and_follow_the_image_grid(loaded, examples):
    batch = Collator(loaded.pad_id, "right")(examples)
    pos = position_ids(loaded.model, batch)
    assert torch.equal(pos, position_ids(loaded.model.model, batch))  # inner model gives the same
    assert pos.shape == (3,) + batch["input_ids"].shape
    # sample 0 (shorter, right padded): padding gets 0; text positions of real tokens are consecutive
    la = examples[0]["input_ids"].shape[0]
    assert bool((pos[:, 0, la:] == 0).all())
    ids = batch["input_ids"][1]
    img = (ids == loaded.image_token_id).nonzero().flatten()
    start = int(img[0])
    # image tokens: temporal row constant, height/width rows follow the 2 x 3 merged grid (96 x 64 image)
    assert pos[0, 1, img].tolist() == [start] * 6
    assert pos[1, 1, img].tolist() == [start + r for r in (0, 0, 0, 1, 1, 1)]
    assert pos[2, 1, img].tolist() == [start + c for c in (0, 1, 2, 0, 1, 2)]
    # the text after the image continues at start + max(grid h, w)
    assert pos[:, 1, int(img[-1]) + 2].tolist() == [start + 3 + 1] * 3  # +1: <|vision_end|>


def test_inputs_embeds_with_explicit_positions_equals_input_ids_forward(loaded, examples):
    model = loaded.model
    batch = Collator(loaded.pad_id, "right")(examples)
    vision = dict(pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                  mm_token_type_ids=batch["mm_token_type_ids"], attention_mask=batch["attention_mask"])
    ref = _logits(model, input_ids=batch["input_ids"], **vision)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    pos = position_ids(model, batch)
    got = _logits(model, inputs_embeds=embeds, position_ids=pos, **vision)
    mask = batch["attention_mask"].bool()
    assert torch.allclose(ref[mask], got[mask], atol=1e-5)
    # without explicit positions the inputs_embeds path is NOT equivalent (plain 1-D positions):
    model.model.rope_deltas = None
    plain = _logits(model, inputs_embeds=embeds, **vision)
    assert not torch.allclose(ref[mask], plain[mask], atol=1e-3)
    # and the image features do matter
    no_img = _logits(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert not torch.allclose(ref[mask], no_img[mask], atol=1e-3)


def _generate(loaded, batch, n):
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    loaded.model.model.rope_deltas = None
    with torch.no_grad():
        out = loaded.model.generate(**{k: batch[k] for k in keys}, max_new_tokens=n, do_sample=False,
                                    eos_token_id=None, pad_token_id=loaded.pad_id,
                                    return_dict_in_generate=True, output_scores=True)
    return out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.scores, 1)  # [B, n], [B, n, V]


def test_left_padded_generation_matches_single_samples(loaded):
    prompts = [encode_example(loaded, _image(64, 64, 3), None, None),
               encode_example(loaded, _image(96, 64, 4), None, None)]
    # make lengths differ: the second image has more image tokens
    assert prompts[0]["input_ids"].shape[0] != prompts[1]["input_ids"].shape[0]
    left = Collator(loaded.pad_id, "left")
    together, together_scores = _generate(loaded, left(prompts), 6)
    for i, p in enumerate(prompts):
        alone, alone_scores = _generate(loaded, left([p]), 6)
        assert together[i].tolist() == alone[0].tolist()
        # not just the argmax: the whole next-token distributions agree at every step
        assert torch.allclose(together_scores[i], alone_scores[0], atol=1e-4)
