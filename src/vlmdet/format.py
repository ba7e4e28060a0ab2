"""Objects -> CoordJSON answer text (see docs/FORMAT.md).

An answer is one line:

    {"objects": [{"desc": "red circle", "bbox_2d": [<|coord_12|>, <|coord_34|>, <|coord_256|>, <|coord_480|>]}]}

- separators exactly ", " and ": "; coordinate tokens bare (unquoted) inside `bbox_2d`;
- `desc` escaped like `json.dumps(desc, ensure_ascii=False)`;
- field order `desc_first` (default) or `geometry_first`;
- objects sorted top-to-bottom then left-to-right by (y1, x1) of their bins (stable), unless
  `ordering="random"` (then the given order is kept: shuffle before calling).
The chat end-of-turn token that follows an answer is added by the chat template, not here.

An object is anything with `.desc: str` and `.bins: (x1, y1, x2, y2)` ints, or a `(desc, bins)` pair.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from vlmdet.coords import COORD_TOKENS

FIELD_ORDERS = ("desc_first", "geometry_first")
ORDERINGS = ("sorted", "random")

ANSWER_PREFIX = '{"objects": ['
ANSWER_SUFFIX = "]}"
RECORD_SEP = ", "
EMPTY_ANSWER = ANSWER_PREFIX + ANSWER_SUFFIX
GEOMETRY_KEY = "bbox_2d"
DESC_KEY = "desc"


def _desc_bins(obj: Any) -> tuple[str, Sequence[int]]:
    if isinstance(obj, tuple):
        return obj[0], obj[1]
    return obj.desc, obj.bins


def check_field_order(field_order: str) -> str:
    if field_order not in FIELD_ORDERS:
        raise ValueError(f"field_order must be one of {FIELD_ORDERS}, got {field_order!r}")
    return field_order


def render_record(desc: str, bins: Sequence[int], field_order: str = "desc_first") -> str:
    """One record `{"desc": "...", "bbox_2d": [<|coord_a|>, ...]}` (no trailing separator)."""
    desc_part = f'"{DESC_KEY}": ' + json.dumps(desc, ensure_ascii=False)
    geom_part = f'"{GEOMETRY_KEY}": [' + ", ".join(COORD_TOKENS[int(k)] for k in bins) + "]"
    if field_order == "desc_first":
        return "{" + desc_part + ", " + geom_part + "}"
    if field_order == "geometry_first":
        return "{" + geom_part + ", " + desc_part + "}"
    raise ValueError(f"field_order must be one of {FIELD_ORDERS}, got {field_order!r}")


def sort_objects(objects: Iterable[Any]) -> list[Any]:
    """Stable sort by (y1, x1) of the bins: top-to-bottom, then left-to-right."""
    return sorted(objects, key=lambda o: (_desc_bins(o)[1][1], _desc_bins(o)[1][0]))


def render_records(objects: Iterable[Any], field_order: str = "desc_first") -> str:
    """Records joined by ", " in the given order (used to append a tail to a rollout prefix)."""
    return RECORD_SEP.join(render_record(*_desc_bins(o), field_order=field_order) for o in objects)


def render_answer(objects: Iterable[Any], field_order: str = "desc_first", ordering: str = "sorted") -> str:
    """The whole CoordJSON answer line for `objects`."""
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {ORDERINGS}, got {ordering!r}")
    objs = sort_objects(objects) if ordering == "sorted" else list(objects)
    return ANSWER_PREFIX + render_records(objs, field_order) + ANSWER_SUFFIX
