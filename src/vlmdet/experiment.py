"""`vlmdet experiment grid CONFIG --vary KEY=V1,V2 [--vary ...] --seeds 0,1,2 --steps 100,200,300 [--out DIR]`
and its named presets (`vlmdet experiment gate-ablation`): many training runs from one start, compared
with seed statistics.

A grid is the cross product of the `--vary` settings (the arms; the first value of every `--vary` makes
the first arm, the **baseline** of every delta) times the `--seeds`. Every run:
- starts from the same checkpoint (`--stage1 CKPT`, default the config's `model.name_or_path`);
- uses the config with the arm's settings, `--set` overrides, `seed=<seed>` (same seed = same data order
  and same initialization of anything random, in every arm), `training.max_steps` = the last `--steps`,
  rollout evals at exactly `--steps` (`eval.steps`, `eval.eval_steps=0`);
- gets the start checkpoint's own eval as step 0 (evaluated once per distinct eval setting, in
  `OUT/start/<hash>/`, and copied into each run).
Runs go in seed-major order (all arms of the first seed first: one seed is a complete first look).

Resumable: a run is finished when its folder has `grid.json` (written last, atomically). Running the same
command again skips finished runs and restarts an interrupted one from scratch; a finished run made with
other settings is an error (use another `--out`). `--keep-checkpoints` saves the weights at every eval
step (`checkpoint-<step>`, model only), and `--reeval` re-evaluates every finished run whose evaluation
code differs from the installed one (a hash of the evaluation/parsing modules, stored in grid.json) from
its checkpoints (at least step 0 and the final step): new metrics without retraining.

Output:

    OUT/data/                      the demo's synthetic set, when the config names no data
                                   (`--train-images N`: with N training images instead of 2000)
    OUT/start/<hash>/              the step-0 eval of the start checkpoint
    OUT/runs/<arm>,seed=<s>/       one run folder per arm and seed (+ grid.json)
    OUT/grid.md, OUT/grid.json     per arm and step: mean +- std over seeds and the 95 % t-interval;
                                   paired deltas vs the baseline arm and vs step 0, marked where the
                                   interval excludes zero; per-run wall times
    OUT/report/report.{md,html}    `vlmdet report` of the first seed's runs (curves, drops, examples)

`--dry-run` checks every run's config and lists the runs (finished or to train) without training.
`--smoke` runs the same grid with tiny numbers (2 steps, 2 images per batch, 2 eval images, the randomly
initialized tiny model unless `--stage1` is given): plumbing only.

Presets (`PRESETS`): `gate-ablation` = `grid configs/demo/gate_ablation.yaml --vary
stage2.softctx_grad_mode=unroll,em_detach --vary losses.coord_gate=0,1` from the shipped Stage-1
checkpoint, seeds 0,1,2, steps 100,200,300. Channel-A only; token CE excludes coord slots and every coord
term is coord-sliced, so with the gate off nothing supervises the coordinate-vocabulary mass at
coordinate slots. What the gate-ablation grid reads: the rollout metrics `coord_slot_leak_rate` (share of
`bbox_2d` value positions whose emitted token is not a coordinate token) and `leak/<kind>`,
`coord_vocab_mass_gen` (at every such position), `sample_clean_rate` and `sample_valid_pred_rate`, parse
drops and their reasons, and in the training log `coord_diag/coord_vocab_mass_mean` and `loss/coord_gate`
(logged unweighted even when its weight is 0); docs/results/README.md has what it shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from vlmdet import experiment_bootstrap
from vlmdet.config import config_from_dict, load_config
from vlmdet.data.records import load_records
from vlmdet.demo import DEMO_DATA, SMOKE_DATA, config_dir, make_data, shipped_stage1
from vlmdet.errors import UsageError
from vlmdet.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from vlmdet.options import bounded
from vlmdet.report.cli import build_report
from vlmdet.report.plots import interval_plot
from vlmdet.report.runs import parse_steps
from vlmdet.rundir import RunDir
from vlmdet.stats import paired_delta, summarize
from vlmdet.train.cli import FINAL_CHECKPOINT, train

#: eval metrics shown in grid.md, in this order (those a run does not have are left out).
GRID_METRICS = ("bbox_AP50", "bbox_AP", "f1", "sample_clean_rate", "sample_valid_pred_rate", "coord_slot_leak_rate",
                "parse_dropped_invalid", "coord_vocab_mass_gen")
#: metrics drawn as seed-interval plots (OUT/plots/<metric>.png).
PLOT_METRICS = ("bbox_AP50", "sample_clean_rate", "coord_slot_leak_rate")
EVAL_PREFIX = "eval_rollout/"
#: settings the grid itself sets in every run; `--vary` / `--set` may not touch them.
GRID_KEYS = ("seed", "run_name", "output_dir", "model.name_or_path", "training.max_steps", "eval.steps",
             "eval.eval_steps")
SMOKE_OVERRIDES = ["training.per_device_train_batch_size=2", "training.warmup_steps=0", "training.logging_steps=1",
                   "eval.max_samples=2", "rollout.max_new_tokens=24", "rollout.batch_size=2", "monitor.n_samples=2"]
SMOKE_STEPS = [2]
MARKER = "grid.json"
#: the config sections a re-evaluation reads from a run's config.yaml.
EVAL_SECTIONS = ("seed", "model", "data", "prompt", "rollout", "match", "eval", "monitor")


# ----------------------------------------------------------------------------------------------
# arms: the cross product of the --vary settings


@dataclass(frozen=True)
class Arm:
    """One combination of varied settings: `settings` = ((dotted key, value text), ...)."""

    name: str
    settings: tuple[tuple[str, str], ...]

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.settings]


def split_values(text: str) -> list[str]:
    """`"1e-4,5e-4"` -> ["1e-4", "5e-4"]; commas inside [], {} or quotes do not split
    (`"{},{coord_gate: 1}"` -> ["{}", "{coord_gate: 1}"])."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    parts.append(cur.strip())
    return parts


def parse_vary(text: str) -> tuple[str, list[str]]:
    """`"training.learning_rate=1e-4,5e-4"` -> ("training.learning_rate", ["1e-4", "5e-4"])."""
    key, sep, values = text.partition("=")
    key = key.strip()
    vals = split_values(values) if sep else []
    if not key or not vals or not all(vals):
        raise UsageError(f"--vary {text!r}: expected KEY=V1,V2,... (e.g. training.learning_rate=1e-4,5e-4)")
    if len(set(vals)) != len(vals):
        raise UsageError(f"--vary {text!r}: a value is repeated")
    if key in GRID_KEYS:
        raise UsageError(f"--vary {key}: the grid sets {key} itself (use --seeds / --steps / --stage1)")
    return key, vals


def _slug(value: str) -> str:
    s = re.sub(r"[^A-Za-z0-9.+-]+", "_", value).strip("_")
    return s or "none"


def make_arms(varies: list[str]) -> list[Arm]:
    """The cross product of the `--vary` texts, first value of each first (arm 0 = the baseline).
    An arm is named `key=value,key=value` with the last part of each dotted key (the whole key where two
    varied keys end alike); no `--vary`: one arm named `base`."""
    parsed = [parse_vary(v) for v in varies]
    keys = [k for k, _ in parsed]
    if len(set(keys)) != len(keys):
        raise UsageError("--vary: a key is varied twice; give all its values in one --vary")
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    short = [t if tails.count(t) == 1 else k for k, t in zip(keys, tails)]
    if not parsed:
        return [Arm("base", ())]
    arms = []
    for combo in itertools.product(*[vals for _, vals in parsed]):
        name = ",".join(f"{s}={_slug(v)}" for s, v in zip(short, combo))
        arms.append(Arm(name, tuple(zip(keys, combo))))
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise UsageError("--vary: two values give the same arm name; use values that differ in letters or digits")
    return arms


def run_name(arm: Arm, seed: int) -> str:
    return f"{arm.name},seed={seed}"


def parse_seeds(text: str) -> list[int]:
    """`"0,1,2"` -> [0, 1, 2] (order kept, no repeats); bad input: UsageError."""
    seeds = []
    for part in (p.strip() for p in text.split(",")):
        if not part.isdigit():
            raise UsageError(f"--seeds: {part!r} is not a non-negative integer (expected e.g. 0,1,2)")
        if int(part) in seeds:
            raise UsageError(f"--seeds: {part} is repeated")
        seeds.append(int(part))
    return seeds


def run_overrides(arm: Arm, seed: int, steps: list[int], start: str, out: Path, sets: list[str],
                  keep_checkpoints: bool) -> list[str]:
    """Every override of one run, in the order applied: `--set`, the arm, then what the grid fixes."""
    fixed = [f"run_name={run_name(arm, seed)}", f"seed={seed}", f"model.name_or_path={start}",
             f"output_dir={(out / 'runs').resolve()}", f"training.max_steps={max(steps)}", "eval.eval_steps=0",
             f"eval.steps=[{','.join(map(str, steps))}]"]
    if keep_checkpoints:
        fixed += [f"training.save_steps={math.gcd(*steps)}", "training.save_total_limit=null",
                  "training.extra.save_only_model=true"]
    return list(sets) + arm.overrides + fixed


# ----------------------------------------------------------------------------------------------
# step 0 and re-evaluation


#: package parts that cannot change an eval metric (everything else counts as evaluation code).
NOT_EVAL_CODE = ("train/", "report/", "experiment.py", "experiment_bootstrap.py", "demo.py", "cli.py", "stats.py")


def eval_code_hash() -> str:
    """sha256 (first 12 hex digits) of the package's modules that can change what a checkpoint's eval
    reports: every module except `NOT_EVAL_CODE` (over-inclusive: a change there re-evaluates, never
    the reverse)."""
    pkg = Path(__file__).resolve().parent
    files = [f for f in sorted(pkg.rglob("*.py"))
             if not f.relative_to(pkg).as_posix().startswith(NOT_EVAL_CODE)]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def _eval_signature(cfg, code: str) -> str:
    """What the step-0 eval of the start depends on (the seed only when rollouts sample)."""
    d = dataclasses.asdict(cfg)
    key = {k: d[k] for k in ("prompt", "rollout", "match", "eval", "monitor")}
    key.update(model=cfg.model.name_or_path, val=cfg.data.val, max_val=cfg.data.max_val_samples, code=code,
               seed=cfg.seed if cfg.rollout.do_sample else None)
    key["eval"] = {k: v for k, v in key["eval"].items() if k not in ("steps", "eval_steps")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _val_records(cfg):
    recs = load_records(cfg.data.val, check_images=cfg.data.check_images)
    return recs[: cfg.data.max_val_samples] if cfg.data.max_val_samples is not None else recs


def _eval_into(ckpt: str, cfg, run_root: Path, step: int) -> dict:
    from vlmdet.evaluate.runner import run_rollout_eval
    from vlmdet.model.load import load_model

    loaded = load_model(ckpt, cfg.model.dtype, cfg.model.attn_implementation)
    return run_rollout_eval(loaded, _val_records(cfg), cfg, RunDir(run_root), step, progress=False, log=False)


def start_eval(cfg, out: Path, code: str) -> Path:
    """The step-0 eval of `cfg.model.name_or_path` under `cfg`'s eval settings, once per signature:
    returns `OUT/start/<hash>` (a run-like folder with eval/step_000000 and monitor_dumps)."""
    folder = out / "start" / _eval_signature(cfg, code)
    if not (folder / "eval" / "step_000000" / "metrics.json").is_file():
        _eval_into(cfg.model.name_or_path, cfg, folder, 0)
        atomic_write_text(folder / "checkpoint.txt", cfg.model.name_or_path + "\n")
    return folder


def copy_step0(start: Path, run_root: Path) -> None:
    """Copy the start's step-0 eval folder and monitor dump (JSON + PNG folder) into a run."""
    for rel in ("eval/step_000000", "monitor_dumps/step_000000"):
        src, dst = start / rel, run_root / rel
        if src.is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
    src = start / "monitor_dumps" / "step_000000.json"
    if src.is_file():
        (run_root / "monitor_dumps").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, run_root / "monitor_dumps" / "step_000000.json")


def reeval_run(run_root: Path, steps: list[int]) -> list[int]:
    """Re-evaluate a finished run at every step in `steps` that has a checkpoint (`checkpoint-<step>`, or
    `checkpoint-final` for the last step) with the installed evaluation code; returns the steps done."""
    import yaml

    # only the sections evaluation reads: a run made before a training/loss setting was renamed still loads
    saved = yaml.safe_load((run_root / "config.yaml").read_text(encoding="utf-8"))
    cfg = config_from_dict({k: saved[k] for k in EVAL_SECTIONS if k in saved})
    done = []
    for step in steps:
        ckpt = run_root / f"checkpoint-{step}"
        if not ckpt.is_dir() and step == max(steps):
            ckpt = run_root / FINAL_CHECKPOINT
        if ckpt.is_dir():
            _eval_into(str(ckpt), cfg, run_root, step)
            done.append(step)
    return done


# ----------------------------------------------------------------------------------------------
# the grid


def _start_checkpoint(config: Path, stage1: str | None, smoke: bool) -> str | None:
    if stage1 is not None:
        if stage1 == "tiny":
            return stage1
        if not (Path(stage1) / "config.json").is_file():
            raise UsageError(f"--stage1 {stage1}: not a checkpoint folder (no config.json)")
        return str(Path(stage1).resolve())
    return "tiny" if smoke else None


def _data_overrides(config: Path, out: Path, smoke: bool, make: bool = True,
                     train_images: int | None = None) -> list[str]:
    """The demo's synthetic set under OUT/data when the config names no training data (`make=False`:
    only its paths); `train_images`: that many training images instead of the demo's 2000 (the same
    generator and seed: the first 2000 images and the val set are the demo's; 20000 = the set the shipped
    Stage-1 checkpoint was trained on). Ignored with `smoke`."""
    if load_config(config).data.train:
        if train_images is not None:
            raise UsageError(f"--train-images: {config} names its own training data (data.train)")
        return []
    params = SMOKE_DATA if smoke else {**DEMO_DATA, "n_train": train_images or DEMO_DATA["n_train"]}
    data = make_data(out / "data", params, progress=False) if make else out / "data"
    return [f"data.train={(data / 'train.jsonl').resolve()}", f"data.val={(data / 'val.jsonl').resolve()}"]


def _weights_digest(path: str) -> str | None:
    """sha256 of a checkpoint folder's weight files (None: not a folder with weights)."""
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def same_settings(done: list[str], now: list[str]) -> bool:
    """Whether a finished run's overrides (`done`, from its grid.json) are this grid's (`now`), allowing for
    a grid folder that was moved or copied (paths inside the old grid folder, given by its `output_dir`,
    read as the same paths inside the new one) and a `model.name_or_path` that names another folder holding
    the same weights (a copy of the start checkpoint)."""
    def grid_folder(overrides):
        out = [o.partition("=")[2] for o in overrides if o.startswith("output_dir=")]
        return str(Path(out[0]).parent) if out else None

    old, new = grid_folder(done), grid_folder(now)
    if len(done) != len(now):
        return False
    for a, b in zip(done, now):
        if a.startswith("output_dir=") and b.startswith("output_dir="):
            continue
        if old and new:
            a = a.replace(old + "/", new + "/")
        key, _, va = a.partition("=")
        vb = b.partition("=")[2]
        if a != b and (key != "model.name_or_path" or _weights_digest(va) is None
                       or _weights_digest(va) != _weights_digest(vb)):
            return False
    return True


def shown_path(path: str) -> str:
    """A path as a reader of the report can use it: relative to the current folder when inside it."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path


def _fmt_eta(seconds: float) -> str:
    end = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return f"{seconds / 60:.0f} min (~{end:%H:%M} UTC)"


def _headline(metrics: dict) -> str:
    shown = [(k, metrics.get(EVAL_PREFIX + k)) for k in ("bbox_AP50", "sample_clean_rate", "sample_valid_pred_rate")]
    return ", ".join(f"{k} {v:.3f}" for k, v in shown if isinstance(v, (int, float)))


def run_grid(config: str | Path, varies: list[str], seeds: list[int], steps: list[int], out: str | Path, *,
             stage1: str | None = None, sets: list[str] | None = None, smoke: bool = False,
             keep_checkpoints: bool = False, reeval: bool = False, title: str | None = None,
             argv: list[str] | None = None, dry_run: bool = False, train_images: int | None = None,
             say=print) -> dict:
    """Run (or continue) a grid and write its report (module docstring); returns
    `{"runs": [...], "grid_md", "grid_json", "report_md", "report_html", "seconds"}`. `dry_run`: check
    every run's config, say which runs are finished and which would train, write nothing; returns
    `{"runs": [...], "to_train": [...], "start"}`."""
    config, out = Path(config), Path(out)
    if not config.is_file():
        raise UsageError(f"{config}: no such config file")
    steps = list(SMOKE_STEPS) if smoke else sorted(set(steps))
    if not steps or min(steps) < 1:
        raise UsageError("--steps: give positive optimizer steps, e.g. 100,200,300")
    if not seeds:
        raise UsageError("--seeds: give at least one seed, e.g. 0,1,2")
    sets = list(sets or [])
    for s in sets:
        key = s.partition("=")[0].strip()
        if key in GRID_KEYS:
            raise UsageError(f"--set {key}: the grid sets {key} itself (use --seeds / --steps / --stage1)")
    arms = make_arms(varies)
    start = _start_checkpoint(config, stage1, smoke)
    argv = list(argv or ["vlmdet", "experiment", "grid", str(config)])
    base = sets + (SMOKE_OVERRIDES if smoke else [])
    if start is None:
        start = load_config(config, base).model.name_or_path
    # every run's config is checked before anything runs (bad input fails in a second, not an hour in)
    base = _data_overrides(config, out, smoke, make=not dry_run, train_images=train_images) + base
    jobs = [(arm, seed) for seed in seeds for arm in arms]
    plans = {}
    for arm, seed in jobs:
        overrides = run_overrides(arm, seed, steps, start, out, base, keep_checkpoints)
        plans[(arm.name, seed)] = (overrides, load_config(config, overrides))
    code = eval_code_hash()
    if dry_run:
        todo = [run_name(a, s) for a, s in jobs if not (out / "runs" / run_name(a, s) / MARKER).is_file()]
        for i, (arm, seed) in enumerate(jobs, 1):
            name = run_name(arm, seed)
            say(f"[{i}/{len(jobs)}] {name}: {'to train' if name in todo else 'finished'}: "
                + " ".join(plans[(arm.name, seed)][0]))
        return {"runs": [str(out / "runs" / run_name(a, s)) for a, s in jobs], "to_train": todo, "start": start}
    say(f"== grid: {len(arms)} arm(s) x {len(seeds)} seed(s) = {len(jobs)} runs of {max(steps)} steps from {start}; "
        f"out {out}")

    t_grid, trained, runs = time.time(), [], []
    for i, (arm, seed) in enumerate(jobs, 1):
        overrides, cfg = plans[(arm.name, seed)]
        root = out / "runs" / run_name(arm, seed)
        marker = root / MARKER
        runs.append(root)
        if marker.is_file():
            info = json.loads(marker.read_text())
            if not same_settings(info.get("overrides") or [], overrides):
                raise UsageError(f"{root}: finished with other settings ({info.get('overrides')}); use another --out")
            if reeval and info.get("eval_code") != code:
                t = time.time()
                redone = reeval_run(root, [s for s in steps])
                copy_step0(start_eval(cfg, out, code), root)
                info.update(eval_code=code, reevaluated_steps=[0] + redone, reeval_seconds=round(time.time() - t, 1))
                atomic_write_json(marker, info)
                say(f"[{i}/{len(jobs)}] {root.name}: re-evaluated steps {[0] + redone} in {time.time() - t:.0f} s")
            else:
                say(f"[{i}/{len(jobs)}] {root.name}: finished earlier ({info.get('seconds')} s), skipped")
            continue
        say(f"[{i}/{len(jobs)}] {root.name}: training {max(steps)} steps ...")
        t = time.time()
        train(cfg, argv + [f"({root.name})"], overwrite=True)
        copy_step0(start_eval(cfg, out, code), root)
        seconds = round(time.time() - t, 1)
        final = _read_metrics(root, max(steps))
        atomic_write_json(marker, {"arm": arm.name, "settings": dict(arm.settings), "seed": seed, "steps": steps,
                                   "overrides": overrides, "start": start, "seconds": seconds, "eval_code": code,
                                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        trained.append(seconds)
        left = sum(1 for a, s in jobs[i:] if not (out / "runs" / run_name(a, s) / MARKER).is_file())
        eta = _fmt_eta(left * sum(trained) / len(trained)) if left else "0 min"
        say(f"[{i}/{len(jobs)}] {root.name}: {seconds:.0f} s; step {max(steps)}: {_headline(final)}; "
            f"{left} left, ETA {eta}")

    paths = write_grid_report(out, config, arms, seeds, [0] + steps, start, title or f"Grid: {config.name}")

    first = [out / "runs" / run_name(a, seeds[0]) for a in arms]
    shutil.rmtree(out / "report", ignore_errors=True)  # no example PNGs left over from another invocation
    rep = build_report(first, out / "report", [0] + steps,
                       title=f"{title or 'Grid: ' + config.name} (seed {seeds[0]}: one run per arm)")
    say(f"== grid done in {time.time() - t_grid:.0f} s ({len(trained)} trained now); {paths['md']}")
    return {"runs": [str(r) for r in runs], "grid_md": str(paths["md"]), "grid_json": str(paths["json"]),
            "report_md": str(rep["md"]), "report_html": str(rep["html"]), "seconds": round(time.time() - t_grid, 1),
            "start": start}


# ----------------------------------------------------------------------------------------------
# the report


def _read_metrics(root: Path, step: int) -> dict:
    path = root / "eval" / f"step_{step:06d}" / "metrics.json"
    try:
        return json.loads(path.read_text()).get("metrics", {})
    except (OSError, json.JSONDecodeError):
        return {}


def _num(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _finite(d: dict) -> dict:
    """NaN (no spread with one seed) as null: JSON has no NaN."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def _cell(s) -> str:
    if s.n == 0:
        return "–"
    return _num(s.mean) if s.n == 1 else f"{_num(s.mean)} ± {_num(s.std)}"


def _delta_cell(s) -> str:
    if s.n == 0:
        return "–"
    if s.n == 1:
        return f"{_num(s.mean, True)} (n=1)"
    mark = " **" if s.excludes_zero else ""
    return f"{_num(s.mean, True)} [{_num(s.lo, True)}, {_num(s.hi, True)}]{mark}"


def grid_table(values: dict, arms: list[str], seeds: list[int], steps: list[int]) -> dict:
    """`values[(arm, seed, step)] -> float` (absent = missing) -> per arm: `per_step` {step: Summary over
    seeds}, `vs_baseline` {step: paired Summary of arm - arms[0]}, `vs_start` {step: paired Summary of
    value(step) - value(step 0)}. Pure."""
    def by_seed(arm, step):
        return {s: values[(arm, s, step)] for s in seeds if (arm, s, step) in values}

    out = {}
    for arm in arms:
        out[arm] = {
            "per_step": {st: summarize(list(by_seed(arm, st).values())) for st in steps},
            "vs_baseline": {st: paired_delta(by_seed(arm, st), by_seed(arms[0], st)) for st in steps},
            "vs_start": {st: paired_delta(by_seed(arm, st), by_seed(arm, steps[0])) for st in steps},
        }
    return out


def write_grid_report(out: Path, config: Path, arms: list[Arm], seeds: list[int], steps: list[int], start: str,
                      title: str) -> dict:
    """OUT/grid.md and OUT/grid.json from the run folders (module docstring)."""
    names = [a.name for a in arms]
    runs = {(a, s): out / "runs" / run_name(Arm(a, ()), s) for a in names for s in seeds}
    info = {k: json.loads((r / MARKER).read_text()) for k, r in runs.items() if (r / MARKER).is_file()}
    raw = {}
    for (a, s), r in runs.items():
        for st in steps:
            for k, v in _read_metrics(r, st).items():
                if k.startswith(EVAL_PREFIX) and isinstance(v, (int, float)):
                    raw[(k[len(EVAL_PREFIX):], a, s, st)] = float(v)
    metrics = [m for m in GRID_METRICS if any(k[0] == m for k in raw)]
    total = sum(i.get("seconds", 0) for i in info.values())
    codes = sorted({i.get("eval_code") for i in info.values()})
    last, first = steps[-1], steps[0]
    lines = [f"# {title}", "",
             f"Config `{shown_path(str(config))}`, start `{shown_path(start)}`, seeds {', '.join(map(str, seeds))}, eval steps "
             f"{', '.join(map(str, steps))} (step 0 = the start). Arms (the first is the baseline):", ""]
    lines += [f"- `{a.name}`: " + (", ".join(f"`{k}={v}`" for k, v in a.settings) or "the config as is") for a in arms]
    lines += ["", f"Finished runs: {len(info)} of {len(runs)}; training + eval wall time {total:.0f} s "
                  f"({total / 60:.1f} min) in all. Evaluation code: {', '.join(map(str, codes)) or '–'}"
                  + (" (mixed: `--reeval` makes it one)" if len(codes) > 1 else "") + ".", "",
              "Cells: mean ± sample std over seeds. Deltas: paired by seed (same start, same data order), "
              "mean [95 % t-interval]; ** = the interval excludes 0; (n=1) = one seed, no interval.", ""]
    summary = {}
    for m in metrics:
        vals = {(a, s, st): v for (mm, a, s, st), v in raw.items() if mm == m}
        table = grid_table(vals, names, seeds, steps)
        summary[m] = {a: {part: {str(st): _finite(asdict(sm)) for st, sm in d.items()} for part, d in t.items()}
                      for a, t in table.items()}
        lines += [f"## {m}", "", "| arm | " + " | ".join(f"step {st}" for st in steps)
                  + f" | Δ vs {names[0]} at {last} | Δ step {last} − step {first} |",
                  "|---|" + "---|" * (len(steps) + 2)]
        for a in names:
            t = table[a]
            lines.append(f"| {a} | " + " | ".join(_cell(t["per_step"][st]) for st in steps)
                         + f" | {'(baseline)' if a == names[0] else _delta_cell(t['vs_baseline'][last])}"
                         + f" | {_delta_cell(t['vs_start'][last])} |")
        lines += ["", f"Per seed at step {last}: " + "; ".join(
            f"{a}: " + ", ".join(_num(vals[(a, s, last)]) if (a, s, last) in vals else "–" for s in seeds)
            for a in names), ""]
    lines += ["## Runs", "", "| run | seconds | eval code |", "|---|---|---|"]
    lines += [f"| {run_name(Arm(a, ()), s)} | {info[(a, s)].get('seconds', '–') if (a, s) in info else 'not finished'} "
              f"| {info.get((a, s), {}).get('eval_code', '–')} |" for a in names for s in seeds]

    figures = []
    for m in [m for m in PLOT_METRICS if m in summary]:
        nan = float("nan")
        pts = {a: [(st, *(nan if x is None else x for x in (s["mean"], s["lo"], s["hi"])))
                   for st, s in ((st, summary[m][a]["per_step"][str(st)]) for st in steps)] for a in names}
        png = atomic_write_bytes(out / "plots" / f"{m}.png",
                                 interval_plot(pts, f"{m}: mean over seeds, 95 % t-interval", m))
        figures.append(f"![{m}](plots/{png.name})")
    lines[lines.index("## Runs"):lines.index("## Runs")] = ["## Plots", "", *figures, ""] if figures else []
    md = atomic_write_text(out / "grid.md", "\n".join(lines) + "\n")
    js = atomic_write_json(out / "grid.json", {
        "config": shown_path(str(config)), "start": shown_path(start), "seeds": seeds, "steps": steps,
        "arms": [{"name": a.name, "settings": dict(a.settings)} for a in arms],
        "seconds_total": total, "runs": {run_name(Arm(a, ()), s): i for (a, s), i in info.items()},
        "values": {m: {a: {str(s): {str(st): raw[(m, a, s, st)] for st in steps if (m, a, s, st) in raw}
                           for s in seeds} for a in names} for m in metrics},
        "summary": summary})
    return {"md": md, "json": js}


# ----------------------------------------------------------------------------------------------
# presets and the command line


def _gate_ablation_config() -> Path:
    return config_dir() / "gate_ablation.yaml"


#: name -> the grid it runs: config (a callable giving the path), --vary, default seeds / steps, title.
PRESETS: dict[str, dict] = {
    "gate-ablation": {
        "config": _gate_ablation_config,
        "vary": ["stage2.softctx_grad_mode=unroll,em_detach", "losses.coord_gate=0,1"],
        "seeds": "0,1,2",
        "steps": "100,200,300",
        "shipped_stage1": True,
        "title": "Gate ablation: Stage-2 Channel-A only, {unroll, em_detach} x {coord_gate 0, 1}",
    },
}


def _common_arguments(p: argparse.ArgumentParser, seeds: str | None, steps: str | None) -> None:
    p.add_argument("--seeds", default=seeds, required=seeds is None, help=f"seeds, e.g. 0,1,2 (default {seeds})")
    p.add_argument("--steps", default=steps, required=steps is None,
                   help="eval steps; the last is the run length" + (f" (default {steps})" if steps else ""))
    p.add_argument("--out", default=None, help="output folder (default runs/<experiment>)")
    p.add_argument("--stage1", default=None, metavar="CKPT", help="start checkpoint of every run")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (repeatable)")
    p.add_argument("--train-images", type=bounded(int, lambda v: v >= 1, ">= 1"), default=None, metavar="N",
                   help="when the config names no data: the demo's synthetic set with N training images "
                        "(default 2000; 20000 = the shipped Stage-1 checkpoint's set)")
    p.add_argument("--keep-checkpoints", action="store_true", help="save the weights at every eval step")
    p.add_argument("--reeval", action="store_true",
                   help="re-evaluate finished runs made with other evaluation code, from their checkpoints")
    p.add_argument("--smoke", action="store_true", help="tiny numbers (tests): 2 steps, 2 images per batch, 2 eval images")
    p.add_argument("--dry-run", action="store_true",
                   help="check every run's config and list the runs (finished / to train); train nothing")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="{grid,bootstrap," + ",".join(PRESETS) + "}")
    g = sub.add_parser("grid", help="cross product of --vary settings x --seeds, with seed statistics")
    g.add_argument("config", help="YAML config every run starts from")
    g.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="a setting and its values (repeatable; the first values make the baseline arm)")
    g.add_argument("--title", default=None, help="title of grid.md and the report (default: Grid: <config name>)")
    _common_arguments(g, None, None)
    experiment_bootstrap.add_arguments(sub.add_parser(
        "bootstrap", help="paired bootstrap over images of a COCO metric difference between prediction files"))
    for name, p in PRESETS.items():
        sp = sub.add_parser(name, help=p["title"])
        _common_arguments(sp, p["seeds"], p["steps"])


def run(args: argparse.Namespace) -> int:
    if args.experiment == "bootstrap":
        return experiment_bootstrap.run(args)
    steps = parse_steps(args.steps)
    if not steps:
        raise UsageError("--steps: give at least one step, e.g. 100,200,300")
    seeds = parse_seeds(args.seeds)
    out = args.out or f"runs/{args.experiment}"
    if args.experiment == "grid":
        config, varies, stage1, title = args.config, args.vary, args.stage1, args.title
    else:
        p = PRESETS[args.experiment]
        config, varies, title = p["config"](), p["vary"], p["title"]
        stage1 = args.stage1
        if stage1 is None and not args.smoke and p.get("shipped_stage1"):
            if not (shipped_stage1() / "config.json").is_file():
                raise UsageError(f"{shipped_stage1()}: the shipped Stage-1 checkpoint is missing; pass --stage1 CKPT")
            stage1 = str(shipped_stage1())
    s = run_grid(config, varies, seeds, steps, out, stage1=stage1, sets=args.sets, smoke=args.smoke,
                 keep_checkpoints=args.keep_checkpoints, reeval=args.reeval, title=title, argv=list(sys.argv),
                 dry_run=args.dry_run, train_images=args.train_images)
    if args.dry_run:
        print(f"\n== {args.experiment} (dry run): {len(s['runs'])} runs, {len(s['to_train'])} to train")
        return 0
    print(f"\n== {args.experiment}: {len(s['runs'])} runs from {s['start']} in {s['seconds']:.0f} s")
    print(f"grid:   {s['grid_md']}\nreport: {s['report_html']}\n        {s['report_md']}")
    return 0
