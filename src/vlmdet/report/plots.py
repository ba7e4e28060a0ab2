"""Figures of `vlmdet report` as PNG bytes: scalars over steps, drop-reason histograms, and one monitor-dump
sample drawn with its boxes.

matplotlib is used through `matplotlib.figure.Figure` with the Agg canvas (no pyplot state, no display),
imported inside the functions. PNGs carry no timestamp metadata, so the same data gives the same bytes.
"""

from __future__ import annotations

import io
from typing import Sequence

from vlmdet.report.runs import RunData

#: plot name -> (title, y label, [(candidate keys, line style, legend suffix)]). For each run and line the
#: first candidate key with data is drawn. `eval_rollout/*` come from eval metrics, the rest from
#: logging.jsonl (the Stage-2 CE is `loss/token_ce`; `loss/ce` is an older name for it).
PLOTS: dict[str, tuple[str, str, list[tuple[tuple[str, ...], str, str]]]] = {
    "parse_dropped_invalid": ("Invalid records dropped by the strict parser (eval)", "records",
                              [(("eval_rollout/parse_dropped_invalid",), "-o", "")]),
    "sample_valid_pred_rate": ("sample_valid_pred_rate (>= 1 valid object) and sample_clean_rate (eval)", "rate",
                               [(("eval_rollout/sample_valid_pred_rate",), "-o", " (>= 1 valid)"),
                                (("eval_rollout/sample_clean_rate",), "--o", " (clean)")]),
    "coord_slot_leak_rate": ("Coordinate slots not holding a coordinate token (eval)", "rate",
                             [(("eval_rollout/coord_slot_leak_rate",), "-o", "")]),
    "coord_vocab_mass": ("Coordinate-vocabulary mass at coord slots", "mass",
                         [(("coord_diag/coord_vocab_mass_mean",), "-", " (train, GT slots)"),
                          (("eval_rollout/coord_vocab_mass_gen",), "--o", " (eval, every bbox_2d slot)")]),
    "loss_coord_gate": ("loss/coord_gate (unweighted)", "loss", [(("loss/coord_gate",), "-", "")]),
    "loss_ce": ("Token CE (loss/token_ce)", "loss", [(("loss/token_ce", "loss/ce"), "-", "")]),
    "bbox_AP50": ("COCO AP50 (eval)", "AP50", [(("eval_rollout/bbox_AP50",), "-o", "")]),
    "f1": ("F1 at IoU 0.5 (eval)", "F1", [(("eval_rollout/f1",), "-o", "")]),
}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
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


def line_plot(runs: Sequence[RunData], name: str, marks: Sequence[int] = ()) -> bytes:
    """One `PLOTS[name]` figure: one line per run (and per line spec), x = optimizer step. Vertical dotted
    lines at `marks` (the report's steps). With no data at all the axes say so."""
    title, ylabel, lines = PLOTS[name]
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    any_data = False
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        for keys, style, suffix in lines:
            _, pts = _first_series(run, keys)
            if not pts:
                continue
            any_data = True
            xs, ys = zip(*pts)
            if len(pts) == 1 and "o" not in style:  # a lone point of a line style would be invisible
                style += "o"
            ax.plot(xs, ys, style, color=color, label=run.name + suffix, markersize=4, linewidth=1.5)
    for s in marks:
        ax.axvline(s, color="0.8", linestyle=":", linewidth=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if any_data:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data in these runs", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def drop_histogram(runs: Sequence[RunData], steps: Sequence[int], reasons: Sequence[str], prefix: str = "drop/",
                   ylabel: str = "dropped records", title: str = "Drop reasons (eval), per run and step") -> bytes:
    """Grouped bars: x = drop reason, one bar per (run, step) with counts `eval_rollout/<prefix><reason>`
    (`prefix="leak/"` with `slots.LEAK_KINDS` draws the leak kinds). Missing metrics are drawn as 0-height
    bars and the legend marks the (run, step) as missing."""
    fig = _figure(7.2, 3.6)
    ax = fig.subplots()
    groups = [(r, s) for r in runs for s in steps]
    width = 0.8 / max(1, len(groups))
    for j, (run, step) in enumerate(groups):
        vals = [run.metric(step, f"{prefix}{reason}") for reason in reasons]
        missing = all(v is None for v in vals)
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(reasons))]
        label = f"{run.name} @ {step}" + (" (missing)" if missing else "")
        alpha = 0.35 + 0.65 * (steps.index(step) + 1) / len(steps)
        ax.bar(xs, [v or 0.0 for v in vals], width=width, color=f"C{runs.index(run) % 10}", alpha=alpha, label=label)
    ax.set_xticks(range(len(reasons)))
    ax.set_xticklabels(reasons, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    if groups:
        ax.legend(fontsize=6, ncol=max(1, len(runs)))
    return _png(fig)


def draw_sample(sample: dict, scale: int = 3) -> bytes | None:
    """A monitor-dump sample's image with GT boxes (green, thin) and valid predicted boxes (red, with
    their desc), upscaled `scale` times (nearest). Boxes are `bbox_2d` in the image's pixels. None when
    the image file cannot be read (the report then shows the text only)."""
    from PIL import Image, ImageDraw

    try:
        with Image.open(sample["image"]) as im:
            img = im.convert("RGB")
    except (OSError, KeyError, TypeError, ValueError):
        return None
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)

    def box(b):
        try:
            x1, y1, x2, y2 = (float(v) * scale for v in b)
        except (TypeError, ValueError):
            return None
        return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]

    for gt in sample.get("gt") or []:
        b = box(gt.get("bbox_2d"))
        if b:
            draw.rectangle(b, outline=(0, 200, 0), width=2)
    for obj in sample.get("objects") or []:
        b = box(obj.get("bbox_2d"))
        if b:
            draw.rectangle(b, outline=(230, 0, 0), width=2)
            draw.text((b[0] + 2, b[1] + 1), str(obj.get("desc", ""))[:24], fill=(230, 0, 0))
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
