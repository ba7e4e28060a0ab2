"""Loss weights applied in exactly one place (DESIGN §2.2).

`combine(terms, weights)`: `terms` maps a term name (the names of `vlmdet.losses.LOSSES`, which are
also the weight fields of `config.LossesConfig`) to an *unweighted scalar* tensor; the total is
`sum(weight[name] * term)` over the *active* terms: weight > 0, or weight != 0 for `entropy`, the
one term whose weight may be negative (a negative weight flattens the coord distribution, a positive
one sharpens it; see `losses.coord_entropy`). Inactive terms are only logged. Every term is logged
unweighted as `loss/<name>` (`log_terms`), so runs compare term by term whatever their weights.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

#: terms whose weight may be negative (any non-zero weight contributes)
SIGNED_TERMS = frozenset({"entropy"})


def weight_of(weights: Any, name: str) -> float:
    """The weight of term `name` in a `LossesConfig` (attribute) or a plain mapping; 0 when absent."""
    if isinstance(weights, Mapping):
        return float(weights.get(name, 0.0))
    return float(getattr(weights, name, 0.0))


def active(weights: Any, name: str) -> bool:
    """Whether term `name` contributes to the total under `weights`."""
    w = weight_of(weights, name)
    return w != 0.0 if name in SIGNED_TERMS else w > 0.0


def combine(terms: Mapping[str, torch.Tensor], weights: Any) -> torch.Tensor:
    """Weighted total of unweighted scalar terms: `sum_{active} weight[name] * terms[name]`.

    `weights`: a `LossesConfig` or a mapping name -> float. Terms with no active weight add nothing
    (they may still be logged). Raises `ValueError` when no term is active (a config that trains on
    nothing) or a term is not a scalar.
    """
    total = None
    for name, value in terms.items():
        if value.dim() != 0:
            raise ValueError(f"loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
        if not active(weights, name):
            continue
        part = weight_of(weights, name) * value
        total = part if total is None else total + part
    if total is None:
        raise ValueError(f"no active loss term among {sorted(terms)}: every weight is 0")
    return total


def log_terms(terms: Mapping[str, torch.Tensor], total: torch.Tensor | None = None) -> dict[str, float]:
    """`{"loss/<name>": float}` of every (unweighted) term, plus `loss/total` when given."""
    out = {f"loss/{name}": float(value.detach().float()) for name, value in terms.items()}
    if total is not None:
        out["loss/total"] = float(total.detach().float())
    return out


# ---------------------------------------------------------------------------------------------
# named terms from gathered logits (shared by Stage-1, Channel-A and Channel-B)

#: terms computed at coord slots (from full-vocabulary logits at their predicting rows)
COORD_TERMS = ("coord_ce", "soft_ce", "w1", "smoothl1", "ciou", "coord_gate", "entropy")
#: every term of the trainer, in log order
TERMS = ("token_ce",) + COORD_TERMS + ("text_gate",)


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0


def coord_terms(coord_rows: torch.Tensor, target_bins: torch.Tensor, coord_ids, losses_cfg: Any) -> dict[str, torch.Tensor]:
    """Unweighted coord terms (means over slots / boxes) keyed like `COORD_TERMS`.

    coord_rows `[Ns, V]`: full-vocabulary logits at the predicting rows of coord slots; target_bins
    `[Ns]` (0..999); consecutive groups of 4 slots are one box `[x1, y1, x2, y2]` (Ns % 4 == 0) for
    `smoothl1` / `ciou`, which use the expected normalized boxes `expected_bins / 999`.
    Hyper-parameters from `losses_cfg`: `temperature` (gate, expectation, entropy), `sigma`
    (soft CE, W1), `smoothl1_beta`. Terms that are not active under `losses_cfg` (weight 0) are
    computed under `no_grad`: logged, but no graph kept. All zero when Ns = 0.
    """
    from vlmdet import losses as L

    if coord_rows.shape[0] == 0:
        z = _zero(coord_rows)
        return {k: z for k in COORD_TERMS}
    if coord_rows.shape[0] % 4:
        raise ValueError(f"coord slots must come in whole boxes (groups of 4), got {coord_rows.shape[0]}")
    idx = torch.as_tensor(coord_ids, device=coord_rows.device)
    T = float(getattr(losses_cfg, "temperature", 1.0))
    sigma = float(getattr(losses_cfg, "sigma", 2.0))
    beta = float(getattr(losses_cfg, "smoothl1_beta", 1.0))
    s = coord_rows.index_select(-1, idx)
    gt = (target_bins.float() / L.MAX_BIN).view(-1, 4)
    grad = torch.is_grad_enabled()
    with torch.set_grad_enabled(grad and (active(losses_cfg, "smoothl1") or active(losses_cfg, "ciou"))):
        pred = (L.expected_bins(s, T) / L.MAX_BIN).view(-1, 4)
    recipes = {
        "coord_ce": lambda: L.coord_ce(s, target_bins),
        "soft_ce": lambda: L.coord_soft_ce(s, target_bins, sigma),
        "w1": lambda: L.coord_w1(s, target_bins, sigma),
        "smoothl1": lambda: L.box_smoothl1(pred, gt, beta),
        "ciou": lambda: L.box_ciou(pred, gt),
        "coord_gate": lambda: L.coord_gate_loss(coord_rows, idx, T),
        "entropy": lambda: L.coord_entropy(s, T),
    }
    out = {}
    for name, fn in recipes.items():
        with torch.set_grad_enabled(grad and active(losses_cfg, name)):
            out[name] = fn().mean()
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
    from vlmdet import losses as L

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


# ---------------------------------------------------------------------------------------------
# metric accumulation over a logging window


class MetricWindow:
    """Running sums of float metrics between two `log` calls, averaged per key over the calls that
    reported it, and combined across ranks (sum of sums / sum of counts) when torch.distributed is
    initialized. `pop()` must then run on every rank (as `Trainer.log` does)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, metrics: Mapping[str, float], weight: float = 1.0) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
            self.counts[k] = self.counts.get(k, 0.0) + weight

    def pop(self) -> dict[str, float]:
        """Window means (all ranks combined), then reset."""
        sums, counts = self.sums, self.counts
        self.sums, self.counts = {}, {}
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (sums, counts))
            sums, counts = {}, {}
            for s, c in gathered:
                for k in s:
                    sums[k] = sums.get(k, 0.0) + s[k]
                    counts[k] = counts.get(k, 0.0) + c[k]
        return {k: sums[k] / counts[k] for k in sorted(sums) if counts[k] > 0}
