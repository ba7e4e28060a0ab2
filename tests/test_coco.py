"""data/coco.py: COCO instances -> records, on a small COCO-format file built here."""

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmdet.data.coco import convert_coco, smart_resize
from vlmdet.data.records import load_records
from vlmdet.errors import DataError


def _img(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (120, 30, 200)).save(path)


def _ann(i, image_id, cat, bbox, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd,
            "area": bbox[2] * bbox[3]}


def _coco(tmp_path: Path, **changes) -> tuple[Path, Path]:
    images = tmp_path / "src"
    sizes = {1: (64, 32), 2: (64, 64), 3: (64, 64), 4: (100, 50), 5: (256, 128)}
    for i, (w, h) in sizes.items():
        _img(images / f"{i:04d}.png", w, h)
    data = {
        "categories": [{"id": 1, "name": "person"}, {"id": 7, "name": "traffic light"}],
        "images": [{"id": i, "file_name": f"{i:04d}.png", "width": w, "height": h}
                   for i, (w, h) in reversed(list(sizes.items()))],  # not in id order on purpose
        "annotations": [
            _ann(12, 3, 7, [50, 60, 20, 10]),  # reaches outside (x2=70, y2=70) -> clipped
            _ann(10, 3, 1, [10, 10, 20, 30]),
            _ann(11, 3, 1, [0, 0, 64, 64], crowd=1),  # crowd -> skipped
            _ann(13, 3, 1, [5, 5, 0, 10]),  # zero width -> skipped
            _ann(20, 2, 1, [1, 1, 5, 5]), _ann(21, 2, 1, [10, 10, 5, 5]), _ann(22, 2, 7, [20, 20, 5, 5]),  # 3 objects
            _ann(30, 4, 7, [10, 5, 40, 20]),
            _ann(40, 5, 1, [32, 16, 64, 32]),
        ],
    }
    data.update(changes)
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(data))
    return path, images


@pytest.mark.parametrize(
    "w, h, budget, expected",
    [
        (640, 480, None, (640, 480)),
        (640, 480, 786432, (640, 480)),  # COCO 640x480 stays as is (no upscale to fill the budget)
        (1000, 700, 786432, (992, 704)),  # rounded to the nearest multiple of 32 each
        (2000, 1500, 786432, (1024, 768)),  # beta = sqrt(3e6/786432) = 1.953125: 1024.0 x 768.0
        (20, 10, None, (32, 32)),  # at least one factor
        (100, 50, None, (96, 64)),
        (256, 128, 8192, (128, 64)),  # beta = 2
    ],
)
def test_smart_resize(w, h, budget, expected):
    out = smart_resize(w, h, budget)
    assert out == expected
    assert out[0] % 32 == 0 and out[1] % 32 == 0
    if budget is not None:
        assert out[0] * out[1] <= budget


def test_convert(tmp_path):
    instances, images = _coco(tmp_path)
    out = tmp_path / "out"
    entry = convert_coco(instances, images, out, max_objects=2, max_pixels=8192, progress=False)
    assert entry["jsonl"] == "val2017.jsonl"
    assert entry["counts"] == {
        "images_in": 5, "images_out": 4, "objects_out": 4, "crowd_skipped": 1, "degenerate_skipped": 1,
        "clipped": 1, "empty_images": 1, "dropped_max_objects": 1, "resized": 2,
    }
    assert entry["categories"] == ["person", "traffic light"]
    assert "round(side/32)*32" in entry["resize_rule"] and entry["max_pixels"] == 8192
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["val2017"] == entry

    recs = load_records(out / "val2017.jsonl")  # every image exists and has the recorded size
    assert [r.image_id for r in recs] == ["1", "3", "4", "5"]
    by = {r.image_id: r for r in recs}
    assert by["1"].objects == () and (by["1"].width, by["1"].height) == (64, 32)
    # unchanged image: referenced in place
    assert by["3"].image_path.resolve() == (images / "0003.png").resolve()
    assert [(o.desc, o.bbox) for o in by["3"].objects] == [
        ("person", (10.0, 10.0, 30.0, 40.0)),  # ann 10 before ann 12 (annotation id order)
        ("traffic light", (50.0, 60.0, 64.0, 64.0)),  # clipped to the image
    ]
    # 100x50 -> 96x64: x * 0.96, y * 1.28;  xywh [10, 5, 40, 20] -> xyxy [10, 5, 50, 25]
    r4 = by["4"]
    assert (r4.width, r4.height) == (96, 64) and r4.image == "images/0004.png"
    assert r4.objects[0].bbox == pytest.approx((9.6, 6.4, 48.0, 32.0))
    assert Image.open(out / "images/0004.png").size == (96, 64)
    # 256x128 over 8192 px -> 128x64 (beta 2): xyxy [32, 16, 96, 48] -> [16, 8, 48, 24]
    r5 = by["5"]
    assert (r5.width, r5.height) == (128, 64)
    assert r5.objects[0].bbox == pytest.approx((16.0, 8.0, 48.0, 24.0))


def test_no_filters_keeps_everything_and_splits_share_the_manifest(tmp_path):
    instances, images = _coco(tmp_path)
    out = tmp_path / "out"
    e1 = convert_coco(instances, images, out, progress=False)
    assert e1["counts"]["images_out"] == 5 and e1["counts"]["dropped_max_objects"] == 0
    assert e1["counts"]["resized"] == 1  # only 100x50 is not a multiple of 32
    e2 = convert_coco(instances, images, out, split="mini", max_objects=1, progress=False)
    assert (out / "mini.jsonl").exists() and e2["counts"]["dropped_max_objects"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"val2017", "mini"}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"categories": [{"id": 1, "name": "person"}]}, "annotation 12: unknown category_id 7"),
        ({"images": [{"id": 3, "file_name": "0003.png", "width": 64, "height": 63}]},
         "unknown image_id|JSON says 64x63"),
        ({"images": [{"id": 3, "file_name": "0003.png", "width": 64, "height": 63}], "annotations": []},
         r"image 3: file .*0003.png is 64x64, JSON says 64x63"),
        ({"images": [{"id": 9, "file_name": "nope.png", "width": 4, "height": 4}], "annotations": []},
         "image 9: unreadable image"),
        ({"annotations": None}, "not a COCO instances file"),
        ({"annotations": [{"id": 1, "image_id": 3, "category_id": 1}]}, r"annotations\[0\]: missing bbox"),
        ({"annotations": [{"id": 5, "image_id": 3, "category_id": 1, "bbox": [1, 2, 3]}]}, r"annotation 5: bbox must be 4 finite numbers"),
        ({"images": [{"id": 3, "width": 64, "height": 64}]}, r"images\[0\]: missing file_name"),
        ({"images": [{"id": 3, "file_name": "0003.png", "width": "64", "height": 64}], "annotations": []},
         r"images\[0\]: 'width' must be an int >= 1, got '64'"),
        ({"images": [{"id": 3, "file_name": "0003.png", "width": 64, "height": 64},
                     {"id": "4", "file_name": "0004.png", "width": 100, "height": 50}], "annotations": []},
         r"images: ids must be all ints or all strings, got \['int', 'str'\]"),
        ({"categories": [{"id": 1, "name": 3}, {"id": 7, "name": "x"}]}, r"categories\[0\]: 'name' must be a non-empty string, got 3"),
        ({"categories": [{"id": 1, "name": " "}, {"id": 7, "name": "x"}]}, r"categories\[0\]: 'name' must be a non-empty string"),
        # paths from the file stay inside --images
        ({"images": [{"id": 3, "file_name": "../escape.png", "width": 64, "height": 64}], "annotations": []},
         r"image 3: file_name: '../escape.png' must be a path inside the images folder"),
        ({"images": [{"id": 3, "file_name": "/etc/passwd", "width": 64, "height": 64}], "annotations": []},
         r"image 3: file_name: '/etc/passwd' must be a path inside the images folder"),
        ({"images": [{"id": 3, "file_name": "link/0001.png", "width": 64, "height": 32}], "annotations": []},
         r"image 3: file_name: 'link/0001.png' leads out of the images folder"),
    ],
)
def test_input_faults_fail(tmp_path, change, match):
    instances, images = _coco(tmp_path, **change)
    outside = tmp_path / "outside"
    _img(outside / "0001.png", 64, 32)
    (images / "link").symlink_to(outside)
    with pytest.raises(DataError, match=match):
        convert_coco(instances, images, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written


def test_top_level_list_and_non_utf8_fail(tmp_path):
    path = tmp_path / "instances_x.json"
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"instances_x.json: not a COCO instances file \(the top level is a list"):
        convert_coco(path, tmp_path, tmp_path / "out", progress=False)
    path.write_bytes(b'{"images": [],\n "categories": ["\xff"]}')
    with pytest.raises(DataError, match=r"instances_x.json:2: not UTF-8 text \(byte offset 32\)"):
        convert_coco(path, tmp_path, tmp_path / "out", progress=False)


def test_a_late_bad_image_leaves_no_resized_images(tmp_path):
    """Image 5 (the last in id order) is broken; images 1..4 would be resized first by a one-pass
    converter. Every image is checked before any is written."""
    instances, images = _coco(tmp_path)
    (images / "0005.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a header and nothing else
    with pytest.raises(DataError, match="image 5: unreadable image"):
        convert_coco(instances, images, tmp_path / "out", max_pixels=8192, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_coco(tmp_path, capsys):
    from vlmdet.cli import main

    instances, images = _coco(tmp_path)
    out = tmp_path / "out"
    assert main(["data", "coco", "--instances", str(instances), "--images", str(images), "--out", str(out),
                 "--max-objects", "2", "--max-pixels", "8192"]) == 0
    printed = capsys.readouterr().out
    assert "val2017.jsonl" in printed and '"dropped_max_objects": 1' in printed
    assert len(load_records(out / "val2017.jsonl")) == 4
