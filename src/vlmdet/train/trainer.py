"""`DetTrainer`: a `transformers.Trainer` that overrides `compute_loss` and `log` only (TRL style).

Everything else (TrainingArguments, gradient accumulation, optimizer/scheduler, checkpoint/resume,
`report_to`, DDP/FSDP/DeepSpeed, `torchrun` / `accelerate launch`) is the stock Trainer. The
constructor only stores the vlmdet config and the coord token ids and sets
`loss_is_scaled_for_ga = False` (our losses are per-micro-batch means; the Trainer divides by the
number of accumulation steps).

Objectives are a plain dict `OBJECTIVES = {stage: fn}`; `fn(trainer, model, batch) -> (loss, logs)`
where `loss` is the scalar to back-propagate and `logs` a dict of floats (`loss/<term>` unweighted,
`loss/total`, `coord_diag/*`, ...). `cfg.stage` picks the entry:
- 1: `stage1_loss` (below);
- 2: `stage2_loss`, a lazy hand-off to `vlmdet.train.schedule.stage2_loss(trainer, model, batch)`
  (the Stage-2 AB channel dispatch; it may use `trainer.cfg`, `trainer.coord_ids`,
  `trainer.state.global_step`, and the helpers in `train/forward.py` and `train/objective.py`).

Checkpoints: `_save_checkpoint` wraps the stock one with `train/checkpoint.save_trainer_checkpoint`
(staged write + completion record + rename: a checkpoint-<step> folder only ever appears complete)
and adds the tokenizer and image processor (`trainer.loaded`) before the rename.

Logging: `compute_loss` adds each training micro-batch's `logs` to a `MetricWindow`; `log` (called by
the Trainer on every rank at each `logging_steps`) merges the window means, combined across ranks,
into the Trainer's own training log (`loss`, `grad_norm`, `learning_rate`, ...), from where
`report_to` (TensorBoard) and the callbacks (`logging.jsonl`) pick them up.

Stage-1 (DESIGN §2.3), one teacher-forced forward, logits gathered only at supervised rows:
- `token_ce`: full-vocabulary CE on all assistant tokens: structure (incl. `<|im_end|>`) weight 1,
  desc tokens `losses.desc_ce_weight`, coord slots 1 when `losses.ce_on_coord_slots` else 0;
- at coord slots: `coord_ce`, `soft_ce`, `w1`, `smoothl1`, `ciou` (expected boxes), `coord_gate`,
  `entropy`; at text rows (structure + desc targets): `text_gate`;
- total = `objective.combine(terms, cfg.losses)`; every term is logged (unweighted) whatever its weight.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from transformers import Trainer

from vlmdet.train.forward import gathered_logits, supervision
from vlmdet.train.objective import MetricWindow, active, combine, coord_diagnostics, coord_terms, log_terms


def stage1_terms(logits: torch.Tensor, sup, coord_ids, losses_cfg: Any, coord_rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Unweighted Stage-1 terms (scalars, keyed like `objective.TERMS`) from logits `[N, V]` at the
    supervised rows `sup` (`forward.Supervision`, same row order). `coord_rows`: `logits[sup.coord]`
    if the caller already has it."""
    from vlmdet import losses as L

    w = sup.ce_weights(losses_cfg.desc_ce_weight, losses_cfg.ce_on_coord_slots)
    with torch.set_grad_enabled(torch.is_grad_enabled() and active(losses_cfg, "token_ce")):
        terms = {"token_ce": L.token_ce(logits, sup.target_ids, w)}
    c = sup.coord
    if coord_rows is None:
        coord_rows = logits[c]
    terms.update(coord_terms(coord_rows, sup.coord_bins[c], coord_ids, losses_cfg))
    terms["text_gate"] = _text_gate(logits, ~c, coord_ids, losses_cfg)
    return terms


def _text_gate(logits: torch.Tensor, text: torch.Tensor, coord_ids, losses_cfg: Any, chunk: int = 128) -> torch.Tensor:
    """Mean text gate over the rows where `text` [N] is True. When the term is off it is only logged:
    computed under no_grad in row chunks, so it never needs more than `chunk` x V temporary floats."""
    from vlmdet import losses as L

    T = float(losses_cfg.temperature)
    if not bool(text.any()):
        return logits.sum() * 0.0
    if torch.is_grad_enabled() and active(losses_cfg, "text_gate"):
        return L.text_gate_loss(logits[text], coord_ids, T).mean()
    with torch.no_grad():
        per_row = torch.cat([L.text_gate_loss(part, coord_ids, T) for part in logits.detach().split(chunk)])
        return per_row[text].mean()


def stage1_loss(trainer: "DetTrainer", model, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-1 teacher forcing on a collated batch: `(total, logs)` (module docstring)."""
    lc = trainer.cfg.losses
    sup = supervision(batch)
    logits = gathered_logits(model, batch, sup.rows)
    c = sup.coord
    coord_rows = logits[c]
    terms = stage1_terms(logits, sup, trainer.coord_ids, lc, coord_rows)
    total = combine(terms, lc)
    logs = log_terms(terms, total)
    logs.update(coord_diagnostics(coord_rows, sup.coord_bins[c], trainer.coord_ids, float(lc.temperature)))
    return total, logs


def stage2_loss(trainer: "DetTrainer", model, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-2 AB: lazily hands off to `vlmdet.train.schedule.stage2_loss` (same signature)."""
    from vlmdet.train import schedule

    return schedule.stage2_loss(trainer, model, batch)


#: stage -> objective(trainer, model, batch) -> (loss, logs)
OBJECTIVES: dict[int, Callable[..., tuple[torch.Tensor, dict[str, float]]]] = {1: stage1_loss, 2: stage2_loss}


class DetTrainer(Trainer):
    """`Trainer` with the vlmdet objectives (module docstring).

    Extra keyword arguments: `vlm_cfg` (the `vlmdet.config.Config`) and `coord_ids` (1000 ids, bin order).
    """

    loss_is_scaled_for_ga = False
    _staging: str | None = None  # set by checkpoint.save_trainer_checkpoint while a save runs
    loaded = None  # model/load.Loaded: its tokenizer + image processor go into every checkpoint

    def __init__(self, *args, vlm_cfg, coord_ids, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = vlm_cfg
        self.coord_ids = [int(i) for i in coord_ids]
        self.metric_window = MetricWindow()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, logs = OBJECTIVES[self.cfg.stage](self, model, inputs)
        if model.training:
            self.metric_window.add(logs)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _get_output_dir(self, trial) -> str:
        return self._staging if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        from vlmdet.train.callbacks import save_processor
        from vlmdet.train.checkpoint import save_trainer_checkpoint

        extra = (lambda folder: save_processor(self.loaded, folder)) if self.loaded is not None else None
        save_trainer_checkpoint(self, super()._save_checkpoint, model, trial, extra)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (eval logs carry eval_* keys, the end-of-train summary train_*)
            logs = {**logs, **self.metric_window.pop()}
        super().log(logs, start_time)
