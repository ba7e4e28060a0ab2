"""Figures of `vlmdet report` as PNG bytes: scalars over steps (small multiples, legend outside the axes,
paired styles for factorial arms), the drop-reason heat-map, and one monitor-dump sample drawn with its boxes.

matplotlib is used through `matplotlib.figure.Figure` with the Agg canvas (no pyplot state, no display),
imported inside the functions. PNGs carry no timestamp metadata, so the same data gives the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

from vlmdet.evaluate.monitor import draw_sample as draw
from vlmdet.report.runs import RunData

#: Axis kinds: "rate" values live in [0, 1] and the axis is fixed to [0, 1] (a 3-point dip stays a 3-point
#: dip); "count" axes start at 0 with integer ticks; "loss" axes are automatic.
KINDS = ("rate", "count", "loss")

#: plot name -> (title, axis kind, y label, [(candidate keys, panel title)]). Each panel is one small
#: multiple of the figure, one line per run; for each run the first candidate key with data is drawn. A
#: panel no run has data for is left out (`has_data` says whether any is left).
#: `eval_rollout/*` come from eval metrics, the rest from logging.jsonl (the Stage-2 CE is `loss/token_ce`;
#: `loss/ce` is an older name for it).
PLOTS: dict[str, tuple[str, str, str, list[tuple[tuple[str, ...], str]]]] = {
    "parse_dropped_invalid": ("Invalid records dropped by the strict parser (eval)", "count", "records",
                              [(("eval_rollout/parse_dropped_invalid",), "")]),
    "sample_valid_pred_rate": ("Answer rates (eval)", "rate", "rate",
                               [(("eval_rollout/sample_valid_pred_rate",), "sample_valid_pred_rate (>= 1 valid object)"),
                                (("eval_rollout/sample_clean_rate",), "sample_clean_rate (clean answers)")]),
    "coord_slot_leak_rate": ("Coordinate slots not holding a coordinate token: coord_slot_leak_rate (eval)", "rate",
                             "rate", [(("eval_rollout/coord_slot_leak_rate",), "")]),
    "coord_vocab_mass": ("Coordinate-vocabulary mass at coord slots", "rate", "mass",
                         [(("coord_diag/coord_vocab_mass_mean",), "train, GT slots"),
                          (("eval_rollout/coord_vocab_mass_gen",), "eval, every bbox_2d slot")]),
    "loss_coord_gate": ("loss/coord_gate (unweighted)", "loss", "loss", [(("loss/coord_gate",), "")]),
    "loss_ce": ("Token CE (loss/token_ce)", "loss", "loss", [(("loss/token_ce", "loss/ce"), "")]),
    "bbox_AP50": ("COCO AP50 (eval)", "rate", "AP50", [(("eval_rollout/bbox_AP50",), "")]),
    "f1": ("F1 at IoU 0.5 (eval)", "rate", "F1", [(("eval_rollout/f1",), "")]),
}

#: Figure width in inches at `DPI`: 1200 px, the report's content width.
WIDTH, DPI = 12.0, 100
_DASHES = {True: "-", False: "--", None: "-."}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    fig.set_layout_engine("constrained")
    return fig


def _first_series(run: RunData, keys: Sequence[str]) -> tuple[str, list[tuple[int, float]]]:
    for k in keys:
        s = run.series(k)
        if s:
            return k, s
    return keys[0], []


def _arm(run: RunData) -> tuple[str | None, bool | None]:
    """A run's factorial arm: (Stage-2 grad mode or None, coord gate on? or None when not recorded)."""
    cfg = run.config
    grad = (cfg.get("stage2") or {}).get("softctx_grad_mode") if cfg.get("stage") == 2 else None
    gate = (cfg.get("losses") or {}).get("coord_gate")
    return (str(grad) if grad is not None else None), (None if not isinstance(gate, (int, float)) else gate > 0)


@dataclass(frozen=True)
class Style:
    color: str
    linestyle: str
    marker: str
    label: str


def run_styles(runs: Sequence[RunData]) -> tuple[list[Style], str]:
    """One line style per run, and a legend title. When the runs form factorial arms (more than one
    distinct (grad mode, gate) pair among them): colour = Stage-2 grad mode, dash = gate (solid on, dashed
    off), and runs of the same arm (e.g. seeds) differ by marker. Otherwise one colour per run, solid."""
    arms = [_arm(r) for r in runs]
    if len(set(arms)) > 1:
        modes = sorted({str(g) for g, _ in arms})
        seen: dict = {}
        styles = []
        for run, (grad, gate) in zip(runs, arms):
            k = seen[(grad, gate)] = seen.get((grad, gate), -1) + 1
            styles.append(Style(f"C{modes.index(str(grad)) % 10}", _DASHES[gate], _MARKERS[k % len(_MARKERS)], run.name))
        return styles, "colour = grad mode, line = gate (solid on, dashed off)"
    return [Style(f"C{i % 10}", "-", "o", r.name) for i, r in enumerate(runs)], ""


def _panels(runs: Sequence[RunData], name: str) -> list[tuple[tuple[str, ...], str]]:
    return [(keys, t) for keys, t in PLOTS[name][3] if any(_first_series(r, keys)[1] for r in runs)]


def has_data(runs: Sequence[RunData], name: str) -> bool:
    """Whether any run has data for any panel of `PLOTS[name]` (else the report names it in words)."""
    return bool(_panels(runs, name))


def line_plot(runs: Sequence[RunData], name: str, marks: Sequence[int] = ()) -> bytes:
    """`line_figure` as PNG bytes."""
    return _png(line_figure(runs, name, marks))


def line_figure(runs: Sequence[RunData], name: str, marks: Sequence[int] = ()):
    """One `PLOTS[name]` figure (a matplotlib `Figure`), full report width: one small multiple per panel, one line per run
    (`run_styles`), x = optimizer step, the legend outside the axes on the right. Vertical dotted lines at
    `marks` (the report's steps). Rate axes are [0, 1]; count axes start at 0. A panel without data says so."""
    from matplotlib.ticker import MaxNLocator

    title, kind, ylabel, panels = PLOTS[name]
    panels = _panels(runs, name) or panels[:1]
    styles, legend_title = run_styles(runs)
    fig = _figure(WIDTH, 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True, sharey=True)[0]
    handles = {}
    for ax, (keys, panel_title) in zip(axes, panels):
        any_data = False
        for run, st in zip(runs, styles):
            _, pts = _first_series(run, keys)
            if not pts:
                continue
            any_data = True
            xs, ys = zip(*pts)
            marker = st.marker if keys[0].startswith("eval_rollout/") or len(pts) == 1 else None
            (line,) = ax.plot(xs, ys, color=st.color, linestyle=st.linestyle, marker=marker, markersize=4,
                              linewidth=1.5, label=st.label)
            handles.setdefault(st.label, line)
        for s in marks:
            ax.axvline(s, color="0.8", linestyle=":", linewidth=1)
        if kind == "rate":
            ax.set_ylim(-0.02, 1.02)
        elif kind == "count":
            ax.set_ylim(bottom=0, top=None if any_data and ax.get_ylim()[1] > 1 else 1)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel_title or title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if not any_data:
            ax.text(0.5, 0.5, "no data in these runs", ha="center", va="center", transform=ax.transAxes, color="0.4")
    axes[0].set_ylabel(ylabel)
    if len(panels) > 1 or panels[0][1]:
        fig.suptitle(title, fontsize=11)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8,
                   title=legend_title or None, title_fontsize=8)
    return fig


def count_heatmap(runs: Sequence[RunData], steps: Sequence[int], reasons: Sequence[str], prefix: str = "drop/",
                  title: str = "Drop reasons (eval): records dropped per reason, per run and step",
                  label: str = "dropped records") -> bytes | None:
    """Counts `eval_rollout/<prefix><reason>` as a heat-map: one row per (run, step), one column per reason
    that occurs anywhere, each cell annotated with its count ("—" = not recorded). None when every count
    is 0 or missing (the report then says so in words). `prefix="leak/"`: the leaked-slot kinds."""
    import numpy as np

    rows = [(r, s) for r in runs for s in steps]
    grid = [[r.metric(s, f"{prefix}{reason}") for reason in reasons] for r, s in rows]
    seen = [j for j in range(len(reasons)) if any((row[j] or 0) > 0 for row in grid)]
    if not seen:
        return None
    vals = np.array([[np.nan if row[j] is None else row[j] for j in seen] for row in grid], dtype=float)
    fig = _figure(WIDTH, 1.2 + 0.28 * len(rows))
    ax = fig.subplots()
    im = ax.imshow(np.nan_to_num(vals, nan=0.0), cmap="Reds", aspect="auto", vmin=0)
    top = np.nanmax(vals)
    for i in range(len(rows)):
        for j in range(len(seen)):
            v = vals[i, j]
            text = "—" if np.isnan(v) else str(int(v)) if float(v).is_integer() else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if not np.isnan(v) and v > 0.6 * top else "black")
    ax.set_xticks(range(len(seen)), [reasons[j] for j in seen], fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r.name} @ {s}" for r, s in rows], fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=label, fraction=0.03)
    return _png(fig)


def draw_sample(sample: dict) -> bytes | None:
    """A monitor-dump sample drawn by `evaluate.monitor.draw_sample` (GT dashed white, predictions magenta,
    labels, pairs, legend) as PNG bytes; None when the image file cannot be read (the report then shows
    the text only)."""

    try:
        img = draw(sample)
    except (OSError, KeyError, TypeError, ValueError):
        return None
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def interval_plot(arms: dict[str, Sequence[tuple[int, float, float, float]]], title: str, ylabel: str) -> bytes:
    """Seed statistics over steps (`vlmdet experiment grid`): one line per arm through the mean at each
    step, with its interval as an error bar. `arms[name] = [(step, mean, lo, hi), ...]`; a NaN lo/hi (one
    seed) draws the point without a bar; a NaN mean is left out."""
    import math

    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    n = max(1, len(arms))
    for i, (name, pts) in enumerate(arms.items()):
        pts = [p for p in pts if math.isfinite(p[1])]
        if not pts:
            continue
        # arms side by side around each step so that their bars do not hide each other
        shift = (i - (n - 1) / 2) * 2.0
        xs = [p[0] + shift for p in pts]
        ys = [p[1] for p in pts]
        err = [[p[1] - p[2] if math.isfinite(p[2]) else 0.0 for p in pts],
               [p[3] - p[1] if math.isfinite(p[3]) else 0.0 for p in pts]]
        ax.errorbar(xs, ys, yerr=err, fmt="-o", color=f"C{i % 10}", label=name, markersize=4, linewidth=1.5,
                    capsize=3)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
