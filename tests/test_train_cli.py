"""`vlmdet train`: argument parsing, bad input -> exit 2 with a clear message, the shipped Stage-1
configs load, and a short real run through `vlmdet.cli.main`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vlmdet.cli import main
from vlmdet.config import load_config, training_arguments

REPO = Path(__file__).resolve().parents[1]
STAGE1_CONFIGS = sorted((REPO / "configs" / "stage1").glob("*.yaml"))


def _parse(argv):
    from vlmdet.train import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_intermixed_args(argv)  # as vlmdet.cli parses it (train.cli.INTERMIXED_ARGS)


@pytest.mark.parametrize(
    "argv, resume, resume_from, overrides",
    [
        (["c.yaml"], False, None, []),
        (["c.yaml", "a.b=1", "--resume"], True, None, ["a.b=1"]),
        # a flag before the overrides no longer swallows the next one
        (["c.yaml", "--resume", "data.train=x.jsonl", "seed=2"], True, None, ["data.train=x.jsonl", "seed=2"]),
        (["c.yaml", "seed=2", "--resume-from", "runs/x/checkpoint-3"], False, "runs/x/checkpoint-3", ["seed=2"]),
        (["--overwrite", "c.yaml", "seed=2"], False, None, ["seed=2"]),
    ],
)
def test_arguments(argv, resume, resume_from, overrides):
    from vlmdet.train import cli

    assert cli.INTERMIXED_ARGS
    args = _parse(argv)
    assert args.config == "c.yaml" and args.overrides == overrides
    assert args.resume is resume and args.resume_from == resume_from


@pytest.mark.slow
def test_shipped_stage1_configs_load_and_map_to_training_arguments(tmp_path):
    names = {p.name for p in STAGE1_CONFIGS}
    assert {"tiny.yaml", "qwen3vl_2b.yaml"} <= names
    import torch

    cpu = [] if torch.cuda.is_available() else ["training.bf16=false"]  # TrainingArguments refuses bf16 on CPU
    for path in STAGE1_CONFIGS:
        cfg = load_config(path)
        assert cfg.stage == 1
        assert cfg.losses.token_ce > 0 and cfg.losses.coord_gate > 0
        targs = training_arguments(load_config(path, cpu), tmp_path / path.stem)
        assert targs.max_steps == cfg.training.max_steps
    big = load_config(REPO / "configs" / "stage1" / "qwen3vl_2b.yaml")
    assert big.model.dtype == "float32" and big.training.bf16 and big.training.gradient_checkpointing
    assert 1e-6 <= big.training.learning_rate <= 5e-5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.train=null"], "data.train is not set"),
        (["losses.coord_gaet=1"], "did you mean 'losses.coord_gate'"),
        (["data.train={missing}"], "cannot read"),
    ],
)
def test_bad_input_exits_2_with_message(tmp_path, capsys, extra, message):
    extra = [e.format(missing=tmp_path / "nope.jsonl") for e in extra]
    rc = main(["train", str(REPO / "configs/stage1/tiny.yaml"), f"output_dir={tmp_path}", *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_resume_without_checkpoint_exits_2(tmp_path, capsys):
    from vlmdet.data.synth import make_synth

    make_synth(tmp_path / "d", n_train=2, n_val=1, seed=0, size=32)
    (tmp_path / "runs" / "stage1_tiny").mkdir(parents=True)
    rc = main(["train", str(REPO / "configs/stage1/tiny.yaml"), f"output_dir={tmp_path / 'runs'}",
               f"data.train={tmp_path / 'd' / 'train.jsonl'}", "--resume"])
    assert rc == 2
    assert "no complete checkpoint-<step> to resume from" in capsys.readouterr().err


@pytest.mark.slow
def test_vlmdet_train_short_run(tmp_path, capsys):
    from vlmdet.data.synth import make_synth

    make_synth(tmp_path / "d", n_train=4, n_val=1, seed=1, size=64)
    rc = main([
        "train", str(REPO / "configs/stage1/tiny.yaml"),
        f"data.train={tmp_path / 'd' / 'train.jsonl'}", "data.val=null", f"output_dir={tmp_path / 'runs'}",
        "run_name=cli", "training.max_steps=2", "training.logging_steps=1", "training.per_device_train_batch_size=2",
        "training.save_steps=2", "eval.eval_steps=0",
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert "global_step" in out and "checkpoint-final" in out
    run = tmp_path / "runs" / "cli"
    assert (run / "config.yaml").exists() and json.loads((run / "run.json").read_text())["resumed"] is False
    assert (run / "checkpoint-2" / "preprocessor_config.json").exists()
    assert (run / "checkpoint-2" / "tokenizer.json").exists()
    assert (run / "checkpoint-final" / "model.safetensors").exists()
    assert list((run / "tb").rglob("events.out.tfevents.*"))
    steps = [json.loads(line)["step"] for line in (run / "logging.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2]
    # a second run with the same name refuses to clobber checkpoints
    rc = main(["train", str(REPO / "configs/stage1/tiny.yaml"), f"data.train={tmp_path / 'd' / 'train.jsonl'}",
               f"output_dir={tmp_path / 'runs'}", "run_name=cli"])
    assert rc == 2 and "already has checkpoints" in capsys.readouterr().err
