"""data/swift.py: ms-swift / LLaMA-Factory grounding JSONL -> vlmdet records, by hand-computed boxes."""

import json

import pytest
from PIL import Image

from vlmdet.cli import main
from vlmdet.data.records import load_records


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _msgs(answer="<bbox>"):
    return [{"role": "user", "content": "<image>Find every <ref-object>"}, {"role": "assistant", "content": answer}]


@pytest.fixture
def src(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 32), (10, 20, 30)).save(tmp_path / "imgs" / "a.png")  # kept as is (multiples of 32)
    Image.new("RGB", (100, 50), (10, 20, 30)).save(tmp_path / "imgs" / "b.png")  # resized to 96 x 64
    return tmp_path


def test_convert_ms_swift_and_text_lines(src, tmp_path, capsys):
    rows = [
        {"messages": _msgs(), "images": ["imgs/a.png"],
         "objects": {"ref": ["cat", "dog"], "bbox": [[4, 2, 20, 30], [30, 0, 64, 16]]}},
        {"messages": _msgs(), "images": "imgs/b.png",
         "objects": {"ref": ["cat"], "bbox": [[100, 200, 500, 1000]], "bbox_type": "norm1000"}},
        {"messages": _msgs(), "images": ["imgs/a.png"], "objects": {"ref": ["car"], "bbox": [[0.5, 0.25, 1.0, 1.0]],
                                                                    "bbox_type": "norm1"}},
        {"messages": _msgs('```json\n[{"bbox_2d": [10, 5, 50, 25], "label": "bird"}]\n```'), "images": ["imgs/b.png"]},
    ]
    inp = _jsonl(src / "train.jsonl", rows)
    out = tmp_path / "out"
    assert main(["data", "swift", str(inp), str(out), "--text-format", "qwen25"]) == 0
    recs = load_records(out / "train.jsonl")  # images checked: sizes match the files
    assert [r.image_id for r in recs] == ["train_1", "train_2", "train_3", "train_4"]
    assert (recs[0].width, recs[0].height) == (64, 32) and (recs[1].width, recs[1].height) == (96, 64)
    assert [(o.desc, o.bbox) for o in recs[0].objects] == [("cat", (4, 2, 20, 30)), ("dog", (30, 0, 64, 16))]
    # norm1000 on 100x50: [10, 10, 50, 50] px, then scaled to 96x64 (x 0.96, y 1.28)
    assert recs[1].objects[0].bbox == pytest.approx((9.6, 12.8, 48.0, 64.0))
    # norm1 on 64x32: [32, 8, 64, 32]
    assert recs[2].objects[0].bbox == pytest.approx((32.0, 8.0, 64.0, 32.0))
    # qwen25 text (pixels of the 100x50 file) scaled to 96x64
    assert recs[3].objects[0].desc == "bird"
    assert recs[3].objects[0].bbox == pytest.approx((9.6, 6.4, 48.0, 32.0))
    assert "from_text" in capsys.readouterr().out


@pytest.mark.parametrize("row,rule", [
    ({"images": ["imgs/a.png"], "objects": {"ref": ["a", "b"], "bbox": [[1, 2, 3, 4]]}},
     "objects.ref has 2 names but objects.bbox 1 boxes"),
    ({"images": ["imgs/a.png"], "objects": {"ref": ["a"], "bbox": [[1, 2, 3]]}}, "objects.bbox[0] must be 4 numbers"),
    ({"images": ["imgs/a.png"], "objects": {"ref": ["a"], "bbox": [[1, 2, 3, 4]], "bbox_type": "norm"}},
     "objects.bbox_type must be one of real, norm1000, norm1"),
    ({"images": ["imgs/a.png", "imgs/b.png"], "objects": {"ref": [], "bbox": []}}, "exactly one image path"),
    ({"images": ["imgs/nope.png"], "objects": {"ref": [], "bbox": []}}, "unreadable image"),
    ({"images": ["imgs/a.png"], "objects": {"ref": ["a"], "bbox": [[70, 2, 90, 4]]}}, "has no area inside the 64x32 image"),
    ({"images": ["imgs/a.png"], "messages": _msgs('[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]')},
     "no 'objects' field; boxes written only in the assistant text need --text-format"),
])
def test_bad_lines_are_file_line_rule_and_nothing_is_written(src, tmp_path, row, rule, capsys):
    good = {"images": ["imgs/b.png"], "objects": {"ref": ["a"], "bbox": [[1, 2, 30, 40]]}}  # would be resized
    inp = _jsonl(src / "in.jsonl", [good, row])
    out = tmp_path / "out"
    assert main(["data", "swift", str(inp), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{inp}:2: " in err and rule in err and "Traceback" not in err
    assert not out.exists()


def test_text_answer_that_does_not_parse_cleanly_is_refused(src, capsys):
    inp = _jsonl(src / "in.jsonl", [{"images": ["imgs/a.png"], "messages": _msgs('[{"bbox_2d": [1, 2, 3], "label": "x"}]')}])
    assert main(["data", "swift", str(inp), str(src / "out"), "--text-format", "qwen25"]) == 2
    assert "the assistant answer does not parse as qwen25: record 0: wrong_arity" in capsys.readouterr().err
