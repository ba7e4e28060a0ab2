"""The report's content as plain data, shared by the Markdown and HTML renderers (pure: no I/O).

- `headline_rows(runs, steps)`: one row per (step, run) with the headline metrics and the delta of each
  against the first run at the same step.
- `metric_rows(runs, step)`: every `eval_rollout/*` metric at one step, one column per run.
- `drop_rows(runs, steps)`: the drop reasons that occur, one column per (run, step).
A missing value is None and is rendered as "—" (`MISSING`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from vlmdet.console import is_count
from vlmdet.parse import DROP_REASONS
from vlmdet.slots import LEAK_KINDS
from vlmdet.report.runs import EVAL_PREFIX, RunData

MISSING = "—"

#: (key, short column label). `eval_rollout/*` from eval metrics; the others are training-log scalars
#: taken at the last logged step <= the eval step.
HEADLINE: list[tuple[str, str]] = [
    ("eval_rollout/bbox_AP50", "AP50"),
    ("eval_rollout/bbox_AP", "AP"),
    ("eval_rollout/f1", "F1@0.5"),
    ("eval_rollout/precision", "P"),
    ("eval_rollout/recall", "R"),
    ("eval_rollout/sample_valid_pred_rate", ">=1 valid rate"),
    ("eval_rollout/sample_clean_rate", "clean rate"),
    ("eval_rollout/coord_slot_leak_rate", "slot leak rate"),
    ("eval_rollout/parse_dropped_invalid", "dropped"),
    ("eval_rollout/empty_pred_rate", "empty rate"),
    ("eval_rollout/parse_truncated_rate", "truncated rate"),
    ("eval_rollout/coord_vocab_mass_gen", "coord mass (gen)"),
    ("coord_diag/coord_vocab_mass_mean", "coord mass (train)"),
    ("loss/coord_gate", "loss/coord_gate"),
]

#: (metric family, how predictions are matched to GT, CoordExp's name of the same number or "—").
#: Shown by the report next to the tables and documented in docs/EVALUATION.md.
METRIC_NOTES: list[tuple[str, str, str]] = [
    ("precision, recall, f1, matched (= tp), fp, fn",
     "class-aware Hungarian at box IoU >= eval.f1_iou (0.5), pixel boxes", "— (offline f1ish@0.50 *_full_micro is closest)"),
    ("*_agnostic", "class-agnostic Hungarian at box IoU >= eval.f1_iou (0.5)", "— (offline f1ish@0.50 *_loc_micro is closest)"),
    ("gate_precision, gate_recall, gate_f1, gate_matched",
     "class-agnostic Hungarian at box IoU >= match.iou_gate (0.3), the Channel-B matcher",
     "eval_rollout/precision, recall, f1, matched (there: maskIoU >= 0.3, which equals box IoU for boxes)"),
    ("bbox_AP, bbox_AP50, ...", "COCOeval (faster-coco-eval), class-aware", "eval_rollout/bbox_AP, bbox_AP50, ..."),
    ("sample_valid_pred_rate", "samples with >= 1 valid object", "eval_rollout/sample_valid_pred_rate"),
    ("sample_clean_rate", "samples with no drop, not truncated, not failed", "—"),
    ("parse_dropped_invalid, parse_truncated_rate", "strict parser", "eval_rollout/parse_dropped_invalid, parse_truncated_rate"),
    ("coord_vocab_mass_gen, coord_slot_leak_rate, leak/<kind>", "every bbox_2d value position of the rollout", "—"),
]


@dataclass(frozen=True)
class Cell:
    """One table cell: the value (None = missing) and its delta against the first run (None = n/a)."""

    value: float | None
    delta: float | None = None


def fmt_value(key: str, v: float | None) -> str:
    """Counts as integers when integral, everything else with 3 decimals; None -> "—"."""
    if v is None:
        return MISSING
    if is_count(key) and float(v).is_integer():
        return str(int(v))
    return f"{v:.3f}"


def fmt_delta(key: str, d: float | None) -> str:
    if d is None:
        return ""
    if is_count(key) and float(d).is_integer():
        return f"{int(d):+d}"
    return f"{d:+.3f}"


def fmt_cell(key: str, cell: Cell) -> str:
    """`0.520 (+0.030)`, `0.520`, or `—`."""
    text = fmt_value(key, cell.value)
    delta = fmt_delta(key, cell.delta)
    return f"{text} ({delta})" if delta and cell.value is not None else text


def value_at(run: RunData, key: str, step: int) -> float | None:
    if key.startswith(EVAL_PREFIX):
        return run.metric(step, key)
    return run.value_near(key, step)


def _cells(runs: Sequence[RunData], key: str, step: int) -> list[Cell]:
    vals = [value_at(r, key, step) for r in runs]
    base = vals[0] if vals else None
    return [Cell(v, None if i == 0 or v is None or base is None else v - base) for i, v in enumerate(vals)]


def report_steps(runs: Sequence[RunData], steps: Sequence[int] | None) -> list[int]:
    """The steps to tabulate: the requested ones, else the union of all runs' eval steps."""
    if steps:
        return sorted(set(steps))
    return sorted({s for r in runs for s in r.eval_steps})


def headline_rows(runs: Sequence[RunData], steps: Sequence[int]) -> list[tuple[int, str, list[Cell]]]:
    """Rows `(step, run name, [Cell per HEADLINE key])`, grouped by step, runs in the given order."""
    rows = []
    for step in steps:
        per_key = [_cells(runs, key, step) for key, _ in HEADLINE]
        for i, run in enumerate(runs):
            rows.append((step, run.name, [cells[i] for cells in per_key]))
    return rows


def metric_rows(runs: Sequence[RunData], step: int) -> list[tuple[str, list[Cell]]]:
    """Every `eval_rollout/*` metric any run has at `step`: `(key, [Cell per run])`, drop counts last."""
    keys = {k for r in runs for k in r.eval.get(step, {})}
    ordered = sorted(keys, key=lambda k: (k.startswith(EVAL_PREFIX + "drop/"), k))
    return [(k, _cells(runs, k, step)) for k in ordered]


def drop_reasons(runs: Sequence[RunData]) -> list[str]:
    """The parser's reasons in precedence order, then any other `drop/<reason>` found in the runs."""
    extra = sorted({k.removeprefix(EVAL_PREFIX + "drop/") for r in runs for m in r.eval.values() for k in m
                    if k.startswith(EVAL_PREFIX + "drop/")} - set(DROP_REASONS))
    return list(DROP_REASONS) + extra


def leak_kinds(runs: Sequence[RunData]) -> list[str]:
    """The `leak/<kind>` names found in the runs' eval metrics, in `slots.LEAK_KINDS` order, then any other
    (empty when no run has leak metrics)."""
    found = {k.removeprefix(EVAL_PREFIX + "leak/") for r in runs for m in r.eval.values() for k in m
             if k.startswith(EVAL_PREFIX + "leak/")}
    return [k for k in LEAK_KINDS if k in found] + sorted(found - set(LEAK_KINDS))


def drop_rows(runs: Sequence[RunData], steps: Sequence[int]) -> list[tuple[str, list[float | None]]]:
    """`(reason, [count per (run, step)])` for each reason with a count > 0 in some run at some step (none
    at all: `[]`, "no drops in any run"), columns ordered run-major (run 1 at every step, then run 2 ...)."""
    rows = [(reason, [r.metric(s, f"drop/{reason}") for r in runs for s in steps]) for reason in drop_reasons(runs)]
    return [(reason, vals) for reason, vals in rows if any((v or 0) > 0 for v in vals)]
