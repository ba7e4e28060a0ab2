"""vlmdet experiment: arms of a grid, the seed statistics table, the gate-ablation preset's arms, and a
smoke grid end to end (resume, interrupted run, other settings, re-evaluation)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vlmdet.cli import main
from vlmdet.config import config_to_dict, load_config
from vlmdet.errors import UsageError
from vlmdet.experiment import (PRESETS, Arm, grid_table, make_arms, parse_seeds, parse_vary, run_grid, run_name,
                               run_overrides, same_settings, shown_path, split_values)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("text, parts", [
    ("1e-4,5e-4", ["1e-4", "5e-4"]),
    ("{},{coord_gate: 1, coord_ce: 1}", ["{}", "{coord_gate: 1, coord_ce: 1}"]),
    ("[1,2],[3]", ["[1,2]", "[3]"]),
    ("'a,b', c", ["'a,b'", "c"]),
    ("soft", ["soft"]),
])
def test_split_values(text, parts):
    assert split_values(text) == parts


@pytest.mark.parametrize("text, rule", [
    ("training.learning_rate", "expected KEY=V1,V2"),
    ("=1,2", "expected KEY=V1,V2"),
    ("losses.coord_gate=0,,1", "expected KEY=V1,V2"),
    ("losses.coord_gate=0,0", "repeated"),
    ("seed=0,1", "--seeds"),
    ("training.max_steps=10,20", "--steps"),
])
def test_parse_vary_rejects(text, rule):
    with pytest.raises(UsageError, match=rule):
        parse_vary(text)


def test_arms_are_the_cross_product_first_values_first():
    arms = make_arms(["training.learning_rate=1e-3,1e-4", "stage2.a1_anchor={},{coord_gate: 1}"])
    assert [a.name for a in arms] == ["learning_rate=1e-3,a1_anchor=none", "learning_rate=1e-3,a1_anchor=coord_gate_1",
                                      "learning_rate=1e-4,a1_anchor=none", "learning_rate=1e-4,a1_anchor=coord_gate_1"]
    assert arms[3].overrides == ["training.learning_rate=1e-4", "stage2.a1_anchor={coord_gate: 1}"]
    assert make_arms([]) == [Arm("base", ())]
    # keys with the same last part keep their whole name
    assert make_arms(["losses.temperature=1", "stage2.softctx_temperature=2"])[0].name == \
        "temperature=1,softctx_temperature=2"
    assert make_arms(["losses.temperature=1", "rollout.temperature=2"])[0].name == \
        "losses.temperature=1,rollout.temperature=2"
    with pytest.raises(UsageError, match="same arm name"):
        make_arms(["prompt.user=a b,a_b"])
    with pytest.raises(UsageError, match="varied twice"):
        make_arms(["losses.w1=0,1", "losses.w1=2"])


def test_parse_seeds():
    assert parse_seeds("2,0,1") == [2, 0, 1]
    for bad in ("0,x", "0,0", "-1", ""):
        with pytest.raises(UsageError, match="--seeds"):
            parse_seeds(bad)


def test_grid_table_paired_deltas_by_hand():
    arms, seeds, steps = ["base", "lr"], [0, 1, 2], [0, 300]
    values = {}
    for s, (b0, b, a) in enumerate([(0.657, 0.60, 0.70), (0.657, 0.55, 0.64), (0.657, 0.58, 0.66)]):
        values.update({("base", s, 0): b0, ("base", s, 300): b, ("lr", s, 0): b0, ("lr", s, 300): a})
    t = grid_table(values, arms, seeds, steps)
    assert t["lr"]["per_step"][300].mean == pytest.approx(2.0 / 3)
    d = t["lr"]["vs_baseline"][300]            # differences 0.10, 0.09, 0.08
    assert d.mean == pytest.approx(0.09) and d.std == pytest.approx(0.01)
    assert d.lo == pytest.approx(0.09 - 4.303 * 0.01 / math.sqrt(3), abs=1e-4) and d.excludes_zero
    up = t["lr"]["vs_start"][300]              # 0.043, -0.017, 0.003: the interval covers 0
    assert up.mean == pytest.approx(2.0 / 3 - 0.657) and not up.excludes_zero
    assert t["base"]["vs_baseline"][300].mean == 0.0
    # a missing run leaves its seed out of the pairs
    del values[("lr", 2, 300)]
    assert grid_table(values, arms, seeds, steps)["lr"]["vs_baseline"][300].n == 2


def test_gate_ablation_arms_differ_only_in_grad_mode_gate_name():
    p = PRESETS["gate-ablation"]
    arms = make_arms(p["vary"])
    cfgs = {a.name: _flat(config_to_dict(load_config(p["config"](), run_overrides(a, 0, [100, 200, 300], "CKPT",
                                                                                   Path("/x"), [], False))))
            for a in arms}
    assert list(cfgs) == ["softctx_grad_mode=unroll,coord_gate=0", "softctx_grad_mode=unroll,coord_gate=1",
                          "softctx_grad_mode=em_detach,coord_gate=0", "softctx_grad_mode=em_detach,coord_gate=1"]
    base = cfgs["softctx_grad_mode=unroll,coord_gate=0"]
    for name, cfg in cfgs.items():
        diff = {k for k in base if base[k] != cfg[k]}
        expected = {"run_name"} | ({"stage2.softctx_grad_mode"} if "em_detach" in name else set()) \
            | ({"losses.coord_gate"} if name.endswith("=1") else set())
        assert diff == (expected if cfg is not base else set()), name
    # the mechanism under test: no CE at coord slots, Channel-A only, fixed eval steps, same start
    assert base["losses.ce_on_coord_slots"] is False and base["losses.coord_gate"] == 0.0
    assert base["stage2.b_ratio"] == 0.0 and base["stage"] == 2
    assert base["eval.steps"] == [100, 200, 300] and base["eval.eval_steps"] == 0
    assert base["training.max_steps"] == 300 and base["model.name_or_path"] == "CKPT" and base["seed"] == 0
    assert base["run_name"] == "softctx_grad_mode=unroll,coord_gate=0,seed=0"


def test_seeds_change_only_the_seed():
    arm = make_arms(["training.learning_rate=1e-4"])[0]
    cfg = [_flat(config_to_dict(load_config(PRESETS["gate-ablation"]["config"](),
                                            run_overrides(arm, s, [5, 10], "C", Path("/x"), [], True))))
           for s in (0, 1)]
    assert {k for k in cfg[0] if cfg[0][k] != cfg[1][k]} == {"seed", "run_name"}
    # --keep-checkpoints: weights at every eval step (gcd of the steps), model only
    assert cfg[0]["training.save_steps"] == 5 and cfg[0]["training.save_total_limit"] is None
    assert cfg[0]["training.extra.save_only_model"] is True


def test_bad_arguments(tmp_path, capsys):
    cfg = PRESETS["gate-ablation"]["config"]()
    with pytest.raises(UsageError, match="--stage1"):
        run_grid(cfg, [], [0], [1], tmp_path, stage1=str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="--steps"):
        run_grid(cfg, [], [0], [0, 5], tmp_path)
    with pytest.raises(UsageError, match="--set seed"):
        run_grid(cfg, [], [0], [5], tmp_path, sets=["seed=3"])
    with pytest.raises(UsageError, match="did you mean"):   # every run's config is checked before any work
        run_grid(cfg, ["training.learnig_rate=1,2"], [0], [5], tmp_path, stage1="tiny")
    assert not (tmp_path / "runs").exists()
    assert main(["experiment", "gate-ablation", "--steps", "a,b", "--out", str(tmp_path)]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["experiment", "grid", str(cfg), "--seeds", "0,x", "--steps", "5", "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err


def _ckpt(folder: Path, weights: bytes) -> str:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    return str(folder)


def test_same_settings_allows_a_moved_grid_and_a_copied_start(tmp_path):
    a, copy, other = (_ckpt(tmp_path / n, w) for n, w in (("a", b"w1"), ("copy", b"w1"), ("other", b"w2")))
    done = ["data.train=/old/data/train.jsonl", "losses.coord_gate=0", f"model.name_or_path={a}",
            "output_dir=/old/runs"]
    moved = ["data.train=/new/g/data/train.jsonl", "losses.coord_gate=0", f"model.name_or_path={copy}",
             "output_dir=/new/g/runs"]
    assert same_settings(done, done) and same_settings(done, moved)
    cases = [(1, "losses.coord_gate=1"),                      # another setting
             (2, f"model.name_or_path={other}"),             # other weights
             (2, f"model.name_or_path={tmp_path / 'none'}"),  # no weights to compare
             (0, "data.train=/new/g/data/other.jsonl")]      # another file in the moved folder
    for i, changed in cases:
        assert not same_settings(done, moved[:i] + [changed] + moved[i + 1:]), changed
    assert not same_settings(done, moved[:-1])


def test_shown_path_is_relative_inside_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path(str(tmp_path / "src" / "ckpt")) == "src/ckpt"
    assert shown_path("src/ckpt") == "src/ckpt" and shown_path("tiny") == "tiny"
    assert shown_path("/elsewhere/ckpt") == "/elsewhere/ckpt"


def _metrics(run: Path, step: int) -> dict:
    return json.loads((run / "eval" / f"step_{step:06d}" / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_grid_smoke_resume_and_reeval(tmp_path):
    cfg = PRESETS["gate-ablation"]["config"]()
    lines: list[str] = []
    args = dict(stage1=None, smoke=True, keep_checkpoints=True, say=lines.append)
    s = run_grid(cfg, ["losses.coord_gate=0,1"], [0, 1], [100], tmp_path, **args)
    names = [run_name(a, seed) for seed in (0, 1) for a in make_arms(["losses.coord_gate=0,1"])]
    assert [Path(r).name for r in s["runs"]] == names == ["coord_gate=0,seed=0", "coord_gate=1,seed=0",
                                                          "coord_gate=0,seed=1", "coord_gate=1,seed=1"]
    runs = [tmp_path / "runs" / n for n in names]
    for run in runs:
        info = json.loads((run / "grid.json").read_text())
        assert info["steps"] == [2] and info["seconds"] > 0
        assert "eval_rollout/parse_dropped_invalid" in _metrics(run, 2)
        assert (run / "checkpoint-2").is_dir()
        gates = [json.loads(line) for line in open(run / "logging.jsonl")]
        assert any("loss/coord_gate" in e for e in gates), "loss/coord_gate is logged, gate on or off"
    # step 0 is the same start under the same eval settings in every run
    step0 = [{k: v for k, v in _metrics(r, 0).items() if not k.startswith("eval_time")} for r in runs]
    assert all(x == step0[0] for x in step0) and len(list((tmp_path / "start").iterdir())) == 1
    assert sum("ETA" in line for line in lines) == 4
    md = (tmp_path / "grid.md").read_text()
    assert "## bbox_AP50" in md and "| coord_gate=1 |" in md and "(baseline)" in md
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert set(grid["values"]["bbox_AP50"]["coord_gate=1"]) == {"0", "1"}
    assert grid["summary"]["bbox_AP50"]["coord_gate=1"]["per_step"]["2"]["n"] == 2
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "plots" / "bbox_AP50.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![bbox_AP50](plots/bbox_AP50.png)" in md

    # the same command again trains nothing; a run without grid.json (killed) is redone, alone
    stamp = {r: (r / "grid.json").stat().st_mtime_ns for r in runs}
    (runs[2] / "grid.json").unlink()
    lines.clear()
    run_grid(cfg, ["losses.coord_gate=0,1"], [0, 1], [100], tmp_path, **args)
    assert sum("skipped" in line for line in lines) == 3 and sum("training" in line for line in lines) == 1
    assert "coord_gate=0,seed=1: training" in "\n".join(lines)
    assert all((r / "grid.json").stat().st_mtime_ns == stamp[r] for r in runs if r != runs[2])

    # a finished run made with other settings is not silently mixed in
    with pytest.raises(UsageError, match="other settings"):
        run_grid(cfg, ["losses.coord_gate=0,1"], [0, 1], [100], tmp_path, sets=["losses.w1=0.5"], **args)

    # --reeval: runs evaluated by other evaluation code are evaluated again from their checkpoints
    info = json.loads((runs[1] / "grid.json").read_text())
    (runs[1] / "grid.json").write_text(json.dumps({**info, "eval_code": "older"}))
    (runs[1] / "eval" / "step_000002" / "metrics.json").write_text(json.dumps({"step": 2, "metrics": {}}))
    lines.clear()
    run_grid(cfg, ["losses.coord_gate=0,1"], [0, 1], [100], tmp_path, reeval=True, **args)
    assert sum("re-evaluated steps [0, 2]" in line for line in lines) == 1
    assert "eval_rollout/parse_dropped_invalid" in _metrics(runs[1], 2)
    assert json.loads((runs[1] / "grid.json").read_text())["eval_code"] == info["eval_code"]


ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "results" / "README.md"]


def documented_experiment_commands(docs=DOCS, command: str = "experiment", grids: bool = True) -> list[list[str]]:
    """Every `vlmdet <command> ...` command in the bash blocks of README.md and docs/results/README.md
    (continuation lines joined, comments dropped), as argv without the leading `vlmdet`; `grids`: of the
    `experiment` commands only the grids (`grid` and the presets; `bootstrap`: tests/test_experiment_bootstrap.py)."""
    import shlex

    cmds = []
    for doc in docs:
        for block in doc.read_text().split("```bash")[1:]:
            text = block.split("```", 1)[0].replace("\\\n", " ")
            for line in text.splitlines():
                argv = shlex.split(line, comments=True)
                if argv[:2] == ["vlmdet", command] and not (grids and command == "experiment"
                                                             and argv[2] not in ("grid", *PRESETS)):
                    cmds.append(argv[1:])
    return cmds


def test_docs_show_experiment_commands():
    cmds = documented_experiment_commands()
    assert any(c[1] == "grid" for c in cmds) and any(c[1] == "gate-ablation" for c in cmds)


def test_documented_eval_commands_name_documented_runs():
    """docs/results/README.md's `vlmdet eval` commands parse, and each `--checkpoint` is the shipped start or
    `checkpoint-final` of a run that one of its documented grids makes (`--out` + runs/<arm>,seed=<s>)."""
    import argparse
    import importlib

    from vlmdet.cli import COMMANDS

    parser = argparse.ArgumentParser(exit_on_error=False)
    importlib.import_module(COMMANDS["eval"][0]).add_arguments(parser)
    grids = documented_experiment_commands(DOCS[1:])
    made = set()
    for argv in grids:
        out = argv[argv.index("--out") + 1]
        seeds = argv[argv.index("--seeds") + 1].split(",")
        varies = [v for i, v in enumerate(argv) if argv[i - 1] == "--vary"] if argv[1] == "grid" else PRESETS[argv[1]]["vary"]
        made |= {f"{out}/runs/{run_name(a, int(s))}/checkpoint-final" for a in make_arms(varies) for s in seeds}
    evals = documented_experiment_commands(DOCS[1:], "eval")
    assert evals
    for argv in evals:
        args = parser.parse_args(argv[1:])
        assert args.checkpoint == "src/vlmdet/resources/demo_stage1" or args.checkpoint in made, args.checkpoint


def _with_out(argv: list[str], out: Path) -> list[str]:
    argv = list(argv)
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(out)
    else:
        argv += ["--out", str(out)]
    return argv


@pytest.mark.parametrize("argv", documented_experiment_commands(), ids=lambda a: " ".join(a[1:3]))
def test_documented_experiment_commands_check(argv, tmp_path, monkeypatch, capsys):
    """Each documented command, as written (output in a temporary folder), with `--dry-run`: every run's
    config loads and the runs are the documented grid; nothing is written."""
    monkeypatch.chdir(ROOT)
    assert main(_with_out(argv, tmp_path / "out") + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    seeds = argv[argv.index("--seeds") + 1].split(",") if "--seeds" in argv else ["0", "1", "2"]
    n_arms = math.prod(len(split_values(v.partition("=")[2])) for i, v in enumerate(argv) if argv[i - 1] == "--vary") \
        if argv[1] == "grid" else 4
    assert f"{n_arms * len(seeds)} runs, {n_arms * len(seeds)} to train" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("argv", documented_experiment_commands(DOCS[:1]), ids=lambda a: " ".join(a[1:3]))
def test_documented_experiment_commands_smoke(argv, tmp_path, monkeypatch):
    """The README's grid and gate-ablation commands end to end with `--smoke`."""
    monkeypatch.chdir(ROOT)
    assert main(_with_out(argv, tmp_path / "out") + ["--smoke"]) == 0
    assert "## bbox_AP50" in (tmp_path / "out" / "grid.md").read_text()


def test_grid_report_from_run_folders(tmp_path):
    """grid.md / grid.json from hand-written run folders: one seed has no interval (JSON null, "(n=1)"),
    a run without grid.json counts as not finished."""
    from vlmdet.experiment import write_grid_report

    arms = make_arms(["training.learning_rate=1e-3,1e-4"])
    ap = {("learning_rate=1e-3", 0): 0.60, ("learning_rate=1e-4", 0): 0.66}
    for (arm, seed), v in ap.items():
        run = tmp_path / "runs" / f"{arm},seed={seed}"
        for step, value in ((0, 0.657), (300, v)):
            (run / "eval" / f"step_{step:06d}").mkdir(parents=True)
            (run / "eval" / f"step_{step:06d}" / "metrics.json").write_text(
                json.dumps({"step": step, "metrics": {"eval_rollout/bbox_AP50": value}}))
        (run / "grid.json").write_text(json.dumps({"seconds": 100.0, "eval_code": "abc"}))
    (tmp_path / "runs" / "learning_rate=1e-4,seed=1").mkdir()  # started, never finished
    paths = write_grid_report(tmp_path, Path("c.yaml"), arms, [0, 1], [0, 300], "tiny", "T")
    md = paths["md"].read_text()
    assert "Finished runs: 2 of 4; training + eval wall time 200 s" in md
    assert "| learning_rate=1e-4 | 0.657 | 0.660 | +0.060 (n=1) | +0.003 (n=1) |" in md
    assert "| learning_rate=1e-4,seed=1 | not finished | – |" in md
    grid = json.loads(paths["json"].read_text())
    s = grid["summary"]["bbox_AP50"]["learning_rate=1e-4"]["vs_baseline"]["300"]
    assert s["n"] == 1 and s["mean"] == pytest.approx(0.06) and s["std"] is None and s["lo"] is None
    assert grid["values"]["bbox_AP50"]["learning_rate=1e-3"] == {"0": {"0": 0.657, "300": 0.6}, "1": {}}
    assert (tmp_path / "plots" / "bbox_AP50.png").is_file()


def test_train_images_sets_the_size_of_the_grids_synthetic_set(tmp_path):
    """`--train-images N`: OUT/data is the demo's set with N training images (same val set); a config that
    names its own data refuses it."""
    from vlmdet.experiment import _data_overrides

    cfg = PRESETS["gate-ablation"]["config"]()
    over = _data_overrides(cfg, tmp_path, smoke=False, train_images=12)
    assert over == [f"data.train={(tmp_path / 'data' / 'train.jsonl').resolve()}",
                    f"data.val={(tmp_path / 'data' / 'val.jsonl').resolve()}"]
    lines = (tmp_path / "data" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len((tmp_path / "data" / "val.jsonl").read_text().splitlines()) == 100
    named = tmp_path / "named.yaml"
    named.write_text(f"extends: {cfg}\ndata: {{train: {tmp_path / 'data' / 'train.jsonl'}}}\n")
    with pytest.raises(UsageError, match="--train-images"):
        _data_overrides(named, tmp_path, smoke=False, train_images=12)
