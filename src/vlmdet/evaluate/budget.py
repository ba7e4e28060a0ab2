"""Rollout token budgets sized from the data: how many new tokens the longest answer needs.

    vlmdet budget FILE.jsonl [--checkpoint tiny] [--field-order desc_first]

prints the budget of a data file under a checkpoint's tokenizer (below).

`answer_budget(records, tokenizer, field_order, ordering)` tokenizes the ground-truth CoordJSON answer
of every record (`format.render_answer` of its objects, + 1 for the end-of-turn token) and returns an
`AnswerBudget`:

- `overhead`: tokens of the empty answer `{"objects": []}` + end of turn;
- `tokens_per_object`: the largest per-record mean cost of one object, ceil((answer - overhead) / n);
- `max_objects`: the most objects in one record;
- `max_new_tokens` = overhead + max_objects x tokens_per_object: a budget that fits every answer of
  the data (each answer is overhead + n x its mean <= this);
- `longest_answer`: the longest answer in tokens, and `answer_tokens` (one per record, file order),
  so `truncated(limit)` counts the answers that `rollout.max_new_tokens = limit` would cut.

A model that writes longer descriptions than the data needs more; rollouts that reach the budget
are counted in eval as `rollout/hit_max_new_tokens_rate`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vlmdet.data.records import load_records
from vlmdet.errors import UsageError
from vlmdet.format import EMPTY_ANSWER, render_answer


@dataclass(frozen=True)
class AnswerBudget:
    records: int
    max_objects: int
    overhead: int
    tokens_per_object: int
    longest_answer: int
    answer_tokens: tuple[int, ...]

    @property
    def max_new_tokens(self) -> int:
        return self.overhead + self.max_objects * self.tokens_per_object

    def truncated(self, limit: int) -> int:
        """How many answers need more than `limit` new tokens."""
        return sum(1 for n in self.answer_tokens if n > limit)


def answer_budget(records: Sequence, tokenizer, field_order: str = "desc_first", ordering: str = "sorted") -> AnswerBudget:
    """`AnswerBudget` of `records` (`data.records.Record`) under `tokenizer` (module docstring)."""
    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + end of turn

    overhead = n_tokens(EMPTY_ANSWER)
    answers, per_object, max_objects = [], 0, 0
    for r in records:
        objs = r.bins()
        n = n_tokens(render_answer(objs, field_order, ordering))
        answers.append(n)
        if objs:
            per_object = max(per_object, math.ceil((n - overhead) / len(objs)))
            max_objects = max(max_objects, len(objs))
    return AnswerBudget(len(answers), max_objects, overhead, per_object, max(answers, default=overhead), tuple(answers))


def budget_note(budget: AnswerBudget, max_new_tokens: int, what: str = "val") -> str | None:
    """A one-line warning when `rollout.max_new_tokens` cuts answers of the data; None when all fit."""
    cut = budget.truncated(max_new_tokens)
    if not cut:
        return None
    return (f"rollout.max_new_tokens {max_new_tokens} cuts {cut} of {budget.records} {what} answers (the longest "
            f"needs {budget.longest_answer} tokens; {budget.max_objects} objects x {budget.tokens_per_object} "
            f"tokens + {budget.overhead} fit in {budget.max_new_tokens}): those images lose boxes and AP is understated")


def rollout_budget_note(records: Sequence, loaded, cfg) -> str | None:
    """`budget_note` for the rollouts of `cfg` (`rollout.max_new_tokens`, `prompt` field order and
    ordering) on `records`, counted with `loaded.tokenizer`; None when every answer fits or no records."""
    if not records:
        return None
    budget = answer_budget(records, loaded.tokenizer, cfg.prompt.field_order, cfg.prompt.ordering)
    return budget_note(budget, cfg.rollout.max_new_tokens)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="data JSONL file")
    parser.add_argument("--checkpoint", default="tiny", help="checkpoint folder whose tokenizer counts the tokens (default tiny)")
    parser.add_argument("--field-order", default="desc_first", choices=("desc_first", "geometry_first"))


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from vlmdet.model.load import TINY_NAME, tiny_checkpoint_path

    path = tiny_checkpoint_path() if args.checkpoint == TINY_NAME else Path(args.checkpoint)
    if not (path / "tokenizer_config.json").is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no tokenizer_config.json (not a checkpoint folder?)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    b = answer_budget(load_records(args.file, check_images=False), tokenizer, args.field_order)
    print(f"{args.file}: {b.records} answers under the tokenizer of {args.checkpoint}")
    print(f"  objects: max {b.max_objects} per image; tokens per object: up to {b.tokens_per_object}; "
          f"empty answer: {b.overhead} (with end of turn)")
    print(f"  longest answer: {b.longest_answer} tokens")
    print(f"  rollout.max_new_tokens={b.max_new_tokens} fits every answer "
          f"({b.overhead} + {b.max_objects} x {b.tokens_per_object})")
    return 0
