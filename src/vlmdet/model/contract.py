"""`vlmdet.json`: the contract a checkpoint carries -- how to ask it and how to read its answers.

Every checkpoint vlmdet writes (`checkpoint-N` and `checkpoint-final` of a training run, the output of
`vlmdet expand-vocab`, the shipped demo checkpoint) holds a `vlmdet.json` next to `config.json`:

    {
      "contract_version": 1,
      "vlmdet_version": "0.1.0",                 # the vlmdet that wrote it
      "answer_format": "coordjson",              # answer_format.ANSWER_FORMATS
      "prompt": {"system": "...", "user": "..."} # the exact prompt texts it was trained with,
                                                 # or null: not trained on a prompt yet (expand-vocab)
      "field_order": "desc_first",               # or null (not trained yet)
      "ordering": "sorted",                      # or null (not trained yet)
      "coord_tokens": {"first_id": 151670, "count": 1000}   # or null (no coordinate tokens)
    }

`vlmdet eval`, `vlmdet train` from a checkpoint and `vlmdet demo` default to it (`apply_contract`): a
setting the config does not set explicitly takes the checkpoint's value; an explicit setting that
differs is a `UsageError` naming both values, unless `override=True` (`--override-prompt`), which keeps
the config's value and returns a note saying so. "Explicit" means written in the YAML (or a file it
extends) or given as an override (`Config.explicit_keys`, set by `config.load_config`); for a `Config`
built otherwise, a value different from the dataclass default counts as explicit. The coordinate-token
layout is checked when the checkpoint is loaded (`check_coord_layout`): the tokenizer's ids must be the
contiguous run `first_id .. first_id + count - 1`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from vlmdet import __version__
from vlmdet.config import PromptConfig
from vlmdet.errors import UsageError
from vlmdet.io import atomic_write_json
from vlmdet.model.chat import system_prompt, user_prompt

CONTRACT_FILE = "vlmdet.json"
CONTRACT_VERSION = 1
KEYS = ("contract_version", "vlmdet_version", "answer_format", "prompt", "field_order", "ordering", "coord_tokens")

#: contract key -> (config path it sets, config paths whose explicit setting counts as setting it)
_SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "answer_format": ("prompt.answer_format", ("prompt.answer_format",)),
    "field_order": ("prompt.field_order", ("prompt.field_order",)),
    "ordering": ("prompt.ordering", ("prompt.ordering",)),
    "system": ("prompt.system", ("prompt.system", "prompt.variant")),
    "user": ("prompt.user", ("prompt.user", "prompt.variant")),
}


def coord_layout(coord_ids: Sequence[int]) -> dict | None:
    """`{"first_id", "count"}` of contiguous coordinate ids in bin order; None without coord tokens.
    ValueError when the ids are not one contiguous run (vlmdet never writes such a checkpoint)."""
    ids = [int(i) for i in coord_ids]
    if not ids:
        return None
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ValueError("the coordinate token ids are not one contiguous run in bin order")
    return {"first_id": ids[0], "count": len(ids)}


def make_contract(prompt_cfg: Any, coord_ids: Sequence[int], *, trained: bool = True) -> dict:
    """The contract of a checkpoint trained with `prompt_cfg` (the `prompt` config section; its resolved
    texts are stored). `trained=False` (expand-vocab): prompt, field order and ordering are null."""
    fmt = getattr(prompt_cfg, "answer_format", "coordjson") if prompt_cfg is not None else "coordjson"
    return {
        "contract_version": CONTRACT_VERSION,
        "vlmdet_version": __version__,
        "answer_format": fmt,
        "prompt": {"system": system_prompt(prompt_cfg), "user": user_prompt(prompt_cfg)} if trained else None,
        "field_order": getattr(prompt_cfg, "field_order", "desc_first") if trained else None,
        "ordering": getattr(prompt_cfg, "ordering", "sorted") if trained else None,
        "coord_tokens": coord_layout(coord_ids),
    }


def write_contract(folder: str | Path, contract: dict) -> Path:
    """Write `folder/vlmdet.json` atomically; returns its path."""
    path = Path(folder) / CONTRACT_FILE
    atomic_write_json(path, contract)
    return path


def read_contract(folder: str | Path | None) -> dict | None:
    """The contract in `folder` (None when the folder has no vlmdet.json: a checkpoint vlmdet did not write).
    A broken file is a UsageError `path: rule`."""
    if folder is None:
        return None
    path = Path(folder) / CONTRACT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: must be a JSON object")
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise UsageError(f"{path}: missing key(s) {', '.join(missing)}")
    if data["contract_version"] != CONTRACT_VERSION:
        raise UsageError(f"{path}: contract_version {data['contract_version']!r} is not {CONTRACT_VERSION} "
                         "(written by another vlmdet version)")
    prompt = data["prompt"]
    if prompt is not None and not (isinstance(prompt, dict) and all(isinstance(prompt.get(k), str) for k in ("system", "user"))):
        raise UsageError(f"{path}: 'prompt' must be null or {{\"system\": str, \"user\": str}}")
    return data


def check_coord_layout(contract: dict | None, coord_ids: Sequence[int], where: str) -> None:
    """UsageError when the tokenizer's coordinate ids disagree with the contract's layout."""
    if contract is None:
        return
    expected = contract.get("coord_tokens")
    try:
        got = coord_layout(coord_ids)
    except ValueError as err:
        raise UsageError(f"{where}: {err}") from None
    if expected is not None and got is not None and expected != got:
        raise UsageError(f"{where}/{CONTRACT_FILE}: coord_tokens {expected} but the tokenizer has {got}")


def _contract_values(contract: dict) -> dict[str, Any]:
    prompt = contract.get("prompt") or {}
    return {
        "answer_format": contract.get("answer_format"),
        "field_order": contract.get("field_order"),
        "ordering": contract.get("ordering"),
        "system": prompt.get("system"),
        "user": prompt.get("user"),
    }


def _config_values(prompt_cfg) -> dict[str, Any]:
    return {
        "answer_format": prompt_cfg.answer_format,
        "field_order": prompt_cfg.field_order,
        "ordering": prompt_cfg.ordering,
        "system": system_prompt(prompt_cfg),
        "user": user_prompt(prompt_cfg),
    }


def _explicit(cfg, paths: tuple[str, ...]) -> bool:
    keys = getattr(cfg, "explicit_keys", None)
    if keys is not None:
        return any(p in keys for p in paths)
    default = PromptConfig()
    return any(getattr(cfg.prompt, p.split(".", 1)[1]) != getattr(default, p.split(".", 1)[1]) for p in paths)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "...'"


def apply_contract(cfg, contract: dict | None, source: str, override: bool = False) -> list[str]:
    """Make `cfg.prompt` follow `contract` (module docstring); returns notes for the user (one per
    explicit setting kept under `override`). `source` names the checkpoint in messages."""
    if contract is None:
        return []
    wanted = _contract_values(contract)
    have = _config_values(cfg.prompt)
    notes = []
    for key, (path, explicit_paths) in _SETTINGS.items():
        value = wanted[key]
        if value is None or value == have[key]:
            continue
        if _explicit(cfg, explicit_paths):
            if not override:
                raise UsageError(
                    f"{path}: the config sets {_short(have[key])} but {source}/{CONTRACT_FILE} says {_short(value)}; "
                    "remove the setting to use the checkpoint's, or pass --override-prompt"
                )
            notes.append(f"--override-prompt: {path} {_short(have[key])} (the checkpoint was trained with {_short(value)})")
            continue
        # default: the checkpoint's value (texts verbatim: they no longer depend on the variant)
        setattr(cfg.prompt, path.split(".", 1)[1], value)
    return notes
