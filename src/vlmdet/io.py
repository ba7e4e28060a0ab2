"""Files: atomic writes for every artifact, JSONL reading with line numbers, untrusted JSON limits.

Every artifact is written to a temporary file in the same directory and renamed into place, so a
killed run never leaves a half-written file; the file gets the permissions a plain `open(path, "w")`
would give it (0666 minus the process umask). `append_jsonl` appends one complete line per call
(a line is written with a single `write` and flushed).

Untrusted JSON (every data, prediction and dump file a user hands in) is read with `loads_untrusted`:
nesting deeper than `MAX_DEPTH` containers and integers longer than `MAX_INT_DIGITS` digits are
errors (a message, not a `RecursionError` or a 5000-digit int that overflows later). Text that is not
UTF-8 fails with the file, the line and the byte offset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from vlmdet.errors import DataError, UsageError

#: the deepest nesting of arrays/objects accepted in an untrusted JSON value
MAX_DEPTH = 64
#: the longest integer literal (digits) accepted in an untrusted JSON value
MAX_INT_DIGITS = 32

_umask_lock = threading.Lock()


class OutputError(UsageError):
    """An artifact path that cannot be written; the message is `<path>: cannot write: <reason>`."""


def _file_mode() -> int:
    """0666 minus the process umask (what `open(path, "w")` creates); read without changing it."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder + fsync + rename).
    `fsync=False` skips the flush to disk (still atomic for readers; for bulk files such as the
    thousands of images of a generated data set, where it is a third of the run time).
    A path that cannot be written (a folder, under a file, no permission, disk full) raises
    `OutputError("<path>: cannot write: <reason>")`; the old file, if any, is untouched."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: cannot write: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        blocker = next((a for a in path.parents if a.exists()), None)
        reason = f"{blocker} is not a folder" if blocker is not None and not blocker.is_dir() else err.strerror
        raise OutputError(f"{path}: cannot write: {reason}") from err
    try:
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600 files; an artifact gets the usual umask mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise OutputError(f"{path}: cannot write: {err.strerror}") from err
        raise
    return path


def staging_folder(target: str | os.PathLike) -> Path:
    """An empty hidden sibling `.<name>.partial` to fill and then move into place with
    `replace_folder` (a leftover from a killed writer is deleted first)."""
    target = Path(target)
    staged = target.parent / f".{target.name}.partial"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    return staged


def replace_folder(staged: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the complete folder `staged` to `target` by rename (an existing `target` is first renamed to
    `<staged>.old` next to `staged`, and deleted after), so readers see the old folder or the new one,
    never a mix; the rename is flushed to disk (fsync of `target`'s parent folder)."""
    staged, target = Path(staged), Path(target)
    old = None
    if target.exists():
        old = staged.with_name(f"{staged.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(staged, target)
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: Any) -> None:
    """Append one JSON object as one line (single write, flushed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


class JsonLimitError(ValueError):
    """An untrusted JSON value breaks a size limit (`MAX_DEPTH`, `MAX_INT_DIGITS`)."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonLimitError(f"integer with {len(text.lstrip('-'))} digits (limit {MAX_INT_DIGITS})")
    return int(text)


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise JsonLimitError(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))


def loads_untrusted(text: str | bytes) -> Any:
    """`json.loads` with the limits of the module docstring. Raises `json.JSONDecodeError` for bad
    JSON and `JsonLimitError` (a ValueError) for a value over a limit."""
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise JsonLimitError(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(value)
    return value


def decode_utf8(data: bytes, path: str | os.PathLike) -> str:
    """`data` decoded as UTF-8; otherwise `DataError("path:line: not UTF-8 text (byte offset N)")`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte offset {err.start})") from None


def read_untrusted_json(path: str | os.PathLike) -> Any:
    """A whole JSON file read with `loads_untrusted`; every failure is a `DataError` naming the file
    (and the line where the JSON parser knows it)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None
    text = decode_utf8(data, path)
    try:
        return loads_untrusted(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: bad JSON: {err.msg} (column {err.colno})") from None
    except JsonLimitError as err:
        raise DataError(f"{path}: {err}") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line; bad JSON, bytes that are not UTF-8, a value
    over the `loads_untrusted` limits or a non-object raise DataError with `file:line:`."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None
    with f:
        try:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {err.start + 1} of the line)") from None
                if not line.strip():
                    continue
                try:
                    obj = loads_untrusted(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: bad JSON: {err.msg} (column {err.colno})") from None
                except JsonLimitError as err:
                    raise DataError(f"{path}:{lineno}: {err}") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
        except IsADirectoryError:
            raise DataError(f"{path}: cannot read: is a directory") from None
        except OSError as err:
            raise DataError(f"{path}: cannot read: {err.strerror}") from None
