"""expand-vocab on a tiny Qwen3-VL checkpoint without coordinate tokens."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vlmdet.cli import main
from vlmdet.coords import COORD_TOKENS
from vlmdet.errors import UsageError
from vlmdet.model.expand import expand_vocab, plain_coord_tokens
from vlmdet.model.load import load_model
from vlmdet.model.tiny import build_tiny_checkpoint


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("plain") / "ckpt", seed=3, coord_tokens=False)


@pytest.fixture(scope="module")
def expanded(plain, tmp_path_factory):
    before = _digest(plain)
    dst = tmp_path_factory.mktemp("exp") / "ckpt"
    summary = expand_vocab(plain, dst)
    assert _digest(plain) == before  # SRC untouched
    return dst, summary


def test_plain_checkpoint_is_refused_by_load_model(plain):
    with pytest.raises(UsageError, match="vlmdet expand-vocab"):
        load_model(str(plain))


def test_expand_then_load(plain, expanded):
    dst, summary = expanded
    assert summary["added"] == 1000 and summary["already_present"] == 0
    assert summary["vocab_size_after"] == summary["vocab_size_before"] + 1000
    assert summary["embedding_rows_after"] == summary["vocab_size_after"] and summary["tied"]
    loaded = load_model(str(dst))
    ids = loaded.coord_ids
    assert ids == list(range(summary["coord_id_first"], summary["coord_id_first"] + 1000))
    emb = loaded.model.get_input_embeddings().weight.detach()
    assert loaded.model.lm_head.weight.data_ptr() == emb.data_ptr()
    old = load_file(plain / "model.safetensors")
    old_emb = old["model.language_model.embed_tokens.weight"]
    n_old = old_emb.shape[0]
    # old rows unchanged; new rows distinct, finite, centred on the old rows' mean
    assert torch.equal(emb[:n_old], old_emb)
    new = emb[ids]
    assert torch.isfinite(new).all()
    assert torch.unique(new, dim=0).shape[0] == 1000
    assert torch.allclose(new.mean(0), old_emb.mean(0), atol=0.01)
    assert float(new.std(0).mean()) < float(old_emb.std(0).mean())
    # other weights unchanged; non-weight files (image processor) copied
    new_w = load_file(dst / "model.safetensors")
    for k, v in old.items():
        if "embed_tokens" not in k and "lm_head" not in k:
            assert torch.equal(new_w[k], v), k
    assert (dst / "preprocessor_config.json").read_text() == (plain / "preprocessor_config.json").read_text()
    # coordinate tokens tokenize to their ids
    tok = loaded.tokenizer
    assert tok(COORD_TOKENS[17] + COORD_TOKENS[3], add_special_tokens=False)["input_ids"] == [ids[17], ids[3]]


def test_expand_is_idempotent(expanded, tmp_path):
    dst, _ = expanded
    again = tmp_path / "again"
    assert main(["expand-vocab", str(dst), str(again)]) == 0
    a, b = load_file(dst / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (dst / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


def test_expanded_coord_tokens_are_plain(expanded):
    dst, summary = expanded
    tok = load_model(str(dst)).tokenizer
    ids = tok.convert_tokens_to_ids(list(COORD_TOKENS))
    assert tok.decode(ids, skip_special_tokens=True) == "".join(COORD_TOKENS)
    assert summary["made_plain"] == 0  # added plain in the first place


def _make_coords_special(folder):
    """Rewrite a checkpoint's tokenizer files the way older vlmdet versions wrote them: coords special."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    for entry in data["added_tokens"]:
        if entry["content"] in set(COORD_TOKENS):
            entry["special"] = True
    path.write_text(json.dumps(data))
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["extra_special_tokens"] = list(COORD_TOKENS[:3])
    path.write_text(json.dumps(cfg))


def test_expand_makes_special_coord_tokens_plain_without_changing_ids_or_weights(expanded, tmp_path):
    dst, _ = expanded
    old = tmp_path / "old"
    shutil.copytree(dst, old)
    _make_coords_special(old)
    old_tok = load_model(str(old)).tokenizer
    old_ids = old_tok.convert_tokens_to_ids(list(COORD_TOKENS))
    assert old_tok.decode(old_ids[:2], skip_special_tokens=True) == ""  # the bug: boxes vanish when served
    new = tmp_path / "new"
    summary = expand_vocab(old, new)
    assert summary["made_plain"] == 1000 and summary["added"] == 0
    tok = load_model(str(new)).tokenizer
    assert tok.convert_tokens_to_ids(list(COORD_TOKENS)) == old_ids
    assert tok.get_vocab() == old_tok.get_vocab()
    assert tok.decode(old_ids, skip_special_tokens=True) == "".join(COORD_TOKENS)
    assert "extra_special_tokens" not in json.loads((new / "tokenizer_config.json").read_text()) or not set(
        json.loads((new / "tokenizer_config.json").read_text())["extra_special_tokens"]) & set(COORD_TOKENS)
    a, b = load_file(old / "model.safetensors"), load_file(new / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert plain_coord_tokens(new) == 0  # nothing left to change


def test_refuses_bad_destinations(expanded, tmp_path):
    dst, _ = expanded
    with pytest.raises(UsageError, match="differ"):
        expand_vocab(dst, dst)
    with pytest.raises(UsageError, match="not empty"):
        expand_vocab(dst, dst.parent)
    with pytest.raises(UsageError, match="not a checkpoint"):
        expand_vocab(tmp_path, tmp_path / "x")


def test_untied_head_gets_its_own_new_rows(tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    from vlmdet.model.tiny import tiny_config, tiny_image_processor
    from vlmdet.model.tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer(coord_tokens=False)
    cfg = tiny_config(tok)
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(cfg)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    src = tmp_path / "untied"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    tiny_image_processor().save_pretrained(src)
    summary = expand_vocab(src, tmp_path / "dst")
    assert summary["tied"] is False and summary["added"] == 1000
    loaded = load_model(str(tmp_path / "dst"))
    head = loaded.model.lm_head.weight.detach()
    emb = loaded.model.get_input_embeddings().weight.detach()
    assert head.data_ptr() != emb.data_ptr()
    n_old = len(tok)
    assert torch.equal(head[:n_old], model.lm_head.weight.detach())
    ids = loaded.coord_ids
    assert torch.unique(head[ids], dim=0).shape[0] == 1000
    assert torch.allclose(head[ids].mean(0), model.lm_head.weight.detach().mean(0), atol=0.01)
    assert not torch.allclose(head[ids], emb[ids])
