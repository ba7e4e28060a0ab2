"""The whole vlmdet path at Qwen3-VL-2B dimensions on a CPU, with wall time, CPU time and peak RSS per phase.

Model: a randomly initialized Qwen3-VL with the public Qwen3-VL-2B text and vision dimensions (`REAL`:
vocabulary rows 151,936, hidden 2048, MLP 6144, 16 query / 8 key-value heads of 128, mRoPE sections
[24, 20, 20], tied embeddings; vision hidden 1024, MLP 4096, 16 heads, patch 16, merge 2, output 2048)
but only `--text-layers` decoder layers and `--vision-blocks` vision blocks (the 2B has 28 and 24), the
real special-token ids (`<|im_end|>` 151645, `<|image_pad|>` 151655, ...) and Qwen's byte-level BPE
rebuilt from qwen.tiktoken (`vlmdet.model.qwen_bpe`). Data: `--images` generated JPEGs of `--size`
(default 640x480) with 10-30 boxes each, written as a COCO instances file.

Phases, each a separate process (so each has its own peak RSS, read from `os.wait4`), all through the
`vlmdet` CLI on the shipped Qwen3-VL-2B configs, with only the step count, batch size, data paths,
`training.bf16=false` (fp32 on a CPU) and short rollouts (`--new-tokens`: a random model never stops)
overridden:
  build         the random checkpoint (this script, `--build`): model, Qwen tokenizer, image processor
  expand-vocab  `vlmdet expand-vocab`: + 1000 coordinate tokens (151,669 -> 152,669 tokens)
  doctor        `vlmdet doctor` (exit 1 = a check failed, reported, not an error here)
  data coco     `vlmdet data coco` on the generated COCO file
  stage-1       `vlmdet train configs/stage1/qwen3vl_2b.yaml`, 1 step
  channel-A     `vlmdet train configs/stage2/qwen3vl_2b_a_only.yaml`, 1 step (N = 2, unroll)
  channel-B     `vlmdet train configs/stage2/qwen3vl_2b_ab_mixed.yaml stage2.b_ratio=1`, 1 step
  eval          `vlmdet eval` of the Channel-A checkpoint
Prints a Markdown table (and writes it to `<out>/realdim.md`, the raw numbers to `<out>/realdim.json`).
`--small` runs the same phases at toy dimensions (hidden 64, one layer and block, 2 images of 128x96)
with the same tokenizer, all in this process (no per-phase peak RSS): a check that the path works.

    python benchmarks/realdim.py [--out /tmp/vlmdet-realdim] [--text-layers 2] [--vision-blocks 2]
                                 [--images 4] [--size 640x480] [--batch 2] [--new-tokens 64] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Qwen3-VL-2B dimensions (the public config) and the toy ones of --small
REAL = {
    "text": {"hidden_size": 2048, "intermediate_size": 6144, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 128, "mrope_section": [24, 20, 20], "rope_theta": 5000000.0},
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "num_position_embeddings": 2304},
}
SMALL = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 32, "mrope_section": [8, 4, 4], "rope_theta": 5000000.0},
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_position_embeddings": 144},
}


def model_config(dims: dict, text_layers: int, vision_blocks: int):
    """`Qwen3VLConfig` with `dims`, the layer counts, Qwen's vocabulary rows and special-token ids."""
    from transformers import Qwen3VLConfig

    from vlmdet.model.qwen_bpe import QWEN_VOCAB_ROWS

    t, v = dims["text"], dims["vision"]
    return Qwen3VLConfig(
        text_config={
            "vocab_size": QWEN_VOCAB_ROWS, "hidden_size": t["hidden_size"], "intermediate_size": t["intermediate_size"],
            "num_hidden_layers": text_layers, "num_attention_heads": t["num_attention_heads"],
            "num_key_value_heads": t["num_key_value_heads"], "head_dim": t["head_dim"],
            "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "pad_token_id": 151643,
            "bos_token_id": 151643, "eos_token_id": 151645,
            "rope_parameters": {"rope_type": "default", "rope_theta": t["rope_theta"],
                                "mrope_section": t["mrope_section"], "mrope_interleaved": True},
        },
        vision_config={
            "depth": vision_blocks, "hidden_size": v["hidden_size"], "intermediate_size": v["intermediate_size"],
            "num_heads": v["num_heads"], "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "out_hidden_size": t["hidden_size"], "num_position_embeddings": v["num_position_embeddings"],
            "deepstack_visual_indexes": list(range(min(vision_blocks, text_layers))),
            "hidden_act": "gelu_pytorch_tanh",
        },
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def build(out: Path, dims: dict, text_layers: int, vision_blocks: int) -> None:
    """The random checkpoint: model (seed 0), Qwen's tokenizer (no coordinate tokens yet), image processor."""
    import torch
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    from vlmdet.model.qwen_bpe import build_qwen_tokenizer
    from vlmdet.model.tiny import tiny_image_processor  # Qwen3-VL's patchify: patch 16, merge 2, mean/std 0.5

    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(model_config(dims, text_layers, vision_blocks))
    model.generation_config = GenerationConfig(eos_token_id=[151645], pad_token_id=151643, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    build_qwen_tokenizer().save_pretrained(out)
    tiny_image_processor().save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"built {out}: {n / 1e6:.1f} M parameters", flush=True)


def make_coco(root: Path, n_images: int, size: tuple[int, int], seed: int = 0) -> Path:
    """`n_images` JPEGs of `size` with 10-30 filled boxes of COCO categories each, and their
    `annotations/instances_train.json`; returns the instances file."""
    from PIL import Image, ImageDraw

    from vlmdet.model.chat import COCO_80_CLASS_NAMES

    rng = random.Random(seed)
    w, h = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i in range(1, n_images + 1):
        img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(10, 30)):
            bw, bh = rng.randint(w // 20, w // 3), rng.randint(h // 20, h // 3)
            x, y = rng.randint(0, w - bw), rng.randint(0, h - bh)
            draw.rectangle([x, y, x + bw, y + bh], fill=tuple(rng.randrange(256) for _ in range(3)))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": rng.randint(1, 80),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        img.save(root / "images" / f"{i:012d}.jpg", quality=90)
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h})
    cats = [{"id": k + 1, "name": name} for k, name in enumerate(COCO_80_CLASS_NAMES)]
    path = root / "annotations" / "instances_train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def run_phase(name: str, argv: list[str], log: Path, ok_codes=(0,)) -> dict:
    """Run one phase as a child process; wall seconds, CPU seconds (user + system) and peak RSS (MiB)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "VLMDET_NO_PROGRESS": "1"}
    with open(log, "ab") as f:
        f.write(f"\n=== {name}: {' '.join(argv)}\n".encode())
        f.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    return _row(name, rc, wall, usage.ru_utime + usage.ru_stime, round(usage.ru_maxrss / 1024), log, ok_codes)


def run_in_process(name: str, fn, log: Path, ok_codes=(0,)) -> dict:
    """Run one phase in this process (`--small`): wall and CPU seconds, no peak RSS of its own."""
    t0, c0 = time.perf_counter(), time.process_time()
    rc = fn()
    return _row(name, rc, time.perf_counter() - t0, time.process_time() - c0, None, log, ok_codes)


def _row(name, rc, wall, cpu, rss, log, ok_codes) -> dict:
    row = {"phase": name, "rc": rc, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mib": rss}
    print(f"{name:13s} rc {rc}  wall {row['wall_s']:7.1f} s  cpu {row['cpu_s']:7.1f} s  peak RSS "
          f"{'-' if rss is None else rss} MiB", flush=True)  # Linux: ru_maxrss is in KiB
    if rc not in ok_codes:
        tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
        raise SystemExit(f"realdim: phase {name} exited {rc}; the end of {log}:\n" + "\n".join(tail))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--vision-blocks", type=int, default=2)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--size", default="640x480", help="WxH of the generated images (multiples of 32)")
    p.add_argument("--batch", type=int, default=2, help="per-device batch of the training steps")
    p.add_argument("--new-tokens", type=int, default=64, help="rollout.max_new_tokens (Channel-B and eval)")
    p.add_argument("--small", action="store_true", help="toy dimensions, 1 layer / block, 2 images of 128x96")
    p.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # the build phase's own process
    args = p.parse_args(argv)
    dims = SMALL if args.small else REAL
    if args.small:
        args.text_layers, args.vision_blocks, args.images, args.size, args.batch, args.new_tokens = 1, 1, 2, "128x96", 1, 8
    if args.build:
        build(args.build, dims, args.text_layers, args.vision_blocks)
        return 0

    work = (args.out or Path(tempfile.mkdtemp(prefix="vlmdet-realdim-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "realdim.log"
    size = tuple(int(v) for v in args.size.lower().split("x"))
    src, ckpt, data, runs = work / "Qwen3-VL-random", work / "Qwen3-VL-random-coord", work / "data", work / "runs"
    for path in (src, ckpt, data, runs, work / "eval"):
        shutil.rmtree(path, ignore_errors=True)
    instances = make_coco(work / "coco", args.images, size)
    train_jsonl = data / "train.jsonl"
    configs = ROOT / "configs"
    common = [f"data.train={train_jsonl}", f"data.val={train_jsonl}", f"output_dir={runs}",
              "training.max_steps=1", f"training.per_device_train_batch_size={args.batch}",
              "training.gradient_accumulation_steps=1", "training.warmup_steps=0", "training.logging_steps=1",
              "training.bf16=false", "training.dataloader_num_workers=0", "training.report_to=[]",
              f"eval.max_samples={args.batch}", f"rollout.max_new_tokens={args.new_tokens}",
              f"rollout.batch_size={args.batch}", "monitor.n_samples=1"]
    phases = [  # (name, `vlmdet` arguments, exit codes that count as done); None: the build
        ("build", None, (0,)),
        ("expand-vocab", ["expand-vocab", str(src), str(ckpt)], (0,)),
        ("doctor", ["doctor", str(ckpt)], (0, 1)),
        ("data coco", ["data", "coco", "--instances", str(instances), "--images", str(work / "coco" / "images"),
                       "--out", str(data), "--split", "train"], (0,)),
        ("stage-1", ["train", str(configs / "stage1/qwen3vl_2b.yaml"), f"model.name_or_path={ckpt}",
                     "run_name=stage1", *common], (0,)),
        ("channel-A", ["train", str(configs / "stage2/qwen3vl_2b_a_only.yaml"),
                       f"model.name_or_path={runs / 'stage1' / 'checkpoint-final'}", "run_name=stage2_a", *common], (0,)),
        ("channel-B", ["train", str(configs / "stage2/qwen3vl_2b_ab_mixed.yaml"),
                       f"model.name_or_path={runs / 'stage1' / 'checkpoint-final'}", "run_name=stage2_b",
                       "stage2.b_ratio=1.0", *common], (0,)),
        ("eval", ["eval", str(configs / "stage2/qwen3vl_2b_a_only.yaml"),
                  "--checkpoint", str(runs / "stage2_a" / "checkpoint-final"), "--data", str(train_jsonl),
                  "--out", str(work / "eval"), "--max-samples", str(args.images), "--no-progress",
                  f"output_dir={runs}", f"rollout.max_new_tokens={args.new_tokens}",
                  f"rollout.batch_size={args.batch}", "monitor.n_samples=1"], (0,)),
    ]
    print(f"realdim: {'small' if args.small else 'Qwen3-VL-2B'} dimensions, {args.text_layers} text layers, "
          f"{args.vision_blocks} vision blocks, {args.images} images {args.size}, batch {args.batch}; log {log}",
          flush=True)
    rows = []
    for name, cli_args, ok in phases:
        if args.small:  # one process: the phases' own output goes to the console
            from vlmdet.cli import main as vlmdet_main

            fn = (lambda: build(src, dims, args.text_layers, args.vision_blocks) or 0) if cli_args is None \
                else (lambda a=cli_args: vlmdet_main(a))
            rows.append(run_in_process(name, fn, log, ok))
        else:
            argv = [sys.executable, __file__, "--build", str(src), "--text-layers", str(args.text_layers),
                    "--vision-blocks", str(args.vision_blocks)] if cli_args is None \
                else [sys.executable, "-m", "vlmdet.cli", *cli_args]
            rows.append(run_phase(name, argv, log, ok))
    doctor_fails = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("FAIL ")] \
        if log.exists() else []
    table = ["| phase | wall s | CPU s | peak RSS MiB |", "|---|---:|---:|---:|"]
    table += [f"| {r['phase']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mib'] or '-'} |" for r in rows]
    text = "\n".join(table) + "\n" + (f"\ndoctor: {'; '.join(doctor_fails)}\n" if doctor_fails else "")
    print(text)
    (work / "realdim.md").write_text(text)
    (work / "realdim.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "phases": rows,
                                                   "doctor_fail": doctor_fails}, indent=2))
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
