"""Channel schedule for Stage-2 AB (see docs/STAGE2.md).

`b_ratio` r in [0, 1]: optimizer step s (0-based, the Trainer's `state.global_step` before the
step runs) is a Channel-B step iff floor((s+1)·r) > floor(s·r) (Bresenham). The choice depends only
on the global step, so a resumed run replays exactly the same sequence. r = 0: Channel-A only (the
original method's setting); r = 1: Channel-B only; r = 0.5: A, B, A, B, ...; r = 0.05: B at s = 19, 39, ...

Pure module (no torch): the trainer asks `channel(step, r)` once per optimizer step and logs
`schedule_metrics(step, r)`. `r` is the loaded config's `stage2.b_ratio`, checked to lie in [0, 1] when
the config is loaded (`config.RANGES`), not here.
"""

from __future__ import annotations

import math


def _floor(x: float) -> int:
    # Guard against binary rounding (e.g. 0.1*30 = 3.0000000000000004 is fine, 0.29*100 = 28.999...):
    # round to 9 decimals first so the sequence matches exact rational arithmetic for ratios that are
    # written in decimal in a config.
    return math.floor(round(x, 9))


def n_channel_b(steps: int, b_ratio: float) -> int:
    """Number of Channel-B steps among steps 0..steps-1 (= floor(steps·r))."""
    return _floor(steps * b_ratio)


def is_channel_b(step: int, b_ratio: float) -> bool:
    """True iff optimizer step `step` (0-based) runs Channel-B: floor((s+1)r) > floor(sr)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return _floor((step + 1) * b_ratio) > _floor(step * b_ratio)


def channel(step: int, b_ratio: float) -> str:
    """"A" or "B" for optimizer step `step`."""
    return "B" if is_channel_b(step, b_ratio) else "A"


def schedule_metrics(step: int, b_ratio: float) -> dict[str, float]:
    """Log values for the step that just ran: `stage2/channel_a`, `stage2/channel_b` (0/1) and
    `stage2_ab/b_ratio_realized` (fraction of B steps among steps 0..step, a pure function of the step,
    so it is identical after a resume)."""
    b = is_channel_b(step, b_ratio)
    return {
        "stage2/channel_a": 0.0 if b else 1.0,
        "stage2/channel_b": 1.0 if b else 0.0,
        "stage2_ab/b_ratio_realized": n_channel_b(step + 1, b_ratio) / (step + 1),
    }
