"""Seed statistics for grids of runs: mean, standard deviation and a 95 % Student-t interval of a few
numbers (one per seed), and the paired difference of two arms over the seeds both have.

Pure: no I/O, no torch. Inputs are plain floats (NaN and missing seeds are left out).

- `summarize([x_1, ..., x_n])` -> `Summary(n, mean, std, lo, hi)`: `std` is the sample standard deviation
  (n - 1 in the denominator), `[lo, hi]` = mean -/+ t(0.975, n - 1) * std / sqrt(n). With n = 1 there is
  no spread: std, lo and hi are NaN. With n = 0 everything is NaN.
- `paired_delta({seed: a}, {seed: b})` -> `summarize([a_s - b_s for the seeds in both])`: the comparison
  of two arms that share seeds (same start, same data order per seed), which removes the part of the
  seed-to-seed variation the arms have in common.
- `Summary.excludes_zero`: the interval lies wholly above or below 0 (never with n < 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from scipy.stats import t as student_t

LEVEL = 0.95

NAN = float("nan")


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    lo: float
    hi: float

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std and the 95 % t-interval of the finite values (see the module docstring)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(0, NAN, NAN, NAN, NAN)
    mean = sum(xs) / n
    if n == 1:
        return Summary(1, mean, NAN, NAN, NAN)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(student_t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_delta(arm: Mapping[int, float], base: Mapping[int, float]) -> Summary:
    """`summarize` of arm[s] - base[s] over the seeds s that both have (finite values only)."""
    diffs = []
    for s in sorted(set(arm) & set(base)):
        a, b = arm[s], base[s]
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            diffs.append(a - b)
    return summarize(diffs)
