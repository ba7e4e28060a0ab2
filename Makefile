# The two commands of the README:
#   make demo   set up .venv and run the main job (vlmdet demo on the embedded default)
#   make test   set up .venv with test dependencies and run the whole test suite
.PHONY: demo test setup setup-dev bench

setup:
	@scripts/setup.sh

setup-dev:
	@scripts/setup.sh dev

demo: setup
	.venv/bin/vlmdet demo

test: setup-dev
	.venv/bin/python -m pytest -n 2 -q

bench: setup-dev
	.venv/bin/python benchmarks/bench_parse.py
