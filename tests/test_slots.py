"""slots.py: coordinate-slot positions and leak kinds, against hand-marked strings."""

import pytest

from vlmdet.parse import parse_prediction
from vlmdet.slots import LEAK_KINDS, char_kind, leak_metrics, rollout_slots, text_slots, value_offsets

C = "<|coord_{}|>".format

# (name, text, the characters that start each value position (marked by hand), pending at end)
OFFSET_TABLE = [
    ("canonical box", '{"bbox_2d": [' + ", ".join(C(k) for k in (1, 2, 3, 4)) + "]}", ["<"] * 4, False),
    ("leaks of every kind", '"bbox_2d": [85, red, "x", <|coord_9|>]', ["8", "r", '"', "<"], False),
    ("whitespace around values", '"bbox_2d" :\n[ 1 ,\t2,3 ]', ["1", "2", "3"], False),
    ("empty array", '"bbox_2d": []', ["]"], False),
    ("nested array is one value", '"bbox_2d": [[1, 2], 3]', ["[", "3"], False),
    ("string with a comma and bracket is one value", '"bbox_2d": ["a, ]b", 3]', ['"', "3"], False),
    ("ends right after the bracket", '{"desc": "a", "bbox_2d": [', [], True),
    ("ends right after a separator", '"bbox_2d": [<|coord_1|>, ', ["<"], True),
    ("ends inside a value", '"bbox_2d": [<|coord_1|>, <|co', ["<", "<"], False),
    ("other keys are not slots", '"bbox_3d": [1, 2], "desc": "bbox_2d", "x": [5]', [], False),
    ("two records", '[{"bbox_2d": [1]}, {"bbox_2d": [a, b]}]', ["1", "a", "b"], False),
    ("record closed before the array", '{"bbox_2d": [1, 2}, {"bbox_2d": [3]}', ["1", "2", "3"], False),
]


@pytest.mark.parametrize("name,text,starts,pending", OFFSET_TABLE, ids=[r[0] for r in OFFSET_TABLE])
def test_value_offsets(name, text, starts, pending):
    offsets, pend = value_offsets(text)
    assert [text[o] for o in offsets] == starts
    assert pend is pending


def test_value_offsets_in_a_window():
    text = '"bbox_2d": [1] "bbox_2d": [2] "bbox_2d": [3]'
    a = text.index("[2]")
    assert value_offsets(text, a - 11, a + 3) == ([a + 1], False)


KIND_TABLE = [("8", "digit"), ("三", "digit"), ("r", "word"), ("é", "word"), ('"', "structure"), ("]", "structure"),
              ("{", "structure"), (",", "structure"), (":", "structure"), ("<", "other"), ("-", "other")]


@pytest.mark.parametrize("c,kind", KIND_TABLE)
def test_char_kind(c, kind):
    assert char_kind(c) == kind


COORD_ID = {C(k): 1000 + k for k in range(1000)}
EOT = 7


def tokenize(pieces):
    """Fake token ids: coordinate literals get their coordinate id, the end-of-turn EOT, others 1."""
    return [COORD_ID.get(p, EOT if p == "<|im_end|>" else 1) for p in pieces]


def test_rollout_slots_by_hand():
    pieces = ['{"objects": [{"desc": "', "cat", '", "bbox_2d": [', "8", "5", ", ", C(9), ",", " red", ", ",
              "<|im_end|>"]
    ids = tokenize(pieces)
    slots = rollout_slots(ids, pieces, 10, True, set(COORD_ID.values()))
    # `85` starts at token 3, <|coord_9|> is token 6, ` red` (leading space) is token 8, then the end-of-turn
    assert [(s.token, s.kind) for s in slots] == [(3, "digit"), (6, "coord"), (8, "word"), (10, "end_of_turn")]
    text = "".join(pieces[:10])
    assert [s.offset for s in slots] == [text.index("85"), text.index("<|"), text.index("red"), len(text)]
    assert [s.leaked for s in slots] == [True, False, True, True]


def test_rollout_cut_by_the_budget_has_no_token_at_the_open_slot():
    pieces = ['{"objects": [{"desc": "cat", "bbox_2d": [', C(1), ", "]
    slots = rollout_slots(tokenize(pieces), pieces, 3, False, set(COORD_ID.values()))
    assert [(s.token, s.kind) for s in slots] == [(1, "coord")]


def test_text_spelled_coordinate_is_a_leak():
    pieces = ['"bbox_2d": [', "<", "|", "coord", "_", "5", "|>", "]"]
    slots = rollout_slots(tokenize(pieces), pieces, len(pieces), False, set(COORD_ID.values()))
    assert [(s.token, s.kind) for s in slots] == [(1, "other")]


def rec(box, desc='"cat"'):
    return '{"desc": ' + desc + ', "bbox_2d": ' + box + "}"


def A(*records):
    return '{"objects": [' + ", ".join(records) + "]}"


# (name, text, kinds of the slots of the lexically complete records, in order)
TEXT_TABLE = [
    ("valid", A(rec(f"[{C(1)}, {C(2)}, {C(3)}, {C(4)}]")), ["coord"] * 4),
    ("digit and word", A(rec(f"[85, {C(2)}, red, {C(4)}]")), ["digit", "coord", "word", "coord"]),
    ("words with spaces are one slot", A(rec(f"[{C(1)}, red triangle, {C(3)}, {C(4)}]")),
     ["coord", "word", "coord", "coord"]),
    ("spaced token", A(rec(f"[{C(1)}, <| coord_2 |>, {C(3)}, {C(4)}]")), ["coord", "other", "coord", "coord"]),
    ("quoted token, nested array", A(rec(f'["{C(1)}", [{C(2)}], {C(3)}, {C(4)}]')),
     ["structure", "structure", "coord", "coord"]),
    ("out of range and zero-padded", A(rec(f"[<|coord_1000|>, <|coord_07|>, {C(3)}, {C(4)}]")),
     ["other", "other", "coord", "coord"]),
    ("degenerate and wrong arity are still coordinates", A(rec(f"[{C(5)}, {C(5)}, {C(5)}, {C(5)}]"), rec(f"[{C(1)}]")),
     ["coord"] * 5),
    ("empty array has no slot", A(rec("[]")), []),
    ("a value that is not an array has no slot", A(rec(C(1))), []),
    ("malformed record is not read", A(rec(f"[85, {C(2)}, {C(3)}, {C(4)},]"), rec(f"[{C(1)}, 7, {C(3)}, {C(4)}]")),
     ["coord", "digit", "coord", "coord"]),
    ("dropped for another key still counts", A(rec(f"[85, {C(2)}, {C(3)}, {C(4)}]", '"cat", "score": 1')),
     ["digit", "coord", "coord", "coord"]),
    ("truncated tail is not read", A(rec(f"[{C(1)}, {C(2)}, {C(3)}, {C(4)}]"))[:-2] + ', {"desc": "d", "bbox_2d": [85, ',
     ["coord"] * 4),
    ("failed", "85, red", []),
]


@pytest.mark.parametrize("name,text,kinds", TEXT_TABLE, ids=[r[0] for r in TEXT_TABLE])
def test_text_slots(name, text, kinds):
    slots = text_slots(text, parse_prediction(text))
    assert [s.kind for s in slots] == kinds
    assert [s.offset for s in slots] == sorted(s.offset for s in slots)


def test_leak_metrics_by_hand():
    m = leak_metrics(["coord", "digit", "coord", "word", "end_of_turn", "digit", "coord", "coord"])
    assert m["coord_slots"] == 8 and m["coord_slot_leak_rate"] == pytest.approx(4 / 8)
    assert {k: m[f"leak/{k}"] for k in LEAK_KINDS} == {"digit": 2, "word": 1, "structure": 0, "end_of_turn": 1,
                                                       "other": 0}
    assert leak_metrics([]) == {"coord_slots": 0.0, "coord_slot_leak_rate": 0.0, **{f"leak/{k}": 0.0 for k in LEAK_KINDS}}
