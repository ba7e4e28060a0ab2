"""Stage-2 AB under `torchrun --nproc_per_node 2` (gloo on CPU): Channel-A and Channel-B steps with
DDP, parameters in sync across ranks, metrics reduced across ranks, one set of artifacts (rank 0); the
multi-rank runs against one process; FSDP2 full sharding.

Every 2-rank run of this module happens in ONE torchrun launch and every one-process reference run in ONE
plain launch (tests/multirank_worker.py runs the scenarios of `PLAN` one after another, each with its own
folder, data and run directory): each launch pays the interpreter, torch and transformers start-up once
instead of once per run. Each test asserts on its own scenarios' results, as it did on its own launches;
a scenario that raised fails its test with that traceback. The module's tests run in one xdist worker
(`xdist_group`; `make test` passes `--dist loadgroup`), so the launches happen once per suite run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multirank_worker.py"
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
FSDP2 = ["training.fsdp=full_shard auto_wrap",
         "training.fsdp_config={version: 2, transformer_layer_cls_to_wrap: [Qwen3VLTextDecoderLayer, Qwen3VLVisionBlock]}"]

pytestmark = pytest.mark.xdist_group("multirank")


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


def _parity(name: str, config: Path, overrides: list[str], two_ranks: bool, fsdp: bool = False) -> dict:
    """A parity scenario: on 2 ranks with gloo, else one process accumulating 2 micro-batches per step."""
    extra = ["training.ddp_backend=gloo"] if two_ranks else ["training.gradient_accumulation_steps=2"]
    return {"name": name, "kind": "parity", "config": str(config), "overrides": [*overrides, *extra, f"run_name={name}"],
            "fsdp": fsdp}


def build_plan(base: Path) -> tuple[list[dict], list[dict]]:
    """(2-rank scenarios, one-process scenarios), each test's in its own folder under `base` (the folder
    names are the tests'); the FSDP scenarios last (tests/multirank_worker.py)."""
    from vlmdet.data.synth import make_synth

    sys.path.insert(0, str(ROOT / "tests"))
    from test_runner import MAX_NEW, write_val

    two, one = [], []
    # test_torchrun_two_ranks_trains_both_channels
    d = base / "ab"
    make_synth(d / "data", n_train=8, n_val=2, seed=0, size=64)
    two.append({"name": "ab", "kind": "ab_ddp", "config": str(ROOT / "configs" / "stage2" / "ab_mixed.yaml"), "overrides": [
        "model.name_or_path=tiny", f"data.train={d / 'data' / 'train.jsonl'}", f"data.val={d / 'data' / 'val.jsonl'}",
        f"output_dir={d / 'runs'}", "training.max_steps=4", "training.per_device_train_batch_size=2",
        "training.logging_steps=1", "training.warmup_steps=0", "training.report_to=[]", "training.save_steps=1000",
        "training.ddp_backend=gloo", "stage2.b_ratio=0.5", "eval.eval_steps=0", "eval.steps=[2]", "eval.max_samples=2",
        "rollout.max_new_tokens=16", "rollout.batch_size=2", "monitor.draw_images=false"]})
    # test_ddp_gradient_checkpointing_channel_a_n2_matches_one_process
    d = base / "ddp_gc"
    common = parity_overrides(d, 3, "training.gradient_checkpointing=true", "stage2.n_softctx_iter=2",
                              "training.learning_rate=0.01")
    a_only = ROOT / "configs" / "stage2" / "a_only.yaml"
    two.append(_parity("ddp_gc", a_only, common, two_ranks=True))
    one.append(_parity("one_gc", a_only, common, two_ranks=False))
    # test_two_rank_rollout_eval_equals_one_process
    two.append({"name": "eval_two", "kind": "rollout_eval", "work": str(base / "eval" / "two")})
    one.append({"name": "eval_one", "kind": "rollout_eval", "work": str(base / "eval" / "one")})
    # test_rollout_metric_picks_the_best_checkpoint_and_stops_early_on_two_ranks
    d = base / "best"
    (d / "val").mkdir(parents=True)
    val = write_val(d / "val")
    two.append({"name": "best", "kind": "best_checkpoint", "config": str(ROOT / "configs" / "stage1" / "tiny.yaml"),
                "overrides": parity_overrides(
                    d, 4, f"data.val={val}", "eval.eval_steps=1", "training.save_steps=1", "training.save_total_limit=2",
                    "eval.early_stopping_patience=1", "training.load_best_model_at_end=true",
                    "training.metric_for_best_model=eval_rollout/f1", f"rollout.max_new_tokens={MAX_NEW}",
                    "rollout.batch_size=1", "training.ddp_backend=gloo", "run_name=best")})
    # test_fsdp2_full_shard_channel_a_em_detach_matches_one_process
    d = base / "fsdp"
    common = parity_overrides(d, 3, "stage2.n_softctx_iter=2", "stage2.softctx_grad_mode=em_detach",
                              "training.learning_rate=0.01", "training.gradient_checkpointing=true")
    two.append(_parity("fsdp", a_only, [*common, *FSDP2], two_ranks=True, fsdp=True))
    one.append(_parity("one", a_only, common, two_ranks=False))
    # test_fsdp2_channel_b_and_rollout_eval_match_one_process
    d = base / "fsdp_ab"
    common = parity_overrides(d, 3, "stage2.b_ratio=0.5", "eval.steps=[2]", "eval.max_samples=4",
                              "rollout.max_new_tokens=16", "rollout.batch_size=1", "training.learning_rate=0.01")
    ab_mixed = ROOT / "configs" / "stage2" / "ab_mixed.yaml"
    two.append(_parity("fsdp_ab", ab_mixed, [*common, *FSDP2], two_ranks=True, fsdp=True))
    one.append(_parity("one_ab", ab_mixed, common, two_ranks=False))
    return two, one


def _launch(plan: list[dict], out: Path, nproc: int) -> str:
    """Run the scenarios of `plan` in one launch (torchrun when `nproc` > 1); its output's tail."""
    out.mkdir(parents=True)
    (out / "plan.json").write_text(json.dumps(plan))
    launch = [sys.executable]
    if nproc > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*launch, str(WORKER), str(out / "plan.json"), str(out)]
    try:
        proc = subprocess.run(cmd, cwd=out, env={**os.environ, **ENV}, capture_output=True, text=True,
                              timeout=240 * len(plan))
    except subprocess.TimeoutExpired as err:
        return f"timed out after {err.timeout} s"
    return f"exit {proc.returncode}\n" + proc.stdout[-3000:] + proc.stderr[-6000:]


class Launches:
    """The two launches' results by scenario name; `result(name)` fails the calling test with the
    scenario's traceback (or the launch's output) when it has none."""

    def __init__(self, base: Path):
        self.base = base
        two, one = build_plan(base)
        self.out = {"two": base / "out_two", "one": base / "out_one"}
        self.tail = {"two": _launch(two, self.out["two"], 2), "one": _launch(one, self.out["one"], 1)}
        self.where = {**{s["name"]: "two" for s in two}, **{s["name"]: "one" for s in one}}

    def result(self, name: str) -> list[dict]:
        out = self.out[self.where[name]]
        path = out / f"{name}.json"
        if not path.exists():
            errors = "".join(p.read_text() for p in sorted(out.glob(f"{name}.rank*.err")))
            pytest.fail(f"scenario {name}: no result\n{errors or self.tail[self.where[name]]}")
        return json.loads(path.read_text())


@pytest.fixture(scope="module")
def launches(tmp_path_factory) -> Launches:
    return Launches(tmp_path_factory.mktemp("multirank"))


@pytest.mark.slow
def test_torchrun_two_ranks_trains_both_channels(launches):
    r0, r1 = launches.result("ab")
    runs = launches.base / "ab" / "runs"
    assert r0["ddp"] == r1["ddp"] == "DistributedDataParallel"
    assert r0["summary"]["global_step"] == 4

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


@pytest.mark.slow
def test_ddp_gradient_checkpointing_channel_a_n2_matches_one_process(launches):
    """DDP + gradient checkpointing (the default non-reentrant kind) + Channel-A N = 2: the 2-rank losses
    of 3 steps equal one process's accumulated micro-batches."""
    steps = 3
    ranks = launches.result("ddp_gc")
    (single,) = launches.result("one_gc")
    assert {w for r in ranks for _, _, w in r["logs"]} == {"DistributedDataParallel"}
    assert all(lg["stage2/n_forwards"] == 2.0 for r in ranks for _, lg, _ in r["logs"])
    assert_rank_losses_match(ranks, single, steps)


# ------------------------------------------------------------------------------------------------
# Multi-rank rollout eval: each rank generates its shard, rank 0 gathers; the numbers of one process.
# The answers are forced (tests/test_runner.py's logits processor), so the metrics are known by hand.

@pytest.mark.slow
def test_two_rank_rollout_eval_equals_one_process(launches):
    ranks, run2 = launches.result("eval_two"), launches.base / "eval" / "two" / "run"
    (single,), run1 = launches.result("eval_one"), launches.base / "eval" / "one" / "run"
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


@pytest.mark.slow
def test_rollout_metric_picks_the_best_checkpoint_and_stops_early_on_two_ranks(launches):
    """metric_for_best_model: eval_rollout/f1 with load_best_model_at_end and early stopping (patience 1)
    on 2 ranks: evals at steps 1, 2, 3 give F1 0, 6/13, 4/9; training stops at step 3 (max_steps 4), the
    best checkpoint is step 2's, and the final model is its weights."""
    from safetensors.torch import load_file

    r0, r1 = launches.result("best")
    expected = [[1, 0.0], [2, pytest.approx(6 / 13)], [3, pytest.approx(4 / 9)]]
    assert r0["returned"] == r1["returned"] == expected  # every rank got rank 0's metrics
    assert r0["summary"]["global_step"] == 3  # early stopping: one eval without a better F1
    run = launches.base / "best" / "runs" / "best"
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


@pytest.mark.slow
def test_fsdp2_full_shard_channel_a_em_detach_matches_one_process(launches):
    """FSDP2 full sharding through accelerate's plugin (TrainingArguments fsdp / fsdp_config version 2):
    Channel-A N = 2 em_detach with gradient checkpointing (the soft context is written inside the
    sharded forward) on 2 gloo ranks gives the losses of one process accumulating the same
    micro-batches, for 3 steps. (unroll: the A steps of the AB test below.)"""
    steps = 3
    ranks = launches.result("fsdp")
    (single,) = launches.result("one")
    assert {w for r in ranks for _, _, w in r["logs"]} == {"FSDPQwen3VLForConditionalGeneration"}
    assert all(lg["stage2/n_forwards"] == 2.0 for r in ranks for _, lg, _ in r["logs"])
    assert_rank_losses_match(ranks, single, steps)


@pytest.mark.slow
def test_fsdp2_channel_b_and_rollout_eval_match_one_process(launches):
    """FSDP2 full sharding, Stage-2 AB (A, B, A; Channel-A N = 2 unroll): Channel-B generates through the
    sharded model on every rank (synced_gpus) and the rollout eval at step 2 runs sharded; losses and
    eval metrics equal one process's."""
    steps = 3
    ranks = launches.result("fsdp_ab")
    (single,) = launches.result("one_ab")
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
