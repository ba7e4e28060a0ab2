"""Stage-2 AB under `torchrun --nproc_per_node 2` (gloo on CPU): Channel-A and Channel-B steps with
DDP, parameters in sync across ranks, metrics reduced across ranks, one set of artifacts (rank 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Runs inside each torchrun worker: trains through the real CLI code path, records every rank's own
# per-step logs and Channel-B telemetry groups, then compares parameters across ranks.
WORKER = r'''
import json, sys
import torch
import torch.distributed as dist
import vlmdet.train.channel_b as cb
import vlmdet.train.trainer as tr
from vlmdet.config import load_config
from vlmdet.train.cli import train
from vlmdet.train.forward import unwrap

out_path, config, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
local = {"logs": [], "groups": {}, "model": None}
real_loss, real_b = tr.OBJECTIVES[2], tr.channel_b_loss

def stage2_loss(trainer, model, batch):
    step = int(trainer.state.global_step)
    loss, logs = real_loss(trainer, model, batch)
    local["logs"].append((step, dict(logs)))
    local["model"] = model
    return loss, logs

def channel_b_loss(model, loaded, records, cfg, step, backend=None):
    total, logs, groups = real_b(model, loaded, records, cfg, step, backend)
    local["groups"][step] = groups
    return total, logs, groups

tr.OBJECTIVES[2], tr.channel_b_loss = stage2_loss, channel_b_loss
summary = train(load_config(config, overrides), ["test_multiprocess"])
net = unwrap(local["model"])
flat = torch.cat([p.detach().flatten() for p in net.parameters()])
mine = {"rank": dist.get_rank(), "ddp": type(local["model"]).__name__, "logs": local["logs"],
        "groups": local["groups"], "param_sum": float(flat.double().sum()), "param_abs": float(flat.double().abs().sum()),
        "params": flat.tolist()[:2000:7]}
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, mine)
if dist.get_rank() == 0:
    with open(out_path, "w") as f:
        json.dump({"summary": summary, "ranks": gathered}, f)
if dist.is_initialized():  # end the gloo threads before the interpreter does (else: abort at exit)
    dist.destroy_process_group()
'''


@pytest.mark.slow
def test_torchrun_two_ranks_trains_both_channels(tmp_path):
    from vlmdet.data.synth import make_synth

    data = tmp_path / "data"
    make_synth(data, n_train=8, n_val=2, seed=0, size=64)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    result = tmp_path / "result.json"
    runs = tmp_path / "runs"
    overrides = [
        "model.name_or_path=tiny", f"data.train={data / 'train.jsonl'}", f"data.val={data / 'val.jsonl'}",
        f"output_dir={runs}", "training.max_steps=4", "training.per_device_train_batch_size=2",
        "training.logging_steps=1", "training.warmup_steps=0", "training.report_to=[]", "training.save_steps=1000",
        "training.ddp_backend=gloo", "stage2.b_ratio=0.5", "eval.eval_steps=0", "eval.steps=[2]", "eval.max_samples=2",
        "rollout.max_new_tokens=16", "rollout.batch_size=2", "monitor.draw_images=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(result), str(ROOT / "configs" / "stage2" / "ab_mixed.yaml"), *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    res = json.loads(result.read_text())
    r0, r1 = res["ranks"]
    assert r0["ddp"] == r1["ddp"] == "DistributedDataParallel"
    assert res["summary"]["global_step"] == 4

    # both ranks ran A, B, A, B on different samples
    for r in (r0, r1):
        assert [(s, lg["stage2/channel_b"]) for s, lg in r["logs"]] == [(0, 0.0), (1, 1.0), (2, 0.0), (3, 1.0)]
    assert r0["logs"][0][1]["loss/token_ce"] != r1["logs"][0][1]["loss/token_ce"]
    # Channel-A steps ran their second iteration on the suffix rows against the kept prefix, under DDP
    assert [lg["stage2/prefix_reused"] for r in (r0, r1) for s, lg in r["logs"] if s in (0, 2)] == [1.0] * 4

    # gradients were all-reduced: parameters identical on both ranks after 4 updates
    assert r0["param_sum"] == r1["param_sum"] and r0["param_abs"] == r1["param_abs"]
    assert r0["params"] == r1["params"]

    # one set of artifacts, written by rank 0
    run = runs / "stage2_ab_mixed"
    events = [json.loads(line) for line in (run / "logging.jsonl").read_text().splitlines()]
    train_ev = {e["step"]: e for e in events if "loss" in e}
    assert sorted(train_ev) == [1, 2, 3, 4] and len([e for e in events if "loss" in e]) == 4
    assert (run / "checkpoint-final" / "model.safetensors").exists() and (run / "config.yaml").exists()
    evals = [e for e in events if any(k.startswith("eval_rollout/") for k in e)]
    assert [e["step"] for e in evals] == [2]  # the rollout eval ran once (rank 0) and was logged once
    assert json.loads((run / "eval" / "step_000002" / "metrics.json").read_text())["step"] == 2
    assert (run / "monitor_dumps" / "step_000002.json").exists()
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["step_000002"]

    # cross-rank reduction: A-step means over ranks; B-step telemetry as global ratios
    for step in (0, 2):
        a0, a1 = r0["logs"][step][1], r1["logs"][step][1]
        for key in ("coord_diag/coord_tokens", "loss/token_ce", "coord_diag/coord_vocab_mass_mean"):
            assert train_ev[step + 1][key] == pytest.approx((a0[key] + a1[key]) / 2, rel=1e-6)
    for step in (1, 3):
        groups = r0["groups"][str(step)] + r1["groups"][str(step)]
        for key in ("rollout/recall", "rollout/gen_tokens_mean", "rollout/gt_objects_mean", "rollout/failed_rate"):
            num = sum(m[key] * w for m, w in groups if key in m)
            den = sum(w for m, w in groups if key in m)
            assert train_ev[step + 1][key] == pytest.approx(num / den, rel=1e-6)
        rollouts = sum(w for m, w in groups if "rollout/gt_objects_mean" in m)
        assert rollouts == 4  # 2 samples per rank


# ------------------------------------------------------------------------------------------------
# Multi-rank runs against one process: the same samples, the same updates, the same losses.
#
# With per-device batch b on W ranks, rank r's micro-batch of step s is batch W*s + r of the shared
# seeded sampler; one process with batch b and W accumulation steps sees the same batches as the
# micro-batches of step s, and (losses are per-micro-batch means, the Trainer divides by the
# accumulation steps, DDP averages gradients) makes the same update. So rank r's losses at step s
# must equal the single process's losses of micro-batch r of step s.

PARITY_WORKER = r'''
import json, os, sys
if os.environ.get("CPU_FSDP"):  # tests/cpu_fsdp.py: accelerate's FSDP plugin on gloo CPU ranks
    sys.path.insert(0, os.environ["CPU_FSDP"])
    import cpu_fsdp
import torch.distributed as dist
import vlmdet.train.trainer as tr
from vlmdet.config import load_config
from vlmdet.train.cli import train

out_path, config, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = load_config(config, overrides)
logs, real = [], tr.OBJECTIVES[cfg.stage]

def recorded(trainer, model, batch):
    loss, lg = real(trainer, model, batch)
    if model.training:
        logs.append((int(trainer.state.global_step), dict(lg), type(model).__name__))
    return loss, lg

tr.OBJECTIVES[cfg.stage] = recorded
summary = train(cfg, ["parity"])
mine = {"logs": logs, "summary": summary}
if dist.is_available() and dist.is_initialized():
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
else:
    ranks = [mine]
if int(os.environ.get("RANK", "0")) == 0:
    with open(out_path, "w") as f:
        json.dump(ranks, f)
if dist.is_initialized():  # end the gloo threads before the interpreter does (else: abort at exit)
    dist.destroy_process_group()
'''

ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def run_parity_worker(tmp_path: Path, name: str, config: Path, overrides: list[str], nproc: int, timeout: int = 240,
                      env: dict | None = None):
    """Run PARITY_WORKER on `nproc` ranks (torchrun, gloo) or in one process (`nproc` = 1); returns
    the per-rank results `[{"logs": [(step, logs, wrapper type)], "summary": {...}}]`."""
    worker = tmp_path / "parity_worker.py"
    worker.write_text(PARITY_WORKER)
    result = tmp_path / f"{name}.json"
    launch = [sys.executable]
    if nproc > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        overrides = [*overrides, "training.ddp_backend=gloo"]
    cmd = [*launch, str(worker), str(result), str(config), *overrides, f"run_name={name}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, **ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(result.read_text())


def assert_rank_losses_match(ranks: list[dict], single: dict, steps: int, rel: float = 1e-4) -> None:
    """Rank r's logged `loss/*` at step s == the single process's micro-batch r of step s."""
    world = len(ranks)
    for r, res in enumerate(ranks):
        assert [s for s, _, _ in res["logs"]] == list(range(steps))
    assert [s for s, _, _ in single["logs"]] == [s for s in range(steps) for _ in range(world)]
    for s in range(steps):
        for r, res in enumerate(ranks):
            got, want = res["logs"][s][1], single["logs"][s * world + r][1]
            keys = sorted(k for k in want if k.startswith("loss/"))
            assert keys and keys == sorted(k for k in got if k.startswith("loss/"))
            for k in keys:
                assert got[k] == pytest.approx(want[k], rel=rel, abs=1e-6), (s, r, k)
    # the ranks saw different samples (else the comparison would not show the sharding)
    assert ranks[0]["logs"][0][1]["loss/token_ce"] != ranks[1]["logs"][0][1]["loss/token_ce"]


def parity_overrides(tmp_path: Path, steps: int, *extra: str) -> list[str]:
    from vlmdet.data.synth import make_synth

    data = tmp_path / "data"
    if not (data / "train.jsonl").exists():
        make_synth(data, n_train=8, n_val=4, seed=0, size=64)
    return [
        "model.name_or_path=tiny", f"data.train={data / 'train.jsonl'}", f"data.val={data / 'val.jsonl'}",
        f"output_dir={tmp_path / 'runs'}", f"training.max_steps={steps}", "training.per_device_train_batch_size=2",
        "training.logging_steps=1", "training.warmup_steps=0", "training.report_to=[]", "training.save_steps=1000",
        "eval.eval_steps=0", "monitor.draw_images=false", *extra,
    ]


@pytest.mark.slow
def test_ddp_gradient_checkpointing_channel_a_n2_matches_one_process(tmp_path):
    """DDP + gradient checkpointing (the default non-reentrant kind) + Channel-A N = 2: the 2-rank losses
    of 3 steps equal one process's accumulated micro-batches."""
    steps = 3
    common = parity_overrides(tmp_path, steps, "training.gradient_checkpointing=true", "stage2.n_softctx_iter=2",
                              "training.learning_rate=0.01")
    config = ROOT / "configs" / "stage2" / "a_only.yaml"
    ranks = run_parity_worker(tmp_path, "ddp_gc", config, common, nproc=2)
    (single,) = run_parity_worker(tmp_path, "one_gc", config, [*common, "training.gradient_accumulation_steps=2"], 1)
    assert {w for r in ranks for _, _, w in r["logs"]} == {"DistributedDataParallel"}
    assert all(lg["stage2/n_forwards"] == 2.0 for r in ranks for _, lg, _ in r["logs"])
    assert_rank_losses_match(ranks, single, steps)


# ------------------------------------------------------------------------------------------------
# Multi-rank rollout eval: each rank generates its shard, rank 0 gathers; the numbers of one process.
# The answers are forced (tests/test_runner.py's logits processor), so the metrics are known by hand.

EVAL_WORKER = r'''
import json, os, sys
from pathlib import Path
import torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import test_runner as tr
from vlmdet.data.records import load_records
from vlmdet.evaluate.runner import run_rollout_eval
from vlmdet.model.load import load_model
from vlmdet.rundir import RunDir

work, result = Path(sys.argv[2]), sys.argv[3]
if "WORLD_SIZE" in os.environ:
    dist.init_process_group("gloo")
rank = dist.get_rank() if dist.is_initialized() else 0
loaded = load_model("tiny")
cfg = tr.make_cfg(rollout={"batch_size": 1})
records = load_records(tr.write_val(work)) if rank == 0 else None
if dist.is_initialized():
    dist.barrier()
records = load_records(work / "val.jsonl")
backend = tr.forced_backend(loaded, cfg, tr.ANSWERS)
metrics = run_rollout_eval(loaded, records, cfg, run_dir=RunDir(work / "run"), step=7, backend=backend)
mine = {"metrics": metrics, "generated": [len(backend.rollouts)]}
ranks = [None] * (dist.get_world_size() if dist.is_initialized() else 1)
if dist.is_initialized():
    dist.all_gather_object(ranks, mine)
else:
    ranks = [mine]
if rank == 0:
    Path(result).write_text(json.dumps(ranks))
if dist.is_initialized():  # end the gloo threads before the interpreter does (else: abort at exit)
    dist.destroy_process_group()
'''


def run_eval_worker(tmp_path: Path, name: str, nproc: int) -> tuple[list[dict], Path]:
    work = tmp_path / name
    work.mkdir()
    worker = tmp_path / "eval_worker.py"
    worker.write_text(EVAL_WORKER)
    launch = [sys.executable]
    if nproc > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    result = work / "result.json"
    proc = subprocess.run([*launch, str(worker), str(ROOT / "tests"), str(work), str(result)], cwd=tmp_path,
                          env={**os.environ, **ENV}, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(result.read_text()), work / "run"


@pytest.mark.slow
def test_two_rank_rollout_eval_equals_one_process(tmp_path):
    ranks, run2 = run_eval_worker(tmp_path, "two", 2)
    (single,), run1 = run_eval_worker(tmp_path, "one", 1)
    # 5 records: rank 0 generated records 0, 2, 4 and rank 1 records 1, 3; both returned rank 0's metrics
    assert [r["generated"] for r in ranks] == [[3], [2]] and single["generated"] == [5]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    got, want = ranks[0]["metrics"], single["metrics"]
    assert sorted(got) == sorted(want)
    for k in want:
        if not k.startswith("eval_time/"):
            assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), k
    # the hand-computed numbers of tests/test_runner.py::test_hand_computed_metrics
    assert (got["eval_rollout/tp"], got["eval_rollout/fp"], got["eval_rollout/fn"]) == (3, 3, 4)
    assert got["eval_rollout/f1"] == pytest.approx(6 / 13) and got["eval_rollout/hit_max_new_tokens_rate"] == 0.2
    # rank 0 wrote the predictions of every record, in record order, like one process
    preds = lambda run: [json.loads(line) for line in (run / "eval" / "step_000007" / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    p2, p1 = preds(run2), preds(run1)
    assert [p["image_id"] for p in p2] == ["s1_valid", "s2_drift", "s3_leak", "s4_trunc", "s5_empty"]
    assert [[o["bbox_2d"] for o in p["objects"]] for p in p2] == [[o["bbox_2d"] for o in p["objects"]] for p in p1]
    for a, b in zip(p2, p1):
        assert [o.get("score") for o in a["objects"]] == pytest.approx([o.get("score") for o in b["objects"]], rel=1e-6)


TRAIN_EVAL_WORKER = r'''
import json, os, sys
from pathlib import Path
import torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import test_runner as tr
import vlmdet.evaluate.runner as runner
import vlmdet.train.trainer as trainer_mod
from vlmdet.config import load_config
from vlmdet.train.cli import train

result, config, overrides = sys.argv[2], sys.argv[3], sys.argv[4:]
# eval call n forces answer set n: nothing, the test_runner answers (F1 6/13), only s1 (F1 4/9), ...
EMPTY = {k: tr.answer() for k in tr.ANSWERS}
SETS = [EMPTY, tr.ANSWERS, {**EMPTY, "s1_valid": tr.ANSWERS["s1_valid"]}]
calls = []

def make_backend(loaded, cfg, **kw):
    answers = SETS[min(len(calls), len(SETS) - 1)]
    calls.append(len(calls))
    return tr.forced_backend(loaded, cfg, answers)

runner.make_backend = make_backend
returned = []
real_evaluate = trainer_mod.DetTrainer.evaluate

def evaluate(self, *a, **kw):
    metrics = real_evaluate(self, *a, **kw)
    returned.append((int(self.state.global_step), metrics.get("eval_rollout/f1")))
    return metrics

trainer_mod.DetTrainer.evaluate = evaluate
summary = train(load_config(config, overrides), ["eval_worker"])
ranks = [None] * dist.get_world_size()
dist.all_gather_object(ranks, {"returned": returned, "summary": summary})
if dist.get_rank() == 0:
    Path(result).write_text(json.dumps(ranks))
if dist.is_initialized():  # end the gloo threads before the interpreter does (else: abort at exit)
    dist.destroy_process_group()
'''


@pytest.mark.slow
def test_rollout_metric_picks_the_best_checkpoint_and_stops_early_on_two_ranks(tmp_path):
    """metric_for_best_model: eval_rollout/f1 with load_best_model_at_end and early stopping (patience 1)
    on 2 ranks: evals at steps 1, 2, 3 give F1 0, 6/13, 4/9; training stops at step 3 (max_steps 4), the
    best checkpoint is step 2's, and the final model is its weights."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "tests"))
    from test_runner import MAX_NEW, write_val

    (tmp_path / "val").mkdir()
    val = write_val(tmp_path / "val")
    overrides = parity_overrides(tmp_path, 4, f"data.val={val}", "eval.eval_steps=1", "training.save_steps=1",
                                 "training.save_total_limit=2", "eval.early_stopping_patience=1",
                                 "training.load_best_model_at_end=true", "training.metric_for_best_model=eval_rollout/f1",
                                 f"rollout.max_new_tokens={MAX_NEW}", "rollout.batch_size=1",
                                 "training.ddp_backend=gloo", "run_name=best")
    worker = tmp_path / "train_eval_worker.py"
    worker.write_text(TRAIN_EVAL_WORKER)
    result = tmp_path / "best.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(ROOT / "tests"), str(result), str(ROOT / "configs" / "stage1" / "tiny.yaml"), *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    r0, r1 = json.loads(result.read_text())
    expected = [[1, 0.0], [2, pytest.approx(6 / 13)], [3, pytest.approx(4 / 9)]]
    assert r0["returned"] == r1["returned"] == expected  # every rank got rank 0's metrics
    assert r0["summary"]["global_step"] == 3  # early stopping: one eval without a better F1
    run = tmp_path / "runs" / "best"
    state = json.loads((run / "checkpoint-final" / "trainer_state.json").read_text())
    assert state["best_metric"] == pytest.approx(6 / 13) and state["best_global_step"] == 2
    assert Path(state["best_model_checkpoint"]).name == "checkpoint-2"
    # save_total_limit 2: step 1's checkpoint rotated out
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-final"]
    final, best, last = (load_file(run / c / "model.safetensors") for c in ("checkpoint-final", "checkpoint-2", "checkpoint-3"))
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert not all(torch.equal(final[k], last[k]) for k in last)  # step 3 moved the weights: the best was loaded
    events = [json.loads(line) for line in (run / "logging.jsonl").read_text().splitlines()]
    assert [[e["step"], e["eval_rollout/f1"]] for e in events if "eval_rollout/f1" in e] == expected


FSDP2 = ["training.fsdp=full_shard auto_wrap",
         "training.fsdp_config={version: 2, transformer_layer_cls_to_wrap: [Qwen3VLTextDecoderLayer, Qwen3VLVisionBlock]}"]


@pytest.mark.slow
def test_fsdp2_full_shard_channel_a_em_detach_matches_one_process(tmp_path):
    """FSDP2 full sharding through accelerate's plugin (TrainingArguments fsdp / fsdp_config version 2):
    Channel-A N = 2 em_detach with gradient checkpointing (the soft context is written inside the
    sharded forward) on 2 gloo ranks gives the losses of one process accumulating the same
    micro-batches, for 3 steps. (unroll: the A steps of the AB test below.)"""
    steps = 3
    common = parity_overrides(tmp_path, steps, "stage2.n_softctx_iter=2", "stage2.softctx_grad_mode=em_detach",
                              "training.learning_rate=0.01", "training.gradient_checkpointing=true")
    config = ROOT / "configs" / "stage2" / "a_only.yaml"
    ranks = run_parity_worker(tmp_path, "fsdp", config, [*common, *FSDP2], nproc=2, env={"CPU_FSDP": str(ROOT / "tests")})
    (single,) = run_parity_worker(tmp_path, "one", config, [*common, "training.gradient_accumulation_steps=2"], 1)
    assert {w for r in ranks for _, _, w in r["logs"]} == {"FSDPQwen3VLForConditionalGeneration"}
    assert all(lg["stage2/n_forwards"] == 2.0 for r in ranks for _, lg, _ in r["logs"])
    assert_rank_losses_match(ranks, single, steps)


@pytest.mark.slow
def test_fsdp2_channel_b_and_rollout_eval_match_one_process(tmp_path):
    """FSDP2 full sharding, Stage-2 AB (A, B, A; Channel-A N = 2 unroll): Channel-B generates through the
    sharded model on every rank (synced_gpus) and the rollout eval at step 2 runs sharded; losses and
    eval metrics equal one process's."""
    steps = 3
    common = parity_overrides(tmp_path, steps, "stage2.b_ratio=0.5", "eval.steps=[2]", "eval.max_samples=4",
                              "rollout.max_new_tokens=16", "rollout.batch_size=1", "training.learning_rate=0.01")
    config = ROOT / "configs" / "stage2" / "ab_mixed.yaml"
    ranks = run_parity_worker(tmp_path, "fsdp_ab", config, [*common, *FSDP2], nproc=2,
                              env={"CPU_FSDP": str(ROOT / "tests")})
    (single,) = run_parity_worker(tmp_path, "one_ab", config, [*common, "training.gradient_accumulation_steps=2"], 1)
    assert {w for r in ranks for _, _, w in r["logs"]} == {"FSDPQwen3VLForConditionalGeneration"}
    assert [lg["stage2/channel_b"] for _, lg, _ in ranks[0]["logs"]] == [0.0, 1.0, 0.0]
    assert_rank_losses_match(ranks, single, steps)
    evals = []
    for res in (ranks[0], single):
        rows = [json.loads(line) for line in (Path(res["summary"]["run_dir"]) / "logging.jsonl").read_text().splitlines()]
        (row,) = [r for r in rows if "eval_rollout/gen_tokens_mean" in r]
        evals.append(row)
    got, want = evals
    assert got["step"] == want["step"] == 2 and got["eval_rollout/samples"] == 4
    for k in want:
        if k.startswith("eval_rollout/"):
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
