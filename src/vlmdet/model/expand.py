"""`vlmdet expand-vocab SRC DST`: add the 1000 coordinate tokens to a checkpoint.

- Adds `<|coord_0|>`..`<|coord_999|>` as added tokens that are not special (one atomic id each, and
  `decode(..., skip_special_tokens=True)`, the default of most serving stacks, keeps them); tokens
  already present are kept with their ids, so running it on its own output adds nothing and changes
  no weight (idempotent). Coord tokens that a checkpoint has as *special* tokens are made plain in
  the written tokenizer files (`plain_coord_tokens`; ids unchanged).
- Verifies the 1000 ids are distinct (index k = bin k) and below the number of embedding rows.
- Grows the embedding matrix (and an untied output head) to cover every id. Rows of *newly added*
  tokens are initialized from the statistics of the pre-existing token rows: per-dimension mean plus
  `NOISE_SCALE` x per-dimension std x N(0, 1) noise from a generator seeded with `seed` (so the coord
  rows are distinct but in-distribution). This also re-initializes rows that a checkpoint had padded
  beyond its tokenizer (Qwen's 151936 rows for 151669 tokens) when a new token lands there.
  A tied head stays tied (checked by storage).
- Writes DST atomically (a temporary sibling folder renamed into place): model (safetensors),
  tokenizer, and every other file of SRC that is not weights (processor configs, chat template...).
  SRC is never modified; DST must not exist yet (or be an empty folder). SRC may be a hub model id
  (`Qwen/Qwen3-VL-2B-Instruct`, resolved like `model/load.resolve_checkpoint`).
- DST carries `vlmdet.json` (model/contract.py) with the coordinate-token layout and no prompt yet (the
  first training run sets it); a SRC that already has one keeps it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from vlmdet.coords import COORD_TOKENS, NUM_BINS
from vlmdet.errors import UsageError
from vlmdet.io import atomic_write_json
from vlmdet.options import bounded

NOISE_SCALE = 0.1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


def _init_rows(weight, new_ids: list[int], old_ids: list[int], generator) -> None:
    """weight[new_ids] = mean(weight[old_ids]) + NOISE_SCALE * std(weight[old_ids]) * N(0, 1)."""
    import torch

    with torch.no_grad():
        ref = weight[old_ids].float()
        mean, std = ref.mean(0), ref.std(0)
        noise = torch.randn(len(new_ids), weight.shape[1], generator=generator)
        weight[new_ids] = (mean + NOISE_SCALE * std * noise).to(weight.dtype)


def plain_coord_tokens(folder) -> int:
    """Make the coordinate tokens of the tokenizer files in `folder` plain (not special) added tokens,
    in place: `"special": false` on their entries of `tokenizer.json` `added_tokens` and of
    `tokenizer_config.json` `added_tokens_decoder`, and out of its special-token lists. Ids,
    vocabulary and weights are unchanged. Returns how many tokenizer.json entries changed."""
    coord = set(COORD_TOKENS)
    folder = Path(folder)
    changed = 0
    path = folder / "tokenizer.json"
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        for entry in data.get("added_tokens", []):
            if entry.get("content") in coord and entry.get("special"):
                entry["special"] = False
                changed += 1
        if changed:
            atomic_write_json(path, data)
    path = folder / "tokenizer_config.json"
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        edited = False
        for entry in data.get("added_tokens_decoder", {}).values():
            if entry.get("content") in coord and entry.get("special"):
                entry["special"] = False
                edited = True
        for key in ("additional_special_tokens", "extra_special_tokens"):
            if isinstance(data.get(key), list) and coord & set(data[key]):
                data[key] = [t for t in data[key] if t not in coord]
                edited = True
        if edited:
            atomic_write_json(path, data)
    return changed


def expand_vocab(src, dst, seed: int = 0) -> dict:
    """Add the coordinate tokens to checkpoint folder `src`, write the result to `dst`; return a
    summary dict (`added`, `already_present`, `vocab_size_before/after`, `embedding_rows_before/after`,
    `coord_id_first/last`, `tied`, `src`, `dst`)."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from vlmdet.model.contract import CONTRACT_FILE, make_contract, write_contract
    from vlmdet.model.load import check_transformers, load_part, resolve_checkpoint

    check_transformers()
    source, src = resolve_checkpoint(str(src))
    src, dst = src.resolve(), Path(dst).expanduser().resolve()
    if dst == src:
        raise UsageError("DST must differ from SRC (the source checkpoint is never modified)")
    if dst.exists() and any(dst.iterdir()):
        raise UsageError(f"{dst}: already exists and is not empty; choose a new folder")

    tokenizer = load_part(src, "tokenizer", lambda: AutoTokenizer.from_pretrained(source))
    model = load_part(src, "model", lambda: AutoModelForImageTextToText.from_pretrained(source, dtype="auto"))
    vocab = tokenizer.get_vocab()
    n_tok_before = len(tokenizer)
    rows_before = model.get_input_embeddings().weight.shape[0]
    missing = [t for t in COORD_TOKENS if t not in vocab]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in COORD_TOKENS]
    if len(set(ids)) != NUM_BINS:
        raise UsageError(f"{src}: the coordinate tokens did not get {NUM_BINS} distinct ids")
    for t in (COORD_TOKENS[0], COORD_TOKENS[999]):
        if tokenizer(t, add_special_tokens=False)["input_ids"] != [vocab[t]]:
            raise UsageError(f"{src}: {t} does not tokenize to its own single id")

    new_ids = [vocab[t] for t in missing]
    new_set = set(new_ids)
    old_ids = [i for i in range(min(n_tok_before, rows_before)) if i not in new_set]
    tied = model.get_output_embeddings() is None or (
        model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    )
    need = max(len(tokenizer), rows_before)
    if need > rows_before:
        model.resize_token_embeddings(need, mean_resizing=False)
    if new_ids:
        gen = torch.Generator().manual_seed(seed)
        _init_rows(model.get_input_embeddings().weight, new_ids, old_ids, gen)
        if not tied:
            _init_rows(model.get_output_embeddings().weight, new_ids, old_ids, gen)
    rows_after = model.get_input_embeddings().weight.shape[0]
    if tied and model.get_output_embeddings() is not None:
        if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            raise RuntimeError("the output head is no longer tied to the input embeddings after resizing")
    if max(ids) >= rows_after:
        raise RuntimeError(f"coordinate id {max(ids)} >= {rows_after} embedding rows after resizing")

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        made_plain = plain_coord_tokens(tmp)
        for f in src.iterdir():
            if f.is_file() and not (tmp / f.name).exists() and not f.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(f, tmp / f.name)
        if not (tmp / CONTRACT_FILE).exists():  # a vlmdet checkpoint keeps its own contract
            write_contract(tmp, make_contract(None, ids, trained=False))
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        os.rename(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "src": str(src),
        "dst": str(dst),
        "added": len(missing),
        "made_plain": made_plain,
        "already_present": NUM_BINS - len(missing),
        "vocab_size_before": n_tok_before,
        "vocab_size_after": len(tokenizer),
        "embedding_rows_before": rows_before,
        "embedding_rows_after": rows_after,
        "coord_id_first": ids[0],
        "coord_id_last": ids[-1],
        "tied": bool(tied),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source checkpoint folder or hub model id (left unchanged)")
    parser.add_argument("dst", help="new checkpoint folder to write (must not exist)")
    parser.add_argument("--seed", type=bounded(int, lambda v: 0 <= v < 2**32, "in [0, 2**32)"), default=0, help="seed for the new embedding rows (default 0)")


def run(args: argparse.Namespace) -> int:
    summary = expand_vocab(args.src, args.dst, seed=args.seed)
    print(json.dumps(summary, indent=2))
    return 0
