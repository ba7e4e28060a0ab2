"""`report.html`: the same content as report.md in ONE self-contained file: inline CSS, every figure embedded
as a `data:image/png;base64,...` URI, no scripts, no external resources. Raw monitor-dump text is shown
untruncated, wrapped between tokens (never inside `<|coord_k|>`), with each dropped record, the incomplete
tail and every leaked coordinate slot highlighted (`report/dumps.py`). Tables scroll sideways instead of
overflowing the page; figures take the full content width."""

from __future__ import annotations

import base64
from html import escape

from vlmdet.report import dumps, plots, tables
from vlmdet.report.content import RUN_FIELDS, Content, config_value

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1240px;
     padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}h3{font-size:1em}
.scroll{overflow-x:auto;max-width:100%;margin:.5em 0}
table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}td.l,th.l{text-align:left}
.pos{color:#0a7d20}.neg{color:#b00020}.miss{color:#999}
.figs{overflow-x:auto}.figs img{width:100%;min-width:640px;height:auto;display:block;margin:.4em 0}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere;
    font-size:12px;margin:0;flex:1 1 420px;min-width:0}
pre .t{white-space:nowrap}
mark{background:#ffd0d0;outline:1px solid #d00}mark b{color:#b00020;font-size:10px}
mark.tail{background:#ffe4b3;outline:1px dashed #c66a00}mark.tail b{color:#8a4b00}
.leak{text-decoration:underline wavy #6a1b9a;background:#ecd9f7;font-weight:bold}
.verdict{font-weight:600}
.key span{margin-right:1em}
.ex{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.ex img{border:1px solid #ccc;max-width:100%;height:auto}
.warn{color:#8a5a00}
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f'<span class="miss">({escape(alt)}: image not available)</span>'
    return f'<img alt="{escape(alt, quote=True)}" src="{data_uri(png)}">'


def _cell(key: str, cell: tables.Cell) -> str:
    if cell.value is None:
        return f'<td class="miss">{tables.MISSING}</td>'
    delta = tables.fmt_delta(key, cell.delta)
    if not delta:
        return f"<td>{tables.fmt_value(key, cell.value)}</td>"
    cls = "pos" if cell.delta > 0 else "neg" if cell.delta < 0 else "miss"
    return f'<td>{tables.fmt_value(key, cell.value)} <span class="{cls}">({delta})</span></td>'


def _table(header: list[str], rows: list[str], left: int = 1) -> str:
    ths = "".join(f'<th class="l">{escape(h)}</th>' if i < left else f"<th>{escape(h)}</th>" for i, h in enumerate(header))
    return f'<div class="scroll"><table><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _td(text, left: bool = False) -> str:
    return f'<td class="l">{escape(str(text))}</td>' if left else f"<td>{escape(str(text))}</td>"


def _tokens(piece: str) -> str:
    """Escaped text with each special token (`<|coord_499|>`) in a span that never wraps inside."""
    out, pos = [], 0
    for m in dumps.TOKEN_RE.finditer(piece):
        out += [escape(piece[pos:m.start()]), f'<span class="t">{escape(m.group())}</span>']
        pos = m.end()
    out.append(escape(piece[pos:]))
    return "".join(out)


def _answer(text: str, marks) -> str:
    """The raw answer with dropped records (`<mark>`, reason as tooltip and label), the incomplete tail
    (`<mark class="tail">`) and leaked coordinate slots (`<span class="leak">`) highlighted."""
    out, current = [], None

    def close(m):
        if m is not None:
            out.append(f"<b> [{escape(m.note)}]</b></mark>")

    for piece, outer, leak in dumps.segments(text, marks):
        if outer is not current:
            close(current)
            if outer is not None:
                cls = ' class="tail"' if outer.kind == "tail" else ""
                out.append(f'<mark{cls} title="{escape(outer.note, quote=True)}">')
            current = outer
        body = _tokens(piece)
        if leak is not None:
            body = f'<span class="leak" title="leaked coordinate slot: {escape(leak.note, quote=True)}">{body}</span>'
        out.append(body)
    close(current)
    for m in marks:  # zero-width: an end-of-turn token where a coordinate was due
        if m.kind == "leak" and m.end == m.start:
            out.append(f'<span class="leak" title="leaked coordinate slot: {escape(m.note, quote=True)}">'
                       f"[{escape(m.note)} in a coordinate slot]</span>")
    return "".join(out)


_KEY = ('<p class="key"><span><mark>dropped record [reason]</mark></span><span><mark class="tail">incomplete tail'
        '</mark></span><span><span class="leak">leaked coordinate slot</span></span></p>')


def render_html(c: Content, title: str = "vlmdet report") -> str:
    runs = c.runs
    base = runs[0].name if runs else ""
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{escape(title)}</h1>"]
    rows = []
    for r in runs:
        cfg = [config_value(r.config, k) for k, _ in RUN_FIELDS]
        rows.append("<tr>" + _td(r.name, True) + _td(r.path, True)
                    + "".join(_td(tables.MISSING if v is None else v) for v in cfg)
                    + _td(", ".join(map(str, r.eval_steps)) or tables.MISSING) + "</tr>")
    h.append(_table(["run", "path"] + [label for _, label in RUN_FIELDS] + ["eval steps"], rows, left=2))
    for r in runs:
        cmd = r.run_info.get("argv") or r.run_info.get("command")
        if cmd:
            h.append(f"<div>{escape(r.name)}: <code>{escape(' '.join(cmd) if isinstance(cmd, list) else str(cmd))}</code></div>")
    if c.warnings:
        h.append('<h2>Warnings</h2><ul class="warn">' + "".join(f"<li>{escape(w)}</li>" for w in c.warnings) + "</ul>")

    h.append(f"<h2>Eval metrics per run and step (deltas against {escape(base)} at the same step)</h2>")
    h.append("<p>Eval metrics come from <code>eval/step_*/metrics.json</code>; <i>coord mass (train)</i> and "
             "<i>loss/coord_gate</i> are the training log's last value at or before the step. "
             f"{tables.MISSING} = not recorded.</p>")
    rows = []
    for step, name, cells in tables.headline_rows(runs, c.steps):
        rows.append("<tr>" + _td(step, True) + _td(name, True)
                    + "".join(_cell(key, cell) for (key, _), cell in zip(tables.HEADLINE, cells)) + "</tr>")
    h.append(_table(["step", "run"] + [label for _, label in tables.HEADLINE], rows, left=2))

    h.append("<p>Which matching each metric family uses, and CoordExp's name for the same number:</p>")
    h.append(_table(["metrics", "matching", "CoordExp name"],
                    ["<tr>" + "".join(_td(v, True) for v in row) + "</tr>" for row in tables.METRIC_NOTES], left=3))
    h.append("<h2>Drop reasons (eval, records dropped by the strict parser)</h2>")
    drops = tables.drop_rows(runs, c.steps)
    if not drops:
        h.append("<p>No drops in any run: the strict parser kept every complete record at every reported step.</p>")
    else:
        keys = [(r.name, s) for r in runs for s in c.steps]
        rows = ["<tr>" + _td(name, True) + _td(step, True)
                + "".join(_cell("drop/x", tables.Cell(vals[j])) for _, vals in drops) + "</tr>"
                for j, (name, step) in enumerate(keys)]
        h.append(_table(["run", "step"] + [reason for reason, _ in drops], rows, left=2))
        h.append("<p>Reasons not listed: 0 in every run and step.</p>")
        h.append('<div class="figs">' + _img(c.figures.get("drop_reasons"), "drop reasons") + "</div>")

    if c.leak_kinds:
        h.append("<h2>Leaked coordinate slots (eval, <code>leak/&lt;kind&gt;</code>)</h2>")
        if "leak_kinds" in c.figures:
            h.append('<div class="figs">' + _img(c.figures["leak_kinds"], "leak kinds") + "</div>")
        else:
            h.append("<p>No leaked coordinate slots in any run: every bbox_2d slot held a coordinate token.</p>")

    h.append('<h2>Over steps</h2><div class="figs">')
    h += [_img(c.figures[name], name) for name in plots.PLOTS if name in c.figures]
    h.append("</div>")
    if c.no_data:
        h.append(f"<p class=\"miss\">No data in these runs for: {escape(', '.join(c.no_data))}.</p>")

    h.append("<h2>Monitor-dump examples</h2>")
    if not c.examples:
        h.append("<p>No monitor dumps in these runs.</p>")
    else:
        h.append(_KEY)
    for ex in c.examples:
        s = ex.sample
        flags = [k for k, v in (s.get("flags") or {}).items() if v]
        h.append(f"<h3>{escape(ex.run)} @ step {ex.step}: <code>{escape(str(s.get('image_id', '?')))}</code></h3>")
        h.append(f'<p class="verdict">{escape(ex.verdict)}</p>')
        h.append(f"<p>flags: {escape(', '.join(flags) or 'none')}; valid objects: {len(s.get('objects') or [])}; "
                 f"GT objects: {len(s.get('gt') or [])}; matches: {len(s.get('matches') or [])}</p>")
        text = str(s.get("raw_text", ""))
        h.append('<div class="ex">' + _img(ex.png, str(s.get("image_id", "")))
                 + f"<pre>{_answer(text, ex.marks)}</pre></div>")

    h.append("<h2>All eval metrics</h2>")
    for step in c.steps:
        rows = tables.metric_rows(runs, step)
        h.append(f"<details><summary>step {step} ({len(rows)} metrics)</summary>")
        h.append(_table(["metric"] + [r.name for r in runs],
                        ["<tr>" + _td(k.removeprefix("eval_rollout/"), True) + "".join(_cell(k, cell) for cell in cells) + "</tr>"
                         for k, cells in rows]))
        h.append("</details>")
    h.append("</body></html>")
    return "\n".join(h) + "\n"
