"""Stage-2 Channel-A: soft self-context over the GT teacher-forced sequence (DESIGN §2.4).

Per batch, N = `stage2.n_softctx_iter` >= 1 full forwards over the same GT sequence:

- iteration 0 ("A1"): plain teacher forcing; `inputs_embeds = E(input_ids)` (a call of the
  embedding module, so image placeholder rows are bitwise `E(image_token_id)`, which is how Qwen-VL
  finds them when `input_ids` is not passed);
- iteration m > 0: `E(input_ids)` rebuilt fresh, then every coord slot row p (all at once) is replaced by
  the context embedding of the previous iteration's coord distribution at row p-1:
  `soft`: sum_k softmax(z[p-1, C] / T)_k · E(C_k); `hard`: E(C_argmax); `st`: hard value, soft gradient.
  Every other row (prompt, image placeholders, structure, desc) is bitwise identical to iteration 0;
- mRoPE position ids are computed once from the GT ids and passed explicitly to every forward;
  `use_cache=False` (see `vlmdet.train.forward`);
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
  middle iterations under `torch.no_grad()` (running A1 under no_grad was the seed's P0 bug: CE,
  anchored on A1 logits, then had no gradient at all).
N = 1 is plain teacher forcing with the Stage-2 loss mix (A1 logits = final logits).

The `Rows` and `stage2_terms` are shared with Channel-B (`channel_b.py`), which runs one
teacher-forced forward over its rebuilt target with its own supervision masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping

import torch

from vlmdet import losses as L
from vlmdet.errors import UsageError
from vlmdet.train.objective import COORD_TERMS, active, coord_diagnostics, coord_terms


@dataclass
class Rows:
    """Index sets of a teacher-forced batch `[B, L]` (from `forward.supervision`), all on its device.

    CE rows: `ce_b`, `ce_t` `[Nc]` long, *predicting* rows (t = p - 1 for the supervised token at p),
    `ce_labels` `[Nc]` token ids, `ce_weights` `[Nc]` float > 0. Coord slots: `coord_b`, `coord_t`
    `[Ns]` predicting rows of the supervised coord slots (the slot itself is at t + 1), ordered by
    (b, t); `coord_bins` `[Ns]` target bins 0..999; consecutive groups of 4 are one box
    `[x1, y1, x2, y2]`. `text_rows` `[Nc]` bool: CE rows whose label is not a coord token (text gate).
    """

    ce_b: torch.Tensor
    ce_t: torch.Tensor
    ce_labels: torch.Tensor
    ce_weights: torch.Tensor
    coord_b: torch.Tensor
    coord_t: torch.Tensor
    coord_bins: torch.Tensor
    text_rows: torch.Tensor

    @property
    def n_boxes(self) -> int:
        return int(self.coord_t.numel()) // 4


def rows_from_batch(batch: Mapping[str, torch.Tensor], losses_cfg: Any) -> Rows:
    """The Stage-2 rows of a collated batch (`input_ids, labels, slot_class, coord_bins` `[B, L]`).

    Built on `forward.supervision`: CE on every labelled token (`labels != -100`) with weight 1 for
    structure, `losses_cfg.desc_ce_weight` for desc tokens, and for coord slots 1 only when
    `losses_cfg.ce_on_coord_slots` (false by default in Stage 2); coord targets at every labelled
    coord slot (bin from `coord_bins`). Channel-B feeds its rebuilt targets through the same function
    (unsupervised tokens carry label -100).
    """
    from vlmdet.train.forward import supervision

    sup = supervision(batch)
    b, t = sup.rows.nonzero(as_tuple=True)
    w = sup.ce_weights(float(losses_cfg.desc_ce_weight), bool(losses_cfg.ce_on_coord_slots))
    ce = w > 0
    coord = sup.coord
    return Rows(
        ce_b=b[ce], ce_t=t[ce], ce_labels=sup.target_ids[ce], ce_weights=w[ce],
        coord_b=b[coord], coord_t=t[coord], coord_bins=sup.coord_bins[coord],
        text_rows=~coord[ce],
    )


# ------------------------------------------------------------------------------------------------
# loss terms on gathered rows (shared with Channel-B; the term recipes are `objective.coord_terms`)


def check_a1_anchor(a1_anchor: Mapping[str, float]) -> dict[str, float]:
    """Validate `stage2.a1_anchor` (coord term name -> weight >= 0; `entropy` may be negative);
    unknown names and negative weights are a `UsageError`."""
    import difflib

    out = {}
    for name, w in dict(a1_anchor or {}).items():
        if name not in COORD_TERMS:
            near = difflib.get_close_matches(str(name), COORD_TERMS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise UsageError(f"stage2.a1_anchor: unknown coord term {name!r}{hint}; allowed: {', '.join(COORD_TERMS)}")
        if float(w) < 0 and name != "entropy":
            raise UsageError(f"stage2.a1_anchor.{name}: weight must be >= 0, got {w}")
        out[name] = float(w)
    return out


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
    raise UsageError(f"stage2.ctx_embed_mode must be one of soft, st, hard, got {mode!r}")


@dataclass
class ChannelAOutput:
    """Gathered logits of a Channel-A pass.

    `ce_logits` `[Nc, V]`: A1 logits at the CE rows; `a1_coord_logits` / `final_coord_logits` `[Ns, V]`:
    A1 / final-iteration logits at coord slots' predicting rows (the same tensor when N = 1);
    `final_text_logits` `[Nc, V]` final-iteration logits at the CE rows, or None when not requested;
    `n_forwards`: forwards run.
    """

    ce_logits: torch.Tensor
    a1_coord_logits: torch.Tensor
    final_coord_logits: torch.Tensor
    final_text_logits: torch.Tensor | None
    n_forwards: int


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
) -> ChannelAOutput:
    """Run the N-iteration soft self-context loop (module docstring) and gather logits.

    Every forward is one call of the top-level `model` (DDP/FSDP wrappers see a normal forward) through
    `forward.logits_at`, with `inputs_embeds` and explicit `position_ids` `[3, B, L]` (default:
    `collate.position_ids(model, batch)`, mRoPE from the GT ids). The soft-context slots are the
    supervised coord slots (`rows.coord_t + 1`).
    """
    from vlmdet.model.collate import position_ids as mrope_position_ids
    from vlmdet.train import forward as fwd

    if n_iter < 1:
        raise UsageError(f"stage2.n_softctx_iter must be >= 1, got {n_iter}")
    if grad_mode not in ("unroll", "em_detach"):
        raise UsageError(f"stage2.softctx_grad_mode must be unroll or em_detach, got {grad_mode!r}")
    inner = fwd.unwrap(model)
    if position_ids is None:
        position_ids = mrope_position_ids(inner, batch)
    embed = inner.get_input_embeddings()
    input_ids = batch["input_ids"]
    cid = torch.as_tensor(coord_ids, device=input_ids.device)
    coord_rows = (rows.coord_b, rows.coord_t)
    ce_rows = (rows.ce_b, rows.ce_t)
    outer_grad = torch.is_grad_enabled()

    prev = a1_coord = ce_logits = final_text = None
    for m in range(n_iter):
        last = m == n_iter - 1
        record = outer_grad and (grad_mode == "unroll" or m == 0 or last)
        with torch.set_grad_enabled(record):
            base = embed(input_ids)
            if m == 0 or rows.coord_t.numel() == 0:
                embeds = base
            else:
                ctx = context_embeddings(prev.index_select(-1, cid), embed(cid), temperature, ctx_embed_mode)
                if grad_mode == "em_detach":
                    ctx = ctx.detach()
                embeds = base.index_put((rows.coord_b, rows.coord_t + 1), ctx.to(base.dtype))
            want_text = m == 0 or (last and need_final_text)
            sets = (coord_rows, ce_rows) if want_text else (coord_rows,)
            got = fwd.logits_at(model, batch, *sets, inputs_embeds=embeds, position_ids=position_ids)
            coord_logits = got[0]
            if m == 0:
                a1_coord, ce_logits = coord_logits, got[1]
            if last and need_final_text:
                final_text = got[1]
        prev = coord_logits
    return ChannelAOutput(ce_logits, a1_coord, prev, final_text, n_iter)


def stage2_terms(out: ChannelAOutput, sup: Rows, coord_ids, losses_cfg: Any, a1_anchor: Mapping[str, float]):
    """Unweighted terms + diagnostics from a Channel-A (or Channel-B, N = 1) pass.

    Returns `(terms, anchor_terms, diag)`: `terms` keyed like `objective.TERMS` (scalars), `anchor_terms`
    {term: scalar} for the names in `a1_anchor` (on A1 coord logits), `diag` the `coord_diag/*` floats
    (final logits).
    """
    grad = torch.is_grad_enabled()
    with torch.set_grad_enabled(grad and active(losses_cfg, "token_ce")):
        terms = {"token_ce": L.token_ce(out.ce_logits, sup.ce_labels, sup.ce_weights)}
    terms.update(coord_terms(out.final_coord_logits, sup.coord_bins, coord_ids, losses_cfg))
    with torch.set_grad_enabled(grad and active(losses_cfg, "text_gate")):
        # on the final logits when the term is on; when it is off (no final text rows were gathered)
        # it is logged from the A1 rows (the same logits when N = 1)
        text = out.final_text_logits if out.final_text_logits is not None else out.ce_logits
        if bool(sup.text_rows.any()):
            terms["text_gate"] = L.text_gate_loss(text[sup.text_rows], coord_ids, float(losses_cfg.temperature)).mean()
        else:
            terms["text_gate"] = text.sum() * 0.0
    anchors = {}
    if a1_anchor:
        # anchor weights decide which terms keep a graph; hyper-parameters come from `losses`
        hyper = {k: getattr(losses_cfg, k) for k in ("temperature", "sigma", "smoothl1_beta")}
        a1 = coord_terms(out.a1_coord_logits, sup.coord_bins, coord_ids, SimpleNamespace(**hyper, **a1_anchor))
        anchors = {k: a1[k] for k in a1_anchor}
    diag = coord_diagnostics(out.final_coord_logits, sup.coord_bins, coord_ids, float(losses_cfg.temperature))
    return terms, anchors, diag


def channel_a_loss(model, batch: Mapping[str, torch.Tensor], cfg: Any, coord_ids) -> tuple[torch.Tensor, dict[str, float]]:
    """One Channel-A step on a collated GT batch: `(total loss, logs)`.

    cfg: the full `Config` (`cfg.stage2`, `cfg.losses`). logs: `loss/<term>` (unweighted),
    `loss/a1_<term>` for anchors, `loss/total`, `coord_diag/*`, `stage2/n_forwards`.
    """
    from vlmdet.train.objective import combine, log_terms

    s2, lc = cfg.stage2, cfg.losses
    anchor_w = check_a1_anchor(s2.a1_anchor)
    sup = rows_from_batch(batch, lc)
    out = soft_context_forwards(
        model, batch, sup, coord_ids,
        n_iter=int(s2.n_softctx_iter), temperature=float(s2.softctx_temperature),
        grad_mode=s2.softctx_grad_mode, ctx_embed_mode=s2.ctx_embed_mode,
        need_final_text=float(lc.text_gate) != 0.0,
    )
    terms, anchors, diag = stage2_terms(out, sup, coord_ids, lc, anchor_w)
    total = combine(terms, lc)
    if any(active(anchor_w, k) for k in anchor_w):
        total = total + combine(anchors, anchor_w)
    logs = log_terms(terms, total)
    logs.update({f"loss/a1_{k}": float(v.detach()) for k, v in anchors.items()})
    logs["stage2/n_forwards"] = float(out.n_forwards)
    logs.update(diag)
    return total, logs
