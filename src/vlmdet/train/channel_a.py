"""Stage-2 Channel-A: soft self-context over the GT teacher-forced sequence (see docs/STAGE2.md).

Per batch, N = `stage2.n_softctx_iter` >= 1 forwards over the same GT sequence:

- iteration 0 ("A1"): plain teacher forcing on `input_ids`;
- iteration m > 0: the model embeds `input_ids` itself and, inside that forward, every coord slot row p
  (all at once) of the embedding output is replaced by the context embedding of the previous
  iteration's coord distribution at row p-1 (`forward.slot_embeddings`: a forward hook on the input
  embeddings, so under FSDP `E` is the gathered weight there):
  `soft`: sum_k softmax(z[p-1, C] / T)_k · E(C_k); `hard`: E(C_argmax); `st`: hard value, soft gradient.
  Every other row (prompt, image placeholders, structure, desc) is bitwise identical to iteration 0;
- mRoPE position ids are computed once from the GT ids and passed explicitly to every forward;
  `use_cache=False` (see `vlmdet.train.forward`);
- prefix reuse (`stage2.reuse_prefix`, on by default; `vlmdet.train.prefix_kv`): the rows before the
  batch's earliest coord slot are the same in every iteration, so iteration 0 keeps their per-layer
  keys/values and iterations m > 0 run only the rows from there on (no vision encoder), with the same
  losses and gradients as recomputing the whole sequence; models that cannot take it fall back to
  the full path (warned once);
- logits are gathered only at the rows a loss needs: CE rows (A1 only), coord rows p-1 (every
  iteration: they feed the next iteration's context and the final coord losses), text-gate rows on the
  final iteration when that term is on. Never a full `[B, L, V]` tensor.

Which logits feed which term:
- `token_ce`: A1 logits (structure + desc tokens; desc weighted `losses.desc_ce_weight`; coord slots
  excluded when `losses.ce_on_coord_slots` is false, its Stage-2 default);
- every coord term (`coord_ce`, `soft_ce`, `w1`, `smoothl1`, `ciou` on expected boxes, `coord_gate`,
  `entropy`), `text_gate` and `coord_diag/*`: the final iteration's logits;
- optional A1 anchors `stage2.a1_anchor` {coord term: weight}: the same coord terms on A1 logits,
  logged as `loss/a1_<term>`.

`softctx_grad_mode`:
- `unroll`: every iteration records a graph; context embeddings are not detached, so a final coord
  loss back-propagates through them into the A1 forward;
- `em_detach`: context embeddings are detached; iteration 0 and the last iteration run with grad,
  middle iterations under `torch.no_grad()` (running A1 under no_grad is a known bug of the original method: CE,
  anchored on A1 logits, then had no gradient at all).
N = 1 is plain teacher forcing (A1 logits = final logits): Stage 1 is `channel_a_loss` with N = 1
(`softctx=None`), and Channel-B (`channel_b.py`) runs `teacher_forced_terms` with N = 1 over its rebuilt
target. The rows, the loss table and the weighting are `train/objective.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from vlmdet import losses as L
from vlmdet.config import LossesConfig, Stage2Config
from vlmdet.model.collate import position_ids as mrope_position_ids
from vlmdet.train import forward, prefix_kv
from vlmdet.train.objective import (
    Logits,
    Rows,
    active,
    combine,
    coord_diagnostics,
    hyper,
    log_terms,
    loss_terms,
    supervised_rows,
    weights,
)


# ------------------------------------------------------------------------------------------------
# the soft self-context loop


def context_embeddings(coord_logits: torch.Tensor, coord_embeds: torch.Tensor, temperature: float, mode: str) -> torch.Tensor:
    """Context embeddings for coord slots from the previous iteration's coord logits.

    coord_logits `[S, 1000]` (z[p-1, C]), coord_embeds `[1000, D]` (= E(C)), mode in soft | st | hard
    -> `[S, D]` in float32. `soft`: pi @ E(C) with pi = softmax(s / T); `hard`: E(C_argmax) (exactly the
    embedding row, no arithmetic); `st`: the hard value with the soft gradient (hard + soft - soft.detach()).
    """
    if mode == "hard":
        return coord_embeds.float()[coord_logits.argmax(-1)]
    pi = L.coord_probs(coord_logits, temperature)
    soft = pi @ coord_embeds.float()
    if mode == "soft":
        return soft
    if mode == "st":
        hard = coord_embeds.float()[coord_logits.argmax(-1)]
        return hard + (soft - soft.detach())
    raise ValueError(f"ctx_embed_mode must be one of soft, st, hard, got {mode!r}")


@dataclass
class ChannelAOutput:
    """Gathered logits of a Channel-A pass.

    `ce_logits` `[Nc, V]`: A1 logits at the CE rows; `a1_coord_logits` / `final_coord_logits` `[Ns, V]`:
    A1 / final-iteration logits at coord slots' predicting rows (the same tensor when N = 1);
    `final_text_logits` `[Nc, V]` final-iteration logits at the CE rows, or None when not requested;
    `n_forwards`: forwards run; `prefix_reused`: iterations after the first ran on the suffix rows only
    against iteration 0's prefix keys/values (`prefix_kv`).
    """

    ce_logits: torch.Tensor
    a1_coord_logits: torch.Tensor
    final_coord_logits: torch.Tensor
    final_text_logits: torch.Tensor | None
    n_forwards: int
    prefix_reused: bool = False


def soft_context_forwards(
    model,
    batch: Mapping[str, torch.Tensor],
    rows: Rows,
    coord_ids,
    *,
    n_iter: int,
    temperature: float = 1.0,
    grad_mode: str = "unroll",
    ctx_embed_mode: str = "soft",
    need_final_text: bool = False,
    position_ids: torch.Tensor | None = None,
    reuse_prefix: bool = True,
) -> ChannelAOutput:
    """Run the N-iteration soft self-context loop (module docstring) and gather logits.

    Every forward is one call of the top-level `model` (DDP/FSDP wrappers see a normal forward) through
    `forward.logits_at`, with `input_ids` and explicit `position_ids` `[3, B, L]` (default:
    `collate.position_ids(model, batch)`, mRoPE from the GT ids). The soft-context slots are the supervised coord slots
    (`rows.coord_t + 1`); their context embeddings replace the input embeddings inside the forward
    (`forward.slot_embeddings`: the embedding weight is the gathered one there under FSDP). `n_iter` >= 1, `grad_mode` unroll | em_detach, `ctx_embed_mode` soft | st |
    hard (checked when the config is loaded).
    """
    inner = forward.unwrap(model)
    if position_ids is None:
        position_ids = mrope_position_ids(inner, batch)
    input_ids = batch["input_ids"]
    cid = torch.as_tensor(coord_ids, device=input_ids.device)
    coord_rows = (rows.coord_b, rows.coord_t)
    ce_rows = (rows.ce_b, rows.ce_t)
    outer_grad = torch.is_grad_enabled()

    forwards = prefix_kv.plan(model, batch, rows, n_iter=n_iter, position_ids=position_ids, enabled=reuse_prefix,
                              coord_ids=coord_ids)
    slots = (rows.coord_b, rows.coord_t + 1)
    prev = a1_coord = ce_logits = final_text = None
    for m in range(n_iter):
        last = m == n_iter - 1
        record = outer_grad and (grad_mode == "unroll" or m == 0 or last)
        with torch.set_grad_enabled(record):
            ctx = None
            if m > 0 and rows.coord_t.numel() > 0:
                # called with E(C) inside the forward (forward.slot_embeddings), where FSDP has gathered it
                ctx = _context(prev.index_select(-1, cid), temperature, ctx_embed_mode, grad_mode == "em_detach")
            want_text = m == 0 or (last and need_final_text)
            sets = (coord_rows, ce_rows) if want_text else (coord_rows,)
            got = forwards(m, sets, slots, ctx)
            coord_logits = got[0]
            if m == 0:
                a1_coord, ce_logits = coord_logits, got[1]
            if last and need_final_text:
                final_text = got[1]
        prev = coord_logits
    return ChannelAOutput(ce_logits, a1_coord, prev, final_text, n_iter, forwards.reused)


def _context(coord_logits: torch.Tensor, temperature: float, mode: str, detach: bool):
    """`E(C) -> [S, D]` context embeddings of the slots from the previous iteration's coord logits."""
    def ctx(coord_embeds: torch.Tensor) -> torch.Tensor:
        out = context_embeddings(coord_logits, coord_embeds, temperature, mode)
        return out.detach() if detach else out
    return ctx


def pass_terms(out: ChannelAOutput, rows: Rows, coord_ids, losses: LossesConfig, a1_anchor: Mapping[str, float]):
    """Unweighted terms + diagnostics of a Channel-A pass (Stage 1 and Channel-B: N = 1).

    Returns `(terms, anchor_terms, diag)`: `terms` keyed like `objective.LOSSES` (scalars; token CE on A1
    logits, coord terms and `coord_diag/*` on the final iteration's, the text gate on the final
    iteration's text rows when gathered, else on A1's), `anchor_terms` {term: scalar} for the names in
    `a1_anchor` (the same coord terms on A1 coord logits), `diag` the `coord_diag/*` floats.
    """
    cid = torch.as_tensor(coord_ids, device=out.final_coord_logits.device)
    text = out.final_text_logits if out.final_text_logits is not None else out.ce_logits
    logits = Logits(
        ce=out.ce_logits, ce_labels=rows.ce_labels, ce_weights=rows.ce_weights, text=text, text_rows=rows.text_rows,
        coord=out.final_coord_logits, coord_bins=rows.coord_bins, coord_ids=cid,
    )
    hp = hyper(losses)
    terms = loss_terms(logits, hp, active(weights(losses)))
    anchors = {}
    if a1_anchor:
        a1 = Logits(**{**vars(logits), "coord": out.a1_coord_logits})
        anchors = loss_terms(a1, hp, active(a1_anchor), names=a1_anchor)
    diag = coord_diagnostics(out.final_coord_logits, rows.coord_bins, coord_ids, float(losses.temperature))
    return terms, anchors, diag


def channel_a_loss(
    model, batch: Mapping[str, torch.Tensor], losses: LossesConfig, coord_ids, softctx: Stage2Config | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """One Channel-A step on a collated GT batch: `(total loss, logs)`.

    `softctx`: the Stage-2 section (`n_softctx_iter`, `softctx_temperature`, `softctx_grad_mode`,
    `ctx_embed_mode`, `a1_anchor`, `reuse_prefix`), or None for Stage 1 (N = 1, no anchors). logs:
    `loss/<term>` (unweighted), `loss/total`, `coord_diag/*`; with `softctx` also `loss/a1_<term>` for
    anchors, `stage2/n_forwards` and `stage2/prefix_reused` (1 when iterations m > 0 ran on the suffix
    rows, `prefix_kv`).
    """
    rows = supervised_rows(batch, losses)
    if softctx is None:
        out = soft_context_forwards(model, batch, rows, coord_ids, n_iter=1)
        anchor_w: dict[str, float] = {}
    else:
        out = soft_context_forwards(
            model, batch, rows, coord_ids,
            n_iter=softctx.n_softctx_iter, temperature=softctx.softctx_temperature,
            grad_mode=softctx.softctx_grad_mode, ctx_embed_mode=softctx.ctx_embed_mode,
            need_final_text=losses.text_gate != 0.0, reuse_prefix=softctx.reuse_prefix,
        )
        anchor_w = softctx.a1_anchor
    terms, anchors, diag = pass_terms(out, rows, coord_ids, losses, anchor_w)
    total = combine(terms, weights(losses))
    if active(anchor_w):
        total = total + combine(anchors, anchor_w)
    logs = log_terms(terms, total)
    if softctx is not None:
        logs.update(log_terms(anchors, prefix="loss/a1_"))
        logs["stage2/n_forwards"] = float(out.n_forwards)
        logs["stage2/prefix_reused"] = float(out.prefix_reused)
    logs.update(diag)
    return total, logs
