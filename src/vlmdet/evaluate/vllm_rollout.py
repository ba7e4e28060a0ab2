"""Rollouts on vLLM: a colocated `vllm.LLM` engine behind the `RolloutBackend` protocol.

`VLLMRollout(loaded, rollout_cfg, prompt_cfg, dtype=...)` generates with one engine per process
(created on first use, cached by checkpoint folder and engine settings, reused by every later eval
and Channel-B step). The engine runs in the training process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`),
so pushing weights into it is a tensor copy, not a transfer between processes.

Same inputs as `HFRollout`: each record's image is loaded by `data.records.load_image` (sides must be
multiples of patch * merge, never resized), the prompt is `model.chat.render_prompt` of the same
system / user text with one `<|image_pad|>`, which vLLM's Qwen-VL processor expands to the image's
token count; the resulting prompt token ids equal `model.chat.encode_example`'s (tested).

Decoding (`rollout` section): greedy (temperature 0) unless `do_sample` (then `temperature`, `top_p`,
top-k off), `repetition_penalty` (vLLM's, the same rule as transformers': over prompt and generated
ids), `max_new_tokens`, stop at `<|im_end|>` only (the tokenizer's own EOS is ignored, as with HF),
the checkpoint's `generation_config.json` is not applied (`generation_config="vllm"`).

Seeds: `generate(records, seed)` gives record i the vLLM request seed
`numpy.random.SeedSequence([seed, i]).generate_state(1)[0]`, so a call is reproducible from `seed`
(the same `seed` the HF backend gets: `cfg.seed + step` for eval, `rollout_seed(seed, step)` in
Channel-B); the samples themselves differ from HF's (another random stream). `seed=None`: unseeded.

Per-token statistics, both from the model's unprocessed distribution, as on HF: `Rollout.logprobs[t]`
is vLLM's raw log-probability of the chosen token (`logprobs_mode="raw_logprobs"`: before penalties,
temperature and top-p); `Rollout.coord_mass[t]` is recorded by a logits processor installed in the
engine (`coord_mass_processor`): vLLM returns only top-k log-probs, too few to sum 1000 coordinate
tokens, so the mass is computed from the whole logits row inside the engine.

Weight sync (`WeightSync`): before each `generate`, the engine's weights are made equal to
`loaded.model`'s. A push happens only when a parameter changed since the last push (`WeightSync.fingerprint`:
torch's per-tensor version counters, which every in-place update — optimizer steps included —
increments, plus sums of a strided sample of each parameter, which also catch writes through
`.data`; or a different model object), and hands every parameter to vLLM's in-place `reload_weights` (its
HF-name mapping and post-load processing), repacks the CPU backend's copy of a tied output head
(`repack_cpu_embeddings`), then resets vLLM's prefix and encoder caches. `last_sync` holds the cost of the last call: {"pushed", "seconds",
"bytes"}. Under DDP every rank holds the full weights and the eval rank pushes its own; sharded
parameters (FSDP, DeepSpeed ZeRO-3) are not gathered here and are refused.

Memory: `rollout.vllm_gpu_memory_utilization` (the engine's share of GPU memory, weights + KV
cache), `rollout.vllm_kv_cache_gib` (an explicit KV-cache size; needed on CPU, where the share would
be taken of host RAM), `rollout.vllm_max_model_len` (prompt + answer tokens per sequence).

Not supported here (`make_backend` sends them to `HFRollout`): the grammar constraint and extra
logits processors, which need a per-step Python hook that vLLM's engine does not take per request.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Sequence

import numpy as np
import torch

from vlmdet.data.records import load_image
from vlmdet.errors import UsageError
from vlmdet.config import PromptConfig, RolloutConfig
from vlmdet.evaluate.rollout import Rollout
from vlmdet.model.chat import render_prompt, system_prompt, user_prompt
from vlmdet.model.load import token_pieces

#: engines of this process: settings key -> vllm.LLM
_ENGINES: dict[tuple, Any] = {}
#: per request being generated: extra_args["vlmdet_mass"] -> {step: coordinate mass}
_MASS_SINKS: dict[str, dict[int, float]] = {}


def coord_mass_processor(coord_ids: Sequence[int]) -> type:
    """A vLLM (v1) logits-processor class that records, for every request that carries
    `extra_args["vlmdet_mass"]`, the coordinate-vocabulary mass of each step's distribution into
    `_MASS_SINKS[key][step]` (step = tokens generated so far) and leaves the logits unchanged.

    vLLM applies such processors to the model's float32 logits before penalties, temperature and
    top-p (only `allowed_token_ids` / `bad_words`, which vlmdet never sets, come earlier), so the mass
    is that of the unprocessed distribution. A step computed twice (chunked prefill, preemption) is
    overwritten by its last computation."""
    from vllm.v1.sample.logits_processor import LogitsProcessor, MoveDirectionality

    ids = [int(i) for i in coord_ids]

    class CoordMassRecorder(LogitsProcessor):
        def __init__(self, vllm_config, device, is_pin_memory):
            self.ids = torch.tensor(ids, dtype=torch.long, device=device)
            self.rows: dict[int, tuple[dict, list]] = {}  # batch row -> (sink, the request's output ids)

        def is_argmax_invariant(self) -> bool:
            return False  # keeps it on the path greedy requests take too

        def update_state(self, batch_update) -> None:
            if batch_update is None:
                return
            for i in batch_update.removed:
                self.rows.pop(i, None)
            for i, params, _prompt, output_ids in batch_update.added:
                key = (params.extra_args or {}).get("vlmdet_mass")
                if key in _MASS_SINKS:
                    self.rows[i] = (_MASS_SINKS[key], output_ids)
                else:
                    self.rows.pop(i, None)
            for a, b, how in batch_update.moved:
                ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
                if ra is not None:
                    self.rows[b] = ra
                if how == MoveDirectionality.SWAP and rb is not None:
                    self.rows[a] = rb

        def apply(self, logits):
            if self.rows:
                rows = list(self.rows)
                sub = logits[rows].float()
                mass = (torch.logsumexp(sub.index_select(1, self.ids), -1) - torch.logsumexp(sub, -1)).exp()
                for i, m in zip(rows, mass.tolist()):
                    sink, output_ids = self.rows[i]
                    sink[len(output_ids)] = m
            return logits

    return CoordMassRecorder


def _allow_torchvision_without_ops() -> None:
    """Nothing to do when torchvision imports; otherwise explain the one known cause and stop.

    vLLM imports transformers' torchvision image transforms. The PyPI torchvision wheel is a CUDA
    build: on a CPU-only torch its C++ ops cannot load, and torchvision 0.28's `nms` / `qnms` fake
    registrations then fail the import. `scripts/setup.sh vllm` guards those two registrations."""
    try:
        import torchvision  # noqa: F401
    except ImportError:  # not installed: vllm's own import says what is missing
        return
    except RuntimeError as err:
        raise UsageError(
            f"rollout.backend vllm: torchvision cannot be imported ({err}); "
            "create the environment with `scripts/setup.sh vllm`"
        ) from None


def engine_key(path, dtype: str, rollout_cfg: RolloutConfig) -> tuple:
    return (
        str(path),
        dtype,
        rollout_cfg.vllm_max_model_len,
        rollout_cfg.vllm_gpu_memory_utilization,
        rollout_cfg.vllm_kv_cache_gib,
    )


def get_engine(path, dtype: str, rollout_cfg: RolloutConfig, coord_ids: Sequence[int], seed: int = 0):
    """The process's `vllm.LLM` for this checkpoint folder and settings (created once)."""
    key = engine_key(path, dtype, rollout_cfg)
    if key in _ENGINES:
        return _ENGINES[key]
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: the engine lives here
    _allow_torchvision_without_ops()
    try:
        from vllm import LLM
    except ImportError as err:
        raise UsageError(
            f"rollout.backend vllm: vllm is not installed ({err}); install it with "
            "`scripts/setup.sh vllm` (CPU: a second environment .venv-vllm) or `pip install vllm` on a GPU machine"
        ) from None
    _, dtype_, max_len, mem, kv_gib = key
    kwargs = {}
    if kv_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(float(kv_gib) * 2**30)
    llm = LLM(
        model=str(path),
        dtype=dtype_,
        max_model_len=max_len,
        gpu_memory_utilization=mem,
        logits_processors=[coord_mass_processor(coord_ids)],
        logprobs_mode="raw_logprobs",
        generation_config="vllm",
        limit_mm_per_prompt={"image": 1, "video": 0},
        seed=int(seed),
        enforce_eager=True,
        **kwargs,
    )
    _ENGINES[key] = llm
    return llm


def request_seed(seed: int, index: int) -> int:
    """vLLM request seed of record `index` in a call seeded with `seed` (module docstring)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


class WeightSync:
    """Keeps an engine's weights equal to a torch model's (module docstring): `push(model)`."""

    def __init__(self, llm):
        self.llm = llm
        self.state: tuple | None = None  # (id(model), versions) at the last push
        self.last_sync = {"pushed": 0.0, "seconds": 0.0, "bytes": 0.0}
        self.pushes = 0

    @staticmethod
    def fingerprint(model) -> tuple:
        """(model object, per-parameter version counters, per-parameter sums of <= 256 strided
        values as float64 bytes). Version counters see every in-place update of a parameter; the
        sampled sums also see writes through `.data` (which keep the counter), as DeepSpeed's."""
        params = list(model.parameters())
        with torch.no_grad():
            sums = torch.stack([p.detach().reshape(-1)[:: max(1, p.numel() // 256)].double().sum() for p in params])
        return id(model), tuple(p._version for p in params), sums.cpu().numpy().tobytes()

    def push(self, model, force: bool = False) -> dict:
        """Copy `model`'s parameters into the engine if they changed; returns `last_sync`."""
        t0 = time.perf_counter()
        state = self.fingerprint(model)
        if force or state != self.state:
            named = []
            for name, p in model.named_parameters():
                if type(p).__name__ == "DTensor" or getattr(p, "ds_id", None) is not None:
                    raise UsageError("rollout.backend vllm: sharded parameters (FSDP / ZeRO-3) are not supported")
                named.append((name, p.detach()))
            # vLLM's in-place reload (its HF-name mapping, then its own post-load processing), then
            # drop what was computed with the old weights: cached prompt KV and image embeddings
            # (the scheduler's record of them too, or it would skip the vision encoder)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named),
                                                              "is_checkpoint_format": True})
            self.llm.apply_model(repack_cpu_embeddings)
            self.llm.reset_prefix_cache()
            self.llm.llm_engine.reset_encoder_cache()
            self.state = state
            self.pushes += 1
            nbytes = sum(t.numel() * t.element_size() for _, t in named)
            self.last_sync = {"pushed": 1.0, "seconds": time.perf_counter() - t0, "bytes": float(nbytes)}
        else:
            self.last_sync = {"pushed": 0.0, "seconds": time.perf_counter() - t0, "bytes": 0.0}
        return self.last_sync


def repack_cpu_embeddings(model) -> None:
    """On vLLM's CPU backend, embedding-type layers (the input embedding and the output head) also
    keep a packed copy of their weight for the logits matmul. The in-place reload skips a tied output
    head (its weight is the embedding's, updated in place), so its packed copy would keep the old
    weights: repack every such layer from its current weight. A no-op elsewhere."""
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and hasattr(module, "cpu_linear"):
            module.quant_method.process_weights_after_loading(module)


#: engine key -> its WeightSync (one per engine, shared by every VLLMRollout on it)
_SYNCS: dict[tuple, WeightSync] = {}


class VLLMRollout:
    """`RolloutBackend` on a colocated `vllm.LLM` (module docstring).

    `loaded`: `model.load.Loaded` (its `path` is the checkpoint folder vLLM loads, its `model` the
    policy whose weights are pushed before each call); `rollout_cfg` / `prompt_cfg`: the `rollout` /
    `prompt` config sections; `dtype`: the engine's dtype (`model.dtype`); `sync`: push the policy's
    weights before generating (off: the engine keeps the checkpoint's weights)."""

    name = "vllm"
    constrained = False

    def __init__(self, loaded, rollout_cfg: RolloutConfig, prompt_cfg: PromptConfig, *, dtype: str = "float32",
                 seed: int = 0, sync: bool = True, progress: bool = False):
        if loaded.path is None:
            raise UsageError("rollout.backend vllm needs a model loaded from a checkpoint folder")
        self.loaded = loaded
        self.prompt_cfg = prompt_cfg
        self.max_new_tokens = rollout_cfg.max_new_tokens
        self.do_sample = rollout_cfg.do_sample
        self.temperature = rollout_cfg.temperature
        self.top_p = rollout_cfg.top_p
        self.repetition_penalty = rollout_cfg.repetition_penalty
        if self.do_sample and not 0.0 < self.temperature <= 2.0:
            raise UsageError(f"rollout.temperature: {self.temperature} must be in (0, 2] with rollout.backend vllm")
        self.sync_weights = sync
        self.progress = progress
        key = engine_key(loaded.path, dtype, rollout_cfg)
        self.llm = get_engine(loaded.path, dtype, rollout_cfg, loaded.coord_ids, seed)
        self.sync = _SYNCS.setdefault(key, WeightSync(self.llm))

    @property
    def last_sync(self) -> dict:
        return self.sync.last_sync

    def _prompt(self, record) -> dict:

        image = load_image(record)
        proc = self.loaded.processor
        factor = int(proc.patch_size) * int(proc.merge_size)
        if image.width % factor or image.height % factor:
            raise UsageError(
                f"image size {image.width}x{image.height} is not a multiple of {factor}; "
                "resize images offline (the `vlmdet data` converters do)"
            )
        text = render_prompt(system_prompt(self.prompt_cfg), user_prompt(self.prompt_cfg), 1)
        return {"prompt": text, "multi_modal_data": {"image": image}}

    def _params(self, seed: int | None, index: int, mass_key: str | None = None):
        from vllm import SamplingParams

        sampling = {"temperature": self.temperature, "top_p": self.top_p} if self.do_sample else {"temperature": 0.0}
        return SamplingParams(
            **sampling,
            max_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
            stop_token_ids=[self.loaded.eot_id],
            ignore_eos=True,
            logprobs=0,  # the chosen token's log-prob only
            seed=None if seed is None else request_seed(seed, index),
            extra_args=None if mass_key is None else {"vlmdet_mass": mass_key},
            detokenize=False,
            skip_special_tokens=False,
        )

    def _rollout(self, completion, mass_by_step: dict[int, float]) -> Rollout:

        eot = self.loaded.eot_id
        ids = [int(t) for t in completion.token_ids]
        stopped = eot in ids
        n = ids.index(eot) + 1 if stopped else len(ids)
        ids = ids[:n]
        steps = list(completion.logprobs or [])[:n]
        logprobs = [float(step[t].logprob) for step, t in zip(steps, ids)]
        mass = [float(mass_by_step.get(t, float("nan"))) for t in range(n)]
        pieces = token_pieces(self.loaded.tokenizer, ids)
        text = "".join(pieces[: n - 1] if stopped else pieces)
        return Rollout(token_ids=ids, logprobs=logprobs, coord_mass=mass, stopped=stopped,
                       hit_max=(not stopped) and n >= self.max_new_tokens, text=text, pieces=pieces)

    def generate(self, records: Sequence[Any], seed: int | None = None) -> list[Rollout]:
        """One `Rollout` per record, in order (vLLM schedules the batching itself)."""
        records = list(records)
        if self.sync_weights:
            self.sync.push(self.loaded.model)
        if not records:
            return []
        prompts = [self._prompt(r) for r in records]
        keys = [uuid.uuid4().hex for _ in records]
        for k in keys:
            _MASS_SINKS[k] = {}
        try:
            params = [self._params(seed, i, k) for i, k in enumerate(keys)]
            outs = self.llm.generate(prompts, params, use_tqdm=self.progress)
            return [self._rollout(o.outputs[0], _MASS_SINKS[k]) for o, k in zip(outs, keys)]
        finally:
            for k in keys:
                _MASS_SINKS.pop(k, None)
