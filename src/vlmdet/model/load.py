"""Load a checkpoint (or the embedded `tiny` model) with its tokenizer, image processor and token ids.

`load_model("tiny")` builds the tiny checkpoint once into `$VLMDET_CACHE/tiny-v1-<hash>` (default
`~/.cache/vlmdet/`; the hash covers the tiny definition; built in a temporary sibling folder and renamed, so a killed build never
leaves a half-written cache), then loads it through exactly the same code as a real checkpoint.

Loading needs no torchvision: the image processor is `Qwen2VLImageProcessorPil` built from the
checkpoint's `preprocessor_config.json` (Qwen2-VL, Qwen2.5-VL and Qwen3-VL share its patchify), and the
tokenizer is loaded with `AutoTokenizer`. `Loaded.processor` is that image processor (not an
`AutoProcessor`, whose video processor would need torchvision); chat rendering is done by
`vlmdet.model.chat`.

Names: "tiny", a local checkpoint folder, or a Hugging Face hub model id (`Qwen/Qwen3-VL-2B-Instruct`),
resolved through transformers' own file resolution and cache (`HF_HUB_OFFLINE=1` respected): see
`resolve_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from huggingface_hub import constants
from packaging.version import Version
from transformers import AutoModelForImageTextToText, AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.utils import cached_file

from vlmdet.coords import COORD_TOKENS, NUM_BINS
from vlmdet.errors import UsageError
from vlmdet.model.chat import IM_END, IMAGE_PAD
from vlmdet.model.contract import CONTRACT_FILE, check_coord_layout, read_contract
from vlmdet.model.lora import adapter_base, load_adapter
from vlmdet.model.tiny import IMAGE_MEAN, IMAGE_STD, TINY_MODEL_CONFIG, build_tiny_checkpoint
from vlmdet.model.tokenizer import (CHAT_TEMPLATE, COORD_TOKENS_SPECIAL, PRETOKENIZE_PATTERN, STRUCTURE_PIECES,
                                    default_words)

#: the transformers releases vlmdet runs on (pyproject.toml declares the same range; CI runs the
#: model tests on the floor too)
TRANSFORMERS_FLOOR, TRANSFORMERS_CEILING = "5.15.0", "6"

TINY_NAME = "tiny"
TINY_CACHE_NAME = "tiny-v1"
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Loaded:
    """A model with everything needed to feed it and read its output.

    `coord_ids[k]` is the token id of `<|coord_k|>` (1000 distinct ids, bin order); `eot_id` the id of
    `<|im_end|>` (end of turn, the generation stop token); `pad_id` the padding id; `image_token_id` the
    id of `<|image_pad|>`; `path` the checkpoint folder that was loaded (for a hub id: its snapshot folder
    in the Hugging Face cache). `coord_ids` is empty only for a checkpoint without coordinate tokens
    loaded with `coord_tokens=False` (a stock model evaluated in a digit answer format)."""

    model: Any
    processor: Any
    tokenizer: Any
    coord_ids: list[int]
    eot_id: int
    pad_id: int
    image_token_id: int
    path: Path | None = None
    contract: dict | None = None  # the checkpoint's vlmdet.json (model/contract.py), None without one
    coord_bin_of_id: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.coord_bin_of_id = coord_bin_of_id(self.coord_ids)


def cache_dir() -> Path:
    """`$VLMDET_CACHE` or `~/.cache/vlmdet`."""
    env = os.environ.get("VLMDET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vlmdet"


def tiny_cache_name() -> str:
    """`tiny-v1-<hash>`: the hash covers the model config and the tokenizer's inputs, so a changed
    definition builds a fresh cache folder instead of loading a stale one."""
    blob = json.dumps(
        [TINY_MODEL_CONFIG, sorted(set(default_words())), STRUCTURE_PIECES, PRETOKENIZE_PATTERN, CHAT_TEMPLATE,
         IMAGE_MEAN, IMAGE_STD, COORD_TOKENS_SPECIAL],
        sort_keys=True,
    )
    return f"{TINY_CACHE_NAME}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def tiny_checkpoint_path() -> Path:
    """The cached tiny checkpoint folder, built on first use (atomic: temp folder + rename)."""
    final = cache_dir() / tiny_cache_name()
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        build_tiny_checkpoint(tmp, seed=0)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; use its copy
            if not (final / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def find_coord_ids(tokenizer) -> list[int]:
    """Ids of `<|coord_0|>`..`<|coord_999|>` in bin order; UsageError if any is missing or not distinct."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in COORD_TOKENS if t not in vocab]
    if missing:
        raise UsageError(
            f"the tokenizer has no coordinate tokens ({len(missing)} of {NUM_BINS} missing, e.g. {missing[0]}); "
            "add them with `vlmdet expand-vocab SRC DST` and load DST"
        )
    ids = [vocab[t] for t in COORD_TOKENS]
    if len(set(ids)) != NUM_BINS:
        raise UsageError("the coordinate tokens do not have 1000 distinct ids; rerun `vlmdet expand-vocab`")
    return ids


def coord_bin_of_id(coord_ids: Sequence[int]) -> dict[int, int]:
    """token id -> bin, for the parser's token-level wrapper."""
    return {int(i): k for k, i in enumerate(coord_ids)}


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """Decoded text of each token (special tokens kept), such that "".join(pieces) == decode(ids).

    A token that ends inside a multi-byte character (byte fallback / byte-level BPE) gets "" and the
    character goes to the token that completes it."""
    pieces: list[str] = []
    pending: list[int] = []
    for i in ids:
        pending.append(int(i))
        text = tokenizer.decode(pending, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and len(pending) < 4:
            pieces.append("")
            continue
        pieces.append(text)
        pending = []
    return pieces


def checkpoint_file(source: str | Path, filename: str) -> Path | None:
    """`filename` of checkpoint `source` (a local folder or a hub model id) through transformers' own
    resolution (`transformers.utils.cached_file`: the Hugging Face cache, a download when online,
    `HF_HUB_OFFLINE=1` respected); None when the checkpoint has no such file or it cannot be fetched."""
    try:
        found = cached_file(str(source), filename, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False, _raise_exceptions_for_gated_repo=False)
    except (OSError, ValueError):  # an invalid repo id, an unreachable or unknown repo
        return None
    return Path(found) if found else None


def resolve_checkpoint(name_or_path: str) -> tuple[str, Path]:
    """`(source, folder)` for `name_or_path`: "tiny" (built on first use), a local checkpoint folder, or a
    Hugging Face hub model id (`Qwen/Qwen3-VL-2B-Instruct`) resolved like `from_pretrained` resolves it.
    `source` is what to pass to `from_pretrained`; `folder` the local folder holding its files (for a hub
    id, its snapshot folder in the cache). UsageError naming what was tried when nothing resolves."""
    if name_or_path == TINY_NAME:
        path = tiny_checkpoint_path()
        return str(path), path
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():  # a LoRA adapter folder too
        return str(path), path
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise UsageError(f"{name_or_path}: not a checkpoint folder (no config.json); use 'tiny', a local HF "
                         "checkpoint folder or a hub model id such as Qwen/Qwen3-VL-2B-Instruct")
    found = checkpoint_file(name_or_path, "config.json")
    if found is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        how = "HF_HUB_OFFLINE=1: the hub was not asked" if offline else "the hub did not provide it"
        raise UsageError(f"{name_or_path}: not a local folder (./{name_or_path} has no config.json) and not a "
                         f"model in the Hugging Face cache ({constants.HF_HUB_CACHE}); {how}")
    return name_or_path, found.parent


def load_part(path: Path, what: str, load):
    """`load()` (a `from_pretrained` call on a user-given folder); any failure of it (a truncated or
    garbage safetensors file, corrupt JSON, a missing tokenizer file: transformers, tokenizers and
    safetensors each raise their own types) becomes a one-line `UsageError` naming the folder and
    the part."""
    try:
        return load()
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 (the boundary to third-party loaders; the cause is chained)
        text = " ".join(str(err).split()) or type(err).__name__
        raise UsageError(f"{path}: cannot load the {what}: {text[:200]}") from err


def installed_transformers() -> str:
    """The installed transformers version string (from its package metadata)."""
    return importlib.metadata.version("transformers")


def check_transformers(installed: str | None = None) -> None:
    """Raise UsageError (one line) unless transformers `installed` (default: the installed one) is in
    `[TRANSFORMERS_FLOOR, TRANSFORMERS_CEILING)`. 5.14 has no replay-safe cache flag on gradient-checkpointed
    decoder layers (Channel-A's prefix reuse), releases before 5.3 no PIL image processor."""
    installed = installed_transformers() if installed is None else installed
    if not Version(TRANSFORMERS_FLOOR) <= Version(installed) < Version(TRANSFORMERS_CEILING):
        spec = f"transformers>={TRANSFORMERS_FLOOR},<{TRANSFORMERS_CEILING}"
        raise UsageError(f"transformers {installed} is installed; vlmdet needs {spec} (pip install '{spec}')")


def load_image_processor(path: Path | str):
    if checkpoint_file(path, "preprocessor_config.json") is None:
        raise UsageError(f"{path}: no preprocessor_config.json (not a vision-language checkpoint?)")
    return load_part(path, "image processor", lambda: Qwen2VLImageProcessorPil.from_pretrained(str(path)))


def load_model(name_or_path: str, dtype: str = "float32", attn_implementation: str = "sdpa", *,
               coord_tokens: bool = True) -> Loaded:
    """Load `name_or_path` ("tiny", a local checkpoint folder, a LoRA adapter folder (model/lora.py: loaded
    onto its base model) or a hub model id, see `resolve_checkpoint`) for training or generation, with
    its `vlmdet.json` contract when it has one.

    Raises UsageError for an unresolvable name, an unknown dtype, a tokenizer without the 1000
    coordinate tokens (the message names `vlmdet expand-vocab`; `coord_tokens=False` accepts such a
    checkpoint with `coord_ids == []`), coordinate ids that disagree with the contract, or a transformers
    release outside the supported range (`check_transformers`)."""
    check_transformers()
    if dtype not in DTYPES:
        raise UsageError(f"model.dtype must be one of {DTYPES}, got {dtype!r}")
    source, path = resolve_checkpoint(name_or_path)
    base = adapter_base(path)
    if base is not None and not (path / "config.json").is_file():  # a LoRA adapter: onto its base model
        loaded = load_model(base, dtype, attn_implementation, coord_tokens=coord_tokens)
        contract = read_contract(path)
        check_coord_layout(contract, loaded.coord_ids, str(path))
        return dataclasses.replace(loaded, model=load_adapter(loaded.model, path), path=path,
                                   contract=contract if contract is not None else loaded.contract)
    contract_file = checkpoint_file(source, CONTRACT_FILE)
    contract = read_contract(contract_file.parent) if contract_file is not None else None
    tokenizer = load_part(path, "tokenizer", lambda: AutoTokenizer.from_pretrained(source))
    vocab = tokenizer.get_vocab()
    if coord_tokens or COORD_TOKENS[0] in vocab:
        coord_ids = find_coord_ids(tokenizer)
    else:
        coord_ids = []
    check_coord_layout(contract, coord_ids, str(path))
    processor = load_image_processor(source)
    model = load_part(path, "model", lambda: AutoModelForImageTextToText.from_pretrained(
        source, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
    ))
    n_rows = model.get_input_embeddings().weight.shape[0]
    if coord_ids and max(coord_ids) >= n_rows:
        raise UsageError(
            f"{path}: coordinate token ids reach {max(coord_ids)} but the model has {n_rows} embedding rows; "
            "rerun `vlmdet expand-vocab`"
        )
    eot_id = vocab.get(IM_END)
    if eot_id is None:
        raise UsageError(f"{path}: the tokenizer has no {IM_END} token (not a Qwen-style chat checkpoint)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_id
    image_token_id = getattr(model.config, "image_token_id", None)
    if image_token_id is None:
        image_token_id = vocab[IMAGE_PAD]
    return Loaded(
        model=model, processor=processor, tokenizer=tokenizer, coord_ids=coord_ids, eot_id=int(eot_id),
        pad_id=int(pad_id), image_token_id=int(image_token_id), path=path, contract=contract,
    )
