"""The bad-input corpus: every expected failure of the CLI ends with one line
`vlmdet <command>: error: file[:line]: rule` (or `option: rule`), exit 2, no traceback, and writes
nothing. One row per case: the files to create, the command line, the message pattern."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest

from vlmdet.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = str(REPO / "configs/stage1/tiny.yaml")


def _png(w: int = 32, h: int = 32) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((w, h), 64).convert("RGB").save(buf, format="PNG")  # noise: IDAT spans the file
    return buf.getvalue()


def _record(image: str = "a.png", w: int | str = 32, h: int = 32) -> str:
    return '{"image_id": "a", "image": "%s", "width": %s, "height": %d, "objects": []}\n' % (image, w, h)


GOOD = _record()
BOMB = "".join(f"{k}: &{k} [{', '.join(['*' + p] * 10 if p else ['1'] * 10)}]\n"
               for p, k in zip(["", "a", "b", "c", "d", "e"], "abcdef")) + "g: [*f, *f]\n"
TRAIN = [TINY_CFG, "data.train={d}/t.jsonl", "data.val=null", "output_dir={d}/runs", "run_name=r"]

# (id, files {name: text or bytes; "{png}" = a valid 32x32 PNG}, argv (str.format(d=folder)), message regex)
CASES = [
    # untrusted JSONL: encoding, nesting, integer length, shape
    ("jsonl-not-utf8", {"t.jsonl": GOOD.encode() + b'{"image_id": "\xff"}\n'}, ["data", "validate", "{d}/t.jsonl"],
     r"{d}/t.jsonl:2: not UTF-8 text \(byte 15 of the line\)"),
    ("jsonl-deep-nesting", {"t.jsonl": '{"a": ' + "[" * 5000 + "]" * 5000 + "}\n"}, ["data", "validate", "{d}/t.jsonl"],
     r"{d}/t.jsonl:1: nested deeper than 64 levels"),
    ("jsonl-moderate-nesting", {"t.jsonl": '{"a": ' + "[" * 100 + "]" * 100 + "}\n"}, ["data", "validate", "{d}/t.jsonl"],
     r"{d}/t.jsonl:1: nested deeper than 64 levels"),
    ("jsonl-5000-digit-int", {"t.jsonl": _record(w="9" * 5000)}, ["data", "validate", "{d}/t.jsonl"],
     r"{d}/t.jsonl:1: integer with 5000 digits \(limit 32\)"),
    ("jsonl-400-digit-int", {"t.jsonl": _record(w="9" * 400)}, ["data", "validate", "{d}/t.jsonl"],
     r"{d}/t.jsonl:1: integer with 400 digits \(limit 32\)"),
    ("jsonl-is-a-folder", {"t.jsonl/x": "x"}, ["data", "validate", "{d}/t.jsonl"], r"{d}/t.jsonl: cannot read: "),
    ("jsonl-array-line", {"t.jsonl": "[1]\n"}, ["data", "validate", "{d}/t.jsonl"],
     r"{d}/t.jsonl:1: expected a JSON object, got list"),
    # images: a header-only PNG, a PNG cut in the middle of its pixel data (caught by the full decode)
    ("png-header-only", {"t.jsonl": GOOD, "a.png": b"\x89PNG\r\n\x1a\n"}, ["data", "validate", "{d}/t.jsonl"],
     r"{d}/t.jsonl:1: unreadable image"),
    ("png-truncated-pixels", {"t.jsonl": GOOD, "a.png": "{png_half}"}, ["data", "validate", "{d}/t.jsonl"],
     r"{d}/t.jsonl:1: unreadable image .*a.png'"),
    # YAML configs: encoding, syntax (file:line, one line), alias bomb, nesting, huge ints
    ("yaml-not-utf8", {"c.yaml": b"seed: 1\nrun_name: \xfe\n"}, ["train", "{d}/c.yaml"],
     r"{d}/c.yaml:2: not UTF-8 text \(byte offset 18\)"),
    ("yaml-syntax", {"c.yaml": "seed: 1\ntraining: {max_steps: 3\n"}, ["train", "{d}/c.yaml"],
     r"{d}/c.yaml:3: bad YAML: expected ',' or '}', but got '<stream end>' \(while parsing a flow mapping\), column 1"),
    ("yaml-alias-bomb", {"c.yaml": BOMB}, ["train", "{d}/c.yaml"],
     r"{d}/c.yaml: config rejected: more than 100000 values once aliases are expanded"),
    ("yaml-deep-nesting", {"c.yaml": "a: " + "[" * 40 + "]" * 40 + "\n"}, ["train", "{d}/c.yaml"],
     r"{d}/c.yaml: config rejected: nested deeper than 32 levels"),
    ("yaml-huge-int", {"c.yaml": "seed: " + "7" * 400 + "\n"}, ["train", "{d}/c.yaml"],
     r"{d}/c.yaml: config rejected: integer 777777777777\.\.\. does not fit in 63 bits"),
    ("yaml-5000-digit-int", {"c.yaml": "seed: " + "7" * 5000 + "\n"}, ["train", "{d}/c.yaml"],
     r"{d}/c.yaml: config rejected: .*"),
    ("override-bomb-free-but-nan", {}, ["train", TINY_CFG, "training.learning_rate=.nan"],
     r"training.learning_rate: expected a finite number, got nan"),
    # numeric config values: range checks before any work
    *[(f"config-{key}={value}", {}, ["train", TINY_CFG, f"{key}={value}"], rule) for key, value, rule in [
        ("training.per_device_train_batch_size", "0", r"training.per_device_train_batch_size: 0 must be >= 1"),
        ("training.gradient_accumulation_steps", "0", r"training.gradient_accumulation_steps: 0 must be >= 1"),
        ("training.learning_rate", "-1", r"training.learning_rate: -1.0 must be >= 0"),
        ("training.learning_rate", ".inf", r"training.learning_rate: expected a finite number, got inf"),
        ("training.max_grad_norm", ".nan", r"training.max_grad_norm: expected a finite number, got nan"),
        ("training.max_steps", "-5", r"training.max_steps: -5 must be >= 1"),
        ("training.save_steps", "0", r"training.save_steps: 0 must be >= 1"),
        ("eval.max_samples", "-1", r"eval.max_samples: -1 must be >= 0 \(0 = all\) or null"),
        ("seed", "-3", r"seed: -3 must be in \[0, 2\*\*32\)"),
        ("losses.coord_gate", "-0.5", r"losses.coord_gate: -0.5 must be >= 0"),
        ("eval.early_stopping_patience", "-1", r"eval.early_stopping_patience: -1 must be >= 0"),
    ]],
    # TrainingArguments / Trainer checks (the model and data load first; still nothing is written)
    ("targs-unknown-scheduler", {"t.jsonl": GOOD, "a.png": "{png}"}, ["train", *TRAIN, "training.lr_scheduler_type=bogus"],
     r"training: .*bogus"),
    ("targs-unknown-optimizer", {"t.jsonl": GOOD, "a.png": "{png}"}, ["train", *TRAIN, "training.extra={optim: bogus}"],
     r"training: .*bogus is not a valid OptimizerNames.*"),
    ("metric-for-best-not-rollout", {"t.jsonl": GOOD, "a.png": "{png}"},
     ["train", *TRAIN, "training.metric_for_best_model=eval_loss"],
     r"training.metric_for_best_model: 'eval_loss' is not a rollout-eval metric \(the eval computes eval_rollout/\*, "
     r"e.g. eval_rollout/bbox_AP50\)"),
    ("early-stopping-without-best-model", {"t.jsonl": GOOD, "a.png": "{png}"},
     ["train", *TRAIN, "eval.early_stopping_patience=2"],
     r"eval.early_stopping_patience: needs eval.eval_steps > 0, data.val and training.load_best_model_at_end: true "
     r"with training.metric_for_best_model \(e.g. eval_rollout/bbox_AP50\)"),
    ("targs-deepspeed-missing", {"t.jsonl": GOOD, "a.png": "{png}", "ds.json": "{}"},
     ["train", *TRAIN, "training.deepspeed={d}/ds.json"], r"training: .*"),
    ("output-dir-under-a-file", {"t.jsonl": GOOD, "a.png": "{png}", "runs": "a file"}, ["train", *TRAIN],
     r"output_dir: {d}/runs exists and is not a folder"),
    ("resume-from-not-a-checkpoint", {"t.jsonl": GOOD, "a.png": "{png}", "runs/r/config.yaml": "x: 1\n", "ck/x": ""},
     ["train", *TRAIN, "--resume-from", "{d}/ck"],
     r"--resume-from {d}/ck: not a complete checkpoint: no completion record and no readable trainer_state.json"),
    ("resume-and-overwrite", {"t.jsonl": GOOD, "a.png": "{png}", "runs/r/config.yaml": "x: 1\n"},
     ["train", *TRAIN, "--resume", "--overwrite"], r"--overwrite: cannot be combined with --resume / --resume-from"),
    # command-line numbers
    *[(f"f1-iou={v}", {}, ["eval-preds", "--gt", "g", "--pred", "p", "--f1-iou", v],
       rf"argument --f1-iou: must be in \(0, 1\], got '{re.escape(v)}' \(--help for usage\)")
      for v in ("2", "nan", "0", "-1", "inf")],
    ("synth-negative", {}, ["data", "synth", "--out", "{d}/o", "--train", "-1"], r"argument --train: must be >= 0, got '-1'"),
    ("synth-size", {}, ["data", "synth", "--out", "{d}/o", "--size", "50"], r"argument --size: must be a multiple of 32, >= 32"),
    ("steps-superscript", {}, ["eval", "c.yaml", "--step", "²"], r"argument --step: expected an integer, got '²'"),
    ("report-steps-superscript", {}, ["report", "{d}", "--steps", "²"], r"--steps: '²' is not a non-negative integer"),
    # output paths
    ("out-is-a-folder", {"g.jsonl": GOOD, "p.jsonl": '{"image_id": "a", "objects": []}\n', "o/x": ""},
     ["eval-preds", "--gt", "{d}/g.jsonl", "--pred", "{d}/p.jsonl", "--out", "{d}/o"], r"{d}/o: cannot write: it is a folder"),
    ("out-under-a-file", {"g.jsonl": GOOD, "p.jsonl": '{"image_id": "a", "objects": []}\n', "f": ""},
     ["eval-preds", "--gt", "{d}/g.jsonl", "--pred", "{d}/p.jsonl", "--out", "{d}/f/m.json"], r"{d}/f/m.json: cannot write: "),
    ("pred-not-utf8", {"g.jsonl": GOOD, "p.jsonl": b'{"image_id": "\xc3"}\n'},
     ["eval-preds", "--gt", "{d}/g.jsonl", "--pred", "{d}/p.jsonl"], r"{d}/p.jsonl:1: not UTF-8 text"),
    # COCO files
    ("coco-top-level-list", {"i.json": "[]"}, ["data", "coco", "--instances", "{d}/i.json", "--images", "{d}", "--out", "{d}/o"],
     r"{d}/i.json: not a COCO instances file \(the top level is a list, not an object\)"),
    ("coco-dotdot", {"i.json": '{"images": [{"id": 1, "file_name": "../x.png", "width": 4, "height": 4}], '
                               '"annotations": [], "categories": []}'},
     ["data", "coco", "--instances", "{d}/i.json", "--images", "{d}", "--out", "{d}/o"],
     r"{d}/i.json: image 1: file_name: '../x.png' must be a path inside the images folder"),
    ("coco-int-category-name", {"i.json": '{"images": [], "annotations": [], "categories": [{"id": 1, "name": 5}]}'},
     ["data", "coco", "--instances", "{d}/i.json", "--images", "{d}", "--out", "{d}/o"],
     r"{d}/i.json: categories\[0\]: 'name' must be a non-empty string, got 5"),
]


@pytest.mark.parametrize("case, files, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case, files, argv, pattern):
    png = _png()
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "{png}":
            content = png
        elif content == "{png_half}":
            content = png[: len(png) // 2]
        if isinstance(content, str):
            content = content.replace("{d}", str(tmp_path)).encode()
        path.write_bytes(content)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc = main([a.replace("{d}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    prefix = rf"vlmdet {argv[0]}( {argv[1]})?: error: "  # argparse errors name the sub-command too
    assert re.fullmatch(prefix + pattern.replace("{d}", re.escape(str(tmp_path))) + ".*", last), last
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_data_validate_fast_reads_headers_only(tmp_path, capsys):
    """The header of a PNG cut in half is fine: `--fast` passes it, the default full decode does not."""
    png = _png()
    (tmp_path / "a.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "t.jsonl").write_text(GOOD)
    assert main(["data", "validate", str(tmp_path / "t.jsonl"), "--fast"]) == 0
    assert "OK (image headers checked)" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "t.jsonl")]) == 2
    (tmp_path / "a.png").write_bytes(png)
    assert main(["data", "validate", str(tmp_path / "t.jsonl"), "--workers", "2"]) == 0
    assert "OK (images decoded)" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(tmp_path, monkeypatch, how):
    from vlmdet.errors import UsageError

    (tmp_path / "t.jsonl").write_text("[1]\n")
    argv = ["data", "validate", str(tmp_path / "t.jsonl")]
    if how == "flag":
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("VLMDET_DEBUG", "1")
    with pytest.raises(UsageError, match="expected a JSON object"):
        main(argv)


def test_a_real_checkpoint_folder_with_damaged_files(tmp_path, capsys):
    """A checkpoint folder whose files are truncated or garbage: each command that loads it ends with
    one line naming the folder and the part that does not load."""
    from vlmdet.model.load import tiny_checkpoint_path

    good = tiny_checkpoint_path()
    damages = {
        "model.safetensors": lambda p: p.write_bytes(p.read_bytes()[:1000]),
        "config.json": lambda p: p.write_text('{"model_type": '),
        "tokenizer.json": lambda p: p.unlink(),
        "preprocessor_config.json": lambda p: p.write_text("garbage"),
    }
    for name, damage in damages.items():
        ckpt = tmp_path / name.replace(".", "_")
        shutil.copytree(good, ckpt)
        damage(ckpt / name)
        commands = [["doctor", str(ckpt)]]
        if name != "preprocessor_config.json":  # expand-vocab copies that file without reading it
            commands.append(["expand-vocab", str(ckpt), str(tmp_path / "dst")])
        for argv in commands:
            rc = main(argv)
            err = capsys.readouterr().err
            assert rc == 2 and "Traceback" not in err, (name, argv, err)
            assert re.fullmatch(rf"vlmdet {argv[0]}: error: {re.escape(str(ckpt))}: cannot load the \w[\w ]+: .+",
                                err.strip().splitlines()[-1]), (name, err)
            assert not (tmp_path / "dst").exists()


def test_atomic_writes_keep_the_process_umask(tmp_path):
    from vlmdet.io import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    atomic_write_text(tmp_path / "b.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o666 & ~old
