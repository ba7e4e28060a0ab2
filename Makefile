# The two commands of the README:
#   make demo   set up .venv and run the main job (vlmdet demo on the embedded default)
#   make test   set up .venv (and .venv-vllm for the vLLM backend) with test dependencies and run the
#               whole test suite
.PHONY: demo test setup setup-dev setup-vllm bench bench-rollout

setup:
	@scripts/setup.sh

setup-dev:
	@scripts/setup.sh dev

setup-vllm:
	@scripts/setup.sh vllm

demo: setup
	.venv/bin/vlmdet demo

# the main suite, then the vLLM tests in their own environment (one process: one engine)
test: setup-dev setup-vllm
	.venv/bin/python -m pytest -n 2 -q
	.venv-vllm/bin/python -m pytest -q tests/test_vllm_rollout.py

bench: setup-dev
	.venv/bin/python benchmarks/bench_parse.py

bench-rollout: setup-vllm
	.venv-vllm/bin/python benchmarks/bench_rollout.py
