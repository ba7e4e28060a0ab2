"""Training data: JSONL records -> encoded teacher-forced examples (+ the batch collator).

`DetDataset(records, loaded, prompt_cfg, seed)[i]` renders record i's answer with
`format.render_answer(record.bins(), prompt.field_order, prompt.ordering)` and encodes image +
prompt + answer with `model/chat.encode_example` (1-D tensors: `input_ids`, `labels`, `slot_class`,
`coord_bins`, `mm_token_type_ids`, `pixel_values`, `image_grid_thw`), plus `image_id` (str).
With `prompt.ordering: random` the objects are shuffled by a generator seeded with (seed, i, epoch),
so an epoch's order is reproducible (and replays identically on resume); `set_epoch` changes it.

`make_collator(loaded)` is `model/collate.Collator(pad_id, "right")`.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from torch.utils.data import Dataset

from vlmdet.config import PromptConfig
from vlmdet.data.records import load_image
from vlmdet.format import render_answer
from vlmdet.model.chat import encode_example
from vlmdet.model.collate import Collator


class DetDataset(Dataset):
    """Map-style dataset over `data/records.Record`s for teacher-forced training (module docstring)."""

    def __init__(self, records: Sequence[Any], loaded: Any, prompt_cfg: PromptConfig, seed: int = 0):
        self.records = list(records)
        self.loaded = loaded
        self.prompt_cfg = prompt_cfg
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def answer(self, i: int) -> str:
        """The CoordJSON answer text of record i."""
        objs = self.records[i].bins()
        ordering = self.prompt_cfg.ordering
        if ordering == "random":
            random.Random(f"{self.seed}:{i}:{self.epoch}").shuffle(objs)
        return render_answer(objs, self.prompt_cfg.field_order, ordering)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        ex = encode_example(self.loaded, load_image(rec), self.answer(i), self.prompt_cfg)
        ex["image_id"] = rec.image_id
        return ex


def make_collator(loaded: Any):
    """The training collator (right padding with the model's pad id)."""
    return Collator(loaded.pad_id, padding_side="right")
