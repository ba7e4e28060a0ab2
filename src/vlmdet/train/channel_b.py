"""Stage-2 Channel-B: rollout -> strict parse -> Hungarian match -> rebuilt target -> one
teacher-forced forward (see docs/STAGE2.md).

Per sample:
1. rollout with the `rollout.backend` backend (`evaluate/backend.make_backend`: HF `generate` or a
   colocated vLLM engine whose weights are synced from the policy first; greedy unless `rollout.do_sample`;
   `rollout.repetition_penalty`, `rollout.max_new_tokens`); the seed is derived from the global step:
   `rollout_seed(seed, step) = (seed + 1000003 * step) & 0x7FFFFFFF` (0 -> 1);
2. `parse.parse_rollout` on the response tokens (cut at the first end-of-turn);
3. `match.hungarian_match` of the valid objects' bins to the GT bins (class-agnostic, `match.iou_gate`,
   `match.fp_cost`, `match.fn_cost`);
4. target text (assistant part) = `text[:keep]` + `sep` + `render_records(unmatched GT)` + `"]}"`, where
   `keep` is the end of the rollout's last complete record (valid or not; just after `[` when there is
   none), `sep = ", "` when such a record exists and GT is appended; a rollout without any
   `{"objects": [` container restarts from that opener (`keep = 0`, `sep = '{"objects": ['`). Unmatched
   GT objects keep the GT order (sorted like Channel-A targets when `prompt.ordering` is `sorted`).
   Its tokens: the rollout's own tokens up to the *cut* (never re-tokenized), then the tokens of the
   target text's own tokenization from the cut on, then end-of-turn. The cut is the last character
   offset <= keep where both tokenizations have a token boundary (coordinate tokens are atomic, so it
   lies after the last kept coordinate): a byte-level BPE writes `]},` and ` [{"` as single tokens, so
   the cut falls before the record's closing `]}` or before the opener's ` [`. When the rollout's tokens
   are the tokenizer's own (what a model trained on tokenized answers writes), the whole sequence is
   exactly `tokenizer(target text) + end-of-turn`: no seam at the boundary.
5. supervision of that sequence (`labels`, `slot_class`, `coord_bins` like `chat.encode_example`, then
   the same `objective.supervised_rows` and loss terms as Channel-A with N = 1), decided per character
   and then per token:
   - characters of matched records: supervised (desc contents: context only, slot DESC without CE);
     their 4 coord slots (the model's own coord tokens as input) get the matched GT bins as geometry
     targets (and the GT coord id as label, so coord CE, when on, also targets the GT);
   - FP records, invalid (dropped) records, leading junk, the `{"objects": [` opener: no loss;
     separators between kept records: neutral;
   - the appended part (separator, GT records, `]}`, or the whole answer after a failed rollout) and
     the end-of-turn: supervised, desc contents weighted `losses.desc_ce_weight`, GT coord slots as
     geometry targets;
   - a token gets CE when it covers a supervised character and no unsupervised one (and no matched desc):
     `]},` closing a matched record is supervised, closing an FP or dropped record it is not; ` [{"`
     (the opener merged with the first record's `{"`) never is. With single-token JSON pieces (the tiny
     tokenizer) this is the per-piece rule of the list above.

Telemetry (`rollout/*`, floats) comes with a weight each so that a window mean, combined across ranks,
is the exact global ratio (see `channel_b_loss`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from vlmdet.data.records import load_image
from vlmdet.evaluate.backend import make_backend
from vlmdet.format import ANSWER_PREFIX, ANSWER_SUFFIX, RECORD_SEP, render_records, sort_objects
from vlmdet.match import hungarian_match
from vlmdet.model.chat import COORD, DESC, IGNORE, STRUCT, desc_spans, encode_example
from vlmdet.model.collate import Collator
from vlmdet.model.load import token_pieces
from vlmdet.parse import DROP_REASONS, parse_rollout
from vlmdet.train.channel_a import pass_terms, soft_context_forwards
from vlmdet.train.objective import combine, log_terms, supervised_rows, weights

SEED_MULTIPLIER = 1000003


def rollout_seed(seed: int, step: int) -> int:
    """Per-step rollout seed `(seed + 1000003 * step) & 0x7FFFFFFF`, with 0 mapped to 1."""
    s = (int(seed) + SEED_MULTIPLIER * int(step)) & 0x7FFFFFFF
    return s or 1


@dataclass
class BTarget:
    """The assistant part of one Channel-B training sequence (all lists of length n, the end-of-turn
    included) plus what happened.

    `ids` token ids; `labels` (-100 = no loss); `slot_class` (chat: IGNORE/STRUCT/DESC/COORD of the token);
    `coord_bins` (target bin at supervised coord slots, -1 elsewhere); `prefix_len` rollout tokens kept
    (`ids[:prefix_len]` are the rollout's own); `text` the target answer (the kept rollout text + the
    appended part, without the end-of-turn); `append_text` = the text of `ids[prefix_len:-1]` (a suffix of
    `text`); `n_pred` valid predictions; `n_gt`; `matched` pairs (pred index, gt index); `fn` unmatched
    GT indices (appended, in append order); `parse` the `parse.RolloutParse`.
    """

    ids: list[int]
    labels: list[int]
    slot_class: list[int]
    coord_bins: list[int]
    prefix_len: int
    append_text: str
    n_pred: int
    n_gt: int
    matched: list[tuple[int, int]]
    fn: list[int]
    text: str
    parse: Any = field(repr=False, default=None)


# What the contract says about each character of the target text (step 5 of the module docstring):
# no loss; separator between two kept records (neutral); supervised; desc of a matched record (context
# only); desc of an appended record (supervised).
_NONE, _SEP, _SUP, _CTX, _SUP_DESC = 0, 1, 2, 3, 4


def _char_roles(text: str, keep: int, rp, pairs) -> bytes:
    """The role of every character of `text` (= `rp.text[:keep]` + the appended part)."""
    role = bytearray(len(text))
    res = rp.result
    records = sorted([o.span for o in res.objects] + [d.span for d in res.dropped])
    for (_, e), (s, _) in zip(records, records[1:]):
        role[e:s] = bytes([_SEP]) * (s - e)
    for pi, _ in pairs:
        s, e = res.objects[pi].span
        role[s:e] = bytes([_SUP]) * (e - s)
        for a, b in desc_spans(rp.text[s:e]):
            role[s + a : s + b] = bytes([_CTX]) * (b - a)
    role[keep:] = bytes([_SUP]) * (len(text) - keep)
    for a, b in desc_spans(text[keep:]):
        role[keep + a : keep + b] = bytes([_SUP_DESC]) * (b - a)
    return bytes(role)


def _text_slot(roles: bytes) -> tuple[int, bool]:
    """(slot class, supervised) of a non-coordinate token covering characters with these roles.

    CE when the token has a supervised character and no unsupervised one: a separator between kept
    records neither earns nor blocks it (`]},` closing a matched record is supervised, one closing an
    unmatched record is not), the opener does block it (` [{"` gets none), and so does the desc of a
    matched record (context only)."""
    sup = (_SUP in roles or _SUP_DESC in roles) and _NONE not in roles and _CTX not in roles
    if _CTX in roles or _SUP_DESC in roles:
        return DESC, sup
    return (STRUCT if sup else IGNORE), sup


def _own_spans(pieces: Sequence[str]) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """Char spans of rollout tokens (a token that ends inside a multi-byte character, piece "", gets
    that character's first position) and the cut points `{char offset: tokens before it}` where a
    token ends on a complete character (0 included)."""
    spans, cuts, pos = [], {0: 0}, 0
    for i, p in enumerate(pieces):
        spans.append((pos, pos + len(p)) if p else (pos, pos + 1))
        pos += len(p)
        if p:
            cuts[pos] = i + 1
    return spans, cuts


def build_target(
    token_ids: Sequence[int],
    pieces: Sequence[str],
    gt: Sequence[tuple[str, Sequence[int]]],
    tokenizer,
    coord_ids: Sequence[int],
    eot_id: int,
    *,
    field_order: str = "desc_first",
    iou_gate: float = 0.3,
    fp_cost: float = 1.0,
    fn_cost: float = 1.0,
) -> BTarget:
    """Channel-B target for one rollout (module docstring, steps 2-5).

    token_ids / pieces: the rollout's response tokens and their decoded texts (an end-of-turn and
    anything after it are ignored); gt: `(desc, bins)` objects in GT (training) order; tokenizer: encodes
    the target text; coord_ids: 1000 ids in bin order. Pure apart from the tokenizer call.
    """
    coord_bin = {int(t): k for k, t in enumerate(coord_ids)}
    rp = parse_rollout(list(token_ids), list(pieces), coord_bin, {int(eot_id)}, field_order)
    res = rp.result
    preds = res.objects
    m = hungarian_match([o.bins for o in preds], [b for _, b in gt], iou_gate=iou_gate, fp_cost=fp_cost, fn_cost=fn_cost)
    fn = sorted(m.unmatched_gt)

    # --- the target text: the rollout's text up to its last complete record + the appended part
    tail = [gt[j] for j in fn]
    keep = 0 if res.failed else res.prefix_end
    head = ANSWER_PREFIX if res.failed else (RECORD_SEP if res.n_records > 0 and tail else "")
    text = rp.text[:keep] + head + render_records(tail, field_order) + ANSWER_SUFFIX
    roles = _char_roles(text, keep, rp, m.pairs)

    # --- the cut: the last offset <= keep where the rollout's tokens and the target text's own
    # tokenization both have a token boundary; before it the rollout's tokens, from it the target's
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    t_ids, t_off = enc["input_ids"], enc["offset_mapping"]
    t_cuts = {0: 0} | {a: j for j, (a, _) in enumerate(t_off) if j and t_off[j - 1][1] <= a}
    spans, own_cuts = _own_spans(pieces[: rp.n_tokens])
    cut = max(c for c in own_cuts if c <= keep and c in t_cuts)
    n_pre, j0 = own_cuts[cut], t_cuts[cut]

    ids, labels, slot, bins = [], [], [], []
    coord_target = {}  # rollout token index -> GT bin, at the coord slots of matched records
    for pi, gi in m.pairs:
        coord_target.update(zip(rp.coord_positions[pi], (int(b) for b in gt[gi][1])))
    assert all(i < n_pre for i in coord_target), "a matched coordinate lies after the cut"
    for i in range(n_pre):
        tid = int(token_ids[i])
        ids.append(tid)
        if i in coord_target:
            k = coord_target[i]
            labels.append(int(coord_ids[k]))
            slot.append(COORD)
            bins.append(k)
            continue
        s, e = spans[i]
        kind, sup = (IGNORE, False) if tid in coord_bin else _text_slot(roles[s:e])
        labels.append(tid if sup else -100)
        slot.append(kind)
        bins.append(-1)
    for tid, (a, b) in zip(t_ids[j0:], t_off[j0:]):
        tid = int(tid)
        ids.append(tid)
        if tid in coord_bin:  # a coordinate of an appended record
            sup = roles[a:b] == bytes([_SUP]) * (b - a)
            labels.append(tid if sup else -100)
            slot.append(COORD if sup else IGNORE)
            bins.append(coord_bin[tid] if sup else -1)
            continue
        kind, sup = _text_slot(roles[a:b])
        labels.append(tid if sup else -100)
        slot.append(kind)
        bins.append(-1)
    ids.append(int(eot_id))
    labels.append(int(eot_id))
    slot.append(STRUCT)
    bins.append(-1)
    return BTarget(ids, labels, slot, bins, n_pre, text[cut:], len(preds), len(gt), list(m.pairs), fn, text, rp)


def assemble_example(prompt_example: Mapping[str, Any], target: BTarget) -> dict:
    """Concatenate a prompt-only `chat.encode_example(..., answer=None)` with a `BTarget` into a
    training example with the same keys and dtypes as a teacher-forced `encode_example`."""
    p = prompt_example
    n = len(target.ids)
    ids = torch.cat([p["input_ids"], torch.tensor(target.ids, dtype=torch.long)])
    return {
        "input_ids": ids,
        "labels": torch.cat([p["labels"], torch.tensor(target.labels, dtype=torch.long)]),
        "slot_class": torch.cat([p["slot_class"], torch.tensor(target.slot_class, dtype=torch.int8)]),
        "coord_bins": torch.cat([p["coord_bins"], torch.tensor(target.coord_bins, dtype=torch.long)]),
        "mm_token_type_ids": torch.cat([p["mm_token_type_ids"], torch.zeros(n, dtype=p["mm_token_type_ids"].dtype)]),
        "pixel_values": p["pixel_values"],
        "image_grid_thw": p["image_grid_thw"],
    }


# ------------------------------------------------------------------------------------------------
# telemetry


def rollout_metrics(targets: Sequence[BTarget], rollouts: Sequence[Any], gen_seconds: float) -> list[tuple[dict[str, float], float]]:
    """`rollout/*` telemetry of one Channel-B batch as `(metrics, weight)` groups: a weighted mean of
    each group over micro-batches and ranks is the exact global value.

    - precision (weight: valid predictions), recall (weight: GT objects), f1 (weight 2TP+FP+FN);
    - per rollout (weight: rollouts): `truncated_rate` (container never closed), `failed_rate` (no
      container), `malformed_container_rate`, `hit_max_new_tokens_rate`, `empty_pred_rate` (no valid
      object), `gen_tokens_mean`, `prefix_tokens_mean`, `append_tokens_mean`, `valid_pred_mean`,
      `gt_objects_mean`, `fn_appended_mean`, and `drop/<reason>` (dropped records per rollout) for every
      `parse.DROP_REASONS` entry, plus `dropped_invalid_mean`;
    - per Channel-B micro-batch (weight 1): `generate_s` (rollout seconds), `batch_rollouts`.
    """
    n = len(targets)
    tp = sum(len(t.matched) for t in targets)
    n_pred = sum(t.n_pred for t in targets)
    n_gt = sum(t.n_gt for t in targets)
    fp, fn = n_pred - tp, n_gt - tp
    groups: list[tuple[dict[str, float], float]] = []
    if n_pred:
        groups.append(({"rollout/precision": tp / n_pred}, float(n_pred)))
    if n_gt:
        groups.append(({"rollout/recall": tp / n_gt}, float(n_gt)))
    if 2 * tp + fp + fn:
        groups.append(({"rollout/f1": 2 * tp / (2 * tp + fp + fn)}, float(2 * tp + fp + fn)))
    if n:
        res = [t.parse.result for t in targets]
        per = {
            "rollout/truncated_rate": sum(r.truncated for r in res),
            "rollout/failed_rate": sum(r.failed for r in res),
            "rollout/malformed_container_rate": sum(r.malformed_container for r in res),
            "rollout/hit_max_new_tokens_rate": sum(bool(getattr(r, "hit_max", False)) for r in rollouts),
            "rollout/empty_pred_rate": sum(t.n_pred == 0 for t in targets),
            "rollout/gen_tokens_mean": sum(len(r.token_ids) for r in rollouts),
            "rollout/prefix_tokens_mean": sum(t.prefix_len for t in targets),
            "rollout/append_tokens_mean": sum(len(t.ids) - t.prefix_len for t in targets),
            "rollout/valid_pred_mean": n_pred,
            "rollout/gt_objects_mean": n_gt,
            "rollout/fn_appended_mean": sum(len(t.fn) for t in targets),
            "rollout/dropped_invalid_mean": sum(sum(r.drops.values()) for r in res),
        }
        for reason in DROP_REASONS:
            per[f"rollout/drop/{reason}"] = sum(r.drops.get(reason, 0) for r in res)
        groups.append(({k: v / n for k, v in per.items()}, float(n)))
    groups.append(({"rollout/generate_s": float(gen_seconds), "rollout/batch_rollouts": float(n)}, 1.0))
    return groups


# ------------------------------------------------------------------------------------------------
# the Channel-B step


def channel_b_batch(loaded, records: Sequence[Any], cfg: Any, step: int, backend=None):
    """Rollouts for `records` (one per record) and the rebuilt, collated training batch.

    Returns `(batch, targets, rollouts, gen_seconds)`. `loaded`: `model.load.Loaded` whose `model` is the
    unwrapped model; `cfg`: the full `Config`; `step`: the optimizer step (seeds the rollout).
    """
    backend = backend or make_backend(loaded, cfg, progress=False)
    t0 = time.perf_counter()
    rollouts = backend.generate(records, seed=rollout_seed(cfg.seed, step))
    gen_s = time.perf_counter() - t0
    examples, targets = [], []
    for rec, ro in zip(records, rollouts):
        gt = rec.bins()
        if cfg.prompt.ordering == "sorted":
            gt = sort_objects(gt)
        pieces = ro.pieces if ro.pieces else _pieces(loaded, ro.token_ids)
        tgt = build_target(
            ro.token_ids, pieces, gt, loaded.tokenizer, loaded.coord_ids, loaded.eot_id,
            field_order=cfg.prompt.field_order, iou_gate=cfg.match.iou_gate,
            fp_cost=cfg.match.fp_cost, fn_cost=cfg.match.fn_cost,
        )
        prompt = encode_example(loaded, load_image(rec), None, cfg.prompt)
        examples.append(assemble_example(prompt, tgt))
        targets.append(tgt)
    batch = Collator(loaded.pad_id, padding_side="right")(examples)
    return batch, targets, rollouts, gen_s


def _pieces(loaded, ids):
    return token_pieces(loaded.tokenizer, ids)


def channel_b_loss(model, loaded, records: Sequence[Any], cfg: Any, step: int, backend=None):
    """One Channel-B micro-batch: `(total, logs, weighted)`.

    `model` is the (possibly DDP-wrapped) training model, used for the teacher-forced forward;
    `loaded.model` must be its unwrapped module (used to generate). `logs`: `loss/<term>` (unweighted),
    `loss/total`; `weighted`: the `rollout_metrics` groups. The forward is Channel-A's with N = 1 on
    the rebuilt batch (same loss terms and weights, `stage2.a1_anchor` not applied).
    """

    batch, targets, rollouts, gen_s = channel_b_batch(loaded, records, cfg, step, backend)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    lc = cfg.losses
    rows = supervised_rows(batch, lc)
    out = soft_context_forwards(model, batch, rows, loaded.coord_ids, n_iter=1)
    terms, _, _ = pass_terms(out, rows, loaded.coord_ids, lc, {})
    total = combine(terms, weights(lc))
    logs = log_terms(terms, total)
    return total, logs, rollout_metrics(targets, rollouts, gen_s)
