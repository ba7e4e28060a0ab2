"""The embedded default model: a randomly initialized, tiny Qwen3-VL (about 1.2 M parameters).

`TINY_MODEL_CONFIG` holds the `Qwen3VLConfig` keyword arguments (text: hidden 128, intermediate 256,
4 layers, 4 heads / 2 KV heads, head_dim 32, mRoPE sections [8, 4, 4] summing to head_dim/2;
vision: depth 2, hidden 64, intermediate 128, 4 heads, patch 16, spatial merge 2, temporal patch 2,
deepstack [1]; tied input/output embeddings like the 2B/4B Qwen3-VL checkpoints).
Token ids and the vocabulary size are filled in from the tokenizer by `build_tiny_checkpoint`, which
writes an ordinary Hugging Face checkpoint (safetensors model, tokenizer with chat template,
`preprocessor_config.json` for `Qwen2VLImageProcessorPil`, generation config) that `load_model`
then loads like any real checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path

from vlmdet.model.chat import IM_END, IMAGE_PAD, PAD_TOKEN, VIDEO_PAD, VISION_END, VISION_START
from vlmdet.model.tokenizer import build_tiny_tokenizer

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

TINY_MODEL_CONFIG: dict = {
    "text_config": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 4, 4],
                            "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 128,
        "num_position_embeddings": 144,
        "deepstack_visual_indexes": [1],
    },
    "tie_word_embeddings": True,
}


def tiny_config(tokenizer):
    """A `Qwen3VLConfig` from `TINY_MODEL_CONFIG` with vocabulary size and token ids from `tokenizer`.

    Asserts that the mRoPE sections took effect (a silently ignored key falls back to the 8B default,
    which does not fit head_dim 32)."""
    from transformers import Qwen3VLConfig

    kw = copy.deepcopy(TINY_MODEL_CONFIG)
    ids = tokenizer.convert_tokens_to_ids
    kw["text_config"]["vocab_size"] = len(tokenizer)
    kw["text_config"]["pad_token_id"] = ids(PAD_TOKEN)
    kw.update(
        image_token_id=ids(IMAGE_PAD),
        video_token_id=ids(VIDEO_PAD),
        vision_start_token_id=ids(VISION_START),
        vision_end_token_id=ids(VISION_END),
    )
    cfg = Qwen3VLConfig(**kw)
    head_dim = cfg.text_config.head_dim
    section = cfg.text_config.rope_parameters.get("mrope_section")
    assert section == [8, 4, 4] and sum(section) == head_dim // 2, f"mrope_section not applied: {section}"
    assert cfg.text_config.vocab_size == len(tokenizer)
    return cfg


def tiny_image_processor():
    """The PIL image processor (no torchvision needed): patch 16, merge 2, temporal patch 2."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD), min_pixels=32 * 32, max_pixels=1024 * 32 * 32,
    )


def build_tiny_checkpoint(out_dir, seed: int = 0, *, coord_tokens: bool = True) -> Path:
    """Write the tiny checkpoint to `out_dir` (created; existing files overwritten) and return it.

    Deterministic: the same seed gives bit-identical weights. Generation stops at `<|im_end|>`.
    `coord_tokens=False` writes the same model without the 1000 coordinate tokens (a stand-in for a
    stock checkpoint, to exercise `vlmdet expand-vocab`)."""
    import torch
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(coord_tokens=coord_tokens)
    cfg = tiny_config(tokenizer)
    with torch.random.fork_rng(devices=[]):  # building does not disturb the caller's random state
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(cfg)
    eot = tokenizer.convert_tokens_to_ids(IM_END)
    pad = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=[eot], pad_token_id=pad, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tiny_image_processor().save_pretrained(out)
    return out
