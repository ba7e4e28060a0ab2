"""Stage-2 end to end on the tiny model: `vlmdet train configs/stage2/...` (see docs/STAGE2.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmdet.config import load_config
from vlmdet.train.schedule import is_channel_b

ROOT = Path(__file__).resolve().parents[1]
STAGE2 = ROOT / "configs" / "stage2"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from vlmdet.data.synth import make_synth

    out = tmp_path_factory.mktemp("synth")
    make_synth(out, n_train=8, n_val=2, seed=0, size=64)
    return out


def overrides(synth, out, **extra):
    base = {
        "model.name_or_path": "tiny",
        "data.train": str(synth / "train.jsonl"),
        "data.val": str(synth / "val.jsonl"),
        "output_dir": str(out),
        "training.per_device_train_batch_size": 2,
        "training.logging_steps": 1,
        "training.warmup_steps": 0,
        "training.report_to": "[]",
        "training.save_steps": 1000,
        "eval.max_samples": 2,
        "rollout.max_new_tokens": 16,
        "rollout.batch_size": 2,
        "monitor.draw_images": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def events(run_dir: Path) -> dict[int, dict]:
    """Training log events by step (the last one of a step wins)."""
    out: dict[int, dict] = {}
    for line in (run_dir / "logging.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if "loss" in ev:
            out[ev["step"]] = ev
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in STAGE2.glob("*.yaml")))
def test_shipped_stage2_configs_load(name):
    cfg = load_config(STAGE2 / name)
    assert cfg.stage == 2 and cfg.losses.coord_gate == 1.0 and cfg.losses.ce_on_coord_slots is False
    assert cfg.monitor.enabled and cfg.monitor.max_text_chars == 0 and cfg.eval.eval_steps > 0
    want = {"a_only": ("unroll", 0.0), "a_only_em_detach": ("em_detach", 0.0), "ab_mixed": ("unroll", 0.05),
            "a_only_fsdp": ("unroll", 0.0)}
    key = name.removesuffix(".yaml").removeprefix("qwen3vl_2b_")
    assert (cfg.stage2.softctx_grad_mode, cfg.stage2.b_ratio) == want[key]
    assert ("full_shard" in cfg.training.fsdp) == key.endswith("_fsdp")


@pytest.mark.slow
def test_a_only_trains_with_rollout_eval_and_dumps(synth, tmp_path):
    from vlmdet.train.cli import train

    cfg = load_config(
        STAGE2 / "a_only_em_detach.yaml",
        overrides(synth, tmp_path, **{"training.max_steps": 3, "eval.eval_steps": 0, "eval.steps": "[2]"}),
    )
    summary = train(cfg, ["test"])
    run = Path(summary["run_dir"])
    ev = events(run)
    assert {1, 3} <= set(ev) and summary["global_step"] == 3
    for e in ev.values():
        assert e["stage2/channel_a"] == 1.0 and e["stage2/channel_b"] == 0.0 and e["stage2/n_forwards"] == 2.0
        assert e["stage2/prefix_reused"] == 1.0
        assert e["loss/coord_gate"] > 0 and 0 < e["coord_diag/coord_vocab_mass_mean"] < 1
        assert "rollout/f1" not in e
    metrics = json.loads((run / "eval" / "step_000002" / "metrics.json").read_text())
    assert metrics["step"] == 2 and "eval_rollout/f1" in metrics["metrics"]
    dump = json.loads((run / "monitor_dumps" / "step_000002.json").read_text())
    assert len(dump["samples"]) == 2


@pytest.mark.slow
def test_ab_mixed_runs_both_channels_and_resume_replays_the_schedule(synth, tmp_path):
    from vlmdet.train.cli import train

    common = {"stage2.b_ratio": 0.5, "eval.eval_steps": 0, "training.save_steps": 2}
    cfg = load_config(STAGE2 / "ab_mixed.yaml", overrides(synth, tmp_path, **common, **{"training.max_steps": 2}))
    first = train(cfg, ["test"])
    run = Path(first["run_dir"])
    assert (run / "checkpoint-2").is_dir()
    cfg = load_config(STAGE2 / "ab_mixed.yaml", overrides(synth, tmp_path, **common, **{"training.max_steps": 4}))
    second = train(cfg, ["test"], resume=True)
    assert second["resumed_from"].endswith("checkpoint-2") and second["global_step"] == 4
    ev = events(run)
    assert sorted(ev) == [1, 2, 3, 4]
    # logged step s is optimizer step s - 1 (0-based) after its update: A, B, A, B
    assert [ev[s]["stage2/channel_b"] for s in (1, 2, 3, 4)] == [float(is_channel_b(s - 1, 0.5)) for s in (1, 2, 3, 4)]
    assert [ev[s]["stage2/channel_b"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 1.0]
    for s in (2, 4):  # Channel-B steps: rollout telemetry, no coord_diag
        e = ev[s]
        assert {"rollout/recall", "rollout/f1", "rollout/truncated_rate", "rollout/generate_s"} <= set(e)
        assert ("rollout/precision" in e) == (e["rollout/valid_pred_mean"] > 0)
        assert e["rollout/gen_tokens_mean"] > 0 and "coord_diag/coord_vocab_mass_mean" not in e
        assert e["stage2_ab/b_ratio_realized"] == 0.5
    for s in (1, 3):
        assert "rollout/recall" not in ev[s] and "coord_diag/coord_vocab_mass_mean" in ev[s]
