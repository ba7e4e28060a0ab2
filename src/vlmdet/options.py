"""Numeric command-line options with range checks (an argparse `type=`).

`bounded(int, lambda v: v >= 1, ">= 1")` parses the text as an int (or float), refuses NaN and inf,
and checks the range; a bad value exits 2 with one line naming the option and the rule, e.g.
`vlmdet eval-preds: error: argument --f1-iou: must be in (0, 1], got '2'`.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def bounded(kind: type, check: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    """An argparse `type=` that parses `kind` (int or float; NaN and inf are refused) and requires
    `check(value)`; the error reads `argument --opt: must be <rule>, got '<text>'`."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if (kind is float and not math.isfinite(value)) or not check(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in some messages
    return convert
