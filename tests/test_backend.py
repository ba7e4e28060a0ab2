"""make_backend: the backend `rollout.backend` names, HF whenever a per-step hook is needed, and a one-line
error naming the setup command where vllm is missing."""

import sys

import pytest

from vlmdet.config import config_from_dict
from vlmdet.errors import UsageError
from vlmdet.evaluate.backend import make_backend
from vlmdet.evaluate.rollout import HFRollout


def test_hf_backend_is_hf_rollout(loaded):
    assert isinstance(make_backend(loaded, config_from_dict({"rollout": {"backend": "hf"}})), HFRollout)


def test_make_backend_vllm_without_vllm_says_how_to_install(loaded, monkeypatch):
    """rollout.backend vllm where vllm cannot be imported: a UsageError naming the setup command; the
    grammar-constrained pass never needs vllm (it runs on HF)."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    cfg = config_from_dict({"rollout": {"backend": "vllm"}})
    with pytest.raises(UsageError, match=r"vllm is not installed.*scripts/setup.sh vllm"):
        make_backend(loaded, cfg)
    assert isinstance(make_backend(loaded, cfg, constrained=True), HFRollout)
