"""scripts/gpu_check.sh in its CPU mode (`--cpu --tiny`): every phase's code path, one table, CUDA phases skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402  (scripts/ is not a package)

PHASES = ["checkpoint", "stage1_bf16", "logits_mem", "eval", "channel_a", "em_detach", "ab_mixed", "zero2"]


def test_tokenizer_has_qwen_special_token_ids():
    tok = gpu_check.qwen_id_tokenizer()
    ids = tok.convert_tokens_to_ids
    assert len(tok) == 151669
    assert (ids("<|endoftext|>"), ids("<|im_start|>"), ids("<|im_end|>")) == (151643, 151644, 151645)
    assert (ids("<|vision_start|>"), ids("<|vision_end|>"), ids("<|image_pad|>"), ids("<|video_pad|>")) == \
        (151652, 151653, 151655, 151656)
    assert ids("</think>") == 151668 and tok.pad_token_id == 151643
    text = 'Detect: {"desc": "red circle"} ünï'
    assert tok.decode(tok(text)["input_ids"]) == text
    assert max(tok(text)["input_ids"]) < 5000  # text never lands on the filler pieces


def test_full_config_has_the_2b_dimensions():
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    cfg = Qwen3VLConfig(**gpu_check.model_config(tiny=False))
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    text = cfg.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.vocab_size) == (28, 2048, 151936)
    assert cfg.vision_config.depth == 24 and cfg.image_token_id == 151655
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, like the released 2B
    n = sum(p.numel() for p in model.parameters())
    assert 2.0e9 < n < 2.2e9, n  # Qwen3-VL-2B: about 2.1 B parameters


def test_full_logits_loss_is_token_ce_over_every_row():
    """The logits_mem phase's reference: the model's own loss equals CE over the gathered logits of every row."""
    import torch
    from PIL import Image

    from vlmdet.format import render_answer
    from vlmdet.model.chat import encode_example
    from vlmdet.model.collate import Collator
    from vlmdet.model.load import load_model
    from vlmdet.train.forward import gathered_logits

    loaded = load_model("tiny")
    exs = [encode_example(loaded, Image.new("RGB", (64, 64), (200, 10, 10)), render_answer([("red circle", (10, 20, 300, 400))])),
           encode_example(loaded, Image.new("RGB", (64, 32), (10, 10, 200)), render_answer([("blue square", (1, 2, 903, 904))]))]
    batch = Collator(loaded.pad_id)(exs)
    B, L = batch["input_ids"].shape
    with torch.no_grad():
        logits = gathered_logits(loaded.model, batch, torch.ones(B, L, dtype=torch.bool)).view(B, L, -1)
        want = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=-100)
        got = gpu_check.full_logits_loss(loaded.model, batch)
    assert (batch["labels"] != -100).sum() > 10
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_cpu_tiny_run_prints_one_table_with_every_phase(tmp_path):
    out = tmp_path / "gc"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--cpu", "--tiny", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "gpu_check.json").read_text())["rows"]
    assert [r["phase"] for r in rows] == PHASES
    status = {r["phase"]: r["status"] for r in rows}
    notes = {r["phase"]: r["notes"] for r in rows}
    assert status.pop("logits_mem") == status.pop("zero2") == "skipped: no CUDA"
    assert set(status.values()) == {"ok"}, status
    assert "coord ids 151669..152668" in notes["checkpoint"] and "embedding rows 152669" in notes["checkpoint"]
    changed = float(notes["stage1_bf16"].split("weights changed ")[1].split("%")[0])
    assert changed >= 90.0
    assert "forwards per step 2.0" in notes["channel_a"] and "forwards per step 3.0" in notes["em_detach"]
    assert "Channel-B steps 1 of 2" in notes["ab_mixed"]
    table = (out / "gpu_check.md").read_text()
    assert table in proc.stdout and table.count("\n| ") == 1 + len(PHASES)
    assert not (out / "work").exists()
