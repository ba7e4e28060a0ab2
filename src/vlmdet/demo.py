"""`vlmdet demo [--out DIR] [--from-scratch] [--smoke]`: the whole path on the embedded default, on a CPU.

Phases (the wall time of each phase that ran is printed at the end; progress bars only on a terminal):
1. data       `data.synth.make_synth` with `DEMO_DATA` (2000 train / 100 val; `STAGE1_DATA`, 20000 train,
              with --from-scratch) -> OUT/data (reused when its manifest matches)
2. stage1     the Stage-1 checkpoint: by default the one shipped in the package
              (`vlmdet/resources/demo_stage1`, made by `vlmdet demo --from-scratch`, see docs/DEMO.md);
              with `--from-scratch`: `vlmdet train configs/demo/stage1.yaml` from random init -> OUT/runs/demo_stage1
3. stage2     Stage-2 AB, Channel-A only (configs/demo/stage2.yaml) from that checkpoint, with rollout eval
              + monitor dumps during training -> OUT/runs/demo_stage2
4. eval       the final model on the whole synthetic val set, written into the Stage-2 run at its last step,
              and the Stage-1 checkpoint itself as step 0 of the Stage-2 run (where Stage-2 started)
5. report     `vlmdet report` of the Stage-2 run -> OUT/report/report.{md,html} (with --from-scratch also
              OUT/report_stage1/ for the Stage-1 run, which has its own step axis)
The summary prints the final metrics against the demo targets (bbox_AP50 >= 0.5 and
sample_clean_rate >= 0.95: the strict rate, answers with no dropped record that were neither truncated
nor failed), where the report is, and the command that opens the runs in TensorBoard (the demo logs to
TensorBoard: configs/demo/base.yaml). `--smoke` runs every phase with tiny numbers
(a few steps, a few images; for tests, under a minute) and never uses the shipped checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vlmdet.config import load_config
from vlmdet.console import eval_line, fmt_seconds, fmt_value, tensorboard_command
from vlmdet.data.records import load_records
from vlmdet.data.synth import make_synth
from vlmdet.errors import UsageError
from vlmdet.options import bounded
from vlmdet.report.cli import build_report
from vlmdet.rundir import RunDir
from vlmdet.train.cli import train

#: `make_synth` keyword arguments of the demo's data set (tuning notes: docs/DEMO.md).
DEMO_DATA: dict = {"n_train": 2000, "n_val": 100, "seed": 0, "size": 128, "max_objects": 3,
                   "min_frac": 0.1875, "max_frac": 0.5}
#: `--from-scratch` trains Stage-1 on 20000 training images: with 2000 the 3000-step run sees each image ~48
#: times and overfits (val AP50 flat at 0.25 from step 2000); the first 2000 images are the same in both
#: sets (synth draws images one by one from the seed), and the val set is identical.
STAGE1_DATA: dict = {**DEMO_DATA, "n_train": 20000}
SMOKE_DATA: dict = {**DEMO_DATA, "n_train": 8, "n_val": 4}

#: Config overrides of `--smoke` per phase (tiny numbers; the configs themselves stay the real ones).
SMOKE_STAGE1 = ["training.max_steps=2", "training.per_device_train_batch_size=2", "training.warmup_steps=0",
                "training.logging_steps=1", "eval.eval_steps=0", "eval.max_samples=2", "rollout.max_new_tokens=24",
                "rollout.batch_size=2"]
SMOKE_STAGE2 = ["training.max_steps=2", "training.per_device_train_batch_size=2", "training.warmup_steps=0",
                "training.logging_steps=1", "eval.eval_steps=1", "eval.steps=[]", "eval.max_samples=2",
                "rollout.max_new_tokens=24", "rollout.batch_size=2", "monitor.n_samples=2"]

#: The demo's targets: COCO AP50 and the strict clean-answer rate (`sample_clean_rate`; the looser
#: `sample_valid_pred_rate` only asks for >= 1 valid object per answer and is printed next to it).
TARGETS: dict[str, float] = {"eval_rollout/bbox_AP50": 0.5, "eval_rollout/sample_clean_rate": 0.95}
SUMMARY_KEYS = ("bbox_AP50", "bbox_AP", "f1", "f1_agnostic", "sample_valid_pred_rate", "sample_clean_rate",
                "parse_dropped_invalid", "coord_slot_leak_rate", "coord_vocab_mass_gen")


def resources_dir() -> Path:
    return Path(__file__).resolve().parent / "resources"


def shipped_stage1() -> Path:
    """The Stage-1 checkpoint shipped in the package (HF folder: config, safetensors, tokenizer, processor)."""
    return resources_dir() / "demo_stage1"


def config_dir() -> Path:
    """configs/demo of the source tree (the demo's YAML files)."""
    d = Path(__file__).resolve().parents[2] / "configs" / "demo"
    if not (d / "stage2.yaml").is_file():
        raise UsageError(f"{d}: the demo configs are missing (run vlmdet from its source checkout)")
    return d


def make_data(out: Path, params: dict, progress: bool = True) -> Path:
    """`make_synth(out, **params)` unless `out/manifest.json` already records the same parameters."""
    manifest = out / "manifest.json"
    if manifest.is_file() and (out / "train.jsonl").is_file() and (out / "val.jsonl").is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        same = (old.get("seed") == params["seed"] and old.get("size") == params["size"]
                and old.get("counts", {}).get("train", {}).get("images") == params["n_train"]
                and old.get("counts", {}).get("val", {}).get("images") == params["n_val"]
                and all(old.get("params", {}).get(k) == params[k] for k in ("max_objects", "min_frac", "max_frac")))
        if same:
            return out
    make_synth(out, progress=progress, **params)
    return out


def _phase(i: int, n: int, text: str) -> None:
    print(f"\n== [{i}/{n}] {text}", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train Stage-1 from random init instead of starting from the shipped Stage-1 checkpoint")
    parser.add_argument("--stage1", default=None, metavar="CKPT", help="start Stage-2 from this Stage-1 checkpoint folder")
    parser.add_argument("--stage1-steps", type=bounded(int, lambda v: v >= 1, ">= 1"), default=None, metavar="N",
                        help="with --from-scratch: Stage-1 optimizer steps (default: configs/demo/stage1.yaml)")
    parser.add_argument("--smoke", action="store_true", help="tiny numbers everywhere (tests; under a minute)")


def run_demo(out: str | Path, from_scratch: bool = False, smoke: bool = False, stage1: str | None = None,
             argv: list[str] | None = None, stage1_steps: int | None = None) -> dict:
    """Run the demo into `out`; return a summary dict (final metrics, paths, seconds per phase)."""
    from vlmdet.evaluate.runner import run_rollout_eval
    from vlmdet.model.load import load_model
    from vlmdet.train.tracking import log_eval_to_tensorboard

    out = Path(out)
    argv = list(argv or ["vlmdet", "demo"])
    cfg_dir = config_dir()
    if stage1 is not None and from_scratch:
        raise UsageError("--stage1 and --from-scratch exclude each other")
    if stage1_steps is not None and (not from_scratch or stage1_steps < 1):
        raise UsageError("--stage1-steps needs --from-scratch and a positive number")
    if stage1 is not None and not (Path(stage1) / "config.json").is_file():
        raise UsageError(f"--stage1 {stage1}: not a checkpoint folder (no config.json)")
    use_shipped = stage1 is None and not from_scratch and not smoke
    if use_shipped and not (shipped_stage1() / "config.json").is_file():
        raise UsageError(f"{shipped_stage1()}: the shipped Stage-1 checkpoint is missing; run `vlmdet demo --from-scratch`")
    seconds: dict[str, float] = {}
    runs: list[Path] = []
    n = 5

    t = time.time()
    _phase(1, n, "synthetic data")
    data = make_data(out / "data", SMOKE_DATA if smoke else STAGE1_DATA if from_scratch else DEMO_DATA)
    common = [f"data.train={(data / 'train.jsonl').resolve()}", f"data.val={(data / 'val.jsonl').resolve()}",
              f"output_dir={(out / 'runs').resolve()}"]
    seconds["data"] = time.time() - t

    t = time.time()
    if stage1 is not None or use_shipped:
        ckpt = Path(stage1) if stage1 is not None else shipped_stage1()
        _phase(2, n, f"Stage-1: using the checkpoint {ckpt}")
    else:
        _phase(2, n, "Stage-1 from random init (configs/demo/stage1.yaml)")
        steps1 = [f"training.max_steps={stage1_steps}"] if stage1_steps else []
        cfg1 = load_config(cfg_dir / "stage1.yaml", common + steps1 + (SMOKE_STAGE1 if smoke else []))
        s1 = train(cfg1, argv + ["(stage1)"], overwrite=True)
        ckpt = Path(s1["final_checkpoint"])
        runs.append(Path(s1["run_dir"]))
        seconds["stage1"] = time.time() - t  # a phase that only picks a checkpoint gets no time

    t = time.time()
    _phase(3, n, "Stage-2 AB, Channel-A only, with rollout eval + monitor dumps (configs/demo/stage2.yaml)")
    cfg2 = load_config(cfg_dir / "stage2.yaml", common + [f"model.name_or_path={ckpt.resolve()}"]
                       + (SMOKE_STAGE2 if smoke else []))
    s2 = train(cfg2, argv + ["(stage2)"], overwrite=True)
    run2 = RunDir(s2["run_dir"])
    runs.append(run2.root)
    seconds["stage2"] = time.time() - t

    t = time.time()
    _phase(4, n, "final rollout eval on the synthetic val set")
    val = load_records(cfg2.data.val)
    final_step = int(s2["global_step"])
    tb = "tensorboard" in (cfg2.training.report_to or [])
    if not (run2.eval_dir(final_step) / "metrics.json").is_file():
        metrics = run_rollout_eval(load_model(s2["final_checkpoint"]), val, cfg2, run2, final_step)
        if tb:
            log_eval_to_tensorboard(run2, final_step, metrics)
    else:
        metrics = json.loads((run2.eval_dir(final_step) / "metrics.json").read_text())["metrics"]
    # the starting point (the Stage-1 checkpoint) as step 0 of the Stage-2 run: the report shows Stage-2
    # against where it started
    start = run_rollout_eval(load_model(str(ckpt)), val, cfg2, run2, 0)
    print(eval_line(0, start) + "  (the Stage-1 checkpoint)", flush=True)
    if tb:
        log_eval_to_tensorboard(run2, 0, start)
    seconds["eval"] = time.time() - t

    t = time.time()
    _phase(5, n, "report")
    paths = build_report([run2.root], out / "report", title="vlmdet demo: Stage-2 Channel-A from the Stage-1 checkpoint")
    if len(runs) > 1:  # Stage-1 has its own step axis: its own report
        build_report(runs[:1], out / "report_stage1", title="vlmdet demo: Stage-1 from random init")
    seconds["report"] = time.time() - t

    targets = {k: (metrics.get(k), metrics.get(k) is not None and metrics[k] >= v) for k, v in TARGETS.items()}
    return {"out": str(out), "stage1_checkpoint": str(ckpt), "runs": [str(r) for r in runs],
            "final_step": final_step, "metrics": {k: metrics.get(f"eval_rollout/{k}") for k in SUMMARY_KEYS},
            "targets": targets, "seconds": seconds, "report_md": str(paths["md"]), "report_html": str(paths["html"]),
            "tensorboard": tensorboard_command((out / "runs").resolve()) if tb else None, "smoke": smoke}


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    s = run_demo(args.out, from_scratch=args.from_scratch, smoke=args.smoke, stage1=args.stage1, argv=list(sys.argv),
                 stage1_steps=args.stage1_steps)
    total = time.time() - t0
    print("\n== vlmdet demo: summary")
    print(summary_text(s, total))
    return 0


def summary_text(s: dict, total: float) -> str:
    """The closing summary of `run` (counts as integers, only the phases that ran, the TensorBoard command)."""
    lines = [f"Stage-1 checkpoint: {s['stage1_checkpoint']}",
             f"runs:               {', '.join(s['runs'])}",
             f"final eval (step {s['final_step']}): "
             + ", ".join(f"{k} {fmt_value(k, v)}" for k, v in s["metrics"].items())]
    if not s["smoke"]:
        for key, (value, ok) in s["targets"].items():
            lines.append(f"target {key} >= {TARGETS[key]}: {fmt_value(key, value)} {'met' if ok else 'MISSED'}")
    lines.append("time: " + ", ".join(f"{k} {fmt_seconds(v)}" for k, v in s["seconds"].items())
                 + f", total {fmt_seconds(total)}")
    lines.append(f"report: {s['report_html']}\n        {s['report_md']}")
    if s.get("tensorboard"):
        lines.append(f"TensorBoard: {s['tensorboard']}")
    return "\n".join(lines)
