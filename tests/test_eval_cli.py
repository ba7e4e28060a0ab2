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


class ForceAnswers:
    """A logits processor that makes generation spell out given token ids per batch row, then stop."""

    def __init__(self, targets):
        self.targets = targets  # per row: answer token ids + end of turn
        self.start = None

    def __call__(self, input_ids, scores):
        import torch

        if self.start is None:
            self.start = input_ids.shape[1]
        t = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(self.targets):
            forced[row, ids[min(t, len(ids) - 1)]] = 0.0
        return forced


def _qwen3_answer(rec, i):
    objs = []
    for k, o in enumerate(rec["objects"]):
        x1, y1, x2, y2 = o["bbox_2d"]
        box = [round(x1 / rec["width"] * 1000), round(y1 / rec["height"] * 1000),
               round(x2 / rec["width"] * 1000), round(y2 / rec["height"] * 1000)]
        if i == 3 and k == 0:  # the leak: a coordinate token where a digit belongs -> one non_coord_token drop
            box[0] = "<|coord_5|>"
        coords = ", ".join(str(v) for v in box)
        objs.append(f'{{"bbox_2d": [{coords}], "{"desc" if i == 2 else "label"}": "{o["desc"]}"}}')
    body = "[" + ", ".join(objs) + "]"
    return {0: body, 1: "```json\n" + body + "\n```", 2: '{"objects": ' + body + "}", 3: body}[i]


@pytest.mark.slow
def test_eval_format_qwen3_on_a_checkpoint_without_coord_tokens(tmp_path, monkeypatch, capsys):
    """A stock-like checkpoint (no coordinate tokens), the stock prompt, answers forced to Qwen3-VL's
    grounding JSON built from GT: everything parses (but the leaked record) and the scores follow by hand."""
    import vlmdet.evaluate.rollout as rollout
    from vlmdet.answer_format import STOCK_USER_PROMPT
    from vlmdet.data.synth import make_synth
    from vlmdet.model.chat import user_prompt
    from vlmdet.model.tiny import build_tiny_checkpoint

    plain = build_tiny_checkpoint(tmp_path / "plain", coord_tokens=False)
    make_synth(tmp_path / "d", n_train=1, n_val=4, seed=1, size=64, progress=False)
    val = tmp_path / "d" / "val.jsonl"
    recs = [json.loads(line) for line in val.read_text().splitlines()]
    answers = {r["image_id"]: _qwen3_answer(r, i) for i, r in enumerate(recs)}
    prompts = []

    def backend(loaded, cfg, **kw):
        def force(batch):
            tok = loaded.tokenizer
            return [ForceAnswers([tok(answers[r.image_id], add_special_tokens=False)["input_ids"] + [loaded.eot_id]
                                  for r in batch])]
        prompts.append(cfg.prompt)
        return rollout.HFRollout(loaded, cfg.rollout, cfg.prompt, extra_processors=force, **kw)

    import vlmdet.evaluate.runner as runner

    monkeypatch.setattr(runner, "make_backend", backend)
    out = tmp_path / "out"
    code = main(["eval", CONFIG, "--checkpoint", str(plain), "--data", str(val), "--out", str(out), "--format", "qwen3",
                 "--no-progress", "rollout.max_new_tokens=400", "rollout.batch_size=2"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "eval" / "step_000000" / "metrics.json").read_text())
    m = {k.split("/", 1)[1]: v for k, v in saved["metrics"].items() if k.startswith("eval_rollout/")}
    n_gt = sum(len(r["objects"]) for r in recs)
    assert saved["score_source"] == "constant"
    assert prompts[0].answer_format == "qwen3" and user_prompt(prompts[0]) == STOCK_USER_PROMPT
    assert m["samples"] == 4 and m["parse_failed_rate"] == 0.0 and m["parse_truncated_rate"] == 0.0
    assert m["drop/non_coord_token"] == 1 and m["parse_dropped_invalid"] == 1
    assert m["sample_clean_rate"] == 0.75  # the answer with the leak is not clean
    assert (m["tp"], m["fp"], m["fn"]) == (n_gt - 1, 0, 1)
    assert m["recall"] == pytest.approx((n_gt - 1) / n_gt) and m["precision"] == 1.0
    assert m["coord_vocab_mass_gen"] == 0.0
    # the predictions are pixel boxes within 0.5/1000 of the image size of GT
    pred = [json.loads(line) for line in (out / "eval" / "step_000000" / "predictions.jsonl").read_text().splitlines()]
    for r, p in zip(recs[:3], pred[:3]):
        for o, g in zip(p["objects"], r["objects"]):
            assert o["desc"] == g["desc"]
            assert o["bbox_2d"] == pytest.approx(g["bbox_2d"], abs=0.5 / 1000 * 64 + 1e-9)
