"""Batching of `encode_example` outputs and explicit mRoPE position ids.

`Collator(pad_id, padding_side)` pads to the longest sequence (right padding for training, left
padding for generation) and returns:

    input_ids [B, L] long (pad_id at padding), attention_mask [B, L] long (0 at padding),
    labels [B, L] long (-100 at padding), slot_class [B, L] int8 (0 at padding),
    coord_bins [B, L] long (-1 at padding), mm_token_type_ids [B, L] int (0 at padding),
    pixel_values [sum of n_patches, D] float (examples concatenated in batch order),
    image_grid_thw [B, 3] long.

Keys of examples other than these (e.g. `image_id`) are gathered into lists.

Explicit positions: `position_ids(model, batch)` returns the model's own mRoPE positions [3, B, L]
(from the GT input ids, `mm_token_type_ids`, `image_grid_thw`, skipping padding via
`attention_mask`). A forward with `inputs_embeds` instead of `input_ids` is equivalent to the
`input_ids` forward when it also gets these `position_ids`, the same `attention_mask`,
`pixel_values`, `image_grid_thw` and `mm_token_type_ids` (the image placeholder rows of
`inputs_embeds` must be the `<|image_pad|>` embedding: the model finds them by equality and
scatters the image features there).
"""

from __future__ import annotations

from typing import Any, Sequence

SEQ_KEYS = {  # key -> padding value
    "input_ids": None,  # pad_id
    "labels": -100,
    "slot_class": 0,
    "coord_bins": -1,
    "mm_token_type_ids": 0,
}


class Collator:
    """Pads a list of encoded examples into one batch dict (see the module docstring)."""

    def __init__(self, pad_id: int, padding_side: str = "right"):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_id = int(pad_id)
        self.padding_side = padding_side

    def _pad(self, seqs: Sequence, value: int, length: int):
        import torch

        out = torch.full((len(seqs), length), value, dtype=seqs[0].dtype)
        for i, s in enumerate(seqs):
            n = s.shape[0]
            if self.padding_side == "right":
                out[i, :n] = s
            else:
                out[i, length - n :] = s
        return out

    def __call__(self, examples: Sequence[dict]) -> dict[str, Any]:
        import torch

        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        length = max(e["input_ids"].shape[0] for e in examples)
        batch: dict[str, Any] = {}
        for key, value in SEQ_KEYS.items():
            if key in examples[0]:
                batch[key] = self._pad([e[key] for e in examples], self.pad_id if value is None else value, length)
        mask = torch.zeros(len(examples), length, dtype=torch.long)
        for i, e in enumerate(examples):
            n = e["input_ids"].shape[0]
            if self.padding_side == "right":
                mask[i, :n] = 1
            else:
                mask[i, length - n :] = 1
        batch["attention_mask"] = mask
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in examples], dim=0)
        batch["image_grid_thw"] = torch.stack([e["image_grid_thw"].reshape(3) for e in examples]).to(torch.long)
        for key in examples[0]:
            if key not in batch:
                batch[key] = [e[key] for e in examples]
        return batch


def position_ids(model, batch: dict):
    """mRoPE position ids [3, B, L] (long) from the model's own rope-index function.

    Padding positions get 0 (the rope index skips them via `attention_mask`). `model` is the
    `...ForConditionalGeneration`, its inner `.model`, or a wrapper (`.module`) around either."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "get_rope_index"):
            break
        inner = getattr(inner, "module", None) or getattr(inner, "model", None)
        if inner is None:
            raise TypeError(f"{type(model).__name__} has no mRoPE rope-index function (get_rope_index)")
    pos, _deltas = inner.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    return pos
