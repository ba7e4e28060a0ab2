"""`vlmdet data synth|coco|validate`.

    vlmdet data synth --out DIR [--train N --val N --seed S --size 128 --max-objects 4]
    vlmdet data coco --instances F --images DIR --out DIR [--max-objects N --max-pixels P --split NAME]
    vlmdet data validate FILE.jsonl [--no-images]

`validate` prints a summary (records, objects, classes, bin coverage); the first broken rule exits 2
with `file:line: rule`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{synth,coco,validate}")

    p = sub.add_parser("synth", help="write the synthetic coloured-shapes data set")
    p.add_argument("--out", required=True, help="output folder (images/, train.jsonl, val.jsonl, manifest.json)")
    p.add_argument("--train", type=int, default=2000, help="train images (default 2000)")
    p.add_argument("--val", type=int, default=100, help="val images (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels, a multiple of 32 (default 128)")
    p.add_argument("--max-objects", type=int, default=4, help="objects per image: 1..N (default 4)")

    p = sub.add_parser("coco", help="convert a COCO instances JSON to vlmdet JSONL")
    p.add_argument("--instances", required=True, help="instances_<split>.json")
    p.add_argument("--images", required=True, help="folder holding the images' file_name paths")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-objects", type=int, default=None, help="drop images with more objects than this")
    p.add_argument("--max-pixels", type=int, default=None, help="pixel budget of the resized images (e.g. 786432)")
    p.add_argument("--split", default=None, help="output name (default: from the instances file name)")

    p = sub.add_parser("validate", help="check a data JSONL file against the record contract")
    p.add_argument("file", help="data JSONL file")
    p.add_argument("--no-images", action="store_true", help="skip opening the images (size and readability)")


def _synth(args) -> int:
    from vlmdet.data.synth import make_synth

    t0 = time.perf_counter()
    m = make_synth(args.out, args.train, args.val, args.seed, args.size, max_objects=args.max_objects, progress=True)
    dt = time.perf_counter() - t0
    n = args.train + args.val
    print(f"wrote {n} images to {args.out} in {dt:.1f} s ({n / max(dt, 1e-9):.0f} images/s)")
    for split, c in m["counts"].items():
        cov = m["bin_coverage"][split]
        print(f"  {split}: {c['images']} images, {c['objects']} objects; bin coverage x {cov['x']}/1000, "
              f"y {cov['y']}/1000, overall {cov['overall']}/1000")
    print(f"  classes: {', '.join(m['class_names'])}")
    return 0


def _coco(args) -> int:
    from vlmdet.data.coco import convert_coco

    entry = convert_coco(args.instances, args.images, args.out, args.max_objects, args.max_pixels, split=args.split)
    print(f"wrote {args.out}/{entry['jsonl']}")
    print(json.dumps(entry["counts"], indent=2))
    return 0


def _validate(args) -> int:
    from vlmdet.data.records import load_records
    from vlmdet.data.synth import bin_coverage

    records = load_records(args.file, check_images=not args.no_images)
    classes = Counter(o.desc for r in records for o in r.objects)
    sizes = Counter((r.width, r.height) for r in records)
    cov = bin_coverage([{"width": r.width, "height": r.height,
                         "objects": [{"bbox_2d": o.bbox} for o in r.objects]} for r in records])
    n_obj = sum(classes.values())
    print(f"{args.file}: OK ({'images not checked' if args.no_images else 'images checked'})")
    print(f"  records: {len(records)} ({sum(1 for r in records if not r.objects)} with no objects)")
    print(f"  objects: {n_obj} (max {max((len(r.objects) for r in records), default=0)} per image)")
    print(f"  classes: {len(classes)}: " + ", ".join(f"{d} ({n})" for d, n in classes.most_common(20))
          + (", ..." if len(classes) > 20 else ""))
    print(f"  image sizes: " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(5))
          + (", ..." if len(sizes) > 5 else ""))
    print(f"  bin coverage: x {cov['x']}/1000, y {cov['y']}/1000, overall {cov['overall']}/1000")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"synth": _synth, "coco": _coco, "validate": _validate}[args.data_command](args)
