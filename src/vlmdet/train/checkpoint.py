"""Crash-safe checkpoints: staged writes, a completion record, choosing what `--resume` loads.

A checkpoint `<run>/checkpoint-<step>/` only ever appears complete:

1. the Trainer writes everything (weights, optimizer, scheduler, scaler, RNG, trainer_state.json) and
   vlmdet adds the tokenizer and image processor into `<run>/.partial/checkpoint-<step>/`;
2. every file is flushed to disk and `COMPLETE_NAME` is written last: `{"step": int, "files":
   {relative path: size in bytes}}`;
3. the folder is renamed to `<run>/checkpoint-<step>` (one `rename`, atomic on a POSIX file system),
   and only then are old checkpoints rotated out (renamed away first, then deleted), keeping
   `save_total_limit` of them.

A kill at any point leaves either the previous set of complete checkpoints or the new one, plus
leftovers under `.partial/` that the next run deletes. A failed write (disk full, I/O error) deletes
the staging folder and raises `CheckpointError` (one line; the previous checkpoint is untouched).

`checkpoint_problem(folder)` says why a folder is not a complete checkpoint (None when it is):
a missing or mismatching file of the completion record; a folder without the record (written in
place by an older or interrupted save) must have a readable trainer_state.json, a safetensors
model whose header reads, and the optimizer and scheduler files. `newest_complete(run_root)` returns
the newest complete `checkpoint-<step>` with the skipped ones and their reasons.

`checkpoint-final` (the model at the end of training) is written the same way, with its
trainer_state.json, and replaces an older one by rename.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from vlmdet.errors import UsageError
from vlmdet.io import replace_folder

COMPLETE_NAME = "checkpoint_complete.json"
STAGING_DIR = ".partial"
PREFIX = "checkpoint-"
FINAL_NAME = "checkpoint-final"


class CheckpointError(UsageError):
    """A checkpoint could not be written (disk full, I/O error); the message is one line."""


def step_of(folder: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder name, else None."""
    tail = folder.name[len(PREFIX):] if folder.name.startswith(PREFIX) else ""
    return int(tail) if tail.isdigit() else None


def step_checkpoints(run_root: Path) -> list[Path]:
    """`checkpoint-<step>` folders in `run_root`, by step (complete or not)."""
    found = [p for p in Path(run_root).glob(PREFIX + "*") if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(folder: Path, step: int | None) -> None:
    """Flush every file of `folder` to disk and write the completion record last."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != COMPLETE_NAME:
            _fsync_path(path)
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    record = folder / COMPLETE_NAME
    with open(record, "w", encoding="utf-8") as f:
        json.dump({"step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(folder, directory=True)


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types for every bad header)
        return f"{path.name} does not read ({str(err).splitlines()[0][:80]})"
    return None


def _legacy_problem(folder: Path) -> str | None:
    """Checks for a folder without a completion record (written in place)."""
    state = folder / "trainer_state.json"
    try:
        step = json.loads(state.read_text(encoding="utf-8")).get("global_step")
    except (OSError, ValueError, AttributeError):
        return "no completion record and no readable trainer_state.json"
    if not isinstance(step, int):
        return "no completion record and trainer_state.json has no global_step"
    weights = sorted(folder.glob("model*.safetensors"))
    if not weights:
        return "no completion record and no model*.safetensors"
    for w in weights:
        problem = _safetensors_problem(w)
        if problem:
            return f"no completion record and {problem}"
    for name in ("optimizer.pt", "scheduler.pt"):
        p = folder / name
        if not p.is_file() or p.stat().st_size == 0:
            return f"no completion record and {name} is missing or empty"
    return None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a complete checkpoint, or None (module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    record = folder / COMPLETE_NAME
    if not record.exists():
        return _legacy_problem(folder)
    try:
        files = json.loads(record.read_text(encoding="utf-8"))["files"]
        items = list(files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{COMPLETE_NAME} does not read"
    for rel, size in items:
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, the completion record says {size}"
    return None


def newest_complete(run_root: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(newest complete `checkpoint-<step>` or None, [(newer incomplete folder, reason), ...])."""
    skipped = []
    for folder in reversed(step_checkpoints(Path(run_root))):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


def trainer_step(folder: Path) -> int | None:
    """`global_step` from the folder's trainer_state.json (None when unreadable)."""
    try:
        step = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8")).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def clear_staging(run_root: Path) -> list[str]:
    """Delete leftovers of interrupted saves (`.partial/`); returns their names."""
    staging = Path(run_root) / STAGING_DIR
    if not staging.exists():
        return []
    names = sorted(p.name for p in staging.iterdir())
    shutil.rmtree(staging, ignore_errors=True)
    return names


def _rmdir_if_empty(folder: Path) -> None:
    """The staging folder goes when nothing is left in it."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _remove(folder: Path) -> None:
    """Delete a checkpoint so that no half-deleted `checkpoint-<step>` is ever visible: rename it into
    the staging folder first."""
    trash = folder.parent / STAGING_DIR / f"{folder.name}.deleting"
    trash.parent.mkdir(exist_ok=True)
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)
    _rmdir_if_empty(trash.parent)


def rotate(run_root: Path, keep: int | None, protect: Path | None = None) -> None:
    """Delete the oldest `checkpoint-<step>` folders beyond `keep` (None or <= 0: keep all); the newest
    and `protect` (the best checkpoint) are never deleted."""
    if not keep or keep <= 0:
        return
    ckpts = step_checkpoints(run_root)
    keep_set = {ckpts[-1]} if ckpts else set()
    if protect is not None:
        keep_set.add(Path(protect))
    for folder in ckpts[:-1]:
        if len(ckpts) <= max(keep, len(keep_set)):
            break
        if folder in keep_set:
            continue
        _remove(folder)
        ckpts.remove(folder)


def write_staged(
    target: Path, write: Callable[[Path], None], step: int | None, main: bool = True,
    wait: Callable[[], None] | None = None,
) -> Path:
    """Run `write(folder)` into a staging folder, seal it and rename it to `target`.

    Every rank calls this (`write` may need all of them, e.g. to gather sharded weights); only the
    `main` rank creates, seals and renames; `wait` is the ranks' barrier (None: one process). An
    `OSError` or a `RuntimeError` (torch reports a failed write as one) deletes the staging folder
    and raises a one-line `CheckpointError`; an existing `target` is untouched."""
    wait = wait or (lambda: None)
    staged = target.parent / STAGING_DIR / target.name
    try:
        if main:
            if staged.exists():
                shutil.rmtree(staged)
            staged.mkdir(parents=True)
        wait()
        write(staged)
        wait()
        if main:
            seal(staged, step)
    except (OSError, RuntimeError) as err:
        if main:
            shutil.rmtree(staged, ignore_errors=True)
            _rmdir_if_empty(staged.parent)
        previous, _ = newest_complete(target.parent)
        kept = f"{previous.name} is intact" if previous is not None else "no earlier checkpoint exists"
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0][:120]
        raise CheckpointError(f"{target}: checkpoint not written: {reason}; {kept}") from err
    if main:
        replace_folder(staged, target)  # an existing target goes to .partial/<name>.old first
        _rmdir_if_empty(staged.parent)
    wait()
    return target


def save_trainer_checkpoint(trainer, save: Callable, model, trial, extra: Callable[[Path], None] | None = None) -> Path:
    """`Trainer._save_checkpoint` made crash-safe (module docstring). `save(model, trial)` is the stock
    method; while it runs, `trainer._staging` names the staging parent (the trainer's
    `_get_output_dir` returns it) and its own rotation is off (rotation runs here, after the rename).
    `extra(folder)` adds files on the main process (vlmdet: tokenizer + image processor)."""
    root = Path(trainer._get_output_dir(trial))
    step = int(trainer.state.global_step)
    target = root / f"{PREFIX}{step}"
    main = bool(trainer.args.should_save)

    def write(folder: Path) -> None:
        limit = trainer.args.save_total_limit
        trainer._staging, trainer.args.save_total_limit = str(folder.parent), None
        try:
            save(model, trial)
        finally:
            trainer._staging, trainer.args.save_total_limit = None, limit
        if main and extra is not None:
            extra(folder)

    write_staged(target, write, step, main=main, wait=trainer.accelerator.wait_for_everyone)
    best = trainer.state.best_global_step
    best_dir = root / f"{PREFIX}{best}" if best else None
    if best_dir is not None and best_dir.is_dir():
        trainer.state.best_model_checkpoint = str(best_dir)
    if main:
        rotate(root, trainer.args.save_total_limit, protect=best_dir)
    return target
