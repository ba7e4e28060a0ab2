"""What one report contains, gathered once and rendered twice (Markdown and HTML).

`gather(runs, steps, n_examples)` computes the tables, the PNG figures (bytes) and the monitor-dump
examples; `render_markdown` / `render_html` (report/markdown.py, report/html.py) only lay them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from vlmdet.report import plots, tables
from vlmdet.report.runs import RunData
from vlmdet.slots import LEAK_KINDS

#: (dotted config key, column label) shown in the runs table.
RUN_FIELDS: list[tuple[str, str]] = [
    ("stage", "stage"),
    ("stage2.softctx_grad_mode", "grad mode"),
    ("stage2.n_softctx_iter", "iters"),
    ("losses.coord_gate", "coord_gate w"),
    ("losses.ce_on_coord_slots", "CE@coord"),
    ("seed", "seed"),
    ("training.max_steps", "max steps"),
]


@dataclass
class Example:
    run: str
    step: int
    sample: dict
    png: bytes | None          # image with boxes, None when the image is unavailable
    filename: str              # where the Markdown report puts the PNG (relative to the report folder)


@dataclass
class Content:
    runs: list[RunData]
    steps: list[int]
    figures: dict[str, bytes] = field(default_factory=dict)   # name -> PNG (drop_reasons, leak_kinds, plots.PLOTS)
    examples: list[Example] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def config_value(cfg: dict, dotted: str):
    """`cfg["a"]["b"]` for "a.b", None when absent; `stage2.*` is None for a run that is not Stage-2."""
    if dotted.startswith("stage2.") and cfg.get("stage") not in (2, None):
        return None
    cur = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def gather(runs: Sequence[RunData], steps: Sequence[int] | None = None, n_examples: int = 2) -> Content:
    """Tables' inputs, figures and examples for `runs` at `steps` (None: every eval step of any run).
    Examples: per run, up to `n_examples` samples of the monitor dump at the last report step that has one."""
    runs = list(runs)
    steps = tables.report_steps(runs, steps)
    content = Content(runs, steps)
    content.figures["drop_reasons"] = plots.drop_histogram(runs, steps, tables.drop_reasons(runs))
    content.figures["leak_kinds"] = plots.drop_histogram(
        runs, steps[-1:], LEAK_KINDS, prefix="leak/", ylabel="coordinate slots",
        title="What stood at leaked coordinate slots (eval, last step), per run")
    for name in plots.PLOTS:
        content.figures[name] = plots.line_plot(runs, name, marks=steps)
    for run in runs:
        candidates = [s for s in sorted(run.dumps, reverse=True) if not steps or s <= max(steps)]
        for step in candidates:
            dump = run.load_dump(step)
            if dump is None:
                continue
            for i, sample in enumerate(tables.pick_examples(dump["samples"], n_examples)):
                name = f"examples/{_slug(run.name)}_step{step:06d}_{i}.png"
                content.examples.append(Example(run.name, step, sample, plots.draw_sample(sample), name))
            break
    for run in runs:
        content.warnings += [f"{run.name}: {w}" for w in run.warnings]
    return content
