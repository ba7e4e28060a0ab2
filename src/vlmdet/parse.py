"""CoordJSON text -> ParseResult: the one strict parser for rollouts, evaluation and offline files.

`parse_prediction(text, field_order)` never raises on model output (any `str`). It reads the grammar of
the CoordJSON grammar with these rules (docs/FORMAT.md):

Container
- The container is the first match of `{"objects": [` in the text, JSON whitespace (space, tab, LF,
  CR) allowed between its four tokens (`{ "objects" : [` is fine). Leading junk before it is ignored.
  No match at all (empty text, a legacy `{"object_1": {...}}` dict, `{"objects"` cut short) ->
  `failed=True` with everything else empty (`truncated=False`, `prefix_end=0`).
- Array elements are records `{...}` separated by `,` (JSON whitespace allowed around it).
  A record's extent is found by string-aware brace matching (braces inside JSON strings do not count).
- After the last record: `]` then `}` closes the container. Anything after that closing `}` is
  ignored (trailing junk, a second container, a leftover end-of-turn string).
- The text ending before the container closes -> `truncated=True`. If it ends inside a record (a `{`
  without its matching `}`), `incomplete_tail=1`; that record is not a drop and not counted.
- Any other character where a separator, `]` or `}` is expected stops parsing
  (`malformed_container=True`, `truncated=False`) and keeps everything already read. This covers a
  missing comma between records, an element that is not a `{...}` record (`[42]`, `["a"]`), a
  trailing comma (`[{...}, ]`) and a second top-level key (`{"objects": [], "n": 1}`).

Records (each complete record is either a `ParsedObject` or exactly one `DroppedRecord`)
- Lexically a record is `{` members `}` where a member is `"key": value` and a value is a JSON string
  (escapes decoded exactly like `json.loads`: an invalid escape or a raw control character is
  `malformed`), an array `[v, ...]`, a nested object `{...}`, or a bare atom: a run of characters other
  than JSON whitespace and `,:[]{}"` (so `85`, `三`, `true`, `<|coord_5|>` are atoms); an array
  element may also be several atoms separated by spaces or tabs (`red triangle`, `<| coord_2 |>`),
  which is one element (in `bbox_2d`: a `non_coord_token`, not `malformed`). Anything else
  (missing colon or comma, unbalanced brackets, trailing comma, nesting deeper than 64) -> `malformed`.
- Then the first failing rule, in `DROP_REASONS` order, names the drop:
  `unexpected_keys` (a key other than `desc` / `bbox_2d`, or a key given twice), `missing_desc` (no
  `desc`, not a string, or empty after `str.strip`), `missing_geometry` (no `bbox_2d`),
  `order_violation` (both keys present but not in `field_order`), `non_coord_token` (an element of
  `bbox_2d` that is not a bare coordinate token: digits, words, CJK numerals, quoted tokens, nested
  arrays, zero-padded `<|coord_07|>`), `coord_out_of_range` (a bare `<|coord_k|>` with k > 999),
  `wrong_arity` (only coordinate tokens, but not 4), `degenerate_box` (x2 <= x1 or y2 <= y1).
  A `bbox_2d` value that is not an array is read as a one-element list (a lone token -> `wrong_arity`).
- A valid object keeps its `desc` exactly as decoded (not stripped, so rendering and parsing round-trip),
  its 4 bins, its `index` in the array (dropped records counted), the character span of the record and
  of its 4 coordinate literals. Duplicated objects are not drops.

Speed: `parse_prediction` hands runs of canonical records (exactly as `format.render_answer` writes
them) to a regex fast path, `vlmdet._parse_fast`, which stops at the first record that is not canonical
or not valid; everything else goes through the scanner below. Both give the same `ParseResult`
(`parse_prediction(..., fast=False)` runs the scanner alone; tests/test_parse_fast.py compares the
two). See docs/BENCHMARKS.md ("Parser").

`parse_rollout` is the token-level wrapper used for training rollouts (see its docstring).
"""

from __future__ import annotations

import bisect
import itertools
import re
import sys
from dataclasses import dataclass
from json.decoder import scanstring
from operator import attrgetter
from typing import Collection, Mapping, Sequence

from vlmdet import _parse_fast
from vlmdet.format import ANSWER_PREFIX, DESC_KEY, FIELD_ORDERS, GEOMETRY_KEY

__all__ = [
    "DROP_REASONS",
    "ParsedObject",
    "DroppedRecord",
    "ParseResult",
    "parse_prediction",
    "RolloutParse",
    "parse_rollout",
]

#: Object-level drop reasons, in precedence order (the first broken rule names the drop).
DROP_REASONS = (
    "malformed",
    "unexpected_keys",
    "missing_desc",
    "missing_geometry",
    "order_violation",
    "non_coord_token",
    "coord_out_of_range",
    "wrong_arity",
    "degenerate_box",
)


class ParsedObject:
    """A valid record. `bins` are ints 0..999 `(x1, y1, x2, y2)` with x2 > x1 and y2 > y1.

    Fields (read-only; `ParsedObject(desc, bins, index, span, coord_spans)` builds one):
      desc: str; bins: tuple[int, int, int, int];
      index: int, position in the objects array, counting dropped records;
      span: tuple[int, int], char span [start, end) of the record text "{...}";
      coord_spans: tuple[tuple[int, int], ...], 4 char spans [start, end) of the `<|coord_k|>` literals.
    Behaves like a frozen dataclass of those 5 fields: `==` (ParsedObject vs ParsedObject, all 5 fields),
    `hash`, `repr` and pickling go by the field values; assigning a field raises AttributeError.

    Objects built by the parser's fast path keep the regex match of their record (and so a reference to
    the parsed text) and derive `span` and `coord_spans` from it when accessed: building those 5 tuples
    for every object was ~1/5 of the parse time, and evaluation never reads them (`parse_rollout` does).
    """

    # _span: the span tuple, or the fast path's `re.Match` of the record (group 0 = record plus an
    # optional ", " separator; the record ends 2 chars after its last group's end: `]}` or `"}`, see
    # `_parse_fast.record_end`). _coord_spans: the tuple, or (fast path) the int number of the match
    # group of the first literal.
    __slots__ = ("_desc", "_bins", "_index", "_span", "_coord_spans")
    __match_args__ = ("desc", "bins", "index", "span", "coord_spans")

    def __init__(self, desc, bins, index, span, coord_spans) -> None:
        self._desc = desc
        self._bins = bins
        self._index = index
        self._span = span
        self._coord_spans = coord_spans

    desc: str = property(attrgetter("_desc"))  # type: ignore[assignment]
    bins: tuple[int, int, int, int] = property(attrgetter("_bins"))  # type: ignore[assignment]
    index: int = property(attrgetter("_index"))  # type: ignore[assignment]

    @property
    def span(self) -> tuple[int, int]:
        if self._coord_spans.__class__ is not int:
            return self._span
        return (self._span.start(), _parse_fast.record_end(self._span))

    @property
    def coord_spans(self) -> tuple[tuple[int, int], ...]:
        c = self._coord_spans
        if c.__class__ is not int:
            return c
        return self._span.regs[c : c + 4]

    def _fields(self) -> tuple:
        return (self._desc, self._bins, self._index, self.span, self.coord_spans)

    def __eq__(self, other):
        if other.__class__ is not ParsedObject:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        desc, bins, index, span, coord_spans = self._fields()
        return (
            f"ParsedObject(desc={desc!r}, bins={bins!r}, index={index!r}, span={span!r}, "
            f"coord_spans={coord_spans!r})"
        )

    def __reduce__(self):
        return (ParsedObject, self._fields())


@dataclass(frozen=True, slots=True)
class DroppedRecord:
    """A lexically complete record that breaks the schema; `reason` is one of `DROP_REASONS`."""

    reason: str
    index: int
    span: tuple[int, int]  # char span [start, end) of the record text


@dataclass(slots=True)
class ParseResult:
    """What `parse_prediction` found. Character offsets index into the parsed text."""

    objects: list[ParsedObject]
    drops: dict[str, int]  # reason -> count (only reasons with count > 0)
    dropped: list[DroppedRecord]  # in array order
    failed: bool  # no `{"objects": [` container at all
    truncated: bool  # the container never closed
    incomplete_tail: int  # 0/1: last record cut off mid-way (not a drop, not in n_records)
    malformed_container: bool  # a broken separator between records: parsing stopped there
    prefix_end: int  # char offset just after the last complete record (valid or not);
    # just after `[` when there is none; 0 when failed
    n_records: int  # complete records seen (valid + dropped)


# --------------------------------------------------------------------------------------------------
# lexical pieces

# Possessive loops (`*+`) need Python 3.11; on 3.10 the plain loops match the same strings (the
# character classes below never overlap the escape branch, so there is no ambiguous backtracking).
_P = "+" if sys.version_info >= (3, 11) else ""

_WS_RE = re.compile(r"[ \t\n\r]*")
_CONTAINER_RE = re.compile(r'\{[ \t\n\r]*"objects"[ \t\n\r]*:[ \t\n\r]*\[')
_ATOM_RE = re.compile(r'[^ \t\n\r,:\[\]{}"]+')
# Inside an array an element may be a run of atoms separated by spaces or tabs (`red triangle`,
# `<| coord_2 |>`): one element, which `bbox_2d` then calls `non_coord_token` (not `malformed`).
_WORDS_RE = re.compile(r'[^ \t\n\r,:\[\]{}"]+(?:[ \t]+[^ \t\n\r,:\[\]{}"]+)*')
_COORD_ATOM_RE = re.compile(r"<\|coord_(0|[1-9][0-9]*)\|>")
# A JSON string body for brace matching: any char but quote/backslash, or a backslash + any char.
_STRING_TAIL_RE = re.compile(rf'[^"\\]*{_P}(?:\\.[^"\\]*{_P})*{_P}"', re.DOTALL)
_BRACE_OR_QUOTE_RE = re.compile(r'[{}"]')
_MAX_DEPTH = 64

_KEY_ORDER = {"desc_first": [DESC_KEY, GEOMETRY_KEY], "geometry_first": [GEOMETRY_KEY, DESC_KEY]}


def _record_end(text: str, start: int) -> int:
    """Offset just after the `}` matching the `{` at `start` (string-aware), or -1 if the text ends first."""
    depth = 0
    pos = start
    search = _BRACE_OR_QUOTE_RE.search
    string_tail = _STRING_TAIL_RE.match
    while True:
        m = search(text, pos)
        if m is None:
            return -1
        p = m.start()
        c = text[p]
        if c == '"':
            m = string_tail(text, p + 1)
            if m is None:
                return -1
            pos = m.end()
        elif c == "{":
            depth += 1
            pos = p + 1
        else:
            depth -= 1
            pos = p + 1
            if depth == 0:
                return pos


# Lexed values are tuples (kind, value, start, end): kind "s" (decoded string), "a" (atom text),
# "l" (list of values), "o" (list of (key, value) members). `None` means lexically malformed.


def _lex_value(text: str, pos: int, end: int, depth: int, in_array: bool = False):
    if pos >= end:
        return None
    c = text[pos]
    if c == '"':
        try:
            s, p = scanstring(text, pos + 1, True)
        except ValueError:  # invalid escape, control character, unterminated
            return None
        return ("s", s, pos, p) if p <= end else None
    if c == "[":
        if depth >= _MAX_DEPTH:
            return None
        items = []
        p = _WS_RE.match(text, pos + 1).end()
        if p < end and text[p] == "]":
            return ("l", items, pos, p + 1)
        while True:
            v = _lex_value(text, p, end, depth + 1, True)
            if v is None:
                return None
            items.append(v)
            p = _WS_RE.match(text, v[3]).end()
            if p >= end:
                return None
            c = text[p]
            if c == "]":
                return ("l", items, pos, p + 1)
            if c != ",":
                return None
            p = _WS_RE.match(text, p + 1).end()
    if c == "{":
        if depth >= _MAX_DEPTH:
            return None
        members = _lex_members(text, pos, end, depth + 1)
        if members is None:
            return None
        return ("o", members[0], pos, members[1])
    m = (_WORDS_RE if in_array else _ATOM_RE).match(text, pos, end)
    if m is None:
        return None
    return ("a", m.group(), pos, m.end())


def _lex_members(text: str, pos: int, end: int, depth: int):
    """Members of the object whose `{` is at `pos`: ([(key, value), ...], offset after `}`) or None."""
    members = []
    p = _WS_RE.match(text, pos + 1).end()
    if p < end and text[p] == "}":
        return members, p + 1
    while True:
        if p >= end or text[p] != '"':
            return None
        try:
            key, p = scanstring(text, p + 1, True)
        except ValueError:
            return None
        p = _WS_RE.match(text, p).end()
        if p >= end or text[p] != ":":
            return None
        v = _lex_value(text, _WS_RE.match(text, p + 1).end(), end, depth)
        if v is None:
            return None
        members.append((key, v))
        p = _WS_RE.match(text, v[3]).end()
        if p >= end:
            return None
        c = text[p]
        if c == "}":
            return members, p + 1
        if c != ",":
            return None
        p = _WS_RE.match(text, p + 1).end()


def _classify(text: str, start: int, end: int, index: int, field_order: str):
    """Careful path for the complete record text[start:end]: a ParsedObject or a drop reason (str)."""
    lexed = _lex_members(text, start, end, 0)
    if lexed is None or lexed[1] != end:
        return "malformed"
    members = lexed[0]
    keys = [k for k, _ in members]
    if len(set(keys)) != len(keys) or any(k != DESC_KEY and k != GEOMETRY_KEY for k in keys):
        return "unexpected_keys"
    values = dict(members)
    desc = values.get(DESC_KEY)
    if desc is None or desc[0] != "s" or not desc[1].strip():
        return "missing_desc"
    geom = values.get(GEOMETRY_KEY)
    if geom is None:
        return "missing_geometry"
    if keys != _KEY_ORDER[field_order]:
        return "order_violation"
    elements = geom[1] if geom[0] == "l" else [geom]
    bins = []
    spans = []
    out_of_range = False
    for e in elements:
        m = _COORD_ATOM_RE.fullmatch(e[1]) if e[0] == "a" else None
        if m is None:
            return "non_coord_token"
        digits = m.group(1)
        # len check first: int() of a >4300-digit string raises in Python >= 3.11
        if len(digits) > 3:
            out_of_range = True
        else:
            bins.append(int(digits))
        spans.append((e[2], e[3]))
    if out_of_range:
        return "coord_out_of_range"
    if len(bins) != 4:
        return "wrong_arity"
    x1, y1, x2, y2 = bins
    if x2 <= x1 or y2 <= y1:
        return "degenerate_box"
    return ParsedObject(desc[1], (x1, y1, x2, y2), index, (start, end), tuple(spans))


def parse_prediction(text: str, field_order: str = "desc_first", *, fast: bool = True) -> ParseResult:
    """Parse one CoordJSON answer (a model's raw response text; an end-of-turn string after it is ignored).

    Never raises for any `str` text; `field_order` must be one of `FIELD_ORDERS` (ValueError otherwise).
    See the module docstring for the exact rules. `fast=False` reads every record with the careful
    scanner instead of handing canonical runs to the regex fast path: the same result, slower.
    """
    if field_order not in FIELD_ORDERS:
        raise ValueError(f"field_order must be one of {FIELD_ORDERS}, got {field_order!r}")
    if text.startswith(ANSWER_PREFIX):  # the common case, without a regex search
        pos = len(ANSWER_PREFIX)
    else:
        m = _CONTAINER_RE.search(text)
        if m is None:
            return ParseResult([], {}, [], True, False, 0, False, 0, 0)
        pos = m.end()

    n_text = len(text)
    ws = _WS_RE.match
    objects: list[ParsedObject] = []
    dropped: list[DroppedRecord] = []
    n = 0  # complete records read
    prefix_end = pos
    truncated = broken = closing = False
    tail = 0

    pos = ws(text, pos).end()
    if pos >= n_text:
        truncated = True
    elif text[pos] == "]":
        closing = True
    elif text[pos] != "{":
        broken = True
    else:
        while True:  # invariant: text[pos] == "{" opens record number n
            # 1. a run of valid canonical records, or else one record read by the careful scanner
            count, end = _parse_fast.read_run(text, pos, n, field_order, objects, ParsedObject) if fast else (0, pos)
            if count:
                n += count
            else:
                end = _record_end(text, pos)
                if end < 0:
                    truncated = True
                    tail = 1
                    break
                obj = _classify(text, pos, end, n, field_order)
                if obj.__class__ is str:
                    dropped.append(DroppedRecord(obj, n, (pos, end)))
                else:
                    objects.append(obj)
                n += 1
            prefix_end = pos = end
            # 2. the separator after the record ending at pos
            if text.startswith(", {", pos):
                pos += 2
                continue
            pos = ws(text, pos).end()
            if pos >= n_text:
                truncated = True
                break
            c = text[pos]
            if c == ",":
                pos = ws(text, pos + 1).end()
                if pos >= n_text:
                    truncated = True
                    break
                if text[pos] == "{":
                    continue
                broken = True
                break
            if c == "]":
                closing = True
                break
            broken = True
            break
    if closing:  # text[pos] == "]"
        pos = ws(text, pos + 1).end()
        if pos >= n_text:
            truncated = True
        elif text[pos] != "}":
            broken = True

    drops: dict[str, int] = {}
    if dropped:
        for d in dropped:
            drops[d.reason] = drops.get(d.reason, 0) + 1
        drops = {r: drops[r] for r in DROP_REASONS if r in drops}
    return ParseResult(objects, drops, dropped, False, truncated, tail, broken, prefix_end, n)


# --------------------------------------------------------------------------------------------------
# token level


@dataclass(slots=True)
class RolloutParse:
    """A rollout's response tokens parsed, with each valid object's coordinates mapped to token indices."""

    result: ParseResult  # parse of `text` (after coord-token re-classification)
    text: str  # "".join(pieces[:n_tokens])
    n_tokens: int  # response tokens before the first end-of-turn token
    stopped: bool  # an end-of-turn token was found
    coord_positions: list[tuple[int, int, int, int]]  # per valid object: token indices of its 4 coords
    prefix_tokens: int  # tokens lying entirely inside text[:result.prefix_end]
    prefix_char_end: int  # char offset of that token boundary (<= result.prefix_end)


def parse_rollout(
    token_ids: Sequence[int],
    pieces: Sequence[str],
    coord_bin_of_id: Mapping[int, int],
    eot_ids: Collection[int],
    field_order: str = "desc_first",
) -> RolloutParse:
    """Parse a rollout at token level (never re-tokenizes the text).

    token_ids: response token ids (assistant part only); pieces[i]: the decoded text of token i
    (`skip_special_tokens=False`), same length as token_ids; coord_bin_of_id: coord-token id -> bin;
    eot_ids: end-of-turn ids. The response is cut at the first end-of-turn id. A valid object whose 4
    coordinate literals are not each exactly one token (piece == the literal) with a coord-token id of
    that bin -- e.g. `<|coord_12|>` spelled with text tokens -- is re-classified as a `non_coord_token`
    drop (counts updated). `prefix_tokens` counts the tokens lying entirely inside
    `text[:result.prefix_end]`; a token straddling that offset is left out, and
    `prefix_char_end` (<= prefix_end) is where the kept tokens end.
    """
    if len(pieces) != len(token_ids):
        raise ValueError(f"pieces ({len(pieces)}) and token_ids ({len(token_ids)}) differ in length")
    n_tokens = len(token_ids)
    stopped = False
    for i, t in enumerate(token_ids):
        if t in eot_ids:
            n_tokens, stopped = i, True
            break
    ends = list(itertools.accumulate(len(piece) for piece in pieces[:n_tokens]))  # end offset of each token
    text = "".join(pieces[:n_tokens])
    result = parse_prediction(text, field_order)

    coord_positions: list[tuple[int, int, int, int]] = []
    kept: list[ParsedObject] = []
    reclassified: list[DroppedRecord] = []
    for obj in result.objects:
        positions = []
        for (s, e), b in zip(obj.coord_spans, obj.bins):
            i = bisect.bisect_right(ends, s)  # first token ending after s: the token that starts at s
            if (
                i < n_tokens
                and ends[i] == e
                and ends[i] - len(pieces[i]) == s
                and coord_bin_of_id.get(token_ids[i]) == b
            ):
                positions.append(i)
            else:
                break
        if len(positions) == 4:
            kept.append(obj)
            coord_positions.append(tuple(positions))
        else:
            reclassified.append(DroppedRecord("non_coord_token", obj.index, obj.span))
    if reclassified:
        result.objects = kept
        result.dropped = sorted(result.dropped + reclassified, key=lambda d: d.index)
        result.drops["non_coord_token"] = result.drops.get("non_coord_token", 0) + len(reclassified)
        result.drops = {r: result.drops[r] for r in DROP_REASONS if result.drops.get(r)}

    prefix_tokens = bisect.bisect_right(ends, result.prefix_end)
    prefix_char_end = ends[prefix_tokens - 1] if prefix_tokens else 0
    return RolloutParse(result, text, n_tokens, stopped, coord_positions, prefix_tokens, prefix_char_end)
