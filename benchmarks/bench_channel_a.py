"""Channel-A cost on the tiny Qwen3-VL, measured side by side in one run.

Step = `channel_a_loss` forward + backward on one fixed batch (the Stage-2 loss mix of
configs/stage2/a_only.yaml). Token mixes (`--mix`), per sample:
- `realistic`: a 448 px image (196 image tokens) and 5 objects (67 answer tokens), the proportions of
  a detection answer on a real image;
- `demo`: a 128 px image (16 image tokens) and 3 objects (41 answer tokens), the demo data's images.
Variants: N = 1, then N = 2 and 3 under unroll and em_detach, each with prefix reuse (`reuse`, the
default `stage2.reuse_prefix: true`) and with the full recompute (`full`). Reported, each relative
to N = 1:
- step time (median of --repeats, the variants interleaved round-robin so drift hits all alike): wall
  time on CUDA, the process's CPU time on a CPU (robust to other jobs on a shared machine);
- activation memory: bytes of the distinct non-parameter tensors that autograd holds for backward
  when the forward pass ends (counted with `torch.autograd.graph.saved_tensors_hooks`, storages
  deduplicated), i.e. what a GPU would keep allocated between forward and backward; plus, on CUDA,
  `torch.cuda.max_memory_allocated` above the model's own footprint.
Targets (prefix reuse, realistic mix): N = 2 unroll <= 1.4x N = 1 step time, N = 3 em_detach <= 1.6x,
N = 2 unroll activation memory <= 1.5x N = 1; full recompute: em_detach <= 0.75x unroll activation
memory at N = 3.

    python benchmarks/bench_channel_a.py [--mix realistic|demo] [--batch 8] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

MIXES = {"realistic": {"size": 448, "objects": 5}, "demo": {"size": 128, "objects": 3}}

VARIANTS = [("N=1", 1, "unroll", True)] + [  # (label, n_softctx_iter, softctx_grad_mode, reuse_prefix)
    (f"N={n} {mode}" + ("" if reuse else " full"), n, mode, reuse)
    for reuse in (True, False) for n in (2, 3) for mode in ("unroll", "em_detach")
]


def make_batch(loaded, n: int, size: int, n_objects: int):
    import random

    from PIL import Image

    from vlmdet.format import render_answer
    from vlmdet.model.chat import encode_example
    from vlmdet.model.collate import Collator

    rng = random.Random(0)
    exs = []
    for i in range(n):
        objs = []
        for _ in range(n_objects):
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
    """Seconds of one step: wall time on CUDA (synchronized), this process's CPU time on a CPU (with one
    torch thread that is the compute, and other jobs on a shared machine do not inflate it)."""
    import torch

    from vlmdet.train.channel_a import channel_a_loss

    clock = time.perf_counter if torch.cuda.is_available() else time.process_time
    model.zero_grad(set_to_none=True)
    t0 = clock()
    if count is None:
        loss, _ = channel_a_loss(model, batch, cfg.losses, coord_ids, cfg.stage2)
    else:
        with torch.autograd.graph.saved_tensors_hooks(count.pack, lambda t: t):
            loss, _ = channel_a_loss(model, batch, cfg.losses, coord_ids, cfg.stage2)
    loss.backward()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return clock() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", choices=sorted(MIXES), default="realistic", help="token mix (see above)")
    ap.add_argument("--batch", type=int, default=8)
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
    mix = MIXES[args.mix]
    batch = make_batch(loaded, args.batch, mix["size"], mix["objects"])
    batch = {k: (v.to(args.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    cfg = load_config("configs/stage2/a_only.yaml")
    B, L = batch["input_ids"].shape
    coord = batch["slot_class"] == 3
    n_img = int((batch["input_ids"] == loaded.image_token_id).sum()) // B
    n_answer = int((batch["labels"] != -100).sum()) // B
    suffix = L - (int(coord.nonzero()[:, 1].min()) - 1)
    print(f"tiny Qwen3-VL, {args.mix} mix: batch {B} x {L} tokens ({n_img} image, {n_answer} answer tokens per sample; "
          f"{int(coord.sum())} coord slots; suffix {suffix} rows), images {mix['size']}px, "
          f"device {args.device}, torch threads {args.threads}, repeats {args.repeats}")

    def cfg_for(n, mode, reuse):
        cfg.stage2.n_softctx_iter, cfg.stage2.softctx_grad_mode, cfg.stage2.reuse_prefix = n, mode, reuse
        return cfg

    # activation memory (one counted step per variant)
    mem, cuda_peak = {}, {}
    for label, n, mode, reuse in VARIANTS:
        counter = SavedBytes(model.parameters())
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        step(model, batch, cfg_for(n, mode, reuse), loaded.coord_ids, counter)
        mem[label] = counter.total
        if args.device == "cuda":
            cuda_peak[label] = torch.cuda.max_memory_allocated() - base

    # step time, interleaved; one warm-up round
    times: dict[str, list[float]] = {label: [] for label, *_ in VARIANTS}
    for r in range(args.repeats + 1):
        for label, n, mode, reuse in VARIANTS:
            t = step(model, batch, cfg_for(n, mode, reuse), loaded.coord_ids)
            if r:
                times[label].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"\n{'variant':<20} {'step ms':>9} {'x N=1':>7} {'act MiB':>9} {'x N=1':>7}" + ("  cuda peak MiB" if cuda_peak else ""))
    for label, *_ in VARIANTS:
        line = (f"{label:<20} {med[label] * 1e3:9.1f} {med[label] / med['N=1']:7.2f} "
                f"{mem[label] / 2**20:9.1f} {mem[label] / mem['N=1']:7.2f}")
        if cuda_peak:
            line += f"  {cuda_peak[label] / 2**20:13.1f}"
        print(line)
    checks = [  # (summary, value, target)
        ("N=2 unroll / N=1 step time", med["N=2 unroll"] / med["N=1"], 1.4),
        ("N=3 em_detach / N=1 step time", med["N=3 em_detach"] / med["N=1"], 1.6),
        ("N=2 unroll / N=1 activation memory", mem["N=2 unroll"] / mem["N=1"], 1.5),
        ("full recompute: em_detach / unroll activation memory at N=3",
         mem["N=3 em_detach full"] / mem["N=3 unroll full"], 0.75),
    ]
    print()
    for text, value, target in checks:
        print(f"{text}: {value:.2f}x (target <= {target}x) {'OK' if value <= target else 'MISSED'}")
    print(f"full recompute N=2 unroll / N=1 step time: {med['N=2 unroll full'] / med['N=1']:.2f}x")
    if cuda_peak:
        print(f"em_detach / unroll CUDA peak at N=3: {cuda_peak['N=3 em_detach'] / cuda_peak['N=3 unroll']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
