"""How much one run of AdamW steps moves the weights: fp32 master weights vs bf16 weights.

    python benchmarks/bench_precision.py [--steps 1 10] [--lr 1e-5]

For each step count, trains the tiny model twice from the same initial weights on the same synthetic
batches with `training.bf16: true` (bf16 autocast, on CPU through `use_cpu`), AdamW, a constant
learning rate and no warm-up: once with the weights loaded in float32 (fp32 master weights, the
default), once loaded in bfloat16 (a plain optimizer updates the bf16 weights themselves). Over the
2-D weights of the decoder layers it prints the share of elements that changed, the norm of the bf16
run's total update relative to the fp32 run's, and the cosine between the two updates. The figures go
in docs/BENCHMARKS.md; `config.UPDATE_FRACTION_*` quotes them in the refusal message.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def _train(data: Path, out: Path, dtype: str, steps: int, lr: float):
    from vlmdet.config import load_config
    from vlmdet.model.load import load_model
    from vlmdet.rundir import RunDir
    from vlmdet.train.cli import build_trainer

    over = {"data.train": data / "train.jsonl", "data.val": "null", "output_dir": out, "training.bf16": "true",
            "training.extra": "{use_cpu: true}", "training.learning_rate": lr, "training.max_steps": steps,
            "training.warmup_steps": 0, "training.per_device_train_batch_size": 2, "training.save_steps": 100000,
            "training.lr_scheduler_type": "constant", "training.lr_scheduler_kwargs": "{}",
            "training.report_to": "[]", "training.logging_steps": 1000, "eval.eval_steps": 0}
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/stage1/tiny.yaml", [f"{k}={v}" for k, v in over.items()])
    loaded = load_model("tiny", dtype)
    before = {k: v.detach().float().clone() for k, v in loaded.model.named_parameters() if ".layers." in k and v.ndim == 2}
    trainer, _ = build_trainer(cfg, RunDir.create(cfg, ["bench"], overwrite=True), loaded)
    trainer.train()
    params = dict(loaded.model.named_parameters())
    return {k: params[k].detach().float() - w for k, w in before.items()}


def main() -> None:
    import torch

    from vlmdet.data.synth import make_synth

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    p.add_argument("--lr", type=float, default=1e-5)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_synth(tmp / "data", n_train=4, n_val=1, seed=0, size=64)
        rows = []
        for steps in a.steps:
            d32 = _train(tmp / "data", tmp / "fp32", "float32", steps, a.lr)
            d16 = _train(tmp / "data", tmp / "bf16", "bfloat16", steps, a.lr)
            n = sum(d.numel() for d in d32.values())
            f32 = sum(int((d != 0).sum()) for d in d32.values()) / n
            f16 = sum(int((d != 0).sum()) for d in d16.values()) / n
            v32, v16 = torch.cat([d.flatten() for d in d32.values()]), torch.cat([d.flatten() for d in d16.values()])
            cos = torch.nn.functional.cosine_similarity(v16, v32, dim=0).item()
            rows.append((steps, f32, f16, (v16.norm() / v32.norm()).item(), cos))
    print(f"{'steps':>5}  {'changed fp32':>12}  {'changed bf16':>12}  {'|upd bf16|/|upd fp32|':>21}  {'cosine':>6}")
    for steps, f32, f16, ratio, cos in rows:
        print(f"{steps:>5}  {f32:>12.1%}  {f16:>12.1%}  {ratio:>21.2f}  {cos:>6.2f}")


if __name__ == "__main__":
    main()
