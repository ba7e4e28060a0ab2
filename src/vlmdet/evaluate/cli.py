"""`vlmdet eval CONFIG --checkpoint DIR [--data VAL.jsonl] [--out DIR] [--max-samples N] [--step N]
[--constrained] [key=value ...]`: rollout evaluation of a checkpoint (see docs/EVALUATION.md).

- CONFIG is a training/eval YAML (`config.load_config`); `key=value` overrides any field
  (e.g. `rollout.max_new_tokens=512 eval.score_source=constant`).
- `--checkpoint`: a checkpoint folder (HF format with tokenizer + preprocessor files) or `tiny`;
  default: `model.name_or_path` of the config. A checkpoint without the 1000 coordinate tokens is
  refused with a UsageError that names `vlmdet expand-vocab`.
- `--data`: the JSONL to evaluate on (default `data.val` of the config); `--max-samples` caps it
  (default `eval.max_samples`; 0 = all).
- `--constrained`: also run grammar-constrained decoding and report `eval_rollout_constrained/*` next to
  `eval_rollout/*` (sets `eval.also_constrained`); to evaluate constrained decoding only, override
  `rollout.constrained=true` instead.
- `--out`: the output folder (default `<output_dir>/<run_name>-eval`), laid out like a run folder so that
  `vlmdet report` reads it: `eval/step_XXXXXX/{metrics.json,predictions.jsonl}`,
  `monitor_dumps/step_XXXXXX.json` (+ PNGs), `logging.jsonl`. `--step` names the step (default: N of a
  `checkpoint-N` folder, else 0).
- The checkpoint's `vlmdet.json` (model/contract.py) sets the prompt, field order, ordering and answer
  format wherever CONFIG does not set them; an explicit setting that differs is an error naming both
  values unless `--override-prompt` is given.
- `--format qwen3|qwen25` (= `prompt.answer_format`): score a stock model's own grounding answers
  (digits, `answer_format.py`) with its stock prompt; the checkpoint needs no coordinate tokens, boxes
  are unscored (`score_source: constant`) and the output folder reads in `vlmdet report` next to a
  fine-tuned run.
Prints the metrics as a table. Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from vlmdet.config import load_config
from vlmdet.console import is_count
from vlmdet.data.records import load_records
from vlmdet.errors import UsageError
from vlmdet.evaluate.budget import rollout_budget_note
from vlmdet.options import bounded
from vlmdet.rundir import RunDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML config (training config of the checkpoint, or an eval config)")
    parser.add_argument("overrides", nargs="*", default=[], help="config overrides key.sub=value")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder or 'tiny' (default: model.name_or_path)")
    parser.add_argument("--data", type=Path, default=None, help="JSONL to evaluate on (default: data.val)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <output_dir>/<run_name>-eval)")
    parser.add_argument("--max-samples", type=bounded(int, lambda v: v >= 0, ">= 0"), default=None, help="evaluate the first N records (0 = all)")
    parser.add_argument("--step", type=bounded(int, lambda v: v >= 0, ">= 0"), default=None, help="step number for the output names")
    parser.add_argument("--constrained", action="store_true",
                        help="also run grammar-constrained decoding (eval_rollout_constrained/*)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--format", dest="answer_format", default=None, choices=("coordjson", "qwen3", "qwen25"),
                        help="answer format the model writes (sets prompt.answer_format; default: the checkpoint's "
                             "vlmdet.json, else coordjson); qwen3 / qwen25 evaluate a stock model with its own prompt "
                             "and need no coordinate tokens")
    parser.add_argument("--override-prompt", action="store_true",
                        help="let explicit prompt settings differ from the checkpoint's vlmdet.json")
    # `key=value` overrides may follow the options (`vlmdet eval CFG --checkpoint X a.b=1`): plain
    # parse_args would stop at the first positional group, intermixed parsing collects them all
    parser.parse_args = parser.parse_intermixed_args


def checkpoint_step(path: str) -> int:
    """N of a `checkpoint-N` folder name, else 0."""
    m = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    return int(m.group(1)) if m else 0


def metrics_table(metrics: dict[str, float], title: str = "") -> str:
    """Name / value lines: counts (`console.is_count`) as integers, other values with 4 decimals."""
    width = max((len(k) for k in metrics), default=0)
    lines = [title] if title else []
    for k, v in metrics.items():
        count = is_count(k) and float(v).is_integer()
        lines.append(f"  {k:<{width}}  {int(v) if count else f'{v:.4f}'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from vlmdet.evaluate.runner import run_rollout_eval
    from vlmdet.model.contract import apply_contract
    from vlmdet.model.load import find_coord_ids, load_model

    overrides = list(args.overrides)
    if args.answer_format is not None:
        overrides.append(f"prompt.answer_format={args.answer_format}")
    cfg = load_config(args.config, overrides)
    if args.max_samples is not None:  # >= 0: checked by the option's type
        cfg.eval.max_samples = args.max_samples
    if args.constrained:
        cfg.eval.also_constrained = True
    data = args.data if args.data is not None else cfg.data.val
    if data is None:
        raise UsageError("no data to evaluate: pass --data VAL.jsonl or set data.val in the config")
    checkpoint = args.checkpoint if args.checkpoint is not None else cfg.model.name_or_path
    out = args.out if args.out is not None else Path(cfg.output_dir) / f"{cfg.run_name}-eval"
    step = args.step if args.step is not None else checkpoint_step(checkpoint)

    records = load_records(data, check_images=cfg.data.check_images)
    if not records:
        raise UsageError(f"{data}: no records")
    loaded = load_model(checkpoint, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                        coord_tokens=False)  # checked below, once the answer format is known
    for note in apply_contract(cfg, loaded.contract, checkpoint, args.override_prompt):
        print(note, file=sys.stderr)
    if cfg.prompt.answer_format == "coordjson" and not loaded.coord_ids:
        find_coord_ids(loaded.tokenizer)  # the UsageError that names `vlmdet expand-vocab`
    if cfg.prompt.answer_format != "coordjson" and (cfg.eval.also_constrained or cfg.rollout.constrained):
        raise UsageError(f"--constrained: the grammar constraint is for coordjson answers, not {cfg.prompt.answer_format}")
    note = rollout_budget_note(records[: cfg.eval.max_samples] if cfg.eval.max_samples else records, loaded, cfg)
    if note:
        print(f"vlmdet eval: warning: {note}", file=sys.stderr, flush=True)
    run_dir = RunDir(out)
    metrics = run_rollout_eval(loaded, records, cfg, run_dir=run_dir, step=step, progress=not args.no_progress)
    n = len(records) if not cfg.eval.max_samples else min(len(records), cfg.eval.max_samples)
    print(metrics_table(metrics, f"vlmdet eval: {checkpoint} on {data} ({n} images, step {step})"))
    print(f"\nwrote {run_dir.eval_dir(step)}" + (f" and {run_dir.dump_path(step)}" if cfg.monitor.enabled else ""))
    return 0
