"""Grammar-constrained decoding: the automaton on hand-made vocabularies, and the processor in a
simulated greedy loop (no model) that must always produce parseable, complete answers."""

import math

import pytest
import torch

from vlmdet.coords import COORD_TOKENS
from vlmdet.evaluate.constrained import CoordJSONGrammar, CoordJSONLogitsProcessor
from vlmdet.parse import parse_prediction

# A BPE-like vocabulary: structure split into several pieces, some crossing boundaries.
TEXT_PIECES = ['{"', "objects", '":', " [", "{", '"', "desc", ": ", "red", " ", "circle", '", "', "bbox_2d",
               '": [', ", ", "]}", "]", "}", "85", "3", '"}', "],", ' "', "x", "\\", "\n", "", '"bbox_2d": [']
EOT, OTHER_SPECIAL = "<|im_end|>", "<|im_start|>"
PIECES = TEXT_PIECES + list(COORD_TOKENS) + [EOT, OTHER_SPECIAL]
COORD_IDS = list(range(len(TEXT_PIECES), len(TEXT_PIECES) + 1000))
EOT_ID = len(PIECES) - 2
OTHER_ID = len(PIECES) - 1
P = {p: i for i, p in enumerate(TEXT_PIECES)}


def ids(*parts):
    """Token ids of parts: text pieces by value, ints as coordinate bins, "EOT" as end-of-turn."""
    out = []
    for part in parts:
        if part == "EOT":
            out.append(EOT_ID)
        elif isinstance(part, int):
            out.append(COORD_IDS[part])
        else:
            out.append(P[part])
    return out


def grammar(field_order="desc_first"):
    return CoordJSONGrammar(PIECES, COORD_IDS, EOT_ID, {OTHER_ID}, field_order)


REC = ['{"', "desc", '":', ' "', "red", " ", "circle", '", "', "bbox_2d", '": [', 1, ", ", 2, ", ", 30, ", ", 40, "]}"]
OPEN = ['{"', "objects", '":', " ["]

CASES = [
    # (name, field order, parts, expected final state or None)
    ("empty answer", "desc_first", [*OPEN, "]}", "EOT"], ("done", 0)),
    ("one record, BPE split", "desc_first", [*OPEN, *REC, "]}", "EOT"], ("done", 0)),
    ("two records", "desc_first", [*OPEN, *REC, ", ", *REC, "]", "}", "EOT"], ("done", 0)),
    ("prefix stops mid desc", "desc_first", [*OPEN, '{"', "desc", '":', ' "', "red"], ("desc", 1)),
    ("digits in bbox", "desc_first", [*OPEN, *REC[:10], "85"], None),
    ("coord token in desc", "desc_first", [*OPEN, '{"', "desc", '":', ' "', 5], None),
    ("empty desc", "desc_first", [*OPEN, '{"', "desc", '":', ' "', '", "'], None),
    ("blank desc", "desc_first", [*OPEN, '{"', "desc", '":', ' "', " ", '", "'], None),
    ("backslash in desc", "desc_first", [*OPEN, '{"', "desc", '":', ' "', "\\"], None),
    ("newline in desc", "desc_first", [*OPEN, '{"', "desc", '":', ' "', "\n"], None),
    ("five coords", "desc_first", [*OPEN, *REC[:-1], ", "], None),
    ("eot before close", "desc_first", [*OPEN, "EOT"], None),
    ("other special token", "desc_first", [*OPEN[:1]], ("open", 2)),
    ("wrong key order", "desc_first", [*OPEN, '{"', "bbox_2d"], None),
    ("geometry first", "geometry_first",
     [*OPEN, "{", '"bbox_2d": [', 1, ", ", 2, ", ", 30, ", ", 40, "],", ' "', "desc", '":', ' "', "x", '"}', "]}", "EOT"],
     ("done", 0)),
    ("geometry first rejects desc first", "geometry_first", [*OPEN, '{"', "desc"], None),
]


@pytest.mark.parametrize("name,field_order,parts,expected", CASES, ids=[c[0] for c in CASES])
def test_automaton_table(name, field_order, parts, expected):
    assert grammar(field_order).run(ids(*parts)) == expected


def test_special_and_empty_tokens_are_never_allowed():
    g = grammar()
    for state in [g.START, ("desc", 1), ("more", 0), ("c0", 0)]:
        allowed = g.transitions(state)
        assert OTHER_ID not in allowed
        assert P[""] not in allowed
    assert set(g.transitions(("c0", 0))) == set(COORD_IDS)
    assert set(g.transitions(("eot", 0))) == {EOT_ID}


def test_shortest_completion_by_hand():
    g = grammar()
    # {" objects '": [' (the piece '": [' beats '":' + ' [') then "]}" then EOT
    assert g.dist(g.START) == 5
    # inside a non-empty desc: '", "' bbox_2d '": [' C ", " C ", " C ", " C "]}" "]}" EOT
    assert g.dist(("desc", 1)) == 3 + 7 + 1 + 1 + 1
    # an empty desc cannot close with '", "', but the piece '{"' writes the desc "{" and closes it
    assert g.dist(("desc", 0)) == g.dist(("desc", 1))
    assert g.transitions(("desc", 0))[P['{"']] == ("after_desc", 1)
    assert P['", "'] not in g.transitions(("desc", 0))
    assert g.dist(("eot", 0)) == 1 and g.dist(g.DONE) == 0


def simulate(proc, vocab, score_fn, max_new, batch=3, pad_id=0, eot_id=EOT_ID, prompt_len=5):
    """Greedy decoding loop like `generate`: processor, argmax, finished rows get padding."""
    seq = torch.zeros(batch, prompt_len, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    for t in range(max_new):
        scores = proc(seq, score_fn(t, batch, vocab))
        nxt = scores.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        seq = torch.cat([seq, nxt[:, None]], 1)
        done |= nxt == eot_id
        if done.all():
            break
    return seq[:, prompt_len:].tolist()


def leaky_scores(bonus_ids, seed):
    gen = torch.Generator().manual_seed(seed)

    def fn(t, batch, vocab):
        s = torch.randn(batch, vocab, generator=gen)
        s[:, bonus_ids] += 50.0  # the leaking model: digits win everywhere
        return s

    return fn


def check_parseable(rows, pieces, eot_id, field_order, max_new):
    for row in rows:
        assert eot_id in row, "the answer must end with end-of-turn"
        n = row.index(eot_id)
        assert n + 1 <= max_new
        res = parse_prediction("".join(pieces[i] for i in row[:n]), field_order)
        assert not res.failed and not res.truncated and not res.malformed_container
        assert res.drops == {} and res.incomplete_tail == 0
        assert all(o.bins[2] > o.bins[0] and o.bins[3] > o.bins[1] for o in res.objects)


@pytest.mark.parametrize("field_order", ["desc_first", "geometry_first"])
@pytest.mark.parametrize("max_new", [5, 6, 20, 45, 80])
@pytest.mark.parametrize("seed", [0, 1])
def test_leaking_scores_still_give_parseable_answers(field_order, max_new, seed):
    g = grammar(field_order)
    proc = CoordJSONLogitsProcessor(g, prompt_len=5, max_new_tokens=max_new)
    rows = simulate(proc, len(PIECES), leaky_scores([P["85"], P["3"]], seed), max_new)
    check_parseable(rows, PIECES, EOT_ID, field_order, max_new)


def test_budget_exactly_the_empty_answer():
    g = grammar()
    proc = CoordJSONLogitsProcessor(g, prompt_len=5, max_new_tokens=g.dist(g.START))
    rows = simulate(proc, len(PIECES), leaky_scores([P["85"]], 0), 5)
    assert rows[0] == ids('{"', "objects", '": [', "]}", "EOT")


def test_unconstrained_leak_is_unparseable_without_the_processor():
    """The control: the same leaking scores without the processor give no container at all."""
    identity = lambda ids_, scores: scores  # noqa: E731
    rows = simulate(identity, len(PIECES), leaky_scores([P["85"], P["3"]], 0), 20)
    texts = ["".join(PIECES[i] for i in r) for r in rows]
    assert all(parse_prediction(t).failed for t in texts)


@pytest.mark.parametrize(
    "prefs,expected",
    [
        # x1/y1 want 500 then 100: x2/y2 may not be <= 500, so the first allowed tie (bin 501) wins
        ({500: 30.0, 100: 20.0}, (500, 500, 501, 501)),
        # x1/y1 want 999, which is blocked for them (nothing would be left for x2): bin 0 (first tie)
        ({999: 30.0}, (0, 0, 999, 999)),
    ],
)
def test_no_degenerate_box_even_when_the_model_wants_one(prefs, expected):
    g = grammar()

    def fn(t, batch, vocab):
        s = torch.zeros(batch, vocab)
        for k, v in prefs.items():
            s[:, COORD_IDS[k]] = v
        s[:, P["x"]] = 10.0
        return s

    proc = CoordJSONLogitsProcessor(g, prompt_len=5, max_new_tokens=40)
    rows = simulate(proc, len(PIECES), fn, 40, batch=1)
    text = "".join(PIECES[i] for i in rows[0][:-1])
    res = parse_prediction(text)
    assert res.drops == {} and len(res.objects) >= 1
    assert res.objects[0].bins == expected


def test_logits_wider_than_the_vocabulary_are_masked():
    g = CoordJSONGrammar(PIECES, COORD_IDS, EOT_ID, {OTHER_ID}, vocab_size=len(PIECES))
    proc = CoordJSONLogitsProcessor(g, prompt_len=2, max_new_tokens=30)
    scores = torch.zeros(1, len(PIECES) + 7)
    scores[0, -1] = 100.0  # an id beyond the tokenizer (padded embedding rows)
    out = proc(torch.zeros(1, 2, dtype=torch.long), scores)
    assert out[0, -7:].eq(-math.inf).all()
    assert out[0].argmax().item() == P['{"']


@pytest.mark.parametrize("field_order", ["desc_first", "geometry_first"])
def test_tiny_tokenizer_leak_made_parseable(field_order):
    from vlmdet.model.load import token_pieces
    from vlmdet.model.tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    pieces = [token_pieces(tok, [i])[0] for i in range(len(tok))]
    coord_ids = tok.convert_tokens_to_ids(list(COORD_TOKENS))
    eot = tok.convert_tokens_to_ids(EOT)
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special} - set(coord_ids) - {eot}
    digits = [i for i, p in enumerate(pieces) if p.strip().isdigit() and i not in special]
    assert len(digits) >= 10
    g = CoordJSONGrammar(pieces, coord_ids, eot, special, field_order, vocab_size=len(tok))
    # the structure pieces are single tokens: the empty answer is 3 tokens
    assert g.dist(g.START) == 3
    for max_new in (3, 30, 64):
        proc = CoordJSONLogitsProcessor(g, prompt_len=5, max_new_tokens=max_new)
        rows = simulate(proc, len(tok), leaky_scores(digits, max_new), max_new, pad_id=tok.pad_token_id, eot_id=eot)
        check_parseable(rows, pieces, eot, field_order, max_new)


def test_prompt_length_defaults_to_the_first_call():
    g = grammar()
    proc = CoordJSONLogitsProcessor(g, max_new_tokens=None)
    seq = torch.full((2, 7), P["x"])  # a 7-token prompt of arbitrary ids
    out = proc(seq, torch.zeros(2, len(PIECES)))
    assert proc.prompt_len == 7
    allowed = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert allowed == [P['{"'], P["{"]]  # only pieces that start the container
    seq = torch.cat([seq, torch.tensor([[P['{"']], [P["{"]]])], 1)
    proc(seq, torch.zeros(2, len(PIECES)))
    assert proc.states == [("open", 2), ("open", 1)]
