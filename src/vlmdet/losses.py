"""The loss terms (docs/TRAINING.md), each a small pure function (torch only; no transformers, no I/O).

Notation (per coordinate slot): z = full-vocabulary logits `[V]` at the slot's *predicting*
position (p-1 for the coord token at p), C = the 1000 coord token ids in bin order, s = z[C]
("coord logits", `[1000]`), T = temperature, pi = softmax(s/T), t = target bin (int 0..999).

Every function returns an *unweighted* tensor: per slot/box `[N]` (callers take the mean) or, for
`token_ce`, a scalar. Weights are applied in exactly one place, `vlmdet.train.objective.combine`.
All arithmetic is done in float32 whatever the input dtype (bf16 logits are upcast row-wise, and
only the rows handed in: callers gather rows first, see `vlmdet.train.forward`).

Units: bins are 0..999 (float for expectations); "normalized" means bins / 999 in [0, 1].

Sign conventions:
- every term is >= 0 and is *minimized* (a positive weight pushes it down);
- `coord_entropy` returns +H(pi): a positive weight therefore *sharpens* the coord distribution,
  a negative weight flattens it (upstream's code comment had this backwards).

The loss table (term name -> function + hyper-parameters) is `vlmdet.train.objective.LOSSES`.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from vlmdet.boxes import canonicalize, pairwise_ciou

NUM_BINS = 1000  # mirrors vlmdet.coords.NUM_BINS (kept local so this module imports torch only)
MAX_BIN = NUM_BINS - 1
LOGIT_CLAMP = 1e4  # sanitized logits live in [-1e4, 1e4]
CIOU_EPS = 1e-7


def sanitize_logits(logits: torch.Tensor) -> torch.Tensor:
    """float32 logits with NaN -> 0, +inf -> +1e4, -inf -> -1e4, then clamped to [-1e4, 1e4].

    Clean float32 input (finite, within the clamp range: the normal case) is returned as is, without
    a copy (one min/max reduction decides); anything else gets a sanitized copy."""
    z = logits.float()
    if z.numel() == 0:
        return z
    lo, hi = torch.aminmax(z)
    if bool(torch.isfinite(lo) & torch.isfinite(hi) & (lo >= -LOGIT_CLAMP) & (hi <= LOGIT_CLAMP)):
        return z
    z = torch.nan_to_num(z, nan=0.0, posinf=LOGIT_CLAMP, neginf=-LOGIT_CLAMP)
    return z.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = sanitize_logits(logits)
    return z if temperature == 1.0 else z / temperature


def _as_index(ids: torch.Tensor | list[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.long, device=device)


# --------------------------------------------------------------------------------------------
# token-level CE


class _WeightedCE(torch.autograd.Function):
    """sum_i w_i * (logsumexp(z_i) - z_i[y_i]) with a one-buffer backward: the gradient
    w_i * (softmax(z_i) - onehot(y_i)) is built in place in a single `[N, V]` tensor (autograd's
    generic logsumexp/gather backward would allocate three). Saves only z (the caller's tensor), lse."""

    @staticmethod
    def forward(ctx, z, labels, w):
        lse = torch.logsumexp(z, dim=-1)
        ce = lse - z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(z, lse, labels, w)
        return torch.where(w > 0, w * ce, 0.0).sum()

    @staticmethod
    def backward(ctx, grad_out):
        z, lse, labels, w = ctx.saved_tensors
        grad = (z - lse.unsqueeze(-1)).exp_()
        grad.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(lse, -1.0).unsqueeze(-1))
        grad.mul_((grad_out * w).unsqueeze(-1))
        return grad, None, None


def token_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted full-vocabulary CE.

    logits `[N, V]` (rows already shifted: row i predicts labels[i]), labels `[N]` token ids
    (entries < 0, e.g. -100, are ignored), weights `[N]` >= 0 (desc tokens carry `desc_ce_weight`).
    Returns the scalar `sum_i w_i * ce_i / sum_i w_i` (ignored rows count with weight 0); exactly 0
    (still attached to the graph) when the weight sum is 0. float32 math; memory-lean: nothing of
    size `[N, V]` is kept for backward beyond `logits` itself (float32 input), and backward needs one
    `[N, V]` buffer (no double backward).
    """
    w = weights.float() * (labels >= 0)
    w = w / w.sum().clamp_min(1e-12)  # no host sync: sum(w) == 0 gives all-zero weights
    return _WeightedCE.apply(logits.float(), labels.clamp_min(0), w)


# --------------------------------------------------------------------------------------------
# coord-distribution terms (on coord logits s = z[C], shape [N, 1000])


def coord_ce(coord_logits: torch.Tensor, target_bins: torch.Tensor) -> torch.Tensor:
    """Hard 1000-way CE of the (untempered) coord logits `[N, 1000]` against `target_bins` `[N]` -> `[N]`."""
    return F.cross_entropy(sanitize_logits(coord_logits), target_bins.long(), reduction="none")


def gaussian_targets(target_bins: torch.Tensor, sigma: float = 2.0, num_bins: int = NUM_BINS) -> torch.Tensor:
    """q `[N, num_bins]`: q_i ∝ exp(-0.5 ((i - t) / sigma)^2), normalized over the bins (float32).

    sigma is in bins; sigma <= 0 gives the one-hot target.
    """
    i = torch.arange(num_bins, device=target_bins.device, dtype=torch.float32)
    t = target_bins.float().unsqueeze(-1)
    if sigma <= 0:
        return (i == t).float()
    logq = -0.5 * ((i - t) / sigma) ** 2
    return torch.softmax(logq, dim=-1)


def coord_soft_ce(coord_logits: torch.Tensor, target_bins: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Gaussian soft CE `-sum_i q_i log softmax(s)_i` per slot: `[N, 1000]`, `[N]` -> `[N]`."""
    q = gaussian_targets(target_bins, sigma, coord_logits.shape[-1])
    logp = torch.log_softmax(sanitize_logits(coord_logits), dim=-1)
    return -(q * logp).sum(-1)


def coord_w1(coord_logits: torch.Tensor, target_bins: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """1-D Wasserstein-1 between softmax(s) and the Gaussian target q, in normalized units:
    `sum_i |CDF_p(i) - CDF_q(i)| / 999`, in [0, 1]. `[N, 1000]`, `[N]` -> `[N]`."""
    k = coord_logits.shape[-1]
    q = gaussian_targets(target_bins, sigma, k)
    p = torch.softmax(sanitize_logits(coord_logits), dim=-1)
    return (p.cumsum(-1) - q.cumsum(-1)).abs().sum(-1) / (k - 1)


def coord_probs(coord_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """pi = softmax(s / T) over the coord vocabulary, float32 `[N, 1000]`."""
    return torch.softmax(_tempered(coord_logits, temperature), dim=-1)


def expected_bins(coord_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Expected bin `sum_k pi_k * k` (float, 0..999) per slot: `[N, 1000]` -> `[N]`.
    Divide by 999 for the normalized coordinate c-hat."""
    pi = coord_probs(coord_logits, temperature)
    k = torch.arange(pi.shape[-1], device=pi.device, dtype=torch.float32)
    return pi @ k


def coord_entropy(coord_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H(pi) = -sum_k pi_k log pi_k (nats) per slot, `[N, 1000]` -> `[N]`.

    Returned with a + sign: the loss is the entropy, so a positive weight sharpens pi.
    """
    logpi = torch.log_softmax(_tempered(coord_logits, temperature), dim=-1)
    return -(logpi.exp() * logpi).sum(-1)


# --------------------------------------------------------------------------------------------
# vocabulary gates (on full logits z, shape [N, V])


def _lse_parts(logits: torch.Tensor, coord_ids, temperature: float):
    """(lse over all of z/T, lse over coord ids, mask of coord columns), z sanitized, float32."""
    z = _tempered(logits, temperature)
    idx = _as_index(coord_ids, z.device)
    lse_all = torch.logsumexp(z, dim=-1)
    lse_coord = torch.logsumexp(z.index_select(-1, idx), dim=-1)
    is_coord = torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device)
    is_coord[idx] = True
    return z, lse_all, lse_coord, is_coord


def coord_gate_loss(logits: torch.Tensor, coord_ids, temperature: float = 1.0) -> torch.Tensor:
    """Coord-vocab gate `max(0, lse(z/T) - lse(z[C]/T))` = -log(coord-vocabulary mass) per slot.

    logits `[N, V]` full-vocabulary logits at coord slots' predicting rows (sanitized first:
    NaN -> 0, +-inf -> +-1e4), coord_ids `[1000]` -> `[N]` (nats, >= 0; 0 when all mass is on coords).
    """
    _, lse_all, lse_coord, _ = _lse_parts(logits, coord_ids, temperature)
    return (lse_all - lse_coord).clamp_min(0.0)


def coord_vocab_mass(logits: torch.Tensor, coord_ids, temperature: float = 1.0) -> torch.Tensor:
    """Coord-vocabulary probability mass `sum_k softmax(z/T)[C_k]` per row = exp(-gate); `[N, V]` -> `[N]`."""
    return torch.exp(-coord_gate_loss(logits, coord_ids, temperature))


def text_gate_loss(logits: torch.Tensor, coord_ids, temperature: float = 1.0) -> torch.Tensor:
    """Reverse gate at *text* positions: `-log(1 - coord mass)` per row, `[N, V]` -> `[N]`.

    Computed stably as `lse(z/T) - lse(z[not C]/T)` (no 1 - p cancellation; finite even when the
    coord mass is ~1 because sanitized logits are bounded). Needs at least one non-coord token.
    """
    z, lse_all, _, is_coord = _lse_parts(logits, coord_ids, temperature)
    if bool(is_coord.all()):
        raise ValueError("text_gate_loss: the vocabulary has no non-coordinate token")
    lse_text = torch.logsumexp(z.masked_fill(is_coord, -math.inf), dim=-1)
    return (lse_all - lse_text).clamp_min(0.0)


# --------------------------------------------------------------------------------------------
# box terms (on expected normalized boxes [M, 4] = expected_bins / 999 grouped by 4)


def box_smoothl1(pred: torch.Tensor, gt: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """SmoothL1 per box, averaged over its 4 coordinates: `[M, 4]`, `[M, 4]` -> `[M]`.

    Boxes are normalized xyxy in [0, 1]; `pred` is used raw (not canonicalized). With beta = 1 every
    |diff| <= 1 is in the quadratic branch, i.e. 0.5 * diff^2 (upstream's effective behaviour);
    choose a small beta (e.g. 0.01) for a robust L1-like loss.
    """
    return F.smooth_l1_loss(pred.float(), gt.float(), beta=beta, reduction="none").mean(-1)


def box_ciou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """CIoU loss `1 - CIoU` per box on canonicalized, clipped normalized boxes: `[M, 4]`, `[M, 4]` -> `[M]`
    in [0, 2]; eps = 1e-7; non-finite values are mapped to 0. The CIoU itself (and its conventions:
    eps placement, alpha not differentiated) is `vlmdet.boxes.pairwise_ciou` with `gt` as the
    ground-truth argument."""
    loss = 1.0 - pairwise_ciou(canonicalize(pred.float()), canonicalize(gt.float()), eps=CIOU_EPS)
    return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
