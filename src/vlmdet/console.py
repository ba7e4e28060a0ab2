"""What vlmdet prints while it works: the start banner, one compact line per log window and per eval,
progress, durations and numbers. The full log dicts go to `logging.jsonl` (and TensorBoard), never here.

- `banner(...)`: the lines printed when a training run starts (run dir, resolved config, seed, device, the
  TensorBoard command).
- `train_line(step, max_steps, logs)` / `eval_line(step, metrics)`: one line each, a few key metrics.
- `progress(iterable, desc, total)`: a tqdm bar when stderr is a terminal; otherwise plain
  `desc: i/total` lines at most every `every_s` seconds, so a redirected log has no escape codes.
- `fmt_value(key, v)`: counts as integers (`is_count`), other numbers with 3 decimals (4 significant
  digits when small); `fmt_seconds(s)`: `<0.1s`, `0.4s`, `42s`, `3m05s`, `1h02m`.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Mapping, TypeVar

T = TypeVar("T")

#: Metric names (after any `prefix/`) that count things: printed as integers.
COUNT_NAMES = frozenset({
    "samples", "images", "pred_objects", "gt_objects", "matched", "tp", "fp", "fn", "tp_agnostic", "fp_agnostic",
    "fn_agnostic", "gate_matched", "parse_dropped_invalid", "parse_incomplete_tail", "images_without_answer",
    "coord_slots",
})
#: Name prefixes (after any `prefix/`) of counts, e.g. `drop/<reason>`, `leak/<kind>`.
COUNT_PREFIXES = ("drop/", "leak/")

#: (log key, short label) of the per-window training line, in order; absent keys are left out.
TRAIN_KEYS: list[tuple[str, str]] = [
    ("loss", "loss"), ("loss/token_ce", "ce"), ("loss/coord_gate", "gate"), ("loss/soft_ce", "soft_ce"),
    ("loss/w1", "w1"), ("coord_diag/coord_vocab_mass_mean", "coord_mass"), ("grad_norm", "grad"),
    ("learning_rate", "lr"),
]
#: (metric key, short label) of the eval line.
EVAL_KEYS: list[tuple[str, str]] = [
    ("eval_rollout/bbox_AP50", "AP50"), ("eval_rollout/bbox_AP", "AP"), ("eval_rollout/f1", "F1"),
    ("eval_rollout/sample_valid_pred_rate", "valid"), ("eval_rollout/sample_clean_rate", "clean"),
    ("eval_rollout/parse_dropped_invalid", "dropped"), ("eval_rollout/coord_vocab_mass_gen", "coord_mass"),
    ("eval_rollout/coord_slot_leak_rate", "leak"), ("eval_time/total_s", "time"),
]


def is_tty(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def is_count(key: str) -> bool:
    """Whether metric `key` (`eval_rollout/drop/malformed`, `pred_objects`, ...) counts things."""
    name = key.split("/", 1)[1] if key.split("/", 1)[0].startswith(("eval_rollout", "eval_time")) and "/" in key else key
    return name in COUNT_NAMES or name.startswith(COUNT_PREFIXES)


def fmt_value(key: str, v) -> str:
    """A metric for people: None -> "—"; a count -> integer; |v| < 0.01 (not 0) or >= 1000 -> 4 significant
    digits; else 3 decimals."""
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if is_count(key) and float(v).is_integer():
        return str(int(v))
    if v != 0 and (abs(v) < 0.01 or abs(v) >= 1000):
        return f"{v:.4g}"
    return f"{v:.3f}"


def fmt_seconds(s: float) -> str:
    """`<0.1s`, `0.4s`, `42s`, `3m05s`, `1h02m` (never a bare `0s`)."""
    if s < 0.1:
        return "<0.1s"
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _pairs(values: Mapping, keys: list[tuple[str, str]]) -> str:
    return "  ".join(f"{label} {fmt_value(k, values[k])}" for k, label in keys if k in values)


def train_line(step: int, max_steps: int | None, logs: Mapping) -> str:
    """`step 120/300  loss 1.234  ce 1.100  gate 0.034  ...  lr 9.50e-04` (one log window)."""
    head = f"step {step}/{max_steps}" if max_steps else f"step {step}"
    parts = [f"{label} {logs[k]:.2e}" if k == "learning_rate" and isinstance(logs[k], (int, float))
             else f"{label} {fmt_value(k, logs[k])}" for k, label in TRAIN_KEYS if k in logs]
    return "  ".join([head] + parts)


def eval_line(step: int, metrics: Mapping) -> str:
    """`eval @ step 100  AP50 0.590  AP 0.312  F1 0.700  valid 0.990  dropped 1  coord_mass 0.998  time 41.2s`."""
    shown = {k: v for k, v in metrics.items() if k != "eval_time/total_s"}
    line = f"eval @ step {step}  " + _pairs(shown, [kl for kl in EVAL_KEYS if kl[0] != "eval_time/total_s"])
    t = metrics.get("eval_time/total_s")
    return line.rstrip() + (f"  time {fmt_seconds(t)}" if isinstance(t, (int, float)) else "")


def banner(title: str, rows: list[tuple[str, str]]) -> str:
    """`title` and aligned `name  value` rows (the start banner)."""
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join([title] + [f"  {k:<{width}}  {v}" for k, v in rows])


def tensorboard_command(logdir) -> str:
    return f"tensorboard --logdir {logdir}"


def progress(iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True,
             every_s: float = 30.0, unit: str = "it", leave: bool = False) -> Iterator[T]:
    """Iterate `iterable` showing progress: a tqdm bar on a terminal, else a plain `desc: i/total` line at
    most every `every_s` seconds, and a last one at the end when any was printed before it (nothing at all
    when `enabled` is False)."""
    if not enabled:
        yield from iterable
        return
    if is_tty():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave)
        return
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    last = time.monotonic()
    i, shown = 0, 0
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            print(f"{desc}: {i}/{total if total is not None else '?'} {unit}", flush=True)
            last, shown = now, i
    if 0 < shown < i:
        print(f"{desc}: {i}/{i} {unit} done", flush=True)
