"""experiment_bootstrap: per-image COCO re-accumulation against whole-set COCO and a hand case; the paired
bootstrap's sample distribution; the command line."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from vlmdet.cli import main
from vlmdet.evaluate.detection import DetectionSet, coco_metrics
from vlmdet.experiment_bootstrap import PerImageCOCO, paired_bootstrap

# COCO AP50 of one category, 2 GT objects, detections ranked TP then FP: precision 1 up to recall 0.5,
# nothing beyond -> 51 of the 101 recall points at precision 1.
HALF = 51 / 101

GT = [("a", 100, 100, [("cat", (10, 10, 50, 50))]),
      ("b", 100, 100, [("cat", (20, 20, 60, 60))])]


def make_set(images, preds) -> DetectionSet:
    """`images`: [(id, w, h, [(desc, box)])]; `preds[k]`: [(desc, box, score)] of image k."""
    ds = DetectionSet()
    for (iid, w, h, objs), p in zip(images, preds):
        ds.add_predictions(ds.add_image(iid, w, h, objs), p)
    return ds


def half_right():  # image a found (score 0.9), image b answered with a box far from its object (0.8)
    return make_set(GT, [[("cat", (10, 10, 50, 50), 0.9)], [("cat", (70, 70, 95, 95), 0.8)]])


def all_right():
    return make_set(GT, [[("cat", (10, 10, 50, 50), 0.9)], [("cat", (20, 20, 60, 60), 0.8)]])


@pytest.mark.parametrize("counts, ap50", [
    ((1, 1), HALF),   # the full set
    ((2, 0), 1.0),    # only the found image, twice
    ((0, 2), 0.0),    # only the missed image, twice: GT but no true positive
    ((3, 1), 1.0 * 76 / 101),  # 3 TP (scores 0.9) then 1 FP: precision 1 up to recall 0.75 -> 76 points
])
def test_hand_ap50_of_multisets(counts, ap50):
    m = PerImageCOCO(half_right()).metrics(np.array(counts))
    assert m["bbox_AP50"] == pytest.approx(ap50, abs=1e-9)


def random_set(rng: random.Random, n: int, names=("red circle", "blue square", "green triangle")):
    images, preds = [], []
    for i in range(n):
        objs = []
        for _ in range(rng.randint(0, 3)):
            x, y = rng.uniform(0, 60), rng.uniform(0, 60)
            objs.append((rng.choice(names), (x, y, x + rng.uniform(10, 40), y + rng.uniform(10, 40))))
        images.append((f"im{i}", 100, 100, objs))
        p = [(d if rng.random() < 0.8 else rng.choice(names), tuple(v + rng.uniform(-4, 4) for v in b), rng.random())
             for d, b in objs if rng.random() < 0.9]
        p += [(rng.choice(names), (5.0, 5.0, 30.0, 30.0), rng.random()) for _ in range(rng.randint(0, 1))]
        preds.append([(d, tuple(min(max(v, 0.0), 100.0) for v in b), s) for d, b, s in p])
    return images, preds


def test_full_set_and_multisets_equal_whole_set_coco():
    """Re-accumulated per-image results = `coco_metrics` of the set with each drawn copy a separate image."""
    rng = random.Random(3)
    images, preds = random_set(rng, 40)
    per_image = PerImageCOCO(make_set(images, preds))
    full = coco_metrics(make_set(images, preds))
    assert per_image.metrics(np.ones(40, dtype=int)) == pytest.approx(full, abs=1e-12)
    counts = np.random.default_rng(0).multinomial(40, [1 / 40] * 40)
    copies = [(f"{iid}#{c}", w, h, objs) for k, (iid, w, h, objs) in enumerate(images) for c in range(counts[k])]
    copy_preds = [preds[k] for k in range(40) for _ in range(counts[k])]
    assert per_image.metrics(counts) == pytest.approx(coco_metrics(make_set(copies, copy_preds)), abs=1e-12)


def test_paired_bootstrap_takes_the_three_hand_values():
    """2 images: the draws are (2,0), (1,1), (0,2) with probability 1/4, 1/2, 1/4; all_right has AP50 1 on
    each, half_right 1, 51/101, 0: the differences are 0, 50/101, 1 at those rates."""
    res = paired_bootstrap(PerImageCOCO(half_right()), {"right": PerImageCOCO(all_right())}, samples=400, seed=1)
    r = res["arms"]["right"]
    assert res["base"] == pytest.approx(HALF) and r["value"] == pytest.approx(1.0)
    assert r["delta"] == pytest.approx(1 - HALF)
    assert r["lo"] == pytest.approx(0.0) and r["hi"] == pytest.approx(1.0)
    assert r["p_ahead"] == pytest.approx(0.75, abs=0.07)  # binomial std 0.022
    assert r["boot_mean"] == pytest.approx(0.5 * (1 - HALF) + 0.25, abs=0.06)  # std of the mean 0.018
    again = paired_bootstrap(PerImageCOCO(half_right()), {"right": PerImageCOCO(all_right())}, samples=400, seed=1)
    assert again == res


def test_several_files_count_as_their_mean():
    """[half_right, all_right] vs half_right: the mean's difference is half of all_right's on every sample."""
    one = paired_bootstrap(PerImageCOCO(half_right()), {"right": PerImageCOCO(all_right())}, samples=100, seed=2)
    two = paired_bootstrap(PerImageCOCO(half_right()), {"mean": [PerImageCOCO(half_right()), PerImageCOCO(all_right())]},
                           samples=100, seed=2)
    assert two["arms"]["mean"]["value"] == pytest.approx((HALF + 1) / 2)
    for k in ("delta", "boot_mean", "lo", "hi"):
        assert two["arms"]["mean"][k] == pytest.approx(one["arms"]["right"][k] / 2)


def test_same_detector_has_zero_interval():
    res = paired_bootstrap(PerImageCOCO(half_right()), {"same": PerImageCOCO(half_right())}, samples=50)
    assert res["arms"]["same"]["lo"] == res["arms"]["same"]["hi"] == 0.0


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_command_line(tmp_path, capsys):
    gt = _write(tmp_path / "gt.jsonl", [
        {"image_id": iid, "image": f"{iid}.png", "width": w, "height": h,
         "objects": [{"desc": d, "bbox_2d": list(b)} for d, b in objs]} for iid, w, h, objs in GT])
    half = _write(tmp_path / "half.jsonl", [
        {"image_id": "a", "objects": [{"desc": "cat", "bbox_2d": [10, 10, 50, 50], "score": 0.9}]},
        {"image_id": "b", "objects": [{"desc": "cat", "bbox_2d": [70, 70, 95, 95], "score": 0.8}]}])
    right = _write(tmp_path / "right.jsonl", [
        {"image_id": "a", "objects": [{"desc": "cat", "bbox_2d": [10, 10, 50, 50], "score": 0.9}]},
        {"image_id": "b", "objects": [{"desc": "cat", "bbox_2d": [20, 20, 60, 60], "score": 0.8}]}])
    out = tmp_path / "boot.json"
    assert main(["experiment", "bootstrap", "--gt", str(gt), "--base", f"half={half}", "--arm", f"right={right}",
                 "--samples", "200", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == 2 and res["base"] == pytest.approx(HALF)
    assert res["arms"]["right"]["delta"] == pytest.approx(1 - HALF)
    assert f"| right | 1.000 | +{1 - HALF:.3f} | [+0.000, +1.000] |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--base", "half", "--arm", "x=X"], "--base 'half': expected NAME=PRED.jsonl"),
    (["--base", "h=GT", "--arm", "x=GT,"], "--arm 'x="),
    (["--base", "half=missing.jsonl", "--arm", "x=X"], "no such file missing.jsonl"),
    (["--base", "h=GT", "--arm", "h=GT"], "every NAME must differ"),
    (["--base", "h=GT", "--arm", "x=GT", "--samples", "3"], "--samples"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    gt = _write(tmp_path / "gt.jsonl", [{"image_id": "a", "image": "a.png", "width": 10, "height": 10, "objects": []}])
    argv = [a.replace("GT", str(gt)) for a in argv]
    try:
        code = main(["experiment", "bootstrap", "--gt", str(gt), *argv])
    except SystemExit as e:  # argparse's own checks (--samples) exit; the command's checks return 2
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_documented_bootstrap_commands_run(tmp_path, monkeypatch, capsys):
    """docs/results/README.md's `vlmdet experiment bootstrap` commands, as written, on a 2-image stand-in of
    the files they name: the GT is the documented test set and every PRED file the `predictions.jsonl` of a
    documented `vlmdet eval --out` on it."""
    from test_experiment import DOCS, documented_experiment_commands

    cmds = [c for c in documented_experiment_commands(DOCS[1:], grids=False) if c[1] == "bootstrap"]
    evals = {argv[argv.index("--out") + 1]: argv[argv.index("--data") + 1]
             for argv in documented_experiment_commands(DOCS[1:], "eval")}
    assert cmds
    monkeypatch.chdir(tmp_path)
    for argv in cmds:
        gt = argv[argv.index("--gt") + 1]
        named = [argv[i + 1] for i, a in enumerate(argv) if a in ("--base", "--arm")]  # the base first
        preds = [(k, p) for k, text in enumerate(named) for p in text.partition("=")[2].split(",")]
        for k, pred in preds:
            folder = pred.removesuffix("/eval/step_000000/predictions.jsonl")
            assert evals.get(folder) == gt, pred
            Path(pred).parent.mkdir(parents=True, exist_ok=True)
            box = [20, 20, 60, 60] if k else [70, 70, 95, 95]
            _write(Path(pred), [{"image_id": "a", "objects": [{"desc": "cat", "bbox_2d": [10, 10, 50, 50], "score": 0.9}]},
                                {"image_id": "b", "objects": [{"desc": "cat", "bbox_2d": box, "score": 0.8}]}])
        Path(gt).parent.mkdir(parents=True, exist_ok=True)
        _write(Path(gt), [{"image_id": iid, "image": f"{iid}.png", "width": w, "height": h,
                           "objects": [{"desc": d, "bbox_2d": list(b)} for d, b in objs]} for iid, w, h, objs in GT])
        argv[argv.index("--samples") + 1] = "20"
        assert main(argv) == 0
        assert f"+{1 - HALF:.3f}" in capsys.readouterr().out
