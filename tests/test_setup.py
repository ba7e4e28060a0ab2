"""scripts/setup.sh: which torch build a machine gets (`--print-torch-command`, nothing installed)."""

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def _torch_command(env_extra: dict, path_prefix: Path | None = None) -> str:
    env = {**os.environ, "PYTHON": sys.executable, **env_extra}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    else:  # no nvidia-smi on this PATH
        env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not (Path(p) / "nvidia-smi").exists())
    out = subprocess.run(["bash", str(SETUP), "--print-torch-command"], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


@pytest.fixture
def cpu_index(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<a href='torch-2.13.0+cpu.whl'>torch</a>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_no_gpu_and_a_reachable_cpu_index_adds_it(cpu_index):
    assert _torch_command({"VLMDET_TORCH_CPU_INDEX": cpu_index}) == \
        f"pip install --extra-index-url {cpu_index} torch==2.13.0"


def test_no_gpu_and_no_cpu_index_keeps_the_configured_indexes():
    assert _torch_command({"VLMDET_TORCH_CPU_INDEX": "http://127.0.0.1:9/"}) == "pip install torch==2.13.0"


def test_gpu_machine_gets_the_default_build(tmp_path, cpu_index):
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    assert _torch_command({"VLMDET_TORCH_CPU_INDEX": cpu_index}, tmp_path) == "pip install torch>=2.4"
