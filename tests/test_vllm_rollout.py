"""VLLMRollout on a real vLLM engine (CPU build) against HFRollout on the shipped demo checkpoint.

These tests need `vllm`, which pins a transformers older than the main environment's: they run in the
second environment made by `scripts/setup.sh vllm` (`make test` runs them there, in one process, so
the engine is built once). In the main environment they are not collected (tests/conftest.py).

References are independent: HF `generate` (transformers) for tokens and log-probabilities, a
teacher-forced prompt built by `model.chat.encode_example`, HF again after a real optimizer step.
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from vlmdet.config import PromptConfig, RolloutConfig, config_from_dict
from vlmdet.data.records import load_image, load_records
from vlmdet.demo import shipped_stage1
from vlmdet.errors import UsageError
from vlmdet.evaluate.backend import make_backend
from vlmdet.evaluate.rollout import HFRollout, RolloutBackend
from vlmdet.evaluate.vllm_rollout import VLLMRollout, request_seed
from vlmdet.model.chat import encode_example

PROMPT_TEXT = {"system": "You detect objects.", "user": "List every object in the image as CoordJSON."}
PROMPT = PromptConfig(**PROMPT_TEXT)
#: a small KV cache (CPU) and sequence cap
ROLLOUT_KEYS = {"max_new_tokens": 96, "batch_size": 8, "vllm_kv_cache_gib": 0.25, "vllm_max_model_len": 1024}
ROLLOUT = RolloutConfig(**ROLLOUT_KEYS)
#: observed max |vLLM - HF| over these tests: ~1e-5 (float32, different kernels and summation order)
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from vlmdet.data.synth import make_synth

    d = tmp_path_factory.mktemp("vllm_synth")
    make_synth(d, n_train=1, n_val=8, seed=1)
    return load_records(d / "val.jsonl")


@pytest.fixture(scope="module")
def loaded():
    from vlmdet.model.load import load_model

    return load_model(str(shipped_stage1()))


@pytest.fixture(scope="module")
def vllm_backend(loaded):
    return VLLMRollout(loaded, ROLLOUT, PROMPT)


@pytest.fixture(scope="module")
def hf_greedy(loaded, records):
    return HFRollout(loaded, ROLLOUT, PROMPT, progress=False).generate(records)


def test_vllm_backend_protocol_and_prompt_ids(vllm_backend, loaded, records):
    """The prompt vLLM builds (chat text + its image processor's placeholder expansion) is the training
    path's token for token."""
    assert isinstance(vllm_backend, RolloutBackend)
    for rec in records[:3]:
        out = vllm_backend.llm.generate([vllm_backend._prompt(rec)], [vllm_backend._params(None, 0)], use_tqdm=False)
        want = encode_example(loaded, load_image(rec), None, PROMPT)["input_ids"].tolist()
        assert list(out[0].prompt_token_ids) == want


def test_vllm_greedy_equals_hf_generate(vllm_backend, hf_greedy, records):
    out = vllm_backend.generate(records)
    assert len(out) == len(records)
    n_stopped = 0
    for hf, vl in zip(hf_greedy, out):
        assert vl.token_ids == hf.token_ids
        assert (vl.stopped, vl.hit_max, vl.text, vl.pieces) == (hf.stopped, hf.hit_max, hf.text, hf.pieces)
        np.testing.assert_allclose(vl.logprobs, hf.logprobs, atol=LOGPROB_ATOL)
        np.testing.assert_allclose(vl.coord_mass, hf.coord_mass, atol=LOGPROB_ATOL)
        n_stopped += vl.stopped
    assert n_stopped == len(records)  # the trained checkpoint closes its answers
    coord = set(vllm_backend.loaded.coord_ids)
    assert any(m > 0.5 for r in out for t, m in zip(r.token_ids, r.coord_mass) if t in coord)
    assert any("bbox_2d" in r.text for r in out)  # real detections, not empty answers


def test_vllm_max_new_tokens(loaded, records, hf_greedy):
    be = VLLMRollout(loaded, RolloutConfig(**{**ROLLOUT_KEYS, "max_new_tokens": 5}), PROMPT)
    for hf, vl in zip(hf_greedy, be.generate(records[:3])):
        assert vl.token_ids == hf.token_ids[:5]
        assert vl.hit_max and not vl.stopped
        assert vl.text == "".join(vl.pieces)


def test_vllm_sampling_is_seeded_per_call(loaded, records):
    be = VLLMRollout(loaded, RolloutConfig(**{**ROLLOUT_KEYS, "do_sample": True, "temperature": 2.0, "max_new_tokens": 12}), PROMPT)
    a = be.generate(records[:4], seed=7)
    b = be.generate(records[:4], seed=7)
    c = be.generate(records[:4], seed=8)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    # the statistics stay those of the unprocessed distribution: temperature does not enter them
    assert all(lp < 0 for r in a for lp in r.logprobs)
    assert request_seed(7, 0) != request_seed(7, 1) != request_seed(8, 0)
    with pytest.raises(UsageError, match="rollout.temperature: 3.0 must be in"):
        VLLMRollout(loaded, RolloutConfig(**{**ROLLOUT_KEYS, "do_sample": True, "temperature": 3.0}), PROMPT)


def test_vllm_repetition_penalty_matches_hf(loaded, records):
    cfg = RolloutConfig(**{**ROLLOUT_KEYS, "repetition_penalty": 1.3, "max_new_tokens": 24})
    hf = HFRollout(loaded, cfg, PROMPT, progress=False).generate(records[:4])
    vl = VLLMRollout(loaded, cfg, PROMPT).generate(records[:4])
    plain = HFRollout(loaded, dataclasses.replace(cfg, repetition_penalty=1.0), PROMPT, progress=False).generate(records[:4])
    assert [r.token_ids for r in hf] != [r.token_ids for r in plain]  # the penalty changed the answers
    for h, v in zip(hf, vl):
        assert v.token_ids == h.token_ids
        # statistics before the penalty on both backends (HF's recorder runs first; vLLM's raw
        # log-probs and the mass recorder run before penalties)
        np.testing.assert_allclose(v.logprobs, h.logprobs, atol=LOGPROB_ATOL)
        np.testing.assert_allclose(v.coord_mass, h.coord_mass, atol=LOGPROB_ATOL)


def test_vllm_eval_metrics_equal_hf(loaded, records):
    from vlmdet.evaluate.runner import run_rollout_eval

    cfg = config_from_dict({"prompt": PROMPT_TEXT, "rollout": {**ROLLOUT_KEYS, "backend": "vllm"},
                            "eval": {"max_samples": 8}, "monitor": {"enabled": False}})
    backend = make_backend(loaded, cfg)
    assert isinstance(backend, VLLMRollout)
    assert isinstance(make_backend(loaded, cfg, constrained=True), HFRollout)  # grammar runs on HF
    vl = run_rollout_eval(loaded, records, cfg, backend=backend, progress=False)
    hf = run_rollout_eval(loaded, records, cfg, backend=HFRollout(loaded, cfg.rollout, cfg.prompt, progress=False),
                          progress=False)
    timing = {k for k in hf if k.startswith("eval_time/")}
    assert {k for k in vl if not k.startswith("eval_time/")} == hf.keys() - timing
    for k in hf.keys() - timing:
        assert vl[k] == pytest.approx(hf[k], abs=1e-6), k
    assert hf["eval_rollout/tp"] > 0  # a real detector: equal metrics are not all zeros
    assert vl["eval_time/weight_sync_s"] >= 0.0


def _train_step(model, loaded, records, lr):
    """One SGD step on the CE of a deliberately wrong answer (another image's), so greedy output moves."""
    from vlmdet.format import render_answer

    wrong = render_answer(records[1].bins())
    ex = encode_example(loaded, load_image(records[0]), wrong, PROMPT)
    model.train()
    out = model(input_ids=ex["input_ids"][None], attention_mask=torch.ones_like(ex["input_ids"])[None],
                pixel_values=ex["pixel_values"], image_grid_thw=ex["image_grid_thw"][None],
                mm_token_type_ids=ex["mm_token_type_ids"][None], labels=ex["labels"][None])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out.loss.backward()
    opt.step()
    opt.zero_grad()
    model.eval()
    model.model.rope_deltas = None


def test_vllm_weight_sync_after_optimizer_step(loaded, records, hf_greedy):
    """After a real optimizer step on a copy of the policy, the engine's greedy output equals HF's from
    the updated weights (and differs from the old output); unchanged weights are not pushed again."""
    policy = copy.deepcopy(loaded.model)
    moved = copy.copy(loaded)
    moved.model = policy
    be = VLLMRollout(moved, ROLLOUT, PROMPT)
    be.generate(records[:1])  # policy == checkpoint weights: one push (a new model object)
    assert be.last_sync["pushed"] == 1.0 and be.last_sync["bytes"] > 0
    be.generate(records[:1])
    assert be.last_sync["pushed"] == 0.0  # nothing changed since the last push

    _train_step(policy, moved, records, lr=0.5)
    want = HFRollout(moved, ROLLOUT, PROMPT, progress=False).generate(records)
    assert [r.token_ids for r in want] != [r.token_ids for r in hf_greedy]  # the step changed the answers
    got = be.generate(records)
    assert be.last_sync["pushed"] == 1.0 and be.last_sync["seconds"] > 0
    for hf, vl in zip(want, got):
        assert vl.token_ids == hf.token_ids
        np.testing.assert_allclose(vl.logprobs, hf.logprobs, atol=LOGPROB_ATOL)

    # back to the original policy: pushed again (another model object), old answers again
    back = VLLMRollout(loaded, ROLLOUT, PROMPT).generate(records)
    assert [r.token_ids for r in back] == [r.token_ids for r in hf_greedy]

    # writes through `.data` (DeepSpeed's) keep the version counter; the fingerprint still sees them
    fp = be.sync.fingerprint(policy)
    p = next(policy.parameters())
    version = p._version
    p.data.add_(1e-3)
    assert p._version == version
    assert be.sync.fingerprint(policy) != fp


def test_vllm_bench_rollout_script_runs(capsys):
    """benchmarks/bench_rollout.py (docs/BENCHMARKS.md) with tiny numbers, in this process (same engine)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rollout.py"
    spec = importlib.util.spec_from_file_location("bench_rollout", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--batches", "1", "2", "--repeats", "1", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert "weight push:" in out
    assert "| 1 |" in out and "| 2 |" in out
    assert "(2/2 answers token-identical)" in out
