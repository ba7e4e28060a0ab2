"""`vlmdet <command>`: one plain dict from command name to the module that implements it.

Each command module defines `add_arguments(parser: argparse.ArgumentParser) -> None` and
`run(args: argparse.Namespace) -> int` (the exit status). Only the chosen command's module is
imported, so light commands (`vlmdet parse`) start without importing torch.

Exit status: 0 success, 1 the job ran but failed a check, 2 bad input or an expected failure,
with one line on stderr: `vlmdet <command>: error: file[:line]: rule` or `... option: rule`, no
traceback. Expected failures: `UsageError` (bad files, flags, config values; every module raises it
with the place and the rule), an `OSError` (a path that cannot be read or written: the path and the
reason), `MemoryError`, and Ctrl-C (exit 130). `--debug` (before or after the command name) or
`VLMDET_DEBUG=1` shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from vlmdet import __version__
from vlmdet.console import is_tty
from vlmdet.errors import UsageError

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("vlmdet.demo", "synthetic data -> Stage-1 -> Stage-2 Channel-A -> eval -> report, on a CPU"),
    "data": ("vlmdet.data.cli", "data sets: synth, coco, swift, validate"),
    "train": ("vlmdet.train.cli", "train (Stage-1 or Stage-2) from a YAML config"),
    "eval": ("vlmdet.evaluate.cli", "rollout evaluation of a checkpoint on a data set"),
    "budget": ("vlmdet.evaluate.budget", "rollout.max_new_tokens that fits every answer of a data file"),
    "parse": ("vlmdet.evaluate.offline_parse", "parse health (+ metrics) of raw model answers in a JSONL file"),
    "eval-preds": ("vlmdet.evaluate.offline_preds", "COCO AP + F1 of pixel-box predictions against GT JSONL"),
    "expand-vocab": ("vlmdet.model.expand", "add the 1000 coordinate tokens to a checkpoint"),
    "doctor": ("vlmdet.model.doctor", "check a checkpoint for failure causes that need no training"),
    "report": ("vlmdet.report.cli", "compare run directories: report.md + report.html"),
    "experiment": ("vlmdet.experiment", "grids of runs x seeds with seed statistics; preset: gate-ablation"),
}


class OneLineParser(argparse.ArgumentParser):
    """`argparse` whose errors are one line (`vlmdet <command>: error: option: rule`) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


def _top_help() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: vlmdet <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`vlmdet <command> --help` for a command's options."]
    return "\n".join(lines)


def _one_line(err: BaseException) -> str:
    """The message of an expected failure, on one line."""
    if isinstance(err, OSError) and err.strerror:
        where = err.filename if err.filename is not None else ""
        return f"{where}: {err.strerror}" if where else err.strerror
    if isinstance(err, MemoryError):
        return "out of memory"
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _close_process_group() -> None:
    """End the torch.distributed process group a command started (under torchrun), so each rank stops
    its gloo/NCCL threads itself instead of leaving them to interpreter exit (which can abort a rank)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("VLMDET_DEBUG", "") not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"vlmdet: unknown command {name!r}{hint}\n\n{_top_help()}", file=sys.stderr)
        return 2

    if not is_tty():  # the Hub/transformers download, load and save bars: only on a terminal
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    module = importlib.import_module(COMMANDS[name][0])
    parser = OneLineParser(prog=f"vlmdet {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or VLMDET_DEBUG=1)")
    parse = parser.parse_intermixed_args if getattr(module, "INTERMIXED_ARGS", False) else parser.parse_args
    try:
        args = parse(argv[1:])
    except SystemExit as stop:  # --help (0) or a bad option (2, one line printed by OneLineParser)
        return int(stop.code or 0)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"vlmdet {name}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, OSError, MemoryError) as err:
        if debug:
            raise
        print(f"vlmdet {name}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        _close_process_group()


if __name__ == "__main__":
    sys.exit(main())
