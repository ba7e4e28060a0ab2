"""Rollout throughput: HF `generate` (HFRollout) vs a colocated vLLM engine (VLLMRollout), side by side.

Same checkpoint (default: the shipped demo Stage-1 checkpoint), same prompts (the demo prompt on
synthetic 128x128 val images), greedy, `--max-new-tokens` per answer. For each batch size (number of
records per `generate` call; HF runs them as one padded batch, vLLM schedules them itself) the two
backends alternate `--repeats` times and the best (shortest) call of each is reported, as
generated tokens/s and samples/s, with the vLLM/HF ratio. Before timing: one warm-up call of each,
a check that both backends produced the same tokens, and the cost of one weight push into the engine
(`WeightSync.push(force=True)`, median of 5).

Needs the vLLM environment (`scripts/setup.sh vllm`):

    .venv-vllm/bin/python benchmarks/bench_rollout.py [--batches 1 16 64] [--repeats 3]
        [--max-new-tokens 96] [--threads 1] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped demo Stage-1)")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import torch

    torch.set_num_threads(args.threads)
    from vlmdet.config import PromptConfig, RolloutConfig
    from vlmdet.data.records import load_records
    from vlmdet.data.synth import make_synth
    from vlmdet.demo import shipped_stage1
    from vlmdet.evaluate.rollout import HFRollout
    from vlmdet.evaluate.vllm_rollout import VLLMRollout
    from vlmdet.model.load import load_model

    ckpt = args.checkpoint or str(shipped_stage1())
    tmp = tempfile.mkdtemp(prefix="bench_rollout_")
    make_synth(tmp, n_train=1, n_val=max(args.batches), seed=3)
    records = load_records(os.path.join(tmp, "val.jsonl"))
    loaded = load_model(ckpt)
    prompt = PromptConfig(system="You detect objects.", user="List every object in the image as CoordJSON.")
    base = RolloutConfig(max_new_tokens=args.max_new_tokens, vllm_kv_cache_gib=0.25, vllm_max_model_len=1024)

    t0 = time.perf_counter()
    vl = VLLMRollout(loaded, base, prompt)
    print(f"vLLM engine start: {time.perf_counter() - t0:.1f} s")
    pushes = [vl.sync.push(loaded.model, force=True)["seconds"] for _ in range(5)]
    mb = vl.last_sync["bytes"] / 2**20
    print(f"weight push: {statistics.median(pushes) * 1e3:.1f} ms median of 5 ({mb:.1f} MiB of parameters)")

    print(f"threads {args.threads}, max_new_tokens {args.max_new_tokens}, best of {args.repeats}, checkpoint {ckpt}")
    print("| batch | HF tokens/s | vLLM tokens/s | HF samples/s | vLLM samples/s | vLLM / HF |")
    print("|---|---|---|---|---|---|")
    for b in args.batches:
        recs = records[:b]
        hf = HFRollout(loaded, dataclasses.replace(base, batch_size=b), prompt, progress=False)
        a, c = hf.generate(recs), vl.generate(recs)  # warm-up, and the same answers from both
        same = sum(x.token_ids == y.token_ids for x, y in zip(a, c))
        best = {"hf": None, "vllm": None}
        for _ in range(args.repeats):
            for name, be in (("hf", hf), ("vllm", vl)):
                t = time.perf_counter()
                out = be.generate(recs)
                dt = time.perf_counter() - t
                if best[name] is None or dt < best[name][0]:
                    best[name] = (dt, sum(len(r.token_ids) for r in out))
        (th, nh), (tv, nv) = best["hf"], best["vllm"]
        print(f"| {b} | {nh / th:.0f} | {nv / tv:.0f} | {b / th:.2f} | {b / tv:.2f} | {th / tv:.2f}x |"
              f"  ({same}/{b} answers token-identical)")


if __name__ == "__main__":
    main()
