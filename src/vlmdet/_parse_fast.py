"""The parser's fast path: a run of canonical CoordJSON records read by one compiled regex.

Private to `vlmdet.parse`, which owns the grammar, the result types and the careful scanner; this module
only makes the common case cheap. Pure: no I/O, imports nothing from the rest of the package but the
coordinate vocabulary.

A canonical record is the exact text `format.render_answer` writes: `{"desc": "<body>", "bbox_2d":
[<|coord_a|>, <|coord_b|>, <|coord_c|>, <|coord_d|>]}` (keys in the given field order, `", "` / `": "`
separators, no other whitespace), the desc body any valid JSON string body without raw control
characters. `read_run` reads such records one after the other while each is also *valid* (in-range,
unpadded literals; x1 < x2, y1 < y2; a desc that is not blank), and stops at the first record that is
not -- that one, and everything after it, is the careful scanner's. For the records it does read the
answer equals the careful scanner's (tests/test_parse_fast.py checks it over the parser's table cases
and fuzzed answers).

Speed (docs/BENCHMARKS.md, "Parser"): the regex is run by a `Pattern.scanner` from the current position
(the long-standing CPython API behind the stdlib's `re.Scanner`): each `.match()` starts exactly where
the previous one ended, so the run stops at the first record that is not canonical. A match is one
record plus the `", "` after it when a `{` follows; a record directly followed by `{` (missing comma)
does not match, so the scanner cannot run on past it. The Python work per record is a dict look-up per
literal, two comparisons and building the object, which keeps the regex match (for its spans) instead
of building 5 span tuples that evaluation never reads.
"""

from __future__ import annotations

import re
import sys
from json.decoder import scanstring
from typing import Callable

from vlmdet.coords import COORD_TOKENS

__all__ = ["read_run", "record_end"]

# Possessive loops (`*+`) need Python 3.11; on 3.10 the plain loops match the same strings (the
# character classes never overlap the escape branch, so there is no ambiguous backtracking).
_P = "+" if sys.version_info >= (3, 11) else ""

# Groups: the desc body (written with possessive loops it matches as fast as an escape-free body) and
# the 4 coordinate literals, in record order. Digits are `[0-9]{1,3}`: zero-padded literals miss
# `_BIN_OF_LITERAL`, which ends the run (the careful scanner calls them `non_coord_token`).
_DESC = rf'"([^"\\\x00-\x1f]*{_P}(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{{4}})[^"\\\x00-\x1f]*{_P})*{_P})"'
_COORD = rf"(<\|coord_[0-9]{{1,3}}{_P}\|>)"
_BOX = r"\[" + ", ".join([_COORD] * 4) + r"\]"
_SEP = r"(?:, (?=\{)|(?!\{))"

# field order -> (pattern, group of the desc body, group of the first coordinate literal)
_RECORD = {
    "desc_first": (re.compile(r'\{"desc": ' + _DESC + r', "bbox_2d": ' + _BOX + r"\}" + _SEP), 1, 2),
    "geometry_first": (re.compile(r'\{"bbox_2d": ' + _BOX + r', "desc": ' + _DESC + r"\}" + _SEP), 5, 1),
}
_BIN_OF_LITERAL = {tok: k for k, tok in enumerate(COORD_TOKENS)}


def record_end(match: re.Match) -> int:
    """Offset just after the record of a `read_run` match: 2 chars (`]}` or `"}`) after its last group
    (group 5 in both field orders). `match.end(5)`, not `match.regs[-1]`, which builds the spans of all 6
    groups: ~0.3 µs per answer, what made the one loop slower than two (docs/BENCHMARKS.md, "Parser")."""
    return match.end(5) + 2


def read_run(
    text: str, pos: int, index: int, field_order: str, objects: list, make: Callable
) -> tuple[int, int]:
    """Read the valid canonical records from `text[pos]` (the `{` of record number `index`) on.

    Appends `make(desc, bins, k, match, coord_group)` to `objects` for each, in order: desc decoded like
    `json.loads`, bins `(x1, y1, x2, y2)` ints 0..999, k the record's index, `match` the regex match of
    the record (group 0: the record plus a following `", "`; `record_end(match)` ends the record) and
    `coord_group` the group number of its first coordinate literal (the 4 literals are groups
    coord_group..coord_group+3). Returns `(count, end)`: the number of records read and the offset just
    after the last one's `}` (`(0, pos)` when the first record is not read).
    """
    pattern, d, c0 = _RECORD[field_order]
    desc_first = d == 1
    bin_of = _BIN_OF_LITERAL
    append = objects.append
    k = index - 1
    for k, m in enumerate(iter(pattern.scanner(text, pos).match, None), index):
        # m.groups() and a branch: ~1/3 cheaper per record than m.group(d, c0, ..., c0 + 3)
        if desc_first:
            desc, l0, l1, l2, l3 = m.groups()
        else:
            l0, l1, l2, l3, desc = m.groups()
        try:
            x1 = bin_of[l0]
            y1 = bin_of[l1]
            x2 = bin_of[l2]
            y2 = bin_of[l3]
        except KeyError:  # a zero-padded literal
            break
        if "\\" in desc:  # decode escapes exactly like json.loads
            desc = scanstring(text, m.start(d), True)[0]
        if not (x1 < x2 and y1 < y2 and desc.strip()):
            break
        append(make(desc, (x1, y1, x2, y2), k, m, c0))
    else:  # the scanner stopped at a record that is not canonical (or at the end of the array)
        return (k + 1 - index, record_end(m)) if k >= index else (0, pos)
    # stopped at the canonical but invalid record k, which starts where the previous match's ", " ends
    return (k - index, m.start() - 2) if k > index else (0, pos)
