"""The tiny model's tokenizer, built locally with the `tokenizers` library (no downloads).

Layout of the vocabulary (ids in this order):
- base model (a `Unigram` model with byte fallback): `<unk>` (id 0), the 256 byte tokens
  `<0x00>`..`<0xFF>` (so that ANY text round-trips: characters without a piece are spelled as
  UTF-8 bytes), then word pieces: printable ASCII characters, digits 0-9 and some multi-digit numbers,
  CJK numerals, the words of the prompts, class names (synthetic + COCO-80) and common English words;
- added special tokens: the chat tokens (`<|endoftext|>` = pad, `<|im_start|>`, `<|im_end|>`,
  `<|vision_start|>`, `<|vision_end|>`, `<|image_pad|>`, `<|video_pad|>`);
- the 1000 coordinate tokens `<|coord_0|>`..`<|coord_999|>` as added tokens that are NOT special
  (one id each, contiguous, in bin order), so `decode(..., skip_special_tokens=True)` (what most
  serving stacks call) keeps them;
- the CoordJSON structure pieces (`{"objects": [`, `{"desc": "`, `", "bbox_2d": [`, `]}`, `, `, and
  for `geometry_first` `{"bbox_2d": [`, `], "desc": "`, `"}`) as added (non-special) tokens, so each is
  one id wherever it occurs.

Text outside added tokens is pre-split into words with an optional leading space (` ?\\w+`) and
single non-word characters (other spaces and punctuation each one piece); every word is in the
vocabulary with and without a leading space; the Unigram model then covers a word with the fewest vocabulary
pieces (a known word is one token, an unknown one falls back to characters, then bytes).
Decoder: `ByteFallback` + `Fuse`, so `decode(encode(t)) == t` exactly for every string t.
"""

from __future__ import annotations

import re
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vlmdet.coords import COORD_TOKENS
from vlmdet.data.synth import CLASS_NAMES
from vlmdet.model.chat import (
    CHAT_SPECIAL_TOKENS,
    COCO_80_CLASS_NAMES,
    IM_END,
    IM_START,
    IMAGE_PAD,
    PAD_TOKEN,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    prompt_vocabulary,
)

#: coordinate tokens are plain added tokens (survive `skip_special_tokens=True`)
COORD_TOKENS_SPECIAL = False

#: CoordJSON pieces that become single tokens (both field orders).
STRUCTURE_PIECES = (
    '{"objects": [',
    '{"desc": "',
    '", "bbox_2d": [',
    '{"bbox_2d": [',
    '], "desc": "',
    '"}',
    "]}",
    ", ",
)

assert len(COCO_80_CLASS_NAMES) == 80 and len(set(COCO_80_CLASS_NAMES)) == 80

COLOURS = (
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey",
    "gray", "cyan", "magenta", "dark", "light", "small", "large", "big", "tiny",
)
SHAPES = (
    "circle", "square", "triangle", "rectangle", "ellipse", "star", "cross", "diamond", "ring",
    "hexagon", "pentagon", "shape", "box", "disk", "bar", "plus",
)
COMMON_WORDS = (
    "the", "a", "an", "of", "and", "or", "in", "on", "at", "to", "for", "with", "by", "from", "is",
    "are", "be", "as", "it", "its", "this", "that", "these", "each", "every", "all", "one", "two",
    "no", "not", "do", "does", "if", "then", "else", "only", "exactly", "any", "other", "same",
    "left", "right", "top", "bottom", "first", "last", "image", "picture", "photo", "object",
    "objects", "list", "name", "class", "near", "unknown", "people", "man", "woman", "child", "table",
    "tree", "sky", "road", "window", "door", "wall", "floor", "water", "grass", "building", "sign",
    "street", "house", "head", "hand", "face", "shirt", "hat", "bag", "glass", "plate", "food",
    "animal", "vehicle", "front", "back", "behind", "above", "below", "under", "over", "inside",
    "outside", "there", "here", "what", "where", "which", "who", "how", "you", "your", "please",
    "json", "true", "false", "null", "coord", "bbox_2d", "desc", "poly", "x1", "y1", "x2", "y2",
)
CJK_NUMERALS = tuple("零〇一二三四五六七八九十百千万")
NUMBERS = tuple(str(n) for n in range(10, 100)) + ("100", "128", "256", "512", "999", "1000")

#: Pre-tokenizer pattern: words, or one non-word character (space, punctuation) at a time.
PRETOKENIZE_PATTERN = r" ?\w+|[^\w]"


def default_words() -> list[str]:
    """Words of the tiny vocabulary: prompt words, synthetic + COCO-80 class names, common words."""
    names = [*COCO_80_CLASS_NAMES, *CLASS_NAMES]
    words: list[str] = []
    for text in [*names, *COLOURS, *SHAPES, *COMMON_WORDS, *prompt_vocabulary()]:
        words += re.findall(r"\w+", text)
    return words


def build_tiny_tokenizer(words: Iterable[str] | None = None, *, coord_tokens: bool = True):
    """A `PreTrainedTokenizerFast` for the tiny model (see the module docstring for the layout).

    `words`: extra word pieces (default: `default_words()`); duplicates are ignored and the order is
    sorted, so the same inputs always give the same ids. `coord_tokens=False` builds the same
    tokenizer without the 1000 coordinate tokens (to exercise `vlmdet expand-vocab` in tests).
    """
    words = default_words() if words is None else list(words)
    pieces: set[str] = set(chr(c) for c in range(32, 127))
    pieces |= set("\t\n")
    pieces |= {str(d) for d in range(10)} | set(NUMBERS) | set(CJK_NUMERALS)
    for w in words:
        for piece in re.findall(r"\w+", w):
            pieces |= {piece, " " + piece}
    # Byte tokens come first (fixed ids 1..256); a piece spelled like a byte token is not allowed.
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    vocab = [("<unk>", 0.0)] + [(p, -20.0) for p in byte_pieces]
    vocab += [(p, -1.0) for p in sorted(pieces - set(byte_pieces))]

    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in CHAT_SPECIAL_TOKENS])
    coords = list(COORD_TOKENS) if coord_tokens else []
    tok.add_tokens([AddedToken(s, special=COORD_TOKENS_SPECIAL, normalized=False) for s in coords])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in STRUCTURE_PIECES])

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


#: A Qwen-style chat template: `<|im_start|>{role}\n{content}<|im_end|>\n` per message; an image item
#: renders as `<|vision_start|><|image_pad|><|vision_end|>` (one pad; the processor expands it).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
