"""load_model: tiny cache, token ids, coord mapping, missing coord tokens, token pieces, the transformers range."""

import re
from pathlib import Path

import pytest

from vlmdet.cli import main
from vlmdet.coords import COORD_TOKENS
from vlmdet.errors import UsageError
from vlmdet.model.load import (TRANSFORMERS_CEILING, TRANSFORMERS_FLOOR, check_transformers, coord_bin_of_id,
                               find_coord_ids, load_model, tiny_checkpoint_path, token_pieces)
from vlmdet.model.tokenizer import build_tiny_tokenizer


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


# ---------------------------------------------------------------- hub model ids

def _hub_snapshot(cache, repo_id, source, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay `source`'s files out as the Hugging Face cache does: models--org--name/{blobs,snapshots,refs}."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for i, f in enumerate(sorted(p for p in source.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy2(f, blob)
        (snap / f.name).symlink_to(blob)
    return snap


def test_hub_id_resolves_from_the_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    from vlmdet.demo import shipped_stage1
    from vlmdet.model.load import resolve_checkpoint

    cache = tmp_path / "hub"
    snap = _hub_snapshot(cache, "acme/Tiny-VL-coord", shipped_stage1())
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no ./acme/Tiny-VL-coord folder here
    assert resolve_checkpoint("acme/Tiny-VL-coord") == ("acme/Tiny-VL-coord", snap)
    loaded = load_model("acme/Tiny-VL-coord")
    assert loaded.path == snap and loaded.contract["prompt"]["system"] == "You detect objects."
    assert len(loaded.coord_ids) == 1000
    # an id that is not in the cache: one line saying what was tried
    with pytest.raises(UsageError) as err:
        load_model("acme/Missing-VL")
    msg = str(err.value)
    assert "acme/Missing-VL: not a local folder" in msg and str(cache) in msg and "HF_HUB_OFFLINE=1" in msg
    assert "\n" not in msg
    # a local folder wins over a hub id of the same name
    local = tmp_path / "acme" / "Tiny-VL-coord"
    local.parent.mkdir()
    local.symlink_to(shipped_stage1())
    source, folder = resolve_checkpoint("acme/Tiny-VL-coord")
    assert source == "acme/Tiny-VL-coord" and folder.resolve() == local.resolve() and not folder.is_absolute()


@pytest.mark.parametrize("name", ["./missing", "/abs/missing", "a/b/c", "just-a-name"])
def test_paths_that_are_not_hub_ids_fail_as_folders(name):
    from vlmdet.model.load import resolve_checkpoint

    with pytest.raises(UsageError, match="not a checkpoint folder"):
        resolve_checkpoint(name)


@pytest.mark.parametrize("installed, ok", [
    ("5.14.1", False),      # before the floor: no replay-safe cache flag on checkpointed layers
    ("5.15.0rc0", False),   # a pre-release of the floor is before it
    ("5.15.0", True),
    ("5.24.0", True),
    ("5.99.1", True),
    ("6.0.0", False),
    ("4.57.6", False),
])
def test_transformers_range_is_checked_with_one_line(installed, ok):
    if ok:
        check_transformers(installed)
    else:
        with pytest.raises(UsageError) as err:
            check_transformers(installed)
        assert str(err.value) == (f"transformers {installed} is installed; vlmdet needs transformers>=5.15.0,<6 "
                                  "(pip install 'transformers>=5.15.0,<6')")


def test_pyproject_declares_the_checked_range():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.findall(r'"transformers([^"]*)"', text) == [f">={TRANSFORMERS_FLOOR},<{TRANSFORMERS_CEILING}"]


def test_commands_that_load_a_model_stop_on_an_unsupported_transformers(tmp_path, monkeypatch, capsys):
    import vlmdet.model.load as load

    monkeypatch.setattr(load, "installed_transformers", lambda: "5.14.1")
    assert main(["doctor", "tiny"]) == 2
    assert main(["expand-vocab", "tiny", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"vlmdet {cmd}: error: transformers 5.14.1 is installed; vlmdet needs transformers>=5.15.0,<6 "
                   "(pip install 'transformers>=5.15.0,<6')" for cmd in ("doctor", "expand-vocab")]
    assert not (tmp_path / "out").exists()
