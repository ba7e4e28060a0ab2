"""Rollout evaluation: generate -> parse (token level) -> match -> metrics, dumps, predictions.

`run_rollout_eval(loaded, records, cfg, run_dir=None, step=0, backend=None)` is called by the trainer's
callback every `eval.eval_steps` and by `vlmdet eval`. It returns a flat `dict[str, float]` (metric
definitions: docs/EVALUATION.md) and, with a `run_dir`, writes

    eval/step_XXXXXX/metrics.json          {"step", "metrics": {name: float}, "score_source"}
    eval/step_XXXXXX/predictions.jsonl     `vlmdet eval-preds` PRED format (pixel boxes + scores)
    eval/step_XXXXXX/predictions_constrained.jsonl   (with eval.also_constrained)
    monitor_dumps/step_XXXXXX.json (+ PNGs)          (monitor.enabled; unconstrained pass only)

and appends the metrics to logging.jsonl (`RunDir.log`). The eval folder is filled as a hidden
sibling and renamed into place (`io.replace_folder`): it holds predictions and metrics, or nothing.

Multi-process (torch.distributed initialized, e.g. during `torchrun` training): every rank generates
its strided shard of the records, rank 0 gathers the parsed samples (`gather_object`), computes the
metrics over all of them in record order and writes the files, and the metrics are broadcast so every
rank returns the same dict (with greedy decoding: the numbers one process gets).

Per sample: the backend's tokens are parsed with `parse.parse_rollout` (the one strict parser; coord
literals must be real coordinate-token ids), valid objects' bins become pixel boxes
(`coords.bins_to_pixel_box` with the record's size), and each box is scored by the geometric mean of
its 4 coordinate-token probabilities (`eval.score_source: coord_logprob`, probabilities from the
model's unprocessed distribution, see `evaluate/rollout.py`) or not scored (`constant`, COCO then
uses 1.0). Metrics:

- parse health (`evaluate.health.parse_health`): pred_objects, parse_dropped_invalid, drop/<reason>,
  parse_truncated_rate, ..., duplicate_rate;
- detection (`evaluate.detection.detection_metrics`, Hungarian at IoU `eval.f1_iou`): precision,
  recall, f1 (class-aware; `matched` = tp, fp, fn), the `_agnostic` variants, gt_objects, COCO bbox_*;
  identical to `vlmdet eval-preds --gt VAL --pred predictions.jsonl --f1-iou <eval.f1_iou>`;
- rollout matching (class-agnostic Hungarian with `match.iou_gate`, `match.fp_cost`, `match.fn_cost`,
  the matching Channel-B uses; the dumps' `matches`): gate_matched, gate_precision, gate_recall,
  gate_f1, gate_iou_mean;
- coordinate slots (`slots.rollout_slots`: every value position of every `bbox_2d`, dropped records
  included): coord_slots, coord_slot_leak_rate, leak/<kind> (digit, word, structure, end_of_turn, other),
  coord_vocab_mass_gen (mean coordinate-vocabulary mass at those slots, whatever was emitted there);
- generation: hit_max_new_tokens_rate, stopped_rate, gen_tokens_mean, coord_vocab_mass_gen_emitted
  (mean coordinate-vocabulary mass at the steps that emitted a coordinate token, anywhere);
- eval_time/{generate_s, total_s, tokens_per_s, samples_per_s} (+ weight_sync_s with the vLLM backend:
  the part of generate_s spent copying the policy's weights into the engine, 0 when unchanged).
All prefixed `eval_rollout/` (or `eval_rollout_constrained/` for the constrained pass) except eval_time/*
(`eval_time_constrained/*` for the constrained pass).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vlmdet.answer_format import get_format
from vlmdet.coords import bins_to_pixel_box
from vlmdet.errors import UsageError
from vlmdet.evaluate.detection import detection_metrics
from vlmdet.evaluate.health import parse_health
from vlmdet.evaluate.monitor import write_dump
from vlmdet.evaluate.backend import make_backend
from vlmdet.io import atomic_write_json, atomic_write_jsonl, replace_folder, staging_folder
from vlmdet.match import hungarian_match
from vlmdet.model.load import token_pieces
from vlmdet.parse import RolloutParse, parse_rollout
from vlmdet.rundir import RunDir
from vlmdet.slots import leak_metrics, rollout_slots

PREFIX = "eval_rollout"
PREFIX_CONSTRAINED = "eval_rollout_constrained"
SCORE_SOURCES = ("coord_logprob", "constant")


@dataclass(slots=True)
class SampleEval:
    """Everything known about one evaluated record (input to metrics, predictions and dumps)."""

    record: Any  # data.records.Record
    rollout: Any  # rollout.Rollout
    parse: Any  # parse.RolloutParse
    boxes: list[tuple[float, float, float, float]]  # pixel box per valid object
    scores: list[float | None]  # per valid object (None: constant scoring)
    match: Any  # match.MatchResult of valid objects vs GT (iou_gate, class-agnostic)
    coord_token_positions: list[int]  # positions (before end-of-turn) of every generated coord-token id
    slots: list  # slots.Slot per bbox_2d value position (token level)


def box_score(rollout, positions: Sequence[int]) -> float | None:
    """Geometric mean of the probabilities of the tokens at `positions`: exp(mean log p); None when
    the backend gave no log-probabilities for them."""
    lp = rollout.logprobs
    if not lp or max(positions) >= len(lp):
        return None
    return math.exp(sum(lp[i] for i in positions) / len(positions))


def box_score_source(cfg) -> str:
    """`eval.score_source`, except `constant` for a digit answer format (no coordinate-token probabilities)."""
    return cfg.eval.score_source if getattr(cfg.prompt, "answer_format", "coordjson") == "coordjson" else "constant"


def _parse_digit_rollout(token_ids, pieces, eot_id: int, fmt: str):
    """A `parse.RolloutParse` of a digit-format answer: cut at the first end-of-turn, parsed as text."""
    n_tokens = len(token_ids)
    stopped = eot_id in token_ids
    if stopped:
        n_tokens = list(token_ids).index(eot_id)
    text = "".join(pieces[:n_tokens])
    return RolloutParse(get_format(fmt).parse(text), text, n_tokens, stopped, [], 0, 0)


def evaluate_sample(record, rollout, cfg, loaded) -> SampleEval:
    """Parse one rollout (token level) and match its valid objects to the record's GT."""
    coord_bin_of_id = loaded.coord_bin_of_id
    pieces = rollout.pieces
    if len(pieces) != len(rollout.token_ids):  # a backend that did not decode per token
        pieces = token_pieces(loaded.tokenizer, rollout.token_ids)
    fmt = getattr(cfg.prompt, "answer_format", "coordjson")
    if fmt == "coordjson":
        rp = parse_rollout(rollout.token_ids, pieces, coord_bin_of_id, {loaded.eot_id}, cfg.prompt.field_order)
        objs = rp.result.objects
        boxes = [bins_to_pixel_box(o.bins, record.width, record.height) for o in objs]
    else:  # a digit format (answer_format.py): text level, the model saw the record's own size
        rp = _parse_digit_rollout(rollout.token_ids, pieces, loaded.eot_id, fmt)
        objs = rp.result.objects
        boxes = [get_format(fmt).to_pixels(o, record.width, record.height) for o in objs]
    if box_score_source(cfg) == "coord_logprob":
        scores = [box_score(rollout, pos) for pos in rp.coord_positions]
    else:
        scores = [None] * len(objs)
    gt_boxes = [o.bbox for o in record.objects]
    m = hungarian_match(boxes, gt_boxes, iou_gate=cfg.match.iou_gate, fp_cost=cfg.match.fp_cost,
                        fn_cost=cfg.match.fn_cost)
    coord_pos = [i for i, t in enumerate(rollout.token_ids[: rp.n_tokens]) if t in coord_bin_of_id]
    # coordinate slots are a CoordJSON notion (a digit there is the answer, not a leak)
    slots = rollout_slots(rollout.token_ids, pieces, rp.n_tokens, rp.stopped, coord_bin_of_id) if fmt == "coordjson" else []
    return SampleEval(record, rollout, rp, boxes, scores, m, coord_pos, slots)


def slot_mass(s: SampleEval, slot) -> float | None:
    """Coordinate-vocabulary mass at a slot's token (None when the backend gave no statistics there)."""
    mass = s.rollout.coord_mass
    return float(mass[slot.token]) if slot.token < len(mass) else None


def prediction_row(s: SampleEval) -> dict:
    """One `vlmdet eval-preds` PRED line: {"image_id", "objects": [{"desc", "bbox_2d", "score"?}]}."""
    objects = []
    for o, box, score in zip(s.parse.result.objects, s.boxes, s.scores):
        row = {"desc": o.desc, "bbox_2d": [float(v) for v in box]}
        if score is not None:
            row["score"] = float(score)
        objects.append(row)
    return {"image_id": s.record.image_id, "objects": objects}


def dump_sample(s: SampleEval) -> dict:
    """One monitor-dump sample (format in `evaluate/monitor.py`)."""
    rec, res, text = s.record, s.parse.result, s.parse.text
    return {
        "image_id": rec.image_id,
        "image": str(Path(rec.image_path).resolve()),
        "width": rec.width,
        "height": rec.height,
        "raw_text": text,
        "flags": {
            "failed": res.failed,
            "truncated": res.truncated,
            "malformed_container": res.malformed_container,
            "incomplete_tail": bool(res.incomplete_tail),
            "empty_pred": not res.objects,
            "hit_max_new_tokens": bool(s.rollout.hit_max),
        },
        "objects": [
            {"index": o.index, "desc": o.desc, "bins": list(o.bins), "bbox_2d": [float(v) for v in box],
             "score": score}
            for o, box, score in zip(res.objects, s.boxes, s.scores)
        ],
        "drops": [{"reason": d.reason, "index": d.index, "span": list(d.span), "text": text[d.span[0]:d.span[1]]}
                  for d in res.dropped],
        "gt": [{"desc": o.desc, "bbox_2d": [float(v) for v in o.bbox]} for o in rec.objects],
        "matches": [{"pred": p, "gt": g, "iou": float(iou)} for (p, g), iou in zip(s.match.pairs, s.match.ious)],
        "coord_slots": len(s.slots),
        "leaked_slots": [
            {"offset": sl.offset, "token": sl.token, "kind": sl.kind,
             "text": _piece(s, sl.token), "mass": slot_mass(s, sl)}
            for sl in s.slots if sl.leaked
        ],
    }


def _piece(s: SampleEval, i: int) -> str:
    """The decoded text of response token i ("" when the backend gave no pieces)."""
    pieces = s.rollout.pieces
    return pieces[i] if len(pieces) == len(s.rollout.token_ids) and i < len(pieces) else ""


def sample_metrics(samples: Sequence[SampleEval], records, cfg) -> tuple[dict[str, float], str]:
    """Metric name (unprefixed) -> value over all samples, and the score source of the boxes."""
    n = len(samples)
    out: dict[str, float] = dict(parse_health([s.parse.result for s in samples]))
    det = detection_metrics(records, {s.record.image_id: prediction_row(s)["objects"] for s in samples},
                            score_source=box_score_source(cfg), f1_iou=cfg.eval.f1_iou)
    score_source = str(det.pop("score_source"))
    det_pred = det.pop("pred_objects")
    assert det_pred == out["pred_objects"], (det_pred, out["pred_objects"])
    det.pop("images", None)
    out.update({k: float(v) for k, v in det.items()})
    out["matched"] = out["tp"]

    matched = sum(len(s.match.pairs) for s in samples)
    preds = out["pred_objects"]
    gts = out["gt_objects"]
    p = matched / preds if preds else 0.0
    r = matched / gts if gts else 0.0
    ious = [iou for s in samples for iou in s.match.ious]
    out.update({
        "gate_matched": float(matched),
        "gate_precision": p,
        "gate_recall": r,
        "gate_f1": 2 * p * r / (p + r) if p + r else 0.0,
        "gate_iou_mean": sum(ious) / len(ious) if ious else 0.0,
    })

    rate = (lambda k: k / n) if n else (lambda k: 0.0)
    out["hit_max_new_tokens_rate"] = rate(sum(bool(s.rollout.hit_max) for s in samples))
    out["stopped_rate"] = rate(sum(bool(s.rollout.stopped) for s in samples))
    out["gen_tokens_mean"] = rate(sum(len(s.rollout.token_ids) for s in samples))
    out.update(leak_metrics(sl.kind for s in samples for sl in s.slots))
    slot_masses = [m for s in samples for sl in s.slots if (m := slot_mass(s, sl)) is not None]
    out["coord_vocab_mass_gen"] = sum(slot_masses) / len(slot_masses) if slot_masses else 0.0
    masses = [s.rollout.coord_mass[i] for s in samples for i in s.coord_token_positions
              if i < len(s.rollout.coord_mass)]
    out["coord_vocab_mass_gen_emitted"] = sum(masses) / len(masses) if masses else 0.0
    return out, score_source


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def rank_and_world() -> tuple[int, int]:
    """`(rank, world size)` of the initialized torch.distributed process group, else `(0, 1)`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """The record indices rank `rank` of `world` evaluates: every `world`-th from `rank` (strided, so
    the shards differ in size by at most one and each spans the whole set)."""
    return list(range(rank, n, world))


def evaluate_pass(loaded, records, cfg, backend, seed: int | None = None):
    """One generation pass: (samples, unprefixed metrics, timing dict, score_source).

    Under torch.distributed every rank generates and parses its shard (`shard_indices`) and rank 0
    gathers the `SampleEval`s (`gather_object`), restores the record order and computes the metrics:
    the same numbers as one process with greedy decoding. Other ranks return `(None, None, None, None)`.
    Timing: `generate_s` is the slowest rank's generation time, the rates count every rank's tokens."""
    import torch.distributed as dist

    rank, world = rank_and_world()
    mine = shard_indices(len(records), rank, world)
    t0 = time.perf_counter()
    rollouts = backend.generate([records[i] for i in mine], seed=seed)
    gen_s = time.perf_counter() - t0
    if len(rollouts) != len(mine):
        raise RuntimeError(f"backend returned {len(rollouts)} rollouts for {len(mine)} records")
    samples = [evaluate_sample(records[i], ro, cfg, loaded) for i, ro in zip(mine, rollouts)]
    if world > 1:
        parts: list | None = [None] * world if rank == 0 else None
        dist.gather_object((mine, samples, gen_s), parts, dst=0)
        if rank != 0:
            return None, None, None, None
        by_index = {i: s for idx, ss, _ in parts for i, s in zip(idx, ss)}
        samples = [by_index[i] for i in range(len(records))]
        gen_s = max(g for _, _, g in parts)
    metrics, score_source = sample_metrics(samples, records, cfg)
    total_s = time.perf_counter() - t0
    tokens = sum(len(s.rollout.token_ids) for s in samples)
    timing = {
        "generate_s": gen_s,
        "total_s": total_s,
        "tokens_per_s": tokens / gen_s if gen_s > 0 else 0.0,
        "samples_per_s": len(records) / gen_s if gen_s > 0 else 0.0,
    }
    sync = getattr(backend, "last_sync", None)  # a backend that copies the policy's weights (vLLM)
    if sync is not None:
        timing["weight_sync_s"] = float(sync["seconds"])
    return samples, metrics, timing, score_source


def run_rollout_eval(loaded, records, cfg, run_dir=None, step: int = 0, backend=None, *, model=None,
                     constrained_backend=None, progress: bool = True, log: bool = True) -> dict[str, float]:
    """Evaluate `records` (the first `eval.max_samples`) with rollouts of `loaded` (see module docstring).

    `cfg`: a full `config.Config`; `run_dir`: a `rundir.RunDir`, a path, or None (nothing written);
    `step`: the optimizer step (file names, log rows; the generation seed is `cfg.seed + step`);
    `backend`: a `rollout.RolloutBackend` (default `HFRollout` from `cfg.rollout`);
    `model`: the module to generate with instead of `loaded.model` (the trainer's unwrapped model);
    `constrained_backend`: the backend of the `eval.also_constrained` pass (default: `HFRollout` with
    the grammar constraint on); `log`: append the metrics to the run's logging.jsonl (a caller that
    logs them itself, e.g. through `Trainer.log`, may pass False). Returns the metrics (floats).

    Multi-process (torch.distributed initialized): call it on every rank; each generates its shard of
    the records (`evaluate_pass`), rank 0 computes the metrics and writes the files, and every rank
    returns rank 0's metrics."""
    if model is not None and model is not loaded.model:
        loaded = dataclasses.replace(loaded, model=model)

    if cfg.eval.score_source not in SCORE_SOURCES:
        raise UsageError(f"eval.score_source must be one of {SCORE_SOURCES}, got {cfg.eval.score_source!r}")
    records = list(records)
    if cfg.eval.max_samples:
        records = records[: cfg.eval.max_samples]
    if run_dir is not None and not isinstance(run_dir, RunDir):
        run_dir = RunDir(run_dir)
    seed = int(cfg.seed) + int(step)

    rank, world = rank_and_world()
    progress = progress and rank == 0
    if backend is None:
        backend = make_backend(loaded, cfg, progress=progress)
    samples, metrics, timing, score_source = evaluate_pass(loaded, records, cfg, backend, seed)
    passes = [("predictions.jsonl", samples)]
    constrained = None
    if cfg.eval.also_constrained and not getattr(backend, "constrained", False):
        if constrained_backend is None:
            grammar = getattr(backend, "_grammar", None)
            constrained_backend = make_backend(loaded, cfg, constrained=True, progress=progress, grammar=grammar)
        c_samples, c_metrics, c_timing, _ = evaluate_pass(loaded, records, cfg, constrained_backend, seed)
        passes.append(("predictions_constrained.jsonl", c_samples))
        constrained = (c_metrics, c_timing)

    out = None
    if rank == 0:  # the gathered samples: metrics and files
        out = {**_prefixed(metrics, PREFIX), **_prefixed(timing, "eval_time")}
        if constrained is not None:
            out.update(_prefixed(constrained[0], PREFIX_CONSTRAINED))
            out.update(_prefixed(constrained[1], "eval_time_constrained"))
        if run_dir is not None:
            write_eval(run_dir, step, out, score_source, passes, cfg, log)
    if world > 1:  # every rank returns the same metrics (the Trainer picks the best checkpoint on each)
        import torch.distributed as dist

        box = [out]
        dist.broadcast_object_list(box, src=0)
        out = box[0]
    return out


def write_eval(run_dir: RunDir, step: int, out: dict, score_source: str, passes, cfg, log: bool) -> None:
    """The eval folder of `step` (predictions per pass, metrics.json; staged, then renamed into
    place), the monitor dump, and with `log` the metrics row in logging.jsonl."""
    samples = passes[0][1]
    folder = run_dir.eval_dir(step)
    staged = staging_folder(folder)  # the eval folder appears whole: predictions and metrics, or none
    for name, ss in passes:
        atomic_write_jsonl(staged / name, [prediction_row(s) for s in ss])
    if cfg.monitor.enabled:
        write_dump(run_dir.dump_path(step), step, [dump_sample(s) for s in samples],
                   n_samples=cfg.monitor.n_samples, max_text_chars=cfg.monitor.max_text_chars,
                   draw_images=cfg.monitor.draw_images)
    atomic_write_json(staged / "metrics.json", {"step": int(step), "metrics": out, "score_source": score_source})
    replace_folder(staged, folder)
    if log:
        run_dir.log({"step": int(step), **out})
