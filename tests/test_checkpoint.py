"""train/checkpoint.py: staged checkpoint writes, completion records, choosing what to resume, rotation;
and end to end: a kill during a save, a full disk during a save, a finished run, two writers."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlmdet.train import checkpoint as C

REPO = Path(__file__).resolve().parents[1]


def _write_fake(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)


FAKE = {"trainer_state.json": b'{"global_step": 4}', "optimizer.pt": b"o" * 10, "weights.bin": b"w" * 100}


def test_write_staged_renames_a_sealed_folder(tmp_path):
    target = C.write_staged(tmp_path / "checkpoint-4", lambda f: _write_fake(f, FAKE), step=4)
    assert target == tmp_path / "checkpoint-4"
    record = json.loads((target / C.COMPLETE_NAME).read_text())
    assert record == {"step": 4, "files": {"optimizer.pt": 10, "trainer_state.json": 18, "weights.bin": 100}}
    assert C.checkpoint_problem(target) is None
    assert not (tmp_path / C.STAGING_DIR).exists()  # the staging folder goes when empty


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / "weights.bin").write_bytes(b"w" * 50), "weights.bin has 50 bytes, the completion record says 100"),
        (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda f: (f / C.COMPLETE_NAME).write_text("{not json"), "checkpoint_complete.json does not read"),
        # no record (an in-place save by older code): the files themselves are checked
        (lambda f: (f / C.COMPLETE_NAME).unlink(), "no completion record and no model*.safetensors"),
    ],
)
def test_checkpoint_problem_names_the_damage(tmp_path, damage, reason):
    target = C.write_staged(tmp_path / "checkpoint-4", lambda f: _write_fake(f, FAKE), step=4)
    damage(target)
    assert C.checkpoint_problem(target) == reason


def test_legacy_checkpoint_with_a_truncated_safetensors_is_incomplete(tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    save_file({"w": torch.zeros(64)}, str(folder / "model.safetensors"))
    _write_fake(folder, {"trainer_state.json": b'{"global_step": 2}', "optimizer.pt": b"o", "scheduler.pt": b"s"})
    assert C.checkpoint_problem(folder) is None  # a complete in-place checkpoint still resumes
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:40])
    assert C.checkpoint_problem(folder).startswith("no completion record and model.safetensors does not read")


def test_newest_complete_skips_newer_incomplete_ones(tmp_path):
    for step in (2, 4, 6):
        C.write_staged(tmp_path / f"checkpoint-{step}", lambda f: _write_fake(f, FAKE), step=step)
    (tmp_path / "checkpoint-6" / "weights.bin").write_bytes(b"")
    (tmp_path / "checkpoint-8").mkdir()  # an empty folder, e.g. a save killed at its first file
    (tmp_path / "checkpoint-final").mkdir()  # not a step checkpoint
    folder, skipped = C.newest_complete(tmp_path)
    assert folder == tmp_path / "checkpoint-4"
    assert [(p.name, why) for p, why in skipped] == [
        ("checkpoint-8", "no completion record and no readable trainer_state.json"),
        ("checkpoint-6", "weights.bin has 0 bytes, the completion record says 100"),
    ]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1024\nmore")])
def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, error):
    C.write_staged(tmp_path / "checkpoint-2", lambda f: _write_fake(f, FAKE), step=2)

    def half_then_fail(folder):
        (folder / "weights.bin").write_bytes(b"w" * 7)
        raise error

    with pytest.raises(C.CheckpointError) as info:
        C.write_staged(tmp_path / "checkpoint-4", half_then_fail, step=4)
    message = str(info.value)
    assert "\n" not in message and message.endswith("checkpoint-2 is intact")
    assert "checkpoint-4: checkpoint not written: " in message
    assert ("No space left on device" in message) == isinstance(error, OSError)
    assert not (tmp_path / "checkpoint-4").exists() and not (tmp_path / C.STAGING_DIR).exists()
    assert C.newest_complete(tmp_path) == (tmp_path / "checkpoint-2", [])


def test_commit_replaces_an_existing_target(tmp_path):
    C.write_staged(tmp_path / "checkpoint-final", lambda f: _write_fake(f, {"a": b"old"}), step=2)
    C.write_staged(tmp_path / "checkpoint-final", lambda f: _write_fake(f, {"b": b"new"}), step=4)
    assert sorted(p.name for p in (tmp_path / "checkpoint-final").iterdir()) == ["b", C.COMPLETE_NAME]
    assert not (tmp_path / C.STAGING_DIR).exists()


@pytest.mark.parametrize(
    "steps, keep, protect, left",
    [
        ([2, 4, 6, 8], 2, None, [6, 8]),
        ([2, 4, 6, 8], 2, 2, [2, 8]),  # the best is kept, and the newest always
        ([2, 4, 6, 8], 1, 4, [4, 8]),
        ([2, 4, 6], None, None, [2, 4, 6]),
        ([2, 4, 6], 5, None, [2, 4, 6]),
    ],
)
def test_rotate(tmp_path, steps, keep, protect, left):
    for s in steps:
        (tmp_path / f"checkpoint-{s}").mkdir()
    (tmp_path / "checkpoint-final").mkdir()
    C.rotate(tmp_path, keep, protect=tmp_path / f"checkpoint-{protect}" if protect else None)
    assert [C.step_of(p) for p in C.step_checkpoints(tmp_path)] == left
    assert (tmp_path / "checkpoint-final").is_dir()


# ------------------------------------------------------------------------------------------------
# end to end with the tiny model

TRAIN = ["training.save_steps=2", "training.logging_steps=1", "training.per_device_train_batch_size=2",
         "eval.eval_steps=0", "data.val=null", "run_name=r"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from vlmdet.data.synth import make_synth

    root = tmp_path_factory.mktemp("data")
    make_synth(root, n_train=8, n_val=1, seed=3, size=64)
    return root / "train.jsonl"


def _argv(data, out, *extra):
    return ["train", str(REPO / "configs/stage1/tiny.yaml"), f"data.train={data}", f"output_dir={out}", *TRAIN, *extra]


def _cli(argv, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vlmdet.cli", *argv], capture_output=True, text=True, env=env, **kw)


def _loss_steps(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "logging.jsonl").read_text().splitlines()) if "loss" in r]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


#: run `vlmdet train`, SIGKILL-ing the process in the middle of the step-4 save: after the weights
#: and the optimizer are written, before the RNG state and trainer_state.json
KILL_IN_SAVE = textwrap.dedent("""
    import os, signal, sys
    from transformers import Trainer
    real = Trainer._save_rng_state
    def killed(self, output_dir):
        if self.state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, output_dir)
    Trainer._save_rng_state = killed
    from vlmdet.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_kill_during_save_then_resume_loses_nothing(tmp_path, data):
    out = tmp_path / "runs"
    argv = _argv(data, out, "training.max_steps=6")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, *argv], capture_output=True, text=True, env=env)
    assert killed.returncode == -signal.SIGKILL
    run = out / "r"
    assert [p.name for p in C.step_checkpoints(run)] == ["checkpoint-2"]  # the half save is not visible
    assert sorted(p.name for p in (run / C.STAGING_DIR).iterdir()) == ["checkpoint-4"]
    assert _loss_steps(run) == [1, 2, 3, 4]  # step 3 and 4 were logged after the last checkpoint
    # what an in-place save by older code leaves: a checkpoint-4 with a truncated model file
    shutil.copytree(run / "checkpoint-2", run / "checkpoint-4")
    (run / "checkpoint-4" / C.COMPLETE_NAME).unlink()
    (run / "checkpoint-4" / "model.safetensors").write_bytes(b"\x10\x00")

    resumed = _cli([*argv, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {run / 'checkpoint-2'}" in resumed.stderr
    assert "skipping checkpoint-4: no completion record and model.safetensors does not read" in resumed.stderr
    assert "deleted checkpoint-4 (an interrupted save)" in resumed.stderr
    assert "logging.jsonl: dropped 2 rows logged after checkpoint-2" in resumed.stderr
    assert _loss_steps(run) == [1, 2, 3, 4, 5, 6]  # each step once
    assert C.checkpoint_problem(run / "checkpoint-4") is None and not (run / C.STAGING_DIR).exists()

    # the same run without the kill ends with the same weights
    straight = _cli(_argv(data, tmp_path / "straight", "training.max_steps=6"))
    assert straight.returncode == 0, straight.stderr
    a, b = _weights(run / "checkpoint-final"), _weights(tmp_path / "straight" / "r" / "checkpoint-final")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)

    # a finished run refuses to train further unless max_steps grows
    again = _cli([*argv, "--resume"])
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip() == (f"vlmdet train: error: --resume: the run already reached step 6 "
                                    "(training.max_steps=6); raise training.max_steps to train further")
    assert sorted(p.name for p in C.step_checkpoints(run)) == ["checkpoint-4", "checkpoint-6"]


@pytest.mark.slow
def test_disk_full_during_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, data, monkeypatch, capsys):
    from transformers import Trainer

    from vlmdet.cli import main

    real = Trainer._save_optimizer_and_scheduler

    def full(self, output_dir):
        if self.state.global_step == 4:
            Path(output_dir, "optimizer.pt").write_bytes(b"\x00" * 100)  # a part was written, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full)
    rc = main(_argv(data, tmp_path, "training.max_steps=6"))
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    run = tmp_path / "r"
    assert rc == 2
    assert err == (f"vlmdet train: error: {run / 'checkpoint-4'}: checkpoint not written: No space left on device; "
                   "checkpoint-2 is intact")
    assert C.newest_complete(run) == (run / "checkpoint-2", [])
    assert not (run / C.STAGING_DIR).exists()


@pytest.mark.slow
def test_a_second_writer_fails_at_once_and_deletes_nothing(tmp_path, data, capsys):
    """A live run (another process holding the lock) in a run dir with no checkpoint yet: a second
    `vlmdet train` in the same dir must neither delete it nor write to it."""
    from vlmdet.cli import main
    from vlmdet.rundir import LOCK_NAME

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("run_name: r\n")
    (run / "logging.jsonl").write_text('{"step": 1, "time": 0.0, "loss": 1.0}\n')
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from vlmdet.rundir import RunLock
            with RunLock({str(run)!r}):
                print("locked", flush=True)
                time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        rc = main(_argv(data, tmp_path, "training.max_steps=2"))
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 2
        assert err.startswith(f"vlmdet train: error: {run}: in use by another run (pid {holder.pid}, host ")
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
        assert sorted(p.name for p in run.iterdir()) == sorted(["config.yaml", "logging.jsonl", LOCK_NAME])
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale and the next run takes it over
    rc = main(_argv(data, tmp_path, "training.max_steps=2"))
    assert rc == 0
    err = capsys.readouterr().err
    assert f"took over a stale lock of {run} ({{'pid': {holder.pid}" in err
    assert (run / LOCK_NAME).read_text() == ""  # released at the end
    assert _loss_steps(run) == [1, 2]  # the old run's rows were deleted with it, no interleaving


# two ranks (torchrun, gloo on CPU): the staged save and the resume through the real CLI code path

RANK_WORKER = r'''
import json, os, sys
import torch.distributed as dist
from transformers import Trainer
from vlmdet.config import load_config
from vlmdet.train.cli import train

out_path, resume, config, overrides = sys.argv[1], sys.argv[2] == "resume", sys.argv[3], sys.argv[4:]
seen = {"loaded_rng_from": None, "step_at_resume": None}
real_load_rng = Trainer._load_rng_state

def load_rng(self, checkpoint):
    seen["loaded_rng_from"], seen["step_at_resume"] = checkpoint, int(self.state.global_step)
    return real_load_rng(self, checkpoint)

Trainer._load_rng_state = load_rng
if resume and os.environ["RANK"] == "0":  # another run saves checkpoint-3 just before rank 0 takes the lock
    import shutil
    from pathlib import Path
    from vlmdet.rundir import RunLock
    from vlmdet.train import checkpoint as C
    real_enter = RunLock.__enter__

    def enter(self):
        ck2, ck3 = self.path.parent / "checkpoint-2", self.path.parent / "checkpoint-3"
        shutil.copytree(ck2, ck3)
        state = json.loads((ck3 / "trainer_state.json").read_text())
        (ck3 / "trainer_state.json").write_text(json.dumps({**state, "global_step": 3}))
        (ck3 / C.COMPLETE_NAME).unlink()
        C.seal(ck3, 3)
        return real_enter(self)

    RunLock.__enter__ = enter
summary = train(load_config(config, overrides), ["test_checkpoint"], resume=True if resume else None)
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, {"rank": dist.get_rank(), "summary": summary, **seen})
if dist.get_rank() == 0:
    with open(out_path, "w") as f:
        json.dump(gathered, f)
if dist.is_initialized():  # end the gloo threads before the interpreter does (else: abort at exit)
    dist.destroy_process_group()
'''


def _torchrun(tmp_path, resume: bool, overrides: list[str]) -> list[dict]:
    worker = tmp_path / "rank_worker.py"
    worker.write_text(RANK_WORKER)
    result = tmp_path / f"ranks_{'resume' if resume else 'first'}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(result), "resume" if resume else "first", str(REPO / "configs/stage1/tiny.yaml"), *overrides]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # ranks out of step wait for each other forever: end them all
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("torchrun hung (ranks out of step?)\n" + stderr[-6000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return sorted(json.loads(result.read_text()), key=lambda r: r["rank"])


@pytest.mark.slow
def test_two_ranks_save_staged_checkpoints_and_resume_from_the_same_step(tmp_path, data):
    out = tmp_path / "runs"
    common = [f"data.train={data}", f"output_dir={out}", "run_name=r", "training.logging_steps=1",
              "training.per_device_train_batch_size=2", "training.report_to=[]", "training.ddp_backend=gloo",
              "eval.eval_steps=0", "data.val=null", "training.save_steps=2"]
    run = out / "r"

    first = _torchrun(tmp_path, False, [*common, "training.max_steps=2"])
    assert [r["summary"]["global_step"] for r in first] == [2, 2]
    assert [p.name for p in C.step_checkpoints(run)] == ["checkpoint-2"]  # one, complete, with both ranks' RNG
    assert C.checkpoint_problem(run / "checkpoint-2") is None
    record = json.loads((run / "checkpoint-2" / C.COMPLETE_NAME).read_text())
    assert record["step"] == 2 and {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= set(record["files"])
    assert C.checkpoint_problem(run / C.FINAL_NAME) is None
    assert not (run / C.STAGING_DIR).exists()

    # resume with more steps, saving every step and keeping one checkpoint (rotation runs between saves);
    # a checkpoint-3 appears after the ranks looked for the newest one, before rank 0 takes the run's
    # lock: rank 0 sees it under the lock, and rank 1 must resume from it too
    resumed = _torchrun(tmp_path, True, [*common, "training.max_steps=5", "training.save_steps=1",
                                         "training.save_total_limit=1"])
    assert [r["summary"]["resumed_from"] for r in resumed] == [str(run / "checkpoint-3")] * 2
    assert [(r["loaded_rng_from"], r["step_at_resume"]) for r in resumed] == [(str(run / "checkpoint-3"), 3)] * 2
    assert [r["summary"]["global_step"] for r in resumed] == [5, 5]
    assert [p.name for p in C.step_checkpoints(run)] == ["checkpoint-5"]
    assert C.checkpoint_problem(run / "checkpoint-5") is None
    assert json.loads((run / "checkpoint-5" / "trainer_state.json").read_text())["global_step"] == 5
    assert not (run / C.STAGING_DIR).exists()
    assert _loss_steps(run) == [1, 2, 4, 5]  # rank 0 alone writes logging.jsonl; step 3 was the other run's
