"""Shared test set-up: one torch thread per test worker (the suite runs with `-n 2` on 2 cores).

Tests named `test_vllm_*.py` need vLLM, which lives in a second environment (`scripts/setup.sh vllm`,
`.venv-vllm`; `make test` runs them there): where vllm is not installed they are not collected."""

import importlib.util
import os

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
