"""Teacher-forced forwards that materialize logits only at the rows a loss needs (see docs/TRAINING.md).

Causal shift: the logits that predict the token at input position p sit at row p - 1. A "row" below
is always a *predicting* row `(b, t)` with t = p - 1.

Two ways to get logits at chosen rows, both never building a full `[B, L, |V|]` tensor:

- `gathered_logits(model, batch, rows)` (use this in training code): one call of the *top-level*
  model (`model(...)`, so DDP / FSDP / DeepSpeed wrappers see a normal forward and synchronize as
  usual); a forward pre-hook on the output head (`lm_head`), in place only for that call, replaces
  the head's input `[B, L, D]` by its masked rows `[N, D]`, so the head runs on `[N, D]` only. This
  needs nothing from transformers beyond the standard `lm_head` call (no tensor `logits_to_keep`,
  which only newer releases accept). Rows come back in row-major (b, then t) order of the mask.
- `hidden_states(model, batch)` + `head_logits(model, hidden[N, D])`: the inner model's final hidden
  states `[B, L, D]`, then the output head on gathered rows. This calls `model.model(...)` directly,
  which bypasses a DDP/FSDP wrapper's forward (no gradient-sync bookkeeping, no FSDP parameter
  gathering): fine on one device, but multi-GPU code should use `gathered_logits`.

Every forward passes `use_cache=False` (a `cache` object, when given, still holds keys/values of
earlier rows: `train/prefix_kv.py`; it is passed as `cache` or, before transformers 5.24, as
`past_key_values`: `cache_argument`), the batch's `attention_mask`, `pixel_values`,
`image_grid_thw`, `mm_token_type_ids`, and explicit mRoPE `position_ids` (`[3, B, L]`, computed from
the GT ids by `model/collate.position_ids` unless given), with either `input_ids` or `inputs_embeds`
(image placeholder rows of `inputs_embeds` must be the embedding of the image token).

Which rows carry a loss is `train/objective.supervised_rows`.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Mapping

import torch

from vlmdet.model.collate import position_ids as mrope_position_ids

#: batch keys passed through to the model (when present and not None)
MODEL_KEYS = ("attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def unwrap(model):
    """The `PreTrainedModel` inside DDP / DeepSpeed / compile wrappers (`.module`, `._orig_mod`) and a
    peft `PeftModel` (its base model, which holds the injected LoRA layers)."""
    while True:
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__.startswith("PeftModel"):
            inner = model.get_base_model()
        if inner is None:
            return model
        model = inner


def cache_argument(model) -> str | None:
    """The name under which the model's forward takes a `Cache`: `cache` (transformers >= 5.24), else
    `past_key_values` (earlier 5.x); None when it takes neither."""
    params = inspect.signature(unwrap(model).forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _model_kwargs(model, batch: Mapping[str, Any], inputs_embeds, position_ids, cache=None) -> dict:
    if position_ids is None:
        position_ids = mrope_position_ids(unwrap(model), batch)
    kwargs = {k: batch[k] for k in MODEL_KEYS if batch.get(k) is not None}
    kwargs.update(position_ids=position_ids, use_cache=False)
    if cache is not None:
        kwargs[cache_argument(model)] = cache
    if inputs_embeds is None:
        kwargs["input_ids"] = batch["input_ids"]
    else:
        kwargs["inputs_embeds"] = inputs_embeds
    return kwargs


def hidden_states(model, batch: Mapping[str, Any], inputs_embeds=None, position_ids=None) -> torch.Tensor:
    """Final hidden states `[B, L, D]` of the inner model (`model.model`, after the final norm).

    Single-device helper: see the module docstring for why multi-GPU code uses `gathered_logits`."""
    inner = unwrap(model).model
    out = inner(**_model_kwargs(model, batch, inputs_embeds, position_ids))
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The output head (`lm_head`) on gathered rows: hidden `[N, D]` -> logits `[N, V]` (model dtype)."""
    return unwrap(model).get_output_embeddings()(hidden)


def gathered_logits(model, batch: Mapping[str, Any], rows: torch.Tensor, inputs_embeds=None, position_ids=None,
                    cache=None) -> torch.Tensor:
    """Logits `[N, V]` (model dtype) at the True rows of `rows` (bool `[B, L]`, N = rows.sum()), in
    row-major order, from one top-level forward (module docstring). `cache`: a transformers `Cache`
    holding keys/values of rows before the batch's (see `train/prefix_kv.py`), else None."""
    if rows.dtype != torch.bool:
        raise TypeError(f"rows must be a bool mask [B, L], got {rows.dtype}")
    kwargs = _model_kwargs(model, batch, inputs_embeds, position_ids, cache)

    def keep_rows(module, args):
        (hidden,) = args
        if hidden.shape[:2] != rows.shape:
            raise RuntimeError(f"output head input {tuple(hidden.shape)} does not match rows {tuple(rows.shape)}")
        return (hidden[rows],)

    handle = unwrap(model).get_output_embeddings().register_forward_pre_hook(keep_rows)
    try:
        logits = model(**kwargs).logits
    finally:
        handle.remove()
    return logits.reshape(-1, logits.shape[-1])


@contextlib.contextmanager
def slot_embeddings(model, shape: tuple[int, int], slots: tuple[torch.Tensor, torch.Tensor], ctx, coord_ids):
    """While active, the input-embedding module's output `[B, L, D]` (`shape` = (B, L)) gets
    `ctx(E(C))` written at the positions `slots` `(b [S], p [S])`, where `E(C)` `[1000, D]` are the
    embedding rows of `coord_ids` and `ctx` returns `[S, D]`. The replacement runs inside the
    top-level forward (a forward hook put in front of the module's other hooks), so under FSDP the
    embedding weight is the gathered one there and its gradient flows back through the wrapper; the
    caller passes `input_ids`, not `inputs_embeds`. `ctx` None: nothing is replaced."""
    if ctx is None:
        yield
        return
    embed = unwrap(model).get_input_embeddings()
    done = []

    def replace(module, args, out):
        if done or tuple(out.shape[:2]) != tuple(shape):  # only the call that embeds the batch's ids
            return out
        done.append(True)
        cid = torch.as_tensor(coord_ids, device=out.device)
        values = ctx(module.forward(cid))  # the module's own forward (a peft wrapper adds its deltas), no hooks
        return out.index_put(slots, values.to(out.dtype))

    handle = embed.register_forward_hook(replace, prepend=True)
    try:
        yield
    finally:
        handle.remove()
    if not done:
        raise RuntimeError("the forward did not embed the batch's input_ids: no coordinate slot was replaced")


def rows_mask(shape: tuple[int, int], *row_sets: tuple[torch.Tensor, torch.Tensor], device=None) -> torch.Tensor:
    """Bool mask `[B, L]` that is True at every `(b, t)` of the given row sets."""
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    for b, t in row_sets:
        mask[b, t] = True
    return mask


def logits_at(model, batch: Mapping[str, Any], *row_sets, inputs_embeds=None, position_ids=None, cache=None) -> list[torch.Tensor]:
    """Logits at several row sets `(b [Ni], t [Ni])` from ONE forward: a list of `[Ni, V]`, one per set,
    in the order of each set's own indices (sets may overlap; duplicates are computed once).
    `cache`: passed to the model (`gathered_logits`)."""
    ids = batch["input_ids"]
    B, L = ids.shape
    mask = rows_mask((B, L), *row_sets, device=ids.device)
    logits = gathered_logits(model, batch, mask, inputs_embeds=inputs_embeds, position_ids=position_ids, cache=cache)
    where = mask.flatten().long().cumsum(0) - 1  # flat (b, t) -> its row in `logits`
    return [logits.index_select(0, where[b * L + t]) for b, t in row_sets]
