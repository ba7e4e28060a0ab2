"""data/synth.py: contract-valid output, determinism, sorted objects, tight boxes, bin coverage."""

import json

import numpy as np
import pytest
from PIL import Image

from vlmdet.coords import pixel_box_to_bins
from vlmdet.data.records import load_records
from vlmdet.data.synth import CLASS_NAMES, class_names, make_synth, overlap
from vlmdet.errors import UsageError


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifest = make_synth(out, n_train=40, n_val=8, seed=3, size=64)
    return out, manifest


def test_class_names_are_multi_word_colour_shape():
    assert len(CLASS_NAMES) == 9 and len(set(CLASS_NAMES)) == 9
    assert all(len(n.split()) == 2 for n in CLASS_NAMES)
    assert "red circle" in CLASS_NAMES and "blue triangle" in CLASS_NAMES
    assert class_names(("green",), ("square", "diamond")) == ("green square", "green diamond")


def test_output_loads_under_the_record_contract(small):
    out, manifest = small
    train = load_records(out / "train.jsonl")  # checks image files and sizes too
    val = load_records(out / "val.jsonl")
    assert len(train) == 40 and len(val) == 8
    ids = [r.image_id for r in train + val]
    assert len(set(ids)) == len(ids)
    for r in train + val:
        assert (r.width, r.height) == (64, 64)
        assert not r.image.startswith("/") and r.image.startswith("images/")
        assert 1 <= len(r.objects) <= 4
        assert all(o.desc in CLASS_NAMES for o in r.objects)
        for o in r.objects:
            assert 0 <= o.bbox[0] < o.bbox[2] <= 63 and 0 <= o.bbox[1] < o.bbox[3] <= 63
            side = max(o.bbox[2] - o.bbox[0], o.bbox[3] - o.bbox[1])
            assert 0.125 * 64 - 1e-3 <= side <= 0.5 * 64 * 1.2 + 1e-3
    assert manifest["counts"]["train"]["images"] == 40
    assert manifest["counts"]["train"]["objects"] == sum(len(r.objects) for r in train)
    assert sum(manifest["counts"]["val"]["per_class"].values()) == sum(len(r.objects) for r in val)
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_objects_sorted_by_bins_y1_then_x1(small):
    out, _ = small
    for r in load_records(out / "train.jsonl"):
        keys = [(b[1], b[0]) for _, b in r.bins()]
        assert keys == sorted(keys)


def test_boxes_are_continuous_floats(small):
    out, _ = small
    vals = [v for r in load_records(out / "train.jsonl") for o in r.objects for v in o.bbox]
    assert sum(v != round(v) for v in vals) > 0.95 * len(vals)


def test_overlap_is_bounded(small):
    out, manifest = small
    limit = manifest["params"]["max_overlap"]
    for r in load_records(out / "train.jsonl"):
        boxes = [o.bbox for o in r.objects]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert overlap(boxes[i], boxes[j]) <= limit + 1e-6


def test_overlap_function():
    assert overlap((0, 0, 10, 10), (2, 2, 4, 4)) == 1.0  # contained
    assert overlap((0, 0, 10, 10), (5, 0, 15, 10)) == 0.5
    assert overlap((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = make_synth(tmp_path / "a", n_train=6, n_val=3, seed=7, size=64)
    b = make_synth(tmp_path / "b", n_train=6, n_val=3, seed=7, size=64)
    assert a == b
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa == fb and len(fa) == 6 + 3 + 3
    c = make_synth(tmp_path / "c", n_train=6, n_val=3, seed=8, size=64)
    assert _files(tmp_path / "c")["train.jsonl"] != fa["train.jsonl"]
    assert c != a


def test_train_does_not_depend_on_n_val(tmp_path):
    make_synth(tmp_path / "a", n_train=5, n_val=1, seed=1, size=64)
    make_synth(tmp_path / "b", n_train=5, n_val=4, seed=1, size=64)
    assert (tmp_path / "a/train.jsonl").read_bytes() == (tmp_path / "b/train.jsonl").read_bytes()
    assert (tmp_path / "a/images/train_000004.png").read_bytes() == (tmp_path / "b/images/train_000004.png").read_bytes()


def test_smaller_train_set_is_a_prefix_of_a_larger_one_and_val_is_unchanged(tmp_path):
    # the demo relies on it: Stage-1 (--from-scratch) uses 20000 images, Stage-2 the first 2000
    make_synth(tmp_path / "a", n_train=3, n_val=2, seed=1, size=64)
    make_synth(tmp_path / "b", n_train=6, n_val=2, seed=1, size=64)
    a = (tmp_path / "a/train.jsonl").read_text().splitlines()
    b = (tmp_path / "b/train.jsonl").read_text().splitlines()
    assert len(a) == 3 and len(b) == 6 and b[:3] == a
    assert (tmp_path / "a/images/train_000002.png").read_bytes() == (tmp_path / "b/images/train_000002.png").read_bytes()
    assert (tmp_path / "a/val.jsonl").read_bytes() == (tmp_path / "b/val.jsonl").read_bytes()


def test_box_is_tight_around_the_drawn_shape(tmp_path):
    # noise 0 and one object: the pixels that differ from the background are the shape
    make_synth(tmp_path, n_train=30, n_val=0, seed=0, size=64, max_objects=1, noise=0.0)
    for r in load_records(tmp_path / "train.jsonl"):
        (o,) = r.objects
        px = np.asarray(Image.open(r.image_path).convert("RGB")).astype(int)
        values, counts = np.unique(px.reshape(-1, 3), axis=0, return_counts=True)
        background = values[counts.argmax()]
        ys, xs = np.nonzero(np.abs(px - background).sum(-1) > 3)
        x1, y1, x2, y2 = o.bbox
        # every changed pixel centre lies within half a pixel of the box (anti-aliased edge)
        assert xs.min() >= x1 - 0.5 and xs.max() <= x2 + 0.5, (r.image_id, o)
        assert ys.min() >= y1 - 0.5 and ys.max() <= y2 + 0.5, (r.image_id, o)
        # and the shape reaches the box on every side (within 1.5 px: apex/curve coverage fades)
        assert xs.min() <= x1 + 1.5 and xs.max() >= x2 - 1.5, (r.image_id, o)
        assert ys.min() <= y1 + 1.5 and ys.max() >= y2 - 1.5, (r.image_id, o)


def test_parameters(tmp_path):
    m = make_synth(tmp_path, n_train=10, n_val=0, seed=0, size=96, colours=("yellow",),
                   shapes=("diamond", "circle"), max_objects=2)
    assert m["class_names"] == ["yellow diamond", "yellow circle"]
    recs = load_records(tmp_path / "train.jsonl")
    assert all(r.width == 96 and 1 <= len(r.objects) <= 2 for r in recs)
    assert {o.desc for r in recs for o in r.objects} <= {"yellow diamond", "yellow circle"}
    with pytest.raises(UsageError, match="multiple of 32"):
        make_synth(tmp_path / "x", 1, 0, size=100)
    with pytest.raises(UsageError, match="unknown colour 'pink'"):
        make_synth(tmp_path / "x", 1, 0, colours=("pink",))
    with pytest.raises(UsageError, match="unknown shape 'star'"):
        make_synth(tmp_path / "x", 1, 0, shapes=("star",))


def test_bin_coverage_is_reported_and_nearly_complete(tmp_path):
    m = make_synth(tmp_path, n_train=400, n_val=0, seed=0, size=128)
    recs = load_records(tmp_path / "train.jsonl", check_images=False)
    xs, ys = set(), set()
    for r in recs:
        for o in r.objects:
            b = pixel_box_to_bins(o.bbox, r.width, r.height)
            xs |= {b[0], b[2]}
            ys |= {b[1], b[3]}
    cov = m["bin_coverage"]["train"]
    assert cov == {"x": len(xs), "y": len(ys), "overall": len(xs | ys), "of": 1000}
    # integer-pixel boxes at 128 px could reach at most 129 bins per axis; ~1000 objects of
    # continuous boxes cover most of the lattice already
    assert cov["x"] > 700 and cov["y"] > 700 and cov["overall"] > 800


def test_cli_synth(tmp_path, capsys):
    from vlmdet.cli import main

    assert main(["data", "synth", "--out", str(tmp_path), "--train", "5", "--val", "2", "--seed", "4",
                 "--size", "64", "--max-objects", "2"]) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["seed"] == 4 and m["size"] == 64 and m["params"]["max_objects"] == 2
    assert len(load_records(tmp_path / "train.jsonl")) == 5 and len(load_records(tmp_path / "val.jsonl")) == 2
    cov = m["bin_coverage"]["train"]
    assert f"bin coverage x {cov['x']}/1000, y {cov['y']}/1000, overall {cov['overall']}/1000" in out


def test_cli_synth_object_sizes_match_make_synth(tmp_path, capsys):
    """`--min-frac/--max-frac` reach make_synth: the CLI with the demo's sizes writes the demo's records."""
    from vlmdet.cli import main
    from vlmdet.demo import DEMO_DATA

    assert main(["data", "synth", "--out", str(tmp_path / "cli"), "--train", "3", "--val", "2", "--max-objects", "3",
                 "--min-frac", "0.1875", "--max-frac", "0.5"]) == 0
    make_synth(tmp_path / "lib", **{**DEMO_DATA, "n_train": 3, "n_val": 2})
    for split in ("train", "val"):
        assert (tmp_path / "cli" / f"{split}.jsonl").read_text() == (tmp_path / "lib" / f"{split}.jsonl").read_text()
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["params"]["min_frac"] == 0.1875
    assert main(["data", "synth", "--out", str(tmp_path / "bad"), "--min-frac", "0.6", "--max-frac", "0.5"]) == 2
    assert "--min-frac: 0.6 is larger than --max-frac 0.5" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
