"""Exact CoordJSON strings rendered by format.py (see docs/FORMAT.md)."""

from types import SimpleNamespace

import pytest

from vlmdet.format import (
    ANSWER_PREFIX,
    ANSWER_SUFFIX,
    EMPTY_ANSWER,
    render_answer,
    render_record,
    render_records,
    sort_objects,
)

BOX = "[<|coord_12|>, <|coord_34|>, <|coord_256|>, <|coord_480|>]"

RECORD_CASES = [
    ("red circle", "desc_first", '{"desc": "red circle", "bbox_2d": ' + BOX + "}"),
    ("red circle", "geometry_first", '{"bbox_2d": ' + BOX + ', "desc": "red circle"}'),
    ('say "hi"', "desc_first", '{"desc": "say \\"hi\\"", "bbox_2d": ' + BOX + "}"),
    ("back\\slash", "desc_first", '{"desc": "back\\\\slash", "bbox_2d": ' + BOX + "}"),
    ("猫 and café", "desc_first", '{"desc": "猫 and café", "bbox_2d": ' + BOX + "}"),  # unicode kept raw
    ("two\nlines\t", "geometry_first", '{"bbox_2d": ' + BOX + ', "desc": "two\\nlines\\t"}'),
    ("{braces} [x]", "desc_first", '{"desc": "{braces} [x]", "bbox_2d": ' + BOX + "}"),
]


@pytest.mark.parametrize("desc,order,expected", RECORD_CASES)
def test_render_record(desc, order, expected):
    assert render_record(desc, (12, 34, 256, 480), order) == expected


def test_render_answer_sorts_by_y1_then_x1_stably():
    objs = [
        ("c", (50, 20, 60, 30)),
        ("a", (90, 10, 95, 15)),
        ("b", (10, 20, 20, 30)),
        ("d", (50, 20, 70, 40)),  # same (y1, x1) as "c": keeps its place after "c"
    ]
    text = render_answer(objs)
    assert [d for d, _ in sort_objects(objs)] == ["a", "b", "c", "d"]
    assert text == (
        '{"objects": ['
        '{"desc": "a", "bbox_2d": [<|coord_90|>, <|coord_10|>, <|coord_95|>, <|coord_15|>]}, '
        '{"desc": "b", "bbox_2d": [<|coord_10|>, <|coord_20|>, <|coord_20|>, <|coord_30|>]}, '
        '{"desc": "c", "bbox_2d": [<|coord_50|>, <|coord_20|>, <|coord_60|>, <|coord_30|>]}, '
        '{"desc": "d", "bbox_2d": [<|coord_50|>, <|coord_20|>, <|coord_70|>, <|coord_40|>]}'
        "]}"
    )


def test_random_ordering_keeps_given_order_and_objects_with_attributes():
    objs = [SimpleNamespace(desc="low", bins=(1, 900, 2, 901)), SimpleNamespace(desc="high", bins=(1, 1, 2, 2))]
    text = render_answer(objs, field_order="geometry_first", ordering="random")
    assert text == (
        '{"objects": [{"bbox_2d": [<|coord_1|>, <|coord_900|>, <|coord_2|>, <|coord_901|>], "desc": "low"}, '
        '{"bbox_2d": [<|coord_1|>, <|coord_1|>, <|coord_2|>, <|coord_2|>], "desc": "high"}]}'
    )
    assert render_answer(objs).index('"high"') < render_answer(objs).index('"low"')  # sorted puts it first


def test_empty_and_records():
    assert render_answer([]) == EMPTY_ANSWER == '{"objects": []}' == ANSWER_PREFIX + ANSWER_SUFFIX
    assert render_records([]) == ""
    two = render_records([("a", (1, 2, 3, 4)), ("b", (5, 6, 7, 8))])
    assert two == (
        '{"desc": "a", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>]}, '
        '{"desc": "b", "bbox_2d": [<|coord_5|>, <|coord_6|>, <|coord_7|>, <|coord_8|>]}'
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: render_record("a", (1, 2, 3, 4), "desc_last"),
        lambda: render_answer([("a", (1, 2, 3, 4))], field_order="bbox_first"),
        lambda: render_answer([], ordering="shuffled"),
    ],
)
def test_bad_options_raise(call):
    with pytest.raises(ValueError):
        call()
