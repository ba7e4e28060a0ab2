"""run_rollout_eval end to end on the real tiny model whose answers are FORCED (a logits processor):
a valid, a key-drifted, a digit-leaked, a max-tokens-truncated and an empty answer must give exactly
the hand-computed metrics, drop counters, predictions, dumps and log rows; `vlmdet eval-preds`
re-scores predictions.jsonl to the same numbers; constrained decoding makes a leaking model's
answers 100% parseable."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmdet.config import config_from_dict
from vlmdet.data.records import load_records
from vlmdet.evaluate.monitor import GT_COLOUR, HALO, LEGEND_HEIGHT, PRED_COLOUR
from vlmdet.evaluate.rollout import HFRollout
from vlmdet.evaluate.runner import run_rollout_eval
from vlmdet.rundir import RunDir
from vlmdet.slots import LEAK_KINDS

# Image 64x64: bin k -> pixel k/999*63, so bins that are multiples of 111 land on multiples of 7 px.
W = H = 64
RC, BS, GT_ = (111, 111, 555, 555), (222, 555, 666, 888), (0, 0, 111, 111)
RC_PX, BS_PX = [7.0, 7.0, 35.0, 35.0], [14.0, 35.0, 42.0, 56.0]
MAX_NEW = 45


def rec(desc, bins, key="bbox_2d"):
    coords = ", ".join(b if isinstance(b, str) else f"<|coord_{b}|>" for b in bins)
    return '{"desc": "' + desc + '", "' + key + '": [' + coords + "]}"


def answer(*records):
    return '{"objects": [' + ", ".join(records) + "]}"


ANSWERS = {
    "s1_valid": answer(rec("red circle", RC), rec("blue square", BS)),
    "s2_drift": answer(rec("red circle", RC, key="bbox_3d"), rec("red square", BS)),
    "s3_leak": answer(rec("red circle", (111, "85", 555, 555))),
    # 4 records of 12 tokens: records 0-2 end at token 39, the 45-token budget cuts record 3
    "s4_trunc": answer(rec("red circle", RC), rec("green triangle", GT_), rec("red circle", RC), rec("red circle", RC)),
    "s5_empty": answer(),
}
GT = {
    "s1_valid": [("red circle", RC_PX), ("blue square", BS_PX)],
    "s2_drift": [("red circle", RC_PX), ("blue square", BS_PX)],
    "s3_leak": [("red circle", RC_PX)],
    "s4_trunc": [("red circle", RC_PX)],
    "s5_empty": [("blue square", BS_PX)],
}


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    return write_val(tmp_path_factory.mktemp("runner_data"))


def write_val(d: Path) -> Path:
    """The 5 val images and `d/val.jsonl` with the GT above (also used by tests/test_multiprocess.py)."""
    rows = []
    for i, (image_id, objs) in enumerate(GT.items()):
        Image.new("RGB", (W, H), (100 + 20 * i, 100, 100)).save(d / f"{image_id}.png")
        rows.append({"image_id": image_id, "image": f"{image_id}.png", "width": W, "height": H,
                     "objects": [{"desc": dsc, "bbox_2d": box} for dsc, box in objs]})
    path = d / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Bonus:
    """Logits processor: row r gets `bonus` added to token seqs[r][t] at step t (end-of-turn after the
    sequence). bonus=inf forces the sequence (all other tokens -inf)."""

    def __init__(self, seqs, eot_id, bonus=math.inf):
        self.seqs, self.eot_id, self.bonus, self.start = seqs, eot_id, bonus, None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        t = input_ids.shape[1] - self.start
        out = torch.full_like(scores, -math.inf) if math.isinf(self.bonus) else scores.clone()
        for r, seq in enumerate(self.seqs):
            tok = seq[t] if t < len(seq) else self.eot_id
            out[r, tok] = 0.0 if math.isinf(self.bonus) else out[r, tok] + self.bonus
        return out


class Capture:
    """Backend wrapper keeping the rollouts it returned."""

    def __init__(self, backend):
        self.backend, self.rollouts = backend, []
        self.max_new_tokens = backend.max_new_tokens
        self.constrained = backend.constrained

    def generate(self, records, seed=None):
        self.rollouts = self.backend.generate(records, seed=seed)
        return self.rollouts


def tokens(loaded, text):
    return loaded.tokenizer(text, add_special_tokens=False)["input_ids"]


def forced_backend(loaded, cfg, answers, bonus=math.inf, constrained=False):
    seqs = {k: tokens(loaded, v) for k, v in answers.items()}
    factory = lambda recs: [Bonus([seqs[r.image_id] for r in recs], loaded.eot_id, bonus)]  # noqa: E731
    return Capture(HFRollout(loaded, cfg.rollout, cfg.prompt, extra_processors=factory, progress=False,
                             constrained=constrained))


def make_cfg(**sections):
    base = {"seed": 3, "rollout": {"max_new_tokens": MAX_NEW, "batch_size": 2},
            "eval": {"max_samples": 100, "f1_iou": 0.5, "score_source": "coord_logprob"},
            "monitor": {"n_samples": 3, "max_text_chars": 0, "draw_images": True}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return config_from_dict(base)


@pytest.fixture(scope="module")
def forced_run(loaded, val, tmp_path_factory):
    cfg = make_cfg()
    records = load_records(val)
    backend = forced_backend(loaded, cfg, ANSWERS)
    run = RunDir(tmp_path_factory.mktemp("run"))
    metrics = run_rollout_eval(loaded, records, cfg, run_dir=run, step=7, backend=backend)
    return metrics, run, backend.rollouts, records


def test_token_budget_is_what_the_test_assumes(loaded):
    lengths = {k: len(tokens(loaded, v)) + 1 for k, v in ANSWERS.items()}  # + end-of-turn
    assert lengths["s4_trunc"] > MAX_NEW
    assert all(n <= MAX_NEW for k, n in lengths.items() if k != "s4_trunc")
    # the cut falls inside record 3: records 0-2 and their separator fit
    three = '{"objects": [' + ", ".join([rec("red circle", RC), rec("green triangle", GT_), rec("red circle", RC)]) + ", "
    assert len(tokens(loaded, three)) < MAX_NEW


def test_hand_computed_metrics(forced_run):
    m, _, rollouts, _ = forced_run
    r = lambda k: m[f"eval_rollout/{k}"]  # noqa: E731
    # preds: s1 2 (both right), s2 1 (right box, wrong class), s3 0, s4 3 (1 right, 1 far, 1 duplicate), s5 0
    assert r("pred_objects") == 6 and r("gt_objects") == 7 and r("samples") == 5
    # class-aware at IoU 0.5: tp 2+0+0+1+0, fp 0+1+0+2+0, fn 0+2+1+0+1
    assert (r("matched"), r("tp"), r("fp"), r("fn")) == (3, 3, 3, 4)
    assert r("precision") == pytest.approx(3 / 6) and r("recall") == pytest.approx(3 / 7)
    assert r("f1") == pytest.approx(6 / 13)
    # class-agnostic: s2's red square matches the blue square
    assert (r("tp_agnostic"), r("fp_agnostic"), r("fn_agnostic")) == (4, 2, 3)
    assert r("f1_agnostic") == pytest.approx(8 / 13)
    # rollout matching (gate 0.3, class-agnostic) agrees here (every IoU is 1 or 0)
    assert r("gate_matched") == 4 and r("gate_precision") == pytest.approx(4 / 6)
    assert r("gate_recall") == pytest.approx(4 / 7) and r("gate_f1") == pytest.approx(8 / 13)
    assert r("gate_iou_mean") == pytest.approx(1.0, abs=1e-9)
    # parse health
    assert r("parse_dropped_invalid") == 2
    assert r("drop/unexpected_keys") == 1 and r("drop/non_coord_token") == 1
    assert sum(v for k, v in m.items() if k.startswith("eval_rollout/drop/")) == 2
    assert len([k for k in m if k.startswith("eval_rollout/drop/")]) == 9  # every reason, zeros included
    assert r("parse_truncated_rate") == pytest.approx(1 / 5) and r("parse_incomplete_tail") == 1
    assert r("parse_failed_rate") == 0 and r("malformed_container_rate") == 0
    assert r("sample_valid_pred_rate") == pytest.approx(3 / 5)  # >= 1 valid object: s1, s2, s4
    assert r("sample_clean_rate") == pytest.approx(2 / 5)  # s1 and the well-formed empty s5
    assert r("empty_pred_rate") == pytest.approx(2 / 5)  # s3, s5
    assert r("duplicate_rate") == pytest.approx(1 / 6)  # s4's second red circle
    assert r("hit_max_new_tokens_rate") == pytest.approx(1 / 5) and r("stopped_rate") == pytest.approx(4 / 5)
    assert [ro.hit_max for ro in rollouts] == [False, False, False, True, False]
    assert r("gen_tokens_mean") == pytest.approx(sum(len(ro.token_ids) for ro in rollouts) / 5)
    assert len(rollouts[3].token_ids) == MAX_NEW
    # coord-vocab mass at every generated coord-token position (valid and dropped records alike)
    masses = [ro.coord_mass[i] for ro in rollouts for i, t in enumerate(ro.token_ids) if "<|coord_" in ro.pieces[i]]
    # s1: 8, s2: 4 + 4 (the dropped bbox_3d record too), s3: 3, s4: 3 x 4 + those of the cut record 3
    cut = rollouts[3].text.count("<|coord_") - 12
    assert 0 <= cut < 4
    assert len(masses) == 8 + 8 + 3 + 12 + cut
    assert r("coord_vocab_mass_gen_emitted") == pytest.approx(sum(masses) / len(masses), rel=1e-9)
    # coordinate slots: s1 8, s2 4 (the bbox_3d record has no bbox_2d), s3 4 (one is "85"), s4 12 + cut
    # (a budget cut right after "[" or ", " leaves no token there), s5 0
    assert r("coord_slots") == 8 + 4 + 4 + 12 + cut
    assert r("leak/digit") == 1 and sum(r(f"leak/{k}") for k in LEAK_KINDS) == 1
    assert r("coord_slot_leak_rate") == pytest.approx(1 / (28 + cut))
    assert m["eval_time/generate_s"] > 0 and m["eval_time/tokens_per_s"] > 0
    for k, v in m.items():
        assert isinstance(v, float) and math.isfinite(v), k


def test_scores_are_geometric_means_of_coord_token_probabilities(forced_run):
    _, run, rollouts, records = forced_run
    preds = [json.loads(line) for line in (run.eval_dir(7) / "predictions.jsonl").read_text().splitlines()]
    assert [p["image_id"] for p in preds] == [r.image_id for r in records]
    s1 = preds[0]["objects"]
    assert [o["desc"] for o in s1] == ["red circle", "blue square"]
    assert s1[0]["bbox_2d"] == pytest.approx(RC_PX, abs=1e-9) and s1[1]["bbox_2d"] == pytest.approx(BS_PX, abs=1e-9)
    ro = rollouts[0]
    coord_pos = [i for i, p in enumerate(ro.pieces) if p.startswith("<|coord_")]
    for k, obj in enumerate(s1):
        lp = [ro.logprobs[i] for i in coord_pos[4 * k : 4 * k + 4]]
        assert obj["score"] == pytest.approx(math.exp(sum(lp) / 4), rel=1e-12)
        assert 0 < obj["score"] < 1
    assert preds[2]["objects"] == [] and preds[4]["objects"] == []
    assert [o["desc"] for o in preds[3]["objects"]] == ["red circle", "green triangle", "red circle"]


def test_eval_preds_rescoring_is_identical(forced_run, val, tmp_path):
    from vlmdet.cli import main
    from vlmdet.evaluate.detection import COCO_KEYS

    m, run, _, _ = forced_run
    out = tmp_path / "m.json"
    assert main(["eval-preds", "--gt", str(val), "--pred", str(run.eval_dir(7) / "predictions.jsonl"),
                 "--out", str(out), "--f1-iou", "0.5"]) == 0
    again = json.loads(out.read_text())
    keys = [*COCO_KEYS, "precision", "recall", "f1", "tp", "fp", "fn", "precision_agnostic", "recall_agnostic",
            "f1_agnostic", "tp_agnostic", "fp_agnostic", "fn_agnostic", "pred_objects", "gt_objects"]
    for k in keys:
        assert m[f"eval_rollout/{k}"] == again[k], k
    assert again["score_source"] == "given"
    assert m["eval_rollout/bbox_AP50"] > 0  # the three exact boxes are found


def test_metrics_file_and_log_row(forced_run):
    m, run, _, _ = forced_run
    saved = json.loads((run.eval_dir(7) / "metrics.json").read_text())
    assert saved["step"] == 7 and saved["metrics"] == m and saved["score_source"] == "coord_logprob"
    rows = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 7
    assert {k: v for k, v in rows[0].items() if k not in ("step", "time")} == m


def test_monitor_dump(forced_run):
    _, run, _, _ = forced_run
    dump = json.loads(run.dump_path(7).read_text())
    assert dump["step"] == 7 and dump["n_total"] == 5
    # problems first (drops / truncation), lowest per-sample F1 first: s3 (0), s4 (2*1/(3+1)), s2 (2*1/(1+2))
    assert [s["image_id"] for s in dump["samples"]] == ["s3_leak", "s4_trunc", "s2_drift"]
    s3, s4, s2 = dump["samples"]
    assert s3["raw_text"] == ANSWERS["s3_leak"]
    assert s3["drops"] == [{"reason": "non_coord_token", "index": 0, "span": [13, len(ANSWERS["s3_leak"]) - 2],
                            "text": rec("red circle", (111, "85", 555, 555))}]
    assert s3["objects"] == [] and s3["matches"] == [] and s3["flags"]["empty_pred"]
    assert s3["gt"] == [{"desc": "red circle", "bbox_2d": RC_PX}]
    assert s2["drops"][0]["reason"] == "unexpected_keys" and s2["drops"][0]["text"] == rec("red circle", RC, "bbox_3d")
    assert [(o["index"], o["desc"], o["bins"]) for o in s2["objects"]] == [(1, "red square", list(BS))]
    assert [(mm["pred"], mm["gt"]) for mm in s2["matches"]] == [(0, 1)]
    assert s4["flags"] == {"failed": False, "truncated": True, "malformed_container": False, "incomplete_tail": True,
                           "empty_pred": False, "hit_max_new_tokens": True}
    assert [o["index"] for o in s4["objects"]] == [0, 1, 2] and s4["drops"] == []
    assert len(s4["raw_text"]) == s4["raw_text_chars"] and s4["raw_text"].startswith(ANSWERS["s4_trunc"][:100])
    # the PNG: GT box of s3 ([7, 7, 35, 35] px, drawn 6x: [42, 42, 210, 210]) dashed white, no prediction
    png = run.dump_path(7).with_suffix("") / "s3_leak.png"
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (384 + LEGEND_HEIGHT, 384, 3)
    left_edge = [tuple(px) for px in img[50:200, 42]]
    assert left_edge.count(GT_COLOUR) > 40 and left_edge.count(HALO) > 40  # dashes and halo
    assert not (img[:384] == PRED_COLOUR).all(axis=-1).any()
    assert sorted(p.name for p in png.parent.iterdir()) == ["s2_drift.png", "s3_leak.png", "s4_trunc.png"]


def test_constant_scores(loaded, val, tmp_path):
    cfg = make_cfg(eval={"score_source": "constant"}, monitor={"enabled": False})
    backend = forced_backend(loaded, cfg, ANSWERS)
    m = run_rollout_eval(loaded, load_records(val), cfg, run_dir=tmp_path, step=1, backend=backend)
    preds = [json.loads(line) for line in (tmp_path / "eval" / "step_000001" / "predictions.jsonl").open()]
    assert all("score" not in o for p in preds for o in p["objects"])
    assert json.loads((tmp_path / "eval" / "step_000001" / "metrics.json").read_text())["score_source"] == "constant"
    assert m["eval_rollout/f1"] == pytest.approx(6 / 13)
    assert not (tmp_path / "monitor_dumps").exists()


def test_max_samples_and_no_run_dir(loaded, val):
    cfg = make_cfg(eval={"max_samples": 2})
    backend = forced_backend(loaded, cfg, ANSWERS)
    m = run_rollout_eval(loaded, load_records(val), cfg, backend=backend)
    assert m["eval_rollout/samples"] == 2 and len(backend.rollouts) == 2
    assert m["eval_rollout/pred_objects"] == 3 and m["eval_rollout/drop/unexpected_keys"] == 1


class SetMass(Capture):
    """Capture that replaces each rollout's coordinate-vocabulary masses: token t gets (t + 1) / 100."""

    def generate(self, records, seed=None):
        rollouts = super().generate(records, seed)
        for ro in rollouts:
            ro.coord_mass = [(t + 1) / 100 for t in range(len(ro.token_ids))]
        return rollouts


def test_leaked_slots_by_hand(loaded, val, tmp_path):
    """A rollout forced to `bbox_2d: [85, <|coord_9|>, red, <|im_end|>`: 4 coordinate slots, at the
    tokens `85`, `<|coord_9|>`, `red` and the end-of-turn; 3 leaks (digit, word, end_of_turn)."""
    leak = '{"objects": [{"desc": "red circle", "bbox_2d": [85, <|coord_9|>, red, '
    cfg = make_cfg(eval={"max_samples": 1})
    backend = SetMass(forced_backend(loaded, cfg, {"s1_valid": leak}).backend)
    run = RunDir(tmp_path / "run")
    m = run_rollout_eval(loaded, load_records(val)[:1], cfg, run_dir=run, step=1, backend=backend)
    ro = backend.rollouts[0]
    assert ro.stopped and ro.text == leak and ro.token_ids[-1] == loaded.eot_id
    # the tokens: {"objects": [ | {"desc": " | red | circle | ", "bbox_2d": [ | 85 | , | <|coord_9|> | , | red | , | <|im_end|>
    assert ro.pieces[5:] == ["85", ", ", "<|coord_9|>", ", ", "red", ", ", "<|im_end|>"]
    slot_tokens = [5, 7, 9, 11]
    r = lambda k: m[f"eval_rollout/{k}"]  # noqa: E731
    assert r("coord_slots") == 4 and r("coord_slot_leak_rate") == pytest.approx(3 / 4)
    assert (r("leak/digit"), r("leak/word"), r("leak/end_of_turn"), r("leak/structure"), r("leak/other")) == (1, 1, 1, 0, 0)
    # mass at the slots: tokens 5, 7, 9, 11 -> (0.06 + 0.08 + 0.10 + 0.12) / 4; the old number saw token 7 only
    assert r("coord_vocab_mass_gen") == pytest.approx(0.09, rel=1e-12)
    assert r("coord_vocab_mass_gen_emitted") == pytest.approx(0.08, rel=1e-12)
    # the monitor dump marks the 3 leaked slots
    dump = json.loads(run.dump_path(1).read_text())["samples"][0]
    assert dump["coord_slots"] == 4
    assert [(d["kind"], d["token"], d["offset"]) for d in dump["leaked_slots"]] == [
        ("digit", slot_tokens[0], leak.index("85")), ("word", slot_tokens[2], leak.index("red, ")),
        ("end_of_turn", slot_tokens[3], len(leak))]
    assert dump["leaked_slots"][2]["text"] == "<|im_end|>"
    assert [d["mass"] for d in dump["leaked_slots"]] == pytest.approx([0.06, 0.10, 0.12], rel=1e-12)


def test_a_model_that_always_answers_empty(loaded, val):
    cfg = make_cfg(monitor={"enabled": False})
    backend = forced_backend(loaded, cfg, {k: answer() for k in GT})
    m = run_rollout_eval(loaded, load_records(val), cfg, backend=backend)
    assert all(ro.text == '{"objects": []}' and ro.stopped for ro in backend.rollouts)
    assert m["eval_rollout/sample_valid_pred_rate"] == 0.0
    assert m["eval_rollout/sample_clean_rate"] == 1.0
    assert m["eval_rollout/coord_slots"] == 0 and m["eval_rollout/coord_slot_leak_rate"] == 0.0


@pytest.mark.slow
def test_constrained_decoding_repairs_a_leaking_model(loaded, val, tmp_path):
    """The 'leaking model': at every step a large bonus on the token of a digit-leaked answer (digits
    where coordinates belong). Unconstrained, every record is dropped as non_coord_token; with the
    grammar constraint after the bonus, 100% of the answers parse with zero drops."""
    leak = answer(rec("red circle", ("85", "3", "85", "99")), rec("blue square", ("12", "3", "40", "99")))
    answers = {k: leak for k in GT}
    cfg = make_cfg(eval={"also_constrained": True}, rollout={"max_new_tokens": 60})
    backend = forced_backend(loaded, cfg, answers, bonus=100.0)
    c_backend = forced_backend(loaded, cfg, answers, bonus=100.0, constrained=True)
    m = run_rollout_eval(loaded, load_records(val), cfg, run_dir=tmp_path, step=2, backend=backend,
                         constrained_backend=c_backend)
    assert backend.rollouts[0].text == leak  # the bonus alone reproduces the leaking answer
    assert m["eval_rollout/drop/non_coord_token"] == 10 and m["eval_rollout/pred_objects"] == 0
    assert m["eval_rollout/sample_valid_pred_rate"] == 0.0
    c = lambda k: m[f"eval_rollout_constrained/{k}"]  # noqa: E731
    assert c("parse_dropped_invalid") == 0 and c("parse_truncated_rate") == 0 and c("parse_failed_rate") == 0
    assert c("sample_valid_pred_rate") == 1.0 and c("pred_objects") == 10 and c("stopped_rate") == 1.0
    assert m["eval_rollout/coord_slot_leak_rate"] == 1.0 and m["eval_rollout/leak/digit"] == 40
    assert c("coord_slot_leak_rate") == 0.0 and c("coord_slots") == 40
    for ro in c_backend.rollouts:
        # same structure, same descs; coordinate tokens where the digits were
        assert ro.text.count("<|coord_") == 8 and "85" not in ro.text
    assert (tmp_path / "eval" / "step_000002" / "predictions_constrained.jsonl").exists()


@pytest.mark.slow
def test_eval_inside_a_short_training_run(tmp_path):
    """Stage-1 on the tiny model for 4 steps with eval_steps 2: the trainer's callback calls
    run_rollout_eval, which writes metrics, predictions and dumps at steps 2 and 4 only."""
    from vlmdet.config import load_config
    from vlmdet.data.synth import make_synth
    from vlmdet.train.cli import train

    make_synth(tmp_path / "d", n_train=8, n_val=3, seed=0, size=64)
    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke" / "tiny_stage1.yaml")
    cfg = load_config(smoke, [f"data.train={tmp_path / 'd' / 'train.jsonl'}", f"data.val={tmp_path / 'd' / 'val.jsonl'}",
                              f"output_dir={tmp_path / 'runs'}", "run_name=r", "training.max_steps=4",
                              "eval.eval_steps=2", "eval.max_samples=3", "rollout.max_new_tokens=12",
                              "monitor.n_samples=2", "monitor.draw_images=true"])
    summary = train(cfg, ["test"])
    assert summary["global_step"] == 4
    run = RunDir(tmp_path / "runs" / "r")
    assert sorted(p.name for p in (run.root / "eval").iterdir()) == ["step_000002", "step_000004"]
    assert sorted(p.name for p in (run.root / "monitor_dumps").glob("*.json")) == ["step_000002.json", "step_000004.json"]
    for step in (2, 4):
        saved = json.loads((run.eval_dir(step) / "metrics.json").read_text())
        assert saved["step"] == step and saved["metrics"]["eval_rollout/samples"] == 3
        assert len((run.eval_dir(step) / "predictions.jsonl").read_text().splitlines()) == 3
        dump = json.loads(run.dump_path(step).read_text())
        assert dump["step"] == step and len(dump["samples"]) == 2
        assert len(list(run.dump_path(step).with_suffix("").glob("*.png"))) == 2
    rows = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    eval_steps = sorted({r["step"] for r in rows if "eval_rollout/f1" in r})
    assert eval_steps == [2, 4]


@pytest.mark.parametrize("n, world, shards", [
    (5, 2, [[0, 2, 4], [1, 3]]),
    (4, 2, [[0, 2], [1, 3]]),
    (2, 3, [[0], [1], []]),
    (3, 1, [[0, 1, 2]]),
])
def test_shard_indices_cover_every_record_once(n, world, shards):
    from vlmdet.evaluate.runner import shard_indices

    got = [shard_indices(n, r, world) for r in range(world)]
    assert got == shards
    assert sorted(i for s in got for i in s) == list(range(n))
