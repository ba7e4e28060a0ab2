"""Channel-A cost on the tiny Qwen3-VL, measured side by side in one run.

Step = `channel_a_loss` forward + backward on one fixed batch (the Stage-2 loss mix of
configs/stage2/a_only.yaml). Reported, each relative to N = 1:
- step time (median of --repeats, the variants interleaved round-robin so drift hits all alike) of
  N = 2 unroll, N = 2 em_detach, N = 3 unroll, N = 3 em_detach;
- activation memory: bytes of the distinct non-parameter tensors that autograd holds for backward
  when the forward pass ends (counted with `torch.autograd.graph.saved_tensors_hooks`, storages
  deduplicated), i.e. what a GPU would keep allocated between forward and backward; plus, on CUDA,
  `torch.cuda.max_memory_allocated` above the model's own footprint.
Targets: N = 2 unroll <= 2.05x N = 1 time; em_detach <= 0.75x unroll activation memory at N = 3.

    python benchmarks/bench_channel_a.py [--batch 8] [--size 128] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

VARIANTS = [  # (label, n_softctx_iter, softctx_grad_mode)
    ("N=1", 1, "unroll"),
    ("N=2 unroll", 2, "unroll"),
    ("N=2 em_detach", 2, "em_detach"),
    ("N=3 unroll", 3, "unroll"),
    ("N=3 em_detach", 3, "em_detach"),
]


def make_batch(loaded, n: int, size: int):
    import random

    from PIL import Image

    from vlmdet.format import render_answer
    from vlmdet.model.chat import encode_example
    from vlmdet.model.collate import Collator

    rng = random.Random(0)
    exs = []
    for i in range(n):
        objs = []
        for _ in range(4):
            x1, y1 = rng.randrange(0, 800), rng.randrange(0, 800)
            objs.append(("red circle", (x1, y1, x1 + rng.randrange(20, 199), y1 + rng.randrange(20, 199))))
        img = Image.new("RGB", (size, size), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        exs.append(encode_example(loaded, img, render_answer(objs)))
    return Collator(loaded.pad_id)(exs)


class SavedBytes:
    """Counts distinct non-parameter storages saved for backward while active."""

    def __init__(self, params):
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}

    def pack(self, t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self.param_ptrs:
            self.seen[ptr] = st.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def step(model, batch, cfg, coord_ids, count: SavedBytes | None = None) -> float:
    import torch

    from vlmdet.train.channel_a import channel_a_loss

    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    if count is None:
        loss, _ = channel_a_loss(model, batch, cfg.losses, coord_ids, cfg.stage2)
    else:
        with torch.autograd.graph.saved_tensors_hooks(count.pack, lambda t: t):
            loss, _ = channel_a_loss(model, batch, cfg.losses, coord_ids, cfg.stage2)
    loss.backward()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (multiple of 32)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    import torch

    from vlmdet.config import load_config
    from vlmdet.model.load import load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = load_model("tiny")
    model = loaded.model.to(args.device).train()
    batch = {k: (v.to(args.device) if isinstance(v, torch.Tensor) else v) for k, v in make_batch(loaded, args.batch, args.size).items()}
    cfg = load_config("configs/stage2/a_only.yaml")
    B, L = batch["input_ids"].shape
    n_coord = int((batch["slot_class"] == 3).sum())
    print(f"tiny Qwen3-VL, batch {B} x {L} tokens ({n_coord} coord slots), images {args.size}px, "
          f"device {args.device}, torch threads {args.threads}, repeats {args.repeats}")

    def cfg_for(n, mode):
        cfg.stage2.n_softctx_iter, cfg.stage2.softctx_grad_mode = n, mode
        return cfg

    # activation memory (one counted step per variant)
    mem, cuda_peak = {}, {}
    for label, n, mode in VARIANTS:
        counter = SavedBytes(model.parameters())
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        step(model, batch, cfg_for(n, mode), loaded.coord_ids, counter)
        mem[label] = counter.total
        if args.device == "cuda":
            cuda_peak[label] = torch.cuda.max_memory_allocated() - base

    # step time, interleaved; one warm-up round
    times: dict[str, list[float]] = {label: [] for label, _, _ in VARIANTS}
    for r in range(args.repeats + 1):
        for label, n, mode in VARIANTS:
            t = step(model, batch, cfg_for(n, mode), loaded.coord_ids)
            if r:
                times[label].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"\n{'variant':<15} {'step ms':>9} {'x N=1':>7} {'act MiB':>9} {'x N=1':>7}" + ("  cuda peak MiB" if cuda_peak else ""))
    for label, _, _ in VARIANTS:
        line = (f"{label:<15} {med[label] * 1e3:9.1f} {med[label] / med['N=1']:7.2f} "
                f"{mem[label] / 2**20:9.1f} {mem[label] / mem['N=1']:7.2f}")
        if cuda_peak:
            line += f"  {cuda_peak[label] / 2**20:13.1f}"
        print(line)
    t2 = med["N=2 unroll"] / med["N=1"]
    m3 = mem["N=3 em_detach"] / mem["N=3 unroll"]
    print(f"\nN=2 unroll / N=1 step time: {t2:.2f}x (target <= 2.05x) {'OK' if t2 <= 2.05 else 'MISSED'}")
    print(f"em_detach / unroll activation memory at N=3: {m3:.2f}x (target <= 0.75x) {'OK' if m3 <= 0.75 else 'MISSED'}")
    if cuda_peak:
        print(f"em_detach / unroll CUDA peak at N=3: {cuda_peak['N=3 em_detach'] / cuda_peak['N=3 unroll']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
