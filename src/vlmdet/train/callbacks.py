"""Trainer callbacks: logging.jsonl, the console, processor files in checkpoints, rollout eval during training.

- `RunLogCallback(run)`: every Trainer log event (`on_log`: training logs with `loss/*`,
  `coord_diag/*`, `learning_rate`, ...; the end-of-training summary; eval metrics) is appended to the
  run's `logging.jsonl` via `RunDir.log`, stamped with the optimizer step, on the main process only.
- `ConsoleCallback()`: compact console lines instead of the Trainer's printed log dicts (`vlmdet.console`).
- `save_processor(loaded, folder, prompt_cfg)`: the tokenizer, the image processor and the contract
  `vlmdet.json`, written into every checkpoint by `DetTrainer._save_checkpoint` before the checkpoint
  is sealed (train/checkpoint.py), so a checkpoint loads with `model/load.load_model` and carries its prompt.
- `RolloutEvalCallback(cfg, run, loaded, records)`: rollout eval (generate -> parse -> match ->
  metrics, docs/EVALUATION.md) at every `eval.eval_steps` optimizer steps (0 = off) and at each step listed in
  `eval.steps`. At those steps it sets the Trainer's `control.should_evaluate`; the Trainer then calls
  `DetTrainer.evaluate`, which calls `RolloutEvalCallback.evaluate` on every rank. The work is done by
  `runner` (default `vlmdet.evaluate.runner.run_rollout_eval`: each rank generates its shard of the val
  records, rank 0 gathers them and computes the metrics, every rank returns them). The metrics
  (`eval_rollout/*`) are logged through `trainer.log` (TensorBoard, logging.jsonl) and returned by the
  Trainer's evaluate, so `metric_for_best_model: eval_rollout/bbox_AP50`, `load_best_model_at_end` and
  `EarlyStoppingCallback` use them.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import TrainerCallback

from vlmdet import console
from vlmdet.console import is_tty
from vlmdet.evaluate.runner import run_rollout_eval
from vlmdet.model.contract import make_contract, write_contract
from vlmdet.train.forward import unwrap


def numeric(logs: dict) -> dict[str, float]:
    """The finite-or-not numbers of a log dict as floats (non-numbers dropped; NaN/inf become None
    so the JSON line stays valid)."""
    out: dict[str, Any] = {}
    for k, v in logs.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                v = float(v)  # 0-d tensors / numpy scalars
            except (TypeError, ValueError):
                continue
        v = float(v)
        out[k] = v if math.isfinite(v) else None
    return out


class RunLogCallback(TrainerCallback):
    """Append every Trainer log to `run.log_path` (main process)."""

    def __init__(self, run):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.run.log(numeric(logs), step=int(state.global_step))


class ConsoleCallback(TrainerCallback):
    """The console during training (main process): one `console.train_line` per log window, one
    `console.eval_line` per rollout eval, a closing line with the wall time. On a terminal a tqdm bar over
    the optimizer steps, the lines written above it; otherwise plain lines only. Replaces the Trainer's
    own progress/printer callbacks (which print every log dict)."""

    def __init__(self, tty: bool | None = None):
        self.tty = is_tty() if tty is None else tty
        self.bar = None
        self._done = 0

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            dynamic_ncols=True)
            self._done = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self._done)
            self._done = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step = int(state.global_step)
        if any(k.startswith("eval_rollout/") for k in logs):
            self._print(console.eval_line(step, logs))
        elif "loss" in logs:
            self._print(console.train_line(step, state.max_steps, logs))
        elif "train_runtime" in logs:
            self._print(f"trained {step} steps in {console.fmt_seconds(float(logs['train_runtime']))}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


#: processor / chat-template files that `AutoProcessor` and serving engines read, carried over from
#: the source checkpoint into every checkpoint vlmdet writes (when the source has them).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "chat_template.json", "chat_template.jinja")


def save_processor(loaded, folder, prompt_cfg=None) -> None:
    """Write the tokenizer and image processor of `loaded` into `folder`, copy each of `PROCESSOR_FILES`
    that `folder` still lacks from the source checkpoint `loaded.path`, and with `prompt_cfg` (the run's
    `prompt` section) write the checkpoint's contract `vlmdet.json` (model/contract.py)."""
    loaded.tokenizer.save_pretrained(str(folder))
    loaded.processor.save_pretrained(str(folder))
    if loaded.path is not None:
        for name in PROCESSOR_FILES:
            src, dst = Path(loaded.path) / name, Path(folder) / name
            if src.is_file() and not dst.exists():
                shutil.copy2(src, dst)
    if prompt_cfg is not None:
        write_contract(folder, make_contract(prompt_cfg, loaded.coord_ids))


def eval_due(step: int, eval_cfg) -> bool:
    """Whether optimizer step `step` (>= 1, after the update) gets a rollout eval."""
    every = int(eval_cfg.eval_steps)
    return step > 0 and ((every > 0 and step % every == 0) or step in set(eval_cfg.steps))


class RolloutEvalCallback(TrainerCallback):
    """Rollout eval at the configured steps (module docstring)."""

    def __init__(self, cfg, run, loaded, records: Sequence[Any] | None, runner: Callable[..., dict] | None = None):
        self.cfg = cfg
        self.run = run
        self.loaded = loaded
        self.records = list(records or [])
        self.runner = runner or run_rollout_eval

    def on_step_end(self, args, state, control, **kwargs):
        """Ask the Trainer for an evaluation (`DetTrainer.evaluate`, after the step's training log) at
        exactly the due steps, on every rank (this runs after the Trainer's flow callback, which would
        add one at the last step)."""
        control.should_evaluate = bool(self.records) and eval_due(int(state.global_step), self.cfg.eval)
        return control

    def evaluate(self, model, step: int) -> dict:
        """Call the runner on this rank with the model in eval mode, under `no_grad`; returns its metrics
        (every rank gets rank 0's, see `evaluate/runner.py`). `model`: the Trainer's (possibly wrapped)
        model; generation uses `forward.unwrap(model)`."""
        net = unwrap(model if model is not None else self.loaded.model)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                # THE place where training hands over to evaluation (evaluate/runner.py owns the rest).
                return self.runner(
                    model=net, loaded=self.loaded, records=self.records, cfg=self.cfg, run_dir=self.run, step=step,
                    log=False,  # the metrics are logged once, through trainer.log (TensorBoard + logging.jsonl)
                )
        finally:
            net.train(was_training)
