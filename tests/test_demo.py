"""vlmdet demo: argument checks, data reuse, and the whole path in --smoke mode."""

from __future__ import annotations

import json
import os

import pytest

from vlmdet.cli import main
from vlmdet.config import load_config
from vlmdet.demo import SMOKE_DATA, config_dir, make_data, run_demo, shipped_stage1
from vlmdet.errors import UsageError


def test_demo_configs_share_the_prompt_and_differ_in_stage():
    s1 = load_config(config_dir() / "stage1.yaml")
    s2 = load_config(config_dir() / "stage2.yaml")
    assert (s1.stage, s2.stage) == (1, 2)
    assert s1.prompt == s2.prompt  # Stage-2 must see the prompt Stage-1 learned
    assert s2.stage2.b_ratio == 0.0 and s2.losses.coord_gate > 0 and not s2.losses.ce_on_coord_slots
    assert s1.losses.ce_on_coord_slots


def test_make_data_reuses_a_matching_set(tmp_path):
    params = {**SMOKE_DATA, "n_train": 2, "n_val": 1}
    make_data(tmp_path, params, progress=False)
    first = (tmp_path / "train.jsonl").stat().st_mtime_ns
    os.utime(tmp_path / "train.jsonl", ns=(1, 1))
    make_data(tmp_path, params, progress=False)
    assert (tmp_path / "train.jsonl").stat().st_mtime_ns == 1  # untouched
    make_data(tmp_path, {**params, "n_train": 3}, progress=False)
    assert (tmp_path / "train.jsonl").stat().st_mtime_ns not in (1, first) or \
        len((tmp_path / "train.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 3


def test_targets_name_the_strict_rate():
    from vlmdet.demo import SUMMARY_KEYS, TARGETS

    assert TARGETS == {"eval_rollout/bbox_AP50": 0.5, "eval_rollout/sample_clean_rate": 0.95}
    assert {"sample_valid_pred_rate", "sample_clean_rate", "coord_slot_leak_rate"} <= set(SUMMARY_KEYS)


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(UsageError, match="exclude"):
        run_demo(tmp_path, from_scratch=True, stage1=str(tmp_path))
    assert main(["demo", "--out", str(tmp_path), "--stage1", str(tmp_path / "nope")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_shipped_stage1_checkpoint_is_small_and_complete():
    ckpt = shipped_stage1()
    if not (ckpt / "config.json").is_file():
        pytest.fail(f"{ckpt} missing: `vlmdet demo` starts from it (make it with `vlmdet demo --from-scratch`)")
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    assert size < 8_000_000
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (ckpt / name).is_file(), name


@pytest.mark.slow
def test_demo_smoke(tmp_path, capsys):
    assert main(["demo", "--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "report: " + str(tmp_path / "report" / "report.html") in out
    for phase in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert phase in out
    s2 = tmp_path / "runs" / "demo_stage2"
    metrics = json.loads((s2 / "eval" / "step_000002" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["eval_rollout/sample_valid_pred_rate"] <= 1.0
    assert 0.0 <= metrics["eval_rollout/sample_clean_rate"] <= 1.0
    assert "sample_clean_rate" in out and "coord_slot_leak_rate" in out
    assert (s2 / "monitor_dumps" / "step_000001.json").is_file()
    assert (s2 / "eval" / "step_000000" / "metrics.json").is_file()  # the Stage-1 checkpoint as step 0
    assert (tmp_path / "runs" / "demo_stage1" / "checkpoint-final" / "config.json").is_file()
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| 0 | demo_stage2 |" in md and "| 2 | demo_stage2 |" in md and "demo_stage1" not in md
    assert "| demo_stage1 |" in (tmp_path / "report_stage1" / "report.md").read_text()
    # the demo logs to TensorBoard (names as in logging.jsonl, the step-0 eval too) and says how to open it
    assert f"TensorBoard: tensorboard --logdir {(tmp_path / 'runs').resolve()}" in out
    assert list((s2 / "tb").rglob("events.out.tfevents.*"))
    assert "eval @ step 0 " in out and "{'loss'" not in out


def test_summary_text_counts_and_phases():
    from vlmdet.demo import summary_text

    s = {"stage1_checkpoint": "ckpt", "runs": ["r"], "final_step": 300, "smoke": False,
         "metrics": {"bbox_AP50": 0.59, "parse_dropped_invalid": 0.0, "sample_valid_pred_rate": 0.99},
         "targets": {"eval_rollout/bbox_AP50": (0.59, True), "eval_rollout/sample_clean_rate": (0.99, True)},
         "seconds": {"data": 0.02, "stage2": 132.4, "eval": 1.2, "report": 8.0},  # stage1 only picked a checkpoint
         "report_html": "r.html", "report_md": "r.md", "tensorboard": "tensorboard --logdir runs/demo/runs"}
    text = summary_text(s, 142.0)
    assert "parse_dropped_invalid 0," in text and "0.000, " not in text.split("parse_dropped_invalid")[1][:8]
    assert "time: data <0.1s, stage2 2m12s, eval 1.2s, report 8.0s, total 2m22s" in text
    assert " 0s" not in text and "stage1" not in text.split("time:")[1]
    assert text.endswith("TensorBoard: tensorboard --logdir runs/demo/runs")

