"""`vlmdet doctor CHECKPOINT [--data FILE.jsonl]`: the failure causes that need no training.

Each check prints one `PASS name: detail` or `FAIL name: detail` line; the exit status is 1 when any
check fails (0 otherwise; 2 for bad input such as a missing folder).

Checks:
- `coord_ids`: the 1000 coordinate tokens have distinct ids (index k = bin k); each id decodes to its
  own literal and the parser's lattice (`coords.token_bin`) reads that literal back as bin k; the
  token-level parser recovers the 4 bins of a rendered box from real coord ids.
- `embedding_rows`: every coord id is below the number of input-embedding rows and of output-head
  rows (the logits' vocabulary), and the config's vocab_size covers them.
- `coord_rows_distinct`: the coord tokens' embedding rows (and output-head rows) are not identical
  (identical rows make the coordinates indistinguishable to the model).
- `supervision`: for each example answer, every answer token and the closing `<|im_end|>` carry a
  label, the labelled text is exactly the answer + `<|im_end|>`, there are 4 coord slots per object
  with the right bins in order, and desc / structure slots are where the answer has them. The first
  example is printed one token per line with its class (`S` struct, `D` desc, `C` coord).
- `round_trip`: decode(encode(answer)) == answer, and the strict parser reads the answer back to the
  same objects (from `--data` records, or built-in synthetic ones with tricky descs).
- `stop_token`: the generation config's eos_token_id includes `<|im_end|>`.
- `serving_decode`: `decode(ids, skip_special_tokens=True)` (the default of most serving stacks)
  keeps every coordinate token, i.e. they are not special tokens (fix: `vlmdet expand-vocab SRC DST`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from vlmdet.config import PromptConfig
from vlmdet.coords import COORD_TOKENS, NUM_BINS, token_bin
from vlmdet.data.records import load_image, load_records
from vlmdet.format import render_answer
from vlmdet.model import chat
from vlmdet.model.chat import COORD, DESC, IGNORE, STRUCT, desc_spans
from vlmdet.model.load import load_model, token_pieces
from vlmdet.options import bounded
from vlmdet.parse import parse_prediction, parse_rollout

CLASS_LETTER = {0: "-", 1: "S", 2: "D", 3: "C"}

#: Built-in examples when no --data is given: (desc, bins) objects, incl. escapes, digits, CJK, empty.
SYNTHETIC_ANSWERS = (
    [("red circle", (12, 34, 256, 480)), ("blue square", (0, 500, 999, 998))],
    [('say "hi"', (1, 2, 3, 4)), ("猫 三", (10, 20, 30, 40)), ("85", (100, 100, 101, 101))],
    [],
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def _check_coord_ids(loaded) -> Check:
    tok, ids = loaded.tokenizer, loaded.coord_ids
    problems = []
    if len(ids) != NUM_BINS or len(set(ids)) != NUM_BINS:
        problems.append(f"{len(set(ids))} distinct ids for {NUM_BINS} bins")
    if ids != tok.convert_tokens_to_ids(list(COORD_TOKENS)):
        problems.append("ids differ from the tokenizer's vocabulary")
    bad = [k for k, i in enumerate(ids) if token_bin(tok.decode([i], skip_special_tokens=False)) != k]
    if bad:
        problems.append(f"{len(bad)} ids do not decode to their own literal (first: bin {bad[0]})")
    if any(loaded.coord_bin_of_id.get(i) != k for k, i in enumerate(ids)):
        problems.append("coord_bin_of_id disagrees with coord_ids")
    # the parser's token-level view of a rendered answer

    answer = render_answer([("x", (3, 4, 997, 998))])
    token_ids = tok(answer, add_special_tokens=False)["input_ids"] + [loaded.eot_id]

    rp = parse_rollout(token_ids, token_pieces(tok, token_ids), loaded.coord_bin_of_id, {loaded.eot_id})
    if [o.bins for o in rp.result.objects] != [(3, 4, 997, 998)] or not rp.stopped:
        problems.append(f"the token-level parser read {[o.bins for o in rp.result.objects]} from a rendered box")
    detail = "; ".join(problems) or f"1000 distinct ids {min(ids)}..{max(ids)}, bin order, parser agrees"
    return Check("coord_ids", not problems, detail)


def _check_rows(loaded) -> list[Check]:
    import torch

    model, ids = loaded.model, loaded.coord_ids
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_w = head.weight if head is not None else emb
    vocab_size = getattr(getattr(model.config, "text_config", model.config), "vocab_size", None)
    problems = []
    if max(ids) >= emb.shape[0]:
        problems.append(f"max coord id {max(ids)} >= {emb.shape[0]} embedding rows")
    if max(ids) >= head_w.shape[0]:
        problems.append(f"max coord id {max(ids)} >= {head_w.shape[0]} output-head rows")
    if vocab_size is not None and max(ids) >= vocab_size:
        problems.append(f"max coord id {max(ids)} >= config vocab_size {vocab_size}")
    rows = Check("embedding_rows", not problems, "; ".join(problems)
                 or f"ids < {emb.shape[0]} embedding rows, {head_w.shape[0]} head rows, vocab_size {vocab_size}")
    if problems:
        return [rows, Check("coord_rows_distinct", False, "skipped: coord ids out of range")]
    tied = head_w.data_ptr() == emb.data_ptr()
    msgs, ok = [], True
    for name, w in (("embedding", emb),) + (() if tied else (("head", head_w),)):
        sub = w.detach()[ids].float()
        n_unique = torch.unique(sub, dim=0).shape[0]
        spread = float((sub - sub.mean(0)).norm(dim=1).max())
        if n_unique < len(ids) or spread == 0.0:
            ok = False
            msgs.append(f"{name} rows: only {n_unique} distinct of {len(ids)}")
        else:
            msgs.append(f"{name} rows: {n_unique} distinct")
    msgs.append("tied head" if tied else "untied head")
    return [rows, Check("coord_rows_distinct", ok, ", ".join(msgs))]


def _examples(data, limit: int):
    """[(image, answer objects)] from --data records, or the built-in synthetic ones."""
    from PIL import Image

    if data is None:
        return [(Image.new("RGB", (64, 64), (128, 128, 128)), objs) for objs in SYNTHETIC_ANSWERS]

    records = load_records(data)[:limit]
    return [(load_image(r), r.bins()) for r in records]


def _check_supervision(loaded, examples, prompt_cfg, out: Callable[[str], None]) -> tuple[Check, Check]:
    field_order = prompt_cfg.field_order
    tok = loaded.tokenizer
    sup_problems: list[str] = []
    rt_problems: list[str] = []
    for n, (image, objs) in enumerate(examples):
        answer = render_answer(objs, field_order)
        # round trip: text and parser
        ids = tok(answer, add_special_tokens=False)["input_ids"]
        if tok.decode(ids, skip_special_tokens=False) != answer:
            rt_problems.append(f"example {n}: decode(encode(answer)) differs")
        parsed = parse_prediction(answer, field_order)
        want = [(d, tuple(b)) for d, b in sorted(objs, key=lambda o: (o[1][1], o[1][0]))]
        got = [(o.desc, o.bins) for o in parsed.objects]
        if got != want or parsed.drops or parsed.failed or parsed.truncated:
            rt_problems.append(f"example {n}: the parser read {got} (drops {parsed.drops})")
        # supervision
        ex = chat.encode_example(loaded, image, answer, prompt_cfg)
        labels, slot, bins = ex["labels"], ex["slot_class"].tolist(), ex["coord_bins"].tolist()
        sup = (labels != -100).tolist()
        if True not in sup:
            sup_problems.append(f"example {n}: no supervised token")
            continue
        first = sup.index(True)
        span_ids = ex["input_ids"][first:].tolist()
        pieces = token_pieces(tok, span_ids)
        if not all(sup[first:]) or any(sup[:first]):
            sup_problems.append(f"example {n}: the supervised tokens are not exactly the assistant span")
        if "".join(pieces) != answer + tok.decode([loaded.eot_id], skip_special_tokens=False):
            sup_problems.append(f"example {n}: the supervised text is not the answer + end-of-turn")
        if span_ids[-1] != loaded.eot_id or slot[-1] != STRUCT:
            sup_problems.append(f"example {n}: the end-of-turn token is not supervised as structure")
        span_slots = slot[first:]
        if IGNORE in span_slots:
            sup_problems.append(f"example {n}: {span_slots.count(IGNORE)} supervised tokens have no slot class")
        coord_bins = [b for b, c in zip(bins, slot) if c == COORD]
        want_bins = [k for _, b in want for k in b]
        if coord_bins != want_bins:
            sup_problems.append(f"example {n}: coord slots {len(coord_bins)} (want {len(want_bins)}) or bins differ")
        coord_set = loaded.coord_bin_of_id
        if any((i in coord_set) != (c == COORD) for i, c in zip(span_ids, span_slots)):
            sup_problems.append(f"example {n}: coord slots are not exactly the coord-token positions")
        # desc slots: every desc character lies in a DESC token, and every DESC token touches a desc
        # (a BPE token may straddle a quote and the first letters: it counts as DESC)
        starts = [0]
        for p in pieces:
            starts.append(starts[-1] + len(p))
        tok_spans = [(starts[i], starts[i + 1]) for i in range(len(pieces))]
        spans = desc_spans(answer)
        desc_tok = [sp for sp, c in zip(tok_spans, span_slots) if c == DESC]
        uncovered = [a for a0, b0 in spans for a in range(a0, b0) if not any(s <= a < e for s, e in desc_tok)]
        # a token ending inside a multi-byte character has an empty piece: it belongs to the next char
        stray = [(s, e) for s, e in desc_tok if not any(s < b0 and max(e, s + 1) > a0 for a0, b0 in spans)]
        if uncovered or stray:
            sup_problems.append(f"example {n}: desc slots miss {len(uncovered)} desc characters and "
                                f"include {len(stray)} tokens outside any desc")
        if n == 0:
            out(f"supervision of example 0 ({len(span_ids)} tokens; S struct, D desc, C coord):")
            for p, c in zip(pieces, span_slots):
                out(f"  {CLASS_LETTER[c]} {p!r}")
    n_ex = len(examples)
    return (
        Check("supervision", not sup_problems, "; ".join(sup_problems[:5])
              or f"{n_ex} answers: every answer token + end-of-turn supervised, coord/desc slots exact"),
        Check("round_trip", not rt_problems, "; ".join(rt_problems[:5])
              or f"{n_ex} answers: decode(encode(answer)) == answer and the parser reads the same objects"),
    )


def _check_stop_token(loaded) -> Check:
    gen = getattr(loaded.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    eos_list = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    ok = loaded.eot_id in eos_list
    return Check("stop_token", ok, f"generation eos_token_id {eos_list}, <|im_end|> = {loaded.eot_id}"
                 + ("" if ok else ": generation would not stop at the end of turn"))


def _check_serving_decode(loaded) -> Check:
    tok, ids = loaded.tokenizer, loaded.coord_ids
    lost = [k for k, i in enumerate(ids) if tok.decode([i], skip_special_tokens=True) != COORD_TOKENS[k]]
    answer = render_answer([("x", (3, 4, 997, 998))])
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"] + [loaded.eot_id]
    text = tok.decode(answer_ids, skip_special_tokens=True)
    if lost:
        return Check("serving_decode", False, f"{len(lost)} coordinate tokens are special and vanish from "
                     f"decode(skip_special_tokens=True) (a rendered box reads {text!r}); rerun `vlmdet expand-vocab`")
    if text != answer:
        return Check("serving_decode", False, f"decode(skip_special_tokens=True) of a rendered answer gives {text!r}")
    return Check("serving_decode", True, "decode(skip_special_tokens=True) keeps all 1000 coordinate tokens")


def run_doctor(checkpoint: str, data=None, field_order: str = "desc_first", limit: int = 20,
               out: Callable[[str], None] = print) -> list[Check]:
    """Load `checkpoint` ("tiny" or a folder), run every check, print one line per check, return them."""
    loaded = load_model(checkpoint)
    prompt_cfg = PromptConfig(field_order=field_order)
    checks = [_check_coord_ids(loaded), *_check_rows(loaded)]
    checks += list(_check_supervision(loaded, _examples(data, limit), prompt_cfg, out))
    checks.append(_check_stop_token(loaded))
    checks.append(_check_serving_decode(loaded))
    for c in checks:
        out(c.line())
    return checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, or 'tiny'")
    parser.add_argument("--data", default=None, help="JSONL records whose answers to check (default: built-in examples)")
    parser.add_argument("--field-order", default="desc_first", choices=("desc_first", "geometry_first"))
    parser.add_argument("--limit", type=bounded(int, lambda v: v >= 1, ">= 1"), default=20, help="at most this many records from --data")


def run(args: argparse.Namespace) -> int:
    checks = run_doctor(args.checkpoint, args.data, args.field_order, args.limit)
    failed = [c.name for c in checks if not c.ok]
    print(f"doctor: {len(checks) - len(failed)}/{len(checks)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
