"""The tiny Qwen3-VL: real config, deterministic build, loadable like any checkpoint."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vlmdet.model.tiny import TINY_MODEL_CONFIG, build_tiny_checkpoint, tiny_config
from vlmdet.model.tokenizer import build_tiny_tokenizer


def test_config_takes_mrope_sections_and_tokenizer_ids():
    tok = build_tiny_tokenizer()
    cfg = tiny_config(tok)
    text = cfg.text_config
    assert text.rope_parameters["mrope_section"] == [8, 4, 4]
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.head_dim == 32
    assert text.vocab_size == len(tok)
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_config.out_hidden_size == text.hidden_size == TINY_MODEL_CONFIG["text_config"]["hidden_size"]
    assert list(cfg.vision_config.deepstack_visual_indexes) == [1]


@pytest.mark.slow
def test_build_is_deterministic_and_seeded(tmp_path):
    a = build_tiny_checkpoint(tmp_path / "a", seed=0)
    b = build_tiny_checkpoint(tmp_path / "b", seed=0)
    c = build_tiny_checkpoint(tmp_path / "c", seed=1)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    files = {p.name for p in a.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "generation_config.json"} <= files
    gen = json.loads((a / "generation_config.json").read_text())
    tok = build_tiny_tokenizer()
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>")]
    pre = json.loads((a / "preprocessor_config.json").read_text())
    assert (pre["patch_size"], pre["merge_size"], pre["temporal_patch_size"]) == (16, 2, 2)
    # tied head: one table in the file
    n_params = sum(v.numel() for v in wa.values())
    assert 0.8e6 < n_params < 2e6
