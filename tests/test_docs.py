"""Every command shown in README.md and docs/*.md runs: each file's command blocks, in order, in a fresh sandbox.

A command block is a fenced block tagged `bash` / `sh` or untagged whose lines start with `$ ` (console
style: only the `$` lines are commands, the rest is output) or whose first command starts with one of
`COMMAND_WORDS`. Comments are dropped and backslash continuations joined; every command must exit 0.

The sandbox (a temporary folder, the working directory of every command) holds copies of configs/ and
examples/, links to benchmarks/, tests/ and src/, a small COCO-format data set (annotations/instances_
{train,val}2017.json with train2017/ and val2017/ images), and a tiny Qwen3-VL without coordinate tokens
standing in for the stock checkpoint, both as the folder /models/Qwen3-VL-2B-Instruct and as the hub id
Qwen/Qwen3-VL-2B-Instruct in an offline Hugging Face cache (HF_HUB_OFFLINE=1).

Swaps -- the GPU-only and long parts, so the commands run on the tiny model in seconds (`SWAPS`):
- `/models/...` (in commands and in the copied configs) -> `<sandbox>/models/...` (the tiny stand-in);
- `torchrun ... -m vlmdet.cli CMD` -> `vlmdet CMD` in one process (multi-process training:
  tests/test_multiprocess.py);
- `make demo` -> `vlmdet demo --smoke`; `make test` is not run (it would run this suite inside itself),
  nor `scripts/gpu_check.sh` (tests/test_gpu_check.py runs it, in its CPU mode);
- `.venv/bin/python` -> this interpreter (scripts run in this process via runpy; `-m pytest` in its own);
- `vlmdet train`: `TRAIN_SMALL` overrides go before the first option (2 steps, batch 2, float32, no bf16,
  no gradient checkpointing, no dataloader workers, no DDP backend, no FSDP, tiny evals); `--resume` gets one
  more step (`training.max_steps=3`), since the run it continues finished;
- `vlmdet eval`: `EVAL_SMALL` (2 images, 16 new tokens, float32);
- `vlmdet demo` -> `--smoke`; `vlmdet data synth` -> `--train 16 --val 4`;
  `vlmdet experiment ...` -> `--smoke --steps 1,2 --seeds 0`;
- benchmarks/*.py: the smallest sizes and one repeat (`BENCH_SMALL`).
Everything else runs as written. A doc that starts where another left off gets those steps first
(`PREPARED`: docs/TRAINING.md's GPU line follows README's expand-vocab and COCO conversion).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
COMMAND_WORDS = ("vlmdet", "make", "torchrun", ".venv/bin/", "python", "scripts/gpu_check.sh")
NOT_RUN = {"make test": "runs this test suite (CI's command)",
           "scripts/gpu_check.sh": "tests/test_gpu_check.py runs it in its CPU mode (--cpu --tiny)"}
#: what a doc assumes was done before its commands (stated there), run first in its sandbox
PREPARED = {
    "docs/TRAINING.md": [  # "after README's steps 1-2" of the GPU recipe
        "vlmdet expand-vocab /models/Qwen3-VL-2B-Instruct /models/Qwen3-VL-2B-Instruct-coord",
        "vlmdet data coco --instances annotations/instances_train2017.json --images train2017 --out data/coco --split train",
        "vlmdet data coco --instances annotations/instances_val2017.json --images val2017 --out data/coco --split val",
    ],
}

TRAIN_SMALL = [
    "training.max_steps=2", "training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=1",
    "training.warmup_steps=0", "training.logging_steps=1", "training.save_steps=2", "training.bf16=false",
    "training.gradient_checkpointing=false", "training.dataloader_num_workers=0", "training.ddp_backend=null",
    "training.report_to=[]", "training.fsdp=''", "training.fsdp_config=null", "model.dtype=float32", "data.max_train_samples=8", "data.max_val_samples=2",
    "eval.eval_steps=2", "eval.steps=[]", "eval.max_samples=2", "rollout.max_new_tokens=16", "rollout.batch_size=2",
    "monitor.n_samples=1",
]
EVAL_SMALL = ["eval.max_samples=2", "rollout.max_new_tokens=16", "rollout.batch_size=2", "model.dtype=float32",
              "monitor.n_samples=1"]
BENCH_SMALL = {
    "bench_parse.py": ["--answers", "20", "--repeats", "1"],
    "bench_coco.py": ["--images", "10", "--repeats", "1"],
    "bench_eval_memory.py": ["--predictions", "100", "--new-only"],  # a shallow clone has no older revision
    "bench_channel_a.py": ["--batch", "1", "--repeats", "1"],
    "bench_gathered_loss.py": ["--vocab", "2000", "--seq", "128", "--answer", "32", "--objects", "2", "--repeats", "1"],
    "realdim.py": ["--small"],  # toy dimensions, every phase in one process (about a minute of CPU)
}
#: (pattern, replacement) on the command text, before it is split into words
SWAPS = [
    (r"^make demo$", "vlmdet demo --smoke"),
    (r"^torchrun\b.*?-m vlmdet\.cli ", "vlmdet "),
    (r"^\.venv/bin/python\b", "python"),
]


def command_blocks(path: Path) -> list[tuple[int, list[str]]]:
    """(line of the block, commands) for every command block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        lang, body = m.group(1), m.group(2)
        if lang not in ("", "bash", "sh"):
            continue
        joined = re.sub(r"\\\n\s*", " ", body).splitlines()
        if any(line.startswith("$ ") for line in joined):
            cmds = [line[2:] for line in joined if line.startswith("$ ")]
        else:
            cmds = [line for line in joined if line.strip() and not line.lstrip().startswith("#")]
            if not cmds or not cmds[0].startswith(COMMAND_WORDS):
                continue
        cmds = [shlex.join(shlex.split(c, comments=True)) for c in cmds]
        out.append((text[: m.start()].count("\n") + 1, [c for c in cmds if c]))
    return out


def test_every_doc_with_commands_is_covered():
    counts = {d: sum(len(c) for _, c in command_blocks(ROOT / d)) for d in DOCS}
    assert counts["README.md"] >= 20 and counts["docs/CONFIG.md"] >= 2 and counts["docs/DATA.md"] >= 4
    # console-style blocks: only the `$` lines are commands
    assert "vlmdet data validate data/synth/train.jsonl" in [c for _, cs in command_blocks(ROOT / "README.md") for c in cs]


def _fake_coco(root: Path) -> None:
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    for split, sizes in (("train2017", [(96, 64), (64, 64), (80, 48)]), ("val2017", [(64, 96), (64, 64)])):
        images, anns = [], []
        for i, (w, h) in enumerate(sizes, 1):
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (w, h), (40 * i, 90, 150)).save(root / split / f"{i:012d}.jpg")
            images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h})
            anns.append({"id": 10 * i, "image_id": i, "category_id": 1 + 2 * (i % 2), "bbox": [4, 6, w / 2, h / 3],
                         "iscrowd": 0, "area": w * h / 6})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _hub_cache(cache: Path, repo_id: str, source: Path) -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in source.iterdir():
        shutil.copy2(f, snap / f.name)


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    from vlmdet.model.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("stock") / "Qwen3-VL-2B-Instruct", coord_tokens=False)


@pytest.fixture
def sandbox(tmp_path, stock, monkeypatch):
    import huggingface_hub.constants as hub

    box = tmp_path / "box"
    box.mkdir()
    shutil.copytree(ROOT / "configs", box / "configs")
    for cfg in (box / "configs").rglob("*.yaml"):
        cfg.write_text(cfg.read_text().replace("/models/", f"{box}/models/"))
    shutil.copytree(ROOT / "examples", box / "examples")  # commands write next to their inputs
    for name in ("benchmarks", "tests", "src"):
        (box / name).symlink_to(ROOT / name)
    (box / "models").mkdir()
    shutil.copytree(stock, box / "models" / "Qwen3-VL-2B-Instruct")
    _fake_coco(box)
    _hub_cache(tmp_path / "hub", "Qwen/Qwen3-VL-2B-Instruct", stock)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VLMDET_NO_PROGRESS", "1")
    monkeypatch.chdir(box)
    return box


def _with_options_last(words: list[str], extra: list[str]) -> list[str]:
    """`extra` inserted before the first `--option` (so `--resume` stays a bare flag)."""
    at = next((i for i, w in enumerate(words) if w.startswith("--") and i > 1), len(words))
    return words[:at] + extra + words[at:]


def swapped(command: str, box: Path) -> list[str] | None:
    """The words to run for a documented command (module docstring), or None when it is not run."""
    if command in NOT_RUN:
        return None
    for pattern, repl in SWAPS:
        command = re.sub(pattern, repl, command)
    words = [w.replace("/models/", f"{box}/models/") if w.startswith("/models/") else w for w in shlex.split(command)]
    if words[0] == "python":
        script = Path(words[1]).name if len(words) > 1 else ""
        return [sys.executable, *words[1:], *BENCH_SMALL.get(script, [])]
    assert words[0] == "vlmdet", f"unknown command word in docs: {command}"
    sub = words[1] if len(words) > 1 else ""
    if sub == "train":
        if "--resume" in words:  # the run before it finished its 2 steps: one more
            words = words + ["training.max_steps=3"]
        return _with_options_last(words, TRAIN_SMALL)
    if sub == "eval":
        return words + EVAL_SMALL
    if sub == "demo" and "--smoke" not in words:
        return words + ["--smoke"]
    if sub == "data" and words[2] == "synth":
        return words + ["--train", "16", "--val", "4"]
    if sub == "experiment":  # one seed: the smoke grid's arms, not its repetitions
        if "--seeds" in words:
            words[words.index("--seeds") + 1] = "0"
        return words + ["--smoke", "--steps", "1,2", "--seeds", "0"]
    return words


def _run(words: list[str], box: Path, monkeypatch) -> tuple[int, str]:
    if words[:3] == [sys.executable, "-m", "pytest"]:  # a test run: its own process
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        p = subprocess.run(words, cwd=box, env=env, capture_output=True, text=True, timeout=600)
        return p.returncode, p.stdout[-2000:] + p.stderr[-2000:]
    if words[0] == sys.executable:  # a script (benchmarks/): in this process, as `python script args`
        import runpy

        monkeypatch.setattr(sys, "argv", words[1:])
        try:
            runpy.run_path(words[1], run_name="__main__")
        except SystemExit as err:
            return int(err.code or 0), ""
        return 0, ""
    from vlmdet.cli import main

    return main(words[1:]), ""


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if command_blocks(ROOT / d)])
def test_doc_commands_run(doc, sandbox, capsys, monkeypatch):
    ran = 0
    for line, commands in [(0, PREPARED.get(doc, []))] + command_blocks(ROOT / doc):
        for command in commands:
            words = swapped(command, sandbox)
            if words is None:
                continue
            code, tail = _run(words, sandbox, monkeypatch)
            captured = capsys.readouterr()
            assert code == 0, f"{doc}:{line}: `{command}` exited {code}\n{tail}{captured.err[-3000:]}"
            ran += 1
    assert ran > 0
