"""The parser's regex fast path (`vlmdet._parse_fast`): where a run stops, by hand, and parity with the
careful scanner (`parse_prediction(..., fast=False)`) over every table case of tests/test_parse.py and
fuzzed answers -- objects (spans included), drops with reasons and spans, flags, prefix_end, n_records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_parse import CASES, FUZZ, THREE, A, C, R, grammar_text, mutated_answers, object_lists  # same folder

from vlmdet import _parse_fast
from vlmdet.format import ANSWER_PREFIX, render_answer
from vlmdet.parse import ParsedObject, parse_prediction

OPEN = ANSWER_PREFIX
CAT = R('"cat"', C(1, 2, 3, 4))
DOG = R('"dog"', C(10, 20, 30, 40))


def run(text: str, field_order: str = "desc_first"):
    """read_run from just after the container opening: ((count, end), [(desc, bins, index, span)])."""
    objects: list = []
    got = _parse_fast.read_run(text, len(OPEN), 0, field_order, objects, ParsedObject)
    return got, [(o.desc, o.bins, o.index, o.span) for o in objects]


def test_run_reads_canonical_records_and_ends_after_the_last_brace():
    text = A(CAT, DOG)
    s1, s2 = len(OPEN), len(OPEN) + len(CAT) + 2
    assert run(text) == ((2, s2 + len(DOG)), [("cat", (1, 2, 3, 4), 0, (s1, s1 + len(CAT))),
                                             ("dog", (10, 20, 30, 40), 1, (s2, s2 + len(DOG)))])


@pytest.mark.parametrize(
    "second",
    [
        R('"dog"', C(30, 20, 10, 40)),  # degenerate
        R('"  "', C(10, 20, 30, 40)),  # blank desc
        R('"dog"', "[<|coord_010|>, <|coord_20|>, <|coord_30|>, <|coord_40|>]"),  # zero-padded
        R('"dog"', C(10, 20, 30, 1000)),  # out of range
        '{"desc":"dog", "bbox_2d": ' + C(10, 20, 30, 40) + "}",  # not canonical spacing
        '{"bbox_2d": ' + C(10, 20, 30, 40) + ', "desc": "dog"}',  # other field order
    ],
)
def test_run_stops_before_the_first_invalid_or_non_canonical_record(second):
    text = A(CAT, second, DOG)
    assert run(text) == ((1, len(OPEN) + len(CAT)), [("cat", (1, 2, 3, 4), 0, (len(OPEN), len(OPEN) + len(CAT)))])
    assert run(A(second, DOG)) == ((0, len(OPEN)), [])


def test_run_stops_at_a_missing_comma_and_decodes_escapes():
    text = A(CAT + DOG)  # no separator: the scanner must not run on into the second record
    assert run(text)[0] == (0, len(OPEN))
    esc = R(r'"a \"q\" \u732b\\"', C(1, 2, 3, 4))
    assert run(A(esc))[1][0][0] == 'a "q" 猫\\'


def test_run_geometry_first_groups():
    objs = [("a b", (1, 2, 3, 4)), ('q"uote', (5, 6, 7, 8))]
    text = render_answer(objs, "geometry_first", ordering="random")
    got, read = run(text, "geometry_first")
    assert got == (2, len(text) - 2) and [(d, b) for d, b, _, _ in read] == objs
    o = parse_prediction(text, "geometry_first").objects[1]
    assert [text[s:e] for s, e in o.coord_spans] == [f"<|coord_{k}|>" for k in (5, 6, 7, 8)]


# --------------------------------------------------------------------------------------------------
# parity with the careful scanner


def assert_same(text: str, field_order: str) -> None:
    fast, careful = parse_prediction(text, field_order), parse_prediction(text, field_order, fast=False)
    assert fast == careful  # every field, objects and drops compared with their spans
    assert [(o.span, o.coord_spans) for o in fast.objects] == [(o.span, o.coord_spans) for o in careful.objects]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parity_table(case):
    assert_same(case.text, case.order)
    # and the same records in the other field order (mostly order violations there)
    assert_same(case.text, "geometry_first" if case.order == "desc_first" else "desc_first")


@pytest.mark.parametrize("field_order", ["desc_first", "geometry_first"])
def test_parity_truncation_at_every_character(field_order):
    full = render_answer(THREE, field_order=field_order)
    for i in range(len(full) + 1):
        assert_same(full[:i], field_order)


def test_fast_path_is_taken_on_canonical_answers():
    """Parity would hold vacuously if the fast path were never used: its objects keep the regex match."""
    r = parse_prediction(render_answer(THREE))
    assert all(o._coord_spans.__class__ is int for o in r.objects)
    assert all(o._coord_spans.__class__ is tuple for o in parse_prediction(render_answer(THREE), fast=False).objects)


@FUZZ
@given(mutated_answers())
def test_parity_fuzz_mutated_answers(sample):
    text, order = sample
    assert_same(text, order)


@FUZZ
@given(object_lists, st.sampled_from(["desc_first", "geometry_first"]), st.data())
def test_parity_fuzz_canonical_with_invalid_records(objs, order, data):
    """Canonical answers with canonical-looking but invalid records spliced in (degenerate, blank desc,
    padded or out-of-range literals, escapes): the cases where the fast path must hand over."""
    records = [render_answer([o], field_order=order)[len(OPEN) : -2] for o in objs]
    bad = [
        R('"x"', C(5, 5, 5, 9)), R('" "', C(1, 2, 3, 4)), R('"x"', C(1, 2, 3, 1000)),
        R('"\\u00e9\\n"', C(1, 2, 3, 4)), R('"x"', "[<|coord_01|>, <|coord_2|>, <|coord_3|>, <|coord_4|>]"),
        R('"x"', C(1, 2, 3)), '{"bbox_2d": ' + C(1, 2, 3, 4) + ', "desc": "x"}',
    ]
    for record in data.draw(st.lists(st.sampled_from(bad), max_size=3)):
        records.insert(data.draw(st.integers(0, len(records))), record)
    text = A(*records)
    assert_same(text, order)


@FUZZ
@given(grammar_text, st.booleans())
def test_parity_fuzz_grammar_pieces(body, with_open):
    text = (OPEN if with_open else "") + body
    assert_same(text, "desc_first")
    assert_same(text, "geometry_first")
