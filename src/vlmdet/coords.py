"""The coordinate lattice: bins, coordinate-token strings, pixel <-> bin.

This module is the only home of these constants; everything else imports them.

Lattice (see docs/FORMAT.md): 1000 bins k in {0..999}. Bin k is the normalized position k/999,
endpoint-aligned: bin 0 is pixel 0 and bin 999 is pixel W-1 (never /1000, never bin centres).

pixel -> bin for a box [x1, y1, x2, y2] (pixels, float) in an image W x H:
    x1 -> floor(x1 / (W-1) * 999), y1 -> floor(y1 / (H-1) * 999),
    x2 -> ceil(x2 / (W-1) * 999),  y2 -> ceil(y2 / (H-1) * 999),
clamped to [0, 999]; a side that collapses (x2 <= x1) is pushed out by one bin
(x2 += 1, or x1 -= 1 when x2 is already 999).

bin -> pixel: k / 999 * (W-1) (float; round only for display).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

NUM_BINS = 1000
MAX_BIN = NUM_BINS - 1

COORD_TOKEN_PREFIX = "<|coord_"
COORD_TOKEN_SUFFIX = "|>"

#: `<|coord_k|>` for k = 0..999, in bin order.
COORD_TOKENS: tuple[str, ...] = tuple(f"{COORD_TOKEN_PREFIX}{k}{COORD_TOKEN_SUFFIX}" for k in range(NUM_BINS))

#: Matches any `<|coord_<digits>|>` literal, including out-of-range ones like `<|coord_1000|>`.
COORD_TOKEN_RE = re.compile(r"<\|coord_(\d+)\|>")

_BIN_OF_TOKEN = {tok: k for k, tok in enumerate(COORD_TOKENS)}

# The floating-point slack before floor/ceil: 640x480 boxes computed as v/(W-1)*999 can land
# a hair above/below an integer (e.g. 156.00000000000003); we snap values within EPS of an
# integer to it so that exact lattice points map to themselves.
_EPS = 1e-9


def coord_token(k: int) -> str:
    """The token string of bin k (0 <= k <= 999)."""
    if not 0 <= k <= MAX_BIN:
        raise ValueError(f"bin {k} outside [0, {MAX_BIN}]")
    return COORD_TOKENS[k]


def token_bin(token: str) -> int | None:
    """Bin of a well-formed in-range coordinate token string, else None."""
    return _BIN_OF_TOKEN.get(token)


def _floor(v: float) -> int:
    r = round(v)
    return int(r) if abs(v - r) < _EPS else math.floor(v)


def _ceil(v: float) -> int:
    r = round(v)
    return int(r) if abs(v - r) < _EPS else math.ceil(v)


def _clamp(k: int) -> int:
    return min(MAX_BIN, max(0, k))


def pixel_to_bin(v: float, size: int, *, upper: bool = False) -> int:
    """One pixel coordinate -> bin. `size` is W (for x) or H (for y); `upper` selects ceil (x2, y2)."""
    if size < 2:
        raise ValueError(f"image side {size} too small for the lattice (need >= 2 px)")
    scaled = v / (size - 1) * MAX_BIN
    return _clamp(_ceil(scaled) if upper else _floor(scaled))


def bin_to_pixel(k: float, size: int) -> float:
    """Bin (int, or an expected bin as float) -> pixel coordinate in an image side of `size` px."""
    return k / MAX_BIN * (size - 1)


def pixel_box_to_bins(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """[x1, y1, x2, y2] in pixels -> 4 bins, with the floor/ceil/clamp/push-out rule above."""
    x1, y1, x2, y2 = box
    b = [
        pixel_to_bin(x1, width),
        pixel_to_bin(y1, height),
        pixel_to_bin(x2, width, upper=True),
        pixel_to_bin(y2, height, upper=True),
    ]
    for lo, hi in ((0, 2), (1, 3)):
        if b[hi] <= b[lo]:
            if b[lo] < MAX_BIN:
                b[hi] = b[lo] + 1
            else:
                b[lo] = MAX_BIN - 1
                b[hi] = MAX_BIN
    return (b[0], b[1], b[2], b[3])


def bins_to_pixel_box(bins: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """4 bins (ints or expected floats) -> [x1, y1, x2, y2] in pixels (floats)."""
    x1, y1, x2, y2 = bins
    return (
        bin_to_pixel(x1, width),
        bin_to_pixel(y1, height),
        bin_to_pixel(x2, width),
        bin_to_pixel(y2, height),
    )


def bins_to_norm(bins: Sequence[float]) -> tuple[float, ...]:
    """Bins -> normalized [0, 1] positions (k / 999)."""
    return tuple(k / MAX_BIN for k in bins)
