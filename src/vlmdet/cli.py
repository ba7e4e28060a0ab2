"""`vlmdet <command>`: one plain dict from command name to the module that implements it.

Each command module defines `add_arguments(parser: argparse.ArgumentParser) -> None` and
`run(args: argparse.Namespace) -> int` (the exit status). Only the chosen command's module is
imported, so light commands (`vlmdet parse`) start without importing torch.

Exit status: 0 success, 1 the job ran but failed a check, 2 bad input (with a `file:line` message).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from vlmdet.errors import UsageError

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("vlmdet.demo", "synthetic data -> Stage-1 -> Stage-2 Channel-A -> eval -> report, on a CPU"),
    "data": ("vlmdet.data.cli", "data sets: synth, coco, validate"),
    "train": ("vlmdet.train.cli", "train (Stage-1 or Stage-2) from a YAML config"),
    "eval": ("vlmdet.evaluate.cli", "rollout evaluation of a checkpoint on a data set"),
    "parse": ("vlmdet.evaluate.offline_parse", "parse health (+ metrics) of raw model answers in a JSONL file"),
    "eval-preds": ("vlmdet.evaluate.offline_preds", "COCO AP + F1 of pixel-box predictions against GT JSONL"),
    "expand-vocab": ("vlmdet.model.expand", "add the 1000 coordinate tokens to a checkpoint"),
    "doctor": ("vlmdet.model.doctor", "check a checkpoint for failure causes that need no training"),
    "report": ("vlmdet.report.cli", "compare run directories: report.md + report.html"),
    "experiment": ("vlmdet.experiment", "canned experiments: gate-ablation (docs/results/README.md)"),
}


def _top_help() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: vlmdet <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`vlmdet <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        from vlmdet import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"vlmdet: unknown command {name!r}{hint}\n\n{_top_help()}", file=sys.stderr)
        return 2
    from vlmdet.console import is_tty

    if not is_tty():  # the Hub/transformers download, load and save bars: only on a terminal
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"vlmdet {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UsageError as err:
        print(f"vlmdet {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
