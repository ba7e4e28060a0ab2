"""report/dumps.py: which spans of a raw answer are highlighted, token-aware wrapping, the verdict line."""

from __future__ import annotations

import pytest

from vlmdet.report.dumps import Mark, leak_kind, marks, pick_examples, segments, text_leaks, verdict, wrap

C = "<|coord_{}|>".format
REC = '{"desc": "red circle", "bbox_2d": [' + ", ".join(C(i) for i in (1, 2, 30, 40)) + "]}"


def _sample(text, drops=(), flags=None, **kw):
    return {"raw_text": text, "drops": list(drops), "flags": flags or {}, **kw}


@pytest.mark.parametrize("text,drops,expected", [
    ("abcdef", [{"span": [1, 3], "reason": "r"}], [("a", None), ("bc", "r"), ("def", None)]),
    ("abcdef", [{"span": [4, 6], "reason": "s"}, {"span": [0, 2], "reason": "r"}],
     [("ab", "r"), ("cd", None), ("ef", "s")]),
    ("abc", [{"span": [2, 9], "reason": "r"}, {"span": "x"}], [("abc", None)]),     # out of range / malformed
    ("abcdef", [{"span": [0, 4], "reason": "r"}, {"span": [2, 5], "reason": "s"}], [("abcd", "r"), ("ef", None)]),
])
def test_drop_segments(text, drops, expected):
    got = segments(text, [m for m in marks(_sample(text, drops, raw_text_chars=len(text) + 1)) if m.kind == "drop"])
    assert [(piece, outer.note if outer else None) for piece, outer, _ in got] == expected


def test_pick_examples_failures_first_then_clean():
    bad = [{"drops": [{"reason": "x"}], "flags": {}, "id": i} for i in range(3)]
    good = [{"drops": [], "flags": {"failed": False}, "id": 10 + i} for i in range(2)]
    failed = {"drops": [], "flags": {"failed": True}, "id": 20}
    assert [s["id"] for s in pick_examples(bad + good, 2)] == [0, 10]
    assert [s["id"] for s in pick_examples(bad + good, 3)] == [0, 1, 10]
    assert [s["id"] for s in pick_examples(bad, 2)] == [0, 1]
    assert [s["id"] for s in pick_examples(good + [failed], 2)] == [20, 10]
    assert pick_examples(good, 0) == []


@pytest.mark.parametrize("element,kind", [
    ("85", "digit"), (" 12.5 ", "digit"), ("red", "word"), ("red triangle", "word"), ("", "structure"),
    ('"', "structure"), ('"85"', "other"), ("<|im_end|>", "other"), (C(1000), "other"),
])
def test_leak_kind(element, kind):
    assert leak_kind(element) == kind


@pytest.mark.parametrize("text,expected", [
    # clean record: nothing leaks
    ('{"objects": [' + REC + "]}", []),
    # a digit and a word in the slots: the spans of exactly those elements (spaces excluded)
    ('{"objects": [{"desc": "a", "bbox_2d": [85, ' + C(3) + ", red, " + C(9) + "]}]}",
     [(39, 41, "digit"), (56, 59, "word")]),
    # out-of-range, a quoted string, an empty trailing element (marked on its `]`)
    ('{"bbox_2d": [' + C(1000) + ', "7", ]}', [(13, 27, "other"), (29, 32, "other"), (34, 35, "structure")]),
    # an empty array has no slot; an element cut off by the end of the text is not judged
    ('{"bbox_2d": []}, {"bbox_2d": [' + C(1) + ", 8", []),
])
def test_text_leaks(text, expected):
    got = [(m.start, m.end, m.note) for m in text_leaks(text)]
    assert got == expected
    for a, b, kind in got:
        assert kind == "structure" or leak_kind(text[a:b]) == kind


def test_marks_incomplete_tail_drop_and_leak():
    bad = '{"desc": "x", "bbox_2d": [85, ' + ", ".join(C(i) for i in (2, 3, 4)) + "]}"
    text = '{"objects": [' + REC + ", " + bad + ', {"desc": "blue sq'
    a = text.index(bad)
    found = marks(_sample(text, [{"reason": "wrong_arity", "span": [a, a + len(bad)]}],
                          {"truncated": True, "incomplete_tail": True}))
    end_bad = a + len(bad)
    assert [(m.start, m.end, m.kind) for m in found] == [
        (a, end_bad, "drop"), (a + bad.index("85"), a + bad.index("85") + 2, "leak"), (end_bad, len(text), "tail")]
    assert found[-1].note == "incomplete record (cut off)"
    # every character of the text is in exactly one segment, in order
    assert "".join(p for p, _, _ in segments(text, found)) == text


@pytest.mark.parametrize("text,flags,tail", [
    ("no json here", {"failed": True}, (0, 12, 'no {"objects": [ container')),
    ('{"objects": [' + REC, {"truncated": True}, None),  # nothing after the last record: no tail to show
    ('{"objects": [' + REC + ", {", {"truncated": True}, (13 + len(REC), 13 + len(REC) + 3, "incomplete record (cut off)")),
    ('{"objects": [' + REC + " x]}", {"malformed_container": True},
     (13 + len(REC), 13 + len(REC) + 4, "malformed container: parsing stopped here")),
    ('{"objects": [' + REC + "]}", {}, None),
])
def test_tail_marks(text, flags, tail):
    got = [(m.start, m.end, m.note) for m in marks(_sample(text, flags=flags)) if m.kind == "tail"]
    assert got == ([tail] if tail else [])


def test_clipped_text_gets_no_tail_and_dump_leak_list_wins():
    text = '{"objects": [{"bbox_2d": [85...<truncated>'
    assert [m.kind for m in marks(_sample(text, flags={"truncated": True}, raw_text_chars=500))] == []
    text = '{"objects": [{"desc": "a", "bbox_2d": [85, 1, 2, 3]}]}'
    assert len([m for m in marks(_sample(text)) if m.kind == "leak"]) == 4  # found in the text
    assert marks(_sample(text, leaked_slots=[])) == []  # the dump's own (token-level) list wins, even empty


@pytest.mark.parametrize("width", [12, 20, 40, 100])
def test_wrap_never_splits_a_token(width):
    text = '{"objects": [' + REC + ", " + REC + "]}\n" + "x" * 30
    lines = wrap(text, width)
    for line in lines:
        assert len(line) <= width or line.count("<|") == 1 and line.startswith("<|") or line == "x" * 30
        assert line.count("<|") == line.count("|>")  # whole tokens only
    assert "".join(lines).replace(" ", "") == text.replace(" ", "").replace("\n", "")


@pytest.mark.parametrize("sample,expected", [
    (dict(gt=[{"desc": "a"}], objects=[{"desc": "a"}], matches=[{"pred": 0, "gt": 0}]),
     "parse: clean · detection: matched 1 of 1 GT, 0 false positives, classes right"),
    (dict(gt=[{"desc": "a"}, {"desc": "b"}, {"desc": "c"}], objects=[{"desc": "a"}, {"desc": "a"}],
          matches=[{"pred": 1, "gt": 1}], drops=[{"reason": "malformed"}, {"reason": "malformed"}],
          flags={"truncated": True}),
     "parse: 2 drops (malformed ×2), truncated · detection: matched 1 of 3 GT, 1 false positive, 1 wrong class"),
    (dict(gt=[{"desc": "a"}], objects=[], matches=[], flags={"hit_max_new_tokens": True}),
     "parse: hit max_new_tokens · detection: matched 0 of 1 GT, 0 false positives, no class to check"),
])
def test_verdict(sample, expected):
    assert verdict({"raw_text": "", **sample}, []) == expected


def test_verdict_counts_leaks_and_tail():
    m = [Mark(0, 2, "leak", "digit"), Mark(3, 4, "leak", "word"), Mark(5, 9, "tail", "container not closed")]
    assert verdict({"flags": {"truncated": True}}, m).startswith("parse: container not closed, 2 leaked coord slots ·")


def test_dump_leaked_slots_are_used_as_given():
    """The dump's own token-level `leaked_slots` (offset + token text) win over the text search, including an
    end-of-turn where a coordinate was due (a zero-width mark at the end of the text)."""
    text = '{"objects": [{"desc": "a", "bbox_2d": [85, <|coord_3|>, red, '
    sample = _sample(text, flags={"truncated": True, "incomplete_tail": True}, leaked_slots=[
        {"offset": 39, "token": 9, "kind": "digit", "text": "8", "mass": 0.05},  # the token is "8" of "85"
        {"offset": 56, "token": 14, "kind": "word", "text": "red"},
        {"offset": len(text), "token": 16, "kind": "end_of_turn", "text": ""},
        {"offset": 999, "kind": "digit", "text": "1"}, {"offset": True, "kind": "digit"}, "junk"])
    found = marks(sample)
    assert [(m.start, m.end, m.kind, m.note) for m in found] == [
        (13, len(text), "tail", "incomplete record (cut off)"), (39, 40, "leak", "digit"), (56, 59, "leak", "word"),
        (len(text), len(text), "leak", "end_of_turn")]
    assert "".join(p for p, _, _ in segments(text, found)) == text
    assert verdict(sample, found).startswith("parse: incomplete record (cut off), 3 leaked coord slots ·")
    assert pick_examples([{"drops": [], "flags": {}, "id": 1}, {"drops": [], "flags": {}, "leaked_slots": [{}], "id": 2}], 1) \
        == [{"drops": [], "flags": {}, "leaked_slots": [{}], "id": 2}]


def test_renderers_show_an_end_of_turn_slot(tmp_path):
    from vlmdet.report.html import _answer
    from vlmdet.report.markdown import _marked

    text = '{"objects": [{"desc": "a", "bbox_2d": ['
    m = marks(_sample(text, flags={"truncated": True}, leaked_slots=[{"offset": len(text), "kind": "end_of_turn", "text": ""}]))
    assert _answer(text, m).endswith('<span class="leak" title="leaked coordinate slot: end_of_turn">'
                                     "[end_of_turn in a coordinate slot]</span>")
    assert _marked(text, m).endswith("⟫‹[end_of_turn in a coordinate slot]›")
