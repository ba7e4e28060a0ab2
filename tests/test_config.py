"""config.py: every shipped config loads; extends, overrides, strict keys and types, paths."""

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from vlmdet.config import (
    CHOICES,
    Config,
    config_from_dict,
    config_to_dict,
    deep_merge,
    dump_config_yaml,
    load_config,
    training_arguments,
)
from vlmdet.errors import UsageError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))


def _yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_there_are_shipped_configs():
    assert CONFIGS / "base.yaml" in SHIPPED
    assert CONFIGS / "smoke" / "tiny_stage1.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    dumped = _yaml(tmp_path / "resolved.yaml", dump_config_yaml(cfg))
    assert load_config(dumped) == cfg


def test_defaults_match_the_documented_schema():
    c = Config()
    # spot checks against ARCHITECTURE.md "Config schema"
    assert (c.run_name, c.output_dir, c.seed, c.stage) == ("run", "runs", 0, 1)
    assert c.model.name_or_path == "tiny" and c.model.dtype == "float32"
    assert c.training.learning_rate == 2.0e-3 and c.training.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert c.training.report_to == ["tensorboard"] and c.training.fsdp == "" and c.training.extra == {}
    assert c.losses.ce_on_coord_slots is True and c.losses.sigma == 2.0 and c.losses.coord_gate == 0.0
    assert c.stage2.softctx_grad_mode == "unroll" and c.stage2.a1_anchor == {} and c.stage2.reuse_prefix is True
    assert c.eval.score_source == "coord_logprob" and c.eval.steps == [] and c.eval.max_samples == 100
    assert c.match.iou_gate == 0.3 and c.monitor.max_text_chars == 0
    # mutable defaults are not shared between instances
    Config().training.report_to.append("x")
    assert Config().training.report_to == ["tensorboard"]
    # an empty file is all defaults
    assert config_from_dict({}) == Config()


def test_smoke_config_values():
    cfg = load_config(CONFIGS / "smoke" / "tiny_stage1.yaml")
    assert cfg.stage == 1 and cfg.training.max_steps == 4 and cfg.training.report_to == []
    assert cfg.data.train is None  # filled by tests through overrides
    assert cfg.output_dir == "runs"  # from base.yaml through extends


def test_extends_deep_merges_dicts_and_replaces_lists(tmp_path):
    _yaml(tmp_path / "a.yaml", "seed: 1\ntraining: {max_steps: 10, report_to: [tensorboard, wandb], "
          "lr_scheduler_kwargs: {min_lr_rate: 0.2, x: 1}}\neval: {steps: [1, 2, 3]}\n")
    _yaml(tmp_path / "b.yaml", "seed: 2\nrun_name: from_b\n")
    leaf = _yaml(tmp_path / "sub/leaf.yaml", "extends: [../a.yaml, ../b.yaml]\ntraining: {learning_rate: 0.5, "
                 "report_to: [], lr_scheduler_kwargs: {x: 2}}\neval: {steps: [7]}\n")
    cfg = load_config(leaf)
    assert cfg.seed == 2  # later base wins over earlier base
    assert cfg.run_name == "from_b"
    assert cfg.training.max_steps == 10  # kept from a (dict deep merge)
    assert cfg.training.learning_rate == 0.5
    assert cfg.training.report_to == []  # list replaced, not merged
    assert cfg.training.lr_scheduler_kwargs == {"min_lr_rate": 0.2, "x": 2}
    assert cfg.eval.steps == [7]


def test_extends_single_string_and_chain(tmp_path):
    _yaml(tmp_path / "base.yaml", "seed: 5\nmodel: {dtype: bfloat16}\n")
    _yaml(tmp_path / "mid.yaml", "extends: base.yaml\nseed: 6\n")
    leaf = _yaml(tmp_path / "leaf.yaml", "extends: mid.yaml\n")
    cfg = load_config(leaf)
    assert cfg.seed == 6 and cfg.model.dtype == "bfloat16"


def test_extends_cycle_names_the_chain(tmp_path):
    _yaml(tmp_path / "a.yaml", "extends: b.yaml\n")
    _yaml(tmp_path / "b.yaml", "extends: c.yaml\n")
    _yaml(tmp_path / "c.yaml", "extends: a.yaml\n")
    with pytest.raises(UsageError, match=r"extends cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")


def test_diamond_extends_is_not_a_cycle(tmp_path):
    _yaml(tmp_path / "base.yaml", "seed: 1\n")
    _yaml(tmp_path / "x.yaml", "extends: base.yaml\nrun_name: x\n")
    _yaml(tmp_path / "y.yaml", "extends: base.yaml\noutput_dir: y\n")
    cfg = load_config(_yaml(tmp_path / "leaf.yaml", "extends: [x.yaml, y.yaml]\n"))
    assert (cfg.seed, cfg.run_name, cfg.output_dir) == (1, "x", "y")


@pytest.mark.parametrize(
    "text, match",
    [
        ("extends: missing.yaml\n", "cannot read config"),
        ("extends: 3\n", "'extends' must be a path or a list of paths"),
        ("- a\n- b\n", "must be a mapping at the top level"),
        ("seed: [unclosed\n", "bad YAML"),
        ("trainig: {max_steps: 3}\n", r"unknown config key 'trainig' \(did you mean 'training'\?\)"),
        ("training: {max_step: 3}\n", r"unknown config key 'training.max_step' \(did you mean 'training.max_steps'\?\)"),
        ("model: {name_or_path: tiny, zzz: 1}\n", r"unknown config key 'model.zzz'; allowed here: name_or_path"),
        ("training: 3\n", "training: expected a mapping"),
        ("training: {max_steps: 1.5}\n", r"training.max_steps: expected int, got float 1.5"),
        ("training: {max_steps: '10'}\n", r"training.max_steps: expected int, got str"),
        ("training: {bf16: 1}\n", r"training.bf16: expected bool, got int 1"),
        ("seed: true\n", r"seed: expected int, got bool True"),
        ("training: {learning_rate: abc}\n", "training.learning_rate: expected float"),
        ("training: {report_to: tensorboard}\n", r"training.report_to: expected list\[str\]"),
        ("eval: {steps: [1, x]}\n", r"eval.steps\[1\]: expected int, got str"),
        ("stage2: {a1_anchor: {ciou: x}}\n", r"stage2.a1_anchor.ciou: expected float"),
        ("stage2: {a1_anchor: {smoothl2: 1}}\n", r"unknown config key 'stage2.a1_anchor.smoothl2' \(did you mean 'stage2.a1_anchor.smoothl1'\?\)"),
        ("stage2: {a1_anchor: {token_ce: 1}}\n", r"unknown config key 'stage2.a1_anchor.token_ce'"),
        ("stage2: {a1_anchor: {ciou: -1}}\n", r"stage2.a1_anchor.ciou: -1.0 must be >= 0"),
        ("data: {train: 5}\n", "data.train: expected str or null"),
        ("stage: 3\n", r"stage: 3 is not one of 1, 2"),
        ("prompt: {field_order: desc_frist}\n", r"prompt.field_order: 'desc_frist' is not one of 'desc_first', 'geometry_first'"),
        ("prompt: {ordering: sortd}\n", "is not one of 'sorted', 'random'"),
        ("prompt: {variant: coco80}\n", "is not one of 'default', 'coco_80'"),
        ("model: {dtype: fp16}\n", "is not one of 'float32', 'bfloat16', 'float16'"),
        ("stage2: {softctx_grad_mode: detach}\n", "is not one of 'unroll', 'em_detach'"),
        ("stage2: {ctx_embed_mode: x}\n", "is not one of 'soft', 'st', 'hard'"),
        ("eval: {score_source: x}\n", "is not one of 'coord_logprob', 'constant'"),
        ("rollout: {backend: sglang}\n", "is not one of 'hf', 'vllm'"),
        ("rollout: {vllm_gpu_memory_utilization: 1.5}\n", r"rollout.vllm_gpu_memory_utilization: 1.5 must be in \(0, 1\]"),
        ("stage2: {b_ratio: 1.5}\n", r"stage2.b_ratio: 1.5 must be in \[0, 1\]"),
        ("stage2: {b_ratio: -0.1}\n", r"stage2.b_ratio: -0.1 must be in \[0, 1\]"),
        ("losses: {sigma: 0}\n", r"losses.sigma: 0.0 must be > 0"),
    ],
)
def test_bad_config_files_fail_with_dotted_path(tmp_path, text, match):
    with pytest.raises(UsageError, match=match):
        load_config(_yaml(tmp_path / "c.yaml", text))


def test_every_enum_field_is_checked():
    # each CHOICES path exists in the schema and its default is allowed
    d = config_to_dict(Config())
    for dotted, allowed in CHOICES.items():
        node = d
        for part in dotted.split("."):
            node = node[part]
        assert node in allowed, dotted


def test_ints_are_accepted_for_floats_and_exponents_without_dot(tmp_path):
    cfg = load_config(_yaml(tmp_path / "c.yaml", "training: {learning_rate: 1e-3, num_train_epochs: 3}\n"))
    assert cfg.training.learning_rate == 0.001 and isinstance(cfg.training.learning_rate, float)
    assert cfg.training.num_train_epochs == 3.0 and isinstance(cfg.training.num_train_epochs, float)


def test_overrides(tmp_path):
    path = _yaml(tmp_path / "c.yaml", "training: {max_steps: 10}\n")
    cfg = load_config(path, [
        "training.max_steps=50",
        "training.learning_rate=3e-4",
        "eval.steps=[10, 20]",
        "training.extra.eval_strategy=no",  # YAML 1.1: a bare `no` is the bool False
        "training.lr_scheduler_kwargs.min_lr_rate=0.5",
        "prompt.system=You find shapes.",
        "eval.max_samples=null",
        "run_name=abc",
        "seed=3",
        "seed=4",  # later overrides win
    ])
    assert cfg.training.max_steps == 50 and cfg.training.learning_rate == 3e-4
    assert cfg.eval.steps == [10, 20] and cfg.eval.max_samples is None
    assert cfg.training.extra == {"eval_strategy": False}
    assert cfg.training.lr_scheduler_kwargs == {"min_lr_rate": 0.5}
    assert cfg.prompt.system == "You find shapes."
    assert (cfg.run_name, cfg.seed) == ("abc", 4)


@pytest.mark.parametrize(
    "override, match",
    [
        ("trainng.max_steps=1", r"unknown config key 'trainng' \(did you mean 'training'\?\)"),
        ("training.max_stpes=1", r"did you mean 'training.max_steps'\?"),
        ("training.max_steps", "expected key.sub=value"),
        ("training..x=1", "expected key.sub=value"),
        ("training.max_steps=[1", "not valid YAML"),
        ("seed.x=1", r"seed is not a mapping"),
        ("extends=x.yaml", "'extends' cannot be overridden"),
        ("stage=2.5", "stage: expected int"),
    ],
)
def test_bad_overrides(tmp_path, override, match):
    with pytest.raises(UsageError, match=match):
        load_config(_yaml(tmp_path / "c.yaml", "seed: 1\n"), [override])


def test_paths_are_relative_to_the_current_directory(tmp_path, monkeypatch):
    _yaml(tmp_path / "configs/base.yaml", "data: {train: data/train.jsonl, val: /abs/val.jsonl}\n"
                                          "model: {name_or_path: ckpt/final}\n")
    leaf = _yaml(tmp_path / "configs/stage1/leaf.yaml", "extends: ../base.yaml\noutput_dir: out\n")
    (tmp_path / "work" / "ckpt" / "final").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    cfg = load_config(leaf)
    assert cfg.data.train == str(tmp_path / "work/data/train.jsonl")  # not next to the YAML file
    assert cfg.data.val == "/abs/val.jsonl" and cfg.output_dir == "out"
    assert cfg.model.name_or_path == str(tmp_path / "work/ckpt/final")  # an existing folder: made absolute
    cfg = load_config(leaf, ["data.val=here/val.jsonl", "data.train=null", "model.name_or_path=Qwen/Qwen3-VL-2B-Instruct"])
    assert cfg.data.val == str(tmp_path / "work/here/val.jsonl") and cfg.data.train is None
    assert cfg.model.name_or_path == "Qwen/Qwen3-VL-2B-Instruct"  # no such folder: a hub id stays a name


def test_deep_merge_does_not_mutate_inputs():
    a = {"x": {"y": 1, "z": [1]}, "w": 1}
    b = {"x": {"y": 2}, "v": 3}
    out = deep_merge(a, b)
    assert out == {"x": {"y": 2, "z": [1]}, "w": 1, "v": 3}
    assert a == {"x": {"y": 1, "z": [1]}, "w": 1} and b == {"x": {"y": 2}, "v": 3}


def test_dump_is_fully_resolved_yaml(tmp_path):
    cfg = load_config(_yaml(tmp_path / "c.yaml", "seed: 9\n"))
    loaded = yaml.safe_load(dump_config_yaml(cfg))
    assert "extends" not in loaded
    assert loaded["seed"] == 9
    assert set(loaded) == {f.name for f in dataclasses.fields(Config)}
    assert set(loaded["training"]) == {f.name for f in dataclasses.fields(type(cfg.training))}
    assert config_from_dict(loaded) == cfg


@pytest.mark.slow  # the first transformers import takes seconds on a loaded 2-core machine
def test_training_arguments_mapping(tmp_path):
    cfg = load_config(_yaml(tmp_path / "c.yaml", "run_name: r1\nseed: 7\ntraining: {max_steps: 12, "
                      "learning_rate: 1e-3, report_to: [], gradient_checkpointing: true, "
                      "extra: {eval_strategy: 'no', dataloader_drop_last: true}}\n"))
    args = training_arguments(cfg, tmp_path / "out")
    assert args.output_dir == str(tmp_path / "out")
    assert (args.run_name, args.seed, args.max_steps, args.learning_rate) == ("r1", 7, 12, 1e-3)
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert args.adam_beta2 == 0.98 and args.warmup_steps == 100 and args.save_total_limit == 2
    assert args.dataloader_drop_last is True
    assert args.remove_unused_columns is False
    assert args.gradient_checkpointing is True
    # checkpointing without kwargs: vlmdet pins the non-reentrant kind (whatever transformers' default is)
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine_with_min_lr"


@pytest.mark.parametrize(
    "extra, match",
    [
        ("{eval_stratgy: 'no'}", r"training.extra.eval_stratgy: not a TrainingArguments field \(did you mean 'training.extra.eval_strategy'\?\)"),
        ("{lerning_rate: 1.0}", r"did you mean 'training.learning_rate'\?"),
        ("{max_steps: 3}", r"training.extra.max_steps: set it as 'training.max_steps' instead"),
        ("{seed: 3}", r"training.extra.seed: set it as 'seed' instead"),
        ("{gradient_checkpointing_kwargs: {}}", r"training.extra.gradient_checkpointing_kwargs: set it as "
                                                r"'training.gradient_checkpointing_kwargs' instead"),
        ("{activation_checkpointing_kwargs: {}}", r"training.extra.activation_checkpointing_kwargs: set it as "
                                                  r"'training.gradient_checkpointing_kwargs' instead"),
    ],
)
def test_training_arguments_extra_is_checked(tmp_path, extra, match):
    cfg = load_config(_yaml(tmp_path / "c.yaml", f"training: {{extra: {extra}}}\n"))
    with pytest.raises(UsageError, match=match):
        training_arguments(cfg, tmp_path / "out")


def test_module_imports_no_transformers():
    import subprocess
    import sys

    code = "import sys, vlmdet.config; sys.exit(int('transformers' in sys.modules or 'torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ}).returncode == 0


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.json")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_deepspeed_json_parses_with_a_zero_stage(path):
    import json

    cfg = json.loads(path.read_text())
    assert cfg["zero_optimization"]["stage"] in (1, 2, 3)
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"  # the Trainer fills batch sizes from the YAML


def test_config_md_lists_exactly_the_config_fields():
    """docs/CONFIG.md's "Every key" table is `reference_table()` (regenerate it from config.py), and it
    has one row per dataclass field, each with a docstring."""
    import dataclasses
    from pathlib import Path

    from vlmdet.config import Config, reference_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md").read_text()
    start = page.index("<!-- generated by vlmdet.config.reference_table()")
    block = page[page.index("\n", start) + 1: page.index("<!-- end of generated table -->")]
    assert block == reference_table(), "docs/CONFIG.md is stale: paste vlmdet.config.reference_table() into it"
    keys = [line.split("|")[1].strip().strip("`") for line in block.splitlines()[2:]]
    want = [
        f"{f.name}.{g.name}" if dataclasses.is_dataclass(f.default_factory) else f.name
        for f in dataclasses.fields(Config)
        for g in (dataclasses.fields(f.default_factory) if dataclasses.is_dataclass(f.default_factory) else [None])
    ]
    assert keys == want
    assert all(not line.endswith("|  |") for line in block.splitlines()), "a config field has no docstring"


# (name, mapping, ce_on_coord_slots, losses.temperature, stage2.softctx_temperature, warnings expected)
STAGE_DEFAULTS = [
    ("stage 1 default", {}, True, 1.0, 1.0, []),
    ("stage 2 default", {"stage": 2}, False, 1.0, 1.0, []),
    ("stage 2 explicit true", {"stage": 2, "losses": {"ce_on_coord_slots": True}}, True, 1.0, 1.0, ["ce_on_coord_slots"]),
    ("stage 1 explicit false", {"losses": {"ce_on_coord_slots": False}}, False, 1.0, 1.0, []),
    ("coord temperature given", {"stage": 2, "losses": {"temperature": 0.5}}, False, 0.5, 0.5, []),
    ("soft-context temperature given", {"stage": 2, "stage2": {"softctx_temperature": 2.0}}, False, 2.0, 2.0, []),
    ("both given, equal", {"stage": 2, "losses": {"temperature": 0.7}, "stage2": {"softctx_temperature": 0.7}},
     False, 0.7, 0.7, []),
    ("both given, differ", {"stage": 2, "losses": {"temperature": 0.5}, "stage2": {"softctx_temperature": 2.0}},
     False, 0.5, 2.0, ["two temperatures"]),
]


@pytest.mark.parametrize("name,data,ce,coord_t,ctx_t,notes", STAGE_DEFAULTS, ids=[r[0] for r in STAGE_DEFAULTS])
def test_stage_defaults_and_notes(name, data, ce, coord_t, ctx_t, notes):
    from vlmdet.config import config_notes

    cfg = config_from_dict(data)
    assert cfg.losses.ce_on_coord_slots is ce
    assert (cfg.losses.temperature, cfg.stage2.softctx_temperature) == (coord_t, ctx_t)
    got = config_notes(cfg)
    assert len(got) == len(notes) and all(n in g for n, g in zip(notes, got))
    # the resolved config dumps and loads back to itself
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_train_prints_the_notes(tmp_path, capsys):
    from vlmdet.cli import main
    from vlmdet.data.synth import make_synth

    make_synth(tmp_path / "d", n_train=2, n_val=1, seed=0, size=32)
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke" / "tiny_stage1.yaml"
    assert main(["train", str(smoke), f"data.train={tmp_path / 'd' / 'train.jsonl'}", "data.val=null",
                 f"output_dir={tmp_path / 'runs'}", "stage=2", "losses.ce_on_coord_slots=true", "losses.temperature=0.5",
                 "stage2.softctx_temperature=2.0", "training.max_steps=1", "training.per_device_train_batch_size=1",
                 "eval.eval_steps=0", "training.save_steps=100"]) == 0
    err = capsys.readouterr().err
    assert "warning: losses.ce_on_coord_slots is true in Stage 2" in err
    assert "warning: two temperatures: losses.temperature 0.5" in err

# ---------------------------------------------------------------- TrainingArguments pass-through

def test_any_training_arguments_field_passes_through(tmp_path):
    from vlmdet.config import training_arguments

    path = _yaml(tmp_path / "c.yaml", "training:\n  optim: adafactor\n  label_smoothing_factor: 0.1\n  tf32: false\n")
    cfg = load_config(path, ["training.eval_strategy=steps", "training.fp16=false"])
    assert cfg.training.extra == {"optim": "adafactor", "label_smoothing_factor": 0.1, "tf32": False, "eval_strategy": "steps",
                                  "fp16": False}
    args = training_arguments(cfg, tmp_path / "out")
    assert (args.optim, args.label_smoothing_factor, args.eval_strategy) == ("adafactor", 0.1, "steps")
    # the resolved config dumps and loads back to the same settings
    again = tmp_path / "again.yaml"
    again.write_text(dump_config_yaml(cfg))
    assert load_config(again).training.extra == cfg.training.extra


@pytest.mark.parametrize("override,message", [
    ("training.optimm=adamw_torch", "unknown config key 'training.optimm' (did you mean 'training.optim'?)"),
    ("training.label_smothing_factor=0.1", "(did you mean 'training.label_smoothing_factor'?)"),
    ("training.learning_rat=0.1", "(did you mean 'training.learning_rate'?)"),
])
def test_unknown_training_key_suggests_among_training_arguments(tmp_path, override, message):
    with pytest.raises(UsageError) as err:
        load_config(_yaml(tmp_path / "c.yaml", "run_name: x\n"), [override])
    assert message in str(err.value) and "any transformers.TrainingArguments field" in str(err.value)


def test_pass_through_conflicts_and_bad_values_are_one_line(tmp_path):
    from vlmdet.config import training_arguments

    with pytest.raises(UsageError, match="training.optim is also set as training.extra.optim; keep one"):
        load_config(_yaml(tmp_path / "c.yaml", "training:\n  optim: adafactor\n  extra: {optim: sgd}\n"))
    cfg = load_config(_yaml(tmp_path / "c.yaml", "training:\n  optim: not_an_optimizer\n"))
    with pytest.raises(UsageError, match="^training: TrainingArguments refused the settings: ") as err:
        training_arguments(cfg, tmp_path / "out")
    assert "\n" not in str(err.value) and "not_an_optimizer" in str(err.value)


@pytest.mark.slow  # imports transformers
def test_explicit_checkpointing_kwargs_pass_through(tmp_path):
    cfg = load_config(_yaml(tmp_path / "c.yaml", "training: {report_to: [], gradient_checkpointing: true, "
                                                 "gradient_checkpointing_kwargs: {use_reentrant: true}}\n"))
    assert training_arguments(cfg, tmp_path / "out").gradient_checkpointing_kwargs == {"use_reentrant": True}


@pytest.mark.parametrize(
    "settings, world, refused",
    [
        ("stage: 2, training: {gradient_checkpointing: true, gradient_checkpointing_kwargs: {use_reentrant: true}}", 2, True),
        ("stage: 2, training: {gradient_checkpointing: true, gradient_checkpointing_kwargs: {preserve_rng_state: true}}", 2, True),  # torch's default is reentrant
        ("stage: 2, training: {gradient_checkpointing: true, gradient_checkpointing_kwargs: {use_reentrant: true}}", 1, False),
        ("stage: 2, training: {gradient_checkpointing: true}", 2, False),  # vlmdet's default: non-reentrant
        ("stage: 2, training: {gradient_checkpointing: true, gradient_checkpointing_kwargs: {use_reentrant: false}}", 2, False),
        ("stage: 2, training: {gradient_checkpointing: false, gradient_checkpointing_kwargs: {use_reentrant: true}}", 2, False),
        ("stage: 1, training: {gradient_checkpointing: true, gradient_checkpointing_kwargs: {use_reentrant: true}}", 2, False),
        ("stage: 2, stage2: {n_softctx_iter: 1}, training: {gradient_checkpointing: true, gradient_checkpointing_kwargs: {use_reentrant: true}}", 2, False),
        ("stage: 2, stage2: {b_ratio: 1.0}, training: {gradient_checkpointing: true, gradient_checkpointing_kwargs: {use_reentrant: true}}", 2, False),
    ],
)
def test_reentrant_checkpointing_refused_only_with_ddp_channel_a_n2(tmp_path, settings, world, refused):
    from vlmdet.config import check_checkpointing

    cfg = load_config(_yaml(tmp_path / "c.yaml", "{" + settings + "}\n"))
    if refused:
        with pytest.raises(UsageError, match=r"^training.gradient_checkpointing_kwargs.use_reentrant: .* on 2 processes; "
                                             r"set use_reentrant: false$"):
            check_checkpointing(cfg, world)
    else:
        check_checkpointing(cfg, world)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_with_checkpointing_pin_non_reentrant(path):
    cfg = load_config(path)
    if cfg.training.gradient_checkpointing:
        assert cfg.training.gradient_checkpointing_kwargs == {"use_reentrant": False}
