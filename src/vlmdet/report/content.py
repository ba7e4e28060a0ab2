"""What one report contains, gathered once and rendered twice (Markdown and HTML).

`gather(runs, steps, n_examples)` computes the tables, the PNG figures (bytes) and the monitor-dump
examples; `render_markdown` / `render_html` (report/markdown.py, report/html.py) only lay them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from vlmdet.report import dumps, plots, tables
from vlmdet.report.runs import RunData

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
    marks: list[dumps.Mark] = field(default_factory=list)  # highlighted spans of sample["raw_text"]
    verdict: str = ""          # one line: parse + detection (`dumps.verdict`)


@dataclass
class Content:
    runs: list[RunData]
    steps: list[int]
    figures: dict[str, bytes] = field(default_factory=dict)   # name -> PNG (plots.PLOTS with data; drop_reasons, leak_kinds when any)
    examples: list[Example] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    no_data: list[str] = field(default_factory=list)            # plots.PLOTS names no run has data for
    leak_kinds: list[str] = field(default_factory=list)         # `leak/<kind>` names in the runs (none: [])


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
    heat = plots.count_heatmap(runs, steps, tables.drop_reasons(runs))
    if heat is not None:
        content.figures["drop_reasons"] = heat
    kinds = content.leak_kinds = tables.leak_kinds(runs)
    leaks = plots.count_heatmap(runs, steps, kinds, "leak/", "Leaked coordinate slots (eval): what stood there, "
                                "per run and step", "coordinate slots") if kinds else None
    if leaks is not None:
        content.figures["leak_kinds"] = leaks
    for name in plots.PLOTS:
        if plots.has_data(runs, name):
            content.figures[name] = plots.line_plot(runs, name, marks=steps)
        else:
            content.no_data.append(name)
    for run in runs:
        candidates = [s for s in sorted(run.dumps, reverse=True) if not steps or s <= max(steps)]
        for step in candidates:
            dump = run.load_dump(step)
            if dump is None:
                continue
            order = config_value(run.config, "prompt.field_order") or "desc_first"
            for i, sample in enumerate(dumps.pick_examples(dump["samples"], n_examples)):
                name = f"examples/{_slug(run.name)}_step{step:06d}_{i}.png"
                found = dumps.marks(sample, order)
                content.examples.append(Example(run.name, step, sample, plots.draw_sample(sample), name, found,
                                                dumps.verdict(sample, found)))
            break
    for run in runs:
        content.warnings += [f"{run.name}: {w}" for w in run.warnings]
    return content
