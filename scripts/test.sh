#!/usr/bin/env bash
# Installs what the tests need (redis-server from Debian, the dev extras) and runs every check.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" or scripts/test.sh -n 0 tests/unit.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi
scripts/bootstrap.sh aws,gateway,dev
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
# The integration tests start their own redis-server, echo model servers and workers on 127.0.0.1.
# Most of their time is spent waiting on those processes, so four pytest processes share two cores;
# a file's tests stay together (they share its servers). Pass -n 0 to run in one process.
exec .venv/bin/python -m pytest -n 4 --dist loadfile "$@"
