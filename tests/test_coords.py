"""Golden tests of the coordinate lattice (see docs/FORMAT.md): hand-computed worked examples."""

import pytest

from vlmdet.coords import (
    COORD_TOKEN_RE,
    COORD_TOKENS,
    MAX_BIN,
    NUM_BINS,
    bin_to_pixel,
    bins_to_norm,
    bins_to_pixel_box,
    coord_token,
    pixel_box_to_bins,
    pixel_to_bin,
    token_bin,
)

# (pixel box, W, H, expected bins, why) -- each worked by hand from floor/ceil(v / (side-1) * 999).
BOX_CASES = [
    # 100/639*999 = 156.3 -> 156; 50/479*999 = 104.3 -> 104; 300/639*999 = 469.0(1) -> ceil 470;
    # 200/479*999 = 417.1 -> ceil 418
    ((100, 50, 300, 200), 640, 480, (156, 104, 470, 418), "design golden example"),
    ((0, 0, 639, 479), 640, 480, (0, 0, 999, 999), "whole image: endpoints 0 and W-1"),
    ((0, 0, 1, 1), 1000, 1000, (0, 0, 1, 1), "W-1 = 999: pixels are bins"),
    ((5, 7, 5, 7), 1000, 1000, (5, 7, 6, 8), "collapsed box pushed out by one bin"),
    ((999, 999, 999, 999), 1000, 1000, (998, 998, 999, 999), "collapse at the far edge pushes x1 back"),
    ((-20, -1, 2000, 5000), 640, 480, (0, 0, 999, 999), "clamped to [0, 999]"),
    ((10.5, 20.25, 10.75, 20.5), 1000, 1000, (10, 20, 11, 21), "sub-pixel: floor low side, ceil high side"),
    ((1, 1, 2, 2), 3, 3, (499, 499, 999, 999), "tiny image: 1/2*999 = 499.5 -> 499; 2/2*999 = 999"),
]


@pytest.mark.parametrize("box,w,h,bins,why", BOX_CASES, ids=[c[-1] for c in BOX_CASES])
def test_pixel_box_to_bins(box, w, h, bins, why):
    assert pixel_box_to_bins(box, w, h) == bins


# (value, side, upper, expected bin)
POINT_CASES = [
    (0, 640, False, 0),
    (0, 640, True, 0),
    (639, 640, False, 999),
    (639, 640, True, 999),
    (319.5, 640, False, 499),  # 319.5/639*999 = 499.5
    (319.5, 640, True, 500),
    (1, 640, False, 1),  # 1/639*999 = 1.56
    (1, 640, True, 2),
    (-3, 640, False, 0),
    (700, 640, True, 999),
]


@pytest.mark.parametrize("v,side,upper,k", POINT_CASES)
def test_pixel_to_bin(v, side, upper, k):
    assert pixel_to_bin(v, side, upper=upper) == k


# (bin, side, expected pixel): k / 999 * (side - 1)
BIN_PIXEL_CASES = [(0, 640, 0.0), (999, 640, 639.0), (999, 480, 479.0), (333, 1000, 333.0), (500, 2, 500 / 999)]


@pytest.mark.parametrize("k,side,px", BIN_PIXEL_CASES)
def test_bin_to_pixel(k, side, px):
    assert bin_to_pixel(k, side) == pytest.approx(px, abs=1e-12)


def test_bins_to_pixel_box_and_norm():
    assert bins_to_pixel_box((0, 999, 333, 666), 1000, 640) == pytest.approx((0.0, 639.0, 333.0, 426.0))
    assert bins_to_norm((0, 999, 333)) == pytest.approx((0.0, 1.0, 1 / 3))


@pytest.mark.parametrize("side", [2, 37, 480, 640, 999, 1000, 4096])
def test_lattice_points_round_trip(side):
    """bin -> pixel -> bin is the identity on lattice points, for both the floor and the ceil side."""
    for k in range(NUM_BINS):
        px = bin_to_pixel(k, side)
        assert pixel_to_bin(px, side) == k
        assert pixel_to_bin(px, side, upper=True) == k


def test_tokens():
    assert len(COORD_TOKENS) == NUM_BINS == len(set(COORD_TOKENS))
    assert COORD_TOKENS[0] == "<|coord_0|>" and COORD_TOKENS[MAX_BIN] == "<|coord_999|>"
    assert coord_token(42) == "<|coord_42|>"
    assert token_bin("<|coord_42|>") == 42
    for bad in ["<|coord_1000|>", "<|coord_05|>", "coord_5", "<|coord_-1|>", "<|coord_5|> "]:
        assert token_bin(bad) is None
    assert COORD_TOKEN_RE.fullmatch("<|coord_1000|>").group(1) == "1000"


@pytest.mark.parametrize("call", [lambda: coord_token(1000), lambda: coord_token(-1), lambda: pixel_to_bin(0, 1)])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
