"""Shared test set-up: one torch thread per test worker (the suite runs with `-n 2` on 2 cores).

Tests named `test_vllm_*.py` need vLLM, which lives in a second environment (`scripts/setup.sh vllm`,
`.venv-vllm`; `make test` runs them there): where vllm is not installed they are not collected."""

import importlib.util
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the CPU engine shares the box; no core pinning
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

collect_ignore_glob = [] if importlib.util.find_spec("vllm") else ["test_vllm_*.py"]

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="module")
def loaded(request):
    """The tiny Qwen3-VL (`load_model("tiny")`), loaded once per test module, so a module that trains it or
    edits its weights affects no other module. Eval mode, or train mode where the module sets
    `MODEL_MODE = "train"`."""
    from vlmdet.model.load import load_model  # here: tests of the pure modules run without transformers

    ld = load_model("tiny")
    ld.model.train(getattr(request.module, "MODEL_MODE", "eval") == "train")
    return ld


@pytest.fixture(scope="module")
def batch(loaded):
    """Two encoded samples of different image sizes (64x64 with 2 objects, 64x32 with 1), collated with
    right padding: the samples' first coordinate slots sit at different rows."""
    from PIL import Image

    from vlmdet.format import render_answer
    from vlmdet.model.chat import encode_example
    from vlmdet.model.collate import Collator

    exs = [
        encode_example(loaded, Image.new("RGB", (64, 64), (200, 10, 10)),
                       render_answer([("red circle", (10, 20, 300, 400)), ("blue square", (50, 60, 70, 80))])),
        encode_example(loaded, Image.new("RGB", (64, 32), (10, 10, 200)), render_answer([("green triangle", (1, 2, 903, 904))])),
    ]
    return Collator(loaded.pad_id)(exs)
