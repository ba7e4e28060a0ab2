"""The process side of tests/test_multiprocess.py: one launch runs several scenarios, one after another.

    python tests/multirank_worker.py PLAN.json OUT_DIR                              one process
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/multirank_worker.py PLAN.json OUT_DIR

PLAN.json is a list of scenarios `{"name": str, "kind": one of SCENARIOS, ...its arguments}`. On 2 ranks all
scenarios share one gloo process group (each Trainer reuses it; transformers resets accelerate's state per
TrainingArguments), so the launch pays the interpreter, torch and transformers start-up once instead of once
per scenario. Each scenario's per-rank results are gathered to rank 0, which writes `OUT_DIR/<name>.json`
(`[rank 0's, rank 1's, ...]`); a scenario that raises writes `OUT_DIR/<name>.rank<r>.err` (its traceback)
and the launch goes on with the next one. Scenarios with `"fsdp": true` run with tests/cpu_fsdp.py's shim
(accelerate's FSDP plugin on gloo CPU ranks); the plan puts them last, since the shim keeps the plugin of
the first FSDP state for every later one."""

from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

TESTS = Path(__file__).resolve().parent


@contextmanager
def patched(owner, name: str, value):
    """`owner.name = value` (or `owner[name] = value` for a dict) for one scenario."""
    get, put = (owner.__getitem__, owner.__setitem__) if isinstance(owner, dict) else \
        ((lambda k: getattr(owner, k)), (lambda k, v: setattr(owner, k, v)))
    old = get(name)
    put(name, value)
    try:
        yield
    finally:
        put(name, old)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def ab_ddp(spec: dict) -> dict:
    """Stage-2 AB through the CLI's train(): every step's logs and Channel-B telemetry groups of this rank,
    and its parameters after training (sums and a strided sample)."""
    import torch

    import vlmdet.train.trainer as tr
    from vlmdet.config import load_config
    from vlmdet.train.cli import train
    from vlmdet.train.forward import unwrap

    local = {"logs": [], "groups": {}, "model": None}
    real_loss, real_b = tr.OBJECTIVES[2], tr.channel_b_loss

    def stage2_loss(trainer, model, batch):
        loss, logs = real_loss(trainer, model, batch)
        local["logs"].append((int(trainer.state.global_step), dict(logs)))
        local["model"] = model
        return loss, logs

    def channel_b_loss(model, loaded, records, cfg, step, backend=None):
        total, logs, groups = real_b(model, loaded, records, cfg, step, backend)
        local["groups"][step] = groups
        return total, logs, groups

    with patched(tr.OBJECTIVES, 2, stage2_loss), patched(tr, "channel_b_loss", channel_b_loss):
        summary = train(load_config(spec["config"], spec["overrides"]), ["test_multiprocess"])
    flat = torch.cat([p.detach().flatten() for p in unwrap(local["model"]).parameters()])
    return {"summary": summary, "ddp": type(local["model"]).__name__, "logs": local["logs"], "groups": local["groups"],
            "param_sum": float(flat.double().sum()), "param_abs": float(flat.double().abs().sum()),
            "params": flat.tolist()[:2000:7]}


def parity(spec: dict) -> dict:
    """train() with the stage's objective recorded: `{"logs": [(step, logs, wrapper type)], "summary"}` of the
    training steps of this rank."""
    import vlmdet.train.trainer as tr
    from vlmdet.config import load_config
    from vlmdet.train.cli import train

    cfg = load_config(spec["config"], spec["overrides"])
    logs, real = [], tr.OBJECTIVES[cfg.stage]

    def recorded(trainer, model, batch):
        loss, lg = real(trainer, model, batch)
        if model.training:
            logs.append((int(trainer.state.global_step), dict(lg), type(model).__name__))
        return loss, lg

    with patched(tr.OBJECTIVES, cfg.stage, recorded):
        summary = train(cfg, ["parity"])
    return {"logs": logs, "summary": summary}


def rollout_eval(spec: dict) -> dict:
    """run_rollout_eval on tests/test_runner.py's five records with its forced answers (rank 0 writes the
    records, every rank reads them): this rank's metrics and how many answers it generated."""
    import test_runner as trn

    from vlmdet.data.records import load_records
    from vlmdet.evaluate.runner import run_rollout_eval
    from vlmdet.model.load import load_model
    from vlmdet.rundir import RunDir

    dist, work = _dist(), Path(spec["work"])
    if dist is None or dist.get_rank() == 0:
        work.mkdir(parents=True, exist_ok=True)
        trn.write_val(work)
    if dist is not None:
        dist.barrier()
    loaded = load_model("tiny")
    cfg = trn.make_cfg(rollout={"batch_size": 1})
    backend = trn.forced_backend(loaded, cfg, trn.ANSWERS)
    metrics = run_rollout_eval(loaded, load_records(work / "val.jsonl"), cfg, run_dir=RunDir(work / "run"), step=7,
                               backend=backend)
    return {"metrics": metrics, "generated": [len(backend.rollouts)]}


def best_checkpoint(spec: dict) -> dict:
    """train() with the rollout eval's backend forcing answer set n at eval call n (nothing; the test_runner
    answers, F1 6/13; only s1, F1 4/9; ...): what each Trainer.evaluate returned, per step."""
    import test_runner as trn

    import vlmdet.evaluate.runner as runner
    import vlmdet.train.trainer as trainer_mod
    from vlmdet.config import load_config
    from vlmdet.train.cli import train

    empty = {k: trn.answer() for k in trn.ANSWERS}
    sets = [empty, trn.ANSWERS, {**empty, "s1_valid": trn.ANSWERS["s1_valid"]}]
    calls, returned = [], []
    real_evaluate = trainer_mod.DetTrainer.evaluate

    def make_backend(loaded, cfg, **kw):
        answers = sets[min(len(calls), len(sets) - 1)]
        calls.append(len(calls))
        return trn.forced_backend(loaded, cfg, answers)

    def evaluate(self, *a, **kw):
        metrics = real_evaluate(self, *a, **kw)
        returned.append((int(self.state.global_step), metrics.get("eval_rollout/f1")))
        return metrics

    with patched(runner, "make_backend", make_backend), patched(trainer_mod.DetTrainer, "evaluate", evaluate):
        summary = train(load_config(spec["config"], spec["overrides"]), ["eval_worker"])
    return {"returned": returned, "summary": summary}


SCENARIOS = {"ab_ddp": ab_ddp, "parity": parity, "rollout_eval": rollout_eval, "best_checkpoint": best_checkpoint}


def main(plan_path: str, out_dir: str) -> int:
    sys.path.insert(0, str(TESTS))  # test_runner (forced answers) and cpu_fsdp
    import torch.distributed as dist

    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    out = Path(out_dir)
    for spec in json.loads(Path(plan_path).read_text()):
        if spec.get("fsdp"):
            import cpu_fsdp  # noqa: F401  (patches accelerate's state on import)
        try:
            mine = SCENARIOS[spec["kind"]](spec)
        except Exception:
            (out / f"{spec['name']}.rank{rank}.err").write_text(traceback.format_exc())
            continue
        ranks = [None] * dist.get_world_size() if dist.is_initialized() else [mine]
        if dist.is_initialized():
            dist.all_gather_object(ranks, mine)
        if rank == 0:
            (out / f"{spec['name']}.json").write_text(json.dumps(ranks))
    if dist.is_initialized():  # end the gloo threads before the interpreter does (else: abort at exit)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
