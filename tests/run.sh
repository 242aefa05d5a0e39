#!/usr/bin/env bash
# The test command of the README and of CI: installs everything the tests need, then runs them.
# Needs only Python 3.11+ with pip (and, for nginx and openssl if missing, apt as root).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Debian installs nginx in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
# nginx for the load-balancer test, openssl for the https test's certificate.
missing=""
for tool in nginx openssl; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing$missing with apt"
  # shellcheck disable=SC2086
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Versions pinned by uv.lock (exported with: uv export --extra test --no-hashes --no-emit-project).
.venv/bin/python -m pip install -q -r requirements-test.txt
.venv/bin/python -m pip install -q --no-deps -e .
exec .venv/bin/python -m pytest "$@"
