"""The GPU paths of vlmdet on one GPU, at Qwen3-VL-2B scale, in one run that prints one table.

    scripts/gpu_check.sh [--out DIR] [--cpu] [--tiny] [--keep]

Phases (each one row of the table: ok / FAILED: <first line of the error> / skipped: <why>):

  checkpoint   a randomly initialized Qwen3-VL with the public Qwen3-VL-2B dimensions (text: 28 layers,
               hidden 2048, 16 heads / 8 KV heads, head_dim 128, vocabulary 151936, tied head; vision: 24
               blocks, hidden 1024, deepstack 5/11/17) and Qwen's special-token ids (<|endoftext|> 151643,
               <|im_end|> 151645, <|image_pad|> 151655, ...), written without coordinate tokens, then
               `vlmdet expand-vocab` (coordinate ids 151669..152668). Tokenizer: the tiny model's word
               pieces placed below Qwen's special-token ids (not Qwen's BPE).
  stage1_bf16  Stage-1 (configs/stage1/qwen3vl_2b.yaml: fp32 weights, bf16 autocast, gradient
               checkpointing); the share of decoder-layer weight elements that changed must be >= 90 %
               (pure bf16 weights change about 16 % per AdamW step at lr 1e-5: docs/BENCHMARKS.md)
  logits_mem   one Stage-1 forward + backward on the same batch: vlmdet's gathered logits vs the plain
               Hugging Face loss over full [B, L, V] logits, peak GPU memory (torch.cuda.max_memory_allocated)
  channel_a    Stage-2 Channel-A N=2 (unroll; configs/stage2/qwen3vl_2b_a_only.yaml)
  em_detach    Channel-A N=3 em_detach (configs/stage2/qwen3vl_2b_a_only_em_detach.yaml)
  ab_mixed     AB mixed with stage2.b_ratio 0.5 (configs/stage2/qwen3vl_2b_ab_mixed.yaml): one A step and
               one Channel-B step (rollouts + matching)
  eval         rollout eval (HF generate) of the Stage-1 model on the validation images
  zero2        Stage-1 under DeepSpeed ZeRO-2 (configs/deepspeed/zero2.json) through torchrun, 1 process

`--cpu` runs on the CPU even where CUDA is present, in float32 (`training.bf16: false`: bf16 matrix
products take a slow generic path on CPUs); `--tiny` keeps the vocabulary and the special-token ids but
shrinks the model to 2 text layers / 2 vision blocks of small width, with fewer steps and shorter
rollouts (the test suite runs `--cpu --tiny`). Phases that need CUDA (logits_mem, zero2) say
"skipped: no CUDA" on a CPU. Writes DIR/gpu_check.md (the table) and DIR/gpu_check.json (the rows);
the work folder DIR/work (checkpoints, data, runs) is deleted unless `--keep`. Exit status 1 when a
phase failed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Qwen's added tokens from <|endoftext|> (id 151643) on, in id order: (token, special)
QWEN_ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
)
QWEN_FIRST_ADDED_ID = 151643

#: Qwen3-VL-2B-Instruct's public config (text and vision dimensions, token ids)
QWEN3_VL_2B = {
    "text_config": {
        "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
        "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "pad_token_id": 151643,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                            "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2048,
        "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17], "hidden_act": "gelu_pytorch_tanh",
    },
    "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "tie_word_embeddings": True,
}

#: --tiny: the same vocabulary and ids, 2 text layers and 2 vision blocks of small width
TINY_DIMENSIONS = {
    "text_config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "num_key_value_heads": 1, "head_dim": 64,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                        "mrope_section": [12, 10, 10], "mrope_interleaved": True}},
    "vision_config": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "out_hidden_size": 128,
                      "deepstack_visual_indexes": [1]},
}

#: per mode: synthetic image size, train / val images, steps per training phase, rollout tokens
SIZES = {
    "full": {"image": 448, "n_train": 8, "n_val": 4, "steps": 3, "max_new_tokens": 256, "batch": 2},
    "tiny": {"image": 64, "n_train": 4, "n_val": 2, "steps": 2, "max_new_tokens": 24, "batch": 2},
}

UPDATE_FRACTION_MIN = 0.90


def model_config(tiny: bool) -> dict:
    """Qwen3VLConfig keyword arguments: the 2B dimensions, with `TINY_DIMENSIONS` over them for --tiny."""
    kw = copy.deepcopy(QWEN3_VL_2B)
    if tiny:
        for part, dims in TINY_DIMENSIONS.items():
            kw[part].update(copy.deepcopy(dims))
    return kw


def qwen_id_tokenizer():
    """A `PreTrainedTokenizerFast` whose special tokens sit at Qwen's ids: the tiny tokenizer's base
    vocabulary (bytes + word pieces), filler pieces up to id 151642 that no text produces, then Qwen's 26
    added tokens at 151643..151668. No coordinate tokens (expand-vocab adds them)."""
    from tokenizers import AddedToken, Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from vlmdet.model.tokenizer import CHAT_TEMPLATE, build_tiny_tokenizer

    tiny = build_tiny_tokenizer(coord_tokens=False)
    spec = json.loads(tiny.backend_tokenizer.to_str())
    vocab = [(piece, score) for piece, score in spec["model"]["vocab"]]
    vocab += [(f"<|filler_{i}|>", -99.0) for i in range(QWEN_FIRST_ADDED_ID - len(vocab))]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = tiny.backend_tokenizer.pre_tokenizer
    tok.decoder = tiny.backend_tokenizer.decoder
    for text, special in QWEN_ADDED_TOKENS:
        token = AddedToken(text, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", clean_up_tokenization_spaces=False, model_max_length=32768)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_checkpoint(out: Path, tiny: bool, device) -> dict:
    """Write the random 2B-shaped checkpoint (bf16 safetensors, no coordinate tokens) to `out`."""
    import torch
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from vlmdet.model.tiny import tiny_image_processor

    tokenizer = qwen_id_tokenizer()
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655 and len(tokenizer) == 151669
    cfg = Qwen3VLConfig(**model_config(tiny))
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(eos_token_id=[eot], pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tiny_image_processor().save_pretrained(out)
    del model
    return {"parameters": n_params}


def full_logits_loss(model, batch):
    """What a plain Hugging Face training step computes on a collated batch: the model's own loss,
    token CE over full `[B, L, V]` logits (the `labels` shifted inside the model)."""
    from vlmdet.model.collate import position_ids
    from vlmdet.train.forward import MODEL_KEYS

    kwargs = {k: batch[k] for k in MODEL_KEYS if batch.get(k) is not None}
    return model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=position_ids(model, batch),
                 use_cache=False, **kwargs).loss


def _overrides(work: Path, ckpt: Path, size: dict, on_cpu: bool, **extra) -> list[str]:
    base = {
        "model.name_or_path": ckpt, "data.train": work / "data/train.jsonl", "data.val": work / "data/val.jsonl",
        "output_dir": work / "runs", "training.max_steps": size["steps"], "training.warmup_steps": 0,
        "training.per_device_train_batch_size": size["batch"], "training.gradient_accumulation_steps": 1,
        "training.lr_scheduler_type": "constant", "training.lr_scheduler_kwargs": "{}",
        "training.logging_steps": 1, "training.save_steps": 100000, "training.report_to": "[]",
        "training.dataloader_num_workers": 0, "eval.eval_steps": 0, "eval.max_samples": size["n_val"],
        "rollout.max_new_tokens": size["max_new_tokens"], "rollout.batch_size": size["n_val"],
        "monitor.draw_images": "false", "data.max_val_samples": size["n_val"],
    }
    if on_cpu:  # bf16 matrix products on a CPU take a slow generic path (minutes at this vocabulary): float32
        base.update({"training.extra": "{use_cpu: true}", "training.bf16": "false"})
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _reset_peak(device) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class Check:
    """Runs the phases in order; each returns a note (str) or raises; rows collect the results."""

    def __init__(self, args):
        import torch

        self.args = args
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.device = "cuda" if self.cuda else "cpu"
        self.size = SIZES["tiny" if args.tiny else "full"]
        self.out = Path(args.out)
        self.work = self.out / "work"
        self.raw = self.work / "raw"
        self.ckpt = self.work / "qwen3vl_2b_random_coord"
        self.rows: list[dict] = []
        self.stage1 = None  # (trainer, loaded) after stage1_bf16

    def overrides(self, **extra) -> list[str]:
        return _overrides(self.work, self.ckpt, self.size, not self.cuda, **extra)

    def run(self, name: str, fn, needs_cuda: bool = False, needs: str | None = None) -> None:
        import torch

        row = {"phase": name, "status": "", "seconds": None, "peak_gpu_gib": None, "notes": ""}
        if needs_cuda and not self.cuda:
            row["status"] = "skipped: no CUDA"
        elif needs is not None and importlib.util.find_spec(needs) is None:
            row["status"] = f"skipped: {needs} not installed"
        else:
            _reset_peak(self.device)
            t0 = time.time()
            try:
                row["notes"] = fn() or ""
                row["status"] = "ok"
            except Exception as err:  # one phase failing must not hide the others
                first = " ".join(str(err).split()) or type(err).__name__
                row["status"] = f"FAILED: {type(err).__name__}: {first}"[:300]
                traceback.print_exc(file=sys.stderr)
            row["seconds"] = round(time.time() - t0, 1)
            row["peak_gpu_gib"] = _peak_gib(self.device)
            gc.collect()  # a phase's trainer (model, optimizer states) is garbage now: free it before the next
            if self.cuda:
                torch.cuda.empty_cache()
        self.rows.append(row)
        print(f"gpu_check: {name}: {row['status']} {row['notes']}", file=sys.stderr, flush=True)

    # -- phases -------------------------------------------------------------------------------------

    def checkpoint(self) -> str:
        from vlmdet.data.synth import make_synth
        from vlmdet.model.expand import expand_vocab

        info = build_checkpoint(self.raw, self.args.tiny, self.device)
        summary = expand_vocab(self.raw, self.ckpt)
        shutil.rmtree(self.raw)
        make_synth(self.work / "data", n_train=self.size["n_train"], n_val=self.size["n_val"], seed=0,
                   size=self.size["image"])
        return (f"{info['parameters'] / 1e9:.2f} B parameters; coord ids {summary['coord_id_first']}.."
                f"{summary['coord_id_last']}; embedding rows {summary['embedding_rows_after']}")

    def _trainer(self, config: str, **extra):
        from vlmdet.config import check_training_precision, load_config
        from vlmdet.rundir import RunDir
        from vlmdet.train.cli import build_trainer

        cfg = load_config(ROOT / config, self.overrides(**extra))
        check_training_precision(cfg)
        return cfg, *build_trainer(cfg, RunDir.create(cfg, ["gpu_check"], overwrite=True))

    @staticmethod
    def _losses(trainer) -> str:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if not losses or not all(l == l and abs(l) != float("inf") for l in losses):
            raise RuntimeError(f"training losses not finite: {losses}")
        return f"{trainer.state.global_step} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}"

    def stage1_bf16(self) -> str:
        cfg, trainer, loaded = self._trainer("configs/stage1/qwen3vl_2b.yaml", **{"training.learning_rate": 1e-5})
        if cfg.training.bf16 != self.cuda or cfg.model.dtype != "float32":
            raise RuntimeError("configs/stage1/qwen3vl_2b.yaml is not fp32 weights + bf16 autocast")
        params = {k: p for k, p in loaded.model.named_parameters() if ".layers." in k and p.ndim == 2}
        before = {k: p.detach().to("cpu", copy=True) for k, p in params.items()}
        trainer.train()
        changed = sum(int((p.detach().cpu() != before[k]).sum()) for k, p in params.items())
        total = sum(p.numel() for p in before.values())
        fraction = changed / total
        math = "bf16 autocast" if cfg.training.bf16 else "float32 (no bf16 on a CPU)"
        note = f"{self._losses(trainer)}, {math}; weights changed {fraction:.1%} (>= {UPDATE_FRACTION_MIN:.0%} needed)"
        if fraction < UPDATE_FRACTION_MIN:
            raise RuntimeError(note)
        self.stage1 = (cfg, trainer, loaded)
        return note

    def logits_mem(self) -> str:
        import torch

        from vlmdet.train.channel_a import channel_a_loss

        if self.stage1 is None:
            raise RuntimeError("needs the stage1_bf16 model")
        cfg, trainer, loaded = self.stage1
        model = loaded.model
        model.train()
        batch = next(iter(trainer.get_train_dataloader()))
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

        def gathered():
            loss, _ = channel_a_loss(model, batch, cfg.losses, loaded.coord_ids)
            return loss

        peaks = {}
        for name, fn in (("gathered", gathered), ("full", lambda: full_logits_loss(model, batch))):
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn()
            loss.backward()
            torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**30
        model.zero_grad(set_to_none=True)
        B, L = batch["input_ids"].shape
        return (f"[B, L] = [{B}, {L}]: step memory gathered {peaks['gathered']:.2f} GiB, full {peaks['full']:.2f} GiB "
                f"({peaks['gathered'] / peaks['full']:.2f}x)")

    def _stage2(self, config: str, **extra) -> tuple:
        _, trainer, loaded = self._trainer(config, **extra)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        note = self._losses(trainer)
        del trainer, loaded
        return note, logs

    def channel_a(self) -> str:
        note, logs = self._stage2("configs/stage2/qwen3vl_2b_a_only.yaml", **{"stage2.n_softctx_iter": 2})
        return f"{note}; forwards per step {logs[-1].get('stage2/n_forwards')}"

    def em_detach(self) -> str:
        note, logs = self._stage2("configs/stage2/qwen3vl_2b_a_only_em_detach.yaml", **{"stage2.n_softctx_iter": 3})
        return f"{note}; forwards per step {logs[-1].get('stage2/n_forwards')}"

    def ab_mixed(self) -> str:
        note, logs = self._stage2("configs/stage2/qwen3vl_2b_ab_mixed.yaml",
                                  **{"stage2.b_ratio": 0.5, "training.max_steps": 2})
        b_steps = sum(1 for h in logs if h.get("stage2/channel_b") == 1.0)
        if b_steps < 1:
            raise RuntimeError(f"no Channel-B step logged ({note})")
        return f"{note}; Channel-B steps {b_steps} of {len(logs)}"

    def eval(self) -> str:
        from vlmdet.data.records import load_records
        from vlmdet.evaluate.runner import run_rollout_eval
        from vlmdet.rundir import RunDir

        if self.stage1 is None:
            raise RuntimeError("needs the stage1_bf16 model")
        cfg, _, loaded = self.stage1
        loaded.model.eval()
        records = load_records(self.work / "data/val.jsonl")
        metrics = run_rollout_eval(loaded, records, cfg, run_dir=RunDir(self.work / "eval"), step=0, progress=False)
        keys = [k for k in metrics if k.endswith(("bbox_AP50", "sample_valid_pred_rate", "hit_max_new_tokens_rate"))]
        return f"{len(records)} images; " + ", ".join(f"{k.split('/')[-1]} {metrics[k]:.3f}" for k in sorted(keys))

    def zero2(self) -> str:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "vlmdet.cli", "train",
               str(ROOT / "configs/stage1/qwen3vl_2b.yaml"),
               *self.overrides(run_name="gpu_check_zero2", **{"training.deepspeed": ROOT / "configs/deepspeed/zero2.json",
                                                             "training.max_steps": 2}), "--overwrite"]
        log = self.work / "zero2.log"
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        if proc.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"exit {proc.returncode}: {tail[0]}")
        return "2 steps under torchrun + DeepSpeed ZeRO-2 (the peak column is this process, not the child)"


def table(rows: list[dict], header: str) -> str:
    """The markdown table of the phase rows."""
    lines = [header, "", "| phase | status | time s | peak GPU GiB | notes |", "|---|---|---:|---:|---|"]
    for r in rows:
        peak = f"{r['peak_gpu_gib']:.1f}" if r["peak_gpu_gib"] is not None else "-"
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        lines.append(f"| {r['phase']} | {r['status']} | {secs} | {peak} | {r['notes']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check", help="output folder (default: ./gpu_check)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is present")
    p.add_argument("--tiny", action="store_true", help="2 text layers / 2 vision blocks of small width, few steps")
    p.add_argument("--keep", action="store_true", help="keep DIR/work (checkpoints, data, runs)")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers

    check = Check(args)
    if check.work.exists():
        shutil.rmtree(check.work)
    check.work.mkdir(parents=True)
    t0 = time.time()
    check.run("checkpoint", check.checkpoint)
    check.run("stage1_bf16", check.stage1_bf16)
    check.run("logits_mem", check.logits_mem, needs_cuda=True)
    check.run("eval", check.eval)
    check.stage1 = None  # the Stage-1 trainer and model: freed by the next phase's collection
    check.run("channel_a", check.channel_a)
    check.run("em_detach", check.em_detach)
    check.run("ab_mixed", check.ab_mixed)
    check.run("zero2", check.zero2, needs_cuda=True, needs="deepspeed")
    gpu = torch.cuda.get_device_name(0) if check.cuda else "none (CPU)"
    header = (f"gpu_check: {'tiny' if args.tiny else 'Qwen3-VL-2B dimensions'}, device {gpu}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}, {time.time() - t0:.0f} s")
    text = table(check.rows, header)
    print(text)
    from vlmdet.io import atomic_write_json, atomic_write_text

    atomic_write_text(check.out / "gpu_check.md", text)
    atomic_write_json(check.out / "gpu_check.json", {"header": header, "rows": check.rows})
    if not args.keep:
        shutil.rmtree(check.work, ignore_errors=True)
    return 1 if any(r["status"].startswith("FAILED") for r in check.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
