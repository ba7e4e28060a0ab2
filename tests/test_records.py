"""data/records.py: the record contract, validation errors with file:line, round trip, images."""

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from vlmdet.data.records import GtObject, Record, load_image, load_records, record_to_json, validate_record
from vlmdet.errors import DataError


def _png(path: Path, w: int, h: int, colour=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path)


def _rec(**kw) -> dict:
    base = {"image_id": "a", "image": "img/a.png", "width": 64, "height": 32,
            "objects": [{"desc": "red circle", "bbox_2d": [1.5, 2.0, 30.25, 20.0]}]}
    base.update(kw)
    return base


def _write(path: Path, lines) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


def test_load_valid_file_resolves_paths_and_bins(tmp_path):
    _png(tmp_path / "img/a.png", 64, 32)
    _png(tmp_path / "img/b.png", 640, 480)
    f = _write(tmp_path / "d.jsonl", [
        _rec(),
        "",  # blank lines are skipped
        _rec(image_id="b", image="img/b.png", width=640, height=480,
             objects=[{"desc": "person", "bbox_2d": [100, 50, 300, 200], "category_id": 1}]),
        _rec(image_id="c", objects=[]),
    ])
    recs = load_records(f)
    assert [r.image_id for r in recs] == ["a", "b", "c"]
    a, b, c = recs
    assert a.image_path == tmp_path / "img/a.png"
    assert a.objects == (GtObject("red circle", (1.5, 2.0, 30.25, 20.0)),)
    # docs/FORMAT.md golden example; ints in the file become floats
    assert b.bins() == [("person", (156, 104, 470, 418))]
    assert b.objects[0].bbox == (100.0, 50.0, 300.0, 200.0)
    assert c.objects == () and c.bins() == []
    # a box ending exactly at the image border W, H is allowed; its edge bins clamp to 999
    assert Record("x", "x.png", 64, 32, (GtObject("d", (0.0, 0.0, 64.0, 32.0)),), Path("x.png")).bins() == [
        ("d", (0, 0, 999, 999))
    ]


@pytest.mark.parametrize(
    "line, rule",
    [
        ("{not json", "bad JSON"),
        ("[1, 2]", "expected a JSON object"),
        (_rec(image_id=None), "'image_id' must be a non-empty string"),
        (_rec(image_id=""), "'image_id' must be a non-empty string"),
        ({k: v for k, v in _rec().items() if k != "image_id"}, "missing field 'image_id'"),
        ({k: v for k, v in _rec().items() if k != "objects"}, "missing field 'objects'"),
        ({k: v for k, v in _rec().items() if k != "width"}, "missing field 'width'"),
        (_rec(image=3), "'image' must be a non-empty string"),
        (_rec(width=64.0), "'width' must be an int >= 2"),
        (_rec(height=1), "'height' must be an int >= 2"),
        (_rec(width=True), "'width' must be an int >= 2"),
        (_rec(objects={"desc": "x"}), "'objects' must be a list"),
        (_rec(objects=["x"]), "objects[0] must be an object"),
        (_rec(objects=[{"bbox_2d": [1, 1, 2, 2]}]), "objects[0]: 'desc' missing or not a string"),
        (_rec(objects=[{"desc": "  ", "bbox_2d": [1, 1, 2, 2]}]), "objects[0]: empty desc"),
        (_rec(objects=[{"desc": "x", "bbox_2d": [1, 1, 2]}]), "'bbox_2d' must be 4 finite numbers"),
        (_rec(objects=[{"desc": "x"}]), "'bbox_2d' must be 4 finite numbers"),
        (_rec(objects=[{"desc": "x", "bbox_2d": [1, 1, "2", 2]}]), "'bbox_2d' must be 4 finite numbers"),
        (_rec(objects=[{"desc": "x", "bbox_2d": [1, 1, True, 2]}]), "'bbox_2d' must be 4 finite numbers"),
        ('{"image_id": "a", "image": "img/a.png", "width": 64, "height": 32, '
         '"objects": [{"desc": "x", "bbox_2d": [1, 1, NaN, 2]}]}', "'bbox_2d' must be 4 finite numbers"),
        (_rec(objects=[{"desc": "x", "bbox_2d": [5, 1, 5, 2]}]), "degenerate box"),
        (_rec(objects=[{"desc": "x", "bbox_2d": [1, 9, 5, 2]}]), "degenerate box"),
        (_rec(objects=[{"desc": "x", "bbox_2d": [-0.5, 1, 5, 2]}]), "outside the image"),
        (_rec(objects=[{"desc": "x", "bbox_2d": [1, 1, 64.01, 2]}]), "outside the image"),
        (_rec(objects=[{"desc": "x", "bbox_2d": [1, 1, 5, 32.5]}]), "outside the image"),
        (_rec(image="img/missing.png"), "unreadable image"),
        (_rec(image="img/not_an_image.png"), "unreadable image"),
        (_rec(width=65), "size mismatch: image 'img/a.png' is 64x32, record says 65x32"),
    ],
)
def test_invalid_line_names_file_line_and_rule(tmp_path, line, rule):
    _png(tmp_path / "img/a.png", 64, 32)
    (tmp_path / "img/not_an_image.png").write_text("hello")
    f = _write(tmp_path / "d.jsonl", [_rec(image_id="ok"), line])
    with pytest.raises(DataError) as err:
        load_records(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}:2: "), msg
    assert rule in msg, msg


def test_duplicate_image_id_names_both_lines(tmp_path):
    _png(tmp_path / "img/a.png", 64, 32)
    f = _write(tmp_path / "d.jsonl", [_rec(), _rec(image_id="b"), "", _rec()])
    with pytest.raises(DataError, match=rf"^{f}:4: duplicate image_id 'a' \(first on line 1\)"):
        load_records(f)


def test_check_images_false_skips_only_the_image_rules(tmp_path):
    f = _write(tmp_path / "d.jsonl", [_rec(image="nowhere.png", width=65)])
    (rec,) = load_records(f, check_images=False)
    assert rec.image_path == tmp_path / "nowhere.png" and rec.width == 65
    f2 = _write(tmp_path / "e.jsonl", [_rec(objects=[{"desc": "x", "bbox_2d": [1, 1, 99, 2]}])])
    with pytest.raises(DataError, match="outside the image"):
        load_records(f2, check_images=False)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        load_records(tmp_path / "nope.jsonl")


def test_validate_record_prefix_and_base_dir(tmp_path):
    rec = validate_record(_rec(), "somewhere:7", base_dir=tmp_path, check_images=False)
    assert rec.image_path == tmp_path / "img/a.png"
    with pytest.raises(DataError, match=r"^somewhere:7: missing field 'objects'$"):
        validate_record({"image_id": "a", "image": "x", "width": 2, "height": 2}, "somewhere:7", check_images=False)


def test_record_to_json_round_trip_and_extra_keys_dropped(tmp_path):
    _png(tmp_path / "img/a.png", 64, 32)
    line = _rec(extra_field={"x": 1})
    line["objects"][0]["category_id"] = 3
    f = _write(tmp_path / "d.jsonl", [line])
    (rec,) = load_records(f)
    out = record_to_json(rec)
    assert out == {"image_id": "a", "image": "img/a.png", "width": 64, "height": 32,
                   "objects": [{"desc": "red circle", "bbox_2d": [1.5, 2.0, 30.25, 20.0]}]}
    f2 = _write(tmp_path / "e.jsonl", [out])
    assert load_records(f2) == [rec]


def test_records_are_frozen():
    o = GtObject("a", (0.0, 0.0, 1.0, 1.0))
    with pytest.raises(AttributeError):
        o.desc = "b"


def test_load_image_is_rgb_with_the_file_pixels(tmp_path):
    Image.new("L", (64, 32), 77).save(tmp_path / "g.png")  # greyscale file -> RGB
    rec = Record("g", "g.png", 64, 32, (), tmp_path / "g.png")
    im = load_image(rec)
    assert im.mode == "RGB" and im.size == (64, 32)
    assert im.getpixel((5, 5)) == (77, 77, 77)


def test_box_rule_boundaries():
    # exact boundaries: x1 = 0 and x2 = W pass; bins are finite ints
    rec = validate_record(_rec(objects=[{"desc": "x", "bbox_2d": [0, 0, 64, 32]}]), "f:1", check_images=False)
    assert all(isinstance(k, int) and 0 <= k <= 999 for k in rec.bins()[0][1])
    assert not math.isnan(rec.objects[0].bbox[2])


def test_cli_validate_summary_and_error(tmp_path, capsys):
    from vlmdet.cli import main

    _png(tmp_path / "img/a.png", 64, 32)
    f = _write(tmp_path / "d.jsonl", [
        _rec(objects=[{"desc": "red circle", "bbox_2d": [0, 0, 63, 31]}, {"desc": "cat", "bbox_2d": [1, 1, 2, 2]}]),
        _rec(image_id="b", objects=[]),
    ])
    assert main(["data", "validate", str(f)]) == 0
    out = capsys.readouterr().out
    assert "records: 2 (1 with no objects)" in out
    assert "objects: 2 (max 2 per image)" in out
    assert "classes: 2: " in out and "red circle (1)" in out
    # x bins {0, 999, floor(1/63*999)=15, ceil(2/63*999)=32}; y bins {0, 999, floor(1/31*999)=32,
    # ceil(2/31*999)=65}; union {0, 15, 32, 65, 999}
    assert "bin coverage: x 4/1000, y 4/1000, overall 5/1000" in out

    bad = _write(tmp_path / "bad.jsonl", [_rec(), _rec(image_id="c", width=70)])
    assert main(["data", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: size mismatch" in err
    assert main(["data", "validate", str(bad), "--no-images"]) == 0
