"""Channel-A prefix reuse: the keys/values of the rows all soft-context iterations share, computed once.

Iteration m > 0 of the Channel-A loop (`channel_a.soft_context_forwards`) replaces only coord-slot rows
of the input. Every row before `start = min(rows.coord_t)` (the predicting row of the batch's earliest
first coord slot) gets bitwise the same input in every iteration: the prompt, the image rows (the
vision encoder's output), the first `{"desc": "...", "bbox_2d": [`. Attention being causal, those
rows also have the same hidden states, keys and values in every iteration, so:

- iteration 0 runs the usual full forward with a recording cache (`IterationForwards`, m = 0): each
  decoder layer's attention hands the cache its keys/values after RoPE, `[B, H_kv, L, d]`; the cache
  keeps rows `< start` (views that carry iteration 0's graph) and hands the layer's own keys/values
  back, so the forward computes exactly what it computes without a cache;
- iteration m > 0 runs only the suffix rows `start..L-1`: input_ids `[B, L - start]` (the soft
  context written at the coord slots of their embeddings inside the forward, `forward.slot_embeddings`), the explicit mRoPE positions `position_ids[..., start:]`,
  the full `attention_mask` `[B, L]`, no pixel values (no vision encoder and no deepstack: the
  suffix holds no image rows), and a fresh context cache whose layers return `cat(kept, new)` along
  the sequence without storing anything, so no cache is ever mutated and the kept tensors serve
  every iteration. Logits at rows `< start` that a later iteration asks for (the
  final text-gate rows) are iteration 0's logits at those rows: the same numbers, the same graph.

The mathematics is the full-recompute path's: in `unroll` every iteration's loss reaches the prefix
(and through it the vision encoder) through the kept keys/values; in `em_detach` the middle
iterations run under `no_grad` and the last one back-propagates into the prefix of iteration 0,
where the full path back-propagates into its own bitwise-equal recomputation of it. Only float32
round-off of the suffix rows differs (matrix products over `L - start` rows instead of `L`).

Everything goes through one call of the top-level model per iteration (`forward.logits_at`, with
`cache=`), so DDP / FSDP / DeepSpeed wrappers see normal forwards. With gradient checkpointing the
decoder layers of transformers drop a `cache` argument unless `_can_checkpoint_with_cache` is set;
both caches here are safe to replay (the recorder keeps its first tensors, the context cache stores
nothing), which is what that flag asks for, so it is set on the layers for the duration of these
forwards (non-reentrant checkpointing only: the reentrant kind gives no gradient to tensors that do
not enter as arguments).

`plan(model, batch, rows, ...)` returns the step's `IterationForwards`, which runs the full path
instead: silently when there is nothing to reuse (N = 1, no coord slot in the batch, switched off by
`stage2.reuse_prefix`); with a warning logged once per reason when the model cannot take it
(`unsupported_reason`) or when iteration 0 did not reach every layer's attention (the step then
continues on the full path).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Mapping, Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from vlmdet.train import forward as fwd

log = logging.getLogger(__name__)

#: attention implementations whose masks and kernels are verified with a past (tests/test_prefix_kv.py)
ATTENTION = ("sdpa", "eager")

_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("stage2.reuse_prefix: %s; Channel-A recomputes the full sequence every iteration", reason)


class _RecordLayer(DynamicLayer):
    """Iteration 0: keeps rows `< start` of the first keys/values it sees, returns them unchanged."""

    def __init__(self, start: int):
        super().__init__()
        self.start = start
        self.kept: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        if self.kept is None:  # a replay under gradient checkpointing records nothing new
            self.kept = (key_states[..., : self.start, :], value_states[..., : self.start, :])
        return key_states, value_states


class _ContextLayer(DynamicLayer):
    """Iterations m > 0: the kept prefix keys/values in front of the suffix's own; stores nothing."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def _decoder_layers(inner) -> list:
    return [m for m in inner.modules() if isinstance(m, GradientCheckpointingLayer)]


@contextlib.contextmanager
def _cache_through_checkpointing(inner):
    """Let a replay-safe cache reach the attention of checkpointed layers (module docstring)."""
    layers = [m for m in _decoder_layers(inner) if m.gradient_checkpointing and "_can_checkpoint_with_cache" not in vars(m)]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            del m._can_checkpoint_with_cache


def unsupported_reason(model) -> str | None:
    """Why `model` (possibly wrapped) cannot run the suffix-only iterations, or None when it can."""
    inner = fwd.unwrap(model)
    text = inner.config.get_text_config()
    impl = getattr(text, "_attn_implementation", None) or getattr(inner.config, "_attn_implementation", None)
    if impl not in ATTENTION:
        return f"attention implementation {impl!r} is not one of {', '.join(ATTENTION)}"
    if any(t != "full_attention" for t in getattr(text, "layer_types", None) or ()):
        return "the language model has non-full-attention layers"
    if fwd.cache_argument(inner) is None:
        return f"{type(inner).__name__}.forward takes no `cache` / `past_key_values`"
    for m in _decoder_layers(inner):
        if m.gradient_checkpointing:
            kw = getattr(getattr(m, "_gradient_checkpointing_func", None), "keywords", {}) or {}
            if kw.get("use_reentrant", True) is not False:
                return "reentrant gradient checkpointing gives no gradient to the kept keys/values"
    return None


class IterationForwards:
    """The forwards of one Channel-A step: `forwards(m, row_sets, slots, ctx)` -> logits per row set.

    model: the (possibly wrapped) training model; batch: the collated GT batch; position_ids `[3, B, L]`;
    `start`: the first suffix row, or None for the full path (`plan`); `coord_ids`: the 1000 coordinate-token
    ids (the rows of `E(C)`). Per iteration m: `row_sets` are
    `(b [Ni], t [Ni])` predicting rows, the first iteration's sets first in the same order; `slots`
    `(b, p)` the coord-slot positions and `ctx` the function `E(C) [1000, D] -> [S, D]` of their context
    embeddings (None at m = 0), called inside the forward (`forward.slot_embeddings`). Returns
    a list of `[Ni, V]` logits like `forward.logits_at`. `reused` says whether iterations m > 0 ran on the
    suffix rows (module docstring); when iteration 0 leaves a layer unrecorded the step continues on the
    full path (warned once)."""

    def __init__(self, model, batch: Mapping[str, Any], position_ids: torch.Tensor, start: int | None, coord_ids=()):
        self.model, self.batch, self.position_ids, self.start = model, batch, position_ids, start
        self.coord_ids = coord_ids
        inner = fwd.unwrap(model)
        self.n_layers = int(inner.config.get_text_config().num_hidden_layers)
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.first: list[torch.Tensor] = []

    @property
    def reused(self) -> bool:
        return self.kept is not None

    def __call__(self, m: int, row_sets: Sequence, slots: tuple[torch.Tensor, torch.Tensor],
                 ctx: Callable[[torch.Tensor], torch.Tensor] | None) -> list[torch.Tensor]:
        if m > 0 and self.kept is not None:
            return self._suffix(row_sets, slots, ctx)
        if m > 0 or self.start is None:
            with fwd.slot_embeddings(self.model, self.batch["input_ids"].shape, slots, ctx, self.coord_ids):
                return fwd.logits_at(self.model, self.batch, *row_sets, position_ids=self.position_ids)
        got = self._record(row_sets)
        self.first = got
        return got

    def _record(self, row_sets) -> list[torch.Tensor]:
        """Iteration 0: the full forward, keeping rows `< start` of every layer's keys/values."""
        layers = [_RecordLayer(self.start) for _ in range(self.n_layers)]
        with _cache_through_checkpointing(fwd.unwrap(self.model)):
            got = fwd.logits_at(self.model, self.batch, *row_sets, position_ids=self.position_ids,
                                cache=Cache(layers=layers))
        if all(layer.kept is not None for layer in layers):
            self.kept = [layer.kept for layer in layers]
        else:
            _warn_once("the forward did not hand every decoder layer's keys/values to the cache")
        return got

    def _suffix(self, row_sets, slots, ctx) -> list[torch.Tensor]:
        """Iteration m > 0: one forward over rows `start..L-1` against the kept keys/values; rows `< start`
        of a set come from iteration 0's logits of the same set."""
        s = self.start
        ids = self.batch["input_ids"][:, s:]
        later = [t >= s for _, t in row_sets]
        shifted = [(b[keep], t[keep] - s) for (b, t), keep in zip(row_sets, later)]
        cache = Cache(layers=[_ContextLayer(k, v) for k, v in self.kept])
        suffix = {"input_ids": ids, "attention_mask": self.batch["attention_mask"]}
        with _cache_through_checkpointing(fwd.unwrap(self.model)), \
                fwd.slot_embeddings(self.model, ids.shape, (slots[0], slots[1] - s), ctx, self.coord_ids):
            got = fwd.logits_at(self.model, suffix, *shifted, position_ids=self.position_ids[..., s:], cache=cache)
        out = []
        for logits, keep, first in zip(got, later, self.first):
            out.append(logits if bool(keep.all()) else first.index_put((keep.nonzero().squeeze(1),), logits))
        return out


def plan(model, batch: Mapping[str, Any], rows, *, n_iter: int, position_ids: torch.Tensor, enabled: bool = True,
         coord_ids=()) -> IterationForwards:
    """The `IterationForwards` of one Channel-A step: suffix-only iterations when `enabled`, N >= 2, the
    batch has a coord slot and the model can take it (`unsupported_reason`, warned once per reason);
    otherwise the full path. `rows`: the step's `objective.Rows`."""
    start = None
    if enabled and n_iter >= 2 and rows.coord_t.numel() > 0:
        reason = unsupported_reason(model)
        if reason is None:
            start = int(rows.coord_t.min())
        else:
            _warn_once(reason)
    return IterationForwards(model, batch, position_ids, start, coord_ids)
