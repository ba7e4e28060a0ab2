"""Answer formats: how a model writes its boxes, parsed by one set of strict rules.

`ANSWER_FORMATS` maps a format name to its `AnswerFormat` (a plain dict; `get_format(name)` looks one
up). Every format parses a raw answer into a `parse.ParseResult` (same fields, same `DROP_REASONS`, the
same container / truncation / separator rules as `parse.parse_prediction`) and maps a valid object's
geometry to pixels of the evaluated image.

| name | what the model writes | geometry -> pixels of a W x H image | source |
|---|---|---|---|
| `coordjson` (default) | `{"objects": [{"desc": "car", "bbox_2d": [<|coord_12|>, ...]}]}`, 4 coordinate tokens, bins 0..999 | `coords.bins_to_pixel_box` (bin k -> k / 999 * (W - 1)) | this project (`format.py`) |
| `qwen3` | `[{"bbox_2d": [x1, y1, x2, y2], "label": "car"}, ...]`: digits on a 0..1000 scale relative to the image | v / 1000 * W (x), v / 1000 * H (y) | Qwen3-VL's grounding convention: the "2D grounding" cookbook of the QwenLM/Qwen3-VL repository (relative 0-1000 coordinates) |
| `qwen25` | the same text with absolute pixels of the image the model saw (after the processor's resize) | v * W / W_in (x), v * H / H_in (y), W_in x H_in the size the model saw (default: W x H) | Qwen2.5-VL's grounding convention: the "spatial understanding" cookbook of the QwenLM/Qwen2.5-VL repository (absolute coordinates of the resized image) |

Digit formats (`qwen3`, `qwen25`), the rules that differ from CoordJSON:
- Container: the first `[` or `{"objects": [` (whichever comes first; JSON whitespace allowed inside the
  latter). A Markdown fence (```` ```json ```` ... ```` ``` ````) around the answer is leading / trailing
  junk and is ignored like any other. A bare `[` closes with `]`; `{"objects": [` with `]` then `}`.
- Records: keys `bbox_2d` and one of `label` / `desc` (the class name), in either order (stock models are
  not trained to one order, so `order_violation` never fires). Any other key, both `label` and `desc`, or
  a repeated key -> `unexpected_keys`; no name (or not a non-empty string) -> `missing_desc`; no
  `bbox_2d` -> `missing_geometry`.
- Geometry: the elements of `bbox_2d` must be JSON numbers (`12`, `12.5`, `1e2`); anything else --
  a quoted number, a word, a nested array and in particular a coordinate token `<|coord_k|>` (the leak
  in a digit format) -> `non_coord_token` (read it as "not this format's coordinate literal"). A number
  outside the format's range (`qwen3`: 0..1000; `qwen25`: 0..W_in for x, 0..H_in for y) ->
  `coord_out_of_range`; not 4 numbers -> `wrong_arity`; x2 <= x1 or y2 <= y1 -> `degenerate_box`.
A valid object of a digit format is a `DigitObject`: `desc`, `values` (the 4 numbers as written,
floats), `index`, `span`.

Pure module: no transformers, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from vlmdet.coords import bins_to_pixel_box
from vlmdet.format import DESC_KEY, GEOMETRY_KEY
from vlmdet.parse import DROP_REASONS, DroppedRecord, ParseResult, _lex_members, _record_end, parse_prediction

DEFAULT_FORMAT = "coordjson"
LABEL_KEY = "label"
QWEN3_SCALE = 1000.0

_WS = re.compile(r"[ \t\n\r]*")
_CONTAINER = re.compile(r'\[|\{[ \t\n\r]*"objects"[ \t\n\r]*:[ \t\n\r]*\[')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class DigitObject:
    """A valid record of a digit format: `values` = (x1, y1, x2, y2) as written (floats, the format's
    unit), `index` its position in the array (drops counted), `span` its char span [start, end)."""

    desc: str
    values: tuple[float, float, float, float]
    index: int
    span: tuple[int, int]

    @property
    def bins(self) -> tuple[float, float, float, float]:
        """The geometry under the name `evaluate.health.count_duplicates` reads (IoU is unit-free)."""
        return self.values


@dataclass(frozen=True)
class AnswerFormat:
    """`parse(text, field_order, input_size)` -> ParseResult; `to_pixels(obj, width, height, input_size)`
    -> pixel box (x1, y1, x2, y2) in the evaluated W x H image. `input_size` = (W_in, H_in), the size of
    the image the model saw (only `qwen25` reads it; None = the evaluated image's size).
    `coord_tokens`: whether the format needs the 1000 coordinate tokens in the tokenizer."""

    name: str
    parse: Callable[..., ParseResult]
    to_pixels: Callable[..., tuple[float, float, float, float]]
    coord_tokens: bool
    description: str


# ----------------------------------------------------------------------------------------------
# digit formats


def _check_values(elements, fmt: str, input_size) -> tuple[str | None, tuple]:
    """(drop reason, ()) or (None, the 4 values); the geometry rules of the module docstring."""
    values = []
    for e in elements:
        if e[0] != "a" or _NUMBER.fullmatch(e[1]) is None:
            return "non_coord_token", ()
        values.append(float(e[1]))
    if fmt == "qwen3":
        limits = [QWEN3_SCALE] * len(values)
    elif input_size is not None:
        limits = [float(input_size[i % 2]) for i in range(len(values))]
    else:
        limits = [float("inf")] * len(values)
    if any(not 0.0 <= v <= lim for v, lim in zip(values, limits)):
        return "coord_out_of_range", ()
    if len(values) != 4:
        return "wrong_arity", ()
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        return "degenerate_box", ()
    return None, (x1, y1, x2, y2)


def _classify_digits(text: str, start: int, end: int, index: int, fmt: str, input_size):
    lexed = _lex_members(text, start, end, 0)
    if lexed is None or lexed[1] != end:
        return "malformed"
    members = lexed[0]
    keys = [k for k, _ in members]
    names = [k for k in keys if k in (LABEL_KEY, DESC_KEY)]
    if len(set(keys)) != len(keys) or len(names) > 1 or any(k not in (LABEL_KEY, DESC_KEY, GEOMETRY_KEY) for k in keys):
        return "unexpected_keys"
    values = dict(members)
    desc = values.get(names[0]) if names else None
    if desc is None or desc[0] != "s" or not desc[1].strip():
        return "missing_desc"
    geom = values.get(GEOMETRY_KEY)
    if geom is None:
        return "missing_geometry"
    elements = geom[1] if geom[0] == "l" else [geom]
    reason, box = _check_values(elements, fmt, input_size)
    if reason is not None:
        return reason
    return DigitObject(desc[1], box, index, (start, end))


def parse_digits(text: str, fmt: str, input_size=None) -> ParseResult:
    """Parse a `qwen3` / `qwen25` answer (module docstring); never raises for any `str`."""
    m = _CONTAINER.search(text)
    if m is None:
        return ParseResult([], {}, [], True, False, 0, False, 0, 0)
    wrapped = m.group() != "["
    n_text = len(text)
    objects: list[DigitObject] = []
    dropped: list[DroppedRecord] = []
    n = 0
    truncated = broken = closing = False
    tail = 0
    pos = prefix_end = m.end()
    pos = _WS.match(text, pos).end()
    if pos >= n_text:
        truncated = True
    elif text[pos] == "]":
        closing = True
    elif text[pos] != "{":
        broken = True
    else:
        while True:  # text[pos] == "{"
            end = _record_end(text, pos)
            if end < 0:
                truncated, tail = True, 1
                break
            obj = _classify_digits(text, pos, end, n, fmt, input_size)
            if isinstance(obj, str):
                dropped.append(DroppedRecord(obj, n, (pos, end)))
            else:
                objects.append(obj)
            n += 1
            prefix_end = pos = end
            pos = _WS.match(text, pos).end()
            if pos >= n_text:
                truncated = True
                break
            if text[pos] == ",":
                pos = _WS.match(text, pos + 1).end()
                if pos >= n_text:
                    truncated = True
                    break
                if text[pos] == "{":
                    continue
                broken = True
                break
            if text[pos] == "]":
                closing = True
            else:
                broken = True
            break
    if closing and wrapped:
        pos = _WS.match(text, pos + 1).end()
        if pos >= n_text:
            truncated = True
        elif text[pos] != "}":
            broken = True
    counts: dict[str, int] = {}
    for d in dropped:
        counts[d.reason] = counts.get(d.reason, 0) + 1
    drops = {r: counts[r] for r in DROP_REASONS if r in counts}
    return ParseResult(objects, drops, dropped, False, truncated, tail, broken, prefix_end, n)


def _qwen3_pixels(obj: DigitObject, width: int, height: int, input_size=None):
    x1, y1, x2, y2 = obj.values
    return (x1 / QWEN3_SCALE * width, y1 / QWEN3_SCALE * height, x2 / QWEN3_SCALE * width, y2 / QWEN3_SCALE * height)


def _qwen25_pixels(obj: DigitObject, width: int, height: int, input_size=None):
    w_in, h_in = input_size if input_size is not None else (width, height)
    x1, y1, x2, y2 = obj.values
    sx, sy = width / w_in, height / h_in
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def _coordjson_pixels(obj, width: int, height: int, input_size=None):
    return bins_to_pixel_box(obj.bins, width, height)


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "coordjson": AnswerFormat(
        "coordjson", lambda text, field_order="desc_first", input_size=None: parse_prediction(text, field_order),
        _coordjson_pixels, True, "one-line CoordJSON with 1000 coordinate tokens (bins 0..999)"),
    "qwen3": AnswerFormat(
        "qwen3", lambda text, field_order="desc_first", input_size=None: parse_digits(text, "qwen3", input_size),
        _qwen3_pixels, False, "Qwen3-VL grounding JSON: digits 0..1000 relative to the image"),
    "qwen25": AnswerFormat(
        "qwen25", lambda text, field_order="desc_first", input_size=None: parse_digits(text, "qwen25", input_size),
        _qwen25_pixels, False, "Qwen2.5-VL grounding JSON: absolute pixels of the image the model saw"),
}


def get_format(name: str) -> AnswerFormat:
    """The `AnswerFormat` called `name`; ValueError naming the choices otherwise."""
    try:
        return ANSWER_FORMATS[name]
    except KeyError:
        raise ValueError(f"answer format must be one of {tuple(ANSWER_FORMATS)}, got {name!r}") from None


#: The prompt a stock (not fine-tuned) model is asked with for each digit format: Qwen's default system
#: prompt and a grounding request in the cookbooks' wording (JSON with bbox_2d and label).
STOCK_SYSTEM_PROMPT = "You are a helpful assistant."
STOCK_USER_PROMPT = (
    'Locate every object in the image. Report each one as JSON {"bbox_2d": [x1, y1, x2, y2], "label": "name"} '
    "in one JSON list."
)
