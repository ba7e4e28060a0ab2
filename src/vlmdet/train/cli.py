"""`vlmdet train CONFIG [key.sub=value ...] [--resume [CHECKPOINT]] [--overwrite]` (options after the overrides)

Loads the config (`config.load_config`, overrides applied in order), makes the run directory
(`RunDir.create`: config.yaml + run.json), loads the model (`model/load.load_model`), builds the
training set from `data.train` (and the rollout-eval set from `data.val`), and trains with
`DetTrainer` (`cfg.stage` picks the objective). It prints a start banner (run dir, resolved config, seed,
device, the TensorBoard command), then one line per log window and per rollout eval (`vlmdet.console`).
TensorBoard events go to `<run>/tb` (names: `train/tracking.py`), every log event in full
to `<run>/logging.jsonl`, HF checkpoints (safetensors + tokenizer + image processor) to
`<run>/checkpoint-<step>`, and the final model to `<run>/checkpoint-final`. Ends with a summary.

`--resume` continues the run in `<output_dir>/<run_name>` from its latest checkpoint (or from the
CHECKPOINT folder given) with the same global step, optimizer, LR schedule and data order.
Multi-GPU: launch the same command with `torchrun --nproc-per-node N -m vlmdet.cli train ...` or
`accelerate launch`; DeepSpeed / FSDP via `training.deepspeed` / `training.fsdp` in the config.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vlmdet.errors import UsageError

FINAL_CHECKPOINT = "checkpoint-final"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/stage1/, configs/stage2/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, applied in order")
    parser.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
        help="continue the run from its latest checkpoint-* (or from CHECKPOINT)",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder with checkpoints")


def _resume_target(run, resume) -> str | None:
    if resume is None:
        return None
    if resume is True:
        ckpts = run.checkpoints()
        if not ckpts:
            raise UsageError(f"--resume: {run.root} has no checkpoint-* folder to resume from")
        return str(ckpts[-1])
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise UsageError(f"--resume {resume}: not a Trainer checkpoint folder (no trainer_state.json)")
    return str(path)


def _records(path, max_n, check_images):
    from vlmdet.data.records import load_records

    recs = load_records(path, check_images=check_images)
    return recs[:max_n] if max_n is not None else recs


def build_trainer(cfg, run, loaded=None):
    """The `DetTrainer` for `cfg` writing into `run` (model loaded unless `loaded` is given);
    returns `(trainer, loaded)`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from vlmdet.config import training_arguments
    from vlmdet.model.load import load_model
    from vlmdet.train import tracking
    from vlmdet.train.callbacks import ConsoleCallback, RolloutEvalCallback, RunLogCallback, SaveProcessorCallback
    from vlmdet.train.dataset import DetDataset, make_collator
    from vlmdet.train.trainer import OBJECTIVES, DetTrainer

    if cfg.stage not in OBJECTIVES:
        raise UsageError(f"stage: {cfg.stage!r} is not one of {sorted(OBJECTIVES)}")
    if not cfg.data.train:
        raise UsageError("data.train is not set: give a JSONL file in the config or as data.train=PATH")
    train = _records(cfg.data.train, cfg.data.max_train_samples, cfg.data.check_images)
    if not train:
        raise UsageError(f"data.train {cfg.data.train}: no records")
    val = _records(cfg.data.val, cfg.data.max_val_samples, cfg.data.check_images) if cfg.data.val else []
    if loaded is None:
        loaded = load_model(cfg.model.name_or_path, cfg.model.dtype, cfg.model.attn_implementation)
    if cfg.model.freeze_vision:
        visual = getattr(getattr(loaded.model, "model", loaded.model), "visual", None)
        if visual is None:
            raise UsageError("model.freeze_vision: this model has no `visual` tower")
        visual.requires_grad_(False)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.tb_dir)  # transformers 5 reads the TB folder from here
    targs = training_arguments(cfg, run.root)
    eval_cb = RolloutEvalCallback(cfg, run, loaded, val[: cfg.eval.max_samples] if cfg.eval.max_samples else val)
    trainer = DetTrainer(
        model=loaded.model,
        args=targs,
        train_dataset=DetDataset(train, loaded, cfg.prompt, seed=cfg.seed),
        data_collator=make_collator(loaded),
        processing_class=loaded.tokenizer,
        callbacks=[RunLogCallback(run), SaveProcessorCallback(loaded), eval_cb],
        vlm_cfg=cfg,
        loaded=loaded,
        records=train,
    )
    eval_cb.trainer = trainer
    for printer in (ProgressCallback, PrinterCallback):  # they print every raw log dict
        trainer.remove_callback(printer)
    trainer.add_callback(ConsoleCallback())
    tracking.install(trainer, run)
    return trainer, loaded


def device_text(targs) -> str:
    """`cpu (2 threads)`, `cuda:0 (NVIDIA H200) x 8 processes`, ... for the banner."""
    import torch

    dev = targs.device
    if dev.type == "cuda":
        text = f"{dev} ({torch.cuda.get_device_name(dev)})"
    elif dev.type == "cpu":
        n = torch.get_num_threads()
        text = f"cpu ({n} thread{'s' if n != 1 else ''})"
    else:
        text = str(dev)
    return text + (f" x {targs.world_size} processes" if targs.world_size > 1 else "")


def start_banner(cfg, run, targs) -> str:
    """The lines printed when training starts (`console.banner`)."""
    from vlmdet.console import banner, tensorboard_command

    tb = tensorboard_command(run.tb_dir) if "tensorboard" in (cfg.training.report_to or []) \
        else "off (add tensorboard to training.report_to)"
    return banner(f"vlmdet train: {cfg.run_name} (stage {cfg.stage}, {cfg.training.max_steps} steps)", [
        ("run dir", str(run.root.resolve())),
        ("config", f"{run.config_path.resolve()} (resolved)"),
        ("seed", str(cfg.seed)),
        ("device", device_text(targs)),
        ("TensorBoard", tb),
        ("log", f"{run.log_path.resolve()} (every log event, in full)"),
    ])


def train(cfg, argv, resume=None, overwrite=False, loaded=None) -> dict:
    """Run training; returns a summary dict (also printed by `run`)."""
    from vlmdet.config import config_notes
    from vlmdet.rundir import RunDir
    from vlmdet.train.callbacks import save_processor

    run = RunDir(Path(cfg.output_dir) / cfg.run_name)
    target = _resume_target(run, resume) if resume is not None else None
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 creates/cleans the run dir
        run = RunDir.create(cfg, argv, resume=resume is not None, overwrite=overwrite)
        for note in config_notes(cfg):
            print(f"vlmdet train: warning: {note}", file=sys.stderr, flush=True)
    trainer, loaded = build_trainer(cfg, run, loaded)
    if trainer.is_world_process_zero():
        print(start_banner(cfg, run, trainer.args), flush=True)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=target)
    final = run.root / FINAL_CHECKPOINT
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        save_processor(loaded, final)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "run_dir": str(run.root),
        "global_step": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "first_logged_loss": history[0]["loss"] if history else None,
        "last_logged_loss": history[-1]["loss"] if history else None,
        "final_checkpoint": str(final),
        "seconds": round(time.time() - t0, 1),
        "resumed_from": target,
    }


def run(args: argparse.Namespace) -> int:
    from vlmdet.config import load_config

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, list(sys.argv), resume=args.resume, overwrite=args.overwrite)
    width = max(len(k) for k in summary)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
    return 0
