"""examples/: both offline commands reproduce the expected files (numbers to 1e-9) and the hand counts."""

import json
import shutil
from pathlib import Path

import pytest

from vlmdet.cli import main

EX = Path(__file__).resolve().parent.parent / "examples"


def _compare(got: dict, expected: dict):
    assert set(got) == set(expected)
    for k, v in expected.items():
        if isinstance(v, str):
            assert got[k] == v, k
        else:
            assert got[k] == pytest.approx(v, abs=1e-9), k


def test_parse_example_matches_expected(tmp_path, capsys):
    out = tmp_path / "ph.json"
    assert main(["parse", str(EX / "raw_answers.jsonl"), "--gt", str(EX / "gt.jsonl"), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    _compare(got, json.loads((EX / "expected_parse_health.json").read_text()))
    # the hand counts of examples/README.md
    assert (got["pred_objects"], got["parse_dropped_invalid"]) == (4, 2)
    assert got["drop/unexpected_keys"] == 1 and got["drop/non_coord_token"] == 1
    assert got["parse_truncated_rate"] == 0.2 and got["parse_failed_rate"] == 0.2
    assert (got["tp"], got["fp"], got["fn"]) == (4, 0, 3)
    assert got["sample_valid_pred_rate"] == pytest.approx(3 / 5) and got["sample_clean_rate"] == pytest.approx(1 / 5)
    assert got["coord_slots"] == 20 and got["leak/digit"] == 1 and got["coord_slot_leak_rate"] == pytest.approx(1 / 20)
    assert "drop histogram" in capsys.readouterr().out


def test_eval_preds_example_matches_expected(tmp_path):
    out = tmp_path / "m.json"
    assert main(["eval-preds", "--gt", str(EX / "gt.jsonl"), "--pred", str(EX / "preds.jsonl"), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    _compare(got, json.loads((EX / "expected_eval_preds.json").read_text()))
    assert (got["tp"], got["fp"], got["fn"]) == (4, 4, 3)
    assert (got["tp_agnostic"], got["fp_agnostic"], got["fn_agnostic"]) == (5, 3, 2)
    assert got["score_source"] == "given"


def test_parse_writes_nothing_by_default_and_json_to_stdout(tmp_path, capsys):
    raw = tmp_path / "answers.jsonl"
    shutil.copy(EX / "raw_answers.jsonl", raw)
    assert main(["parse", str(raw)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]  # no file next to the input
    assert "drop histogram" in capsys.readouterr().out
    assert main(["parse", str(raw), "--out", "-"]) == 0
    got = json.loads(capsys.readouterr().out)  # stdout is exactly the JSON
    expected = json.loads((EX / "expected_parse_health.json").read_text())
    # without --gt only the parse-health part
    assert "bbox_AP" not in got
    _compare(got, {k: v for k, v in expected.items() if k in got})
    assert len(got) == 27  # 19 parse-health keys + sample_clean_rate + coord_slots, leak rate, 5 leak kinds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]
