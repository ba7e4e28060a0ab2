"""The rollout backend a config asks for: `make_backend(loaded, cfg)` -> a `RolloutBackend`
(`evaluate.rollout`): `HFRollout` (transformers `generate`) or `VLLMRollout` (`evaluate.vllm_rollout`,
a colocated vLLM engine; vllm is an optional extra, imported only when an engine is created, with a
one-line error naming the setup command where it is missing)."""

from __future__ import annotations

from vlmdet.errors import UsageError
from vlmdet.evaluate.rollout import HFRollout, RolloutBackend
from vlmdet.evaluate.vllm_rollout import VLLMRollout


def make_backend(loaded, cfg, *, constrained: bool | None = None, **kwargs) -> RolloutBackend:
    """The backend named by `cfg.rollout.backend` for a full `Config`: "hf" (`HFRollout`) or "vllm"
    (`VLLMRollout`, one cached engine per process). The grammar-constrained pass and extra logits
    processors need a per-step hook that only `HFRollout` has: they always run on HF
    (docs/EVALUATION.md)."""
    name = cfg.rollout.backend
    use_constraint = bool(cfg.rollout.constrained if constrained is None else constrained)
    if name == "vllm" and not use_constraint and not kwargs.get("extra_processors"):
        return VLLMRollout(loaded, cfg.rollout, cfg.prompt, dtype=cfg.model.dtype, seed=int(cfg.seed),
                           progress=bool(kwargs.get("progress", False)))
    if name not in ("hf", "vllm"):
        raise UsageError(f"rollout.backend {name!r} is not available (choose 'hf' or 'vllm')")
    return HFRollout(loaded, cfg.rollout, cfg.prompt, constrained=constrained, **kwargs)
