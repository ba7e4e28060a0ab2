# The two commands of the README:
#   make demo   set up .venv and run the main job (vlmdet demo on the embedded default)
#   make test   set up .venv (and .venv-vllm for the vLLM backend) with test dependencies and run the
#               whole test suite, then the model tests again on the lowest transformers pyproject.toml
#               allows (.venv-floor, a folder in front of .venv on PYTHONPATH)
.PHONY: demo test setup setup-dev setup-vllm setup-floor test-floor bench bench-rollout

# the tests of every path that depends on the transformers release (model classes, forward keywords,
# caches, gradient checkpointing, Trainer, generation, checkpoint files)
FLOOR_TESTS = tests/test_forward.py tests/test_prefix_kv.py tests/test_channel_a.py tests/test_channel_b.py \
              tests/test_trainer_stage1.py tests/test_stage2_train.py tests/test_rollout.py tests/test_load.py \
              tests/test_expand.py
# less the repetitions that exercise nothing release-specific: the prefix-reuse equivalence for 2 of
# its 18 (N, grad mode, context) settings, and a learning-dynamics test
FLOOR_SELECT = (not full_recompute or 2-unroll-soft or 2-em_detach-hard) and not gate_keeps_coord_vocab_mass

setup:
	@scripts/setup.sh

setup-dev:
	@scripts/setup.sh dev

setup-vllm:
	@scripts/setup.sh vllm

setup-floor: setup-dev
	@scripts/setup.sh floor

demo: setup
	.venv/bin/vlmdet demo

# the three environments, .venv-vllm built beside .venv and .venv-floor (each pip install mostly waits on
# one core, unzipping); then the main suite, the vLLM tests in their own environment (one process: one
# engine), the model tests on the floor release
test:
	@$(MAKE) --no-print-directory -j2 setup-vllm setup-floor
	.venv/bin/python -m pytest -n 2 -q
	.venv-vllm/bin/python -m pytest -q tests/test_vllm_rollout.py
	@$(MAKE) --no-print-directory test-floor

test-floor: setup-floor
	PYTHONPATH=.venv-floor .venv/bin/python -m pytest -n 2 -q $(FLOOR_TESTS) -k "$(FLOOR_SELECT)"

bench: setup-dev
	.venv/bin/python benchmarks/bench_parse.py

bench-rollout: setup-vllm
	.venv-vllm/bin/python benchmarks/bench_rollout.py
