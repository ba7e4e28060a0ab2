"""The run directory `<output_dir>/<run_name>/` (see docs/TRAINING.md) and its file names.

Layout::

    config.yaml                     fully resolved config (loads back with `load_config`)
    run.json                        versions, git state, command line, seed, hostname, start time
    logging.jsonl                   one JSON object per event, each with "step" and "time"
    tb/                             TensorBoard
    checkpoint-<step>/              HF checkpoints (transformers.Trainer, staged: train/checkpoint.py)
    .partial/                       checkpoints being written (deleted when a run starts)
    .lock                           the writer's lock: {"pid", "host", "start_time"} (`RunLock`)
    eval/step_XXXXXX/               metrics.json + predictions.jsonl
    monitor_dumps/step_XXXXXX.json  qualitative rollout samples

`RunDir.create` policy for an existing folder (`check_reuse` runs the same checks without writing):
- `resume=True`: keep everything (the trainer continues from a checkpoint); config.yaml
  and run.json are rewritten for this invocation (run.json says `"resumed": true`).
- it holds `checkpoint-*` folders: refuse (`UsageError`) unless `overwrite=True`.
- otherwise (or with `overwrite=True`): the old run's files are deleted (all but `.lock`). A
  non-empty folder that is not a vlmdet run (no run.json / config.yaml) is never deleted.

One writer per run folder: `RunLock(root)` holds an exclusive `fcntl.flock` on `<root>/.lock` for the
life of the run and writes the holder (pid, host, start time) into it. A second writer fails at once
naming the holder. The kernel drops the lock when its process dies, so a lock file left by a killed
run is taken over (and reported). The file is emptied, never deleted, on release (deleting it
would let two processes lock two different files of the same name).
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from vlmdet import __version__
from vlmdet.config import Config, dump_config_yaml
from vlmdet.errors import UsageError
from vlmdet.io import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text

LOCK_NAME = ".lock"

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(folder: str | os.PathLike) -> dict:
    """`{"commit": sha or None, "dirty": bool or None}` of the git work tree holding `folder`."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def check_run_name(name: str) -> None:
    """`run_name` must be a plain folder name (no separator, not `.`/`..`)."""
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise UsageError(f"run_name must be a plain folder name, got {name!r}")


class RunDir:
    """File names inside one run folder; `log` appends to logging.jsonl."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_json_path(self) -> Path:
        return self.root / "run.json"

    @property
    def log_path(self) -> Path:
        return self.root / "logging.jsonl"

    @property
    def tb_dir(self) -> Path:
        return self.root / "tb"

    def eval_dir(self, step: int) -> Path:
        return self.root / "eval" / f"step_{step:06d}"

    def dump_path(self, step: int) -> Path:
        return self.root / "monitor_dumps" / f"step_{step:06d}.json"

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME

    def checkpoints(self) -> list[Path]:
        """`checkpoint-<step>` folders, by step."""
        found = [p for p in self.root.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))

    def log(self, event: dict, step: int | None = None) -> dict:
        """Append one event to logging.jsonl as `{"step": int, "time": float, **event}` and return it.
        `step` comes from the argument or else from `event["step"]`; `time` (unix seconds) is added
        unless the event has one."""
        step = event.get("step") if step is None else step
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"RunDir.log needs an int step, got {step!r}")
        rest = {k: v for k, v in event.items() if k not in ("step", "time")}
        row = {"step": step, "time": float(event.get("time", time.time())), **rest}
        append_jsonl(self.log_path, row)
        return row

    def truncate_log(self, step: int) -> int:
        """Keep the logging.jsonl rows with `step <= step` (a resumed run rewrites what came after the
        checkpoint it resumes from; a torn last line from a kill is dropped too). Returns the number
        of rows dropped."""
        if not self.log_path.exists():
            return 0
        keep, dropped = [], 0
        for line in self.log_path.read_bytes().splitlines(keepends=True):
            try:
                row = json.loads(line)
                ok = line.endswith(b"\n") and isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step
            except ValueError:
                ok = False
            if ok:
                keep.append(line)
            elif line.strip():
                dropped += 1
        if dropped:
            atomic_write_bytes(self.log_path, b"".join(keep))
        return dropped

    def check_reuse(self, *, resume: bool = False, overwrite: bool = False) -> None:
        """Raise `UsageError` if `create` would refuse this folder (module docstring); writes nothing."""
        for parent in [self.root, *self.root.parents]:
            if parent.exists():
                if not parent.is_dir():
                    raise UsageError(f"output_dir: {parent} exists and is not a folder")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise UsageError(f"output_dir: {parent} is not writable")
                break
        if not self.root.exists():
            if resume:
                raise UsageError(f"--resume: {self.root} does not exist (nothing to resume)")
            return
        if resume:
            return
        ckpts = self.checkpoints()
        if ckpts and not overwrite:
            raise UsageError(
                f"run dir {self.root} already has checkpoints ({ckpts[-1].name}); resume it (--resume) "
                "or start over (--overwrite deletes it), or pick another run_name"
            )
        if any(p.name != LOCK_NAME for p in self.root.iterdir()):
            if not (self.config_path.exists() or self.run_json_path.exists()):
                raise UsageError(f"{self.root} is not empty and is not a vlmdet run dir; refusing to delete it")

    @classmethod
    def create(cls, cfg: "Config", argv: Sequence[str], *, resume: bool = False, overwrite: bool = False) -> "RunDir":
        """Make `<cfg.output_dir>/<cfg.run_name>/` and write config.yaml and run.json (see the module
        docstring for what happens to an existing folder). The caller holds the folder's `RunLock`
        when the folder may be in use."""
        check_run_name(cfg.run_name)
        run = cls(Path(cfg.output_dir) / cfg.run_name)
        run.check_reuse(resume=resume, overwrite=overwrite)
        if run.root.exists() and not resume:
            for child in run.root.iterdir():
                if child.name == LOCK_NAME:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config_path, dump_config_yaml(cfg))
        info = {
            "vlmdet": __version__,
            "torch": _version("torch"),
            "transformers": _version("transformers"),
            "python": platform.python_version(),
            "git": git_state(Path(__file__).resolve().parent),
            "argv": list(argv),
            "command": " ".join(shlex.quote(a) for a in argv),
            "cwd": os.getcwd(),
            "seed": cfg.seed,
            "run_name": cfg.run_name,
            "hostname": socket.gethostname(),
            "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resumed": resume,
        }
        atomic_write_json(run.run_json_path, info)
        return run


class RunLock:
    """Exclusive lock on a run folder for one writer (module docstring). A context manager;
    `taken_over` is the holder record of a stale lock this one replaced (None if there was none)."""

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / LOCK_NAME
        self.fd: int | None = None
        self.taken_over: dict | None = None

    @staticmethod
    def _read(fd: int) -> dict | None:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        try:
            info = json.loads(data)
        except ValueError:
            return {"raw": data.decode("utf-8", "replace")[:80]} if data.strip() else None
        return info if isinstance(info, dict) else None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._read(fd) or {}
            os.close(fd)
            who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "start_time") if k in holder) or "unknown holder"
            raise UsageError(f"{self.path.parent}: in use by another run ({who}); "
                             "wait for it to finish or pick another run_name") from None
        self.taken_over = self._read(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
