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
