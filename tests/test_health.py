"""evaluate/health.py: parse-health aggregation against hand counts."""

import pytest

from vlmdet.evaluate.health import count_duplicates, parse_health
from vlmdet.parse import DROP_REASONS, DroppedRecord, ParsedObject, ParseResult, parse_prediction


def obj(desc, bins, index=0):
    return ParsedObject(desc, tuple(bins), index, (0, 1), ((0, 1),) * 4)


def result(objects=(), drops=None, failed=False, truncated=False, tail=0, malformed=False):
    drops = drops or {}
    dropped = [DroppedRecord(r, i, (0, 1)) for i, (r, c) in enumerate(drops.items()) for _ in range(c)]
    return ParseResult(list(objects), dict(drops), dropped, failed, truncated, tail, malformed, 0,
                       len(objects) + len(dropped))


A = obj("cat", (10, 10, 100, 100))


def test_empty_input():
    m = parse_health([])
    assert m["samples"] == 0.0 and m["pred_objects"] == 0.0
    assert all(m[f"drop/{r}"] == 0.0 for r in DROP_REASONS)
    assert m["sample_valid_pred_rate"] == 0.0 and m["sample_clean_rate"] == 0.0 and m["duplicate_rate"] == 0.0


def test_every_reason_is_reported():
    m = parse_health([result([A])])
    assert {k for k in m if k.startswith("drop/")} == {f"drop/{r}" for r in DROP_REASONS}
    assert all(isinstance(v, float) for v in m.values())


def test_rates_by_hand():
    results = [
        result([A]),                                                   # clean
        result([], {}),                                                # clean, empty answer
        result([A], {"non_coord_token": 2, "unexpected_keys": 1}),     # drops
        result([A], truncated=True, tail=1),                           # truncated
        result([], failed=True),                                       # failed
        result([A, obj("dog", (0, 0, 5, 5), 1)], malformed=True),      # malformed container
    ]
    m = parse_health(results)
    assert m["samples"] == 6.0
    assert m["pred_objects"] == 5.0
    assert m["parse_dropped_invalid"] == 3.0
    assert m["drop/non_coord_token"] == 2.0 and m["drop/unexpected_keys"] == 1.0 and m["drop/malformed"] == 0.0
    assert m["parse_incomplete_tail"] == 1.0
    assert m["parse_truncated_rate"] == pytest.approx(1 / 6)
    assert m["parse_failed_rate"] == pytest.approx(1 / 6)
    assert m["malformed_container_rate"] == pytest.approx(1 / 6)
    assert m["sample_valid_pred_rate"] == pytest.approx(4 / 6)  # >= 1 valid object: 1, 3, 4, 6
    assert m["sample_clean_rate"] == pytest.approx(2 / 6)  # 1 and the empty answer 2
    assert m["empty_pred_rate"] == pytest.approx(2 / 6)
    assert m["duplicate_rate"] == 0.0


DUP_TABLE = [
    ("no objects", [], 0),
    ("one object", [A], 0),
    ("exact copy", [A, A], 1),
    ("three copies", [A, A, A], 2),
    ("same box other desc", [A, obj("dog", A.bins)], 0),
    # IoU of (10,10,100,100) and (10,10,100,101) = 8100/8190 = 0.989 -> duplicate
    ("near copy", [A, obj("cat", (10, 10, 100, 101))], 1),
    # IoU 8100/8910 = 0.909 < 0.95 -> not a duplicate
    ("shifted copy", [A, obj("cat", (10, 10, 100, 109))], 0),
    ("copy separated by another", [A, obj("dog", (0, 0, 5, 5)), A], 1),
]


@pytest.mark.parametrize("name,objects,expected", DUP_TABLE, ids=[r[0] for r in DUP_TABLE])
def test_count_duplicates(name, objects, expected):
    assert count_duplicates(objects) == expected


def test_duplicate_rate_is_per_valid_object_within_samples():
    # the same object in two different samples is not a duplicate
    m = parse_health([result([A, A, A]), result([A])])
    assert m["duplicate_rate"] == pytest.approx(2 / 4)


def test_with_the_real_parser():
    rec = '{"desc": "cat", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_30|>, <|coord_40|>]}'
    texts = [
        '{"objects": [' + rec + ", " + rec + "]}",                       # clean, one duplicate
        '{"objects": [' + rec.replace("bbox_2d", "bbox_3d") + "]}",       # unexpected_keys
        '{"objects": [' + rec.replace("<|coord_1|>", "85") + "]}",        # non_coord_token
        '{"objects": [' + rec + ', {"desc": "dog", "bbox_2d": [<|coord_5|>',  # truncated
        "",                                                               # failed
    ]
    m = parse_health([parse_prediction(t) for t in texts])
    assert m["pred_objects"] == 3.0
    assert m["drop/unexpected_keys"] == 1.0 and m["drop/non_coord_token"] == 1.0
    assert m["parse_dropped_invalid"] == 2.0
    assert m["parse_truncated_rate"] == pytest.approx(1 / 5)
    assert m["parse_failed_rate"] == pytest.approx(1 / 5)
    assert m["sample_valid_pred_rate"] == pytest.approx(2 / 5)  # the clean one and the truncated one
    assert m["sample_clean_rate"] == pytest.approx(1 / 5)
    assert m["empty_pred_rate"] == pytest.approx(3 / 5)
    assert m["duplicate_rate"] == pytest.approx(1 / 3)


def test_always_empty_answers_are_clean_but_never_valid():
    m = parse_health([parse_prediction('{"objects": []}') for _ in range(4)])
    assert m["sample_valid_pred_rate"] == 0.0
    assert m["sample_clean_rate"] == 1.0


def test_one_drop_does_not_make_a_sample_invalid():
    rec = '{"desc": "cat", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_30|>, <|coord_40|>]}'
    text = '{"objects": [' + ", ".join([rec] * 10 + [rec.replace("<|coord_2|>", "85")]) + "]}"
    m = parse_health([parse_prediction(text)])
    assert m["pred_objects"] == 10.0 and m["parse_dropped_invalid"] == 1.0
    assert m["sample_valid_pred_rate"] == 1.0 and m["sample_clean_rate"] == 0.0
