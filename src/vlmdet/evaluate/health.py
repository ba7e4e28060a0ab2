"""Parse health: what the strict parser saw over a set of model answers (see docs/EVALUATION.md).

`parse_health(results)` aggregates `parse.ParseResult`s (one per sample) into named floats. Names
carry no `eval_rollout/` prefix; the rollout evaluator adds it.

| name | definition |
|---|---|
| `samples` | number of samples |
| `pred_objects` | valid objects, summed over samples |
| `parse_dropped_invalid` | dropped records (every reason), summed; the incomplete tail is not a drop |
| `drop/<reason>` | dropped records with that reason, for every reason in `parse.DROP_REASONS` (0 when none) |
| `parse_incomplete_tail` | samples whose last record was cut off mid-way (not a drop) |
| `parse_truncated_rate` | fraction of samples whose container never closed (`truncated`) |
| `parse_failed_rate` | fraction of samples with no `{"objects": [` container at all (`failed`) |
| `malformed_container_rate` | fraction of samples where a broken separator stopped parsing |
| `sample_valid_pred_rate` | fraction of samples with **at least one valid object** (the CoordExp meaning of the name). An empty answer `{"objects": []}` scores 0 here; a sample with 10 valid objects and a dropped record scores 1. |
| `sample_clean_rate` | fraction of *clean* samples: not failed, not truncated, no malformed container and no dropped record. An empty but well-formed answer `{"objects": []}` is clean. |
| `empty_pred_rate` | fraction of samples with no valid object (failed samples included) |
| `duplicate_rate` | fraction of valid objects that duplicate an earlier valid object of the same sample: identical `desc` string and IoU >= 0.95 of the bin boxes. The first of a group is not a duplicate, so 3 copies give 2 duplicates. 0 when there are no valid objects. |

Every rate is 0.0 over zero samples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vlmdet.boxes import box_iou
from vlmdet.parse import DROP_REASONS, ParseResult

#: IoU (in bin space) at or above which two same-desc objects of one sample are duplicates.
DUPLICATE_IOU = 0.95


def count_duplicates(objects: Sequence) -> int:
    """Number of objects (anything with `.desc` and `.bins`) that duplicate an earlier one:
    same `desc` and bin-box IoU >= `DUPLICATE_IOU`."""
    if len(objects) < 2:
        return 0
    iou = box_iou(np.asarray([o.bins for o in objects], dtype=np.float64),
                  np.asarray([o.bins for o in objects], dtype=np.float64))
    descs = [o.desc for o in objects]
    same = np.asarray([[a == b for b in descs] for a in descs], dtype=bool)
    earlier = np.tril(np.ones_like(same), k=-1)  # [j, i] with i < j
    return int(((iou >= DUPLICATE_IOU) & same & earlier).any(axis=1).sum())


class ParseHealth:
    """Running totals of the parse-health metrics: `add` one `ParseResult` at a time (the result can
    then be dropped), `metrics()` gives what `parse_health` gives for all of them."""

    def __init__(self) -> None:
        self.samples = self.pred_objects = self.clean = self.duplicates = self.incomplete_tail = 0
        self.truncated = self.failed = self.malformed = self.with_objects = 0
        self.drops = {r: 0 for r in DROP_REASONS}

    def add(self, r: ParseResult) -> None:
        self.samples += 1
        for reason, count in r.drops.items():
            self.drops[reason] += count
        self.pred_objects += len(r.objects)
        self.clean += not (r.failed or r.truncated or r.malformed_container or r.dropped)
        self.duplicates += count_duplicates(r.objects)
        self.incomplete_tail += r.incomplete_tail
        self.truncated += bool(r.truncated)
        self.failed += bool(r.failed)
        self.malformed += bool(r.malformed_container)
        self.with_objects += bool(r.objects)

    def metrics(self) -> dict[str, float]:
        n = self.samples
        rate = (lambda k: k / n) if n else (lambda k: 0.0)
        return {
            "samples": float(n),
            "pred_objects": float(self.pred_objects),
            "parse_dropped_invalid": float(sum(self.drops.values())),
            **{f"drop/{reason}": float(count) for reason, count in self.drops.items()},
            "parse_incomplete_tail": float(self.incomplete_tail),
            "parse_truncated_rate": rate(self.truncated),
            "parse_failed_rate": rate(self.failed),
            "malformed_container_rate": rate(self.malformed),
            "sample_valid_pred_rate": rate(self.with_objects),
            "sample_clean_rate": rate(self.clean),
            "empty_pred_rate": rate(n - self.with_objects),
            "duplicate_rate": self.duplicates / self.pred_objects if self.pred_objects else 0.0,
        }


def parse_health(results: Sequence[ParseResult]) -> dict[str, float]:
    """Aggregate per-sample parse results into the parse-health metrics of the module docstring."""
    health = ParseHealth()
    for res in results:
        health.add(res)
    return health.metrics()
