"""evaluate/budget.py: rollout token budgets from the data; `vlmdet budget`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmdet.cli import main
from vlmdet.config import load_config
from vlmdet.data.records import Record, GtObject
from vlmdet.evaluate.budget import answer_budget, budget_note, rollout_budget_note
from vlmdet.format import EMPTY_ANSWER, render_answer

REPO = Path(__file__).resolve().parents[1]


class CharTokenizer:
    """One token per character: token counts are string lengths, computable by hand."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text)))}


def _record(i, descs):
    objs = [GtObject(d, (10.0 * k, 10.0 * k, 10.0 * k + 5, 10.0 * k + 5)) for k, d in enumerate(descs)]
    return Record(f"{i}", f"{i}.png", 100, 100, tuple(objs), Path(f"{i}.png"))


@pytest.mark.parametrize(
    "descs_per_record",
    [
        [[], ["cat"]],
        [["cat", "dog"], ["a much longer description"], []],
        [["x"] * 7, ["cat", "hot dog"]],
    ],
)
def test_budget_by_hand_with_one_token_per_character(descs_per_record):
    records = [_record(i, d) for i, d in enumerate(descs_per_record)]
    b = answer_budget(records, CharTokenizer())
    lengths = [len(render_answer(r.bins())) + 1 for r in records]
    overhead = len(EMPTY_ANSWER) + 1
    assert b.answer_tokens == tuple(lengths) and b.longest_answer == max(lengths) and b.overhead == overhead
    assert b.max_objects == max(len(d) for d in descs_per_record)
    per = max(-(-(n - overhead) // len(d)) for n, d in zip(lengths, descs_per_record) if d)
    assert b.tokens_per_object == per
    assert b.max_new_tokens == overhead + b.max_objects * per >= b.longest_answer
    assert b.truncated(b.longest_answer) == 0 and b.truncated(b.longest_answer - 1) >= 1
    assert b.truncated(0) == len(records)


def test_note_names_the_cut_answers_and_the_budget_that_fits():
    records = [_record(0, ["cat"] * 3), _record(1, ["cat"])]
    b = answer_budget(records, CharTokenizer())
    assert budget_note(b, b.longest_answer) is None
    note = budget_note(b, b.longest_answer - 1)
    assert note.startswith(f"rollout.max_new_tokens {b.longest_answer - 1} cuts 1 of 2 val answers")
    assert f"fit in {b.max_new_tokens}" in note


def test_rollout_note_with_the_tiny_tokenizer(tmp_path, loaded):
    records = [_record(0, ["red circle"] * 6)]
    answer = render_answer(records[0].bins())
    n = len(loaded.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
    cfg = load_config(REPO / "configs" / "stage1" / "tiny.yaml", [f"rollout.max_new_tokens={n}"])
    assert rollout_budget_note(records, loaded, cfg) is None
    cfg.rollout.max_new_tokens = n - 1
    assert "cuts 1 of 1 val answers" in rollout_budget_note(records, loaded, cfg)


def test_data_budget_cli(tmp_path, capsys):
    from vlmdet.data.synth import make_synth

    make_synth(tmp_path / "d", n_train=6, n_val=1, seed=0, size=64, max_objects=4)
    path = tmp_path / "d" / "train.jsonl"
    assert main(["budget", str(path)]) == 0
    out = capsys.readouterr().out
    most = max(len(json.loads(line)["objects"]) for line in path.read_text().splitlines())
    assert f"objects: max {most} per image" in out and "rollout.max_new_tokens=" in out
    assert main(["budget", str(path), "--checkpoint", str(tmp_path)]) == 2
    assert "no tokenizer_config.json" in capsys.readouterr().err
