"""vlmdet doctor: PASS on the tiny checkpoint, FAIL on deliberately broken ones."""

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vlmdet.cli import main
from vlmdet.model import chat
from vlmdet.model.doctor import run_doctor
from vlmdet.model.load import load_model, tiny_checkpoint_path


def _by_name(checks):
    return {c.name: c.ok for c in checks}


@pytest.fixture()
def tiny_copy(tmp_path):
    return shutil.copytree(tiny_checkpoint_path(), tmp_path / "ckpt")


def test_tiny_passes_every_check(capsys):
    assert main(["doctor", "tiny"]) == 0
    out = capsys.readouterr().out
    for name in ("coord_ids", "embedding_rows", "coord_rows_distinct", "supervision", "round_trip", "stop_token",
                 "serving_decode"):
        assert f"PASS {name}:" in out
    assert "FAIL" not in out
    assert "  C '<|coord_12|>'" in out and "  D 'red'" in out and "  S '<|im_end|>'" in out


def test_wrong_generation_eos_fails(tiny_copy, capsys):
    path = tiny_copy / "generation_config.json"
    gen = json.loads(path.read_text())
    gen["eos_token_id"] = [gen["pad_token_id"]]
    path.write_text(json.dumps(gen))
    assert main(["doctor", str(tiny_copy)]) == 1
    out = capsys.readouterr().out
    assert "FAIL stop_token:" in out and "PASS coord_ids:" in out


def test_special_coord_tokens_fail_serving_decode(tiny_copy):
    path = tiny_copy / "tokenizer.json"
    data = json.loads(path.read_text())
    for entry in data["added_tokens"]:
        if entry["content"].startswith("<|coord_"):
            entry["special"] = True
    path.write_text(json.dumps(data))
    checks = {c.name: c for c in run_doctor(str(tiny_copy), out=lambda s: None)}
    assert not checks["serving_decode"].ok and "1000 coordinate tokens are special" in checks["serving_decode"].detail
    assert checks["coord_ids"].ok and checks["supervision"].ok


def test_shipped_demo_checkpoint_is_serving_ready():
    from vlmdet.demo import shipped_stage1

    checks = _by_name(run_doctor(str(shipped_stage1()), out=lambda s: None))
    assert checks["serving_decode"] and checks["coord_ids"]


def test_identical_coord_rows_fail(tiny_copy):
    ids = load_model(str(tiny_copy)).coord_ids
    weights = load_file(tiny_copy / "model.safetensors")
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in weights:
            weights[key][ids] = weights[key][ids[0]].clone()
    save_file(weights, tiny_copy / "model.safetensors", metadata={"format": "pt"})
    checks = _by_name(run_doctor(str(tiny_copy), out=lambda s: None))
    assert checks["coord_rows_distinct"] is False
    assert checks["coord_ids"] and checks["stop_token"] and checks["supervision"]


def _drop_eot_label(ex):
    ex["labels"][-1] = -100  # the end-of-turn token loses its label


def _desc_as_struct(ex):
    ex["slot_class"][ex["slot_class"] == chat.DESC] = chat.STRUCT


def _first_coord_as_struct(ex):
    where = (ex["slot_class"] == chat.COORD).nonzero().flatten()
    if len(where):  # the built-in examples include an empty answer
        ex["slot_class"][where[0]] = chat.STRUCT
        ex["coord_bins"][where[0]] = -1


@pytest.mark.parametrize("breakage", [_drop_eot_label, _desc_as_struct, _first_coord_as_struct])
def test_broken_supervision_fails(monkeypatch, breakage):
    real = chat.encode_example

    def broken(loaded, image, answer, prompt_cfg):
        ex = real(loaded, image, answer, prompt_cfg)
        breakage(ex)
        return ex

    monkeypatch.setattr(chat, "encode_example", broken)
    checks = _by_name(run_doctor("tiny", out=lambda s: None))
    assert checks["supervision"] is False and checks["round_trip"] is True


def test_data_records_are_checked(tmp_path):
    Image.new("RGB", (64, 32), (0, 0, 0)).save(tmp_path / "a.png")
    rec = {"image_id": "a", "image": "a.png", "width": 64, "height": 32,
           "objects": [{"desc": "green triangle", "bbox_2d": [1.5, 2.0, 30.0, 20.5]}]}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(rec) + "\n")
    lines = []
    checks = run_doctor("tiny", data=data, field_order="geometry_first", out=lines.append)
    assert all(c.ok for c in checks)
    assert "1 answers" in next(line for line in lines if line.startswith("PASS supervision"))
    assert lines[1] == "  S '{\"objects\": ['" and lines[2] == "  S '{\"bbox_2d\": ['"
