"""DetTrainer Stage-1 on the tiny model: it learns, logs every term everywhere, resumes exactly;
callbacks: logging.jsonl, rollout-eval hook."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from vlmdet.config import load_config
from vlmdet.train.objective import LOSSES

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = REPO / "configs" / "stage1" / "tiny.yaml"
DIAG_KEYS = ("coord_diag/coord_vocab_mass_mean", "coord_diag/acc_top1", "coord_diag/expected_bin_mae",
             "coord_diag/acc_top5", "coord_diag/p_gt_mean", "coord_diag/margin_mean", "coord_diag/expected_bin_abs_err_p90")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from vlmdet.data.synth import make_synth

    out = tmp_path_factory.mktemp("synth")
    make_synth(out, n_train=8, n_val=2, seed=0, size=64)
    return out


def _cfg(synth, out, **over):
    base = {
        "data.train": str(synth / "train.jsonl"),
        "data.val": "null",
        "output_dir": str(out),
        "training.logging_steps": 2,
        "training.save_steps": 1000,
        "training.warmup_steps": 0,
        "training.per_device_train_batch_size": 2,
        "eval.eval_steps": 0,
    }
    base.update(over)
    return load_config(TINY_CFG, [f"{k}={v}" for k, v in base.items()])


def _log_rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "logging.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_stage1_learns_and_logs_every_term_to_jsonl_and_tensorboard(synth, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vlmdet.model.load import load_model
    from vlmdet.train.cli import train

    loaded = load_model("tiny")
    before = {k: v.detach().clone() for k, v in loaded.model.named_parameters()}
    # one fixed batch of 2 images, seen 10 times: the loss must fall
    cfg = _cfg(synth, tmp_path, **{
        "data.max_train_samples": 2, "training.max_steps": 10, "training.learning_rate": 3e-3,
        "training.lr_scheduler_type": "constant", "training.lr_scheduler_kwargs": "{}",
        "data.val": str(synth / "val.jsonl"), "eval.eval_steps": 4,
    })
    # a stand-in rollout eval (the real one is tested in tests/test_runner.py): its metrics must be
    # logged at steps 4 and 8 without swallowing those steps' training logs
    import vlmdet.train.callbacks as callbacks

    monkeypatch.setattr(callbacks, "run_rollout_eval", lambda **kw: {"eval_rollout/f1": kw["step"] / 100})
    summary = train(cfg, ["test"], loaded=loaded)
    assert summary["global_step"] == 10
    evals = [(r["step"], r["eval_rollout/f1"]) for r in _log_rows(summary["run_dir"]) if "eval_rollout/f1" in r]
    assert evals == [(4, 0.04), (8, 0.08)]

    changed = [k for k, v in loaded.model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert "lm_head.weight" in changed or "model.language_model.embed_tokens.weight" in changed
    assert len(changed) > 0.9 * len(before)

    rows = [r for r in _log_rows(summary["run_dir"]) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    for r in rows:
        for key in [f"loss/{t}" for t in LOSSES] + ["loss/total", "learning_rate", *DIAG_KEYS]:
            assert key in r, key
    first, last = rows[0], rows[-1]
    assert last["loss/total"] < 0.8 * first["loss/total"]
    assert last["loss/token_ce"] < first["loss/token_ce"]
    # the Trainer's own `loss` is the weighted total (same window average)
    assert first["loss"] == pytest.approx(first["loss/total"], rel=1e-4)

    events = list((Path(summary["run_dir"]) / "tb").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for t in LOSSES:
        assert f"loss/{t}" in tags  # TensorBoard names = logging.jsonl names (train/tracking.py)
    assert set(DIAG_KEYS) <= tags
    tb_total = [e.value for e in acc.Scalars("loss/total")]
    assert tb_total[0] == pytest.approx(first["loss/total"], rel=1e-5) and len(tb_total) == 5
    assert [e.step for e in acc.Scalars("eval_rollout/f1")] == [4, 8]  # never the stock eval/rollout/f1

    final = Path(summary["final_checkpoint"])
    assert (final / "model.safetensors").exists() and (final / "preprocessor_config.json").exists()
    reloaded = load_model(str(final))
    assert reloaded.coord_ids == loaded.coord_ids
    torch.testing.assert_close(reloaded.model.lm_head.weight, loaded.model.lm_head.weight)


@pytest.mark.slow
def test_resume_continues_with_same_step_lr_and_parameters(synth, tmp_path):
    from transformers import TrainerCallback

    from vlmdet.rundir import RunDir
    from vlmdet.train.cli import build_trainer, train

    over = {"training.max_steps": 6, "training.save_steps": 3, "training.warmup_steps": 2,
            "training.lr_scheduler_type": "linear", "training.lr_scheduler_kwargs": "{}"}
    straight = train(_cfg(synth, tmp_path / "a", **over), ["test"])

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                control.should_training_stop = True

    cfg_b = _cfg(synth, tmp_path / "b", **over)
    run = RunDir.create(cfg_b, ["test"])
    trainer, _ = build_trainer(cfg_b, run)
    trainer.add_callback(StopAt())
    trainer.train()
    assert trainer.state.global_step == 3 and (run.root / "checkpoint-3").is_dir()

    resumed = train(cfg_b, ["test"], resume=True)
    assert resumed["resumed_from"].endswith("checkpoint-3")
    assert resumed["global_step"] == straight["global_step"] == 6

    state_a = json.loads((Path(straight["run_dir"]) / "checkpoint-6" / "trainer_state.json").read_text())
    state_b = json.loads((Path(resumed["run_dir"]) / "checkpoint-6" / "trainer_state.json").read_text())
    lr_a = [h["learning_rate"] for h in state_a["log_history"] if "learning_rate" in h]
    lr_b = [h["learning_rate"] for h in state_b["log_history"] if "learning_rate" in h]
    assert lr_a == lr_b and len(lr_a) == 3  # steps 2, 4, 6: same schedule across the resume

    from safetensors.torch import load_file

    wa = load_file(str(Path(straight["final_checkpoint"]) / "model.safetensors"))
    wb = load_file(str(Path(resumed["final_checkpoint"]) / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    # the logged losses after the resume match the straight run's
    loss_a = [r["loss/total"] for r in _log_rows(straight["run_dir"]) if "loss" in r]
    loss_b = [r["loss/total"] for r in _log_rows(resumed["run_dir"]) if "loss" in r]
    assert loss_b[-1] == pytest.approx(loss_a[-1], rel=1e-4)


@pytest.mark.slow
def test_gradient_accumulation_scales_loss_once(synth, tmp_path):
    """GAS=2: the Trainer divides each micro-batch loss by 2 and sums, so its logged `loss` equals the
    window mean of `loss/total` over the micro-batches (it would be 2x if the scaling were wrong)."""
    from vlmdet.train.cli import train

    cfg = _cfg(synth, tmp_path, **{"training.max_steps": 2, "training.logging_steps": 1,
                                   "training.per_device_train_batch_size": 1, "training.gradient_accumulation_steps": 2})
    summary = train(cfg, ["test"])
    rows = [r for r in _log_rows(summary["run_dir"]) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["loss"] == pytest.approx(r["loss/total"], rel=1e-4)


def _decoder_update_fraction(synth, out, dtype):
    """Share of the decoder's 2-D weight elements that one Trainer step (bf16 autocast on CPU, AdamW,
    lr 1e-5, constant schedule) changes, with the model weights loaded in `dtype`."""
    from vlmdet.model.load import load_model
    from vlmdet.rundir import RunDir
    from vlmdet.train.cli import build_trainer

    cfg = _cfg(synth, out, **{"training.max_steps": 1, "training.bf16": "true", "training.extra": "{use_cpu: true}",
                              "training.learning_rate": "1e-5", "training.lr_scheduler_type": "constant",
                              "training.lr_scheduler_kwargs": "{}", "training.report_to": "[]"})
    loaded = load_model("tiny", dtype)
    before = {k: v.detach().clone() for k, v in loaded.model.named_parameters() if ".layers." in k and v.ndim == 2}
    trainer, _ = build_trainer(cfg, RunDir.create(cfg, ["test"]), loaded)
    trainer.train()
    params = dict(loaded.model.named_parameters())
    changed = sum(int((params[k].detach() != w).sum()) for k, w in before.items())
    return changed / sum(w.numel() for w in before.values())


@pytest.mark.slow
def test_default_mixed_precision_updates_every_weight_and_pure_bf16_does_not(synth, tmp_path):
    """The default (fp32 weights + `training.bf16` autocast) moves every decoder weight in one step at
    lr 1e-5; bf16 weights under a plain AdamW move only a minority (an update below half a bf16 step
    rounds away), which is why `train` refuses that combination (next test)."""
    from vlmdet.config import UPDATE_FRACTION_BF16

    fp32 = _decoder_update_fraction(synth, tmp_path / "fp32", "float32")
    bf16 = _decoder_update_fraction(synth, tmp_path / "bf16", "bfloat16")
    assert fp32 > 0.99
    assert bf16 < 0.5
    assert bf16 == pytest.approx(UPDATE_FRACTION_BF16, abs=0.05)  # the figure the refusal quotes


@pytest.mark.parametrize(
    "over, refused",
    [
        ({"model.dtype": "bfloat16"}, True),
        ({"model.dtype": "float16"}, True),
        ({"model.dtype": "float32"}, False),
        ({"model.dtype": "bfloat16", "training.deepspeed": "configs/deepspeed/zero2.json"}, False),
        ({"model.dtype": "bfloat16", "training.fsdp": "full_shard"}, False),
    ],
)
def test_half_precision_weights_with_a_plain_optimizer_are_refused(tmp_path, over, refused):
    from vlmdet.config import check_training_precision
    from vlmdet.errors import UsageError

    cfg = load_config(TINY_CFG, [f"{k}={v}" for k, v in over.items()])
    if refused:
        with pytest.raises(UsageError, match=r"^model.dtype: .*float32 with training.bf16: true"):
            check_training_precision(cfg)
    else:
        check_training_precision(cfg)


def test_train_refuses_bf16_weights_before_writing_anything(tmp_path, capsys):
    from vlmdet.cli import main

    rc = main(["train", str(TINY_CFG), f"output_dir={tmp_path / 'runs'}", "model.dtype=bfloat16"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "model.dtype: bfloat16 weights trained by a plain optimizer" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ callbacks


def test_save_processor_carries_the_source_processor_and_chat_template_files(tmp_path):
    """A source with the files of a real Qwen3-VL checkpoint: each reaches the written checkpoint
    byte for byte (the ones the tokenizer / image processor write themselves are kept)."""
    import shutil

    from vlmdet.model.load import load_model, tiny_checkpoint_path
    from vlmdet.train.callbacks import PROCESSOR_FILES, save_processor

    src = shutil.copytree(tiny_checkpoint_path(), tmp_path / "src")
    extra = {"processor_config.json": '{"processor_class": "Qwen3VLProcessor"}',
             "video_preprocessor_config.json": '{"video_processor_type": "Qwen3VLVideoProcessor"}',
             "chat_template.json": '{"chat_template": "{{ messages }}"}'}
    for name, text in extra.items():
        (src / name).write_text(text)
    loaded = load_model(str(src))
    out = tmp_path / "ckpt"
    out.mkdir()
    save_processor(loaded, out)
    for name in PROCESSOR_FILES:
        assert (out / name).is_file(), name
    for name, text in extra.items():
        assert (out / name).read_text() == text
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).convert_tokens_to_ids("<|coord_7|>") == loaded.coord_ids[7]


def test_eval_due_table():
    from vlmdet.config import EvalConfig
    from vlmdet.train.callbacks import eval_due

    cases = [
        (EvalConfig(eval_steps=100, steps=[]), {100: True, 200: True, 150: False, 0: False}),
        (EvalConfig(eval_steps=0, steps=[30, 60]), {30: True, 60: True, 100: False}),
        (EvalConfig(eval_steps=50, steps=[7]), {7: True, 50: True, 51: False}),
    ]
    for cfg, expect in cases:
        for step, due in expect.items():
            assert eval_due(step, cfg) is due, (cfg, step)


class _State:
    def __init__(self, step, zero=True):
        self.global_step = step
        self.is_world_process_zero = zero


def test_run_log_callback_writes_numbers_with_step(tmp_path):
    from vlmdet.rundir import RunDir
    from vlmdet.train.callbacks import RunLogCallback

    cb = RunLogCallback(RunDir(tmp_path))
    cb.on_log(None, _State(7), None, logs={"loss": 1.5, "loss/w1": torch.tensor(0.25), "note": "x", "nan": float("nan")})
    cb.on_log(None, _State(8, zero=False), None, logs={"loss": 2.0})  # other ranks write nothing
    rows = _log_rows(tmp_path)
    assert len(rows) == 1
    assert rows[0]["step"] == 7 and rows[0]["loss"] == 1.5 and rows[0]["loss/w1"] == 0.25
    assert rows[0]["nan"] is None and "note" not in rows[0]


def test_rollout_eval_callback_requests_due_steps_and_runs_the_runner():
    from vlmdet.config import Config
    from vlmdet.train.callbacks import RolloutEvalCallback

    calls = []

    def run_rollout_eval(**kw):
        assert kw["log"] is False and kw["records"] == ["r1"]  # logged once, by DetTrainer.evaluate
        calls.append((kw["step"], kw["model"], kw["model"].training, torch.is_grad_enabled()))
        return {"eval_rollout/f1": 0.5}

    cfg = Config()
    cfg.eval.eval_steps, cfg.eval.steps = 2, [3]
    model = torch.nn.Linear(2, 2)
    cb = RolloutEvalCallback(cfg, run=None, loaded=types.SimpleNamespace(model=model), records=["r1"],
                             runner=run_rollout_eval)
    control = types.SimpleNamespace(should_evaluate=False)
    requested = []
    for step in (1, 2, 3, 4, 5):
        control.should_evaluate = step == 5  # the Trainer's flow callback asks at the last step: overruled
        cb.on_step_end(None, _State(step), control)
        requested.append(control.should_evaluate)
    assert requested == [False, True, True, True, False]
    wrapped = types.SimpleNamespace(module=model)  # a DDP-style wrapper: generation uses the module inside
    assert cb.evaluate(wrapped, 4) == {"eval_rollout/f1": 0.5}
    assert calls == [(4, model, False, False)]  # eval mode, no grad
    assert model.training  # restored
    idle = RolloutEvalCallback(cfg, run=None, loaded=None, records=[], runner=run_rollout_eval)
    idle.on_step_end(None, _State(2), control)
    assert control.should_evaluate is False  # no val records: never
