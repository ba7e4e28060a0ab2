"""`.gitignore`: what vlmdet writes from the checkout (data/, runs/, reports/) is ignored; sources are not."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path,ignored", [
    ("data/train.jsonl", True), ("runs/demo/logging.jsonl", True), ("reports/report.html", True),
    (".venv-floor/transformers/__init__.py", True),
    ("src/vlmdet/data/synth.py", False), ("src/vlmdet/report/html.py", False), ("configs/demo/base.yaml", False),
    ("docs/results/gate_ablation/report.md", False),
])
def test_gitignore(path, ignored):
    git = shutil.which("git")
    assert git, "git is needed to read .gitignore the way git does"
    proc = subprocess.run([git, "check-ignore", "--no-index", "-q", path], cwd=REPO)
    assert proc.returncode == (0 if ignored else 1), path
