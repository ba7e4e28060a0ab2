"""`DetTrainer`: a `transformers.Trainer` that overrides `compute_loss`, `log` and `evaluate` (TRL style).

Everything else (TrainingArguments, gradient accumulation, optimizer/scheduler, checkpoint/resume,
`report_to`, DDP/FSDP/DeepSpeed, `torchrun` / `accelerate launch`) is the stock Trainer. The
constructor receives what the objectives need, the vlmdet config, the loaded model bundle
(`model.load.Loaded`: tokenizer, image processor, coord token ids) and the training records, and sets
`loss_is_scaled_for_ga = False` (our losses are per-micro-batch means; the Trainer divides by the
number of accumulation steps).

Objectives are a plain dict `OBJECTIVES = {stage: fn}`; `fn(trainer, model, batch) -> (loss, logs)`
where `loss` is the scalar to back-propagate and `logs` a dict of floats (`loss/<term>` unweighted,
`loss/total`, `coord_diag/*`, ...). `cfg.stage` picks the entry:
- 1: `stage1_loss`: Channel-A with N = 1 (`channel_a.channel_a_loss` without `softctx`): one
  teacher-forced forward, logits gathered only at supervised rows, every term of `objective.LOSSES`;
- 2: `stage2_loss`: per optimizer step Channel-A or Channel-B, `schedule.channel(global_step,
  stage2.b_ratio)`: every micro-batch of one gradient-accumulation window runs the same channel, and a
  resumed run replays the same sequence. Channel-A (`channel_a.channel_a_loss` with `cfg.stage2`) trains
  on the collated GT batch; Channel-B (`channel_b.channel_b_loss`) looks the batch's records up by
  `image_id`, generates with the unwrapped model and runs one teacher-forced forward through the
  (possibly DDP-wrapped) `model`. Logs add `stage2/channel_a`, `stage2/channel_b` (0/1 per step) and
  `stage2_ab/b_ratio_realized`; Channel-B's `rollout/*` telemetry is added to the metric window with
  weights (predictions for precision, GT objects for recall, ...), so the logged window value,
  combined across ranks, is the exact global ratio.

Checkpoints: `_save_checkpoint` wraps the stock one with `train/checkpoint.save_trainer_checkpoint`
(staged write + completion record + rename: a checkpoint-<step> folder only ever appears complete)
and adds the tokenizer and image processor (`trainer.loaded`) before the rename.

Evaluation: `evaluate` runs the rollout eval (`rollout_eval(model, step)`, train/callbacks.py) on every
rank instead of a loss eval and returns its metrics, so `metric_for_best_model: eval_rollout/bbox_AP50`,
`load_best_model_at_end` and `EarlyStoppingCallback` work on them.

Logging: `compute_loss` adds each training micro-batch's `logs` to a `MetricWindow`; `log` (called by
the Trainer on every rank at each `logging_steps`) merges the window means, combined across ranks,
into the Trainer's own training log (`loss`, `grad_norm`, `learning_rate`, ...), from where
`report_to` (TensorBoard) and the callbacks (`logging.jsonl`) pick them up.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from transformers import Trainer

from vlmdet.config import Config
from vlmdet.errors import UsageError
from vlmdet.train.channel_a import channel_a_loss
from vlmdet.train.callbacks import save_processor
from vlmdet.train.channel_b import channel_b_loss
from vlmdet.train.checkpoint import save_trainer_checkpoint
from vlmdet.train.forward import unwrap
from vlmdet.train.schedule import is_channel_b, schedule_metrics


class MetricWindow:
    """Running sums of float metrics between two `log` calls, averaged per key over the calls that
    reported it, and combined across ranks (sum of sums / sum of counts) when torch.distributed is
    initialized. `pop()` must then run on every rank (as `Trainer.log` does)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, metrics: Mapping[str, float], weight: float = 1.0) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
            self.counts[k] = self.counts.get(k, 0.0) + weight

    def pop(self) -> dict[str, float]:
        """Window means (all ranks combined), then reset."""
        sums, counts = self.sums, self.counts
        self.sums, self.counts = {}, {}
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (sums, counts))
            sums, counts = {}, {}
            for s, c in gathered:
                for k in s:
                    sums[k] = sums.get(k, 0.0) + s[k]
                    counts[k] = counts.get(k, 0.0) + c[k]
        return {k: sums[k] / counts[k] for k in sorted(sums) if counts[k] > 0}


def stage1_loss(trainer: "DetTrainer", model, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-1 teacher forcing on a collated batch: Channel-A with N = 1 (module docstring)."""
    return channel_a_loss(model, batch, trainer.cfg.losses, trainer.coord_ids)


def stage2_loss(trainer: "DetTrainer", model, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """One Stage-2 AB micro-batch (module docstring): `(loss, logs)`."""
    cfg = trainer.cfg
    step = int(trainer.state.global_step)
    if is_channel_b(step, cfg.stage2.b_ratio):
        ids = batch.get("image_id")
        if ids is None:
            raise UsageError("Channel-B needs `image_id` in the training batch (train/dataset.DetDataset provides it)")
        records = [trainer.records_by_id[i] for i in ids]
        trainer.loaded.model = unwrap(model)  # generate with the module that is being trained
        loss, logs, weighted = channel_b_loss(model, trainer.loaded, records, cfg, step)
        if model.training:
            for metrics, weight in weighted:
                trainer.metric_window.add(metrics, weight)
    else:
        loss, logs = channel_a_loss(model, batch, cfg.losses, trainer.coord_ids, cfg.stage2)
    logs.update(schedule_metrics(step, cfg.stage2.b_ratio))
    return loss, logs


#: stage -> objective(trainer, model, batch) -> (loss, logs)
OBJECTIVES: dict[int, Callable[..., tuple[torch.Tensor, dict[str, float]]]] = {1: stage1_loss, 2: stage2_loss}


class DetTrainer(Trainer):
    """`Trainer` with the vlmdet objectives (module docstring).

    Extra keyword arguments: `vlm_cfg` (the `vlmdet.config.Config`), `loaded` (the `model.load.Loaded`
    whose `.model` is trained), `records` (the training `data.records.Record`s, looked up by
    `image_id` for Channel-B) and `rollout_eval(model, step) -> metrics` (what `evaluate` runs)."""

    loss_is_scaled_for_ga = False
    _staging: str | None = None  # set by checkpoint.save_trainer_checkpoint while a save runs

    def __init__(self, *args, vlm_cfg: Config, loaded, records: Sequence[Any],
                 rollout_eval: Callable[[Any, int], dict[str, float]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rollout_eval = rollout_eval
        self.cfg = vlm_cfg
        self.loaded = loaded
        self.coord_ids = [int(i) for i in loaded.coord_ids]
        self.records_by_id = {r.image_id: r for r in records}
        self.metric_window = MetricWindow()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, logs = OBJECTIVES[self.cfg.stage](self, model, inputs)
        if model.training:
            self.metric_window.add(logs)
        return (loss, {"loss": loss}) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The rollout eval instead of the stock loss eval: `rollout_eval(model, global_step)` on every
        rank (train/callbacks.RolloutEvalCallback.evaluate); its metrics (`eval_rollout/*`,
        `eval_time/*`) are logged and passed to the callbacks' `on_evaluate`, and returned, so the
        Trainer's `metric_for_best_model` (e.g. `eval_rollout/bbox_AP50`: the key as written, it
        already starts with `eval_`) picks the best checkpoint and `EarlyStoppingCallback` sees them."""
        if self.rollout_eval is None:
            return {}
        metrics = dict(self.rollout_eval(self.model_wrapped, int(self.state.global_step)))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _get_output_dir(self, trial) -> str:
        return self._staging if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        extra = (lambda folder: save_processor(self.loaded, folder, self.cfg.prompt)) if self.loaded is not None else None
        save_trainer_checkpoint(self, super()._save_checkpoint, model, trial, extra)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (eval logs carry eval_* keys, the end-of-train summary train_*)
            logs = {**logs, **self.metric_window.pop()}
        super().log(logs, start_time)
