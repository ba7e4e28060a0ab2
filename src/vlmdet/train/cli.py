"""`vlmdet train CONFIG [key.sub=value ...] [--resume | --resume-from CHECKPOINT] [--overwrite]`

Options and overrides may come in any order. Loads the config (`config.load_config`, overrides
applied in order), then checks everything before writing anything: the output location, the run
folder's reuse policy (`RunDir.check_reuse`), the checkpoint to resume from, the data, the model,
the TrainingArguments and the Trainer (optional packages such as a `report_to` integration
included). Then it locks the run folder (`RunLock`: one writer), writes config.yaml + run.json
(`RunDir.create`), and trains with `DetTrainer` (`cfg.stage` picks the objective). It prints a start banner (run dir, resolved config,
seed, device, the TensorBoard command), then one line per log window and per rollout eval
(`vlmdet.console`). TensorBoard events go to `<run>/tb` (names: `train/tracking.py`), every log event
in full to `<run>/logging.jsonl`, crash-safe HF checkpoints (safetensors + tokenizer + image processor
+ the contract `vlmdet.json`, `train/checkpoint.py`) to `<run>/checkpoint-<step>`, and the final model
to `<run>/checkpoint-final`. Ends with a summary.

Training from a checkpoint with a `vlmdet.json` takes its prompt, field order and ordering wherever the
config does not set them; an explicit setting that differs is an error naming both values unless
`--override-prompt` is given.

`--resume` continues the run in `<output_dir>/<run_name>` from its newest complete checkpoint (each
newer incomplete one is named with the reason it is skipped); `--resume-from CHECKPOINT` from that
folder. Same global step, optimizer, LR schedule and data order; logging.jsonl is cut back to the
checkpoint's step, so no step is logged twice. A run that already reached `training.max_steps`
refuses to train further unless `training.max_steps` is raised.
Multi-GPU: launch the same command with `torchrun --nproc-per-node N -m vlmdet.cli train ...` or
`accelerate launch`; DeepSpeed / FSDP via `training.deepspeed` / `training.fsdp` in the config.
Rank 0 alone takes the run's lock, writes and cleans the run folder and picks the checkpoint to
resume from; the other ranks take that choice from it (a broadcast) once it is done.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from vlmdet.config import check_checkpointing, check_training_precision, config_notes, load_config, training_arguments
from vlmdet.console import banner, tensorboard_command
from vlmdet.data.records import load_records
from vlmdet.errors import UsageError
from vlmdet.evaluate.budget import rollout_budget_note
from vlmdet.model.lora import apply_lora, is_lora, save_final
from vlmdet.rundir import RunDir, RunLock, check_run_name
from vlmdet.train.checkpoint import checkpoint_problem, clear_staging, newest_complete, trainer_step, write_staged

FINAL_CHECKPOINT = "checkpoint-final"
#: `vlmdet.cli` parses this command's arguments with `parse_intermixed_args` (overrides and options
#: in any order)
INTERMIXED_ARGS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/stage1/, configs/stage2/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, applied in order")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its newest complete checkpoint-<step>")
    parser.add_argument("--resume-from", default=None, metavar="CHECKPOINT",
                        help="continue the run from this checkpoint folder")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder with checkpoints")
    parser.add_argument("--override-prompt", action="store_true",
                        help="let explicit prompt settings differ from the checkpoint's vlmdet.json")


def resume_target(run, resume, max_steps: int) -> tuple[str | None, list[str]]:
    """(checkpoint folder to resume from or None, notes on skipped checkpoints). `resume`: None (a
    fresh run), True (the newest complete checkpoint) or a path. Raises `UsageError` when there is
    nothing complete to resume from or the run already reached `max_steps`."""
    if resume is None:
        return None, []
    notes = []
    if resume is True:
        folder, skipped = newest_complete(run.root)
        notes = [f"skipping {p.name}: {why}" for p, why in skipped]
        if folder is None:
            what = f" ({'; '.join(notes)})" if notes else ""
            raise UsageError(f"--resume: {run.root} has no complete checkpoint-<step> to resume from{what}")
        option = "--resume"
    else:
        folder, option = Path(resume), "--resume-from"
        problem = checkpoint_problem(folder)
        if problem is not None:
            raise UsageError(f"{option} {resume}: not a complete checkpoint: {problem}")
    step = trainer_step(folder)
    if step is None:
        raise UsageError(f"{option} {folder}: trainer_state.json has no global_step")
    final = run.root / FINAL_CHECKPOINT
    done = trainer_step(final)  # None when there is no (new-style) final checkpoint
    reached = max(step, done or 0)
    if reached >= max_steps:
        raise UsageError(f"{option}: the run already reached step {reached} (training.max_steps={max_steps}); "
                         "raise training.max_steps to train further")
    return str(folder), notes


def _records(path, max_n, check_images):
    recs = load_records(path, check_images=check_images)
    return recs[:max_n] if max_n is not None else recs


def load_checkpoint(cfg, override_prompt: bool = False):
    """Load `model.name_or_path` and let its `vlmdet.json` set the prompt settings `cfg` leaves unset
    (`model/contract.apply_contract`, notes to stderr); returns the `Loaded`."""
    from vlmdet.model.contract import apply_contract
    from vlmdet.model.load import load_model

    if cfg.prompt.answer_format != "coordjson":
        raise UsageError(f"prompt.answer_format: training writes CoordJSON answers; {cfg.prompt.answer_format!r} "
                         "is for evaluating stock models (vlmdet eval --format)")
    loaded = load_model(cfg.model.name_or_path, cfg.model.dtype, cfg.model.attn_implementation)
    for note in apply_contract(cfg, loaded.contract, cfg.model.name_or_path, override_prompt):
        print(note, file=sys.stderr)
    if cfg.model.lora is not None:
        loaded = apply_lora(loaded, cfg.model.lora)
    return loaded


def build_trainer(cfg, run, loaded=None, override_prompt: bool = False):
    """The `DetTrainer` for `cfg` writing into `run` (model loaded unless `loaded` is given);
    returns `(trainer, loaded)`. The checkpoint's `vlmdet.json` sets the prompt settings the config
    leaves unset (`model/contract.apply_contract`; `override_prompt` lets explicit ones differ)."""
    from transformers.trainer_callback import EarlyStoppingCallback, PrinterCallback, ProgressCallback

    from vlmdet.train import tracking
    from vlmdet.train.callbacks import ConsoleCallback, RolloutEvalCallback, RunLogCallback
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
        loaded = load_checkpoint(cfg, override_prompt)
    if cfg.model.freeze_vision:
        visual = getattr(getattr(loaded.model, "model", loaded.model), "visual", None)
        if visual is None:
            raise UsageError("model.freeze_vision: this model has no `visual` tower")
        visual.requires_grad_(False)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.tb_dir)  # transformers 5 reads the TB folder from here
    try:
        targs = training_arguments(cfg, run.root)
    except (ValueError, TypeError, ImportError, OSError) as err:  # TrainingArguments.__post_init__ checks
        raise UsageError(f"training: {_first_line(err)}") from err  # the cause shows with --debug
    best = targs.metric_for_best_model
    if best is not None and not (best if best.startswith("eval_") else f"eval_{best}").startswith("eval_rollout"):
        raise UsageError(f"training.metric_for_best_model: {best!r} is not a rollout-eval metric (the eval computes "
                         "eval_rollout/*, e.g. eval_rollout/bbox_AP50)")
    if cfg.eval.early_stopping_patience > 0:  # the callback itself only asserts
        if not (targs.load_best_model_at_end and targs.metric_for_best_model and targs.eval_strategy != "no"):
            raise UsageError("eval.early_stopping_patience: needs eval.eval_steps > 0, data.val and "
                             "training.load_best_model_at_end: true with training.metric_for_best_model "
                             "(e.g. eval_rollout/bbox_AP50)")
    eval_records = val[: cfg.eval.max_samples] if cfg.eval.max_samples else val
    note = rollout_budget_note(eval_records, loaded, cfg)
    if note and int(os.environ.get("RANK", "0")) == 0:
        print(f"vlmdet train: warning: {note}", file=sys.stderr, flush=True)
    eval_cb = RolloutEvalCallback(cfg, run, loaded, eval_records)
    try:
        trainer = DetTrainer(
            model=loaded.model,
            args=targs,
            train_dataset=DetDataset(train, loaded, cfg.prompt, seed=cfg.seed),
            data_collator=make_collator(loaded),
            processing_class=loaded.tokenizer,
            eval_dataset=eval_records or None,  # the rollout eval's records (DetTrainer.evaluate)
            callbacks=[RunLogCallback(run), eval_cb],  # tokenizer, image processor, vlmdet.json: DetTrainer._save_checkpoint
            vlm_cfg=cfg,
            loaded=loaded,
            records=train,
            rollout_eval=eval_cb.evaluate,
        )
    except (ValueError, ImportError, RuntimeError) as err:  # e.g. a report_to integration that is not installed
        raise UsageError(f"training: {_first_line(err)}") from err
    if targs.fsdp and not trainer.is_fsdp_enabled and int(os.environ.get("RANK", "0")) == 0:
        # accelerate turns its FSDP plugin on only for multi-process runs on accelerator devices
        print(f"vlmdet train: warning: training.fsdp is set but accelerate did not enable FSDP "
              f"({device_text(targs)}): the model is trained unsharded", file=sys.stderr, flush=True)
    if cfg.eval.early_stopping_patience > 0:
        trainer.add_callback(EarlyStoppingCallback(cfg.eval.early_stopping_patience))
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def from_rank_zero(value):
    """`value` as rank 0 has it, on every rank (a broadcast, which is also a barrier); `value` itself
    in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train(cfg, argv, resume=None, overwrite=False, loaded=None, override_prompt: bool = False) -> dict:
    """Run training; returns a summary dict (also printed by `run`). `resume`: None, True (newest
    complete checkpoint) or a checkpoint path. Nothing is written before every check passed."""
    from vlmdet.train.callbacks import save_processor

    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 creates/cleans the run dir
    if resume is not None and overwrite:
        raise UsageError("--overwrite: cannot be combined with --resume / --resume-from")
    check_run_name(cfg.run_name)
    check_training_precision(cfg)
    check_checkpointing(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    run = RunDir(Path(cfg.output_dir) / cfg.run_name)
    run.check_reuse(resume=resume is not None, overwrite=overwrite)
    target, notes = resume_target(run, resume, cfg.training.max_steps)
    existed = run.root.exists()
    try:  # the model first: config.yaml records the prompt its vlmdet.json brings
        trainer, loaded = build_trainer(cfg, run, loaded, override_prompt)
    except BaseException:
        if not existed and run.root.is_dir() and not any(run.root.iterdir()):
            run.root.rmdir()  # the Trainer makes its output folder; a failed check leaves nothing behind
        raise
    with RunLock(run.root) if main else nullcontext() as lock:
        if main:
            if lock.taken_over:
                print(f"vlmdet train: took over a stale lock of {run.root} ({lock.taken_over})", file=sys.stderr)
            if resume is True:  # another run may have saved between the check and the lock
                target, notes = resume_target(run, resume, cfg.training.max_steps)
            run = RunDir.create(cfg, argv, resume=target is not None, overwrite=overwrite)
            for name in clear_staging(run.root):
                notes.append(f"deleted {name} (an interrupted save)")
            if target is not None:
                dropped = run.truncate_log(trainer_step(Path(target)))
                if dropped:
                    notes.append(f"logging.jsonl: dropped {dropped} rows logged after {Path(target).name}")
                print(f"vlmdet train: resuming from {target}", file=sys.stderr)
            for note in notes:
                print(f"vlmdet train: {note}", file=sys.stderr)
            for note in config_notes(cfg):
                print(f"vlmdet train: warning: {note}", file=sys.stderr, flush=True)
            print(start_banner(cfg, run, trainer.args), flush=True)
        # every rank resumes from what rank 0 chose under the lock, and only once rank 0 has cleaned up
        target = from_rank_zero(target)
        t0 = time.time()
        result = trainer.train(resume_from_checkpoint=target)
        final = run.root / FINAL_CHECKPOINT

        def write_final(folder: Path) -> None:
            if is_lora(trainer.model):  # merged model -> folder, adapter -> folder/adapter
                if trainer.is_world_process_zero():
                    save_final(trainer.model, folder, lambda f: save_processor(loaded, f, cfg.prompt))
            else:
                trainer.save_model(str(folder))
                if trainer.is_world_process_zero():
                    save_processor(loaded, folder, cfg.prompt)
            if trainer.is_world_process_zero():
                trainer.state.save_to_json(str(folder / "trainer_state.json"))

        write_staged(final, write_final, int(trainer.state.global_step), main=trainer.args.should_save,
                     wait=trainer.accelerator.wait_for_everyone)
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
    cfg = load_config(args.config, args.overrides)
    if args.resume and args.resume_from:
        raise UsageError("--resume-from: give either --resume or --resume-from, not both")
    resume = args.resume_from if args.resume_from else (True if args.resume else None)
    summary = train(cfg, list(sys.argv), resume=resume, overwrite=args.overwrite,
                    override_prompt=args.override_prompt)
    width = max(len(k) for k in summary)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
    return 0
