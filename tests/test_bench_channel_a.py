"""benchmarks/bench_channel_a.py: the documented command runs (tiny numbers) and prints its summary lines.

Speed and memory are measured by the script and recorded in docs/BENCHMARKS.md, never asserted here."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_channel_a.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_channel_a", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("mix, image_tokens, answer_tokens", [("realistic", 196, 67), ("demo", 16, 41)])
def test_mix_token_counts_and_summary_lines(bench, capsys, mix, image_tokens, answer_tokens):
    assert bench.main(["--mix", mix, "--batch", "1", "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{mix} mix: batch 1 x " in out
    assert f"({image_tokens} image, {answer_tokens} answer tokens per sample;" in out
    labels = [label for label, *_ in bench.VARIANTS]
    assert len(labels) == 9 and all(re.search(rf"^{re.escape(lb)} +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M) for lb in labels)
    assert re.search(r"^N=2 unroll / N=1 step time: \d+\.\d\dx \(target <= 1\.4x\) (OK|MISSED)$", out, re.M)
    assert re.search(r"^N=3 em_detach / N=1 step time: \d+\.\d\dx", out, re.M)
    assert re.search(r"^N=2 unroll / N=1 activation memory: \d+\.\d\dx", out, re.M)
