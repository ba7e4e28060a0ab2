"""The run directory `<output_dir>/<run_name>/` (see docs/TRAINING.md) and its file names.

Layout::

    config.yaml                     fully resolved config (loads back with `load_config`)
    run.json                        versions, git state, command line, seed, hostname, start time
    logging.jsonl                   one JSON object per event, each with "step" and "time"
    tb/                             TensorBoard
    checkpoint-<step>/              HF checkpoints (written by transformers.Trainer)
    eval/step_XXXXXX/               metrics.json + predictions.jsonl
    monitor_dumps/step_XXXXXX.json  qualitative rollout samples

`RunDir.create` policy for an existing folder:
- `resume=True`: keep everything (the trainer continues from the last `checkpoint-*`); config.yaml
  and run.json are rewritten for this invocation (run.json says `"resumed": true`).
- it holds `checkpoint-*` folders: refuse (`UsageError`) unless `overwrite=True`.
- otherwise (or with `overwrite=True`): the old run folder is deleted and a fresh one is made. A
  non-empty folder that is not a vlmdet run (no run.json / config.yaml) is never deleted.
"""

from __future__ import annotations

import importlib.metadata
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
from vlmdet.io import append_jsonl, atomic_write_json, atomic_write_text


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

    @classmethod
    def create(cls, cfg: "Config", argv: Sequence[str], *, resume: bool = False, overwrite: bool = False) -> "RunDir":
        """Make `<cfg.output_dir>/<cfg.run_name>/` and write config.yaml and run.json (see the module
        docstring for what happens to an existing folder)."""
        name = cfg.run_name
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise UsageError(f"run_name must be a plain folder name, got {name!r}")
        run = cls(Path(cfg.output_dir) / name)
        if run.root.exists() and not resume:
            if not run.root.is_dir():
                raise UsageError(f"run dir {run.root} exists and is not a folder")
            ckpts = run.checkpoints()
            if ckpts and not overwrite:
                raise UsageError(
                    f"run dir {run.root} already has checkpoints ({ckpts[-1].name}); resume it (--resume) "
                    "or start over (--overwrite deletes it), or pick another run_name"
                )
            if any(run.root.iterdir()):
                if not (run.config_path.exists() or run.run_json_path.exists()):
                    raise UsageError(f"{run.root} is not empty and is not a vlmdet run dir; refusing to delete it")
                shutil.rmtree(run.root)
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
