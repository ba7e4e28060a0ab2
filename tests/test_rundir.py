"""rundir.py: file names, logging.jsonl events, create() artifacts and the overwrite policy."""

import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path

import pytest

from vlmdet.config import Config, load_config
from vlmdet.errors import UsageError
from vlmdet.rundir import RunDir, git_state

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **kw) -> Config:
    cfg = Config(output_dir=str(tmp_path / "runs"), run_name="r1", seed=5)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_paths(tmp_path):
    run = RunDir(tmp_path)
    assert run.config_path == tmp_path / "config.yaml"
    assert run.log_path == tmp_path / "logging.jsonl"
    assert run.eval_dir(7) == tmp_path / "eval" / "step_000007"
    assert run.dump_path(300) == tmp_path / "monitor_dumps" / "step_000300.json"
    assert run.dump_path(1234567).name == "step_1234567.json"


def test_log_appends_step_and_time(tmp_path):
    run = RunDir(tmp_path)
    row = run.log({"loss/total": 1.5}, step=3)
    assert row["step"] == 3 and isinstance(row["time"], float) and row["loss/total"] == 1.5
    run.log({"step": 4, "time": 12.0, "eval_rollout/f1": 0.5})
    lines = [json.loads(l) for l in run.log_path.read_text().splitlines()]
    assert lines[0] == row
    assert lines[1] == {"step": 4, "time": 12.0, "eval_rollout/f1": 0.5}
    assert list(lines[1])[:2] == ["step", "time"]
    with pytest.raises(ValueError, match="int step"):
        run.log({"x": 1})


def test_checkpoints_sorted_by_step(tmp_path):
    for name in ("checkpoint-20", "checkpoint-3", "checkpoint-x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-99").write_text("a file, not a checkpoint")
    assert [p.name for p in RunDir(tmp_path).checkpoints()] == ["checkpoint-3", "checkpoint-20"]


def test_create_writes_resolved_config_and_run_json(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.training.max_steps = 17
    argv = ["vlmdet", "train", "c.yaml", "training.max_steps=17", "a b"]
    run = RunDir.create(cfg, argv)
    assert run.root == tmp_path / "runs" / "r1"
    assert load_config(run.config_path) == cfg
    info = json.loads(run.run_json_path.read_text())
    assert info["argv"] == argv and info["command"].endswith("training.max_steps=17 'a b'")
    assert info["seed"] == 5 and info["run_name"] == "r1" and info["resumed"] is False
    assert info["torch"] == importlib.metadata.version("torch")
    assert info["transformers"] == importlib.metadata.version("transformers")
    assert info["python"] == platform.python_version()
    assert info["hostname"] and info["start_time"].endswith("+00:00")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # the source tree is a git checkout
        assert info["git"]["commit"] == head.stdout.strip()
        assert isinstance(info["git"]["dirty"], bool)


def test_git_state_outside_a_repo(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_existing_run_with_checkpoints_is_refused_unless_asked(tmp_path):
    cfg = _cfg(tmp_path)
    run = RunDir.create(cfg, ["x"])
    (run.root / "checkpoint-10").mkdir()
    run.log({"step": 10})
    with pytest.raises(UsageError, match=r"already has checkpoints \(checkpoint-10\).*--resume.*--overwrite"):
        RunDir.create(cfg, ["x"])
    assert (run.root / "checkpoint-10").is_dir()
    # resume keeps everything
    RunDir.create(cfg, ["x", "--resume"], resume=True)
    assert (run.root / "checkpoint-10").is_dir() and run.log_path.exists()
    assert json.loads(run.run_json_path.read_text())["resumed"] is True
    # overwrite starts over
    RunDir.create(cfg, ["x"], overwrite=True)
    assert not (run.root / "checkpoint-10").exists() and not run.log_path.exists()
    assert run.config_path.exists()


def test_existing_run_without_checkpoints_is_replaced(tmp_path):
    cfg = _cfg(tmp_path)
    run = RunDir.create(cfg, ["x"])
    run.log({"step": 1})
    RunDir.create(cfg, ["x"])
    assert not run.log_path.exists()


def test_foreign_folder_is_never_deleted(tmp_path):
    cfg = _cfg(tmp_path)
    root = tmp_path / "runs" / "r1"
    root.mkdir(parents=True)
    (root / "precious.txt").write_text("keep")
    with pytest.raises(UsageError, match="not a vlmdet run dir"):
        RunDir.create(cfg, ["x"], overwrite=True)
    assert (root / "precious.txt").read_text() == "keep"
    empty = _cfg(tmp_path, run_name="empty")
    (tmp_path / "runs" / "empty").mkdir()
    assert RunDir.create(empty, ["x"]).config_path.exists()  # an empty folder is fine


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_bad_run_name(tmp_path, name):
    with pytest.raises(UsageError, match="run_name must be a plain folder name"):
        RunDir.create(_cfg(tmp_path, run_name=name), ["x"])
