"""`vlmdet data synth|coco|validate`.

    vlmdet data synth --out DIR [--train N --val N --seed S --size 128 --max-objects 4 --min-frac 0.125 --max-frac 0.5]
    vlmdet data coco --instances F --images DIR --out DIR [--max-objects N --max-pixels P --split NAME]
    vlmdet data swift IN.jsonl OUT [--text-format qwen25|qwen3 --max-pixels P --split NAME]
    vlmdet data validate FILE.jsonl [--fast | --no-images] [--workers N]

`validate` decodes every image fully (in parallel, with a progress bar; `--fast` reads only the
headers: size and format; `--no-images` opens none) and prints a summary (records, objects,
classes, bin coverage); the first broken rule exits 2 with `file:line: rule`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

from vlmdet.data.coco import convert_coco
from vlmdet.data.records import load_records
from vlmdet.data.swift import convert_swift
from vlmdet.data.synth import bin_coverage, make_synth
from vlmdet.errors import UsageError
from vlmdet.options import bounded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{synth,coco,swift,validate}")

    p = sub.add_parser("synth", help="write the synthetic coloured-shapes data set")
    p.add_argument("--out", required=True, help="output folder (images/, train.jsonl, val.jsonl, manifest.json)")
    p.add_argument("--train", type=bounded(int, lambda v: v >= 0, ">= 0"), default=2000, help="train images (default 2000)")
    p.add_argument("--val", type=bounded(int, lambda v: v >= 0, ">= 0"), default=100, help="val images (default 100)")
    p.add_argument("--seed", type=bounded(int, lambda v: 0 <= v < 2**32, "in [0, 2**32)"), default=0)
    p.add_argument("--size", type=bounded(int, lambda v: v >= 32 and v % 32 == 0, "a multiple of 32, >= 32"), default=128, help="image side in pixels, a multiple of 32 (default 128)")
    p.add_argument("--max-objects", type=bounded(int, lambda v: v >= 1, ">= 1"), default=4, help="objects per image: 1..N (default 4)")
    p.add_argument("--min-frac", type=bounded(float, lambda v: 0 < v <= 1, "in (0, 1]"), default=0.125,
                   help="smallest object side as a fraction of the image side (default 0.125; the demo: 0.1875)")
    p.add_argument("--max-frac", type=bounded(float, lambda v: 0 < v <= 1, "in (0, 1]"), default=0.5,
                   help="largest object side as a fraction of the image side (default 0.5)")

    p = sub.add_parser("coco", help="convert a COCO instances JSON to vlmdet JSONL")
    p.add_argument("--instances", required=True, help="instances_<split>.json")
    p.add_argument("--images", required=True, help="folder holding the images' file_name paths")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-objects", type=bounded(int, lambda v: v >= 1, ">= 1"), default=None, help="drop images with more objects than this")
    p.add_argument("--max-pixels", type=bounded(int, lambda v: v >= 32 * 32, ">= 1024 (32 x 32)"), default=None, help="pixel budget of the resized images (e.g. 786432)")
    p.add_argument("--split", default=None, help="output name (default: from the instances file name)")

    p = sub.add_parser("swift", help="import ms-swift / LLaMA-Factory grounding JSONL (messages, images, objects)")
    p.add_argument("src", help="grounding JSONL: {messages, images: [path], objects: {ref, bbox, bbox_type}}")
    p.add_argument("out", help="output folder (<split>.jsonl, images/)")
    p.add_argument("--text-format", choices=("qwen25", "qwen3"), default=None,
                   help="read boxes from the assistant text on lines without 'objects' (LLaMA-Factory): "
                        "qwen25 = pixels, qwen3 = 0..1000 relative")
    p.add_argument("--max-pixels", type=int, default=None, help="pixel budget of the resized images (e.g. 786432)")
    p.add_argument("--split", default=None, help="output name (default: the input file's stem)")

    p = sub.add_parser("validate", help="check a data JSONL file against the record contract")
    p.add_argument("file", help="data JSONL file")
    p.add_argument("--no-images", action="store_true", help="skip opening the images (size and readability)")
    p.add_argument("--fast", action="store_true", help="read only the image headers (size, format), do not decode")
    p.add_argument("--workers", type=bounded(int, lambda v: v >= 1, ">= 1"), default=min(8, os.cpu_count() or 1),
                   help="threads decoding images (default: min(8, CPUs))")


def _synth(args) -> int:
    if args.min_frac > args.max_frac:
        raise UsageError(f"--min-frac: {args.min_frac} is larger than --max-frac {args.max_frac}")
    t0 = time.perf_counter()
    m = make_synth(args.out, args.train, args.val, args.seed, args.size, max_objects=args.max_objects,
                   min_frac=args.min_frac, max_frac=args.max_frac, progress=True)
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
    entry = convert_coco(args.instances, args.images, args.out, args.max_objects, args.max_pixels, split=args.split)
    print(f"wrote {args.out}/{entry['jsonl']}")
    print(json.dumps(entry["counts"], indent=2))
    return 0


def _swift(args) -> int:
    entry = convert_swift(args.src, args.out, args.text_format, args.max_pixels, args.split)
    print(f"wrote {args.out}/{entry['jsonl']}")
    print(json.dumps(entry["counts"], indent=2))
    return 0


def _validate(args) -> int:
    records = load_records(args.file, check_images=not args.no_images, decode_images=not args.fast,
                           workers=args.workers, progress=True)
    classes = Counter(o.desc for r in records for o in r.objects)
    sizes = Counter((r.width, r.height) for r in records)
    cov = bin_coverage([{"width": r.width, "height": r.height,
                         "objects": [{"bbox_2d": o.bbox} for o in r.objects]} for r in records])
    n_obj = sum(classes.values())
    checked = "images not checked" if args.no_images else ("image headers checked" if args.fast else "images decoded")
    print(f"{args.file}: OK ({checked})")
    print(f"  records: {len(records)} ({sum(1 for r in records if not r.objects)} with no objects)")
    print(f"  objects: {n_obj} (max {max((len(r.objects) for r in records), default=0)} per image)")
    print(f"  classes: {len(classes)}: " + ", ".join(f"{d} ({n})" for d, n in classes.most_common(20))
          + (", ..." if len(classes) > 20 else ""))
    print(f"  image sizes: " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(5))
          + (", ..." if len(sizes) > 5 else ""))
    print(f"  bin coverage: x {cov['x']}/1000, y {cov['y']}/1000, overall {cov['overall']}/1000")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"synth": _synth, "coco": _coco, "swift": _swift, "validate": _validate}[args.data_command](args)
