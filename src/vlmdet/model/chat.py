"""Prompts and chat rendering: one image + prompt (+ answer) -> model-ready tensors.

The conversation is one round: system, user = [image, text] (image first),
assistant = the CoordJSON answer. It is rendered in the Qwen chat format

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>{user}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>

(no trailing newline after the answer's `<|im_end|>`). N = grid_t*grid_h*grid_w / merge_size**2.
The prompt part, the answer and the final `<|im_end|>` are tokenized separately and concatenated,
so the label boundary is exact for any tokenizer (the boundaries are special tokens).

Images are never resized at run time (`do_resize=False`): each side must be a multiple of
patch_size * merge_size (32 for Qwen3-VL); the data converters resize offline.
"""

from __future__ import annotations

import json
import re

import torch

from vlmdet.answer_format import STOCK_SYSTEM_PROMPT, STOCK_USER_PROMPT
from vlmdet.config import PromptConfig
from vlmdet.errors import UsageError
from vlmdet.format import DESC_KEY, FIELD_ORDERS, ORDERINGS

#: slot classes of answer tokens (`slot_class` tensors): not supervised, structure, desc, coord
IGNORE, STRUCT, DESC, COORD = 0, 1, 2, 3

#: the Qwen chat special tokens (the tiny tokenizer adds them in this order; `PAD_TOKEN` pads)
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
CHAT_SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

COCO_80_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
VARIANTS = ("default", "coco_80")

_RECORD_DESC_FIRST = '{"desc": "name", "bbox_2d": [x1, y1, x2, y2]}'
_RECORD_GEOM_FIRST = '{"bbox_2d": [x1, y1, x2, y2], "desc": "name"}'


def _coco_list() -> str:
    return ", ".join(COCO_80_CLASS_NAMES)


def system_prompt(prompt_cfg: PromptConfig | None = None) -> str:
    """The system prompt text for the `prompt` section (None: the defaults; `prompt.system` overrides
    the text verbatim; with an `answer_format` other than coordjson: the stock prompt
    `answer_format.STOCK_SYSTEM_PROMPT`; the choices were checked when the config was loaded).

    Short on purpose (every prompt token costs compute on each training step); it states the
    upstream rules: one-line CoordJSON only, the field order, bare coordinate tokens 0..999, the
    ordering rule, the empty answer, and for `coco_80` the closed class list."""
    p = prompt_cfg or PromptConfig()
    if p.system is not None:
        return p.system
    if p.answer_format != "coordjson":  # a stock model's baseline
        return STOCK_SYSTEM_PROMPT
    field_order, ordering, variant = p.field_order, p.ordering, p.variant
    record = _RECORD_DESC_FIRST if field_order == "desc_first" else _RECORD_GEOM_FIRST
    first = "desc" if field_order == "desc_first" else "bbox_2d"
    sort_rule = (
        "Sort objects by y1, then x1: top to bottom, then left to right."
        if ordering == "sorted"
        else "Any object order is fine."
    )
    lines = [
        'You detect objects. Answer with one line of CoordJSON {"objects": [...]} and nothing else.',
        f"Each record is {record}, {first} first, no other keys.",
        "Coordinates are bare <|coord_N|> tokens, N from 0 to 999, with x1 < x2 and y1 < y2.",
        sort_rule + ' With no objects, answer {"objects": []}.',
    ]
    if variant == "coco_80":
        lines.append("desc is exactly one of these classes: " + _coco_list() + ".")
    return "\n".join(lines)


def user_prompt(prompt_cfg: PromptConfig | None = None) -> str:
    """The user prompt text for `prompt_cfg` (`prompt.user` overrides it verbatim; with an `answer_format`
    other than coordjson: `answer_format.STOCK_USER_PROMPT`)."""
    p = prompt_cfg or PromptConfig()
    if p.user is not None:
        return p.user
    if p.answer_format != "coordjson":
        return STOCK_USER_PROMPT
    field_order, ordering, variant = p.field_order, p.ordering, p.variant
    order = "top to bottom, then left to right" if ordering == "sorted" else "in any order"
    first = "desc" if field_order == "desc_first" else "bbox_2d"
    text = f"List every object in the image {order} as CoordJSON, {first} first."
    if variant == "coco_80":  # the class list is in the system prompt only (once per sample)
        text += " Use only the listed COCO-80 classes as desc."
    return text


def prompt_vocabulary() -> list[str]:
    """Every default prompt text (all field orders, orderings, variants): words for the tiny vocabulary."""
    out = []
    for fo in FIELD_ORDERS:
        for order in ORDERINGS:
            for variant in VARIANTS:
                cfg = PromptConfig(field_order=fo, ordering=order, variant=variant)
                out += [system_prompt(cfg), user_prompt(cfg)]
    return out


def render_prompt(system: str, user: str, n_image_tokens: int) -> str:
    """Chat text up to and including the generation prompt `<|im_start|>assistant\\n`."""
    return (
        f"{IM_START}system\n{system}{IM_END}\n"
        f"{IM_START}user\n{VISION_START}{IMAGE_PAD * n_image_tokens}{VISION_END}{user}{IM_END}\n"
        f"{IM_START}assistant\n"
    )


_DESC_OPEN_RE = re.compile(r'"' + DESC_KEY + r'"\s*:\s*"')
_DECODER = json.JSONDecoder()


def desc_spans(answer: str) -> list[tuple[int, int]]:
    """Char spans [start, end) of the contents of every `"desc": "..."` string value (without the
    quotes, escapes included as written)."""
    spans = []
    pos = 0
    while True:
        m = _DESC_OPEN_RE.search(answer, pos)
        if not m:
            return spans
        start = m.end() - 1  # the opening quote
        try:
            _, end = _DECODER.raw_decode(answer, start)
        except json.JSONDecodeError:
            return spans
        spans.append((start + 1, end - 1))
        pos = end


def image_token_count(grid_thw, merge_size: int) -> int:
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // (merge_size**2)


def process_image(processor, image):
    """PIL image -> (pixel_values [n_patches, C*T*P*P] float, image_grid_thw [3] long), no resizing.

    Raises UsageError when a side is not a multiple of patch_size * merge_size."""
    factor = int(processor.patch_size) * int(processor.merge_size)
    w, h = image.size
    if w % factor or h % factor:
        raise UsageError(
            f"image size {w}x{h} is not a multiple of {factor} (patch {processor.patch_size} x merge "
            f"{processor.merge_size}); resize images offline (the `vlmdet data` converters do)"
        )
    out = processor(images=[image.convert("RGB")], do_resize=False, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"][0]


def encode_example(loaded, image, answer: str | None, prompt_cfg: PromptConfig | None = None) -> dict:
    """One example as 1-D tensors (all length L unless noted):

    - `input_ids` [L] long; `labels` [L] long: the input id on the assistant span (answer tokens and the
      closing `<|im_end|>`), -100 elsewhere (labels are *not* shifted: the model's loss shifts);
    - `slot_class` [L] int8: IGNORE=0 (prompt), STRUCT=1, DESC=2 (token overlapping the contents of a
      desc string), COORD=3 (a coordinate-token id); the closing `<|im_end|>` is STRUCT;
    - `coord_bins` [L] long: bin of the coord token at that position, -1 elsewhere;
    - `mm_token_type_ids` [L] int: 1 at `<|image_pad|>` positions, 0 elsewhere;
    - `pixel_values` [n_patches, D] float; `image_grid_thw` [3] long.
    With `answer=None` the sequence ends with the generation prompt `<|im_start|>assistant\\n`,
    `labels` are all -100 and `slot_class` all IGNORE (for rollouts).
    """
    tok = loaded.tokenizer
    pixel_values, grid = process_image(loaded.processor, image)
    n_img = image_token_count(grid, int(loaded.processor.merge_size))
    prompt = render_prompt(system_prompt(prompt_cfg), user_prompt(prompt_cfg), n_img)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = list(prompt_ids)
    slot = [IGNORE] * len(ids)
    bins = [-1] * len(ids)
    labels = [-100] * len(ids)
    if answer is not None:
        enc = tok(answer, add_special_tokens=False, return_offsets_mapping=True)
        ans_ids, offsets = enc["input_ids"], enc["offset_mapping"]
        spans = desc_spans(answer)
        coord_bin = loaded.coord_bin_of_id
        for tid, (a, b) in zip(ans_ids, offsets):
            if tid in coord_bin:
                slot.append(COORD)
                bins.append(coord_bin[tid])
            else:
                in_desc = any(a < e and b > s for s, e in spans)
                slot.append(DESC if in_desc else STRUCT)
                bins.append(-1)
        ids += ans_ids + [loaded.eot_id]
        slot.append(STRUCT)
        bins.append(-1)
        labels += ans_ids + [loaded.eot_id]
    input_ids = torch.tensor(ids, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "labels": torch.tensor(labels, dtype=torch.long),
        "slot_class": torch.tensor(slot, dtype=torch.int8),
        "coord_bins": torch.tensor(bins, dtype=torch.long),
        "mm_token_type_ids": (input_ids == loaded.image_token_id).to(torch.int32),
        "pixel_values": pixel_values,
        "image_grid_thw": grid.to(torch.long),
    }
