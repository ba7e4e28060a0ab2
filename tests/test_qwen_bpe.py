"""model/qwen_bpe.py: Qwen's byte-level BPE rebuilt from qwen.tiktoken, checked against ids looked up
by hand in the ranks file and against tiktoken's own encoder on the same ranks."""

from __future__ import annotations

import base64
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmdet.errors import UsageError
from vlmdet.model.qwen_bpe import NUM_RANKS, QWEN_ADDED_TOKENS, QWEN_PATTERN, build_qwen_tokenizer, ranks_file


@pytest.fixture(scope="module")
def tok():
    return build_qwen_tokenizer()


@pytest.fixture(scope="module")
def ranks():
    """token bytes -> rank, read straight from the file (one `base64 rank` pair a line)."""
    out = {}
    for line in ranks_file().read_bytes().splitlines():
        token, rank = line.split()
        out[base64.b64decode(token)] = int(rank)
    return out


# ids looked up by hand in qwen.tiktoken (grep of the base64 of each piece)
HAND = [
    ("]},", [66125]),  # one token: the record's closing and the separator's comma
    ("]}", [13989]),
    ("]}]}", [13989, 13989]),  # no `]}]}` or `]}]` rank
    (", ", [11, 220]),  # no `, ` rank
    ('{"objects": [', [4913, 19210, 788, 508]),
    ('{"objects": [{"', [4913, 19210, 788, 61753]),  # the opener ` [` merged with the record's `{"`
    ('{"desc": "red circle", "bbox_2d": [', [4913, 8614, 788, 330, 1151, 12671, 497, 330, 58456, 62, 17, 67, 788, 508]),
    (']}, {"', [66125, 5212]),
]


@pytest.mark.parametrize("text, ids", HAND)
def test_hand_looked_up_ids(tok, ranks, text, ids):
    by_id = {r: b for b, r in ranks.items()}
    assert b"".join(by_id[i] for i in ids) == text.encode()  # the hand table is consistent with the file
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.decode(ids) == text


def test_vocabulary_and_added_tokens(tok, ranks):
    assert len(ranks) == NUM_RANKS == 151643 and sorted(ranks.values()) == list(range(NUM_RANKS))
    assert len(tok) == 151669
    ids = tok.convert_tokens_to_ids
    assert [ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [151643, 151644, 151645]
    assert [ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")] == [
        151652, 151653, 151655, 151656]
    assert ids("</think>") == 151668
    assert [ids(content) for _, content, _ in QWEN_ADDED_TOKENS] == list(range(151643, 151669))
    assert tok.pad_token_id == 151643 and tok.eos_token_id == 151645
    # added tokens are atomic inside text
    assert tok("]}<|im_end|>", add_special_tokens=False)["input_ids"] == [13989, 151645]


@pytest.fixture(scope="module")
def reference():
    """tiktoken's encoder on the same ranks, pattern and added tokens: an independent implementation."""
    import tiktoken

    specials = {content: tid for tid, content, _ in QWEN_ADDED_TOKENS}
    ranks = tiktoken.load.load_tiktoken_bpe(str(ranks_file()))
    return tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


TEXTS = [
    '{"objects": [{"desc": "traffic light", "bbox_2d": [<|coord_12|>, <|coord_5|>, <|coord_999|>, <|coord_480|>]}]}',
    '{"objects": []}',
    "Sure! here: {\"objects\": [{\"desc\": \"dog\", \"bbox_2d\": [12, 34, 56, 78]}, {\"desc\": \"cat\"",
    "I'll say DON'T you're   three  spaces\n\n\tand\r\nnewlines 2026 3.14159",
    "红色的圆 三个 ① émigré naïve 😀 👍🏽 ﬁ",
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>List the objects.<|im_end|>\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_agrees_with_tiktoken(tok, reference, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == reference.encode(text, allowed_special="all")
    assert tok.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_agrees_with_tiktoken_on_any_text(tok, reference, text):
    text = unicodedata.normalize("NFC", text)  # the tokenizer normalizes NFC; tiktoken takes text as is
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == reference.encode(text, allowed_special="all")
    assert tok.decode(ids) == text


def test_missing_ranks_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(UsageError, match="scripts/setup.sh dev"):
        ranks_file()


def test_a_file_that_is_not_qwens_is_refused(tmp_path):
    bad = tmp_path / "small.tiktoken"
    bad.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    with pytest.raises(UsageError, match="256 ranks, expected 151643"):
        build_qwen_tokenizer.__wrapped__(bad)
