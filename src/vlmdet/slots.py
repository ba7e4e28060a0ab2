"""Coordinate slots: the value positions of every `bbox_2d` array, and what was written there.

A *value position* (a coordinate slot) is where a coordinate token belongs: the first non-whitespace
character after the `[` of a `"bbox_2d": [` array, and after every `,` at that array's own depth,
whatever stands there. The array ends at its matching `]` (or at a `}` that closes an enclosing object
first); strings and nested `[...]` / `{...}` inside it are skipped whole. Dropped records count like
valid ones: the slots measure what the model wrote, not what the parser kept.

What stands at a slot is a *kind*: `"coord"` (a coordinate token) or one of `LEAK_KINDS`, a leak:

| kind | what was written instead of a coordinate token |
|---|---|
| `digit` | a numeral (`85`, `三`: the first character is numeric) |
| `word` | a letter (`red`, `coord_5`) |
| `structure` | a JSON piece: `"` (a quoted value), `[` `]` `{` `}` `,` `:` |
| `end_of_turn` | the end-of-turn token (the answer stopped right after `[` or `, `) |
| `other` | anything else, e.g. `<|coord_5|>` spelled with text tokens, `<|coord_1000|>` |

Two readings:
- `rollout_slots` (token level, for rollouts): the slot is the token covering the value position's
  character; it is `coord` when its id is a coordinate-token id; a response that stops right after
  `[` or `, ` has one more slot, its end-of-turn token. A rollout cut by the token budget there has no
  token at that slot, so none is counted.
- `text_slots` (raw text, no token ids, for `vlmdet parse`): only lexically complete records (valid
  objects and drops other than `malformed`); each element of their `bbox_2d` is one slot, `coord` when
  it is a bare in-range `<|coord_k|>` literal. An empty array `[]` has no slot here, nor has a
  `bbox_2d` value that is not an array.

`leak_metrics(kinds)` turns the kinds of a set of slots into named floats (no I/O, no model).
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

from vlmdet.coords import MAX_BIN

__all__ = ["LEAK_KINDS", "Slot", "value_offsets", "char_kind", "rollout_slots", "text_slots", "leak_metrics"]

#: What can stand at a coordinate slot instead of a coordinate token.
LEAK_KINDS = ("digit", "word", "structure", "end_of_turn", "other")
COORD = "coord"
STRUCTURE_CHARS = frozenset('{}[],:"')

_KEY_RE = re.compile(r'"bbox_2d"[ \t\n\r]*:[ \t\n\r]*\[')
_STRING_BODY_RE = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)  # after an opening quote, through the closing one
_COORD_LITERAL_RE = re.compile(r"<\|coord_(0|[1-9][0-9]*)\|>(?=[ \t\n\r]*[,\]])")
_WS = " \t\n\r"


@dataclass(frozen=True, slots=True)
class Slot:
    """One coordinate slot: `offset` the char offset of its value position in the parsed text
    (== len(text) for an end-of-turn slot), `kind` "coord" or one of `LEAK_KINDS`, `token` the response
    token index (-1 on raw text)."""

    offset: int
    kind: str
    token: int = -1

    @property
    def leaked(self) -> bool:
        return self.kind != COORD


def value_offsets(text: str, start: int = 0, end: int | None = None) -> tuple[list[int], bool]:
    """Char offsets of every `bbox_2d` value position in `text[start:end]`, in order, and whether the
    text ends at a value position that has nothing in it yet (right after `[` or `,` plus whitespace)."""
    end = len(text) if end is None else end
    offsets: list[int] = []
    pos = start
    while True:
        m = _KEY_RE.search(text, pos, end)
        if m is None:
            return offsets, False
        pos = m.end()
        depth = 0
        expect = True
        while pos < end:
            c = text[pos]
            if c in _WS:
                pos += 1
                continue
            if expect:
                offsets.append(pos)
                expect = False
            if c == '"':
                s = _STRING_BODY_RE.match(text, pos + 1, end)
                pos = s.end() if s else end
                continue
            pos += 1
            if c == "[" or c == "{":
                depth += 1
            elif c == "]" or c == "}":
                if depth == 0:
                    break
                depth -= 1
            elif c == "," and depth == 0:
                expect = True
        else:
            return offsets, expect


def char_kind(c: str) -> str:
    """The leak kind of a value that starts with character `c` (never "end_of_turn" or "coord")."""
    if c.isnumeric():
        return "digit"
    if c.isalpha():
        return "word"
    if c in STRUCTURE_CHARS:
        return "structure"
    return "other"


def rollout_slots(
    token_ids: Sequence[int],
    pieces: Sequence[str],
    n_tokens: int,
    stopped: bool,
    coord_ids: Collection[int],
) -> list[Slot]:
    """Slots of a rollout at token level. `token_ids` / `pieces` (decoded text per token, same length)
    are the response tokens; the text is `"".join(pieces[:n_tokens])` (the tokens before the first
    end-of-turn, which is token `n_tokens` when `stopped`); `coord_ids` the coordinate-token ids."""
    ends = list(itertools.accumulate(len(piece) for piece in pieces[:n_tokens]))  # end offset of each token
    text = "".join(pieces[:n_tokens])
    offsets, pending = value_offsets(text)
    slots = []
    for off in offsets:
        i = bisect.bisect_right(ends, off)  # the token whose text covers `off`
        kind = COORD if token_ids[i] in coord_ids else char_kind(text[off])
        slots.append(Slot(off, kind, i))
    if pending and stopped:
        slots.append(Slot(len(text), "end_of_turn", n_tokens))
    return slots


def text_slots(text: str, result) -> list[Slot]:
    """Slots of a raw answer: the `bbox_2d` elements of the lexically complete records of `result`
    (`parse.ParseResult` of `text`): valid objects (4 coordinate slots each) and drops other than
    `malformed`."""
    slots = []
    for obj in result.objects:
        slots.extend(Slot(s, COORD) for s, _ in obj.coord_spans)
    for d in result.dropped:
        if d.reason == "malformed":
            continue
        for off in value_offsets(text, d.span[0], d.span[1])[0]:
            c = text[off]
            if c == "]":  # an empty array: no element
                continue
            m = _COORD_LITERAL_RE.match(text, off, d.span[1])
            coord = m is not None and len(m.group(1)) <= len(str(MAX_BIN))
            slots.append(Slot(off, COORD if coord else char_kind(c)))
    slots.sort(key=lambda s: s.offset)
    return slots


def leak_metrics(kinds: Iterable[str]) -> dict[str, float]:
    """Named floats over the kinds of a set of slots: `coord_slots` (number of slots),
    `coord_slot_leak_rate` (share of slots that are not "coord"; 0.0 without slots) and `leak/<kind>`
    (count per leak kind, every kind of `LEAK_KINDS`, zeros included)."""
    counts = {k: 0 for k in LEAK_KINDS}
    n = 0
    for kind in kinds:
        n += 1
        if kind != COORD:
            counts[kind] += 1
    leaked = sum(counts.values())
    return {
        "coord_slots": float(n),
        "coord_slot_leak_rate": leaked / n if n else 0.0,
        **{f"leak/{k}": float(v) for k, v in counts.items()},
    }
