"""Typed YAML configs: one dataclass per section, `extends`, CLI overrides, strict checking.

`load_config(path, overrides)`:
1. reads the YAML file with a safe loader (a mapping at the top; `1e-3` is read as a float);
2. `extends:` (a path or a list of paths, relative to the file that names them) loads the bases first,
   left to right, and merges the file on top: dicts merge key by key (deeply), every other value
   (lists included) replaces. A cycle fails and names the chain;
3. paths: `extends` is relative to the file that names it; every other relative path (`data.train`,
   `data.val`, `model.name_or_path`, `output_dir`, `training.deepspeed`, ...), in a file or an override,
   is relative to the current directory, like a path on the command line (`_resolve_paths`);
4. overrides `key.sub=value` are applied in order; the value is parsed as YAML by the same loader
   (`training.max_steps=50`, `training.learning_rate=1e-3`, `eval.steps=[10,20]`, `data.val=null`);
5. the merged mapping is checked against the dataclasses below: an unknown key fails with its dotted
   path and a "did you mean" suggestion (in `training:` any `transformers.TrainingArguments` field is
   accepted as well and passed through via `training.extra`; TrainingArguments checks its value), a value of the wrong type fails with its dotted path and the
   expected type (ints are accepted for floats), enum-like fields list their allowed values.
Every failure is a `UsageError`, raised before any work starts.

Free-form mappings (no key checking): `training.lr_scheduler_kwargs`, `training.extra` (checked later
against `TrainingArguments` by `training_arguments`), `training.deepspeed`/`fsdp_config` when given
as mappings. `stage2.a1_anchor` (coord term -> weight) is checked by `_check_a1_anchor`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import yaml

from vlmdet.errors import UsageError
from vlmdet.io import decode_utf8


@dataclass
class LoraConfig:
    """`model.lora`: LoRA adapters through peft (model/lora.py); the coordinate-token rows of the input and
    output embeddings stay trainable."""

    r: int = 16
    """LoRA rank"""
    alpha: int = 32
    """LoRA scaling numerator (lora_alpha)"""
    dropout: float = 0.05
    """dropout on the LoRA input"""
    target_modules: Union[list[str], str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """module names (or a peft string such as all-linear) that get adapters"""


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"
    """`tiny` (built locally), a checkpoint folder or a Hugging Face hub id"""
    dtype: str = "float32"
    """parameter dtype: float32 | bfloat16 | float16"""
    attn_implementation: str = "sdpa"
    """transformers attention implementation (sdpa, eager, flash_attention_2)"""
    freeze_vision: bool = False
    """freeze the vision tower (no gradients)"""
    lora: Optional[LoraConfig] = None
    """LoRA adapters through peft: {r, alpha, dropout, target_modules} (null = full fine-tuning)"""


@dataclass
class DataConfig:
    train: Optional[str] = None
    """training records, JSONL (docs/DATA.md); relative to the config file's folder"""
    val: Optional[str] = None
    """rollout-eval records, JSONL; null = no rollout eval"""
    max_train_samples: Optional[int] = None
    """use only the first N training records"""
    max_val_samples: Optional[int] = None
    """use only the first N val records"""
    check_images: bool = True
    """open every image when loading records"""


@dataclass
class PromptConfig:
    field_order: str = "desc_first"
    """record field order: desc_first | geometry_first"""
    ordering: str = "sorted"
    """object order in answers: sorted (top-to-bottom, left-to-right) | random"""
    variant: str = "default"
    """prompt text: default | coco_80 (lists the 80 COCO class names)"""
    system: Optional[str] = None
    """override the system prompt text"""
    user: Optional[str] = None
    """override the user prompt text"""
    answer_format: str = "coordjson"
    """answer format: coordjson | qwen3 | qwen25 (stock-model baselines; eval and parse only)"""


@dataclass
class TrainingConfig:
    max_steps: int = 300
    """optimizer steps"""
    num_train_epochs: float = 1.0
    """epochs (used when max_steps <= 0)"""
    per_device_train_batch_size: int = 8
    """training micro-batch per device"""
    per_device_eval_batch_size: int = 16
    """eval batch per device"""
    gradient_accumulation_steps: int = 1
    """micro-batches per optimizer step"""
    learning_rate: float = 2.0e-3
    """peak learning rate"""
    lr_scheduler_type: str = "cosine_with_min_lr"
    """transformers scheduler name"""
    lr_scheduler_kwargs: dict = field(default_factory=lambda: {"min_lr_rate": 0.1})
    """scheduler keyword arguments (free-form)"""
    warmup_steps: Union[int, float] = 100
    """linear warmup steps (a float in [0, 1): a ratio of the total steps)"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    adam_beta1: float = 0.9
    """AdamW beta1"""
    adam_beta2: float = 0.98
    """AdamW beta2"""
    max_grad_norm: float = 1.0
    """gradient clipping norm"""
    logging_steps: int = 10
    """log every N optimizer steps"""
    save_steps: int = 500
    """checkpoint every N optimizer steps"""
    save_total_limit: Optional[int] = 2
    """keep at most N checkpoints (null = all)"""
    bf16: bool = False
    """bfloat16 mixed precision"""
    gradient_checkpointing: bool = False
    """activation checkpointing"""
    gradient_checkpointing_kwargs: Optional[dict] = None
    """checkpointing keyword arguments (null with checkpointing on: {use_reentrant: false})"""
    dataloader_num_workers: int = 0
    """data loader worker processes"""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """logging integrations (tensorboard)"""
    deepspeed: Union[str, dict, None] = None
    """DeepSpeed config: a JSON path or a mapping"""
    fsdp: str = ""
    """FSDP options string (TrainingArguments.fsdp)"""
    fsdp_config: Union[str, dict, None] = None
    """FSDP config: a path or a mapping"""
    ddp_backend: Optional[str] = None
    """torch.distributed backend (nccl, gloo)"""
    extra: dict = field(default_factory=dict)
    """any other TrainingArguments field (names checked)"""


@dataclass
class LossesConfig:
    """Loss weights (one per term of the loss table, `train/objective.LOSSES`; each term is logged
    unweighted as `loss/<name>` whatever its weight, and adds `weight * term` to the total when its
    weight is > 0, or != 0 for `entropy`), token-CE row weights and the terms' hyper-parameters.
    The terms are defined in docs/LOSSES.md."""

    #: the coord terms (computed at coord slots; the names `stage2.a1_anchor` accepts)
    COORD_TERMS: ClassVar[tuple[str, ...]] = ("coord_ce", "soft_ce", "w1", "smoothl1", "ciou", "coord_gate", "entropy")

    token_ce: float = 1.0
    """weight of the full-vocabulary token CE on assistant tokens"""
    desc_ce_weight: float = 1.0
    """token-CE row weight of desc (class name) tokens; structure tokens weigh 1"""
    ce_on_coord_slots: bool = True
    """whether coord slots are token-CE rows (weight 1) or left to the coord terms (weight 0); when not given: true in Stage 1, false in Stage 2"""
    coord_ce: float = 0.0
    """weight of the hard 1000-way CE over the coord vocabulary"""
    soft_ce: float = 0.0
    """weight of the CE against a Gaussian (`sigma`) around the target bin"""
    w1: float = 0.0
    """weight of the 1-D Wasserstein distance to the Gaussian target (`sigma`)"""
    smoothl1: float = 0.0
    """weight of the smooth-L1 (`smoothl1_beta`) between expected and GT normalized boxes"""
    ciou: float = 0.0
    """weight of 1 - CIoU between expected and GT normalized boxes"""
    coord_gate: float = 0.0
    """weight of -log(coord-vocabulary mass) at coord slots"""
    text_gate: float = 0.0
    """weight of -log(1 - coord-vocabulary mass) at text (structure, desc) rows"""
    entropy: float = 0.0
    """weight of the coord-distribution entropy (positive sharpens, negative flattens)"""
    sigma: float = 2.0
    """Gaussian target width in bins (soft_ce, w1)"""
    temperature: float = 1.0
    """softmax temperature of gates, expected boxes, entropy and coord_diag (one temperature: see stage2.softctx_temperature)"""
    smoothl1_beta: float = 1.0
    """smooth-L1 transition point (normalized box units)"""


@dataclass
class Stage2Config:
    """Stage-2 AB: soft self-context (Channel-A) and the A/B channel schedule."""

    n_softctx_iter: int = 2
    """Channel-A forwards per step N (>= 1; 1 = plain teacher forcing)"""
    softctx_temperature: float = 1.0
    """temperature of the context distribution fed back at coord slots (takes losses.temperature when only that is given)"""
    softctx_grad_mode: str = "unroll"
    """unroll (gradient through every iteration) or em_detach (context detached)"""
    ctx_embed_mode: str = "soft"
    """context embedding: soft (expected embedding), st (straight-through), hard (argmax embedding)"""
    b_ratio: float = 0.0
    """fraction of optimizer steps that run Channel-B, in [0, 1]"""
    a1_anchor: dict[str, float] = field(default_factory=dict)
    """coord term -> weight of the same term on the first iteration's (A1) logits"""
    reuse_prefix: bool = True
    """Channel-A iterations after the first run only the rows from the earliest coord slot on, against the prefix keys/values kept from the first (same losses and gradients); false: recompute the whole sequence"""


@dataclass
class RolloutConfig:
    backend: str = "hf"
    """generation backend: hf or vllm (docs/EVALUATION.md)"""
    max_new_tokens: int = 256
    """generation length limit"""
    batch_size: int = 16
    """rollouts per generate call"""
    do_sample: bool = False
    """sample instead of greedy decoding"""
    temperature: float = 1.0
    """sampling temperature"""
    top_p: float = 1.0
    """nucleus sampling threshold"""
    repetition_penalty: float = 1.0
    """transformers repetition penalty (1.0 = off)"""
    constrained: bool = False
    """grammar-constrained decoding of CoordJSON"""
    vllm_gpu_memory_utilization: float = 0.3
    """backend vllm: the engine's share of GPU memory (weights + KV cache)"""
    vllm_kv_cache_gib: Optional[float] = None
    """backend vllm: explicit KV-cache size in GiB (set it on CPU; null: from the memory share)"""
    vllm_max_model_len: int = 4096
    """backend vllm: prompt + answer tokens per sequence"""


@dataclass
class MatchConfig:
    iou_gate: float = 0.3
    """minimum IoU of a Hungarian match"""
    fp_cost: float = 1.0
    """cost of leaving a prediction unmatched"""
    fn_cost: float = 1.0
    """cost of leaving a GT object unmatched"""


@dataclass
class EvalConfig:
    eval_steps: int = 100
    """rollout eval every N optimizer steps (0 = off)"""
    steps: list[int] = field(default_factory=list)
    """extra optimizer steps with a rollout eval"""
    max_samples: Optional[int] = 100
    """val records per eval (null = all)"""
    score_source: str = "coord_logprob"
    """box scores for AP: coord_logprob | constant"""
    f1_iou: float = 0.5
    """IoU threshold of P/R/F1"""
    also_constrained: bool = False
    """also run a grammar-constrained pass"""
    early_stopping_patience: int = 0
    """stop after N rollout evals without a better training.metric_for_best_model (0 = off)"""


@dataclass
class MonitorConfig:
    enabled: bool = True
    """write monitor dumps at each eval"""
    n_samples: int = 10
    """samples per dump"""
    max_text_chars: int = 0
    """truncate texts in dumps (0 = untruncated)"""
    draw_images: bool = True
    """draw boxes on dumped images"""


@dataclass
class Config:
    run_name: str = "run"
    """run folder name under output_dir"""
    output_dir: str = "runs"
    """parent folder of runs"""
    seed: int = 0
    """random seed (data order, rollout seeds)"""
    stage: int = 1
    """1 = Stage-1 teacher forcing, 2 = Stage-2 AB"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """the model to train or evaluate"""
    data: DataConfig = field(default_factory=DataConfig)
    """record files"""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """prompt and answer format"""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """mapped onto transformers.TrainingArguments"""
    losses: LossesConfig = field(default_factory=LossesConfig)
    """loss weights and hyper-parameters"""
    stage2: Stage2Config = field(default_factory=Stage2Config)
    """Stage-2 AB settings"""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """generation for evaluation and Channel-B"""
    match: MatchConfig = field(default_factory=MatchConfig)
    """prediction-GT matching"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """rollout evaluation"""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """monitor dumps"""


#: dotted path -> allowed values, checked after typing.
CHOICES: dict[str, tuple] = {
    "stage": (1, 2),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "prompt.field_order": ("desc_first", "geometry_first"),
    "prompt.ordering": ("sorted", "random"),
    "prompt.variant": ("default", "coco_80"),
    "prompt.answer_format": ("coordjson", "qwen3", "qwen25"),
    "stage2.softctx_grad_mode": ("unroll", "em_detach"),
    "stage2.ctx_embed_mode": ("soft", "st", "hard"),
    "eval.score_source": ("coord_logprob", "constant"),
    "rollout.backend": ("hf", "vllm"),
}

#: dotted path -> (check, rule text) for numeric ranges.
RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "stage2.b_ratio": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "model.lora.r": (lambda v: v >= 1, ">= 1"),
    "model.lora.dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "stage2.n_softctx_iter": (lambda v: v >= 1, ">= 1"),
    "stage2.softctx_temperature": (lambda v: v > 0, "> 0"),
    "losses.sigma": (lambda v: v > 0, "> 0"),
    "losses.temperature": (lambda v: v > 0, "> 0"),
    "losses.smoothl1_beta": (lambda v: v > 0, "> 0"),
    "match.iou_gate": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "eval.f1_iou": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "eval.eval_steps": (lambda v: v >= 0, ">= 0"),
    "eval.early_stopping_patience": (lambda v: v >= 0, ">= 0"),
    "rollout.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "rollout.batch_size": (lambda v: v >= 1, ">= 1"),
    "rollout.vllm_gpu_memory_utilization": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "rollout.vllm_kv_cache_gib": (lambda v: v is None or v > 0, "> 0"),
    "rollout.vllm_max_model_len": (lambda v: v >= 1, ">= 1"),
    "rollout.temperature": (lambda v: v > 0, "> 0"),
    "rollout.top_p": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "rollout.repetition_penalty": (lambda v: v > 0, "> 0"),
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    "data.max_train_samples": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "data.max_val_samples": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "eval.max_samples": (lambda v: v is None or v >= 0, ">= 0 (0 = all) or null"),
    "eval.steps": (lambda v: all(s >= 1 for s in v), "a list of steps >= 1"),
    "monitor.n_samples": (lambda v: v >= 0, ">= 0"),
    "monitor.max_text_chars": (lambda v: v >= 0, ">= 0"),
    "match.fp_cost": (lambda v: v >= 0, ">= 0"),
    "match.fn_cost": (lambda v: v >= 0, ">= 0"),
    "training.max_steps": (lambda v: v >= 1, ">= 1"),
    "training.num_train_epochs": (lambda v: v > 0, "> 0"),
    "training.per_device_train_batch_size": (lambda v: v >= 1, ">= 1"),
    "training.per_device_eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "training.gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "training.learning_rate": (lambda v: v >= 0, ">= 0"),
    "training.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "training.weight_decay": (lambda v: v >= 0, ">= 0"),
    "training.adam_beta1": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "training.adam_beta2": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "training.max_grad_norm": (lambda v: v >= 0, ">= 0 (0 = no clipping)"),
    "training.logging_steps": (lambda v: v >= 1, ">= 1"),
    "training.save_steps": (lambda v: v >= 1, ">= 1"),
    "training.save_total_limit": (lambda v: v is None or v >= 1, ">= 1 or null (keep all)"),
    "training.dataloader_num_workers": (lambda v: v >= 0, ">= 0"),
    **{f"losses.{name}": (lambda v: v >= 0, ">= 0") for name in (
        "token_ce", "desc_ce_weight", "coord_ce", "soft_ce", "w1", "smoothl1", "ciou", "coord_gate", "text_gate",
        "entropy")},
}

_DATA_PATH_KEYS = ("train", "val")


# ----------------------------------------------------------------------------------------------
# YAML + extends + overrides -> one plain mapping


#: limits on a YAML config or override value (untrusted text): values after alias expansion,
#: nesting depth, and integer size
YAML_MAX_VALUES = 100_000
YAML_MAX_DEPTH = 32
YAML_MAX_INT_BITS = 63


def _check_yaml_size(data: Any) -> None:
    """Count the values of `data` as `yaml.safe_dump` would write them (an alias counts every time it
    is used) and stop at the first limit broken: more than `YAML_MAX_VALUES` values (a few aliases
    can expand to millions: a "YAML bomb"), deeper than `YAML_MAX_DEPTH`, an int over 63 bits."""
    count = 0
    stack = [(data, 1)]
    while stack:
        v, depth = stack.pop()
        count += 1
        if count > YAML_MAX_VALUES:
            raise ValueError(f"more than {YAML_MAX_VALUES} values once aliases are expanded")
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > YAML_MAX_INT_BITS:
            raise ValueError(f"integer {str(v)[:12]}... does not fit in {YAML_MAX_INT_BITS} bits")
        if isinstance(v, (dict, list)):
            if depth > YAML_MAX_DEPTH:
                raise ValueError(f"nested deeper than {YAML_MAX_DEPTH} levels")
            items = [*v.keys(), *v.values()] if isinstance(v, dict) else v
            stack.extend((c, depth + 1) for c in items)


def _yaml_error_text(err: Exception) -> tuple[int | None, str]:
    """(line number or None, one-line text) of a PyYAML error (no source excerpt, no stream name)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    text = problem + (f" ({context})" if context else "")
    if mark is None:
        return None, text
    return mark.line + 1, f"{text}, column {mark.column + 1}"


def _safe_load(text: str) -> Any:
    """`yaml.safe_load`, except that `1e-3` (exponent without a dot) reads as a float, not a string
    (PyYAML follows YAML 1.1 there, which surprises everyone writing learning rates), and the value
    is checked against the limits of `_check_yaml_size` (raises `ValueError`; YAML syntax errors
    raise `yaml.YAMLError`)."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
    )
    try:
        data = yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise ValueError(f"nested deeper than {YAML_MAX_DEPTH} levels") from None
    _check_yaml_size(data)
    return data


def _read_yaml(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: cannot read config: {err.strerror}") from None
    text = decode_utf8(raw, path)
    try:
        data = _safe_load(text)
    except yaml.YAMLError as err:
        line, text = _yaml_error_text(err)
        raise UsageError(f"{path}{'' if line is None else f':{line}'}: bad YAML: {text}") from None
    except ValueError as err:  # a limit of _safe_load, or an int PyYAML cannot convert
        raise UsageError(f"{path}: config rejected: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict, top: dict) -> dict:
    """New dict: `top` over `base`; dicts merge recursively, anything else (lists too) replaces."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_paths(data: dict) -> None:
    """The one path rule: a relative path in a config file or an override is relative to the current
    directory (where vlmdet runs), like a path on the command line. `data.train` / `data.val` are made
    absolute, and so is `model.name_or_path` when it names an existing local folder (otherwise it stays
    a name: `tiny` or a hub model id), so that the run's config.yaml works from any directory."""
    section = data.get("data")
    if isinstance(section, dict):
        for key in _DATA_PATH_KEYS:
            v = section.get(key)
            if isinstance(v, str) and v and not os.path.isabs(v):
                section[key] = str(Path(v).expanduser().resolve())
    model = data.get("model")
    if isinstance(model, dict):
        v = model.get("name_or_path")
        if isinstance(v, str) and v and not os.path.isabs(v) and Path(v).expanduser().is_dir():
            model["name_or_path"] = str(Path(v).expanduser().resolve())


def _load_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(path):], path))
        raise UsageError(f"config extends cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop("extends", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise UsageError(f"{path}: 'extends' must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for b in bases:
        merged = deep_merge(merged, _load_tree(path.parent / b, (*chain, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"a.b.c=value"` -> (["a", "b", "c"], yaml.safe_load(value))."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise UsageError(f"bad override {text!r}: expected key.sub=value")
    try:
        return parts, _safe_load(value)
    except yaml.YAMLError as err:
        raise UsageError(f"bad override {text!r}: value is not valid YAML: {_yaml_error_text(err)[1]}") from None
    except ValueError as err:
        raise UsageError(f"bad override {text!r}: {err}") from None


def apply_override(data: dict, parts: list[str], value: Any) -> None:
    node = data
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise UsageError(f"override {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


# ----------------------------------------------------------------------------------------------
# mapping -> typed dataclasses


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against type `tp` (int, float, bool, str, list[X], dict[str, X], dict, Optional,
    Union, a section dataclass) and return it (ints become floats where a float is expected)."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        sections = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if sections and isinstance(value, dict):  # an optional section: its own messages ("did you mean")
            return _build(sections[0], value, where)
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, where)
            except UsageError:
                continue
        raise _type_error(value, tp, where)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(value, tp, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, tp, where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(value, tp, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN and inf are never a valid setting
                raise UsageError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        raise _type_error(value, tp, where)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(value, tp, where)
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise _type_error(value, tp, where)
        (item,) = typing.get_args(tp) or (Any,)
        return [v if item is Any else _convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, tp, where)
        _, item = typing.get_args(tp) or (str, Any)
        return {k: v if item is Any else _convert(v, item, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"config.py cannot check type {tp!r} at {where}")  # a bug in this module, not user input


def _type_error(value: Any, tp: Any, where: str) -> UsageError:
    return UsageError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _unknown_key(key: str, allowed: list[str], prefix: str) -> UsageError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    return UsageError(f"unknown config key {prefix + key!r}{hint}; allowed here: {', '.join(allowed)}")


def training_argument_names() -> list[str]:
    """Sorted names of the `transformers.TrainingArguments` fields a user may set (imports transformers)."""
    from transformers import TrainingArguments

    return sorted(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def _pass_through(data: dict, names: list[str]) -> dict:
    """`training` section: keys that are not typed fields but are TrainingArguments fields move into
    `extra` (values are checked by TrainingArguments itself); any other key fails with a "did you mean"
    among both sets of names. transformers is imported only when such a key is present."""
    unknown = [k for k in data if k not in names]
    if not unknown:
        return data
    valid = training_argument_names()
    data = dict(data)
    extra = data.get("extra")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise _type_error(extra, dict, "training.extra")
    extra = dict(extra)
    for key in unknown:
        if str(key) not in valid:
            close = difflib.get_close_matches(str(key), sorted(set(names) | set(valid)), n=1)
            hint = f" (did you mean 'training.{close[0]}'?)" if close else ""
            raise UsageError(f"unknown config key 'training.{key}'{hint}; allowed here: the typed fields "
                             f"{', '.join(n for n in names if n != 'extra')}, or any transformers.TrainingArguments field")
        if key in extra:
            raise UsageError(f"training.{key} is also set as training.extra.{key}; keep one")
        extra[key] = data.pop(key)
    data["extra"] = extra
    return data


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{where or 'config'}: expected a mapping (section {cls.__name__}), got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    if cls is TrainingConfig:
        data = _pass_through(data, names)
    for key in data:
        if key not in hints:
            raise _unknown_key(str(key), names, prefix)
    values = {}
    for name in names:
        if name not in data:
            continue
        dotted = prefix + name
        v = _convert(data[name], hints[name], dotted)
        if dotted in CHOICES and v not in CHOICES[dotted]:
            allowed = ", ".join(repr(c) for c in CHOICES[dotted])
            raise UsageError(f"{dotted}: {v!r} is not one of {allowed}")
        if dotted in RANGES and not RANGES[dotted][0](v):
            raise UsageError(f"{dotted}: {v!r} must be {RANGES[dotted][1]}")
        values[name] = v
    return cls(**values)


def _check_a1_anchor(a1_anchor: dict[str, float]) -> None:
    """`stage2.a1_anchor`: coord term names (`LossesConfig.COORD_TERMS`), weights >= 0 (`entropy`: any)."""
    for name, w in a1_anchor.items():
        if name not in LossesConfig.COORD_TERMS:
            raise _unknown_key(str(name), list(LossesConfig.COORD_TERMS), "stage2.a1_anchor.")
        if w < 0 and name != "entropy":
            raise UsageError(f"stage2.a1_anchor.{name}: {w!r} must be >= 0")


def config_from_dict(data: dict) -> Config:
    """Typed `Config` from a plain mapping (no `extends`, no path resolution); raises `UsageError`.
    Every value is checked here, once (types, `CHOICES`, `RANGES`, `stage2.a1_anchor`); defaults that
    depend on other keys are then filled in (`stage_defaults`)."""
    cfg = _build(Config, data, "")
    _check_a1_anchor(cfg.stage2.a1_anchor)
    return stage_defaults(cfg, data)


def _given(data: dict, section: str, key: str) -> bool:
    sec = data.get(section)
    return isinstance(sec, dict) and key in sec


def stage_defaults(cfg: Config, data: dict) -> Config:
    """Fill in the defaults that depend on other keys; `data` is the mapping `cfg` was built from (it
    says which keys were given). In place; returns `cfg`.

    - `losses.ce_on_coord_slots` not given: true in Stage 1, false in Stage 2 (Stage-2 coordinate slots
      are trained by the coordinate terms only; an explicit true is allowed and `config_notes` names it).
    - One temperature: `losses.temperature` (coordinate terms, gate, diagnostics) and
      `stage2.softctx_temperature` (the soft context) take the value of whichever is given; when both
      are given and differ each keeps its own and `config_notes` warns; neither given: 1.0.
    """
    if not _given(data, "losses", "ce_on_coord_slots"):
        cfg.losses.ce_on_coord_slots = cfg.stage == 1
    coord_t, ctx_t = _given(data, "losses", "temperature"), _given(data, "stage2", "softctx_temperature")
    if coord_t and not ctx_t:
        cfg.stage2.softctx_temperature = cfg.losses.temperature
    elif ctx_t and not coord_t:
        cfg.losses.temperature = cfg.stage2.softctx_temperature
    return cfg


def config_notes(cfg: Config) -> list[str]:
    """Warnings about a resolved Stage-2 config that are allowed but unusual (printed when training starts)."""
    if cfg.stage != 2:
        return []
    notes = []
    if cfg.losses.ce_on_coord_slots:
        notes.append("losses.ce_on_coord_slots is true in Stage 2: full-vocabulary token CE also at coordinate "
                     "slots (the Stage-2 default is false)")
    if cfg.losses.temperature != cfg.stage2.softctx_temperature:
        notes.append(f"two temperatures: losses.temperature {cfg.losses.temperature} for the coordinate terms, "
                     f"stage2.softctx_temperature {cfg.stage2.softctx_temperature} for the soft context "
                     "(set one of them to use one temperature for both)")
    return notes


#: measured by benchmarks/bench_precision.py (docs/BENCHMARKS.md): share of the decoder's weight elements
#: that one AdamW step at lr 1e-5 changes, fp32 master weights vs bf16 weights.
UPDATE_FRACTION_FP32, UPDATE_FRACTION_BF16 = 1.00, 0.16


def check_training_precision(cfg: Config) -> None:
    """Refuse half-precision model weights (`model.dtype` bfloat16 / float16) trained by a plain
    optimizer: AdamW then updates the bf16 weights themselves, and an update smaller than half a bf16
    step (|w| * 2^-9) is rounded away, so most weights never move. Mixed precision that trains is
    `model.dtype: float32` + `training.bf16: true` (fp32 master weights, bf16 autocast); half-precision
    weights are allowed under `training.deepspeed` / `training.fsdp`, which keep fp32 master copies.
    Raises `UsageError` (one line) before any work starts."""
    t = cfg.training
    if cfg.model.dtype == "float32" or t.deepspeed or t.fsdp or t.extra.get("fsdp"):
        return
    raise UsageError(
        f"model.dtype: {cfg.model.dtype} weights trained by a plain optimizer barely move (one AdamW step at lr "
        f"1e-5 changes {UPDATE_FRACTION_BF16:.0%} of the weights, {UPDATE_FRACTION_FP32:.0%} with fp32 master "
        "weights); use model.dtype: float32 with training.bf16: true (bf16 autocast), or set training.deepspeed / "
        "training.fsdp (they keep fp32 master weights)"
    )


#: the checkpointing kwargs vlmdet passes when checkpointing is on and `training.gradient_checkpointing_kwargs`
#: is not set: reentrant checkpointing under DDP with Channel-A N >= 2 stops at the first backward
#: ("Expected to mark a variable ready only once") and gives no gradient to kept prefix keys/values.
NON_REENTRANT = {"use_reentrant": False}


def check_checkpointing(cfg: Config, world_size: int) -> None:
    """Refuse reentrant gradient checkpointing in a multi-process run whose Stage-2 runs Channel-A with
    N >= 2 (every forward of the soft-context loop runs the same checkpointed layers inside one backward,
    which reentrant checkpointing reports to DDP as a second "ready" of the same parameters).
    Raises `UsageError` (one line) before any work starts."""
    t = cfg.training
    reentrant = bool((t.gradient_checkpointing_kwargs or NON_REENTRANT).get("use_reentrant", True))
    channel_a_n = cfg.stage == 2 and cfg.stage2.n_softctx_iter >= 2 and cfg.stage2.b_ratio < 1.0
    if t.gradient_checkpointing and reentrant and channel_a_n and world_size > 1:
        raise UsageError(
            "training.gradient_checkpointing_kwargs.use_reentrant: reentrant checkpointing cannot train Channel-A "
            f"with stage2.n_softctx_iter={cfg.stage2.n_softctx_iter} on {world_size} processes; "
            "set use_reentrant: false"
        )


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config with `extends` and `key.sub=value` overrides into a checked `Config`."""
    data = _load_tree(Path(path), ())
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] == "extends":
            raise UsageError(f"override {text!r}: 'extends' cannot be overridden")
        apply_override(data, parts, value)
    _resolve_paths(data)
    cfg = config_from_dict(data)
    cfg.explicit_keys = frozenset(_dotted_keys(data))  # read by model/contract.py (explicit vs default)
    return cfg


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    """Dotted paths of every key of a nested mapping, sections included (`prompt`, `prompt.system`)."""
    out = []
    for k, v in data.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _dotted_keys(v, f"{prefix}{k}.")
    return out


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a config dataclass (the string literal under each field), read
    from this module's source: `{field: text}`."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs = {}
    for stmt, nxt in zip(node.body, node.body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def reference_table() -> str:
    """Markdown table of every config key (dotted), its type, default and docstring: the "Every key"
    section of docs/CONFIG.md (a test checks that the page is current)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    defaults = config_to_dict(Config())
    hints = typing.get_type_hints(Config)
    top = field_docs(Config)
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(hints[f.name]):
            section = hints[f.name]
            docs, sub_hints = field_docs(section), typing.get_type_hints(section)
            for g in dataclasses.fields(section):
                value = defaults[f.name][g.name]
                rows.append(f"| `{f.name}.{g.name}` | {_type_name(sub_hints[g.name])} | `{json.dumps(value)}` | {docs.get(g.name, '').replace('|', chr(92) + '|')} |")
        else:
            rows.append(f"| `{f.name}` | {_type_name(hints[f.name])} | `{json.dumps(defaults[f.name])}` | {top.get(f.name, '').replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


def config_to_dict(cfg: Config) -> dict:
    """The fully resolved config as a plain mapping (every field, defaults included)."""
    return dataclasses.asdict(cfg)


def dump_config_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML text (loads back to an equal `Config`)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=False)


def training_arguments(cfg: Config, output_dir: str | os.PathLike):
    """`transformers.TrainingArguments` from `cfg.training` (+ `seed`, `run_name`, `output_dir`).

    Every typed field of the training section maps to the TrainingArguments field of the same name;
    `training.extra` adds any other TrainingArguments field (names are checked, with a "did you
    mean"; an `extra` key that duplicates a typed field or one set here is an error).
    `remove_unused_columns` defaults to False (vlmdet batches carry extra columns); set it in `extra`
    to change it. `eval_strategy` / `eval_steps` follow `eval.eval_steps` (the rollout eval is the Trainer's
    evaluation) when `data.val` is set, unless `extra` sets them. `gradient_checkpointing(_kwargs)` is passed as `activation_checkpointing(_kwargs)` where
    transformers has that newer name; with checkpointing on and no kwargs the kwargs are `NON_REENTRANT`
    (whatever the installed transformers' default is). TensorBoard: transformers 5 has no `logging_dir` argument; the tensorboard
    callback reads the `TENSORBOARD_LOGGING_DIR` environment variable (default `<output_dir>/runs/...`).
    """
    import torch  # heavy: only here, so that loading a config (every command) stays torch-free
    from transformers import TrainingArguments

    t = dataclasses.asdict(cfg.training)
    extra = t.pop("extra")
    valid = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    fixed = {"output_dir": str(output_dir), "run_name": cfg.run_name, "seed": cfg.seed}
    if t["gradient_checkpointing"] and t["gradient_checkpointing_kwargs"] is None:
        t["gradient_checkpointing_kwargs"] = dict(NON_REENTRANT)
    renamed = {}
    if "activation_checkpointing" in valid:  # transformers >= 5.x renamed gradient_checkpointing(_kwargs)
        renamed = {"activation_checkpointing": "gradient_checkpointing",
                   "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs"}
        for new, old in renamed.items():
            t[new] = t.pop(old)
    for key in extra:
        if key in t or key in fixed or key in renamed.values():
            typed = renamed.get(key, key)
            where = f"training.{typed}" if key in t or key in renamed.values() else key
            raise UsageError(f"training.extra.{key}: set it as {where!r} instead")
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            where = "training." if close and close[0] in t else "training.extra."
            hint = f" (did you mean '{where}{close[0]}'?)" if close else ""
            raise UsageError(f"training.extra.{key}: not a TrainingArguments field{hint}")
    kwargs = {**t, "remove_unused_columns": False, **extra, **fixed}

    if "eval_strategy" not in extra and "eval_steps" not in extra:
        # the rollout eval is the Trainer's evaluation (train/trainer.DetTrainer.evaluate): its period is
        # the Trainer's, so load_best_model_at_end / save_strategy checks see the real schedule
        periodic = int(cfg.eval.eval_steps) > 0 and bool(cfg.data.val)
        kwargs["eval_strategy"] = "steps" if periodic else "no"
        if periodic:
            kwargs["eval_steps"] = int(cfg.eval.eval_steps)
    if "dataloader_pin_memory" not in extra:
        kwargs["dataloader_pin_memory"] = torch.cuda.is_available()  # pinning needs an accelerator
    if kwargs.get("ddp_backend") == "gloo" and "use_cpu" not in extra:
        # gloo without CUDA: accelerate only wraps the model in DDP when told the run is on CPU;
        # otherwise each rank silently trains its own copy.
        kwargs["use_cpu"] = not torch.cuda.is_available()
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as err:  # a value TrainingArguments refuses: one line, no traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"training: TrainingArguments refused the settings: {first}") from None
