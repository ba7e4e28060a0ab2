"""Experiment trackers (`training.report_to`: TensorBoard, W&B): metric names and monitor images.

Names, one rule for every tracker: a name that contains `/` is logged exactly as it is written in
`logging.jsonl` (`eval_rollout/bbox_AP50`, `eval_time/total_s`, `loss/token_ce`,
`coord_diag/coord_vocab_mass_mean`); a bare Trainer name gets `train/` (`train/loss`, `train/grad_norm`,
`train/learning_rate`, `train/epoch`). (The stock transformers callbacks rename `eval_*` to `eval/*`,
which would turn `eval_rollout/bbox_AP50` into `eval/rollout/bbox_AP50`.)

Images: when a log carries rollout-eval metrics (`eval_rollout/*`) and the run has a monitor dump for that
step with drawn PNGs, each PNG is logged too: TensorBoard `add_image("monitor/<k>_<image_id>", HWC uint8,
step)`; W&B one `monitor/examples` list of `wandb.Image` (caption = image id) when a W&B run is active.

Resume: a resumed run's TensorBoard writer starts with `purge_step` = the checkpoint's step + 1, so
TensorBoard discards the events that the killed run wrote after that checkpoint (they are logged
again), as `logging.jsonl` is truncated back to the checkpoint's step: every step appears once.

`install(trainer, run)` swaps the Trainer's stock TensorBoard / W&B callbacks (added by `report_to`) for
the subclasses below, which change `on_log` only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers.integrations import TensorBoardCallback, WandbCallback

EVAL_PREFIX = "eval_rollout/"


def tracker_name(key: str) -> str:
    """The tracker name of a logged key (module docstring): `loss/token_ce` -> itself, `loss` -> `train/loss`."""
    return key if "/" in key else f"train/{key}"


def tracker_scalars(logs: dict) -> dict[str, float]:
    """The numeric entries of a Trainer log under their tracker names (bools and strings left out)."""
    return {tracker_name(k): float(v) for k, v in logs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def monitor_pngs(run, step: int) -> list[tuple[str, Path, str]]:
    """`(tag, png path, image_id)` for each drawn sample of the monitor dump at `step` (empty when none)."""
    path = Path(run.dump_path(step))
    try:
        dump = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    out = []
    for k, s in enumerate(dump.get("samples") or []):
        png = s.get("png") if isinstance(s, dict) else None
        if png and Path(png).is_file():
            image_id = str(s.get("image_id", k))
            out.append((f"monitor/{k}_{re.sub(r'[^A-Za-z0-9_.-]', '_', image_id)}", Path(png), image_id))
    return out


def _is_eval(logs: dict) -> bool:
    return any(k.startswith(EVAL_PREFIX) for k in logs)


class TensorBoardTracker(TensorBoardCallback):
    """TensorBoard with the vlmdet names and the monitor images (module docstring)."""

    def __init__(self, run, tb_writer=None):
        super().__init__(tb_writer)
        self.run = run
        self.purge_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        # the Trainer has loaded the checkpoint's state by now: global_step > 0 means a resumed run
        if state.global_step and self.tb_writer is None:
            self.purge_step = int(state.global_step) + 1
        super().on_train_begin(args, state, control, **kwargs)

    def _init_summary_writer(self, args):
        if self._SummaryWriter is not None:
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.tb_writer is None:
            self._init_summary_writer(args)
        if self.tb_writer is None:
            return
        step = int(state.global_step)
        for k, v in tracker_scalars(logs).items():
            self.tb_writer.add_scalar(k, v, step)
        if _is_eval(logs):
            import numpy as np
            from PIL import Image

            for tag, png, _ in monitor_pngs(self.run, step):
                with Image.open(png) as im:
                    self.tb_writer.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.tb_writer.flush()


class WandbTracker(WandbCallback):
    """W&B with the vlmdet names and the monitor images (module docstring)."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if self._wandb is None:
            return
        if not self._initialized:
            self.setup(args, state, model)
        if not state.is_world_process_zero or not logs:
            return
        step = int(state.global_step)
        row: dict = {**tracker_scalars(logs), "train/global_step": step}
        if _is_eval(logs):
            images = [self._wandb.Image(str(png), caption=image_id) for _, png, image_id in monitor_pngs(self.run, step)]
            if images:
                row["monitor/examples"] = images
        self._wandb.log(row)


def install(trainer, run) -> None:
    """Replace the stock TensorBoard / W&B callbacks of `trainer` (present when `report_to` names them)."""
    for stock, ours in ((TensorBoardCallback, lambda: TensorBoardTracker(run)), (WandbCallback, lambda: WandbTracker(run))):
        if any(type(cb) is stock for cb in trainer.callback_handler.callbacks):
            trainer.remove_callback(stock)
            trainer.add_callback(ours())


def log_eval_to_tensorboard(run, step: int, metrics: dict) -> None:
    """Write one rollout eval made outside a Trainer (e.g. `vlmdet demo`'s eval of the starting checkpoint)
    into the run's TensorBoard folder, named and with images as during training."""
    from types import SimpleNamespace

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run.tb_dir))
    try:
        state = SimpleNamespace(is_world_process_zero=True, global_step=int(step))
        TensorBoardTracker(run, writer).on_log(None, state, None, logs=dict(metrics))
    finally:
        writer.close()
