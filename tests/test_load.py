"""load_model: tiny cache, token ids, coord mapping, missing coord tokens, token pieces."""

import pytest

from vlmdet.coords import COORD_TOKENS
from vlmdet.errors import UsageError
from vlmdet.model.load import coord_bin_of_id, find_coord_ids, load_model, tiny_checkpoint_path, token_pieces
from vlmdet.model.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny")


def test_tiny_loads_with_ids(loaded):
    tok = loaded.tokenizer
    assert loaded.coord_ids == tok.convert_tokens_to_ids(list(COORD_TOKENS))
    assert len(set(loaded.coord_ids)) == 1000
    assert loaded.eot_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert loaded.pad_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert loaded.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(tok)
    assert loaded.model.config.text_config.rope_parameters["mrope_section"] == [8, 4, 4]
    # tied head
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.get_input_embeddings().weight.data_ptr()
    assert loaded.coord_bin_of_id[loaded.coord_ids[123]] == 123
    assert loaded.processor.patch_size == 16 and loaded.processor.merge_size == 2


def test_tiny_cache_is_reused(loaded):
    path = tiny_checkpoint_path()
    assert path == loaded.path
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_checkpoint_path() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_tiny_cache_is_built_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDET_CACHE", str(tmp_path))
    path = tiny_checkpoint_path()
    assert path.parent == tmp_path and (path / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp folder left behind


def test_missing_coord_tokens_names_expand_vocab():
    with pytest.raises(UsageError, match="vlmdet expand-vocab"):
        find_coord_ids(build_tiny_tokenizer(coord_tokens=False))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="not a checkpoint"):
        load_model(str(tmp_path))
    with pytest.raises(UsageError, match="dtype"):
        load_model("tiny", dtype="float64")


def test_coord_bin_of_id():
    assert coord_bin_of_id([10, 12, 11]) == {10: 0, 12: 1, 11: 2}


@pytest.mark.parametrize(
    "text",
    ['{"objects": [{"desc": "red circle", "bbox_2d": [<|coord_1|>, <|coord_2|>]}]}<|im_end|>',
     "é😀 猫 mixed ascii", ""],
)
def test_token_pieces_join_to_decoded_text(loaded, text):
    tok = loaded.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text


def test_token_pieces_of_coord_tokens_are_the_literals(loaded):
    pieces = token_pieces(loaded.tokenizer, loaded.coord_ids[:3] + [loaded.eot_id])
    assert pieces == ["<|coord_0|>", "<|coord_1|>", "<|coord_2|>", "<|im_end|>"]
