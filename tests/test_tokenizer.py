"""The tiny tokenizer: coord tokens, structure pieces, exact round trips for any text."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmdet.config import PromptConfig
from vlmdet.coords import COORD_TOKENS
from vlmdet.data.synth import CLASS_NAMES
from vlmdet.format import render_answer
from vlmdet.model.chat import system_prompt, user_prompt
from vlmdet.model.tokenizer import (
    CHAT_SPECIAL_TOKENS,
    COCO_80_CLASS_NAMES,
    COLOURS,
    SHAPES,
    STRUCTURE_PIECES,
    build_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _roundtrip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return tok.decode(ids, skip_special_tokens=False), ids


def test_coord_tokens_one_contiguous_id_each_in_bin_order(tok):
    ids = tok.convert_tokens_to_ids(list(COORD_TOKENS))
    assert ids == list(range(ids[0], ids[0] + 1000))
    for k in (0, 7, 42, 999):
        assert tok(COORD_TOKENS[k], add_special_tokens=False)["input_ids"] == [ids[k]]
    # adjacent coord tokens never merge or split
    text = "".join(COORD_TOKENS[k] for k in (5, 55, 555))
    assert tok(text, add_special_tokens=False)["input_ids"] == [ids[5], ids[55], ids[555]]


def test_out_of_range_coord_literal_is_not_a_coord_token(tok):
    text, ids = _roundtrip(tok, "<|coord_1000|>")
    coord = set(tok.convert_tokens_to_ids(list(COORD_TOKENS)))
    assert text == "<|coord_1000|>" and len(ids) > 1 and not coord & set(ids)


@pytest.mark.parametrize("piece", STRUCTURE_PIECES + CHAT_SPECIAL_TOKENS)
def test_structure_and_chat_pieces_are_single_tokens(tok, piece):
    assert len(tok(piece, add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize("field_order", ["desc_first", "geometry_first"])
def test_answer_tokenizes_into_structure_pieces_words_and_coords(tok, field_order):
    answer = render_answer([("red circle", (1, 2, 30, 40)), ("dog", (3, 50, 60, 70))], field_order)
    pieces = tok.tokenize(answer)
    # one token per structure piece / word / coord: hand count
    # prefix + 2 records x (open, desc words, middle piece, 4 coords, 3 seps, close) + 1 record sep + suffix
    words = 2 + 1
    expected = 1 + 2 * (1 + 1 + 4 + 3 + 1) + words + 1 + 1
    assert len(pieces) == expected, pieces
    assert "".join(pieces) == answer


def test_coord_tokens_survive_skip_special_tokens_and_chat_tokens_do_not(tok):
    ids = tok.convert_tokens_to_ids(list(COORD_TOKENS))
    answer = render_answer([("red circle", (3, 4, 997, 998))])
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    seq = tok(answer, add_special_tokens=False)["input_ids"] + [eot]
    assert tok.decode(seq, skip_special_tokens=True) == answer  # what serving stacks show
    assert tok.decode(seq, skip_special_tokens=False) == answer + "<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "".join(COORD_TOKENS)
    assert set(ids).isdisjoint(tok.all_special_ids)
    assert ids[0] == len(CHAT_SPECIAL_TOKENS) + min(tok.convert_tokens_to_ids(list(CHAT_SPECIAL_TOKENS)))


def test_special_ids_and_pad(tok):
    assert tok.pad_token == "<|endoftext|>"
    assert tok.eos_token == "<|im_end|>"
    assert 1000 + len(CHAT_SPECIAL_TOKENS) < len(tok) < 3000


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tab\tnew\nline  two  spaces ",
        "emoji 😀 and accents é ñ ü",
        "CJK numerals 一百二十三 and other 猫",
        'quotes \\" backslash \\\\ and json {"a": [1, 2]}',
        "85, 120, 三百",
        "<|coord_5|><|im_end|><|image_pad|>",
    ],
)
def test_any_text_round_trips(tok, text):
    assert _roundtrip(tok, text)[0] == text


def test_known_words_are_single_tokens(tok):
    for word in ("red", "circle", "person", "teddy", *(w for name in CLASS_NAMES for w in name.split())):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1
    # an unknown word falls back to several pieces
    assert len(tok("zqxjv", add_special_tokens=False)["input_ids"]) > 1


_NAMES = st.sampled_from(list(CLASS_NAMES) + list(COCO_80_CLASS_NAMES) + [f"{c} {s}" for c in COLOURS for s in SHAPES])
_DESC = st.one_of(_NAMES, st.text(min_size=1, max_size=12))
_BOX = st.tuples(*[st.integers(0, 999)] * 4)


@settings(max_examples=60, deadline=None)
@given(
    objs=st.lists(st.tuples(_DESC, _BOX), max_size=5),
    field_order=st.sampled_from(["desc_first", "geometry_first"]),
)
def test_rendered_answers_round_trip(tok, objs, field_order):
    answer = render_answer(objs, field_order)
    assert _roundtrip(tok, answer)[0] == answer


@pytest.mark.parametrize("variant", ["default", "coco_80"])
@pytest.mark.parametrize("field_order", ["desc_first", "geometry_first"])
def test_prompts_round_trip_without_unknown_or_byte_tokens(tok, variant, field_order):
    cfg = PromptConfig(variant=variant, field_order=field_order)
    for text in (system_prompt(cfg), user_prompt(cfg)):
        decoded, ids = _roundtrip(tok, text)
        assert decoded == text
        # every prompt word is in the vocabulary: no byte fallback, no unknown
        assert all(i > 256 for i in ids)


def test_build_without_coord_tokens(tok):
    plain = build_tiny_tokenizer(coord_tokens=False)
    assert len(tok) - len(plain) == 1000
    assert COORD_TOKENS[0] not in plain.get_vocab()
