"""Channel schedule (see docs/STAGE2.md): Bresenham on the global step."""

from fractions import Fraction

import pytest

from vlmdet.train.schedule import channel, is_channel_b, n_channel_b, schedule_metrics


def _reference(step: int, r: str) -> bool:
    # exact rational arithmetic: floor((s+1)r) > floor(sr)
    q = Fraction(r)
    return ((step + 1) * q).__floor__() > (step * q).__floor__()


@pytest.mark.parametrize(
    "r, first_20",
    [
        (0.0, "A" * 20),
        (1.0, "B" * 20),
        (0.5, "AB" * 10),
        (0.05, "A" * 19 + "B"),
        (0.25, "AAAB" * 5),
    ],
)
def test_schedule_sequences(r, first_20):
    assert "".join(channel(s, r) for s in range(20)) == first_20


@pytest.mark.parametrize("r", ["0", "0.05", "0.5", "1", "0.1", "0.29", "0.85", "0.3333"])
def test_schedule_matches_exact_rational_reference(r):
    got = [is_channel_b(s, float(r)) for s in range(1000)]
    want = [_reference(s, r) for s in range(1000)]
    assert got == want
    assert sum(got) == n_channel_b(1000, float(r)) == (1000 * Fraction(r)).__floor__()


def test_r005_b_steps():
    assert [s for s in range(100) if is_channel_b(s, 0.05)] == [19, 39, 59, 79, 99]


def test_resume_mid_run_reproduces_schedule():
    # A run that stops after step 37 and resumes at global_step 38 sees the same channels and the
    # same realized ratio as an uninterrupted run: the schedule depends only on the global step.
    r = 0.3
    full = [(channel(s, r), schedule_metrics(s, r)) for s in range(80)]
    first = [(channel(s, r), schedule_metrics(s, r)) for s in range(38)]
    resumed = [(channel(s, r), schedule_metrics(s, r)) for s in range(38, 80)]
    assert first + resumed == full


def test_schedule_metrics_values():
    m = schedule_metrics(3, 0.5)  # steps 0..3 = A B A B
    assert m == {"stage2/channel_a": 0.0, "stage2/channel_b": 1.0, "stage2_ab/b_ratio_realized": 0.5}
    m = schedule_metrics(2, 0.5)  # A B A
    assert m["stage2/channel_a"] == 1.0 and m["stage2_ab/b_ratio_realized"] == pytest.approx(1 / 3)
