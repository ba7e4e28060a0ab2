"""stats: mean / sample std / 95 % t-interval and paired deltas, against hand computations."""

import math

import pytest

from vlmdet.stats import Summary, paired_delta, summarize

# t(0.975, df) from a printed table of Student's t distribution
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


@pytest.mark.parametrize("values, mean, std", [
    ([1.0, 2.0, 3.0], 2.0, 1.0),                 # deviations -1, 0, 1: sum of squares 2, / (3 - 1) = 1
    ([0.5, 0.7], 0.6, math.sqrt(0.02)),          # (0.1^2 + 0.1^2) / 1
    ([2.0, 2.0, 2.0, 2.0], 2.0, 0.0),
    ([0.0, 1.0, 0.0, 1.0, 0.0], 0.4, math.sqrt(1.2 / 4)),  # 3 * 0.16 + 2 * 0.36 = 1.2
])
def test_summarize_mean_std_interval(values, mean, std):
    s = summarize(values)
    n = len(values)
    assert (s.n, s.mean, s.std) == (n, pytest.approx(mean), pytest.approx(std))
    half = T975[n - 1] * std / math.sqrt(n)
    assert s.lo == pytest.approx(mean - half, abs=2e-3 * max(half, 1e-9) + 1e-12)
    assert s.hi == pytest.approx(mean + half, abs=2e-3 * max(half, 1e-9) + 1e-12)


def test_one_or_no_value_has_no_interval():
    one = summarize([0.7])
    assert one.n == 1 and one.mean == 0.7 and all(math.isnan(x) for x in (one.std, one.lo, one.hi))
    assert not one.excludes_zero
    none = summarize([])
    assert none.n == 0 and math.isnan(none.mean)
    # NaN and None are left out, not counted
    assert summarize([1.0, float("nan"), None, 3.0]).n == 2


@pytest.mark.parametrize("summary, excludes", [
    (Summary(3, 0.05, 0.01, 0.02, 0.08), True),
    (Summary(3, -0.05, 0.01, -0.08, -0.02), True),
    (Summary(3, 0.01, 0.02, -0.04, 0.06), False),
    (Summary(2, 0.0, 0.0, 0.0, 0.0), False),     # touching zero does not exclude it
    (Summary(1, 0.5, math.nan, math.nan, math.nan), False),
])
def test_excludes_zero(summary, excludes):
    assert summary.excludes_zero is excludes


def test_paired_delta_uses_shared_seeds_only():
    arm = {0: 0.70, 1: 0.64, 2: 0.66, 3: 0.9}
    base = {0: 0.65, 1: 0.60, 2: 0.63, 4: 0.1}
    d = paired_delta(arm, base)
    # differences 0.05, 0.04, 0.03: mean 0.04, std 0.01, half = 4.303 * 0.01 / sqrt(3) = 0.02484
    assert d.n == 3 and d.mean == pytest.approx(0.04) and d.std == pytest.approx(0.01)
    assert d.lo == pytest.approx(0.04 - 0.02484, abs=1e-4) and d.excludes_zero
    # the same numbers unpaired would not separate: the seed effect is shared
    assert summarize(list(base.values())[:3]).hi > summarize([0.70, 0.64, 0.66]).lo


def test_paired_delta_skips_missing_values():
    assert paired_delta({0: 1.0, 1: float("nan")}, {0: 0.5, 1: 0.5}).n == 1
