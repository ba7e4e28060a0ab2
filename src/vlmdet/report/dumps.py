"""Monitor-dump samples as the report shows them (pure: no I/O).

- `pick_examples(samples, n)`: which samples of a dump the report shows.
- `marks(sample, field_order)`: the spans of the raw answer to highlight, each a `Mark(start, end, kind,
  note)` with `kind` one of `MARK_KINDS`:
  `drop`  a complete record the strict parser dropped (`note` = its reason), from the sample's `drops`;
  `tail`  the text after the last complete record when the answer did not close its container: an
          incomplete record cut off mid-way, an unclosed container, or where a malformed container
          stopped the parser (from the sample's `prefix_end`/flags when present, else by parsing the text);
          a failed answer (no `{"objects": [` at all) is one `tail` span over the whole text;
  `leak`  a coordinate slot (one value position of a `bbox_2d` array) that holds something other than a
          coordinate token (`note` = what: digit, word, structure, end_of_turn, other). Taken from the
          sample's `leaked_slots` (`{"offset", "text", "kind", ...}`: the emitted token's char offset and
          text) when the dump has that list, else found in the text (`text_leaks`). An end-of-turn in a
          slot sits at the end of `raw_text`: a zero-width mark at `len(raw_text)`.
  Character offsets index into `raw_text`; `drop` and `tail` spans never overlap, `leak` spans lie inside
  one of them or in plain text.
- `segments(text, marks)`: the text cut at every mark boundary, `(piece, outer Mark | None, leak Mark | None)`.
- `wrap(text, width)`: lines of at most `width` characters that break only between tokens, never inside
  a special token such as `<|coord_499|>` (a token longer than `width` gets a line of its own).
- `verdict(sample, marks)`: the example's one-line verdict, e.g.
  `parse: 1 drop (non_coord_token), incomplete tail · detection: matched 1 of 3 GT, 2 false positives, 1 wrong class`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from vlmdet.coords import NUM_BINS
from vlmdet.parse import parse_prediction

MARK_KINDS = ("drop", "tail", "leak")
TOKEN_RE = re.compile(r"<\|[^<>|\s]{1,64}\|>")
_COORD_RE = re.compile(r"<\|coord_(0|[1-9][0-9]*)\|>")
_BBOX_OPEN_RE = re.compile(r'"bbox_2d"[ \t\n\r]*:[ \t\n\r]*\[')
_ATOM_RE = re.compile(r"<\|[^<>|\s]{1,64}\|>|\s+|[^\s<]+|<")


@dataclass(frozen=True)
class Mark:
    start: int
    end: int
    kind: str
    note: str = ""


def has_problem(sample: dict) -> bool:
    flags = sample.get("flags") or {}
    return bool(sample.get("drops")) or bool(sample.get("leaked_slots")) or \
        any(bool(flags.get(k)) for k in ("failed", "truncated", "malformed_container"))


def pick_examples(samples: Sequence[dict], n: int = 2) -> list[dict]:
    """Up to `n` samples of one dump: the first samples with a drop or a failure flag (at most n-1 of them
    when n > 1), then the first clean samples, so a report shows failure and success side by side."""
    samples = [s for s in samples if isinstance(s, dict)]
    bad = [s for s in samples if has_problem(s)]
    good = [s for s in samples if not has_problem(s)]
    n_bad = min(len(bad), n - 1 if n > 1 and good else n)
    return bad[:n_bad] + good[: n - n_bad]


def _span(obj, length: int) -> tuple[int, int] | None:
    try:
        a, b = (int(x) for x in obj["span"])
    except (KeyError, TypeError, ValueError):
        return None
    return (a, b) if 0 <= a < b <= length else None


def leak_kind(element: str) -> str:
    """What a non-coordinate `bbox_2d` element is: `digit`, `word`, `structure` (empty, quotes, brackets,
    braces) or `other`."""
    e = element.strip()
    if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", e):
        return "digit"
    if not e or re.fullmatch(r'["\[\]{}:]+', e):
        return "structure"
    if re.fullmatch(r"[\w\s]+", e):
        return "word"
    return "other"


def text_leaks(text: str) -> list[Mark]:
    """Leaked coordinate slots found in the text: every element of every `"bbox_2d": [...]` array that ends
    with `,` or `]` and is not a bare `<|coord_k|>` with k < 1000 (element spans exclude the spaces around
    it). An element cut off by the end of the text is not judged."""
    out = []
    for m in _BBOX_OPEN_RE.finditer(text):
        pos, depth, start, in_str = m.end(), 0, m.end(), False
        while pos < len(text):
            ch = text[pos]
            if in_str:
                if ch == "\\":
                    pos += 1
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch in "[{":
                depth += 1
            elif ch in "]}" and depth:
                depth -= 1
            elif ch in ",]" or (ch == "}" and not depth):
                raw = text[start:pos]
                a = start + len(raw) - len(raw.lstrip())
                b = start + len(raw.rstrip())
                c = _COORD_RE.fullmatch(raw.strip())
                if not (c and int(c.group(1)) < NUM_BINS) and not (ch == "]" and not raw.strip() and start == m.end()):
                    out.append(Mark(a, max(b, a), "leak", leak_kind(raw)))
                if ch != ",":
                    break
                start = pos + 1
            pos += 1
    return [mk if mk.end > mk.start else Mark(mk.start, min(mk.start + 1, len(text)), "leak", mk.note) for mk in out]


def _slot_mark(slot, length: int) -> Mark | None:
    """A dump's leaked slot `{"offset", "text", "kind"}` as a Mark (None when its offset is unusable)."""
    if not isinstance(slot, dict) or isinstance(slot.get("offset"), bool) or not isinstance(slot.get("offset"), int):
        return None
    a = slot["offset"]
    if not 0 <= a <= length:
        return None
    b = min(length, a + len(str(slot.get("text") or "")))
    return Mark(a, b, "leak", str(slot.get("kind", "")))


def marks(sample: dict, field_order: str = "desc_first") -> list[Mark]:
    """The highlighted spans of one sample's `raw_text` (module docstring), sorted by start."""
    text = str(sample.get("raw_text", ""))
    flags = sample.get("flags") or {}
    out: list[Mark] = []
    for d in sample.get("drops") or []:
        span = _span(d, len(text))
        if span:
            out.append(Mark(*span, "drop", str(d.get("reason", "?"))))
    clipped = int(sample.get("raw_text_chars", len(text)) or 0) > len(text) or text.endswith("...<truncated>")
    if not clipped and text.strip():
        res = parse_prediction(text, field_order)
        prefix_end = sample.get("prefix_end", res.prefix_end)
        failed = flags.get("failed", res.failed)
        if failed:
            out.append(Mark(0, len(text), "tail", 'no {"objects": [ container'))
        elif (flags.get("truncated", res.truncated) or flags.get("malformed_container", res.malformed_container)) \
                and isinstance(prefix_end, int) and 0 <= prefix_end < len(text) and text[prefix_end:].strip():
            if flags.get("incomplete_tail", res.incomplete_tail):
                note = "incomplete record (cut off)"
            elif flags.get("malformed_container", res.malformed_container):
                note = "malformed container: parsing stopped here"
            else:
                note = "container not closed"
            out.append(Mark(prefix_end, len(text), "tail", note))
    outer = sorted(out, key=lambda m: (m.start, m.end))
    kept: list[Mark] = []
    for m in outer:  # drop any overlap between drop/tail spans (the earlier one wins)
        if not kept or m.start >= kept[-1].end:
            kept.append(m)
    slots = sample.get("leaked_slots")
    if isinstance(slots, list):
        found = [m for m in (_slot_mark(s, len(text)) for s in slots) if m is not None]
    else:
        found = [] if clipped else text_leaks(text)
    return sorted(kept + found, key=lambda m: (m.start, m.kind != "leak"))


def segments(text: str, mark_list: Sequence[Mark]) -> list[tuple[str, Mark | None, Mark | None]]:
    """`text` cut at every mark boundary: `(piece, enclosing drop/tail Mark or None, leak Mark or None)`.
    Leaks overlapping an earlier leak and zero-width leaks (an end-of-turn after the text: the renderers
    add it after the last piece) are ignored. Pieces concatenate back to `text`."""
    outer = [m for m in mark_list if m.kind != "leak"]
    leaks: list[Mark] = []
    for m in sorted((m for m in mark_list if m.kind == "leak" and m.end > m.start), key=lambda m: m.start):
        if not leaks or m.start >= leaks[-1].end:
            leaks.append(m)
    cuts = sorted({0, len(text)} | {p for m in [*outer, *leaks] for p in (m.start, m.end) if 0 <= p <= len(text)})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        o = next((m for m in outer if m.start <= a and b <= m.end), None)
        lk = next((m for m in leaks if m.start <= a and b <= m.end), None)
        out.append((text[a:b], o, lk))
    return out or [(text, None, None)]


def wrap(text: str, width: int = 100) -> list[str]:
    """Lines of at most `width` characters broken only between tokens (special tokens `<|...|>`, runs of
    non-space characters, runs of spaces); newlines in `text` are kept. A space run at a break is dropped."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for atom in _ATOM_RE.findall(para):
            if len(line) + len(atom) <= width or not line:
                line += atom
            elif atom.isspace():
                lines.append(line)
                line = ""
            else:
                lines.append(line.rstrip(" ") if line.strip() else line)
                line = atom
        lines.append(line)
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def verdict(sample: dict, mark_list: Sequence[Mark]) -> str:
    """One line: what the parser made of the answer and how its valid boxes match the GT (the dump's
    `matches`: class-agnostic, at the matching IoU gate)."""
    flags = sample.get("flags") or {}
    drops = Counter(str(d.get("reason", "?")) for d in sample.get("drops") or [])
    parse_bits = []
    if drops:
        parse_bits.append(_plural(sum(drops.values()), "drop") + " ("
                          + ", ".join(f"{r} ×{n}" if n > 1 else r for r, n in drops.items()) + ")")
    tails = [m.note for m in mark_list if m.kind == "tail"]
    parse_bits += tails
    if flags.get("truncated") and not tails:
        parse_bits.append("truncated")
    n_leak = sum(m.kind == "leak" for m in mark_list)
    if n_leak:
        parse_bits.append(_plural(n_leak, "leaked coord slot"))
    if flags.get("hit_max_new_tokens"):
        parse_bits.append("hit max_new_tokens")
    parse = "clean" if not parse_bits else ", ".join(parse_bits)

    gts, objs = sample.get("gt") or [], sample.get("objects") or []
    matches = [m for m in sample.get("matches") or []
               if isinstance(m.get("pred"), int) and isinstance(m.get("gt"), int)
               and 0 <= m["pred"] < len(objs) and 0 <= m["gt"] < len(gts)]
    wrong = sum(objs[m["pred"]].get("desc") != gts[m["gt"]].get("desc") for m in matches)
    fp = len(objs) - len(matches)
    det = f"matched {len(matches)} of {len(gts)} GT"
    det += ", " + _plural(fp, "false positive")
    det += ", " + ("classes right" if matches and not wrong else _plural(wrong, "wrong class") if wrong else "no class to check")
    return f"parse: {parse} · detection: {det}"
