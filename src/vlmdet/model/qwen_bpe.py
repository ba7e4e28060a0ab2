"""Qwen's byte-level BPE tokenizer, rebuilt offline from its ranks file `qwen.tiktoken`.

The ranks file has 151,643 lines `base64(token bytes) rank` (rank = token id). It ships inside the
`dashscope` wheel (`dashscope/resources/qwen.tiktoken`); `scripts/setup.sh dev` copies that one file to
`<venv>/share/vlmdet/qwen.tiktoken` (`ranks_file()`), without installing dashscope or its dependencies.
It is a test and benchmark asset: the tests of the Channel-B targets and benchmarks/realdim.py use it
to see what a real byte-level BPE, whose merges cross JSON punctuation (`]},` and ` [{"` are single
tokens), does to CoordJSON.

`build_qwen_tokenizer(path)` -> `PreTrainedTokenizerFast` built by transformers' `TikTokenConverter`
(which reads the file with the `tiktoken` package, a dev dependency):
- model: byte-level BPE over the GPT-2 byte-to-unicode alphabet, a merge's priority = the rank of the
  token it makes (tiktoken's rule); a pre-token that is itself a vocabulary entry is one token;
- normalizer NFC; pre-tokenizer: `QWEN_PATTERN` (Qwen's regex: letters with one optional leading
  non-letter, single digits, punctuation runs with an optional leading space, newlines, spaces) then
  the byte-level mapping; decoder: byte-level, so `decode(encode(t)) == t` for NFC text;
- the added tokens of the Qwen2 / Qwen3(-VL) tokenizers with their ids (`QWEN_ADDED_TOKENS`: 151643
  `<|endoftext|>` .. 151668 `</think>`; 151,669 tokens in all, the 2B model has 151,936 embedding rows);
- pad `<|endoftext|>`, end of turn `<|im_end|>`, the chat template of `model.tokenizer`.
No coordinate tokens unless `coord_tokens=True`, which adds `<|coord_0|>`..`<|coord_999|>` (ids 151669..
152668) the way `vlmdet expand-vocab` adds them to a checkpoint (plain added tokens, not normalized).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from vlmdet.coords import COORD_TOKENS
from vlmdet.errors import UsageError
from vlmdet.model.tokenizer import CHAT_TEMPLATE

#: Qwen's pre-tokenizer regex (Qwen, Qwen2, Qwen3 and the dashscope tokenizer use the same one)
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: number of BPE ranks in qwen.tiktoken (ids 0..151642)
NUM_RANKS = 151643
#: (id, content, special) of the added tokens of Qwen2 / Qwen3 / Qwen3-VL, in id order
QWEN_ADDED_TOKENS = tuple(
    (NUM_RANKS + i, content, special)
    for i, (content, special) in enumerate([
        ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
        ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
        ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
        ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
        ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
        ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
        ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
        ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
    ])
)
#: embedding rows of the Qwen3-VL-2B checkpoints (the vocabulary padded to a multiple of 128)
QWEN_VOCAB_ROWS = 151936


def ranks_file() -> Path:
    """`<sys.prefix>/share/vlmdet/qwen.tiktoken`, where `scripts/setup.sh dev` puts it; UsageError when
    it is not there."""
    path = Path(sys.prefix) / "share" / "vlmdet" / "qwen.tiktoken"
    if not path.is_file():
        raise UsageError(f"{path}: not found; `scripts/setup.sh dev` copies it there from the dashscope wheel")
    return path


@functools.lru_cache(maxsize=4)
def build_qwen_tokenizer(path: str | Path | None = None, *, coord_tokens: bool = False):
    """The Qwen tokenizer (module docstring) from the ranks file `path` (default `ranks_file()`).

    Cached per arguments (building takes a few seconds): callers must not add tokens to the returned
    object; save it and load a copy, or build a fresh one with `build_qwen_tokenizer.__wrapped__`."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = Path(path) if path is not None else ranks_file()
    tok = TikTokenConverter(vocab_file=str(path), pattern=QWEN_PATTERN).converted()
    if tok.get_vocab_size() != NUM_RANKS:
        raise UsageError(f"{path}: {tok.get_vocab_size()} ranks, expected {NUM_RANKS} (not Qwen's qwen.tiktoken)")
    tok.normalizer = normalizers.NFC()
    for tid, content, special in QWEN_ADDED_TOKENS:
        added = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
        if tok.token_to_id(content) != tid:
            raise RuntimeError(f"{content} got id {tok.token_to_id(content)}, expected {tid}")
    if coord_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in COORD_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        clean_up_tokenization_spaces=False,
        model_max_length=262144,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
