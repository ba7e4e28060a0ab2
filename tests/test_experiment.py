"""vlmdet experiment gate-ablation: the four arms differ only where the design says; a smoke run end to end."""

from __future__ import annotations

import json

import pytest

from vlmdet.cli import main
from vlmdet.config import config_to_dict, load_config
from vlmdet.demo import config_dir
from vlmdet.errors import UsageError
from vlmdet.experiment import ARMS, arm_name, arm_overrides, run_gate_ablation


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_arms_differ_only_in_grad_mode_gate_and_name():
    cfgs = {arm_name(m, g): _flat(config_to_dict(load_config(config_dir() / "gate_ablation.yaml",
                                                              arm_overrides(m, g, [100, 200, 300], "CKPT"))))
            for m, g in ARMS}
    assert list(cfgs) == ["a_only_unroll_gate_off", "a_only_unroll_gate_on", "a_only_em_detach_gate_off",
                          "a_only_em_detach_gate_on"]
    base = cfgs["a_only_unroll_gate_off"]
    for name, cfg in cfgs.items():
        diff = {k for k in base if base[k] != cfg[k]}
        mode, gate = name.removeprefix("a_only_").rsplit("_gate_", 1)
        expected = {"run_name"} | ({"stage2.softctx_grad_mode"} if mode != "unroll" else set()) \
            | ({"losses.coord_gate"} if gate == "on" else set())
        assert diff == (expected if name != "a_only_unroll_gate_off" else set()), name
        assert cfg["losses.coord_gate"] == (1.0 if gate == "on" else 0.0)
        assert cfg["stage2.softctx_grad_mode"] == mode
    # the leakage mechanism: no CE at coord slots, Channel-A only, fixed eval steps, same start
    assert base["losses.ce_on_coord_slots"] is False
    assert base["stage2.b_ratio"] == 0.0 and base["stage"] == 2
    assert base["eval.steps"] == [100, 200, 300] and base["eval.eval_steps"] == 0
    assert base["training.max_steps"] == 300 and base["model.name_or_path"] == "CKPT"


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(UsageError, match="--stage1"):
        run_gate_ablation(tmp_path, [1], stage1=str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="--steps"):
        run_gate_ablation(tmp_path, [0, 5])
    assert main(["experiment", "gate-ablation", "--steps", "a,b", "--out", str(tmp_path)]) == 2
    assert "--steps" in capsys.readouterr().err


@pytest.mark.slow
def test_gate_ablation_smoke(tmp_path):
    s = run_gate_ablation(tmp_path, [2], smoke=True)  # step 1: a training log; step 2: eval
    assert [p.rsplit("/", 1)[1] for p in s["runs"]] == [arm_name(m, g) for m, g in ARMS]
    for run, (mode, gate) in zip(s["runs"], ARMS):
        for step in (0, 2):
            metrics = json.loads((tmp_path / "runs" / arm_name(mode, gate) / "eval" / f"step_{step:06d}" / "metrics.json").read_text())
            assert "eval_rollout/parse_dropped_invalid" in metrics["metrics"]
        events = [json.loads(line) for line in open(f"{run}/logging.jsonl")]
        gates = [e["loss/coord_gate"] for e in events if "loss/coord_gate" in e]
        assert gates, "loss/coord_gate must be logged (unweighted) in every arm, gate on or off"
    md = (tmp_path / "report" / "report.md").read_text()
    for m, g in ARMS:
        assert f"| 2 | {arm_name(m, g)} |" in md and f"| 0 | {arm_name(m, g)} |" in md
    step0 = [json.loads((tmp_path / "runs" / arm_name(m, g) / "eval" / "step_000000" / "metrics.json").read_text())["metrics"]
             for m, g in ARMS]
    same = [{k: v for k, v in m.items() if not k.startswith("eval_time")} for m in step0]
    assert all(x == same[0] for x in same), "the arms must start from the same checkpoint and eval settings"
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
