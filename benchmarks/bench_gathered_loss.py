"""Peak memory and step time: vlmdet's gathered-logits Stage-1 loss vs the plain HF full-logits CE.

    python benchmarks/bench_gathered_loss.py [--vocab 152936] [--seq 2048] [--hidden 256]
                                             [--answer 512] [--objects 36] [--repeats 3] [--threads 1]

Workload (one sequence, a realistic Qwen3-VL vocabulary: 151,936 text tokens + 1,000 coord tokens):
the backbone output is a leaf `hidden [1, L, D]` (requires grad) and the output head a
`Linear(D, V)`; the last `--answer` positions are the labelled assistant span (`--objects` boxes:
4 coord slots each, 3 desc tokens, the rest structure), the rest is prompt + image (labels -100).
Each variant runs forward + backward from `hidden` to the loss, in a FRESH subprocess (so peak
memory is clean), one after the other in the same run:

  full      HF-style: logits = head(hidden) as [1, L, V] float32, shifted CE (ignore -100), mean
  gathered  vlmdet Stage-1: `objective.supervised_rows`, head on the gathered rows only, then
            `channel_a.pass_terms` (token CE + every coord term + text gate + coord_diag) and
            `objective.combine` with configs/stage1/tiny.yaml's weights

Peak memory is the process's peak RSS (`VmHWM` in /proc/self/status, reset through
/proc/self/clear_refs before each step) minus the RSS just before the step: the memory the loss
step itself needs on top of weights and inputs. Step time is the median over `--repeats` steps
after one warm-up step. CPU only (float32). The figures go in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _batch(a, torch):
    """labels / slot_class / coord_bins [1, L] for the labelled answer span at the end."""
    from vlmdet.model.chat import COORD, DESC, STRUCT

    L, V = a.seq, a.vocab
    g = torch.Generator().manual_seed(0)
    coord_ids = list(range(V - 1000, V))
    ids = torch.randint(0, V - 1000, (1, L), generator=g)
    slot = torch.zeros(1, L, dtype=torch.int8)
    bins = torch.full((1, L), -1, dtype=torch.long)
    start = L - a.answer
    slot[0, start:] = STRUCT
    per_obj = a.answer // a.objects
    for o in range(a.objects):
        p = start + o * per_obj
        slot[0, p + 1 : p + 4] = DESC
        for k in range(4):
            b = int(torch.randint(0, 1000, (1,), generator=g))
            slot[0, p + 5 + 2 * k] = COORD
            bins[0, p + 5 + 2 * k] = b
            ids[0, p + 5 + 2 * k] = coord_ids[b]
    labels = torch.where(slot > 0, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "labels": labels, "slot_class": slot, "coord_bins": bins}, coord_ids


def child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    head = torch.nn.Linear(a.hidden, a.vocab, bias=False)
    hidden = torch.randn(1, a.seq, a.hidden, requires_grad=True)
    batch, coord_ids = _batch(a, torch)

    if a.variant == "full":

        def step():
            logits = head(hidden).float()  # [1, L, V]
            labels = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.view(-1, a.vocab), labels.reshape(-1), ignore_index=-100)
            loss.backward()
            return float(loss.detach())

    else:
        from vlmdet.config import load_config
        from vlmdet.train.channel_a import ChannelAOutput, pass_terms
        from vlmdet.train.objective import combine, supervised_rows, weights

        lc = load_config("configs/stage1/tiny.yaml").losses

        def step():
            rows = supervised_rows(batch, lc)
            ce = head(hidden[rows.ce_b, rows.ce_t])  # [Nc, V]
            coord = head(hidden[rows.coord_b, rows.coord_t])  # [Ns, V]
            out = ChannelAOutput(ce, coord, coord, None, 1)
            terms, _, _ = pass_terms(out, rows, coord_ids, lc, {})
            loss = combine(terms, weights(lc))
            loss.backward()
            return float(loss.detach())

    times, peaks = [], []
    for i in range(a.repeats + 1):
        hidden.grad = None
        head.weight.grad = None
        before = _status("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        peak = _status("VmHWM") - before
        if i > 0:  # the first step is a warm-up (allocator, grads allocated)
            times.append(dt)
            peaks.append(peak)
    print(json.dumps({"variant": a.variant, "time_s": statistics.median(times), "peak_bytes": max(peaks)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=152936)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--answer", type=int, default=512)
    p.add_argument("--objects", type=int, default=36)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", choices=("full", "gathered"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.variant:
        child(a)
        return
    if a.answer // a.objects < 13:
        p.error("--answer / --objects must be >= 13 tokens per object")
    res = {}
    for variant in ("full", "gathered"):
        cmd = [sys.executable, __file__, "--variant", variant] + [
            f"--{k}={getattr(a, k)}" for k in ("vocab", "seq", "hidden", "answer", "objects", "repeats", "threads")
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        res[variant] = json.loads(out)
    print(f"V={a.vocab} L={a.seq} D={a.hidden} labelled={a.answer} coord slots={4 * a.objects} threads={a.threads}")
    print(f"{'variant':<10} {'peak MiB':>10} {'step s':>8}")
    for v, r in res.items():
        print(f"{v:<10} {r['peak_bytes'] / 2**20:>10.0f} {r['time_s']:>8.3f}")
    f, g = res["full"], res["gathered"]
    print(f"gathered/full: peak memory {g['peak_bytes'] / f['peak_bytes']:.3f}x, step time {g['time_s'] / f['time_s']:.3f}x")


if __name__ == "__main__":
    main()
