"""answer_format: the digit formats (qwen3, qwen25) under the strict rules, pixel mapping, dispatch."""

import pytest

from vlmdet.answer_format import ANSWER_FORMATS, DigitObject, get_format, parse_digits
from vlmdet.parse import parse_prediction

CAR = '{"bbox_2d": [100, 200, 300, 400], "label": "car"}'
DOG = '{"label": "dog", "bbox_2d": [0, 0, 1000, 1000]}'


# (text, fmt, input_size) -> (valid descs, drops, failed, truncated, incomplete_tail, malformed_container, n_records)
CASES = [
    # containers: a bare list, a ```json fence, the {"objects": [...]} container, junk around
    ("[" + CAR + ", " + DOG + "]", "qwen3", None, (["car", "dog"], {}, False, False, 0, False, 2)),
    ("```json\n[\n  " + CAR + ",\n  " + DOG + "\n]\n```", "qwen3", None, (["car", "dog"], {}, False, False, 0, False, 2)),
    ('{"objects": [' + CAR + "]}", "qwen3", None, (["car"], {}, False, False, 0, False, 1)),
    ("Sure! Here they are: [" + CAR + "] hope it helps", "qwen3", None, (["car"], {}, False, False, 0, False, 1)),
    ("[]", "qwen3", None, ([], {}, False, False, 0, False, 0)),
    ("no boxes here", "qwen3", None, ([], {}, True, False, 0, False, 0)),
    # truncation: container never closed, a record cut mid-way, {"objects" container missing its }
    ("[" + CAR + ", ", "qwen3", None, (["car"], {}, False, True, 0, False, 1)),
    ("[" + CAR + ', {"bbox_2d": [1, 2', "qwen3", None, (["car"], {}, False, True, 1, False, 1)),
    ('{"objects": [' + CAR + "]", "qwen3", None, (["car"], {}, False, True, 0, False, 1)),
    # broken separator: stops, keeps what was read
    ("[" + CAR + " " + DOG + "]", "qwen3", None, (["car"], {}, False, False, 0, True, 1)),
    # key rules: desc is a synonym of label; both, extra or repeated keys -> unexpected_keys
    ('[{"bbox_2d": [1, 2, 3, 4], "desc": "cat"}]', "qwen3", None, (["cat"], {}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [1, 2, 3, 4], "desc": "cat", "label": "cat"}]', "qwen3", None,
     ([], {"unexpected_keys": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat", "score": 0.9}]', "qwen3", None,
     ([], {"unexpected_keys": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [1, 2, 3, 4]}]', "qwen3", None, ([], {"missing_desc": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": "  "}]', "qwen3", None, ([], {"missing_desc": 1}, False, False, 0, False, 1)),
    ('[{"label": "cat"}]', "qwen3", None, ([], {"missing_geometry": 1}, False, False, 0, False, 1)),
    # geometry: a coordinate token is the leak; quoted numbers and words are not numbers
    ('[{"bbox_2d": [<|coord_1|>, 2, 3, 4], "label": "cat"}]', "qwen3", None,
     ([], {"non_coord_token": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": ["1", 2, 3, 4], "label": "cat"}]', "qwen3", None, ([], {"non_coord_token": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [1, 2, 1001, 4], "label": "cat"}]', "qwen3", None,
     ([], {"coord_out_of_range": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [-1, 2, 3, 4], "label": "cat"}]', "qwen3", None, ([], {"coord_out_of_range": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [1, 2, 3], "label": "cat"}]', "qwen3", None, ([], {"wrong_arity": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [5, 2, 5, 4], "label": "cat"}]', "qwen3", None, ([], {"degenerate_box": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat",}]', "qwen3", None, ([], {"malformed": 1}, False, False, 0, False, 1)),
    # qwen25: pixels bounded by the size the model saw (W_in x H_in); without a size only >= 0
    ('[{"bbox_2d": [10, 20, 640, 480], "label": "cat"}]', "qwen25", (640, 480), (["cat"], {}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [10, 20, 641, 480], "label": "cat"}]', "qwen25", (640, 480),
     ([], {"coord_out_of_range": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [10, 20, 30, 481], "label": "cat"}]', "qwen25", (640, 480),
     ([], {"coord_out_of_range": 1}, False, False, 0, False, 1)),
    ('[{"bbox_2d": [10, 20, 5000, 481], "label": "cat"}]', "qwen25", None, (["cat"], {}, False, False, 0, False, 1)),
]


@pytest.mark.parametrize("text,fmt,size,expected", CASES)
def test_parse_digits_rules(text, fmt, size, expected):
    r = parse_digits(text, fmt, size)
    got = ([o.desc for o in r.objects], r.drops, r.failed, r.truncated, r.incomplete_tail, r.malformed_container,
           r.n_records)
    assert got == expected
    assert len(r.dropped) == sum(r.drops.values())


def test_valid_object_fields_and_dispatch():
    text = "[" + CAR + ", " + DOG + "]"
    r = get_format("qwen3").parse(text)
    assert r.objects[0] == DigitObject("car", (100.0, 200.0, 300.0, 400.0), 0, (1, 1 + len(CAR)))
    assert text[slice(*r.objects[1].span)] == DOG
    assert r.prefix_end == len(text) - 1
    # coordjson dispatches to the CoordJSON parser unchanged
    answer = '{"objects": [{"desc": "a", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>]}]}'
    assert get_format("coordjson").parse(answer).objects == parse_prediction(answer).objects
    assert set(ANSWER_FORMATS) == {"coordjson", "qwen3", "qwen25"}
    with pytest.raises(ValueError, match="qwen3"):
        get_format("qwen4")


def test_to_pixels_by_hand():
    obj = DigitObject("car", (100.0, 250.0, 500.0, 1000.0), 0, (0, 1))
    # qwen3: v / 1000 * size
    assert get_format("qwen3").to_pixels(obj, 640, 480) == pytest.approx((64.0, 120.0, 320.0, 480.0))
    # qwen25: pixels of the W_in x H_in image the model saw, scaled to the evaluated image
    assert get_format("qwen25").to_pixels(obj, 320, 240, (640, 480)) == pytest.approx((50.0, 125.0, 250.0, 500.0))
    assert get_format("qwen25").to_pixels(obj, 640, 480) == pytest.approx((100.0, 250.0, 500.0, 1000.0))
    # coordjson: bin k -> k / 999 * (W - 1)
    bins = parse_prediction('{"objects": [{"desc": "a", "bbox_2d": [<|coord_0|>, <|coord_0|>, <|coord_999|>, '
                            '<|coord_999|>]}]}').objects[0]
    assert get_format("coordjson").to_pixels(bins, 101, 11) == pytest.approx((0.0, 0.0, 100.0, 10.0))
