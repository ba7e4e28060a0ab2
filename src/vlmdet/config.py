"""Typed YAML configs: one dataclass per section, `extends`, CLI overrides, strict checking.

`load_config(path, overrides)`:
1. reads the YAML file with a safe loader (a mapping at the top; `1e-3` is read as a float);
2. `extends:` (a path or a list of paths, relative to the file that names them) loads the bases first,
   left to right, and merges the file on top: dicts merge key by key (deeply), every other value
   (lists included) replaces. A cycle fails and names the chain;
3. `data.train` / `data.val`, when relative, are resolved against the folder of the file that wrote
   them (paths given as overrides: against the current directory);
4. overrides `key.sub=value` are applied in order; the value is parsed as YAML by the same loader
   (`training.max_steps=50`, `training.learning_rate=1e-3`, `eval.steps=[10,20]`, `data.val=null`);
5. the merged mapping is checked against the dataclasses below: an unknown key fails with its dotted
   path and a "did you mean" suggestion, a value of the wrong type fails with its dotted path and the
   expected type (ints are accepted for floats), enum-like fields list their allowed values.
Every failure is a `UsageError`, raised before any work starts.

Free-form mappings (no key checking): `training.lr_scheduler_kwargs`, `training.extra` (checked later
against `TrainingArguments` by `training_arguments`), `training.deepspeed`/`fsdp_config` when given
as mappings, and `stage2.a1_anchor` (loss name -> weight).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from vlmdet.errors import UsageError


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    freeze_vision: bool = False


@dataclass
class DataConfig:
    train: Optional[str] = None
    val: Optional[str] = None
    max_train_samples: Optional[int] = None
    max_val_samples: Optional[int] = None
    check_images: bool = True


@dataclass
class PromptConfig:
    field_order: str = "desc_first"
    ordering: str = "sorted"
    variant: str = "default"
    system: Optional[str] = None
    user: Optional[str] = None


@dataclass
class TrainingConfig:
    max_steps: int = 300
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2.0e-3
    lr_scheduler_type: str = "cosine_with_min_lr"
    lr_scheduler_kwargs: dict = field(default_factory=lambda: {"min_lr_rate": 0.1})
    warmup_steps: int = 100
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: Optional[int] = 2
    bf16: bool = False
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = 0
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    deepspeed: Union[str, dict, None] = None
    fsdp: str = ""
    fsdp_config: Union[str, dict, None] = None
    ddp_backend: Optional[str] = None
    extra: dict = field(default_factory=dict)


@dataclass
class LossesConfig:
    token_ce: float = 1.0
    desc_ce_weight: float = 1.0
    ce_on_coord_slots: bool = True
    coord_ce: float = 0.0
    soft_ce: float = 0.0
    w1: float = 0.0
    smoothl1: float = 0.0
    ciou: float = 0.0
    coord_gate: float = 0.0
    text_gate: float = 0.0
    entropy: float = 0.0
    sigma: float = 2.0
    temperature: float = 1.0
    smoothl1_beta: float = 1.0


@dataclass
class Stage2Config:
    n_softctx_iter: int = 2
    softctx_temperature: float = 1.0
    softctx_grad_mode: str = "unroll"
    ctx_embed_mode: str = "soft"
    b_ratio: float = 0.0
    a1_anchor: dict[str, float] = field(default_factory=dict)


@dataclass
class RolloutConfig:
    backend: str = "hf"
    max_new_tokens: int = 256
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    constrained: bool = False


@dataclass
class MatchConfig:
    iou_gate: float = 0.3
    fp_cost: float = 1.0
    fn_cost: float = 1.0


@dataclass
class EvalConfig:
    eval_steps: int = 100
    steps: list[int] = field(default_factory=list)
    max_samples: Optional[int] = 100
    score_source: str = "coord_logprob"
    f1_iou: float = 0.5
    also_constrained: bool = False


@dataclass
class MonitorConfig:
    enabled: bool = True
    n_samples: int = 10
    max_text_chars: int = 0
    draw_images: bool = True


@dataclass
class Config:
    run_name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    stage: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


#: dotted path -> allowed values, checked after typing.
CHOICES: dict[str, tuple] = {
    "stage": (1, 2),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "prompt.field_order": ("desc_first", "geometry_first"),
    "prompt.ordering": ("sorted", "random"),
    "prompt.variant": ("default", "coco_80"),
    "stage2.softctx_grad_mode": ("unroll", "em_detach"),
    "stage2.ctx_embed_mode": ("soft", "st", "hard"),
    "eval.score_source": ("coord_logprob", "constant"),
    "rollout.backend": ("hf",),
}

#: dotted path -> (check, rule text) for numeric ranges.
RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "stage2.b_ratio": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "stage2.n_softctx_iter": (lambda v: v >= 1, ">= 1"),
    "stage2.softctx_temperature": (lambda v: v > 0, "> 0"),
    "losses.sigma": (lambda v: v > 0, "> 0"),
    "losses.temperature": (lambda v: v > 0, "> 0"),
    "losses.smoothl1_beta": (lambda v: v > 0, "> 0"),
    "match.iou_gate": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "eval.f1_iou": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "eval.eval_steps": (lambda v: v >= 0, ">= 0"),
    "rollout.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "rollout.batch_size": (lambda v: v >= 1, ">= 1"),
}

_DATA_PATH_KEYS = ("train", "val")


# ----------------------------------------------------------------------------------------------
# YAML + extends + overrides -> one plain mapping


def _safe_load(text: str) -> Any:
    """`yaml.safe_load`, except that `1e-3` (exponent without a dot) reads as a float, not a string
    (PyYAML follows YAML 1.1 there, which surprises everyone writing learning rates)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
    )
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"{path}: cannot read config: {err.strerror}") from None
    try:
        data = _safe_load(text)
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: bad YAML: {err}") from None
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


def _resolve_data_paths(data: dict, folder: Path) -> None:
    section = data.get("data")
    if isinstance(section, dict):
        for key in _DATA_PATH_KEYS:
            v = section.get(key)
            if isinstance(v, str) and v and not os.path.isabs(v):
                section[key] = str((folder / v).resolve())


def _load_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(path):], path))
        raise UsageError(f"config extends cycle: {cycle}")
    data = _read_yaml(path)
    _resolve_data_paths(data, path.parent)
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
    import yaml

    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise UsageError(f"bad override {text!r}: expected key.sub=value")
    try:
        return parts, _safe_load(value)
    except yaml.YAMLError as err:
        raise UsageError(f"bad override {text!r}: value is not valid YAML: {err}") from None


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


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{where or 'config'}: expected a mapping (section {cls.__name__}), got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
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


def config_from_dict(data: dict) -> Config:
    """Typed `Config` from a plain mapping (no `extends`, no path resolution); raises `UsageError`.
    Defaults that depend on other keys are then filled in (`stage_defaults`)."""
    return stage_defaults(_build(Config, data, ""), data)


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


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config with `extends` and `key.sub=value` overrides into a checked `Config`."""
    data = _load_tree(Path(path), ())
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] == "extends":
            raise UsageError(f"override {text!r}: 'extends' cannot be overridden")
        if parts[0] == "data" and len(parts) == 2 and parts[1] in _DATA_PATH_KEYS and isinstance(value, str) and value:
            value = str(Path(value).resolve())
        apply_override(data, parts, value)
    return config_from_dict(data)


def config_to_dict(cfg: Config) -> dict:
    """The fully resolved config as a plain mapping (every field, defaults included)."""
    return dataclasses.asdict(cfg)


def dump_config_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML text (loads back to an equal `Config`)."""
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=False)


def training_arguments(cfg: Config, output_dir: str | os.PathLike):
    """`transformers.TrainingArguments` from `cfg.training` (+ `seed`, `run_name`, `output_dir`).

    Every typed field of the training section maps to the TrainingArguments field of the same name;
    `training.extra` adds any other TrainingArguments field (names are checked, with a "did you
    mean"; an `extra` key that duplicates a typed field or one set here is an error).
    `remove_unused_columns` defaults to False (vlmdet batches carry extra columns); set it in `extra`
    to change it. `gradient_checkpointing` is passed as `activation_checkpointing` where transformers
    has that newer name. TensorBoard: transformers 5 has no `logging_dir` argument; the tensorboard
    callback reads the `TENSORBOARD_LOGGING_DIR` environment variable (default `<output_dir>/runs/...`).
    """
    from transformers import TrainingArguments

    t = dataclasses.asdict(cfg.training)
    extra = t.pop("extra")
    valid = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    fixed = {"output_dir": str(output_dir), "run_name": cfg.run_name, "seed": cfg.seed}
    if "activation_checkpointing" in valid:  # transformers >= 5.x renamed gradient_checkpointing
        t["activation_checkpointing"] = t.pop("gradient_checkpointing")
    for key in extra:
        if key in t or key in fixed:
            typed = "gradient_checkpointing" if key == "activation_checkpointing" else key
            raise UsageError(f"training.extra.{key}: set it as {'training.' + typed if key in t else key!r} instead")
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            where = "training." if close and close[0] in t else "training.extra."
            hint = f" (did you mean '{where}{close[0]}'?)" if close else ""
            raise UsageError(f"training.extra.{key}: not a TrainingArguments field{hint}")
    kwargs = {**t, "remove_unused_columns": False, **extra, **fixed}
    import torch

    if "dataloader_pin_memory" not in extra:
        kwargs["dataloader_pin_memory"] = torch.cuda.is_available()  # pinning needs an accelerator
    if kwargs.get("ddp_backend") == "gloo" and "use_cpu" not in extra:
        # gloo without CUDA: accelerate only wraps the model in DDP when told the run is on CPU;
        # otherwise each rank silently trains its own copy.
        kwargs["use_cpu"] = not torch.cuda.is_available()
    return TrainingArguments(**kwargs)
