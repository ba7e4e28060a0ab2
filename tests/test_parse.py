"""The strict CoordJSON parser (see docs/FORMAT.md): hand-written malformed outputs, truncation at every
character, fuzzing with invariants, the render -> parse round trip, and the token-level wrapper."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmdet.format import render_answer, sort_objects
from vlmdet.parse import DROP_REASONS, ParsedObject, parse_prediction, parse_rollout


def C(*bins) -> str:
    """A bbox_2d array of bare coordinate tokens (any ints, also out-of-range ones)."""
    return "[" + ", ".join(f"<|coord_{k}|>" for k in bins) + "]"


def R(desc_json: str, box: str) -> str:
    """A desc_first record; `desc_json` is the raw JSON text of the desc value (quotes included)."""
    return '{"desc": ' + desc_json + ', "bbox_2d": ' + box + "}"


def A(*records: str) -> str:
    return '{"objects": [' + ", ".join(records) + "]}"


OPEN = '{"objects": ['
CAT = R('"cat"', C(1, 2, 3, 4))
DOG = R('"dog"', C(10, 20, 30, 40))
CAT_OBJ = ("cat", (1, 2, 3, 4))
DOG_OBJ = ("dog", (10, 20, 30, 40))


@dataclass
class Case:
    id: str
    text: str
    objects: list  # [(desc, bins, index)]
    drops: dict = field(default_factory=dict)
    n_records: int | None = None  # default: len(objects) + sum(drops)
    failed: bool = False
    truncated: bool = False
    tail: int = 0
    broken: bool = False  # malformed_container
    order: str = "desc_first"


def drop1(reason: str, text: str) -> Case:
    """A one-record answer whose record must be dropped for `reason`."""
    return Case(f"{reason}:{text[:60]}", text, [], {reason: 1})


CASES = [
    # --- containers, sample-level flags
    Case("valid single", A(CAT), [("cat", (1, 2, 3, 4), 0)]),
    Case("two records", A(CAT, DOG), [("cat", (1, 2, 3, 4), 0), ("dog", (10, 20, 30, 40), 1)]),
    Case("duplicates are not drops", A(CAT, CAT), [("cat", (1, 2, 3, 4), 0), ("cat", (1, 2, 3, 4), 1)]),
    Case("empty answer", '{"objects": []}', []),
    Case("empty answer with spaces", '{ "objects" : [ ] }', []),
    Case("empty text", "", [], failed=True, n_records=0),
    Case("only junk", "I see a cat.", [], failed=True, n_records=0),
    Case("prefix cut short", '{"objects"', [], failed=True, n_records=0),
    Case("prefix cut short 2", '{"objects": ', [], failed=True, n_records=0),
    Case("only the prefix", OPEN, [], truncated=True),
    Case("prefix and spaces", OPEN + "  \n", [], truncated=True),
    Case(
        "legacy object_1 dict",
        '{"object_1": {"desc": "cat", "bbox_2d": ' + C(1, 2, 3, 4) + "}}",
        [],
        failed=True,
        n_records=0,
    ),
    Case("objects key not a list", '{"objects": {"desc": "cat"}}', [], failed=True, n_records=0),
    Case("leading junk", "Sure! Here they are: " + A(CAT), [("cat", (1, 2, 3, 4), 0)]),
    Case(
        "legacy dict then a real container",
        '{"object_1": {"desc": "x"}} ' + A(DOG),
        [("dog", (10, 20, 30, 40), 0)],
    ),
    Case("trailing junk ignored", A(CAT) + '<|im_end|> and {"objects": [' + DOG, [("cat", (1, 2, 3, 4), 0)]),
    Case("array closed, object not", OPEN + CAT + "]", [("cat", (1, 2, 3, 4), 0)], truncated=True),
    Case("truncated after a comma", OPEN + CAT + ", ", [("cat", (1, 2, 3, 4), 0)], truncated=True),
    Case(
        "truncated inside a record",
        OPEN + CAT + ', {"desc": "do',
        [("cat", (1, 2, 3, 4), 0)],
        truncated=True,
        tail=1,
    ),
    Case(
        "truncated inside a coord token",
        OPEN + CAT + ', {"desc": "dog", "bbox_2d": [<|coord_1|>, <|coo',
        [("cat", (1, 2, 3, 4), 0)],
        truncated=True,
        tail=1,
    ),
    Case("truncated after a backslash", OPEN + '{"desc": "a\\', [], truncated=True, tail=1),
    Case(
        "missing comma between records",
        OPEN + CAT + " " + DOG + "]}",
        [("cat", (1, 2, 3, 4), 0)],
        broken=True,
    ),
    Case("records back to back, no separator", OPEN + CAT + DOG + "]}", [("cat", (1, 2, 3, 4), 0)], broken=True),
    Case("semicolon separator", OPEN + CAT + "; " + DOG + "]}", [("cat", (1, 2, 3, 4), 0)], broken=True),
    Case("trailing comma", OPEN + CAT + ", ]}", [("cat", (1, 2, 3, 4), 0)], broken=True),
    Case("element not a record", '{"objects": [42, ' + CAT + "]}", [], broken=True),
    Case("record then a string element", OPEN + CAT + ', "dog"]}', [("cat", (1, 2, 3, 4), 0)], broken=True),
    Case("second top-level key", '{"objects": [], "n": 1}', [], broken=True),
    Case("array closed with a bracket", OPEN + CAT + "]]", [("cat", (1, 2, 3, 4), 0)], broken=True),
    Case(
        "whitespace variants",
        '{ "objects" :\n[ { "desc" : "cat" , "bbox_2d" : [ <|coord_1|> ,<|coord_2|>,\n<|coord_3|>\t, <|coord_4|> ] }'
        " ,\r\n " + DOG + " ] }",
        [("cat", (1, 2, 3, 4), 0), ("dog", (10, 20, 30, 40), 1)],
    ),
    # --- key drift and unexpected keys
    drop1("unexpected_keys", A('{"desc": "cat", "bbox_3d": ' + C(1, 2, 3, 4) + "}")),
    drop1("unexpected_keys", A('{"desc": "cat", "bbox_0d": ' + C(1, 2, 3, 4) + "}")),
    drop1("unexpected_keys", A('{"desc": "cat", "bbox_d": ' + C(1, 2, 3, 4) + "}")),
    drop1("unexpected_keys", A('{"desc": "cat", "bbox_2d": ' + C(1, 2, 3, 4) + ', "score": 0.9}')),
    drop1("unexpected_keys", A('{"desc": "cat", "desc": "dog", "bbox_2d": ' + C(1, 2, 3, 4) + "}")),
    drop1("unexpected_keys", A('{"desc": "cat", "bbox_2d": ' + C(1, 2, 3, 4) + ', "bbox_2d": ' + C(1, 2, 3, 4) + "}")),
    drop1("unexpected_keys", A('{"bbox_3d": ' + C(1, 2, 3, 4) + "}")),  # before missing_desc
    drop1("unexpected_keys", A(R('"cat"', C(1, 2, 3, 4))[:-1] + ', "extra": {"a": [1, {"b": "}"}]}}')),
    # --- desc
    drop1("missing_desc", A('{"bbox_2d": ' + C(1, 2, 3, 4) + "}")),
    drop1("missing_desc", A(R('""', C(1, 2, 3, 4)))),
    drop1("missing_desc", A(R('"  \\t "', C(1, 2, 3, 4)))),
    drop1("missing_desc", A(R("85", C(1, 2, 3, 4)))),
    drop1("missing_desc", A(R("<|coord_5|>", C(1, 2, 3, 4)))),
    drop1("missing_desc", A(R('["cat"]', C(1, 2, 3, 4)))),
    drop1("missing_desc", A("{}")),
    drop1("missing_desc", A('{"bbox_2d": ' + C(1, 2, 3, 4) + ', "desc": ""}')),  # before order_violation
    # --- geometry presence and order
    drop1("missing_geometry", A('{"desc": "cat"}')),
    drop1("order_violation", A('{"bbox_2d": ' + C(1, 2, 3, 4) + ', "desc": "cat"}')),
    Case(
        "order violation under geometry_first",
        A(CAT, '{"bbox_2d": ' + C(1, 2, 3, 4) + ', "desc": "cat"}'),
        [("cat", (1, 2, 3, 4), 1)],
        {"order_violation": 1},
        order="geometry_first",
    ),
    # --- coordinate slots
    drop1("non_coord_token", A(R('"cat"', "[85, <|coord_2|>, <|coord_3|>, <|coord_4|>]"))),
    drop1("non_coord_token", A(R('"cat"', "[<|coord_1|>, 三, <|coord_3|>, 四]"))),
    drop1("non_coord_token", A(R('"cat"', '["<|coord_1|>", <|coord_2|>, <|coord_3|>, <|coord_4|>]'))),
    drop1("non_coord_token", A(R('"cat"', "[<|coord_1|>, two, <|coord_3|>, <|coord_4|>]"))),
    drop1("non_coord_token", A(R('"cat"', "[<|coord_01|>, <|coord_2|>, <|coord_3|>, <|coord_4|>]"))),
    drop1("non_coord_token", A(R('"cat"', "[<|coord_1|>, [<|coord_2|>], <|coord_3|>, <|coord_4|>]"))),
    drop1("non_coord_token", A(R('"cat"', '"<|coord_1|>, <|coord_2|>"'))),
    drop1("non_coord_token", A(R('"cat"', "[<|coord_1000|>, 85, <|coord_3|>, <|coord_4|>]"))),  # before range
    # words with spaces inside bbox_2d are one element, a non-coordinate token (not malformed)
    drop1("non_coord_token", A(R('"cat"', "[<|coord_1|>, red triangle, <|coord_3|>, <|coord_4|>]"))),
    drop1("non_coord_token", A(R('"cat"', "[<|coord_1|>, <| coord_2 |>, <|coord_3|>, <|coord_4|>]"))),
    drop1("non_coord_token", A(R('"cat"', "[<|coord_1|>\t<|coord_2|>, <|coord_3|>, <|coord_4|>]"))),
    drop1("non_coord_token", A('{"desc": "cat", "bbox_2d": [<|coord_1|> <|coord_2|>, <|coord_3|>, <|coord_4|>]}')),
    drop1("coord_out_of_range", A(R('"cat"', C(1, 2, 1000, 4)))),
    drop1("coord_out_of_range", A(R('"cat"', "[<|coord_1|>, <|coord_" + "9" * 5000 + "|>]"))),  # before arity; no int() overflow
    drop1("wrong_arity", A(R('"cat"', C(1, 2, 3)))),
    drop1("wrong_arity", A(R('"cat"', C(1, 2, 3, 4, 5)))),
    drop1("wrong_arity", A(R('"cat"', "[]"))),
    drop1("wrong_arity", A(R('"cat"', "<|coord_1|>"))),
    drop1("degenerate_box", A(R('"cat"', C(5, 2, 5, 4)))),
    drop1("degenerate_box", A(R('"cat"', C(1, 9, 3, 4)))),
    # --- lexically malformed records
    drop1("malformed", A('{"desc" "cat", "bbox_2d": ' + C(1, 2, 3, 4) + "}")),
    drop1("malformed", A('{desc: "cat", "bbox_2d": ' + C(1, 2, 3, 4) + "}")),
    drop1("malformed", A(R('"c\\qat"', C(1, 2, 3, 4)))),  # invalid escape
    drop1("malformed", A(R('"c\\u12"', C(1, 2, 3, 4)))),
    drop1("malformed", A(R('"c\tat"', C(1, 2, 3, 4)))),  # raw control character, as json.loads
    drop1("malformed", A('{"desc": "cat", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>}')),
    drop1("malformed", A('{"desc": "cat", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>,]}')),
    # a line break between two atoms is not a run of words: lexically broken
    drop1("malformed", A('{"desc": "cat", "bbox_2d": [<|coord_1|>\n<|coord_2|>, <|coord_3|>, <|coord_4|>]}')),
    drop1("malformed", A('{"desc": red cat, "bbox_2d": ' + C(1, 2, 3, 4) + "}")),  # words outside an array
    drop1("malformed", A('{"desc": "cat",, "bbox_2d": ' + C(1, 2, 3, 4) + "}")),
    drop1("malformed", A('{"desc": "cat", "bbox_3d" ' + C(1, 2, 3, 4) + "}")),  # before unexpected_keys
    drop1("malformed", A('{"desc": "cat" "bbox_2d": ' + C(1, 2, 3, 4) + "}")),
    drop1("malformed", A('{"desc": "cat", "bbox_2d": ' + "[" * 70 + "]" * 70 + "}")),  # nesting limit
    # --- descs that stress string handling, and later records still counting
    Case("escaped quotes and braces in desc", A(R('"a \\"}{\\" b"', C(1, 2, 3, 4)), DOG),
         [('a "}{" b', (1, 2, 3, 4), 0), ("dog", (10, 20, 30, 40), 1)]),
    Case("raw braces in desc", A(R('"a}b{c"', C(1, 2, 3, 4))), [("a}b{c", (1, 2, 3, 4), 0)]),
    Case("escapes decoded like json", A(R('"\\u00e9\\ud83d\\ude00\\n\\/\\\\"', C(1, 2, 3, 4))),
         [("é😀\n/\\", (1, 2, 3, 4), 0)]),
    Case("desc mentioning a coord token", A(R('"<|coord_7|> cat"', C(1, 2, 3, 4))), [("<|coord_7|> cat", (1, 2, 3, 4), 0)]),
    Case("desc kept unstripped", A(R('" cat "', C(1, 2, 3, 4))), [(" cat ", (1, 2, 3, 4), 0)]),
    Case(
        "drops in the middle keep indices",
        A(CAT, R('"x"', "[85, 1, 2, 3]"), '{"desc" "x"}', DOG, R('"y"', C(9, 9, 9, 9))),
        [("cat", (1, 2, 3, 4), 0), ("dog", (10, 20, 30, 40), 3)],
        {"non_coord_token": 1, "malformed": 1, "degenerate_box": 1},
    ),
    Case(
        "valid record after a truncated-looking malformed one",
        A('{"desc": "cat", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>]]}', DOG),
        [("dog", (10, 20, 30, 40), 1)],
        {"malformed": 1},
    ),
]


def check_invariants(text: str, r, field_order: str = "desc_first") -> None:
    """Properties every ParseResult must have, whatever the text."""
    assert len(r.objects) + sum(r.drops.values()) == r.n_records
    assert len(r.dropped) == sum(r.drops.values())
    assert set(r.drops) <= set(DROP_REASONS) and all(v > 0 for v in r.drops.values())
    assert {d.reason for d in r.dropped} == set(r.drops)
    # every complete record is exactly one valid object or one drop, in array order
    indices = sorted([o.index for o in r.objects] + [d.index for d in r.dropped])
    assert indices == list(range(r.n_records))
    assert [o.index for o in r.objects] == sorted(o.index for o in r.objects)
    assert 0 <= r.prefix_end <= len(text)
    assert r.incomplete_tail in (0, 1)
    if r.failed:
        assert (r.n_records, r.prefix_end, r.truncated, r.incomplete_tail, r.malformed_container) == (0, 0, False, 0, False)
    if r.incomplete_tail:
        assert r.truncated
    assert not (r.truncated and r.malformed_container)
    spans = sorted([o.span for o in r.objects] + [d.span for d in r.dropped])
    for (s, e), (s2, _) in zip(spans, spans[1:]):
        assert e <= s2
    if spans:
        assert r.prefix_end == spans[-1][1]
    for s, e in spans:
        assert text[s] == "{" and text[e - 1] == "}"
    for o in r.objects:
        x1, y1, x2, y2 = o.bins
        assert 0 <= x1 < x2 <= 999 and 0 <= y1 < y2 <= 999
        assert o.desc.strip()
        assert len(o.coord_spans) == 4
        for (s, e), k in zip(o.coord_spans, o.bins):
            assert text[s:e] == f"<|coord_{k}|>"
        # independent reference: the record is json once its 4 coordinate literals become ints
        s, e = o.span
        rec = text[s:e]
        for (cs, ce), k in sorted(zip(o.coord_spans, o.bins), reverse=True):
            rec = rec[: cs - s] + str(k) + rec[ce - s :]
        decoded = json.loads(rec)
        assert decoded == {"desc": o.desc, "bbox_2d": list(o.bins)}
        assert list(decoded) == (["desc", "bbox_2d"] if field_order == "desc_first" else ["bbox_2d", "desc"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_table(case: Case):
    r = parse_prediction(case.text, case.order)
    assert [(o.desc, o.bins, o.index) for o in r.objects] == case.objects
    assert r.drops == case.drops
    n = case.n_records if case.n_records is not None else len(case.objects) + sum(case.drops.values())
    assert r.n_records == n
    assert (r.failed, r.truncated, r.incomplete_tail, r.malformed_container) == (
        case.failed,
        case.truncated,
        case.tail,
        case.broken,
    )
    check_invariants(case.text, r, case.order)


def test_table_is_big_enough():
    assert len(CASES) >= 40
    covered = set()
    for c in CASES:
        covered |= set(c.drops)
    assert covered == set(DROP_REASONS)


def test_spans_and_prefix_end_by_hand():
    text = "ok " + A(CAT, R('"x"', C(1, 2)))
    r = parse_prediction(text)
    cat_start = text.index("{", 4)
    assert r.objects[0].span == (cat_start, cat_start + len(CAT))
    assert r.objects[0].coord_spans[0] == (text.index("<|coord_1|>"), text.index("<|coord_1|>") + 11)
    assert r.dropped[0].span == (cat_start + len(CAT) + 2, len(text) - 2)
    assert r.prefix_end == len(text) - 2
    assert parse_prediction(OPEN + "]}").prefix_end == len(OPEN)
    assert parse_prediction("junk " + OPEN).prefix_end == len("junk " + OPEN)


def test_geometry_first_fast_and_careful_paths_agree():
    objs = [("a b", (1, 2, 3, 4)), ('q"uote', (5, 6, 7, 8))]
    canonical = render_answer(objs, "geometry_first", ordering="random")
    spaced = canonical.replace(", ", " ,  ").replace('": ', '" :')
    a, b = parse_prediction(canonical, "geometry_first"), parse_prediction(spaced, "geometry_first")
    assert [(o.desc, o.bins) for o in a.objects] == [(o.desc, o.bins) for o in b.objects] == objs
    check_invariants(canonical, a, "geometry_first")
    check_invariants(spaced, b, "geometry_first")


def test_bad_field_order_raises():
    with pytest.raises(ValueError):
        parse_prediction(A(CAT), "bbox_first")


def test_parsed_object_is_a_plain_frozen_dataclass():
    o = parse_prediction(A(CAT)).objects[0]
    assert o == ParsedObject("cat", (1, 2, 3, 4), 0, (13, 13 + len(CAT)), o.coord_spans)
    with pytest.raises(AttributeError):
        o.desc = "dog"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# truncation at every character

THREE = [('a "quoted" {brace}', (10, 20, 30, 40)), ("猫 dog\\", (5, 50, 60, 70)), ("x", (0, 900, 999, 999))]


@pytest.mark.parametrize("field_order", ["desc_first", "geometry_first"])
def test_truncation_at_every_character(field_order):
    full = render_answer(THREE, field_order=field_order)
    whole = parse_prediction(full, field_order)
    assert [(o.desc, o.bins) for o in whole.objects] == sort_objects(THREE)
    assert not whole.truncated and not whole.drops
    spans = [o.span for o in whole.objects]
    for i in range(len(full)):
        cut = full[:i]
        r = parse_prediction(cut, field_order)
        check_invariants(cut, r, field_order)
        if i < len(OPEN):
            assert r.failed and not r.truncated
            continue
        assert not r.failed and r.truncated and not r.malformed_container
        complete = [k for k, (s, e) in enumerate(spans) if e <= i]
        assert r.objects == whole.objects[: len(complete)]  # a prefix of the full objects, spans included
        assert r.n_records == len(complete) and not r.drops
        assert r.incomplete_tail == int(any(s < i < e for s, e in spans))
        assert r.prefix_end == (spans[complete[-1]][1] if complete else len(OPEN))


# --------------------------------------------------------------------------------------------------
# fuzzing

GRAMMAR_ALPHABET = list('{}[]",: \n\\') + ["<|coord_", "|>", "desc", "bbox_2d", "1", "99", "1000", "三", "\\u", "ab"]
grammar_text = st.lists(st.sampled_from(GRAMMAR_ALPHABET), max_size=60).map("".join)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text):
    for order in ("desc_first", "geometry_first"):
        check_invariants(text, parse_prediction(text, order), order)


@FUZZ
@given(grammar_text, st.booleans())
def test_fuzz_grammar_pieces_inside_a_container(body, with_open):
    text = (OPEN if with_open else "") + body
    check_invariants(text, parse_prediction(text))


descs = st.text(min_size=1, max_size=12).filter(lambda s: s.strip())
boxes = st.tuples(
    st.integers(0, 998), st.integers(0, 998), st.integers(1, 999), st.integers(1, 999)
).filter(lambda b: b[2] > b[0] and b[3] > b[1])
object_lists = st.lists(st.tuples(descs, boxes), max_size=6)


@st.composite
def mutated_answers(draw):
    objs = draw(object_lists)
    order = draw(st.sampled_from(["desc_first", "geometry_first"]))
    text = render_answer(objs, field_order=order)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(st.sampled_from(list('{}[]",: \\<|>0123456789x三')))
        if op == "insert":
            text = text[:i] + ch + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + ch + text[i + 1 :]
    return text, order


@FUZZ
@given(mutated_answers())
def test_fuzz_mutated_answers(sample):
    text, order = sample
    check_invariants(text, parse_prediction(text, order), order)


@settings(max_examples=200, deadline=None)
@given(object_lists, st.sampled_from(["desc_first", "geometry_first"]), st.sampled_from(["sorted", "random"]))
def test_round_trip(objs, field_order, ordering):
    text = render_answer(objs, field_order=field_order, ordering=ordering)
    r = parse_prediction(text, field_order)
    expected = sort_objects(objs) if ordering == "sorted" else objs
    assert [(o.desc, o.bins) for o in r.objects] == [(d, tuple(b)) for d, b in expected]
    assert [o.index for o in r.objects] == list(range(len(objs)))
    assert (r.drops, r.failed, r.truncated, r.incomplete_tail, r.malformed_container) == ({}, False, False, 0, False)
    assert r.prefix_end == len(text) - 2 if objs else r.prefix_end == len(OPEN)
    check_invariants(text, r, field_order)


@pytest.mark.parametrize(
    "desc", ['say "hi"', "{a}[b]", "back\\slash", "猫の椅子", "tab\there", "é😀", "\u2028x", " lead", "\\\"}"]
)
def test_round_trip_tricky_descs(desc):
    for order in ("desc_first", "geometry_first"):
        r = parse_prediction(render_answer([(desc, (1, 2, 3, 4)), ("z", (1, 5, 2, 6))], field_order=order), order)
        assert [(o.desc, o.bins) for o in r.objects] == [(desc, (1, 2, 3, 4)), ("z", (1, 5, 2, 6))]


# --------------------------------------------------------------------------------------------------
# token level

COORD_ID0 = 1000  # coord-token id of bin k is 1000 + k
COORD_BIN_OF_ID = {COORD_ID0 + k: k for k in range(1000)}
EOT = 7


def tokens(*parts):
    """Pieces and ids: an int part is a bin (a real coord token), a str part a text token (id 100+i)."""
    ids, pieces = [], []
    for i, p in enumerate(parts):
        if isinstance(p, int):
            ids.append(COORD_ID0 + p)
            pieces.append(f"<|coord_{p}|>")
        elif p == "<EOT>":
            ids.append(EOT)
            pieces.append("<|im_end|>")
        else:
            ids.append(100 + i)
            pieces.append(p)
    return ids, pieces


def record_tokens(desc, b):
    return ['{"desc": "', desc, '", "bbox_2d": [', b[0], ", ", b[1], ", ", b[2], ", ", b[3], "]}"]


def test_rollout_maps_coord_tokens_and_cuts_at_eot():
    parts = ['{"objects": [', *record_tokens("cat", (1, 2, 3, 4)), ", ", *record_tokens("dog", (5, 6, 7, 8)), "]}"]
    ids, pieces = tokens(*parts, "<EOT>", "junk", 9)
    rp = parse_rollout(ids, pieces, COORD_BIN_OF_ID, {EOT})
    assert rp.stopped and rp.n_tokens == len(parts)
    assert rp.text == "".join(pieces[: len(parts)])
    assert [(o.desc, o.bins) for o in rp.result.objects] == [("cat", (1, 2, 3, 4)), ("dog", (5, 6, 7, 8))]
    # record 1 starts at token 1: its coords are tokens 4, 6, 8, 10; record 2 starts at token 13
    assert rp.coord_positions == [(4, 6, 8, 10), (16, 18, 20, 22)]
    for obj, pos in zip(rp.result.objects, rp.coord_positions):
        assert [COORD_BIN_OF_ID[ids[i]] for i in pos] == list(obj.bins)
    assert rp.prefix_tokens == 24 and rp.prefix_char_end == rp.result.prefix_end  # up to "...]}" of dog


def test_rollout_reclassifies_coords_spelled_with_text_tokens():
    spelled = ['{"desc": "dog", "bbox_2d": [', "<|coord_", "5", "|>", ", ", 6, ", ", 7, ", ", 8, "]}"]
    fake_id = ['{"desc": "cow", "bbox_2d": [', 1, ", ", 2, ", ", "<|coord_3|>", ", ", 4, "]}"]  # text id, literal piece
    bad = ['{"desc": "x", "bbox_2d": [85, ', 2, ", ", 3, ", ", 4, "]}"]
    parts = ['{"objects": [', *record_tokens("cat", (1, 2, 3, 4)), ", ", *spelled, ", ", *bad, ", ", *fake_id, "]}"]
    ids, pieces = tokens(*parts)
    rp = parse_rollout(ids, pieces, COORD_BIN_OF_ID, {EOT})
    assert not rp.stopped and rp.n_tokens == len(ids)
    assert [(o.desc, o.index) for o in rp.result.objects] == [("cat", 0)]
    assert rp.result.drops == {"non_coord_token": 3}
    assert [(d.reason, d.index) for d in rp.result.dropped] == [("non_coord_token", i) for i in (1, 2, 3)]
    assert rp.result.n_records == 4 and len(rp.coord_positions) == 1
    check_invariants(rp.text, rp.result)  # text-level properties still hold after re-classification


def test_rollout_coord_id_of_the_wrong_bin_is_not_a_coord():
    parts = ['{"objects": [', *record_tokens("cat", (1, 2, 3, 4)), "]}"]
    ids, pieces = tokens(*parts)
    ids[4] = COORD_ID0 + 9  # piece says <|coord_1|>, id says bin 9
    rp = parse_rollout(ids, pieces, COORD_BIN_OF_ID, [EOT])
    assert rp.result.objects == [] and rp.result.drops == {"non_coord_token": 1}


def test_rollout_prefix_of_truncated_rollout():
    # the 2nd record is cut; the token after the 1st record straddles its end ("]}, {" in one piece)
    parts = ['{"objects": [', '{"desc": "', "cat", '", "bbox_2d": [', 1, ", ", 2, ", ", 3, ", ", 4, "]}, {", '"desc": "d']
    ids, pieces = tokens(*parts)
    rp = parse_rollout(ids, pieces, COORD_BIN_OF_ID, {EOT})
    r = rp.result
    assert r.truncated and r.incomplete_tail == 1 and r.n_records == 1
    assert r.prefix_end == len("".join(pieces[:11])) + 2  # just after "]}" inside the straddling piece
    assert rp.prefix_tokens == 11 and rp.prefix_char_end == len("".join(pieces[:11]))
    assert rp.text[: rp.prefix_char_end] == "".join(pieces[: rp.prefix_tokens])
    assert rp.text[rp.prefix_char_end : r.prefix_end] == "]}"  # what Channel-B re-renders as text


def test_rollout_empty_failed_and_length_mismatch():
    ids, pieces = tokens('{"objects": [', "]}", "<EOT>")
    rp = parse_rollout(ids, pieces, COORD_BIN_OF_ID, {EOT})
    assert rp.result.objects == [] and not rp.result.failed and rp.prefix_tokens == 1
    ids, pieces = tokens("I", " see", "<EOT>")
    rp = parse_rollout(ids, pieces, COORD_BIN_OF_ID, {EOT})
    assert rp.result.failed and rp.prefix_tokens == 0 and rp.prefix_char_end == 0 and rp.n_tokens == 2
    rp = parse_rollout([], [], COORD_BIN_OF_ID, {EOT})
    assert rp.result.failed and rp.n_tokens == 0 and not rp.stopped
    with pytest.raises(ValueError):
        parse_rollout([1, 2], ["a"], COORD_BIN_OF_ID, {EOT})


def test_no_transformers_import():
    import vlmdet.parse as mod

    src = open(mod.__file__, encoding="utf-8").read()
    assert not re.search(r"^\s*(import|from)\s+(transformers|torch)\b", src, re.M)
