"""report/plots.py: factorial arm styles, fixed rate axes, legends outside the axes, panels without data."""

from __future__ import annotations

import pytest

from vlmdet.report import plots
from vlmdet.report.runs import RunData


def _run(name, grad=None, gate=None, stage=2, evals=None, events=()):
    cfg = {"stage": stage, "stage2": {"softctx_grad_mode": grad} if grad else {},
           "losses": {} if gate is None else {"coord_gate": gate}}
    return RunData(path=None, name=name, config=cfg, events=list(events), eval=evals or {})


def test_factorial_arms_colour_by_grad_mode_dash_by_gate():
    runs = [_run("u_on", "unroll", 1.0), _run("u_off", "unroll", 0.0), _run("e_on", "em_detach", 1.0),
            _run("e_off", "em_detach", 0.0), _run("e_off_seed1", "em_detach", 0.0)]
    styles, title = plots.run_styles(runs)
    assert [(s.color, s.linestyle) for s in styles] == [
        ("C1", "-"), ("C1", "--"), ("C0", "-"), ("C0", "--"), ("C0", "--")]  # em_detach sorts first: C0
    assert styles[3].marker != styles[4].marker  # same arm (another seed): another marker
    assert "colour = grad mode" in title


@pytest.mark.parametrize("runs", [
    [_run("a", "unroll", 1.0), _run("b", "unroll", 1.0)],   # one arm only: plain per-run colours
    [_run("a", stage=1), _run("b", stage=1)],               # Stage-1 runs, no arms
])
def test_non_factorial_runs_get_one_colour_each(runs):
    styles, title = plots.run_styles(runs)
    assert [(s.color, s.linestyle) for s in styles] == [("C0", "-"), ("C1", "-")] and title == ""


def test_rate_axis_is_fixed_and_legend_is_outside():
    ev = {100: {"eval_rollout/sample_valid_pred_rate": 0.99}, 200: {"eval_rollout/sample_valid_pred_rate": 0.97}}
    runs = [_run("on", "unroll", 1.0, evals=ev), _run("off", "unroll", 0.0, evals=ev)]
    fig = plots.line_figure(runs, "sample_valid_pred_rate", marks=[100, 200])
    ax = fig.axes[0]
    assert ax.get_ylim() == (-0.02, 1.02)  # a 0.97-0.99 dip is not zoomed into a collapse
    assert len(fig.axes) == 1  # the sample_clean_rate panel has no data here: left out
    fig.draw_without_rendering()  # runs the constrained layout, as saving does
    legend = fig.legends[0].get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes, never over the data
    assert fig.get_size_inches()[0] * plots.DPI >= 1200


def test_count_axis_starts_at_zero_with_integer_ticks():
    ev = {s: {"eval_rollout/parse_dropped_invalid": 0.0} for s in (100, 200)}
    fig = plots.line_figure([_run("a", evals=ev)], "parse_dropped_invalid")
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 1.0)  # all zero: no -0.04..0.04 axis
    assert all(float(t).is_integer() for t in ax.get_yticks())


def test_small_multiples_and_has_data():
    ev = {100: {"eval_rollout/coord_vocab_mass_gen": 0.9}}
    runs = [_run("a", evals=ev, events=[{"step": 10, "coord_diag/coord_vocab_mass_mean": 0.8}])]
    fig = plots.line_figure(runs, "coord_vocab_mass")
    assert [a.get_title() for a in fig.axes] == ["train, GT slots", "eval, every bbox_2d slot"]
    assert plots.has_data(runs, "coord_vocab_mass") and not plots.has_data(runs, "loss_ce")


def test_heatmap_only_when_something_was_counted():
    ev = {100: {"eval_rollout/drop/malformed": 0.0, "eval_rollout/drop/wrong_arity": 2.0}}
    assert plots.count_heatmap([_run("a", evals=ev)], [100], ["malformed", "wrong_arity"]).startswith(b"\x89PNG")
    assert plots.count_heatmap([_run("a", evals=ev)], [100], ["malformed"]) is None
