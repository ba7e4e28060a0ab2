"""Rollout generation: records in, generated answers (with per-token statistics) out.

The backend interface is narrow; `HFRollout` (here) and `evaluate.vllm_rollout.VLLMRollout` implement it:

    class RolloutBackend(Protocol):
        max_new_tokens: int
        def generate(self, records: Sequence[Record], seed: int | None = None) -> list[Rollout]: ...

`records` are `data.records.Record`s (the backend loads the image and builds the prompt itself);
the result has one `Rollout` per record, in order. A backend that cannot provide per-token
statistics returns empty `logprobs` / `coord_mass` lists; the evaluator then falls back to constant
box scores and reports `coord_vocab_mass_gen` from what is there.

`HFRollout` runs `model.generate` (transformers): batches of `rollout.batch_size` records, left
padding (`model.collate.Collator(padding_side="left")`), vision inputs and `mm_token_type_ids` passed
once (generate uses them at prefill only and extends `mm_token_type_ids` with zeros), KV cache on,
greedy unless `rollout.do_sample`, stop at `<|im_end|>` or after `rollout.max_new_tokens` tokens.

Which distribution the statistics come from: `Rollout.logprobs[t]` and `Rollout.coord_mass[t]` are read
from the model's UNPROCESSED next-token distribution (softmax of the raw logits, before repetition
penalty, temperature, top-p, grammar constraint or any extra processor). To make that exact, vlmdet
builds the processor list itself, in this order:

    raw-statistics recorder -> repetition penalty -> extra processors -> grammar constraint
    -> temperature -> top-p

and passes neutral values (temperature 1, top_p 1, top_k 0, repetition_penalty 1) to `generate`, so
the checkpoint's own `generation_config` (e.g. Qwen's sampling defaults) cannot slip processors in.
The recorder keeps one `[B, V]` buffer (not the `[steps, B, V]` that `output_logits` would).

Sharded models (FSDP2 full sharding: parameters are DTensors, `is_sharded`): every forward gathers
parameters across ranks, so `generate` passes `synced_gpus=True` (a rank that is done keeps stepping
until every rank is) and a rank with fewer batches than another runs extra, discarded batches, so that
all ranks make the same number of `generate` calls.

Seeding: `generate(records, seed)` seeds torch inside `torch.random.fork_rng`, so sampling is
reproducible per call and the caller's RNG state (e.g. the trainer's) is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from vlmdet.config import PromptConfig, RolloutConfig
from vlmdet.console import progress
from vlmdet.data.records import load_image
from vlmdet.evaluate.constrained import grammar_for, CoordJSONLogitsProcessor
from vlmdet.model.chat import encode_example
from vlmdet.model.collate import Collator
from vlmdet.model.load import token_pieces


@dataclass(slots=True)
class Rollout:
    """One generated answer.

    - `token_ids`: generated ids up to and including the first end-of-turn (padding after it removed);
      without end-of-turn, all generated ids.
    - `pieces`: decoded text of each id (`model.load.token_pieces`), aligned with `token_ids`.
    - `logprobs[t]`: log p(token_ids[t]) under the model's unprocessed distribution (natural log).
    - `coord_mass[t]`: sum of that distribution over the 1000 coordinate ids at step t.
    - `stopped`: an end-of-turn id was generated; `hit_max`: no end-of-turn and `max_new_tokens`
      tokens were generated.
    - `text`: the response text before the end-of-turn (`"".join(pieces)` without it).
    """

    token_ids: list[int]
    logprobs: list[float]
    coord_mass: list[float]
    stopped: bool
    hit_max: bool
    text: str
    pieces: list[str] = field(default_factory=list)


@runtime_checkable
class RolloutBackend(Protocol):
    max_new_tokens: int

    def generate(self, records: Sequence[Any], seed: int | None = None) -> list[Rollout]: ...


#: extra processors: a list, or a callable (records of the batch) -> list (e.g. to force answers in tests)
ExtraProcessors = Sequence[Any] | Callable[[Sequence[Any]], Sequence[Any]]


class RawStatsRecorder:
    """A logits processor that records, per step, log p(chosen token) and the coord-vocab mass of the
    scores it receives (put it first: then they are the model's raw logits). The chosen token of step
    t is read at step t+1 (the last input column); `finish(last_tokens)` closes the last step."""

    def __init__(self, coord_ids):
        self.coord_ids = coord_ids
        self.prev = None
        self.logprobs: list = []  # per step: [B] tensors (on the logits' device)
        self.coord_mass: list = []

    def _take(self, chosen) -> None:
        self.logprobs.append(self.prev.gather(1, chosen.view(-1, 1).to(self.prev.device)).squeeze(1))
        self.prev = None

    def __call__(self, input_ids, scores):
        import torch

        if self.prev is not None:
            self._take(input_ids[:, -1])
        logp = torch.log_softmax(scores.float(), dim=-1)
        self.prev = logp
        if self.coord_ids.device != logp.device:
            self.coord_ids = self.coord_ids.to(logp.device)
        ids = self.coord_ids
        self.coord_mass.append(torch.logsumexp(logp.index_select(1, ids), dim=-1).exp())
        return scores

    def finish(self, last_tokens) -> None:
        if self.prev is not None:
            self._take(last_tokens)


class HFRollout:
    """`RolloutBackend` on `transformers` `model.generate` (see the module docstring).

    `loaded`: `model.load.Loaded`; `rollout_cfg`: the loaded `rollout` config section (max_new_tokens,
    batch_size, do_sample, temperature, top_p, repetition_penalty, constrained); `prompt_cfg`: the
    `prompt` section (prompt text and field order); both were checked when the config was loaded.
    `constrained`: overrides `rollout_cfg.constrained`;
    `extra_processors`: logits processors applied after the repetition penalty and before the grammar
    constraint (a list, a single `LogitsProcessor`, or a factory `(batch records) -> list` called per
    batch, e.g. to force per-record answers in tests); `grammar`: a prebuilt
    `constrained.CoordJSONGrammar` to share between backends; `progress`: show progress over batches (`console.progress`: a bar on a terminal, plain lines otherwise).
    """

    name = "hf"

    def __init__(
        self,
        loaded,
        rollout_cfg: RolloutConfig,
        prompt_cfg: PromptConfig,
        *,
        constrained: bool | None = None,
        extra_processors: ExtraProcessors = (),
        grammar=None,
        progress: bool = True,
    ):
        self.loaded = loaded
        self.prompt_cfg = prompt_cfg
        self.max_new_tokens = rollout_cfg.max_new_tokens
        self.batch_size = rollout_cfg.batch_size
        self.do_sample = rollout_cfg.do_sample
        self.temperature = rollout_cfg.temperature
        self.top_p = rollout_cfg.top_p
        self.repetition_penalty = rollout_cfg.repetition_penalty
        self.constrained = rollout_cfg.constrained if constrained is None else constrained
        self.extra_processors = extra_processors
        self.field_order = prompt_cfg.field_order
        self._grammar = grammar
        self.progress = progress

    @property
    def grammar(self):
        if self._grammar is None:
            self._grammar = grammar_for(self.loaded, self.field_order)
        return self._grammar

    def _extra(self, records) -> list:
        """The extra processors for this batch: a list / LogitsProcessorList / single processor as
        given, or the result of calling a factory with the batch's records."""
        from transformers import LogitsProcessor

        extra = self.extra_processors
        if isinstance(extra, (list, tuple)):
            return list(extra)
        if isinstance(extra, LogitsProcessor):
            return [extra]
        return list(extra(records))

    def _processors(self, records, prompt_len: int, recorder) -> list:
        from transformers.generation.logits_process import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        procs: list = [recorder]
        if self.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        procs += self._extra(records)
        if self.constrained:
            procs.append(CoordJSONLogitsProcessor(self.grammar, prompt_len, self.max_new_tokens))
        if self.do_sample and self.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(self.temperature))
        if self.do_sample and self.top_p < 1.0:
            procs.append(TopPLogitsWarper(self.top_p))
        return procs

    def _encode(self, records):
        keys = ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw")
        examples = []
        for rec in records:
            ex = encode_example(self.loaded, load_image(rec), None, self.prompt_cfg)
            examples.append({k: ex[k] for k in keys})
        return Collator(self.loaded.pad_id, padding_side="left")(examples)

    def _generate_batch(self, records) -> list[Rollout]:
        import torch
        from transformers import LogitsProcessorList


        model = self.loaded.model
        batch = self._encode(records)
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        inputs = {k: v.to(device) for k, v in batch.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        prompt_len = inputs["input_ids"].shape[1]
        recorder = RawStatsRecorder(torch.tensor(self.loaded.coord_ids, dtype=torch.long))
        eot = self.loaded.eot_id
        # our own processors do penalty / temperature / top-p; neutralize the checkpoint's defaults
        neutral = {"temperature": 1.0, "top_p": 1.0, "top_k": 0} if self.do_sample else {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(
                    **inputs,
                    **neutral,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=self.do_sample,
                    num_beams=1,
                    repetition_penalty=1.0,
                    eos_token_id=eot,
                    pad_token_id=self.loaded.pad_id,
                    logits_processor=LogitsProcessorList(self._processors(records, prompt_len, recorder)),
                    return_dict_in_generate=True,
                    use_cache=True,
                    synced_gpus=is_sharded(model),  # every rank keeps stepping until all are done (FSDP)
                )
        finally:
            if was_training:
                model.train()
            # the model caches mRoPE deltas of this batch; a later plain forward must not reuse them
            inner = getattr(model, "model", None)
            if inner is not None and hasattr(inner, "rope_deltas"):
                inner.rope_deltas = None
        seqs = out.sequences[:, prompt_len:].cpu()
        n_steps = seqs.shape[1]
        if n_steps:
            recorder.finish(seqs[:, -1])
        logprobs = torch.stack(recorder.logprobs, 1).cpu() if recorder.logprobs else torch.zeros(len(records), 0)
        mass = torch.stack(recorder.coord_mass, 1).cpu() if recorder.coord_mass else torch.zeros(len(records), 0)
        rollouts = []
        for r in range(len(records)):
            ids = seqs[r].tolist()
            stopped = eot in ids
            n = ids.index(eot) + 1 if stopped else len(ids)
            ids = ids[:n]
            pieces = token_pieces(self.loaded.tokenizer, ids)
            text = "".join(pieces[: n - 1] if stopped else pieces)
            rollouts.append(
                Rollout(
                    token_ids=ids,
                    logprobs=logprobs[r, :n].tolist(),
                    coord_mass=mass[r, :n].tolist(),
                    stopped=stopped,
                    hit_max=(not stopped) and n >= self.max_new_tokens,
                    text=text,
                    pieces=pieces,
                )
            )
        return rollouts

    def generate(self, records: Sequence[Any], seed: int | None = None) -> list[Rollout]:
        """One `Rollout` per record, in order (batches of `batch_size`; `console.progress` over batches)."""
        import torch

        records = list(records)
        starts = range(0, len(records), self.batch_size)
        device = next(self.loaded.model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        out: list[Rollout] = []
        extra = 0
        if is_sharded(self.loaded.model):  # every rank must run as many generate calls (their forwards gather)
            n = torch.tensor([len(starts)], device=device)
            torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MAX)
            extra = int(n) - len(starts)
            if extra and not records:
                raise UsageError("rollout: a rank with no records cannot join the other ranks' sharded generation")
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(int(seed))
            for s in progress(starts, "rollout", unit="batch", enabled=self.progress):
                out += self._generate_batch(records[s : s + self.batch_size])
            for _ in range(extra):  # results dropped: only there to keep the ranks in step
                self._generate_batch(records[:1])
        return out


def is_sharded(model) -> bool:
    """Whether `model`'s parameters are FSDP2 shards (DTensors): its forwards then gather parameters
    across ranks, so every rank must generate in step (`synced_gpus`, equal numbers of calls)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
