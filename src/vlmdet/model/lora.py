"""LoRA through peft: `model.lora: {r, alpha, dropout, target_modules}`.

`apply_lora(loaded, lora_cfg)` wraps `loaded.model` in a `peft.PeftModel` with LoRA adapters on
`target_modules` (default: the language model's attention and MLP projections; the vision tower's
layers have other names) and peft's trainable token indices on the 1000 coordinate-token rows: those
rows of the input embedding (and of the output head: through the tie when the head is tied, as its
own trainable rows when it is not) are trained, every other base weight is frozen.

Checkpoints of a LoRA run: `checkpoint-N/` holds the adapter (`adapter_config.json`,
`adapter_model.safetensors`, as the HF Trainer saves a PeftModel) plus tokenizer, image processor and
`vlmdet.json`; `checkpoint-final/` holds the **merged** model (a plain HF checkpoint: LoRA folded into
the weights, coordinate rows included) and `checkpoint-final/adapter/` the adapter with the same
side files (`save_final`). `load_model` reads either: an adapter folder is loaded onto its base model
(`adapter_config.json`'s `base_model_name_or_path`).
"""

from __future__ import annotations

from pathlib import Path

from vlmdet.errors import UsageError

ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"


def _embedding_name(model, module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name.rsplit(".", 1)[-1]
    raise RuntimeError("embedding module not found in the model")  # a bug, not user input


def apply_lora(loaded, lora_cfg):
    """`loaded` with its model wrapped in a PeftModel (module docstring); the model must have the
    coordinate tokens (their rows are what LoRA cannot learn)."""
    import dataclasses

    from peft import LoraConfig, get_peft_model

    if not loaded.coord_ids:
        raise UsageError("model.lora: the checkpoint has no coordinate tokens; run `vlmdet expand-vocab` first")
    model = loaded.model
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is None or out.weight.data_ptr() == inp.weight.data_ptr()
    ids = [int(i) for i in loaded.coord_ids]
    tokens = ids if tied else {_embedding_name(model, inp): ids, _embedding_name(model, out): ids}
    config = LoraConfig(r=int(lora_cfg.r), lora_alpha=int(lora_cfg.alpha), lora_dropout=float(lora_cfg.dropout),
                        target_modules=lora_cfg.target_modules, trainable_token_indices=tokens, bias="none")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:  # e.g. target_modules that match nothing
        raise UsageError(f"model.lora: {str(err).strip().splitlines()[0]}") from None
    return dataclasses.replace(loaded, model=peft_model)


def is_lora(model) -> bool:
    return type(model).__name__.startswith("PeftModel")


def save_final(model, folder: str | Path, side_files) -> None:
    """Adapter -> `folder/adapter/`, merged model -> `folder/` (module docstring). `side_files(dir)` writes
    tokenizer, image processor and vlmdet.json into a folder. The model is merged in place (call this
    once training is over)."""
    folder = Path(folder)
    adapter = folder / ADAPTER_DIR
    model.save_pretrained(str(adapter))
    side_files(adapter)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(folder))
    side_files(folder)
    for name in (ADAPTER_CONFIG, "adapter_model.safetensors"):  # a Trainer save may have left these here
        if (folder / name).exists():
            (folder / name).unlink()


def adapter_base(folder: Path) -> str | None:
    """`base_model_name_or_path` of an adapter folder, None when `folder` holds no adapter."""
    import json

    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(base, str) or not base:
        raise UsageError(f"{path}: no base_model_name_or_path")
    return base


def load_adapter(base_model, folder: Path):
    """The base model with the adapter of `folder` applied (not merged), in eval mode."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(folder)).eval()
