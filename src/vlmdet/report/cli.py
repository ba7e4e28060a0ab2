"""`vlmdet report RUN [RUN ...] [--steps 300,600,1200] [--out DIR]`: compare run directories.

Writes into OUT (default: `<first run>/report`):
- `report.md`     tables + links to `plots/*.png` and `examples/*.png` (written next to it)
- `report.html`   the same, ONE self-contained file (figures embedded as base64 data URIs)
The first run is the baseline of every delta. Missing steps/metrics show as "—"; a run folder that does
not exist is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from vlmdet.errors import UsageError
from vlmdet.io import atomic_write_bytes, atomic_write_text
from vlmdet.options import bounded
from vlmdet.report.content import gather
from vlmdet.report.html import render_html
from vlmdet.report.markdown import render_markdown
from vlmdet.report.runs import load_runs, parse_steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the first is the delta baseline)")
    parser.add_argument("--steps", default=None, help="comma-separated eval steps, e.g. 300,600,1200 (default: all)")
    parser.add_argument("--out", default=None, help="output folder (default: <first run>/report)")
    parser.add_argument("--title", default="vlmdet report", help="report title")
    parser.add_argument("--examples", type=bounded(int, lambda v: v >= 0, ">= 0"), default=2, help="monitor-dump examples per run (default 2)")


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path, steps: Sequence[int] | None = None,
                 title: str = "vlmdet report", n_examples: int = 2) -> dict[str, Path]:
    """Read the runs, write report.md (+ PNGs) and report.html into `out_dir`; return their paths
    `{"md": ..., "html": ...}`. Every file is written atomically."""
    runs = load_runs(list(run_dirs))
    content = gather(runs, steps, n_examples)
    out = Path(out_dir)
    for name, png in content.figures.items():
        atomic_write_bytes(out / "plots" / f"{name}.png", png)
    for ex in content.examples:
        if ex.png is not None:
            atomic_write_bytes(out / ex.filename, ex.png)
    md = atomic_write_text(out / "report.md", render_markdown(content, title))
    html = atomic_write_text(out / "report.html", render_html(content, title))
    return {"md": md, "html": html}


def run(args: argparse.Namespace) -> int:
    steps = parse_steps(args.steps)
    if args.examples < 0:
        raise UsageError("--examples must be >= 0")
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    paths = build_report(args.runs, out, steps, args.title, args.examples)
    print(f"report: {paths['md']}\nreport: {paths['html']}")
    return 0
