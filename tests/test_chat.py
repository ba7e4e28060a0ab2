"""Chat rendering + encode_example: labels, slot classes, coord bins, image tokens."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from vlmdet.coords import COORD_TOKENS
from vlmdet.config import PromptConfig
from vlmdet.errors import UsageError
from vlmdet.format import render_answer
from vlmdet.model.chat import (
    COORD,
    DESC,
    IGNORE,
    STRUCT,
    desc_spans,
    encode_example,
    render_prompt,
    system_prompt,
    user_prompt,
)
from vlmdet.model.load import token_pieces
from vlmdet.model.tokenizer import COCO_80_CLASS_NAMES


def _image(w=128, h=96, seed=0):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8))


OBJS = [("red circle", (10, 20, 300, 400)), ('odd "name"', (5, 1, 40, 50)), ("dog", (0, 999, 998, 999))]


def test_prompts_follow_config():
    d = system_prompt(None)
    g = system_prompt(PromptConfig(**{"field_order": "geometry_first"}))
    assert "desc first" in d and "bbox_2d first" in g
    assert "top to bottom" in system_prompt(PromptConfig(**{"ordering": "sorted"}))
    assert "top to bottom" not in system_prompt(PromptConfig(**{"ordering": "random"}))
    coco = PromptConfig(**{"variant": "coco_80"})
    assert "toothbrush" in system_prompt(coco) and "toothbrush" not in d
    both = system_prompt(coco) + "\n" + user_prompt(coco)
    listed = re.findall(r"classes: (.*)\.", both)
    assert len(listed) == 1 and listed[0].split(", ") == list(COCO_80_CLASS_NAMES)  # the list, once
    for name in ("person", "toothbrush", "teddy bear", "hair drier"):
        assert both.count(name) == 1, name
    assert "<|coord_N|>" in d and '{"objects": []}' in d
    assert system_prompt(PromptConfig(**{"system": "S"})) == "S" and user_prompt(PromptConfig(**{"user": "U"})) == "U"


def test_render_prompt_matches_tokenizer_chat_template(loaded):
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "USR"}]},
    ]
    text = loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == render_prompt("SYS", "USR", 1)


def test_desc_spans():
    answer = render_answer(OBJS)
    spans = desc_spans(answer)
    # sorted by (y1, x1): odd name (y1=1), red circle (y1=20), dog (y1=999)
    assert [answer[a:b] for a, b in spans] == ['odd \\"name\\"', "red circle", "dog"]


@pytest.mark.parametrize("field_order", ["desc_first", "geometry_first"])
def test_encode_training_example(loaded, field_order):
    cfg = PromptConfig(field_order=field_order)
    answer = render_answer(OBJS, field_order)
    ex = encode_example(loaded, _image(), answer, cfg)
    ids, labels, slot, bins = ex["input_ids"], ex["labels"], ex["slot_class"], ex["coord_bins"]
    n = ids.shape[0]
    assert labels.shape == slot.shape == bins.shape == ex["mm_token_type_ids"].shape == (n,)
    assert slot.dtype == torch.int8
    sup = labels != -100
    # the assistant span is a suffix, ends with <|im_end|>, and decodes to the answer exactly
    first = int(sup.nonzero()[0])
    assert bool(sup[first:].all()) and int(ids[-1]) == loaded.eot_id
    assert torch.equal(labels[sup], ids[sup])
    tok = loaded.tokenizer
    assert tok.decode(ids[first:-1], skip_special_tokens=False) == answer
    assert tok.decode(ids[:first], skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    # slot classes: ignore exactly outside the span, every non-coord, non-desc token is STRUCT
    assert bool((slot[~sup] == IGNORE).all()) and bool((slot[sup] != IGNORE).all())
    pieces = token_pieces(tok, ids[first:].tolist())
    coord_set = set(loaded.coord_ids)
    desc_text = "".join(p for p, c in zip(pieces, slot[first:].tolist()) if c == DESC)
    assert desc_text == 'odd \\"name\\"' + "red circle" + "dog"  # sorted order
    struct_text = "".join(p for p, c in zip(pieces, slot[first:].tolist()) if c == STRUCT)
    expected_struct = answer
    for d in ("red circle", 'odd \\"name\\"', "dog"):
        expected_struct = expected_struct.replace(d, "", 1)
    for k in (10, 20, 300, 400, 5, 1, 40, 50, 0, 999, 998):
        expected_struct = expected_struct.replace(COORD_TOKENS[k], "")
    assert struct_text == expected_struct + "<|im_end|>"
    # coord slots: 4 per object, bins in answer order
    assert int((slot == COORD).sum()) == 4 * len(OBJS)
    assert all(int(i) in coord_set for i in ids[slot == COORD])
    order = [o[1] for o in sorted(OBJS, key=lambda o: (o[1][1], o[1][0]))]
    assert bins[slot == COORD].tolist() == [k for b in order for k in b]
    assert bool((bins[slot != COORD] == -1).all())


def test_image_tokens_and_pixels(loaded):
    ex = encode_example(loaded, _image(128, 96), render_answer([]), None)
    # 128x96 image, patch 16 -> grid 1 x 6 x 8 = 48 patches; merge 2 -> 12 image tokens
    assert ex["image_grid_thw"].tolist() == [1, 6, 8]
    assert ex["pixel_values"].shape == (48, 3 * 2 * 16 * 16)
    assert int((ex["input_ids"] == loaded.image_token_id).sum()) == 12
    assert torch.equal(ex["mm_token_type_ids"], (ex["input_ids"] == loaded.image_token_id).int())
    # the image placeholder comes before the user text
    text = loaded.tokenizer.decode(ex["input_ids"], skip_special_tokens=False)
    assert text.index("<|vision_end|>") < text.index(user_prompt(None))
    # the empty answer: no coord, no desc
    assert int((ex["slot_class"] == COORD).sum()) == 0 and int((ex["slot_class"] == DESC).sum()) == 0


def test_pixel_values_are_the_normalized_image(loaded):
    img = Image.new("RGB", (64, 32), (255, 0, 128))
    ex = encode_example(loaded, img, None, None)
    pv = ex["pixel_values"].reshape(-1, 3, 2, 16, 16)  # channel, temporal, patch, patch
    assert torch.allclose(pv[:, 0], torch.tensor(1.0).expand_as(pv[:, 0]), atol=1e-5)
    assert torch.allclose(pv[:, 1], torch.tensor(-1.0).expand_as(pv[:, 1]), atol=1e-5)


def test_generation_prompt(loaded):
    ex = encode_example(loaded, _image(), None, None)
    assert bool((ex["labels"] == -100).all()) and bool((ex["slot_class"] == IGNORE).all())
    text = loaded.tokenizer.decode(ex["input_ids"], skip_special_tokens=False)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n" + system_prompt(None) + "<|im_end|>")


@pytest.mark.parametrize("size", [(100, 128), (128, 40)])
def test_image_not_multiple_of_32_is_an_error(loaded, size):
    with pytest.raises(UsageError, match="multiple of 32"):
        encode_example(loaded, _image(*size), None, None)


def test_prompt_config_dataclass_is_accepted(loaded):
    cfg = PromptConfig(field_order="geometry_first", ordering="random")
    assert system_prompt(cfg) == system_prompt(PromptConfig(**{"field_order": "geometry_first", "ordering": "random"}))
    ex = encode_example(loaded, _image(), render_answer(OBJS, "geometry_first"), cfg)
    text = loaded.tokenizer.decode(ex["input_ids"], skip_special_tokens=False)
    assert user_prompt(cfg) in text and "bbox_2d first" in text and "any order" in text
