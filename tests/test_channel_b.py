"""Channel-B target construction on hand-written rollouts (see docs/STAGE2.md), and one Channel-B step."""

from __future__ import annotations

import pytest

from vlmdet.format import render_record
from vlmdet.model.chat import COORD, DESC, STRUCT
from vlmdet.model.load import find_coord_ids, token_pieces
from vlmdet.model.tokenizer import IM_END, build_tiny_tokenizer
from vlmdet.train.channel_b import build_target, rollout_metrics, rollout_seed


@pytest.fixture(scope="module")
def tok():
    t = build_tiny_tokenizer()
    return t, find_coord_ids(t), t.convert_tokens_to_ids(IM_END)


A = ("red circle", (10, 10, 100, 100))
B = ("blue square", (500, 500, 600, 600))
GT = [A, B]


def rec(desc, bins, key="bbox_2d"):
    return render_record(desc, bins).replace("bbox_2d", key)


def target_for(tok, text, gt=GT, stop=True):
    t, coord_ids, eot = tok
    ids = t(text, add_special_tokens=False)["input_ids"] + ([eot] if stop else [])
    pieces = token_pieces(t, ids)
    return build_target(ids, pieces, gt, t, coord_ids, eot)


def classify(tok, tgt):
    """Per token of the target: (piece, kind) with kind none | struct | desc_ctx | desc | coord:<bin> | eot."""
    t, coord_ids, eot = tok
    pieces = token_pieces(t, tgt.ids)
    out = []
    for i, (p, lab, s, b) in enumerate(zip(pieces, tgt.labels, tgt.slot_class, tgt.coord_bins)):
        if tgt.ids[i] == eot:
            kind = "eot" if lab == eot else "eot_unsupervised"
        elif lab == -100:
            kind = "desc_ctx" if s == DESC else "none"
            assert b == -1
        elif s == COORD:
            assert lab == coord_ids[b]  # the label is the GT coord token of the target bin
            kind = f"coord:{b}"
        elif s == DESC:
            kind = "desc"
        else:
            assert s == STRUCT and lab == tgt.ids[i]
            kind = "struct"
        out.append((p, kind))
    return out


def join(parts, *kinds):
    return "".join(p for p, k in parts if k in kinds)


def coords(parts):
    return [int(k.split(":")[1]) for _, k in parts if k.startswith("coord:")]


def test_valid_rollout_matched_fp_fn_masks(tok):
    pred_a = ("red circle", (12, 11, 98, 101))  # matches A (IoU ~0.93), own bins differ from GT
    fp = ("green triangle", (200, 200, 300, 300))  # no GT there
    text = '{"objects": [' + rec(*pred_a) + ", " + rec(*fp) + "]}"
    tgt = target_for(tok, text)
    assert tgt.matched == [(0, 0)] and tgt.fn == [1] and tgt.n_pred == 2
    parts = classify(tok, tgt)
    pre, app = parts[: tgt.prefix_len], parts[tgt.prefix_len :]
    # prefix: the rollout's own tokens; no loss on the opener, the separator and the FP record
    assert join(pre, "none") == '{"objects": [' + ", " + rec(*fp)
    # matched record: structure supervised, desc is context only, coords target the GT bins
    assert join(pre, "struct") == '{"desc": "' + '", "bbox_2d": [' + ", " * 3 + "]}"
    assert join(pre, "desc_ctx") == "red circle"
    assert coords(pre) == list(A[1])
    assert "".join(p for p, _ in pre) == '{"objects": [' + rec(*pred_a) + ", " + rec(*fp)  # own tokens kept
    # appended: separator + FN record + "]}" + end-of-turn, every token supervised
    assert tgt.append_text == ", " + rec(*B) + "]}"
    assert all(k != "none" and k != "desc_ctx" for _, k in app)
    assert join(app, "desc") == "blue square"
    assert coords(app) == list(B[1])
    assert app[-1] == ("<|im_end|>", "eot")


def test_drifted_key_record_gets_no_loss(tok):
    text = '{"objects": [' + rec(*A, key="bbox_3d") + ", " + rec(*B) + "]}"
    tgt = target_for(tok, text)
    assert tgt.parse.result.drops == {"unexpected_keys": 1}
    assert tgt.matched == [(0, 1)] and tgt.fn == [0]
    parts = classify(tok, tgt)
    pre = parts[: tgt.prefix_len]
    assert join(pre, "none") == '{"objects": [' + rec(*A, key="bbox_3d") + ", "
    assert join(pre, "desc_ctx") == "blue square"
    assert coords(pre) == list(B[1])
    assert tgt.append_text == ", " + rec(*A) + "]}"


def test_truncated_rollout_keeps_complete_records_and_appends(tok):
    text = '{"objects": [' + rec(*A) + ', {"desc": "blu'
    tgt = target_for(tok, text, stop=False)
    r = tgt.parse.result
    assert r.truncated and r.incomplete_tail == 1 and not tgt.parse.stopped
    parts = classify(tok, tgt)
    assert "".join(p for p, _ in parts[: tgt.prefix_len]) == '{"objects": [' + rec(*A)
    assert tgt.matched == [(0, 0)] and coords(parts[: tgt.prefix_len]) == list(A[1])
    assert tgt.append_text == ", " + rec(*B) + "]}"
    assert all(k not in ("none", "desc_ctx") for _, k in parts[tgt.prefix_len :])


def test_empty_rollout_appends_all_gt_without_separator(tok):
    tgt = target_for(tok, '{"objects": []}')
    parts = classify(tok, tgt)
    assert join(parts[: tgt.prefix_len], "none") == '{"objects": ['
    assert tgt.prefix_len == 1 and tgt.n_pred == 0 and tgt.fn == [0, 1]
    assert tgt.append_text == rec(*A) + ", " + rec(*B) + "]}"
    assert coords(parts) == list(A[1]) + list(B[1])


def test_leading_junk_is_unsupervised_context(tok):
    text = 'Sure! here: {"objects": [' + rec(*A) + "]}"
    tgt = target_for(tok, text)
    parts = classify(tok, tgt)
    pre = parts[: tgt.prefix_len]
    assert join(pre, "none") == 'Sure! here: {"objects": ['
    assert tgt.matched == [(0, 0)] and coords(pre) == list(A[1])
    assert tgt.append_text == ", " + rec(*B) + "]}"


def test_all_invalid_rollout_supervises_only_the_appended_gt(tok):
    digits = '{"desc": "red circle", "bbox_2d": [12, 34, 56, 78]}'
    wrong_arity = '{"desc": "blue square", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>]}'
    text = '{"objects": [' + digits + ", " + wrong_arity + "]}"
    tgt = target_for(tok, text)
    assert tgt.parse.result.drops == {"non_coord_token": 1, "wrong_arity": 1}
    assert tgt.n_pred == 0 and tgt.matched == [] and tgt.fn == [0, 1]
    parts = classify(tok, tgt)
    assert all(k == "none" for _, k in parts[: tgt.prefix_len])
    assert join(parts[: tgt.prefix_len], "none") == '{"objects": [' + digits + ", " + wrong_arity
    assert tgt.append_text == ", " + rec(*A) + ", " + rec(*B) + "]}"


def test_failed_rollout_restarts_the_container(tok):
    tgt = target_for(tok, "I cannot see anything")
    assert tgt.parse.result.failed and tgt.prefix_len == 0
    assert tgt.append_text == '{"objects": [' + rec(*A) + ", " + rec(*B) + "]}"
    parts = classify(tok, tgt)
    assert parts[0] == ('{"objects": [', "struct")


def test_gate_rejects_low_iou_pairs(tok):
    far = ("red circle", (10, 10, 40, 40))  # IoU with A = 0.11 < 0.3
    tgt = target_for(tok, '{"objects": [' + rec(*far) + "]}")
    assert tgt.matched == [] and tgt.fn == [0, 1]


def test_rollout_metrics_weights_give_global_ratios(tok):
    t1 = target_for(tok, '{"objects": [' + rec(*A) + "]}")  # tp 1, fp 0, fn 1
    t2 = target_for(tok, '{"objects": [' + rec("x", (800, 800, 900, 900)) + ", " + rec(*B) + "]}")  # tp 1, fp 1, fn 1

    class R:
        def __init__(self, n, hit):
            self.token_ids, self.hit_max = [0] * n, hit

    groups = rollout_metrics([t1, t2], [R(10, False), R(30, True)], 1.5)
    flat = {k: (v, w) for m, w in groups for k, v in m.items()}
    assert flat["rollout/precision"] == (pytest.approx(2 / 3), 3.0)
    assert flat["rollout/recall"] == (pytest.approx(2 / 4), 4.0)
    assert flat["rollout/f1"] == (pytest.approx(4 / 7), 7.0)
    assert flat["rollout/gen_tokens_mean"] == (20.0, 2.0)
    assert flat["rollout/hit_max_new_tokens_rate"] == (0.5, 2.0)
    assert flat["rollout/generate_s"] == (1.5, 1.0)
    assert flat["rollout/drop/unexpected_keys"] == (0.0, 2.0)


def test_rollout_seed():
    assert rollout_seed(0, 0) == 1
    assert rollout_seed(7, 3) == 7 + 3 * 1000003
    assert rollout_seed(1, 2**40) == (1 + 1000003 * 2**40) & 0x7FFFFFFF


class FakeBackend:
    """A rollout backend that returns fixed answer texts (one per record)."""

    def __init__(self, loaded, texts):
        self.loaded, self.texts, self.seeds = loaded, texts, []

    def generate(self, records, seed=None):
        from vlmdet.evaluate.rollout import Rollout

        self.seeds.append(seed)
        out = []
        for text in self.texts[: len(records)]:
            ids = self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.loaded.eot_id]
            pieces = token_pieces(self.loaded.tokenizer, ids)
            out.append(Rollout(ids, [0.0] * len(ids), [1.0] * len(ids), True, False, text, pieces))
        return out


@pytest.mark.slow
def test_channel_b_step_on_tiny_model(tmp_path, loaded):
    import torch

    from vlmdet.config import Config
    from vlmdet.data.records import load_records
    from vlmdet.data.synth import make_synth
    from vlmdet.format import render_answer, sort_objects
    from vlmdet.train.channel_b import channel_b_loss

    make_synth(tmp_path, n_train=2, n_val=1, seed=0, size=64)
    records = load_records(tmp_path / "train.jsonl")
    cfg = Config(stage=2)
    cfg.losses.ce_on_coord_slots, cfg.losses.smoothl1, cfg.losses.coord_gate = False, 1.0, 1.0
    gt0 = sort_objects(records[0].bins())
    texts = [render_answer(gt0), "garbage"]  # sample 0: perfect rollout; sample 1: no container
    backend = FakeBackend(loaded, texts)
    loss, logs, groups = channel_b_loss(loaded.model, loaded, records, cfg, step=5, backend=backend)
    assert backend.seeds == [5 * 1000003]
    flat = {k: v for m, _ in groups for k, v in m.items()}
    n0, n1 = len(gt0), len(records[1].objects)
    assert flat["rollout/precision"] == 1.0 and flat["rollout/recall"] == pytest.approx(n0 / (n0 + n1))
    assert flat["rollout/failed_rate"] == 0.5 and flat["rollout/fn_appended_mean"] == n1 / 2
    loss.backward()
    assert torch.isfinite(loss) and logs["loss/coord_gate"] > 0
    grads = [p.grad for p in loaded.model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


# ------------------------------------------------------------------------------------------------
# the same targets with Qwen's byte-level BPE, whose merges cross JSON punctuation (`]},`, ` [{"`)


@pytest.fixture(scope="module")
def qwen():
    from vlmdet.model.qwen_bpe import build_qwen_tokenizer

    t = build_qwen_tokenizer(coord_tokens=True)
    return t, find_coord_ids(t), t.convert_tokens_to_ids(IM_END)


O = '{"objects": ['
PRED_A = ("red circle", (12, 11, 98, 101))  # matches A
FP = ("green triangle", (200, 200, 300, 300))
BLOCKED = '{"objects": [{"'  # the container opener and the first record's `{"`: one token ` [{"`, no loss


def geo(desc, bins):
    return render_record(desc, bins, "geometry_first")


# (name, rollout text, stops with end-of-turn, GT, field order, expected:
#   kept = text of the rollout tokens kept, text = target answer text,
#   cut = (piece, kind) of the last kept token and the first two after it,
#   none = text of the unsupervised tokens, coords = geometry targets in order, matched, fn)
BPE_CASES = [
    ("no_kept_record", O + "]}", True, GT, "desc_first", dict(
        kept='{"objects":', text=O + rec(*A) + ", " + rec(*B) + "]}",
        cut=[('":', "none"), (' [{"', "none"), ("desc", "struct")],
        none=BLOCKED, coords=[*A[1], *B[1]], matched=[], fn=[0, 1])),
    ("junk_then_no_record", 'Sure! {"objects": []}', True, GT, "desc_first", dict(
        kept='Sure! {"objects":', text='Sure! ' + O + rec(*A) + ", " + rec(*B) + "]}",
        cut=[('":', "none"), (' [{"', "none"), ("desc", "struct")],
        none="Sure! " + BLOCKED, coords=[*A[1], *B[1]], matched=[], fn=[0, 1])),
    ("truncated_in_first_record", O + '{"desc": "re', False, GT, "desc_first", dict(
        kept='{"objects":', text=O + rec(*A) + ", " + rec(*B) + "]}",
        cut=[('":', "none"), (' [{"', "none"), ("desc", "struct")],
        none=BLOCKED, coords=[*A[1], *B[1]], matched=[], fn=[0, 1])),
    ("kept_matched_last", O + rec(*PRED_A) + "]}", True, GT, "desc_first", dict(
        kept=O + rec(*PRED_A)[:-2], text=O + rec(*PRED_A) + ", " + rec(*B) + "]}",
        cut=[("<|coord_101|>", "coord:100"), ("]},", "struct"), (' {"', "struct")],
        none=BLOCKED, coords=[*A[1], *B[1]], matched=[(0, 0)], fn=[1])),
    ("kept_fp_last", O + rec(*PRED_A) + ", " + rec(*FP) + "]}", True, GT, "desc_first", dict(
        kept=O + rec(*PRED_A) + ", " + rec(*FP)[:-2], text=O + rec(*PRED_A) + ", " + rec(*FP) + ", " + rec(*B) + "]}",
        cut=[("<|coord_300|>", "none"), ("]},", "none"), (' {"', "struct")],
        none=BLOCKED + " " + rec(*FP) + ",", coords=[*A[1], *B[1]], matched=[(0, 0)], fn=[1])),
    ("kept_all_matched", O + rec(*A) + ", " + rec(*B) + "]}", True, GT, "desc_first", dict(
        kept=O + rec(*A) + ", " + rec(*B), text=O + rec(*A) + ", " + rec(*B) + "]}",
        cut=[("]}", "struct"), ("]}", "struct"), ("<|im_end|>", "eot")],
        none=BLOCKED, coords=[*A[1], *B[1]], matched=[(0, 0), (1, 1)], fn=[])),
    ("dropped_record_last", O + rec(*A) + ", " + rec(*B, key="bbox_3d") + "]}", True, GT, "desc_first", dict(
        kept=O + rec(*A) + ", " + rec(*B, key="bbox_3d")[:-2],
        text=O + rec(*A) + ", " + rec(*B, key="bbox_3d") + ", " + rec(*B) + "]}",
        cut=[("<|coord_600|>", "none"), ("]},", "none"), (' {"', "struct")],
        none=BLOCKED + " " + rec(*B, key="bbox_3d") + ",", coords=[*A[1], *B[1]], matched=[(0, 0)], fn=[1])),
    ("trailing_garbage_in_container", O + rec(*PRED_A) + '], "count": 1}', True, GT, "desc_first", dict(
        kept=O + rec(*PRED_A)[:-2], text=O + rec(*PRED_A) + ", " + rec(*B) + "]}",
        cut=[("<|coord_101|>", "coord:100"), ("]},", "struct"), (' {"', "struct")],
        none=BLOCKED, coords=[*A[1], *B[1]], matched=[(0, 0)], fn=[1])),
    ("trailing_garbage_after_close", O + rec(*A) + ']} Done! {"objects": []}', True, GT, "desc_first", dict(
        kept=O + rec(*A)[:-2], text=O + rec(*A) + ", " + rec(*B) + "]}",
        cut=[("<|coord_100|>", "coord:100"), ("]},", "struct"), (' {"', "struct")],
        none=BLOCKED, coords=[*A[1], *B[1]], matched=[(0, 0)], fn=[1])),
    ("truncated_after_a_record", O + rec(*A) + ', {"desc": "blu', False, GT, "desc_first", dict(
        kept=O + rec(*A)[:-2], text=O + rec(*A) + ", " + rec(*B) + "]}",
        cut=[("<|coord_100|>", "coord:100"), ("]},", "struct"), (' {"', "struct")],
        none=BLOCKED, coords=[*A[1], *B[1]], matched=[(0, 0)], fn=[1])),
    ("no_container", "I cannot see anything", True, GT, "desc_first", dict(
        kept="", text=O + rec(*A) + ", " + rec(*B) + "]}",
        cut=[('{"', "struct"), ("objects", "struct")],
        none="", coords=[*A[1], *B[1]], matched=[], fn=[0, 1])),
    ("geometry_first_matched_last", O + geo(*PRED_A) + "]}", True, GT, "geometry_first", dict(
        kept=O + geo(*PRED_A)[:-2], text=O + geo(*PRED_A) + ", " + geo(*B) + "]}",
        cut=[(" circle", "desc_ctx"), ('"},', "struct"), (' {"', "struct")],
        none=BLOCKED, coords=[*A[1], *B[1]], matched=[(0, 0)], fn=[1])),
    ("multibyte_descs", O + rec("龘 dragon", PRED_A[1]) + "]}", True, [("龘 dragon", A[1]), ("红色的圆", B[1])],
     "desc_first", dict(
        kept=O + rec("龘 dragon", PRED_A[1])[:-2], text=O + rec("龘 dragon", PRED_A[1]) + ", " + rec("红色的圆", B[1]) + "]}",
        cut=[("<|coord_101|>", "coord:100"), ("]},", "struct"), (' {"', "struct")],
        none=BLOCKED, coords=[*A[1], *B[1]], matched=[(0, 0)], fn=[1])),
]


@pytest.mark.parametrize("name, text, stop, gt, field_order, want", BPE_CASES, ids=[c[0] for c in BPE_CASES])
def test_bpe_target_is_the_tokenization_of_the_target_text(qwen, name, text, stop, gt, field_order, want):
    t, coord_ids, eot = qwen
    rollout = t(text, add_special_tokens=False)["input_ids"] + ([eot] if stop else [])
    tgt = build_target(rollout, token_pieces(t, rollout), gt, t, coord_ids, eot, field_order=field_order)
    assert (tgt.matched, tgt.fn) == (want["matched"], want["fn"])
    assert tgt.text == want["text"] and tgt.append_text == want["text"][len(want["kept"]):]
    # the rollout's own tokens up to the cut, then exactly the tokenizer's tokens of the target text
    assert tgt.ids[: tgt.prefix_len] == rollout[: tgt.prefix_len]
    assert t.decode(tgt.ids[: tgt.prefix_len]) == want["kept"]
    assert tgt.ids == t(want["text"], add_special_tokens=False)["input_ids"] + [eot]
    parts = classify(qwen, tgt)
    n = tgt.prefix_len
    assert parts[max(n - 1, 0) : n + 2] == want["cut"]
    assert join(parts, "none") == want["none"]
    assert coords(parts) == want["coords"]
    assert parts[-1] == ("<|im_end|>", "eot")


def test_bpe_desc_tokens_matched_are_context_appended_are_supervised(qwen):
    t, coord_ids, eot = qwen
    gt = [("龘 dragon", A[1]), ("红色的圆", B[1])]
    rollout = t(O + rec("龘 dragon", PRED_A[1]) + "]}", add_special_tokens=False)["input_ids"] + [eot]
    pieces = token_pieces(t, rollout)
    assert "" in pieces  # 龘 is spelled with byte tokens that end inside the character
    parts = classify(qwen, build_target(rollout, pieces, gt, t, coord_ids, eot))
    assert join(parts, "desc_ctx") == "龘 dragon"
    assert join(parts, "desc") == "红色的圆"


def test_bpe_rollout_with_its_own_tokenization_keeps_it_up_to_the_cut(qwen):
    """A rollout that spelled the opener ` [` and the record's `{"` as two tokens (not what the
    tokenizer writes) keeps them; the record's `{"` is its own token and so is supervised."""
    t, coord_ids, eot = qwen
    enc = lambda s: t(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    rollout = enc(O) + enc(rec(*PRED_A)) + enc("]}") + [eot]
    assert rollout != enc(O + rec(*PRED_A) + "]}") + [eot]
    tgt = build_target(rollout, token_pieces(t, rollout), GT, t, coord_ids, eot)
    text = O + rec(*PRED_A) + ", " + rec(*B) + "]}"
    assert tgt.text == text and t.decode(tgt.ids[:-1]) == text
    assert tgt.ids[: tgt.prefix_len] == rollout[: tgt.prefix_len]
    assert t.decode(tgt.ids[: tgt.prefix_len]) == O + rec(*PRED_A)[:-2]
    assert tgt.ids[tgt.prefix_len : -1] == enc(text)[-(len(tgt.ids) - 1 - tgt.prefix_len):]
    parts = classify(qwen, tgt)
    assert parts[3:5] == [(" [", "none"), ('{"', "struct")]
