"""HFRollout on the real tiny Qwen3-VL: forced answers come back token-exact, stop / max-tokens flags,
per-token statistics equal a teacher-forced forward (the unprocessed distribution), left padding,
seeding."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor

from vlmdet.config import PromptConfig, RolloutConfig
from vlmdet.data.records import load_records
from vlmdet.evaluate.rollout import HFRollout, Rollout, RolloutBackend

ANSWER = '{"objects": [{"desc": "red circle", "bbox_2d": [<|coord_111|>, <|coord_111|>, <|coord_555|>, <|coord_555|>]}]}'


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Three noise images of two sizes (so left padding is exercised)."""
    d = tmp_path_factory.mktemp("rollout_data")
    rng = np.random.default_rng(0)
    rows = []
    for i, (w, h) in enumerate([(64, 64), (32, 64), (64, 32)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"im{i}.png")
        rows.append({"image_id": f"im{i}", "image": f"im{i}.png", "width": w, "height": h,
                     "objects": [{"desc": "red circle", "bbox_2d": [1.0, 1.0, 20.0, 20.0]}]})
    (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_records(d / "val.jsonl")


class ForceTokens(LogitsProcessor):
    """Logits processor forcing row r to emit seqs[r] then end-of-turn (everything else -inf)."""

    def __init__(self, seqs, eot_id):
        self.seqs, self.eot_id, self.start = seqs, eot_id, None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        t = input_ids.shape[1] - self.start
        out = torch.full_like(scores, -math.inf)
        for r, seq in enumerate(self.seqs):
            out[r, seq[t] if t < len(seq) else self.eot_id] = 0.0
        return out


def forcing(loaded, answers):
    """extra_processors factory: image_id -> answer text, tokenized with the model's tokenizer."""
    tok = loaded.tokenizer
    seqs = {k: tok(v, add_special_tokens=False)["input_ids"] for k, v in answers.items()}
    return lambda recs: [ForceTokens([seqs[r.image_id] for r in recs], loaded.eot_id)]


def teacher_forced_stats(loaded, record, gen_ids):
    """log p(gen token) and coord-vocab mass at each generated position, from one plain forward."""
    from vlmdet.data.records import load_image
    from vlmdet.model.chat import encode_example

    ex = encode_example(loaded, load_image(record), None)
    ids = torch.cat([ex["input_ids"], torch.tensor(gen_ids)])[None]
    mm = torch.cat([ex["mm_token_type_ids"], torch.zeros(len(gen_ids), dtype=ex["mm_token_type_ids"].dtype)])[None]
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=ex["pixel_values"],
                              image_grid_thw=ex["image_grid_thw"][None], mm_token_type_ids=mm).logits[0]
    loaded.model.model.rope_deltas = None
    p = len(ex["input_ids"])
    logp = torch.log_softmax(logits[p - 1 : p - 1 + len(gen_ids)].float(), -1)
    chosen = logp.gather(1, torch.tensor(gen_ids)[:, None])[:, 0]
    mass = logp[:, loaded.coord_ids].exp().sum(-1)
    return chosen, mass


def test_backend_protocol(loaded):
    assert isinstance(HFRollout(loaded, RolloutConfig(max_new_tokens=4), PromptConfig()), RolloutBackend)


def test_forced_answers_come_back_exactly(loaded, records):
    answers = {"im0": ANSWER, "im1": '{"objects": []}', "im2": ANSWER.replace("red circle", "blue square")}
    be = HFRollout(loaded, RolloutConfig(max_new_tokens=40, batch_size=2), PromptConfig(), extra_processors=forcing(loaded, answers),
                   progress=False)
    out = be.generate(records, seed=0)
    assert [type(r) for r in out] == [Rollout] * 3
    for rec, ro in zip(records, out):
        want = loaded.tokenizer(answers[rec.image_id], add_special_tokens=False)["input_ids"] + [loaded.eot_id]
        assert ro.token_ids == want
        assert ro.text == answers[rec.image_id]
        assert ro.stopped and not ro.hit_max
        assert len(ro.logprobs) == len(ro.coord_mass) == len(ro.pieces) == len(want)


def test_max_new_tokens_hit(loaded, records):
    be = HFRollout(loaded, RolloutConfig(max_new_tokens=7, batch_size=3), PromptConfig(),
                   extra_processors=forcing(loaded, {r.image_id: ANSWER for r in records}), progress=False)
    out = be.generate(records)
    full = loaded.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    for ro in out:
        assert ro.token_ids == full[:7]
        assert ro.hit_max and not ro.stopped
        assert ro.text == "".join(ro.pieces)


def test_statistics_are_the_unprocessed_distribution(loaded, records):
    """Under forcing (all scores -inf but one) the recorded log-probs are still the model's own:
    equal to a teacher-forced forward over prompt + generated tokens, for every row of a left-padded
    batch of differently sized images."""
    answers = {r.image_id: ANSWER for r in records}
    be = HFRollout(loaded, RolloutConfig(max_new_tokens=40, batch_size=3, repetition_penalty=1.3), PromptConfig(),
                   extra_processors=forcing(loaded, answers), progress=False)
    out = be.generate(records)
    for rec, ro in zip(records, out):
        lp, mass = teacher_forced_stats(loaded, rec, ro.token_ids)
        np.testing.assert_allclose(ro.logprobs, lp.numpy(), atol=2e-4)
        np.testing.assert_allclose(ro.coord_mass, mass.numpy(), atol=2e-4)
        assert all(v < 0 for v in ro.logprobs)  # a random model: nothing has probability 1


def test_batching_does_not_change_results(loaded, records):
    force = forcing(loaded, {r.image_id: ANSWER for r in records})
    one = HFRollout(loaded, RolloutConfig(max_new_tokens=40, batch_size=1), PromptConfig(), extra_processors=force, progress=False)
    three = HFRollout(loaded, RolloutConfig(max_new_tokens=40, batch_size=3), PromptConfig(), extra_processors=force, progress=False)
    for a, b in zip(one.generate(records), three.generate(records)):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-4)
        np.testing.assert_allclose(a.coord_mass, b.coord_mass, atol=2e-4)
    # the images differ, so the rows' statistics differ (the vision input reached the model)
    a = one.generate(records[:2])
    assert not np.allclose(a[0].logprobs, a[1].logprobs, atol=1e-6)


def test_sampling_seed_is_reproducible_and_isolated(loaded, records):
    cfg = RolloutConfig(max_new_tokens=6, batch_size=3, do_sample=True, temperature=3.0)
    be = HFRollout(loaded, cfg, PromptConfig(), progress=False)
    torch.manual_seed(123)
    a = be.generate(records, seed=7)
    after_a = torch.rand(3)
    torch.manual_seed(123)
    b = be.generate(records, seed=7)
    after_b = torch.rand(3)
    c = be.generate(records, seed=8)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    torch.manual_seed(123)
    assert torch.equal(after_a, torch.rand(3)) and torch.equal(after_a, after_b)  # caller's RNG untouched


def test_repetition_penalty_changes_tokens_not_the_recorded_distribution(loaded, records):
    """HF's penalty also counts prompt tokens: under a huge penalty greedy never repeats a token of the
    prompt or of its own output; the recorded statistics stay those of the raw distribution."""
    from vlmdet.data.records import load_image
    from vlmdet.model.chat import encode_example

    plain = HFRollout(loaded, RolloutConfig(max_new_tokens=4), PromptConfig(), progress=False).generate(records[:1])[0]
    pen = HFRollout(loaded, RolloutConfig(max_new_tokens=4, repetition_penalty=1e4), PromptConfig(), progress=False).generate(records[:1])[0]
    prompt = set(encode_example(loaded, load_image(records[0]), None)["input_ids"].tolist())
    assert len(set(pen.token_ids)) == 4 and not set(pen.token_ids) & prompt
    assert pen.coord_mass[0] == pytest.approx(plain.coord_mass[0], abs=1e-6)
    lp, mass = teacher_forced_stats(loaded, records[0], pen.token_ids)
    np.testing.assert_allclose(pen.logprobs, lp.numpy(), atol=2e-4)
    np.testing.assert_allclose(pen.coord_mass, mass.numpy(), atol=2e-4)
    assert pen.logprobs[0] <= plain.logprobs[0] + 1e-6  # plain greedy took the raw argmax


def test_grammar_for_a_loaded_model_is_cached_and_blocks_chat_tokens(loaded):
    from vlmdet.evaluate.constrained import grammar_for

    g = grammar_for(loaded)
    assert grammar_for(loaded) is g and grammar_for(loaded, "geometry_first") is not g
    tok = loaded.tokenizer
    for name in ("<|im_start|>", "<|image_pad|>", "<|vision_start|>", "<|endoftext|>"):
        assert tok.convert_tokens_to_ids(name) in g.blocked, name
    assert loaded.eot_id not in g.blocked and not (set(loaded.coord_ids) & g.blocked)
    assert g.vocab_size == loaded.model.get_output_embeddings().weight.shape[0]
    # the structure pieces of the tiny tokenizer are single tokens: 3 tokens for the empty answer
    assert g.dist(g.START) == 3


def test_extra_processors_accept_lists_single_processors_and_factories(loaded, records):
    from transformers import LogitsProcessorList

    forced = forcing(loaded, {r.image_id: ANSWER for r in records[:1]})(records[:1])[0]
    for extra in ([forced], LogitsProcessorList([forced]), forced):
        forced.start = None
        be = HFRollout(loaded, RolloutConfig(max_new_tokens=40), PromptConfig(), extra_processors=extra, progress=False)
        assert be.generate(records[:1])[0].text == ANSWER
    factory_calls = []
    be = HFRollout(loaded, RolloutConfig(max_new_tokens=3, batch_size=2), PromptConfig(), progress=False,
                   extra_processors=lambda recs: factory_calls.append([r.image_id for r in recs]) or [])
    be.generate(records)
    assert factory_calls == [["im0", "im1"], ["im2"]]
