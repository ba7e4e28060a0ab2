"""Peak memory and time of `vlmdet eval-preds` and `vlmdet parse --gt`: this source against an older one.

    python benchmarks/bench_eval_memory.py [--predictions 10000 100000] [--old REF | --new-only] [--keep DIR]

For each size the script writes a seeded synthetic set: GT JSONL (640x480 images, 1-8 objects of
5 classes each, no image files: both commands never open them), predictions JSONL (10 per image,
noisy copies of GT boxes, 20 % relabelled, scores in [0, 1)) and the same predictions as raw CoordJSON
answers (`format.render_answer`) for `vlmdet parse`. Each command then runs in a fresh child process,
once with this source tree and once with the source of git revision `--old` (extracted with
`git archive` into a temporary folder; default: the last revision before streaming evaluation),
alternating old and new; the child's peak RSS is `ru_maxrss` from `os.wait4`. `per image` is
(peak RSS - the same command's peak on a 10-image set) / images: the memory that grows with the
input, without the interpreter and the libraries. The metrics JSON files of old and new are compared
(`identical` = same keys, bit-identical values). `--new-only` measures this source alone (a shallow
clone has no older revision to extract); with `--keep DIR` it still compares with the old metrics
files an earlier run left in DIR (the sets are seeded: the same files every run).

`--breakdown` instead runs the evaluation stages in one process on the first `--predictions` size and
prints the RSS growth after each stage, for the old revision (where its memory goes) and for this
source: for eval-preds the flat arrays, then the peaks of the F1 matching and of the COCO evaluation
above them; for parse --gt (in its own process) the growth and the peak of parsing RAW into the set.
Figures: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_REF = "3fe27a4"  # main before streaming evaluation
PREDS_PER_IMAGE = 10
CLASSES = [f"class {k}" for k in range(5)]


def write_set(folder: Path, n_images: int, seed: int = 0) -> dict[str, Path]:
    """gt.jsonl, pred.jsonl and raw.jsonl for `n_images` images (see the module docstring)."""
    from vlmdet.coords import pixel_box_to_bins
    from vlmdet.format import render_answer

    rng = random.Random(seed)
    paths = {name: folder / f"{name}.jsonl" for name in ("gt", "pred", "raw")}
    w, h = 640, 480
    with open(paths["gt"], "w") as gt, open(paths["pred"], "w") as pred, open(paths["raw"], "w") as raw:
        for i in range(n_images):
            objs = []
            for _ in range(rng.randint(1, 8)):
                bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
                x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                objs.append((rng.choice(CLASSES), [round(v, 2) for v in (x1, y1, x1 + bw, y1 + bh)]))
            image_id = f"img{i:07d}"
            gt.write(json.dumps({"image_id": image_id, "image": f"{image_id}.png", "width": w, "height": h,
                                 "objects": [{"desc": d, "bbox_2d": b} for d, b in objs]}) + "\n")
            ps = []
            for _ in range(PREDS_PER_IMAGE):
                desc, (x1, y1, x2, y2) = rng.choice(objs)
                s = 0.15 * (x2 - x1)
                a, b = min(max(x1 + rng.gauss(0, s), 0.0), w - 2), min(max(y1 + rng.gauss(0, s), 0.0), h - 2)
                c, d = min(max(x2 + rng.gauss(0, s), a + 1), w), min(max(y2 + rng.gauss(0, s), b + 1), h)
                label = desc if rng.random() < 0.8 else rng.choice(CLASSES)
                ps.append((label, [round(v, 2) for v in (a, b, c, d)], round(rng.random(), 4)))
            pred.write(json.dumps({"image_id": image_id, "objects": [{"desc": d, "bbox_2d": b, "score": s}
                                                                     for d, b, s in ps]}) + "\n")
            answer = render_answer([(d, pixel_box_to_bins(b, w, h)) for d, b, _ in ps])
            raw.write(json.dumps({"image_id": image_id, "text": answer}, ensure_ascii=False) + "\n")
    return paths


def extract(ref: str, dest: Path) -> Path:
    """The `src` folder of git revision `ref`, extracted under `dest`."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=False)
    if data.returncode:
        sys.exit(f"bench_eval_memory: git archive {ref}: {data.stderr.decode().strip()}")
    archive = dest / "old.tar"
    archive.write_bytes(data.stdout)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def measure(src: Path, argv: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of `python -m vlmdet.cli ARGV` with `src` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vlmdet.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"bench_eval_memory: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.read().decode()}")
    proc.stderr.close()
    return wall, usage.ru_maxrss * 1024


def commands(paths: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {"eval-preds": ["eval-preds", "--gt", str(paths["gt"]), "--pred", str(paths["pred"]), "--out", str(out)],
            "parse --gt": ["parse", str(paths["raw"]), "--gt", str(paths["gt"]), "--out", str(out)]}


NEW_STAGES = """
import gc, resource
from pathlib import Path
from vlmdet.evaluate.detection import coco_metrics, f1_counts
from vlmdet.evaluate.offline_parse import read_answers, read_ground_truth
from vlmdet.evaluate.offline_preds import read_predictions
def rss():
    gc.collect()
    return int(open('/proc/self/statm').read().split()[1]) * 4096
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def row(name, value):
    print(f"{{name:<52}} {{value / n / 1024:8.2f}} KB/image")
n, start = {n_images}, rss()
ds = read_ground_truth(Path({gt!r}))
if {parse}:
    row("GT set (read_ground_truth)", rss() - start)
    base = rss()
    read_answers(Path({raw!r}), ds)
    row("parse RAW into the set: growth", rss() - base)
    row("parse RAW into the set: peak above the GT set", peak() - base)
else:
    read_predictions(Path({pred!r}), ds)
    row("DetectionSet (GT + predictions, flat arrays)", rss() - start)
    base = rss()
    f1_counts(ds, 0.5)
    row("Hungarian F1 matching: peak above the set", peak() - base)
    coco_metrics(ds)
    row("COCO per category, chunked: peak above the set", peak() - base)
    row("all stages: peak above the start", peak() - start)
"""


def breakdown(old_src: Path | None, folder: Path, n_images: int) -> None:
    """RSS growth per stage of the old (unless `old_src` is None) and the new evaluation path, each in
    a child process."""
    paths = write_set(folder, n_images)
    script = f"""
import gc
from vlmdet.data.records import load_records
from vlmdet.evaluate.offline_preds import read_predictions
from vlmdet.evaluate.detection import gt_view, _pred_view, coco_inputs
from faster_coco_eval import COCO, COCOeval_faster
def rss():
    gc.collect()
    return int(open('/proc/self/statm').read().split()[1]) * 4096
n, last = {n_images}, rss()
def stage(name):
    global last
    now = rss()
    print(f"{{name:<46}} {{(now - last) / n / 1024:8.2f}} KB/image")
    last = now
records = load_records({str(paths['gt'])!r}, check_images=False); stage("GT Records (load_records)")
preds = read_predictions({str(paths['pred'])!r}, records); stage("prediction dicts (read_predictions)")
gts = [gt_view(r) for r in records]
views = {{k: [_pred_view(o, k, i) for i, o in enumerate(v)] for k, v in preds.items()}}; stage("gt_view / _pred_view tuples")
dataset, dets = coco_inputs(gts, views); stage("COCO dataset + detection dicts (coco_inputs)")
quiet = lambda *a, **k: None
coco_gt = COCO(dataset, print_function=quiet); stage("faster-coco-eval COCO(GT) index")
coco_dt = coco_gt.loadRes(dets); stage("faster-coco-eval loadRes (+segmentation, area, id)")
ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=quiet)
ev.evaluate(); stage("faster-coco-eval evaluate (+accumulate)")
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if old_src is not None:
        env["PYTHONPATH"] = str(old_src)
        print(f"old path, {n_images} images, {n_images * PREDS_PER_IMAGE} predictions: RSS growth per stage")
        subprocess.run([sys.executable, "-c", script], env=env, check=True)
    env["PYTHONPATH"] = str(ROOT / "src")
    for parse, title in ((False, "new path, eval-preds"), (True, "new path, parse --gt")):
        print(title)
        new = NEW_STAGES.format(n_images=n_images, parse=parse, **{k: str(v) for k, v in paths.items()})
        subprocess.run([sys.executable, "-c", new], env=env, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictions", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--old", default=OLD_REF, help=f"git revision to compare against (default {OLD_REF})")
    ap.add_argument("--breakdown", action="store_true",
                    help="per-stage RSS of the old and the new path on the first --predictions size")
    ap.add_argument("--new-only", action="store_true", help="measure this source alone, no --old revision")
    ap.add_argument("--keep", type=Path, default=None, help="write the generated sets here and keep them")
    args = ap.parse_args()

    new_src = ROOT / "src"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old_src = None if args.new_only else extract(args.old, tmp)
        work = args.keep or tmp
        work.mkdir(parents=True, exist_ok=True)
        if args.breakdown:
            breakdown(old_src, work, args.predictions[0] // PREDS_PER_IMAGE)
            return
        small = work / "base"
        small.mkdir(exist_ok=True)
        base = {}
        for name, argv in commands(write_set(small, 10), small / "m.json").items():
            base[name] = {w: measure(src, argv)[1] for w, src in (("old", old_src), ("new", new_src)) if src}
        print(f"{'predictions':>11} {'images':>7}  {'command':<10}  {'old s':>7} {'new s':>7}  "
              f"{'old peak':>9} {'new peak':>9}  {'old/img':>8} {'new/img':>8}  identical")
        for n_pred in args.predictions:
            n_images = n_pred // PREDS_PER_IMAGE
            folder = work / f"p{n_pred}"
            folder.mkdir(exist_ok=True)
            paths = write_set(folder, n_images)
            for name in ("eval-preds", "parse --gt"):
                res = {}
                for which, src in (("old", old_src), ("new", new_src)):
                    if src is None:  # an earlier run's metrics kept in --keep DIR, if any
                        kept = folder / f"{which}.{name.split()[0]}.json"
                        res[which] = (float("nan"), float("nan"), json.loads(kept.read_text()) if kept.exists() else None)
                        continue
                    out = folder / f"{which}.{name.split()[0]}.json"
                    res[which] = (*measure(src, commands(paths, out)[name]), json.loads(out.read_text()))
                per = {w: (res[w][1] - base.get(name, {}).get(w, 0)) / n_images / 1024 for w in res}
                same = res["old"][2] == res["new"][2]
                verdict = "-" if res["old"][2] is None else "yes" if same else "NO"
                print(f"{n_pred:>11} {n_images:>7}  {name:<10}  {res['old'][0]:7.1f} {res['new'][0]:7.1f}  "
                      f"{res['old'][1] / 2**20:7.0f}MB {res['new'][1] / 2**20:7.0f}MB  "
                      f"{per['old']:6.1f}KB {per['new']:6.1f}KB  {verdict}", flush=True)


if __name__ == "__main__":
    main()
