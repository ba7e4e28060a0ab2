"""`vlmdet parse` and `vlmdet eval-preds` through `vlmdet.cli.main`: outputs, messages, exit codes."""

import json

import pytest

from vlmdet.cli import main
from vlmdet.coords import coord_token


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GT_ROWS = [
    {"image_id": "a", "image": "missing/a.png", "width": 100, "height": 80,
     "objects": [{"desc": "cat", "bbox_2d": [10, 10, 50, 40]}]},
    {"image_id": "b", "image": "missing/b.png", "width": 64, "height": 64, "objects": []},
]


@pytest.fixture
def gt(tmp_path):
    return write_jsonl(tmp_path / "gt.jsonl", GT_ROWS)


def answer(*records):
    return '{"objects": [' + ", ".join(records) + "]}"


def record(desc, bins, geometry_first=False):
    box = '"bbox_2d": [' + ", ".join(coord_token(b) for b in bins) + "]"
    d = f'"desc": "{desc}"'
    return "{" + (f"{box}, {d}" if geometry_first else f"{d}, {box}") + "}"


# ---------------------------------------------------------------- vlmdet parse

def test_parse_with_gt_bins_to_pixels(tmp_path, gt):
    # bins of the GT cat [10,10,50,40] in 100x80 are exactly recoverable to within a bin
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"image_id": "a", "text": answer(record("cat", (100, 126, 505, 506)))},
                                               {"image_id": "b", "text": answer()}])
    out = tmp_path / "m.json"
    assert main(["parse", str(raw), "--gt", str(gt), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)
    assert m["bbox_AP50"] == pytest.approx(1.0)
    assert m["score_source"] == "constant"
    assert m["images_without_answer"] == 0
    assert m["sample_valid_pred_rate"] == 0.5 and m["sample_clean_rate"] == 1.0 and m["empty_pred_rate"] == 0.5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_parse_gt_image_without_answer_counts_as_miss(tmp_path, gt):
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"image_id": "b", "text": answer()}])
    out = tmp_path / "m.json"
    assert main(["parse", str(raw), "--gt", str(gt), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["images_without_answer"] == 1 and m["fn"] == 1 and m["bbox_AP"] == 0.0


def test_parse_field_order(tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"image_id": "a", "text": answer(record("cat", (1, 2, 3, 4), True))}])
    out = tmp_path / "m.json"
    assert main(["parse", str(raw), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["drop/order_violation"] == 1
    assert main(["parse", str(raw), "--field-order", "geometry_first", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["drop/order_violation"] == 0 and m["pred_objects"] == 1


def test_parse_empty_file(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text("\n")
    out = tmp_path / "m.json"
    assert main(["parse", str(raw), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["samples"] == 0


PARSE_ERRORS = [
    ("bad json", ['{"image_id": "a", "text": ""}', "{nope"], "raw.jsonl:2: bad JSON"),
    ("no text", [{"image_id": "a"}], "raw.jsonl:1: 'text' must be a string"),
    ("text not a string", [{"image_id": "a", "text": None}], "raw.jsonl:1: 'text' must be a string"),
    ("no image_id", [{"text": ""}], "raw.jsonl:1: 'image_id' must be a non-empty string"),
    ("duplicate", [{"image_id": "a", "text": ""}, {"image_id": "a", "text": "x"}],
     "raw.jsonl:2: duplicate image_id 'a' (first on line 1)"),
    ("unknown with gt", [{"image_id": "aa", "text": ""}], "raw.jsonl:1: image_id 'aa' is not in"),
]


@pytest.mark.parametrize("name,rows,message", PARSE_ERRORS, ids=[e[0] for e in PARSE_ERRORS])
def test_parse_bad_input_exits_2(tmp_path, gt, capsys, name, rows, message):
    raw = write_jsonl(tmp_path / "raw.jsonl", rows)
    out = tmp_path / "m.json"
    assert main(["parse", str(raw), "--gt", str(gt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists()


def test_parse_unknown_id_suggests(tmp_path, gt, capsys):
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"image_id": "a ", "text": ""}])
    assert main(["parse", str(raw), "--gt", str(gt), "--out", str(tmp_path / "m.json")]) == 2
    assert "did you mean 'a'?" in capsys.readouterr().err


def test_parse_bad_gt_exits_2(tmp_path, capsys):
    bad_gt = write_jsonl(tmp_path / "gt.jsonl", [{**GT_ROWS[0], "objects": [{"desc": "cat", "bbox_2d": [10, 10, 5, 40]}]}])
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"image_id": "a", "text": ""}])
    assert main(["parse", str(raw), "--gt", str(bad_gt), "--out", str(tmp_path / "m.json")]) == 2
    assert "gt.jsonl:1:" in capsys.readouterr().err


def test_parse_missing_file_exits_2(tmp_path, capsys):
    assert main(["parse", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


# ---------------------------------------------------------------- vlmdet eval-preds

def run_preds(tmp_path, gt, rows, *extra):
    pred = write_jsonl(tmp_path / "pred.jsonl", rows)
    out = tmp_path / "metrics.json"
    code = main(["eval-preds", "--gt", str(gt), "--pred", str(pred), "--out", str(out), *extra])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_eval_preds_perfect_without_scores(tmp_path, gt, capsys):
    code, m = run_preds(tmp_path, gt, [{"image_id": "a", "objects": [{"desc": "cat", "bbox_2d": [10, 10, 50, 40]}]}])
    assert code == 0
    assert m["bbox_AP"] == pytest.approx(1.0) and m["f1"] == 1.0
    assert m["score_source"] == "constant"
    assert m["images"] == 2 and m["gt_objects"] == 1
    assert "bbox_AP" in capsys.readouterr().out


def test_eval_preds_f1_iou_option(tmp_path, gt):
    rows = [{"image_id": "a", "objects": [{"desc": "cat", "bbox_2d": [10, 10, 50, 28], "score": 0.5}]}]  # IoU 0.6
    assert run_preds(tmp_path, gt, rows)[1]["tp"] == 1
    code, m = run_preds(tmp_path, gt, rows, "--f1-iou", "0.7")
    assert code == 0 and m["tp"] == 0 and m["fp"] == 1
    assert m["score_source"] == "given"


def test_eval_preds_default_out(tmp_path, gt):
    pred = write_jsonl(tmp_path / "p.jsonl", [{"image_id": "b", "objects": []}])
    assert main(["eval-preds", "--gt", str(gt), "--pred", str(pred)]) == 0
    assert json.loads((tmp_path / "p.metrics.json").read_text())["fn"] == 1


CAT = {"desc": "cat", "bbox_2d": [10, 10, 50, 40]}
PRED_ERRORS = [
    ("bad json", ["{"], "pred.jsonl:1: bad JSON"),
    ("not an object", ["[1]"], "pred.jsonl:1: expected a JSON object"),
    ("unknown id", [{"image_id": "c", "objects": []}], "pred.jsonl:1: unknown image_id 'c'"),
    ("duplicate id", [{"image_id": "a", "objects": []}, {"image_id": "b", "objects": []}, {"image_id": "a", "objects": []}],
     "pred.jsonl:3: duplicate image_id 'a' (first on line 1)"),
    ("objects not a list", [{"image_id": "a", "objects": {}}], "pred.jsonl:1: 'objects' must be a list"),
    ("no desc", [{"image_id": "a", "objects": [{"bbox_2d": [1, 1, 2, 2]}]}], "pred.jsonl:1: objects[0]: 'desc'"),
    ("empty desc", [{"image_id": "a", "objects": [{"desc": " ", "bbox_2d": [1, 1, 2, 2]}]}], "objects[0]: 'desc'"),
    ("three numbers", [{"image_id": "a", "objects": [{"desc": "cat", "bbox_2d": [1, 1, 2]}]}], "'bbox_2d' must be 4 finite"),
    ("string coord", [{"image_id": "a", "objects": [{"desc": "cat", "bbox_2d": [1, 1, "2", 3]}]}], "'bbox_2d' must be 4 finite"),
    ("degenerate", [{"image_id": "a", "objects": [CAT, {"desc": "cat", "bbox_2d": [5, 5, 5, 9]}]}],
     "pred.jsonl:1: objects[1]: degenerate box"),
    ("outside", [{"image_id": "b", "objects": [{"desc": "cat", "bbox_2d": [10, 10, 65, 20]}]}],
     "pred.jsonl:1: objects[0]: box [10, 10, 65, 20] outside the 64x64 image"),
    ("negative", [{"image_id": "b", "objects": [{"desc": "cat", "bbox_2d": [-1, 10, 20, 20]}]}], "outside"),
    ("bad score", [{"image_id": "a", "objects": [{**CAT, "score": "high"}]}], "'score' must be a finite number"),
]


@pytest.mark.parametrize("name,rows,message", PRED_ERRORS, ids=[e[0] for e in PRED_ERRORS])
def test_eval_preds_bad_input_exits_2(tmp_path, gt, capsys, name, rows, message):
    code, m = run_preds(tmp_path, gt, rows)
    assert code == 2 and m is None
    assert message in capsys.readouterr().err


def test_eval_preds_box_on_image_border_is_allowed(tmp_path, gt):
    code, m = run_preds(tmp_path, gt, [{"image_id": "b", "objects": [{"desc": "cat", "bbox_2d": [0, 0, 64, 64]}]}])
    assert code == 0 and m["fp"] == 1


def test_eval_preds_missing_required_flag(capsys):
    assert main(["eval-preds", "--gt", "x.jsonl"]) == 2
    assert capsys.readouterr().err == (
        "vlmdet eval-preds: error: the following arguments are required: --pred (--help for usage)\n")


# ---------------------------------------------------------------- baseline answer formats

def test_parse_format_qwen3_with_gt(tmp_path, gt):
    # GT cat [10,10,50,40] in 100x80 -> 0..1000 relative [100,125,500,500]; qwen2.5-style fence + a leak
    text = ('```json\n[{"bbox_2d": [100, 125, 500, 500], "label": "cat"}, '
            '{"bbox_2d": [<|coord_1|>, 2, 3, 4], "label": "dog"}]\n```')
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"image_id": "a", "text": text}, {"image_id": "b", "text": "[]"}])
    out = tmp_path / "m.json"
    assert main(["parse", str(raw), "--gt", str(gt), "--format", "qwen3", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0) and m["bbox_AP"] == pytest.approx(1.0)
    assert m["drop/non_coord_token"] == 1 and m["sample_valid_pred_rate"] == 0.5
    # the same text read as CoordJSON: no container at all
    assert main(["parse", str(raw), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["parse_failed_rate"] == 1.0


def test_parse_format_qwen25_input_size(tmp_path, gt):
    # the model saw the 100x80 image at 200x160: pixels there are twice the GT's
    text = '[{"bbox_2d": [20, 20, 100, 80], "label": "cat"}]'
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"image_id": "a", "text": text, "input_width": 200, "input_height": 160}])
    out = tmp_path / "m.json"
    assert main(["parse", str(raw), "--gt", str(gt), "--format", "qwen25", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["bbox_AP"] == pytest.approx(1.0)
    # without the size the GT size is assumed: the box lands elsewhere (IoU 600 / 5400 = 0.11 < 0.5)
    raw = write_jsonl(tmp_path / "raw2.jsonl", [{"image_id": "a", "text": text}])
    assert main(["parse", str(raw), "--gt", str(gt), "--format", "qwen25", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tp"] == 0
    bad = write_jsonl(tmp_path / "raw3.jsonl", [{"image_id": "a", "text": text, "input_width": 0, "input_height": 1}])
    assert main(["parse", str(bad), "--format", "qwen25", "--out", str(out)]) == 2


def test_eval_preds_formats(tmp_path, gt, capsys):
    out = tmp_path / "m.json"
    q3 = write_jsonl(tmp_path / "q3.jsonl", [{"image_id": "a", "objects": [{"label": "cat", "bbox_2d": [100, 125, 500, 500]}]}])
    assert main(["eval-preds", "--gt", str(gt), "--pred", str(q3), "--format", "qwen3", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["bbox_AP"] == pytest.approx(1.0)
    q25 = write_jsonl(tmp_path / "q25.jsonl", [{"image_id": "a", "input_width": 50, "input_height": 40,
                                                "objects": [{"desc": "cat", "bbox_2d": [5, 5, 25, 20]}]}])
    assert main(["eval-preds", "--gt", str(gt), "--pred", str(q25), "--format", "qwen25", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["bbox_AP"] == pytest.approx(1.0)
    # a qwen3 box beyond 1000 lands outside the image: file:line rule, exit 2
    over = write_jsonl(tmp_path / "over.jsonl", [{"image_id": "a", "objects": [{"label": "cat", "bbox_2d": [0, 0, 1001, 5]}]}])
    capsys.readouterr()
    assert main(["eval-preds", "--gt", str(gt), "--pred", str(over), "--format", "qwen3", "--out", str(out)]) == 2
    assert f"{over}:1: objects[0]: box" in capsys.readouterr().err
    # 'label' is only read in the qwen formats
    assert main(["eval-preds", "--gt", str(gt), "--pred", str(q3), "--out", str(out)]) == 2
    assert "'desc' must be a non-empty string" in capsys.readouterr().err
