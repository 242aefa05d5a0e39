#!/usr/bin/env bash
# The test command of the README and of CI: installs everything the tests need, then runs them.
# Needs only Python 3.11+ with pip (and, for the nginx load-balancer test, apt as root).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Debian installs nginx in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if ! command -v nginx >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing nginx (for the load-balancer test)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Versions pinned by uv.lock (exported with: uv export --extra test --no-hashes --no-emit-project).
.venv/bin/python -m pip install -q -r requirements-test.txt
.venv/bin/python -m pip install -q --no-deps -e .
exec .venv/bin/python -m pytest "$@"
