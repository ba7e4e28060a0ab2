"""`vlmdet eval` through `vlmdet.cli.main`: outputs, exit codes, messages."""

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmdet.cli import main
from vlmdet.evaluate.cli import checkpoint_step

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "eval" / "tiny.yaml")


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_data")
    rows = []
    for i in range(3):
        Image.new("RGB", (64, 32), (50 * i, 80, 80)).save(d / f"im{i}.png")
        rows.append({"image_id": f"im{i}", "image": f"im{i}.png", "width": 64, "height": 32,
                     "objects": [{"desc": "red circle", "bbox_2d": [2.0, 3.0, 30.0, 20.0]}]})
    (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "val.jsonl"


@pytest.mark.slow
def test_checkpoint_without_coord_tokens_is_refused(tmp_path, val, capsys):
    from vlmdet.model.tiny import build_tiny_checkpoint

    plain = build_tiny_checkpoint(tmp_path / "plain", coord_tokens=False)
    code = main(["eval", CONFIG, "--checkpoint", str(plain), "--data", str(val), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "vlmdet eval: error:" in err and "coordinate tokens" in err and "vlmdet expand-vocab" in err
    assert not (tmp_path / "o").exists()


def test_eval_tiny_with_constrained_pass(tmp_path, val, capsys):
    out = tmp_path / "out"
    code = main(["eval", CONFIG, "--checkpoint", "tiny", "--data", str(val), "--out", str(out), "--max-samples", "2",
                 "--constrained", "--step", "5", "--no-progress", "rollout.max_new_tokens=8", "monitor.n_samples=1"])
    stdout = capsys.readouterr().out
    assert code == 0
    saved = json.loads((out / "eval" / "step_000005" / "metrics.json").read_text())
    m = saved["metrics"]
    assert saved["step"] == 5
    assert m["eval_rollout/samples"] == 2 and m["eval_rollout_constrained/samples"] == 2
    # the grammar guarantees complete, parseable answers even from a random model within 8 tokens
    assert m["eval_rollout_constrained/parse_failed_rate"] == 0.0
    assert m["eval_rollout_constrained/parse_truncated_rate"] == 0.0
    assert m["eval_rollout_constrained/stopped_rate"] == 1.0
    preds = (out / "eval" / "step_000005" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(p)["image_id"] for p in preds] == ["im0", "im1"]
    assert (out / "eval" / "step_000005" / "predictions_constrained.jsonl").exists()
    dump = json.loads((out / "monitor_dumps" / "step_000005.json").read_text())
    assert len(dump["samples"]) == 1
    assert "eval_rollout/f1" in stdout and "eval_rollout_constrained/sample_valid_pred_rate" in stdout
    rows = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 5 and rows[-1]["eval_rollout/samples"] == 2


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--max-samples", "-1"], "argument --max-samples: must be >= 0, got '-1'"),
        (["eval.max_sample=3"], "did you mean"),
        (["data.val="], "no data to evaluate"),
    ],
)
def test_bad_input_exits_2(extra, message, capsys):
    assert main(["eval", CONFIG, "--checkpoint", "tiny", *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_data_file_is_a_usage_error(tmp_path, capsys):
    assert main(["eval", CONFIG, "--checkpoint", "tiny", "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("path,step", [("runs/a/checkpoint-300", 300), ("runs/a/checkpoint-300/", 300),
                                       ("tiny", 0), ("ckpt-12", 0), ("checkpoint-x", 0)])
def test_checkpoint_step(path, step):
    assert checkpoint_step(path) == step
