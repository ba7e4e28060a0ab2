"""`vlmdet experiment gate-ablation [--steps 100,200,300] [--out DIR] [--stage1 CKPT] [--smoke]`.

The gate ablation (docs/results/README.md) on the embedded default: from ONE Stage-1 checkpoint (default: the
one shipped with the demo), four Stage-2 runs, Channel-A only (`b_ratio: 0`),

    {softctx_grad_mode: unroll, em_detach} x {coord_gate: off (0), on (1)}

with identical seed, data, data order and eval settings (configs/demo/gate_ablation.yaml), each evaluated
(rollout eval + monitor dumps) at the same fixed steps and at step 0 (the Stage-1 checkpoint itself, with
the arm's eval settings), then `vlmdet report` of the four runs with the
original method's setting (unroll, gate off) as the delta baseline. Output:

    OUT/data/                       the demo's synthetic set (reused when it matches)
    OUT/runs/a_only_<mode>_gate_<on|off>/   the four run directories
    OUT/report/report.{md,html}     the comparison

What the design measures: Stage-2 token CE excludes coord slots and every coord term is coord-sliced, so
with the gate off nothing supervises the coordinate-vocabulary mass at coordinate slots; the report's
`coord mass (train)` (= coord_diag/coord_vocab_mass_mean), `coord mass (gen)` (at every `bbox_2d`
value position of the rollouts), `slot leak rate` and the leak kinds (what was written at coordinate
slots instead of a coordinate token), `loss/coord_gate` (logged unweighted even when its weight is 0),
parse drops and their reasons answer whether the mass leaks and whether the leak breaks parsing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlmdet.errors import UsageError

#: (softctx_grad_mode, coord_gate weight) in report order; the first is the delta baseline.
ARMS: list[tuple[str, float]] = [("unroll", 0.0), ("unroll", 1.0), ("em_detach", 0.0), ("em_detach", 1.0)]
DEFAULT_STEPS = "100,200,300"
SMOKE_OVERRIDES = ["training.per_device_train_batch_size=2", "training.warmup_steps=0", "training.logging_steps=1",
                   "eval.max_samples=2", "rollout.max_new_tokens=24", "rollout.batch_size=2", "monitor.n_samples=2"]


def arm_name(mode: str, gate: float) -> str:
    return f"a_only_{mode}_gate_{'on' if gate else 'off'}"


def arm_overrides(mode: str, gate: float, steps: list[int], ckpt: str) -> list[str]:
    """The config overrides that make one arm: everything else comes from gate_ablation.yaml."""
    return [f"run_name={arm_name(mode, gate)}", f"stage2.softctx_grad_mode={mode}", f"losses.coord_gate={gate}",
            f"training.max_steps={max(steps)}", "eval.eval_steps=0", f"eval.steps=[{','.join(map(str, steps))}]",
            f"model.name_or_path={ckpt}", "stage2.b_ratio=0.0"]


def run_gate_ablation(out: str | Path, steps: list[int], stage1: str | None = None, smoke: bool = False,
                      argv: list[str] | None = None) -> dict:
    """Run the four arms and the report; returns {"runs": [...], "report_md", "report_html", "seconds"}.
    `stage1`: a Stage-1 checkpoint folder (default: the shipped demo checkpoint; `--smoke`: the randomly
    initialized tiny model, since a smoke run only checks the plumbing)."""
    from vlmdet.config import load_config
    from vlmdet.data.records import load_records
    from vlmdet.evaluate.runner import run_rollout_eval
    from vlmdet.model.load import load_model
    from vlmdet.rundir import RunDir
    from vlmdet.demo import DEMO_DATA, SMOKE_DATA, config_dir, make_data, shipped_stage1
    from vlmdet.report.cli import build_report
    from vlmdet.train.cli import train

    if not steps or min(steps) < 1:
        raise UsageError("--steps: give positive optimizer steps, e.g. 100,200,300")
    out = Path(out)
    argv = list(argv or ["vlmdet", "experiment", "gate-ablation"])
    if stage1 is not None:
        if not (Path(stage1) / "config.json").is_file():
            raise UsageError(f"--stage1 {stage1}: not a checkpoint folder (no config.json)")
        ckpt = str(Path(stage1).resolve())
    elif smoke:
        ckpt = "tiny"
    else:
        if not (shipped_stage1() / "config.json").is_file():
            raise UsageError(f"{shipped_stage1()}: the shipped Stage-1 checkpoint is missing; pass --stage1 CKPT")
        ckpt = str(shipped_stage1())
    data = make_data(out / "data", SMOKE_DATA if smoke else DEMO_DATA)
    common = [f"data.train={(data / 'train.jsonl').resolve()}", f"data.val={(data / 'val.jsonl').resolve()}",
              f"output_dir={(out / 'runs').resolve()}"]
    runs, seconds, start = [], {}, None
    for i, (mode, gate) in enumerate(ARMS, 1):
        name = arm_name(mode, gate)
        print(f"\n== [{i}/{len(ARMS)}] {name}", flush=True)
        t = time.time()
        cfg = load_config(config_dir() / "gate_ablation.yaml",
                          common + arm_overrides(mode, gate, steps, ckpt) + (SMOKE_OVERRIDES if smoke else []))
        summary = train(cfg, argv + [f"({name})"], overwrite=True)
        runs.append(Path(summary["run_dir"]))
        # step 0 = the shared Stage-1 checkpoint, evaluated with the arm's own settings (identical in
        # every arm: a check that the arms start from the same place)
        if start is None:
            start = load_model(ckpt)
        run_rollout_eval(start, load_records(cfg.data.val), cfg, RunDir(summary["run_dir"]), 0)
        seconds[name] = round(time.time() - t, 1)
    title = "Gate ablation: Stage-2 Channel-A only, {unroll, em_detach} x {gate off, on}"
    paths = build_report(runs, out / "report", [0] + list(steps), title=title)
    return {"runs": [str(r) for r in runs], "report_md": str(paths["md"]), "report_html": str(paths["html"]),
            "seconds": seconds, "stage1_checkpoint": ckpt}


EXPERIMENTS = {"gate-ablation": run_gate_ablation}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(EXPERIMENTS), help="the experiment")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help=f"eval steps; the last is the run length (default {DEFAULT_STEPS})")
    parser.add_argument("--out", default=None, help="output folder (default runs/<experiment>)")
    parser.add_argument("--stage1", default=None, metavar="CKPT", help="Stage-1 checkpoint (default: the shipped demo one)")
    parser.add_argument("--smoke", action="store_true", help="tiny numbers (tests): 2 images per batch, 2 eval images")


def run(args: argparse.Namespace) -> int:
    import sys

    from vlmdet.report.runs import parse_steps

    steps = parse_steps(args.steps)
    if not steps:
        raise UsageError("--steps: give at least one step, e.g. 100,200,300")
    out = args.out or f"runs/{args.name}"
    t0 = time.time()
    s = EXPERIMENTS[args.name](out, steps, stage1=args.stage1, smoke=args.smoke, argv=list(sys.argv))
    print(f"\n== {args.name}: {len(s['runs'])} runs from {s['stage1_checkpoint']} in {time.time() - t0:.0f}s")
    print("runs: " + ", ".join(s["runs"]))
    print(f"report: {s['report_html']}\n        {s['report_md']}")
    return 0
