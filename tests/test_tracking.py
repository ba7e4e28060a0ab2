"""vlmdet.train.tracking: one naming rule for TensorBoard and W&B, monitor images; and the console of a
real short run (banner, one line per log window and eval, no raw dicts, no escape codes)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vlmdet.rundir import RunDir
from vlmdet.train.tracking import WandbTracker, monitor_pngs, tracker_name, tracker_scalars

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("key,name", [
    ("eval_rollout/bbox_AP50", "eval_rollout/bbox_AP50"),        # never eval/rollout/bbox_AP50
    ("eval_rollout/drop/malformed", "eval_rollout/drop/malformed"),
    ("eval_rollout_constrained/f1", "eval_rollout_constrained/f1"),
    ("eval_time/total_s", "eval_time/total_s"),
    ("loss/token_ce", "loss/token_ce"), ("coord_diag/coord_vocab_mass_mean", "coord_diag/coord_vocab_mass_mean"),
    ("loss", "train/loss"), ("grad_norm", "train/grad_norm"), ("learning_rate", "train/learning_rate"),
    ("epoch", "train/epoch"),
])
def test_tracker_name(key, name):
    assert tracker_name(key) == name


def test_tracker_scalars_keeps_numbers_only():
    assert tracker_scalars({"loss": 1, "flag": True, "note": "x", "loss/w1": 0.5}) == {"train/loss": 1.0, "loss/w1": 0.5}


def _dump_with_png(tmp_path, step=3) -> RunDir:
    run = RunDir(tmp_path / "run")
    png = run.root / "monitor_dumps" / f"step_{step:06d}" / "img_a.png"
    png.parent.mkdir(parents=True)
    Image.new("RGB", (8, 6), (255, 0, 255)).save(png)
    run.dump_path(step).write_text(json.dumps({"step": step, "samples": [
        {"image_id": "img/a", "png": str(png)}, {"image_id": "no_png"}, {"image_id": "gone", "png": str(tmp_path / "x.png")}]}))
    return run


def test_monitor_pngs_lists_the_drawn_samples(tmp_path):
    run = _dump_with_png(tmp_path)
    assert [(tag, p.name, i) for tag, p, i in monitor_pngs(run, 3)] == [("monitor/0_img_a", "img_a.png", "img/a")]
    assert monitor_pngs(run, 4) == []


def test_wandb_tracker_logs_names_and_images(tmp_path):
    """W&B is not installed here: the tracker is given a stand-in `wandb` module (log + Image)."""
    logged = []

    class FakeImage:
        def __init__(self, path, caption=None):
            self.path, self.caption = path, caption

    tracker = WandbTracker.__new__(WandbTracker)  # WandbCallback.__init__ needs the real package
    tracker._wandb = SimpleNamespace(log=logged.append, Image=FakeImage)
    tracker._initialized = True
    tracker.run = _dump_with_png(tmp_path)
    state = SimpleNamespace(is_world_process_zero=True, global_step=3)
    tracker.on_log(None, state, None, logs={"loss": 2.0, "loss/token_ce": 1.5})
    tracker.on_log(None, state, None, logs={"eval_rollout/f1": 0.5, "eval_time/total_s": 1.0})
    assert logged[0] == {"train/loss": 2.0, "loss/token_ce": 1.5, "train/global_step": 3}
    images = logged[1].pop("monitor/examples")
    assert logged[1] == {"eval_rollout/f1": 0.5, "eval_time/total_s": 1.0, "train/global_step": 3}
    assert [(Path(im.path).name, im.caption) for im in images] == [("img_a.png", "img/a")]


def _tb_tags(folder: Path) -> tuple[dict, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = {}, {}
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend((e.step, e.width, e.height) for e in acc.Images(tag))
    return scalars, images


@pytest.mark.slow
def test_short_run_console_and_tensorboard(tmp_path, capsys):
    from vlmdet.cli import main
    from vlmdet.data.synth import make_synth

    make_synth(tmp_path / "d", n_train=4, n_val=2, seed=1, size=64)
    rc = main(["train", str(REPO / "configs/smoke/tiny_stage1.yaml"), f"data.train={tmp_path / 'd' / 'train.jsonl'}",
               f"data.val={tmp_path / 'd' / 'val.jsonl'}", f"output_dir={tmp_path / 'runs'}", "training.max_steps=2",
               "training.per_device_train_batch_size=2", "training.report_to=[tensorboard]", "eval.eval_steps=2",
               "eval.max_samples=2", "rollout.max_new_tokens=16", "monitor.draw_images=true"])
    assert rc == 0
    captured = capsys.readouterr()
    out = captured.out
    run = tmp_path / "runs" / "smoke_tiny_stage1"
    # the banner
    assert f"  run dir      {run.resolve()}" in out
    assert f"  config       {(run / 'config.yaml').resolve()} (resolved)" in out
    assert "  seed         0" in out and "  device       cpu (" in out
    assert f"  TensorBoard  tensorboard --logdir {(run / 'tb').resolve()}" in out
    # one compact line per log window and per eval, no raw Trainer dicts, no escape codes (not a TTY here)
    lines = out.splitlines()
    assert [ln.split("  ")[0] for ln in lines if ln.startswith(("step ", "eval @"))] == ["step 1/2", "step 2/2", "eval @ step 2"]
    assert "{'loss'" not in out and "'eval_rollout/" not in out
    assert "\x1b[" not in out + captured.err and "\r" not in out
    assert max(len(ln) for ln in lines) < 200
    # the full dicts are in logging.jsonl
    events = [json.loads(line) for line in (run / "logging.jsonl").read_text().splitlines()]
    logged = {k for e in events for k in e}
    assert {"loss", "loss/token_ce", "eval_rollout/f1", "eval_rollout/drop/malformed"} <= logged
    # TensorBoard: the names of logging.jsonl under the one rule, the monitor images at the eval step
    scalars, images = _tb_tags(run / "tb")
    assert {"eval_rollout/f1", "eval_rollout/bbox_AP50", "loss/token_ce", "train/loss", "train/learning_rate"} <= set(scalars)
    assert not [t for t in scalars if t.startswith("eval/") or t.startswith("train/eval_rollout")]
    numeric = {k for e in events for k, v in e.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
    assert {tracker_name(k) for k in numeric} <= set(scalars)
    f1 = next(e["eval_rollout/f1"] for e in events if "eval_rollout/f1" in e)
    assert scalars["eval_rollout/f1"] == [(2, pytest.approx(f1))]
    dump = json.loads((run / "monitor_dumps" / "step_000002.json").read_text())
    assert len(images) == len(dump["samples"]) == 2
    for tag, shots in images.items():
        assert tag.startswith("monitor/") and [s[0] for s in shots] == [2]
        png = np.asarray(Image.open(next(s["png"] for s in dump["samples"] if tag.endswith(s["image_id"]))))
        assert (shots[0][2], shots[0][1]) == png.shape[:2]


#: `vlmdet train` SIGKILL-ed at the start of the step-4 save: steps 3 and 4 are logged (TensorBoard
#: included), the newest checkpoint is checkpoint-2
KILL_AT_SAVE_4 = """
import os, signal, sys
from transformers import Trainer
real = Trainer._save_checkpoint
def killed(self, *args, **kwargs):
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)
Trainer._save_checkpoint = killed
from vlmdet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _tb_scalar_steps(folder: Path) -> dict[str, list[int]]:
    """Scalar steps per tag as TensorBoard shows them: the whole folder read by one accumulator, which
    applies a later writer's purge to the events of earlier files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_resumed_run_logs_each_step_once_in_tensorboard(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from vlmdet.data.synth import make_synth

    make_synth(tmp_path / "d", n_train=8, n_val=1, seed=3, size=64)
    argv = ["train", str(REPO / "configs/stage1/tiny.yaml"), f"data.train={tmp_path / 'd' / 'train.jsonl'}",
            f"output_dir={tmp_path / 'runs'}", "run_name=r", "training.max_steps=5", "training.save_steps=2",
            "training.logging_steps=1", "training.per_device_train_batch_size=2", "training.report_to=[tensorboard]",
            "eval.eval_steps=0", "data.val=null"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_SAVE_4, *argv], capture_output=True, text=True, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    tb = tmp_path / "runs" / "r" / "tb"
    assert _tb_scalar_steps(tb)["train/loss"] == [1, 2, 3, 4]  # 3 and 4 come after checkpoint-2
    resumed = subprocess.run([sys.executable, "-m", "vlmdet.cli", *argv, "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(tb.rglob("events.out.tfevents.*"))) == 2  # the killed run's file is still there
    steps = _tb_scalar_steps(tb)
    assert {"train/loss", "train/learning_rate", "train/grad_norm"} <= set(steps)
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm"):
        assert steps[tag] == [1, 2, 3, 4, 5], tag  # once each, step 2 (logged before its checkpoint) kept
    logged = [json.loads(line)["step"] for line in (tmp_path / "runs" / "r" / "logging.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == [1, 2, 3, 4, 5]
