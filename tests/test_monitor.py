"""Monitor dumps: selection order, clipping, file layout, drawing."""

import json

import numpy as np
import pytest
from PIL import Image

from vlmdet.evaluate.monitor import (
    CLIP_SUFFIX,
    GT_COLOUR,
    HALO,
    LEGEND_BG,
    LEGEND_HEIGHT,
    PRED_COLOUR,
    clip_text,
    draw_sample,
    has_problem,
    pair_labels,
    png_name,
    sample_f1,
    select_samples,
    write_dump,
)

FLAGS = {"failed": False, "truncated": False, "malformed_container": False, "incomplete_tail": False,
         "empty_pred": False, "hit_max_new_tokens": False}


def sample(image_id, n_obj=1, n_gt=1, n_match=1, drops=0, image="", text="{}", **flags):
    return {
        "image_id": image_id, "image": image, "width": 32, "height": 32, "raw_text": text,
        "flags": {**FLAGS, **flags},
        "objects": [{"index": i, "desc": "red", "bins": [0, 0, 500, 500], "bbox_2d": [2.0, 2.0, 20.0, 20.0],
                     "score": 0.5} for i in range(n_obj)],
        "drops": [{"reason": "non_coord_token", "index": n_obj + i, "span": [0, 2], "text": "{}"} for i in range(drops)],
        "gt": [{"desc": "red", "bbox_2d": [4.0, 4.0, 24.0, 24.0]} for _ in range(n_gt)],
        "matches": [{"pred": i, "gt": i, "iou": 0.7} for i in range(n_match)],
    }


@pytest.mark.parametrize(
    "s,f1,problem",
    [
        (sample("a", 1, 1, 1), 1.0, False),
        (sample("b", 2, 1, 1), 2 / 3, False),
        (sample("c", 0, 0, 0), 1.0, False),  # empty answer on an empty image: perfect
        (sample("d", 0, 2, 0, empty_pred=True), 0.0, False),  # empty alone is not a "problem"
        (sample("e", 1, 1, 1, drops=1), 1.0, True),
        (sample("f", 1, 1, 1, truncated=True), 1.0, True),
        (sample("g", 0, 1, 0, failed=True), 0.0, True),
        (sample("h", 1, 1, 1, hit_max_new_tokens=True), 1.0, True),
        (sample("i", 1, 1, 1, malformed_container=True), 1.0, True),
    ],
)
def test_f1_and_problem(s, f1, problem):
    assert sample_f1(s) == pytest.approx(f1)
    assert has_problem(s) is problem


def test_selection_order():
    samples = [
        sample("ok_perfect", 1, 1, 1),
        sample("ok_bad", 2, 2, 0),  # f1 0
        sample("drop_good", 1, 1, 1, drops=1),  # problem, f1 1
        sample("trunc_half", 1, 2, 1, truncated=True),  # problem, f1 2/3
        sample("ok_mid", 2, 1, 1),  # f1 2/3
        sample("fail", 0, 1, 0, failed=True),  # problem, f1 0
    ]
    order = [s["image_id"] for s in select_samples(samples, 10)]
    assert order == ["fail", "trunc_half", "drop_good", "ok_bad", "ok_mid", "ok_perfect"]
    assert [s["image_id"] for s in select_samples(samples, 2)] == ["fail", "trunc_half"]
    assert select_samples(samples, 0) == []


@pytest.mark.parametrize(
    "text,n,out",
    [("abcdef", 0, "abcdef"), ("abcdef", 6, "abcdef"), ("abcdef", 4, "abcd" + CLIP_SUFFIX), ("", 3, "")],
)
def test_clip_text(text, n, out):
    assert clip_text(text, n) == out


@pytest.mark.parametrize("image_id,name", [("img_1", "img_1.png"), ("a/b c", "a_b_c.png"), ("x.y-z", "x.y-z.png")])
def test_png_name(image_id, name):
    assert png_name(image_id) == name


def test_draw_sample_colours(tmp_path):
    path = tmp_path / "im.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(path)
    s = sample("x", image=str(path))
    img = np.asarray(draw_sample(s))
    assert img.shape == (256 + LEGEND_HEIGHT, 256, 3)  # 32 px upscaled 8x (the cap), legend strip under it
    # GT [4, 4, 24, 24] -> [32, 32, 192, 192] dashed; prediction [2, 2, 20, 20] -> [16, 16, 160, 160] solid
    gt_edge = [tuple(px) for px in img[40:190, 192]]
    assert gt_edge.count(GT_COLOUR) > 50 and gt_edge.count(HALO) > 50 and gt_edge.count((128, 128, 128)) == 0
    assert all(tuple(px) == PRED_COLOUR for px in img[60:150, 16])  # left edge of the prediction: unbroken
    assert tuple(img[220, 220]) == (128, 128, 128)
    assert tuple(img[256 + 30, 250]) == LEGEND_BG


def test_box_colours_cannot_be_taken_for_a_class_colour():
    from vlmdet.data.synth import COLOURS, DEFAULT_COLOURS

    for colour in (GT_COLOUR, PRED_COLOUR):
        for name in DEFAULT_COLOURS:
            assert np.linalg.norm(np.subtract(colour, COLOURS[name])) > 150, (colour, name)
        for grey in (100, 160):  # the synthetic background levels
            assert np.linalg.norm(np.subtract(colour, (grey,) * 3)) > 150


@pytest.mark.parametrize("objs,gts,matches,gt_labels,pred_labels", [
    ([("red circle", 0.934)], ["red circle"], [(0, 0)], ["#1 red circle"], ["#1 red circle 0.93"]),
    # second prediction matched to the first GT with the wrong class; the first prediction unmatched
    ([("blue square", 0.5), ("red square", None)], ["red circle", "blue square"], [(1, 0)],
     ["#1 red circle", "FN blue square"], ["FP blue square 0.50", "#1 red square (wrong class)"]),
    ([], ["a"], [(0, 0)], ["FN a"], []),  # a match that points nowhere is ignored
])
def test_pair_labels(objs, gts, matches, gt_labels, pred_labels):
    s = {"objects": [{"desc": d, "score": sc} for d, sc in objs], "gt": [{"desc": d} for d in gts],
         "matches": [{"pred": p, "gt": g} for p, g in matches]}
    assert pair_labels(s) == (gt_labels, pred_labels)


def test_write_dump_layout(tmp_path):
    im = tmp_path / "im.png"
    Image.new("RGB", (32, 32)).save(im)
    samples = [sample("good", image=str(im), text="x" * 50),
               sample("bad/1", image=str(im), drops=1, text="y" * 50),
               sample("missing", 0, 1, 0, image=str(tmp_path / "nope.png"), failed=True)]
    path = tmp_path / "monitor_dumps" / "step_000012.json"
    payload = write_dump(path, 12, samples, n_samples=2, max_text_chars=10, draw_images=True)
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk == payload
    assert on_disk["step"] == 12 and on_disk["n_total"] == 3 and on_disk["kind"] == "eval_rollout"
    assert [s["image_id"] for s in on_disk["samples"]] == ["missing", "bad/1"]
    bad = on_disk["samples"][1]
    assert bad["raw_text"] == "y" * 10 + CLIP_SUFFIX and bad["raw_text_chars"] == 50
    assert bad["png"] == str(path.with_suffix("") / "bad_1.png") and (path.with_suffix("") / "bad_1.png").exists()
    assert "png" not in on_disk["samples"][0]
    assert len(on_disk["png_errors"]) == 1 and on_disk["png_errors"][0].startswith("missing:")
    assert samples[1]["raw_text"] == "y" * 50  # the caller's samples are not modified


def test_write_dump_without_images_keeps_text(tmp_path):
    path = tmp_path / "d.json"
    write_dump(path, 0, [sample("a", text="é" * 5000)], n_samples=5, max_text_chars=0, draw_images=False)
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk["samples"][0]["raw_text"] == "é" * 5000
    assert "\\u00e9" not in path.read_text(encoding="utf-8")  # UTF-8, not ASCII-escaped
    assert not path.with_suffix("").exists()


def test_png_names_do_not_clash(tmp_path):
    im = tmp_path / "im.png"
    Image.new("RGB", (32, 32)).save(im)
    path = tmp_path / "step_000001.json"
    payload = write_dump(path, 1, [sample("a/b", image=str(im)), sample("a_b", image=str(im))], n_samples=2)
    assert sorted(p.name for p in path.with_suffix("").iterdir()) == ["a_b.png", "a_b_2.png"]
    assert len({s["png"] for s in payload["samples"]}) == 2
