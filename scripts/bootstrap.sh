#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project into it, with the extras given as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="gevent${1:+,$1}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
