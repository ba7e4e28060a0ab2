"""Stage-2 AB objective: per optimizer step, Channel-A or Channel-B (DESIGN §2.4-§2.6).

`stage2_loss(trainer, model, batch) -> (loss, logs)` is the `OBJECTIVES[2]` entry of
`train/trainer.py` (reached through `schedule.stage2_loss`). The channel of a micro-batch is
`schedule.channel(trainer.state.global_step, cfg.stage2.b_ratio)`: every micro-batch of one gradient
accumulation window runs the same channel, and a resumed run replays the same sequence.

- Channel-A (`channel_a.channel_a_loss`) trains on the collated GT batch as it comes.
- Channel-B (`channel_b.channel_b_loss`) looks the batch's records up by `image_id` in
  `trainer.train_dataset.records`, generates with the unwrapped model (`forward.unwrap`), rebuilds the
  targets and runs one teacher-forced forward through the (possibly DDP-wrapped) `model`.

Logs: the channel's `loss/*` (and `coord_diag/*` on A steps) plus `stage2/channel_a`,
`stage2/channel_b` (0/1 per step; window mean = fraction of steps) and `stage2_ab/b_ratio_realized`.
Channel-B's `rollout/*` telemetry is added to `trainer.metric_window` with weights (predictions for
precision, GT objects for recall, 2TP+FP+FN for F1, rollouts for per-rollout rates and lengths), so the
logged window value, combined across ranks by `MetricWindow.pop`, is the exact global ratio.
"""

from __future__ import annotations

from typing import Any, Mapping

from vlmdet.errors import UsageError
from vlmdet.train.schedule import is_channel_b, schedule_metrics


def find_loaded(trainer, model):
    """The `model.load.Loaded` of the run, with `.model` the unwrapped training model.

    Looks for `trainer.loaded` (the train CLI sets it), then for a callback holding `.loaded`
    (`RolloutEvalCallback(..., loaded, ...)`)."""
    from vlmdet.train.forward import unwrap

    loaded = getattr(trainer, "loaded", None)
    if loaded is None:
        for cb in getattr(getattr(trainer, "callback_handler", None), "callbacks", []):
            if getattr(cb, "loaded", None) is not None:
                loaded = cb.loaded
                break
    if loaded is None:
        raise UsageError("Channel-B needs the tokenizer and image processor: set `trainer.loaded` (a model.load.Loaded)")
    loaded.model = unwrap(model)
    return loaded


def batch_records(trainer, batch: Mapping[str, Any]) -> list:
    """The `data.records.Record` of each sample of `batch` (by `image_id`), from the training set."""
    index = getattr(trainer, "_vlmdet_records_by_id", None)
    if index is None:
        ds = trainer.train_dataset
        index = {r.image_id: r for r in getattr(ds, "records", [])}
        trainer._vlmdet_records_by_id = index
    ids = batch.get("image_id")
    if ids is None:
        raise UsageError("Channel-B needs `image_id` in the training batch (train/dataset.DetDataset provides it)")
    return [index[i] for i in ids]


def stage2_loss(trainer, model, batch: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
    """One Stage-2 micro-batch (module docstring): `(loss, logs)`."""
    from vlmdet.train.channel_a import channel_a_loss
    from vlmdet.train.channel_b import channel_b_loss

    cfg = trainer.cfg
    step = int(trainer.state.global_step)
    r = float(cfg.stage2.b_ratio)
    if is_channel_b(step, r):
        records = batch_records(trainer, batch)
        loss, logs, weighted = channel_b_loss(model, find_loaded(trainer, model), records, cfg, step)
        window = getattr(trainer, "metric_window", None)
        if window is not None and model.training:
            for metrics, weight in weighted:
                window.add(metrics, weight)
    else:
        loss, logs = channel_a_loss(model, batch, cfg, trainer.coord_ids)
    logs.update(schedule_metrics(step, r))
    return loss, logs
