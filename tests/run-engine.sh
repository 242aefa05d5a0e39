#!/usr/bin/env bash
# The real-engine tests: installs vLLM's CPU build into .venv-vllm (once; about 3.4 GB), then
# runs tests/engine/ through tests/run.sh (which sets up the project's .venv). Not part of
# tests/run.sh: the install alone takes minutes, and vLLM needs about 4 GB of memory.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
bash bench/engine/setup.sh
echo "vLLM venv ready in $((SECONDS - started)) s"
exec bash tests/run.sh tests/engine "$@"
