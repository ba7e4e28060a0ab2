"""vlmdet.report: run directories in the documented artifact format -> tables, report.md, report.html."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from vlmdet.cli import main
from vlmdet.errors import UsageError
from vlmdet.report import tables
from vlmdet.report.cli import build_report
from vlmdet.report.runs import load_run, load_runs, parse_steps

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, evals: dict[int, dict], logs: list[dict], dumps: dict[int, list] | None = None,
             config: dict | None = None) -> Path:
    """A run directory written exactly in the docs/ARCHITECTURE.md artifact formats."""
    import yaml

    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config or {"run_name": name, "stage": 2}))
    (run / "run.json").write_text(json.dumps({"argv": ["vlmdet", "train", f"{name}.yaml"], "seed": 0}))
    (run / "logging.jsonl").write_text("".join(json.dumps(e) + "\n" for e in logs))
    for step, metrics in evals.items():
        d = run / "eval" / f"step_{step:06d}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"step": step, "metrics": {f"eval_rollout/{k}": v for k, v in metrics.items()}}))
    for step, samples in (dumps or {}).items():
        (run / "monitor_dumps").mkdir(exist_ok=True)
        (run / "monitor_dumps" / f"step_{step:06d}.json").write_text(json.dumps({"step": step, "samples": samples}))
    return run


def sample(tmp: Path, image_id: str, raw: str, drops=(), objects=(), flags=None) -> dict:
    img = tmp / f"{image_id}.png"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(img)
    return {"image_id": image_id, "image": str(img), "width": 32, "height": 32, "raw_text": raw,
            "flags": flags or {"failed": False, "truncated": False}, "objects": list(objects),
            "drops": list(drops), "gt": [{"desc": "red circle", "bbox_2d": [2.0, 3.0, 20.0, 21.0]}], "matches": []}


@pytest.fixture()
def two_runs(tmp_path):
    bad_raw = '{"objects": [{"desc": "red circle", "bbox_2d": [85, <|coord_3|>]}]}'
    span = [13, bad_raw.index("]}") + 2]
    dumps = {600: [sample(tmp_path, "img_bad", bad_raw, drops=[{"reason": "non_coord_token", "index": 0, "span": span,
                                                                 "text": bad_raw[span[0]:span[1]]}]),
                   sample(tmp_path, "img_ok", '{"objects": []}')]}
    a = make_run(tmp_path, "gate_on",
                 {300: {"bbox_AP50": 0.5, "f1": 0.6, "parse_dropped_invalid": 2, "drop/non_coord_token": 2},
                  600: {"bbox_AP50": 0.55, "f1": 0.65, "parse_dropped_invalid": 1, "drop/non_coord_token": 1}},
                 [{"step": 10, "time": 1.0, "loss/token_ce": 3.0, "coord_diag/coord_vocab_mass_mean": 0.4},
                  {"step": 300, "time": 2.0, "loss/token_ce": 1.0, "coord_diag/coord_vocab_mass_mean": 0.9},
                  {"step": 600, "time": 3.0, "loss/token_ce": 0.5, "coord_diag/coord_vocab_mass_mean": 0.95}],
                 dumps=dumps)
    b = make_run(tmp_path, "gate_off",
                 {300: {"bbox_AP50": 0.25, "f1": 0.7, "parse_dropped_invalid": 7, "drop/non_coord_token": 5,
                        "drop/wrong_arity": 2}},
                 [{"step": 300, "time": 2.0, "loss/token_ce": 1.5, "coord_diag/coord_vocab_mass_mean": 0.5}])
    return a, b


def test_load_run_reads_every_artifact(two_runs):
    run = load_run(two_runs[0])
    assert run.name == "gate_on"
    assert run.eval_steps == [300, 600]
    assert run.metric(600, "bbox_AP50") == 0.55
    assert run.metric(600, "eval_rollout/f1") == 0.65
    assert run.metric(900, "f1") is None
    assert run.series("loss/token_ce") == [(10, 3.0), (300, 1.0), (600, 0.5)]
    assert run.series("eval_rollout/parse_dropped_invalid") == [(300, 2.0), (600, 1.0)]
    assert run.value_near("coord_diag/coord_vocab_mass_mean", 299) == 0.4
    assert run.value_near("coord_diag/coord_vocab_mass_mean", 5) is None
    assert sorted(run.dumps) == [600]
    assert run.run_info["argv"][1] == "train"
    assert run.warnings == []


def test_load_run_tolerates_broken_artifacts(tmp_path):
    run = tmp_path / "r"
    (run / "eval" / "step_000100").mkdir(parents=True)
    (run / "eval" / "step_000100" / "metrics.json").write_text("{not json")
    (run / "logging.jsonl").write_text(
        '{"step": 5, "loss/token_ce": 2.0}\n'
        '{"step": 200, "eval_rollout/f1": 0.4}\n'
        '{"step": 100, "eval_rollout/f1": 0.9}\n'
        '{"step": "x"}\n'
        '{"step": 7, "loss/tok')  # a killed run's half-written last line
    r = load_run(run)
    assert r.series("loss/token_ce") == [(5, 2.0)]
    # eval events of the log fill steps whose metrics.json is missing or unreadable
    assert r.eval_steps == [100, 200]
    assert (r.metric(100, "f1"), r.metric(200, "f1")) == (0.9, 0.4)
    joined = "\n".join(r.warnings)
    assert "metrics.json: unreadable" in joined
    assert "logging.jsonl:4:" in joined and "logging.jsonl:5: bad JSON" in joined


def test_load_run_missing_folder_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a run directory"):
        load_run(tmp_path / "nope")


def test_duplicate_run_names_become_unique(tmp_path):
    a = make_run(tmp_path / "x", "same", {}, [], config={"run_name": "r"})
    b = make_run(tmp_path / "y", "same", {}, [], config={"run_name": "r"})
    assert [r.name for r in load_runs([a, b])] == ["same", "same#2"]


@pytest.mark.parametrize("text,expected", [(None, None), ("", None), ("600,300", [300, 600]), (" 300, 300 ,", [300])])
def test_parse_steps(text, expected):
    assert parse_steps(text) == expected


@pytest.mark.parametrize("text", ["300,abc", "-5", "1.5"])
def test_parse_steps_rejects_bad_input(text):
    with pytest.raises(UsageError, match="--steps"):
        parse_steps(text)


@pytest.mark.parametrize("key,cell,expected", [
    ("eval_rollout/f1", tables.Cell(0.5), "0.500"),
    ("eval_rollout/f1", tables.Cell(0.5, 0.1234), "0.500 (+0.123)"),
    ("eval_rollout/f1", tables.Cell(0.25, -0.25), "0.250 (-0.250)"),
    ("eval_rollout/f1", tables.Cell(None, 0.1), "—"),
    ("eval_rollout/fp", tables.Cell(7.0, 5.0), "7 (+5)"),
    ("eval_rollout/drop/wrong_arity", tables.Cell(2.0, -1.0), "2 (-1)"),
    ("eval_rollout/fp", tables.Cell(2.5), "2.500"),
])
def test_fmt_cell(key, cell, expected):
    assert tables.fmt_cell(key, cell) == expected


def test_headline_deltas_against_first_run(two_runs):
    runs = load_runs(list(two_runs))
    rows = tables.headline_rows(runs, [300, 600])
    keys = [k for k, _ in tables.HEADLINE]
    by = {(step, name): dict(zip(keys, cells)) for step, name, cells in rows}
    assert [(s, n) for s, n, _ in rows] == [(300, "gate_on"), (300, "gate_off"), (600, "gate_on"), (600, "gate_off")]
    ap = by[(300, "gate_off")]["eval_rollout/bbox_AP50"]
    assert ap.value == 0.25 and ap.delta == pytest.approx(0.25 - 0.5)
    assert by[(300, "gate_on")]["eval_rollout/bbox_AP50"].delta is None
    assert by[(600, "gate_off")]["eval_rollout/f1"] == tables.Cell(None, None)
    assert by[(300, "gate_off")]["coord_diag/coord_vocab_mass_mean"].delta == pytest.approx(0.5 - 0.9)


def test_drop_rows_and_reason_order(two_runs):
    runs = load_runs(list(two_runs))
    rows = dict(tables.drop_rows(runs, [300, 600]))
    # columns: gate_on@300, gate_on@600, gate_off@300, gate_off@600
    assert rows["non_coord_token"] == [2.0, 1.0, 5.0, None]
    assert rows["wrong_arity"] == [None, None, 2.0, None]
    reasons = tables.drop_reasons(runs)
    assert reasons.index("non_coord_token") < reasons.index("wrong_arity")


def _data_uris(html: str) -> list[str]:
    return re.findall(r'<img[^>]*src="([^"]*)"', html)


def test_build_report_writes_md_and_self_contained_html(two_runs, tmp_path):
    out = tmp_path / "rep"
    paths = build_report(list(two_runs), out, steps=[300, 600, 1200])
    md = paths["md"].read_text()
    html = paths["html"].read_text()
    # headline rows: values and deltas against the first run, "—" where a step is missing
    assert "| 300 | gate_off | 0.250 (-0.250) |" in md
    assert "| 1200 | gate_on | — | — |" in md
    # drop table: only the reasons that occur somewhere, in the parser's precedence order
    assert "| run | step | non_coord_token | wrong_arity |" in md
    assert "| gate_off | 300 | 5 | 2 |" in md and "| gate_on | 300 | 2 | — |" in md
    assert "| gate_off | 600 | — | — |" in md
    # the dropped record is marked in the example text, with its reason, and the digit in a coord slot too
    assert '⟦{"desc": "red circle", "bbox_2d": [‹85›, <|coord_3|>]}⟧' in md
    assert "leaked coordinate slot `85` (digit)" in md
    assert "**parse: 1 drop (non_coord_token), 1 leaked coord slot · detection: matched 0 of 1 GT" in md
    assert "`non_coord_token`" in md
    for link in re.findall(r"\]\(((?:plots|examples)/[^)]+)\)", md):
        assert (out / link).read_bytes().startswith(PNG_MAGIC), link
    # html: one file, every image a decodable PNG data URI, nothing external
    uris = _data_uris(html)
    # the drop heat-map, the plots some run has data for, 2 examples; the others are named in words
    with_data = ["parse_dropped_invalid", "coord_vocab_mass", "loss_ce", "bbox_AP50", "f1"]
    assert len(uris) == 1 + len(with_data) + 2
    assert "No data in these runs for: sample_valid_pred_rate, coord_slot_leak_rate, loss_coord_gate." in md
    assert sorted(p.stem for p in (out / "plots").iterdir()) == sorted(with_data + ["drop_reasons"])
    for uri in uris:
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert '<mark title="non_coord_token">' in html
    assert '<span class="leak" title="leaked coordinate slot: digit">85</span>' in html
    assert '<span class="t">&lt;|coord_3|&gt;</span>' in html  # a token never wraps inside
    assert ".scroll{overflow-x:auto" in html and html.count('<div class="scroll"><table>') >= 3
    # which matching each F1 family uses, with CoordExp's names
    assert "| gate_precision, gate_recall, gate_f1, gate_matched | class-agnostic Hungarian at box IoU >= match.iou_gate" in md
    assert "class-aware Hungarian at box IoU &gt;= eval.f1_iou (0.5)" in html


def test_report_without_drops_says_so(tmp_path):
    run = make_run(tmp_path, "clean", {300: {"bbox_AP50": 0.5, "parse_dropped_invalid": 0, "drop/malformed": 0}}, [])
    paths = build_report([run], tmp_path / "rep")
    for text in (paths["md"].read_text(), paths["html"].read_text()):
        assert "No drops in any run" in text
    assert not (tmp_path / "rep" / "plots" / "drop_reasons.png").exists()


def test_report_cli(two_runs, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert main(["report", str(two_runs[0]), str(two_runs[1]), "--steps", "300", "--out", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "| 300 | gate_on |" in md and "| 600 |" not in md
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["report", str(two_runs[0]), "--steps", "x"]) == 2


def test_report_of_empty_run_dir_does_not_crash(tmp_path):
    (tmp_path / "empty").mkdir()
    paths = build_report([tmp_path / "empty"], tmp_path / "o")
    md = paths["md"].read_text()
    assert "no run artifacts found" in md
    assert "No monitor dumps in these runs." in md


@pytest.mark.slow
def test_report_from_a_real_short_run(tmp_path):
    """Train the smoke Stage-1 config for 2 steps (a training log at step 1, a rollout eval + monitor dump
    at step 2), then report on the real run directory."""
    from vlmdet.config import load_config
    from vlmdet.data.synth import make_synth
    from vlmdet.train.cli import train

    make_synth(tmp_path / "data", n_train=4, n_val=2, seed=0)
    cfg = load_config(Path(__file__).parents[1] / "configs" / "smoke" / "tiny_stage1.yaml", [
        f"data.train={tmp_path / 'data' / 'train.jsonl'}", f"data.val={tmp_path / 'data' / 'val.jsonl'}",
        f"output_dir={tmp_path / 'runs'}", "training.max_steps=2", "training.per_device_train_batch_size=2",
        "training.logging_steps=1", "eval.eval_steps=0", "eval.steps=[2]", "eval.max_samples=2", "rollout.max_new_tokens=16", "monitor.n_samples=2"])
    run_dir = Path(train(cfg, ["test"])["run_dir"])
    paths = build_report([run_dir], tmp_path / "rep", steps=[1, 2, 5])
    md = paths["md"].read_text()
    run = load_run(run_dir)
    assert run.eval_steps == [2] and sorted(run.dumps) == [2]
    v = run.metric(2, "sample_valid_pred_rate")
    assert v is not None and f"| 2 | {run.name} |" in md
    assert "| 5 | " + run.name + " | — |" in md
    assert run.series("loss/token_ce"), "the training log must carry loss/token_ce"
    assert "### " + run.name + " @ step 2:" in md
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") >= 4


def test_leak_section(tmp_path):
    """`leak/<kind>` metrics: a heat-map when any slot leaked, words when none did, nothing without the metrics."""
    leaky = make_run(tmp_path, "leaky", {300: {"coord_slot_leak_rate": 0.1, "leak/digit": 3, "leak/word": 0}}, [])
    clean = make_run(tmp_path, "clean", {300: {"coord_slot_leak_rate": 0.0, "leak/digit": 0}}, [])
    old = make_run(tmp_path, "old", {300: {"bbox_AP50": 0.5}}, [])
    md = build_report([leaky], tmp_path / "r1")["md"].read_text()
    assert "![leak kinds](plots/leak_kinds.png)" in md and (tmp_path / "r1" / "plots" / "leak_kinds.png").is_file()
    assert "![coord_slot_leak_rate](plots/coord_slot_leak_rate.png)" in md
    assert "No leaked coordinate slots in any run" in build_report([clean], tmp_path / "r2")["md"].read_text()
    assert "Leaked coordinate slots" not in build_report([old], tmp_path / "r3")["md"].read_text()



def test_leak_kinds_follow_the_slots_order(tmp_path):
    from vlmdet.slots import LEAK_KINDS

    a = make_run(tmp_path, "a", {300: {"leak/word": 1.0, "leak/digit": 3.0, "leak/new_kind": 1.0}}, [])
    b = make_run(tmp_path, "b", {300: {"leak/digit": 0.0}}, [])
    assert tables.leak_kinds(load_runs([a, b])) == [k for k in LEAK_KINDS if k in ("digit", "word")] + ["new_kind"]
