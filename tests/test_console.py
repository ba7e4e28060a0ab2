"""vlmdet.console: number and duration formats, the compact lines, progress without a terminal."""

from __future__ import annotations

import io

import pytest

from vlmdet import console


@pytest.mark.parametrize("key,count", [
    ("eval_rollout/parse_dropped_invalid", True), ("eval_rollout/drop/malformed", True), ("drop/wrong_arity", True),
    ("eval_rollout/leak/digit", True), ("pred_objects", True), ("eval_rollout_constrained/tp", True),
    ("eval_rollout/sample_valid_pred_rate", False), ("eval_rollout/bbox_AP50", False), ("loss/coord_gate", False),
    ("eval_time/total_s", False), ("samples", True), ("f1", False),
])
def test_is_count(key, count):
    assert console.is_count(key) is count


@pytest.mark.parametrize("key,v,text", [
    ("eval_rollout/parse_dropped_invalid", 0.0, "0"),  # a count is never "0.000"
    ("eval_rollout/parse_dropped_invalid", 12.0, "12"),
    ("eval_rollout/parse_dropped_invalid", 1.5, "1.500"),  # a mean count is not an integer
    ("eval_rollout/f1", 0.0, "0.000"), ("eval_rollout/f1", 0.71234, "0.712"), ("loss/w1", 0.001234, "0.001234"),
    ("loss", 1234.5, "1234"), ("x", None, "—"), ("x", "text", "text"),
])
def test_fmt_value(key, v, text):
    assert console.fmt_value(key, v) == text


@pytest.mark.parametrize("s,text", [(0.0, "<0.1s"), (0.04, "<0.1s"), (0.44, "0.4s"), (9.94, "9.9s"), (42.4, "42s"),
                                    (185, "3m05s"), (3720, "1h02m")])
def test_fmt_seconds(s, text):
    assert console.fmt_seconds(s) == text


def test_train_and_eval_lines():
    logs = {"loss": 1.23456, "loss/token_ce": 1.1, "loss/coord_gate": 0.0342, "grad_norm": 2.0,
            "learning_rate": 0.00095, "epoch": 0.4, "coord_diag/p_gt_mean": 0.3}
    assert console.train_line(120, 300, logs) == \
        "step 120/300  loss 1.235  ce 1.100  gate 0.034  grad 2.000  lr 9.50e-04"
    metrics = {"eval_rollout/bbox_AP50": 0.59, "eval_rollout/f1": 0.7, "eval_rollout/parse_dropped_invalid": 3.0,
               "eval_rollout/sample_valid_pred_rate": 0.99, "eval_rollout/gt_objects": 200.0, "eval_time/total_s": 41.2}
    line = console.eval_line(100, metrics)
    assert line == "eval @ step 100  AP50 0.590  F1 0.700  valid 0.990  dropped 3  time 41s"
    assert "\n" not in line and len(line) < 200


def test_progress_without_terminal_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a TTY
    clock = iter(range(0, 1000, 20))  # each step "takes" 20 s
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    assert list(console.progress(range(5), "rollout", unit="batch")) == [0, 1, 2, 3, 4]
    out = capsys.readouterr()
    assert out.out.splitlines() == ["rollout: 2/5 batch", "rollout: 4/5 batch", "rollout: 5/5 batch done"]
    assert "\x1b" not in out.out + out.err and "\r" not in out.out + out.err
    assert list(console.progress(range(3), "quiet", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().out == ""


def test_progress_fast_loop_prints_nothing(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert list(console.progress(range(3), "synth val")) == [0, 1, 2]
    assert capsys.readouterr().out == ""


def test_banner_aligns_rows():
    text = console.banner("vlmdet train: x", [("run dir", "/r"), ("TensorBoard", "tensorboard --logdir /r/tb")])
    assert text.splitlines() == ["vlmdet train: x", "  run dir      /r", "  TensorBoard  tensorboard --logdir /r/tb"]
