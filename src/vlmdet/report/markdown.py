"""`report.md`: the report's content as GitHub-flavoured Markdown. Figures are linked as PNG files
(`plots/<name>.png`, `examples/*.png`) that the caller writes next to report.md."""

from __future__ import annotations

import re

from vlmdet.report import plots, tables
from vlmdet.report.content import RUN_FIELDS, Content, config_value

EXAMPLE_TEXT_LIMIT = 2000  # characters of raw text shown per example in Markdown (HTML shows all)


def _esc(text) -> str:
    """A table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_esc(c) for c in row) + " |" for row in rows]
    return out


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _fmt_cfg(v) -> str:
    return tables.MISSING if v is None else str(v)


def render_markdown(c: Content, title: str = "vlmdet report") -> str:
    runs = c.runs
    base = runs[0].name if runs else ""
    md = [f"# {title}", ""]
    md += _table(["run", "path"] + [label for _, label in RUN_FIELDS] + ["eval steps"],
                 [[r.name, str(r.path)] + [_fmt_cfg(config_value(r.config, k)) for k, _ in RUN_FIELDS]
                  + [", ".join(map(str, r.eval_steps)) or tables.MISSING] for r in runs])
    cmds = [(r.name, r.run_info.get("argv") or r.run_info.get("command")) for r in runs]
    if any(cmd for _, cmd in cmds):
        md += ["", "Commands:"]
        md += [f"- {name}: `{' '.join(cmd) if isinstance(cmd, list) else cmd}`" for name, cmd in cmds if cmd]
    if c.warnings:
        md += ["", "Warnings:"] + [f"- {w}" for w in c.warnings]

    md += ["", f"## Eval metrics per run and step (deltas against `{base}` at the same step)", ""]
    md += ["Eval metrics come from `eval/step_*/metrics.json`; `coord mass (train)` and `loss/coord_gate` are "
           "the training log's last value at or before the step. `—` = not recorded.", ""]
    md += _table(["step", "run"] + [label for _, label in tables.HEADLINE],
                 [[str(step), name] + [tables.fmt_cell(key, cell) for (key, _), cell in zip(tables.HEADLINE, cells)]
                  for step, name, cells in tables.headline_rows(runs, c.steps)])

    md += ["", "Which matching each metric family uses, and CoordExp's name for the same number:", ""]
    md += _table(["metrics", "matching", "CoordExp name"], [list(row) for row in tables.METRIC_NOTES])
    md += ["", "## Drop reasons (eval, records dropped by the strict parser)", ""]
    drops = tables.drop_rows(runs, c.steps)
    keys = [(r.name, s) for r in runs for s in c.steps]
    md += _table(["run", "step"] + [reason for reason, _ in drops],
                 [[name, str(step)] + [tables.fmt_value("drop/x", vals[j]) for _, vals in drops]
                  for j, (name, step) in enumerate(keys)])
    md += ["", "![drop reasons](plots/drop_reasons.png)", "", "![leak kinds](plots/leak_kinds.png)", ""]

    md += ["## Over steps", ""]
    for name in plots.PLOTS:
        md += [f"![{name}](plots/{name}.png)", ""]

    md += ["## Monitor-dump examples", ""]
    if not c.examples:
        md += ["No monitor dumps in these runs.", ""]
    for ex in c.examples:
        s = ex.sample
        flags = [k for k, v in (s.get("flags") or {}).items() if v]
        md += [f"### {ex.run} @ step {ex.step}: `{s.get('image_id', '?')}`", ""]
        md += [f"flags: {', '.join(flags) or 'none'}; valid objects: {len(s.get('objects') or [])}; "
               f"GT objects: {len(s.get('gt') or [])}; matches: {len(s.get('matches') or [])}", ""]
        if ex.png is not None:
            md += [f"![{s.get('image_id', '')}]({ex.filename}) (green: GT, red: valid predictions)", ""]
        text = str(s.get("raw_text", ""))
        marked = "".join(f"⟦{piece}⟧" if reason else piece for piece, reason in tables.text_segments(text, s.get("drops")))
        if len(marked) > EXAMPLE_TEXT_LIMIT:
            marked = marked[:EXAMPLE_TEXT_LIMIT] + f" … [{len(marked) - EXAMPLE_TEXT_LIMIT} more characters in report.html]"
        fence = _fence(marked)
        md += ["Raw answer (dropped records between ⟦ ⟧):", "", fence + "text", marked, fence, ""]
        for d in s.get("drops") or []:
            md += [f"- dropped record {d.get('index', '?')}: `{d.get('reason', '?')}`"]
        if s.get("drops"):
            md += [""]

    md += ["## All eval metrics", ""]
    for step in c.steps:
        rows = tables.metric_rows(runs, step)
        md += [f"### step {step}", ""]
        if not rows:
            md += ["No eval metrics at this step.", ""]
            continue
        md += _table(["metric"] + [r.name for r in runs],
                     [[key.removeprefix("eval_rollout/")] + [tables.fmt_cell(key, cell) for cell in cells]
                      for key, cells in rows])
        md += [""]
    return "\n".join(md).rstrip() + "\n"
