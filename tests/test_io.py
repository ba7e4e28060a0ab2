"""io.py: atomic writes leave no partial files; JSONL reading with line numbers."""

import json
import os

import pytest

from vlmdet import io
from vlmdet.errors import DataError


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_bytes_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a/b/c.bin"
    assert io.atomic_write_bytes(target, b"one") == target
    assert target.read_bytes() == b"one"
    io.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert _leftovers(target.parent) == []


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.json"
    io.atomic_write_json(target, {"a": 1})
    with pytest.raises(ValueError):  # NaN is not JSON: fails before anything is written
        io.atomic_write_json(target, {"a": float("nan")})
    with pytest.raises(TypeError):  # fails inside the write: the temp file is removed
        io.atomic_write_bytes(target, "not bytes")
    assert json.loads(target.read_text()) == {"a": 1}
    assert _leftovers(tmp_path) == []


def test_fsync_flag(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    io.atomic_write_bytes(tmp_path / "a", b"x")
    io.atomic_write_bytes(tmp_path / "b", b"x", fsync=False)
    assert len(calls) == 1


def test_text_json_jsonl_formats(tmp_path):
    io.atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_bytes() == "héllo".encode("utf-8")
    io.atomic_write_json(tmp_path / "j.json", {"desc": "é"}, indent=None)
    assert (tmp_path / "j.json").read_text(encoding="utf-8") == '{"desc": "é"}\n'
    io.atomic_write_jsonl(tmp_path / "r.jsonl", [{"a": 1}, {"b": [2]}])
    assert (tmp_path / "r.jsonl").read_text() == '{"a": 1}\n{"b": [2]}\n'
    io.atomic_write_jsonl(tmp_path / "e.jsonl", [])
    assert (tmp_path / "e.jsonl").read_text() == ""


def test_append_jsonl_appends_whole_lines(tmp_path):
    path = tmp_path / "sub/log.jsonl"
    io.append_jsonl(path, {"step": 1})
    io.append_jsonl(path, {"step": 2, "x": "a\nb"})
    lines = path.read_text().splitlines()
    assert [json.loads(l) for l in lines] == [{"step": 1}, {"step": 2, "x": "a\nb"}]


def test_iter_jsonl_line_numbers_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert list(io.iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2})]
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=rf"^{path}:2: bad JSON"):
        list(io.iter_jsonl(path))
    path.write_text('{"a": 1}\n"text"\n')
    with pytest.raises(DataError, match=rf"^{path}:2: expected a JSON object, got str"):
        list(io.iter_jsonl(path))
    with pytest.raises(DataError, match="cannot read"):
        list(io.iter_jsonl(tmp_path / "missing.jsonl"))


def test_staging_folder_and_replace_folder(tmp_path):
    target = tmp_path / "eval" / "step_000010"
    staged = io.staging_folder(target)
    assert staged == tmp_path / "eval" / ".step_000010.partial" and not any(staged.iterdir())
    (staged / "a.jsonl").write_text("1")
    assert not target.exists()  # nothing visible until the rename
    io.replace_folder(staged, target)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_000010"]
    # a leftover of a killed writer is emptied; a second write replaces the whole folder
    staged = io.staging_folder(target)
    (staged / "b.jsonl").write_text("2")
    (tmp_path / "eval" / ".step_000010.partial" / "c").write_text("3")
    io.replace_folder(staged, target)
    assert sorted(p.name for p in target.iterdir()) == ["b.jsonl", "c"]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_000010"]
    left = io.staging_folder(target)
    (left / "junk").write_text("x")
    assert not any(io.staging_folder(target).iterdir())


def test_write_errors_name_the_path(tmp_path):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(io.OutputError, match=r"/f/x.json: cannot write: .*/f is not a folder"):
        io.atomic_write_json(tmp_path / "f" / "x.json", {})
    (tmp_path / "d").mkdir()
    with pytest.raises(io.OutputError, match=r"/d: cannot write: it is a folder"):
        io.atomic_write_json(tmp_path / "d", {})
