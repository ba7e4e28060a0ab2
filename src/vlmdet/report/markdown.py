"""`report.md`: the report's content as GitHub-flavoured Markdown. Figures are linked as PNG files
(`plots/<name>.png`, `examples/*.png`) that the caller writes next to report.md."""

from __future__ import annotations

import re

from vlmdet.report import dumps, plots, tables
from vlmdet.report.content import RUN_FIELDS, Content, config_value

EXAMPLE_TEXT_LIMIT = 2000  # characters of raw text shown per example in Markdown (HTML shows all)
WRAP = 100                 # line width of the raw text in Markdown (breaks between tokens only)


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


_BRACKETS = {"drop": ("⟦", "⟧"), "tail": ("⟪", "⟫")}


def _marked(text: str, marks) -> str:
    """The raw answer with ⟦dropped records⟧, ⟪the incomplete tail⟫ and ‹leaked coordinate slots›."""
    out, current = [], None
    for piece, outer, leak in dumps.segments(text, marks):
        if outer is not current:
            if current is not None:
                out.append(_BRACKETS[current.kind][1])
            if outer is not None:
                out.append(_BRACKETS[outer.kind][0])
            current = outer
        out.append(f"‹{piece}›" if leak is not None else piece)
    if current is not None:
        out.append(_BRACKETS[current.kind][1])
    out += [f"‹[{m.note} in a coordinate slot]›" for m in marks if m.kind == "leak" and m.end == m.start]
    return "".join(out)


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
    if not drops:
        md += ["No drops in any run: the strict parser kept every complete record at every reported step.", ""]
    else:
        keys = [(r.name, s) for r in runs for s in c.steps]
        md += _table(["run", "step"] + [reason for reason, _ in drops],
                     [[name, str(step)] + [tables.fmt_value("drop/x", vals[j]) for _, vals in drops]
                      for j, (name, step) in enumerate(keys)])
        md += ["", "Reasons not listed: 0 in every run and step.", "", "![drop reasons](plots/drop_reasons.png)", ""]

    if c.leak_kinds:
        md += ["## Leaked coordinate slots (eval, `leak/<kind>`)", ""]
        md += ["![leak kinds](plots/leak_kinds.png)" if "leak_kinds" in c.figures else
               "No leaked coordinate slots in any run: every bbox_2d slot held a coordinate token.", ""]

    md += ["## Over steps", ""]
    for name in plots.PLOTS:
        if name in c.figures:
            md += [f"![{name}](plots/{name}.png)", ""]
    if c.no_data:
        md += [f"No data in these runs for: {', '.join(c.no_data)}.", ""]

    md += ["## Monitor-dump examples", ""]
    if not c.examples:
        md += ["No monitor dumps in these runs.", ""]
    else:
        md += ["In the raw answers: ⟦dropped record⟧, ⟪incomplete tail⟫, ‹leaked coordinate slot›; lines break "
               "between tokens only.", ""]
    for ex in c.examples:
        s = ex.sample
        flags = [k for k, v in (s.get("flags") or {}).items() if v]
        md += [f"### {ex.run} @ step {ex.step}: `{s.get('image_id', '?')}`", ""]
        md += [f"**{ex.verdict}**", ""]
        md += [f"flags: {', '.join(flags) or 'none'}; valid objects: {len(s.get('objects') or [])}; "
               f"GT objects: {len(s.get('gt') or [])}; matches: {len(s.get('matches') or [])}", ""]
        if ex.png is not None:
            md += [f"![{s.get('image_id', '')}]({ex.filename})", ""]
        text = str(s.get("raw_text", ""))
        marked = _marked(text, ex.marks)
        if len(marked) > EXAMPLE_TEXT_LIMIT:
            cut = EXAMPLE_TEXT_LIMIT
            opened = marked.rfind("<|", 0, cut)
            if opened >= 0 and marked.find("|>", opened, cut) < 0:  # never cut inside a token
                cut = opened
            marked = marked[:cut] + f" … [{len(marked) - cut} more characters in report.html]"
        body = "\n".join(dumps.wrap(marked, WRAP))
        fence = _fence(body)
        md += ["Raw answer:", "", fence + "text", body, fence, ""]
        notes = [f"- dropped record {d.get('index', '?')}: `{d.get('reason', '?')}`" for d in s.get("drops") or []]
        notes += [f"- tail: {m.note}" for m in ex.marks if m.kind == "tail"]
        notes += [f"- leaked coordinate slot `{text[m.start:m.end] or '(end of answer)'}` ({m.note})"
                  for m in ex.marks if m.kind == "leak"]
        if notes:
            md += notes + [""]

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
