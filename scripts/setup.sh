#!/usr/bin/env bash
# Create .venv and install vlmdet into it. Idempotent: a second run only checks.
#   scripts/setup.sh          runtime dependencies (what `vlmdet demo` needs)
#   scripts/setup.sh dev      runtime + test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.vlmdet-installed${extra:+-$extra}"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "setup: GPU found; installing the default torch build" >&2
        .venv/bin/python -m pip install -q "torch>=2.4"
    else
        echo "setup: no GPU; installing the CPU build torch==2.13.0" >&2
        .venv/bin/python -m pip install -q "torch==2.13.0"
    fi
fi
if [ "$extra" = "dev" ]; then
    .venv/bin/python -m pip install -q -e ".[dev]"
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
