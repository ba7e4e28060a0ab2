"""Throughput of the strict CoordJSON parser against `json.loads` on the same objects as plain JSON.

    python benchmarks/bench_parse.py [--answers 2000] [--repeats 5] [--field-order desc_first] [--breakdown]
                                     [--against OTHER/parse.py]

Workload: seeded canonical answers (`format.render_answer`, 1-30 objects each; multi-word, CJK and
5 % quoted descs) and, side by side in the same run, the equivalent plain JSON (the same objects with
int lists instead of coordinate tokens, `json.dumps(..., ensure_ascii=False)`). Timings:
  parse_prediction              strict parse with spans and drop accounting
  json.loads                    decode only (no validation at all)
  json.loads + validation       decode, then a minimal schema check per object (keys, desc, 4 ints in
                                range, non-degenerate) building a (desc, bins) tuple
  parse_prediction + spans      the same, then reading `span` and `coord_spans` of every object (the
                                fast path derives them on access; `parse_rollout` reads both)
  parse_prediction, careful     the same answers with extra JSON whitespace (no record canonical)
The first four run back to back on the same chunk of 10 answers, chunk after chunk, for `repeats`
rounds; each ratio is the median over all (round, chunk) pairs, which shrugs off load bursts from
other processes on a shared machine; objects/s is from each one's best round. The garbage collector
is paused while timing (as `timeit` does) and results are not kept. `--breakdown` (desc_first only)
instead times cumulative stages of the parser's fast loop, re-built here from `vlmdet._parse_fast` internals,
each against json.loads on the same chunks: where the time of a canonical answer goes. `--against FILE`
instead times another version of `vlmdet/parse.py` (e.g. one from git history; it imports the rest of
vlmdet from this checkout) side by side with this checkout's parser: per chunk json.loads first, then
the two parsers in alternating order; both as time / json.loads, and the per-chunk time ratio.
Figures: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import random
import statistics
import sys
import time

from vlmdet.format import render_answer
from vlmdet.parse import parse_prediction

WORDS = ["red", "blue", "small", "large", "circle", "square", "person", "traffic", "light", "dog", "猫", "椅子"]


def make_objects(rng: random.Random) -> list[tuple[str, tuple[int, int, int, int]]]:
    objs = []
    for _ in range(rng.randint(1, 30)):
        desc = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.05:
            desc = f'a "quoted" {desc}'
        x1, y1 = rng.randint(0, 900), rng.randint(0, 900)
        objs.append((desc, (x1, y1, rng.randint(x1 + 1, 999), rng.randint(y1 + 1, 999))))
    return objs


def validate_plain(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """json.loads plus the least checking a fair comparison needs."""
    out = []
    for o in json.loads(text)["objects"]:
        if len(o) != 2 or "desc" not in o or "bbox_2d" not in o:
            continue
        desc, box = o["desc"], o["bbox_2d"]
        if not isinstance(desc, str) or not desc.strip() or len(box) != 4:
            continue
        if not all(type(v) is int and 0 <= v <= 999 for v in box):
            continue
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        out.append((desc, tuple(box)))
    return out


def timed(fn, items) -> float:
    t0 = time.perf_counter()
    for x in items:
        fn(x)
    return time.perf_counter() - t0


def quartiles(rs: list[float]) -> tuple[float, float, float]:
    rs = sorted(rs)
    return rs[len(rs) // 4], statistics.median(rs), rs[(3 * len(rs)) // 4]


def load_parser(path: str):
    """The module in `path` (another version of vlmdet/parse.py) under a private name."""
    spec = importlib.util.spec_from_file_location("_parse_against", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their class's module up while it is created
    spec.loader.exec_module(module)
    return module


def against(path: str, answers: list[str], plains: list[str], order: str, repeats: int, chunk: int = 10) -> None:
    """This checkout's parse_prediction and the one in `path`, side by side on the same chunks."""
    other = load_parser(path)
    for a in answers:  # the same answer, else the timing compares different work
        assert [(o.desc, o.bins) for o in other.parse_prediction(a, order).objects] == \
            [(o.desc, o.bins) for o in parse_prediction(a, order).objects]
    mine, theirs = (lambda a: parse_prediction(a, order)), (lambda a: other.parse_prediction(a, order))
    ratios: dict[str, list[float]] = {"this checkout": [], path: [], "this / other": []}
    gc.disable()
    try:
        for _ in range(repeats):
            for j, i in enumerate(range(0, len(answers), chunk)):
                ans, pl = answers[i : i + chunk], plains[i : i + chunk]
                t_json = timed(json.loads, pl)
                if j % 2:
                    t_theirs, t_mine = timed(theirs, ans), timed(mine, ans)
                else:
                    t_mine, t_theirs = timed(mine, ans), timed(theirs, ans)
                ratios["this checkout"].append(t_mine / t_json)
                ratios[path].append(t_theirs / t_json)
                ratios["this / other"].append(t_mine / t_theirs)
    finally:
        gc.enable()
    print(f"{len(answers)} answers, field_order={order}, {repeats} rounds; median over chunks (quartiles):")
    for name, rs in ratios.items():
        q1, med, q3 = quartiles(rs)
        what = "time / json.loads" if name != "this / other" else "time ratio, per chunk"
        print(f"  {name:40s} {what:22s} {med:.3f}x  ({q1:.2f}-{q3:.2f}x)")


def breakdown(answers: list[str], plains: list[str], repeats: int, chunk: int = 10) -> None:
    """Median time / json.loads time per chunk for cumulative stages of the desc_first fast loop."""
    from json.decoder import scanstring

    from vlmdet._parse_fast import _BIN_OF_LITERAL, _RECORD
    from vlmdet.parse import ParsedObject

    pattern, d, c0 = _RECORD["desc_first"]
    scanner, bin_of, start = pattern.scanner, _BIN_OF_LITERAL, len('{"objects": [')

    def scan(a):
        for m in iter(scanner(a, start).match, None):
            pass

    def groups(a):
        for m in iter(scanner(a, start).match, None):
            desc, l0, l1, l2, l3 = m.group(d, c0, c0 + 1, c0 + 2, c0 + 3)

    def checks(a, build=False):
        out = []
        for k, m in enumerate(iter(scanner(a, start).match, None)):
            desc, l0, l1, l2, l3 = m.group(d, c0, c0 + 1, c0 + 2, c0 + 3)
            x1, y1, x2, y2 = bin_of[l0], bin_of[l1], bin_of[l2], bin_of[l3]
            if "\\" in desc:
                desc = scanstring(a, m.start(d), True)[0]
            if x1 < x2 and y1 < y2 and desc.strip() and build:
                out.append(ParsedObject(desc, (x1, y1, x2, y2), k, m, c0))

    def spans(a):
        for o in parse_prediction(a).objects:
            o.span, o.coord_spans

    stages = {
        "regex scan (Match objects)": scan,
        "+ m.group(...) (5 strings)": groups,
        "+ bin look-ups and checks": checks,
        "+ building ParsedObjects": lambda a: checks(a, True),
        "parse_prediction": parse_prediction,
        "parse_prediction + spans": spans,
    }
    ratios: dict[str, list[float]] = {name: [] for name in stages}
    gc.disable()
    try:
        for _ in range(repeats):
            for i in range(0, len(answers), chunk):
                ans, pl = answers[i : i + chunk], plains[i : i + chunk]
                t0 = time.perf_counter()
                for p in pl:
                    json.loads(p)
                t_json = time.perf_counter() - t0
                for name, fn in stages.items():
                    t0 = time.perf_counter()
                    for a in ans:
                        fn(a)
                    ratios[name].append((time.perf_counter() - t0) / t_json)
    finally:
        gc.enable()
    print("cumulative stages of the fast path, time / json.loads time (median over chunks):")
    for name, rs in ratios.items():
        print(f"  {name:30s} {statistics.median(rs):.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--field-order", default="desc_first", choices=["desc_first", "geometry_first"])
    ap.add_argument("--breakdown", action="store_true", help="time stages of the fast path (desc_first)")
    ap.add_argument("--against", metavar="FILE", help="another vlmdet/parse.py, timed side by side with this one")
    args = ap.parse_args()
    if args.breakdown and args.field_order != "desc_first":
        ap.error("--breakdown is desc_first only")

    rng = random.Random(0)
    answers, plains = [], []
    n_objects = 0
    for _ in range(args.answers):
        objs = make_objects(rng)
        n_objects += len(objs)
        answers.append(render_answer(objs, field_order=args.field_order, ordering="random"))
        plains.append(json.dumps({"objects": [{"desc": d, "bbox_2d": list(b)} for d, b in objs]}, ensure_ascii=False))

    # The same answers with JSON whitespace around every separator: no record is canonical, so every
    # one goes through the careful scanner (the price of non-canonical model output).
    spaced = [a.replace(", ", " ,  ").replace(": ", " :\t") for a in answers]

    # correctness guard: the parser must find every object, else the timing is meaningless
    assert sum(len(parse_prediction(a, args.field_order).objects) for a in answers) == n_objects
    assert sum(len(parse_prediction(a, args.field_order).objects) for a in spaced) == n_objects
    assert sum(len(validate_plain(p)) for p in plains) == n_objects

    if args.breakdown:
        breakdown(answers, plains, args.repeats)
        return 0
    if args.against:
        against(args.against, answers, plains, args.field_order, args.repeats)
        return 0

    order = args.field_order
    # Time the four on the same chunk of 10 answers back to back, many rounds: the ratio of each
    # round is robust to load bursts from other processes; the median over rounds is reported.
    chunk = 10
    chunks = [(answers[i : i + chunk], plains[i : i + chunk]) for i in range(0, len(answers), chunk)]
    names = ("parse_prediction", "json.loads", "json.loads + validation", "parse_prediction + spans")

    def parse_with_spans(a: str) -> None:
        for o in parse_prediction(a, order).objects:
            o.span, o.coord_spans

    totals = {name: [] for name in names}  # per round: seconds for all chunks
    ratios = {"json.loads": [], "json.loads + validation": [], "spans: json.loads": []}  # per (round, chunk)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # like timeit: collector pauses are noise that depends on what else lives in the process
    try:
        for _ in range(args.repeats):
            sums = dict.fromkeys(names, 0.0)
            for ans, pl in chunks:
                t_parse = timed(lambda a: parse_prediction(a, order), ans)
                t_json = timed(json.loads, pl)
                t_val = timed(validate_plain, pl)
                t_spans = timed(parse_with_spans, ans)
                sums["parse_prediction"] += t_parse
                sums["json.loads"] += t_json
                sums["json.loads + validation"] += t_val
                sums["parse_prediction + spans"] += t_spans
                ratios["json.loads"].append(t_parse / t_json)
                ratios["json.loads + validation"].append(t_parse / t_val)
                ratios["spans: json.loads"].append(t_spans / t_json)
            for name in names:
                totals[name].append(sums[name])
    finally:
        if gc_was_enabled:
            gc.enable()

    print(f"{args.answers} answers, {n_objects} objects, field_order={order}, {args.repeats} rounds")
    for name in names:
        print(f"  {name:26s} {n_objects / min(totals[name]) / 1e3:9.1f} k objects/s (best round)")
    t_careful = float("inf")
    for _ in range(args.repeats):
        t_careful = min(t_careful, timed(lambda a: parse_prediction(a, order), spaced))
    print(f"  {'parse_prediction, careful':26s} {n_objects / t_careful / 1e3:9.1f} k objects/s (best round; "
          "whitespace-variant answers, no record canonical)")
    labels = {
        "json.loads": "parse_prediction time / json.loads",
        "json.loads + validation": "parse_prediction time / json.loads + validation",
        "spans: json.loads": "(parse_prediction + spans) time / json.loads",
    }
    for name, rs in ratios.items():
        q1, med, q3 = quartiles(rs)
        print(f"  {labels[name]:48s} median {med:.2f}x  (quartiles {q1:.2f}-{q3:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
