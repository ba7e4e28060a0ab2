"""The training objective: supervised rows, the loss table, named unweighted terms, one weighted total.

Every trainer step (Stage 1, Stage-2 Channel-A, Stage-2 Channel-B) goes the same way:

1. `supervised_rows(batch, losses)`: the rows of a collated teacher-forced batch that carry a loss
   (`Rows`); a *row* is always a predicting row `(b, t)`, t = p - 1 for the supervised token at p;
2. a forward gathers logits at those rows only (`train/channel_a.py`; Stage 1 is Channel-A with N = 1);
3. `loss_terms(logits, losses, active)`: one unweighted scalar per entry of `LOSSES` (every term is
   computed and logged whatever its weight; terms not in `active` are computed under `no_grad`);
4. `combine(terms, weights)`: `sum(weight[name] * term)` over the active terms, the only place weights
   are applied; `log_terms` logs every term unweighted as `loss/<name>`.

`LOSSES` is the loss table (DETR's `loss_map`): term name -> `Loss(fn, rows, hyper, signed)`. The name is
the weight field `losses.<name>` of `config.LossesConfig` and the log key `loss/<name>`; `hyper` names the
`LossesConfig` hyper-parameters the term reads (passed apart from the weights); `signed` terms may
have a negative weight (`entropy`: a negative weight flattens the coord distribution). Adding a loss:
a function in `vlmdet/losses.py`, a row here, a weight field in `LossesConfig` (checked at import).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Collection, Mapping

import torch

from vlmdet import losses as L
from vlmdet.config import LossesConfig
from vlmdet.model.chat import COORD, DESC, STRUCT


# ---------------------------------------------------------------------------------------------
# supervised rows of a collated batch


@dataclass
class Rows:
    """Index sets of a teacher-forced batch `[B, L]`, all on its device.

    CE rows `ce_b`, `ce_t` `[Nc]` long: every supervised row that is not a coord slot, plus coord slots
    when `losses.ce_on_coord_slots`; `ce_labels` `[Nc]` the token ids they predict, `ce_weights` `[Nc]`
    float >= 0 (structure 1, desc `losses.desc_ce_weight`, coord 1). `text_rows` `[Nc]` bool: CE rows
    whose label is not a coord token (the text gate's rows). Coord slots: `coord_b`, `coord_t` `[Ns]`
    predicting rows of the supervised coord slots (the slot itself is at t + 1), ordered by (b, t);
    `coord_bins` `[Ns]` target bins 0..999; consecutive groups of 4 are one box `[x1, y1, x2, y2]`.
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


def supervised_rows(batch: Mapping[str, torch.Tensor], losses: LossesConfig) -> Rows:
    """The `Rows` of a collated batch (`labels`, `slot_class`, `coord_bins` `[B, L]`; `slot_class` of
    `model/chat`: STRUCT, DESC, COORD). A position p is supervised when `labels[b, p] != -100`.

    Raises `ValueError` when a sample's supervised coord slots are not a multiple of 4 (whole boxes)."""
    labels = batch["labels"]
    sup = labels[:, 1:] != -100  # [B, L-1]: row t predicts position t + 1
    slot_class = batch["slot_class"][:, 1:]
    per_sample = ((slot_class == COORD) & sup).sum(1)
    if bool((per_sample % 4 != 0).any()):
        raise ValueError(f"coord slots per sample must be a multiple of 4 (whole boxes), got {per_sample.tolist()}")
    b, t = sup.nonzero(as_tuple=True)
    slot = slot_class[b, t].long()
    target = labels[:, 1:][b, t]
    w = torch.zeros(slot.shape, dtype=torch.float32, device=slot.device)
    w[slot == STRUCT] = 1.0
    w[slot == DESC] = float(losses.desc_ce_weight)
    coord = slot == COORD
    if losses.ce_on_coord_slots:
        w[coord] = 1.0
    ce = ~coord | (w > 0)
    return Rows(
        ce_b=b[ce], ce_t=t[ce], ce_labels=target[ce], ce_weights=w[ce],
        coord_b=b[coord], coord_t=t[coord], coord_bins=batch["coord_bins"][:, 1:][b, t][coord].long(),
        text_rows=~coord[ce],
    )


# ---------------------------------------------------------------------------------------------
# the loss table


@dataclass
class Logits:
    """Logits gathered at the `Rows` of one pass (all full-vocabulary, model dtype).

    `ce` `[Nc, V]` at the CE rows (labels `ce_labels`, weights `ce_weights`); `text` `[Nc, V]` the logits
    the text gate reads at the same rows (`text_rows` selects its rows); `coord` `[Ns, V]` at the coord
    slots' predicting rows (targets `coord_bins`); `coord_ids` `[1000]` long, the coord token ids in bin
    order. `slot_logits` `[Ns, 1000]` = `coord[:, coord_ids]`.
    """

    ce: torch.Tensor
    ce_labels: torch.Tensor
    ce_weights: torch.Tensor
    text: torch.Tensor
    text_rows: torch.Tensor
    coord: torch.Tensor
    coord_bins: torch.Tensor
    coord_ids: torch.Tensor

    @property
    def slot_logits(self) -> torch.Tensor:
        return self.coord.index_select(-1, self.coord_ids)


def _expected_boxes(x: Logits, temperature: float) -> torch.Tensor:
    """Expected normalized boxes `[Ns/4, 4]` (E_pi[bin] / 999)."""
    return (L.expected_bins(x.slot_logits, temperature) / L.MAX_BIN).view(-1, 4)


def _gt_boxes(x: Logits) -> torch.Tensor:
    return (x.coord_bins.float() / L.MAX_BIN).view(-1, 4)


def _text_gate(x: Logits, temperature: float, chunk: int = 128) -> torch.Tensor:
    """Per text row gate `[Nt]`. Without grad (the term only logged) it runs in row chunks, so it
    never needs more than `chunk` x V temporary floats."""
    if torch.is_grad_enabled():
        return L.text_gate_loss(x.text[x.text_rows], x.coord_ids, temperature)
    per_row = torch.cat([L.text_gate_loss(part, x.coord_ids, temperature) for part in x.text.detach().split(chunk)])
    return per_row[x.text_rows]


@dataclass(frozen=True)
class Loss:
    """One row of the loss table: `fn(logits, hyper) -> tensor` whose mean is the term; `rows`: which
    rows it reads ("ce", "coord", "text"); `hyper`: the `LossesConfig` hyper-parameters it uses;
    `signed`: whether its weight may be negative."""

    fn: Callable[[Logits, Mapping[str, float]], torch.Tensor]
    rows: str
    hyper: tuple[str, ...] = ()
    signed: bool = False


#: term name (weight `losses.<name>`, log key `loss/<name>`) -> Loss, in log order
LOSSES: dict[str, Loss] = {
    "token_ce": Loss(lambda x, h: L.token_ce(x.ce, x.ce_labels, x.ce_weights), "ce"),
    "coord_ce": Loss(lambda x, h: L.coord_ce(x.slot_logits, x.coord_bins), "coord"),
    "soft_ce": Loss(lambda x, h: L.coord_soft_ce(x.slot_logits, x.coord_bins, h["sigma"]), "coord", ("sigma",)),
    "w1": Loss(lambda x, h: L.coord_w1(x.slot_logits, x.coord_bins, h["sigma"]), "coord", ("sigma",)),
    "smoothl1": Loss(
        lambda x, h: L.box_smoothl1(_expected_boxes(x, h["temperature"]), _gt_boxes(x), h["smoothl1_beta"]),
        "coord", ("temperature", "smoothl1_beta"),
    ),
    "ciou": Loss(lambda x, h: L.box_ciou(_expected_boxes(x, h["temperature"]), _gt_boxes(x)), "coord", ("temperature",)),
    "coord_gate": Loss(lambda x, h: L.coord_gate_loss(x.coord, x.coord_ids, h["temperature"]), "coord", ("temperature",)),
    "entropy": Loss(lambda x, h: L.coord_entropy(x.slot_logits, h["temperature"]), "coord", ("temperature",), signed=True),
    "text_gate": Loss(lambda x, h: _text_gate(x, h["temperature"]), "text", ("temperature",)),
}

#: the terms computed at coord slots (the names `stage2.a1_anchor` may use)
COORD_TERMS = tuple(name for name, loss in LOSSES.items() if loss.rows == "coord")
#: hyper-parameter fields of `LossesConfig` read by some term
HYPER = tuple(sorted({h for loss in LOSSES.values() for h in loss.hyper}))


def _check_table() -> None:
    fields = {f.name for f in dataclasses.fields(LossesConfig)}
    missing = [n for n in (*LOSSES, *HYPER) if n not in fields]
    if missing:
        raise RuntimeError(f"loss table and config.LossesConfig disagree: no LossesConfig field for {missing}")
    if set(COORD_TERMS) != set(LossesConfig.COORD_TERMS):
        raise RuntimeError(f"loss table coord terms {COORD_TERMS} != LossesConfig.COORD_TERMS {LossesConfig.COORD_TERMS}")


_check_table()


def weights(losses: LossesConfig) -> dict[str, float]:
    """`{term: weight}` of every term of the table."""
    return {name: float(getattr(losses, name)) for name in LOSSES}


def hyper(losses: LossesConfig) -> dict[str, float]:
    """`{name: value}` of the hyper-parameters the terms read."""
    return {name: float(getattr(losses, name)) for name in HYPER}


def is_active(name: str, weight: float) -> bool:
    """Whether term `name` with `weight` contributes to the total (weight > 0; != 0 for signed terms)."""
    return weight != 0.0 if LOSSES[name].signed else weight > 0.0


def active(term_weights: Mapping[str, float]) -> set[str]:
    """The names of the contributing terms of `{term: weight}`."""
    return {name for name, w in term_weights.items() if is_active(name, w)}


def loss_terms(x: Logits, hp: Mapping[str, float], grad_terms: Collection[str], names: Collection[str] = tuple(LOSSES)) -> dict[str, torch.Tensor]:
    """Unweighted scalar terms `{name: tensor}` for `names` (table order) from gathered logits `x`.

    `hp`: hyper-parameters (`hyper(losses)`); terms not in `grad_terms` are computed under `no_grad`
    (logged, no graph kept). Coord terms are 0 when there is no coord slot, the text gate when there is
    no text row; coord slots must come in whole boxes (groups of 4)."""
    n_slots = int(x.coord.shape[0])
    if n_slots % 4:
        raise ValueError(f"coord slots must come in whole boxes (groups of 4), got {n_slots}")
    grad = torch.is_grad_enabled()
    out = {}
    for name in (n for n in LOSSES if n in names):
        loss = LOSSES[name]
        empty = n_slots == 0 if loss.rows == "coord" else loss.rows == "text" and not bool(x.text_rows.any())
        with torch.set_grad_enabled(grad and name in grad_terms):
            if empty:
                out[name] = (x.coord if loss.rows == "coord" else x.text).sum() * 0.0
            else:
                out[name] = loss.fn(x, hp).mean()
    return out


def combine(terms: Mapping[str, torch.Tensor], term_weights: Mapping[str, float]) -> torch.Tensor:
    """Weighted total of unweighted scalar terms: `sum_{active} weight[name] * terms[name]`.

    Terms with no active weight add nothing (they may still be logged). Raises `ValueError` when no
    term is active (a config that trains on nothing) or a term is not a scalar."""
    total = None
    for name, value in terms.items():
        if value.dim() != 0:
            raise ValueError(f"loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
        w = float(term_weights.get(name, 0.0))
        if not is_active(name, w):
            continue
        part = w * value
        total = part if total is None else total + part
    if total is None:
        raise ValueError(f"no active loss term among {sorted(terms)}: every weight is 0")
    return total


def log_terms(terms: Mapping[str, torch.Tensor], total: torch.Tensor | None = None, prefix: str = "loss/") -> dict[str, float]:
    """`{"<prefix><name>": float}` of every (unweighted) term, plus `loss/total` when given."""
    out = {f"{prefix}{name}": float(value.detach().float()) for name, value in terms.items()}
    if total is not None:
        out["loss/total"] = float(total.detach().float())
    return out


@torch.no_grad()
def coord_diagnostics(coord_rows: torch.Tensor, target_bins: torch.Tensor, coord_ids, temperature: float = 1.0) -> dict[str, float]:
    """`coord_diag/*` floats from full-vocabulary logits at coord slots' predicting rows `[Ns, V]`.
    s = the 1000 coordinate logits of a slot, t its target bin, pi = softmax(s / T) over the coordinate
    vocabulary (T = `temperature`):

    - `coord_vocab_mass_mean`: mean coord-vocabulary probability mass, exp(-gate) (tempered, full vocabulary);
    - `acc_top1`: fraction of slots whose coord-vocabulary argmax is the target bin;
    - `acc_top5`: fraction of slots whose target bin is among the 5 largest coordinate logits;
    - `p_gt_mean`: mean pi_t, the tempered probability of the target bin within the coordinate vocabulary;
    - `margin_mean`: mean (max_k s_k - s_t) / T, the tempered logit gap to the best bin (0 when t is the argmax);
    - `expected_bin_mae`: mean |E_pi[k] - t| in bins;
    - `expected_bin_abs_err_p90`: the 90th percentile of |E_pi[k] - t| over the slots (linear
      interpolation between order statistics, as `torch.quantile`);
    - `coord_tokens`: Ns.
    Only `coord_tokens` (= 0) when there is no slot."""
    n = int(coord_rows.shape[0])
    if n == 0:
        return {"coord_diag/coord_tokens": 0.0}
    idx = torch.as_tensor(coord_ids, device=coord_rows.device)
    s = coord_rows.index_select(-1, idx).float()
    t = target_bins.to(s.device).long()
    s_t = s.gather(1, t.view(-1, 1)).squeeze(1)
    abs_err = (L.expected_bins(s, temperature) - t.float()).abs()
    return {
        "coord_diag/coord_vocab_mass_mean": float(L.coord_vocab_mass(coord_rows, idx, temperature).mean()),
        "coord_diag/acc_top1": float((s.argmax(-1) == t).float().mean()),
        "coord_diag/acc_top5": float((s.topk(min(5, s.shape[-1]), dim=-1).indices == t.view(-1, 1)).any(-1).float().mean()),
        "coord_diag/p_gt_mean": float(L.coord_probs(s, temperature).gather(1, t.view(-1, 1)).mean()),
        "coord_diag/margin_mean": float(((s.max(-1).values - s_t) / temperature).mean()),
        "coord_diag/expected_bin_mae": float(abs_err.mean()),
        "coord_diag/expected_bin_abs_err_p90": float(torch.quantile(abs_err, 0.9)),
        "coord_diag/coord_tokens": float(n),
    }
