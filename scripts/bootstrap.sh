#!/usr/bin/env bash
# Creates .venv (if missing) and installs into it exactly what uv.lock pins for the extras given
# as arguments (gevent always), every file checked against the lock's hashes, then the project
# itself, editable, without dependencies. Needs only Python 3.11+ with venv and pip: uv comes
# from PyPI through pip, pinned by hash in scripts/uv-requirements.txt.
#   scripts/bootstrap.sh                  # gevent
#   scripts/bootstrap.sh aws,gateway,dev  # what scripts/test.sh needs
#   PYTHON=python3.12 scripts/bootstrap.sh  # another interpreter for a new .venv
set -euo pipefail
cd "$(dirname "$0")/.."
extras="gevent${1:+,$1}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
uv_version="$(sed -n 's/^uv==\([0-9.]*\).*/\1/p' scripts/uv-requirements.txt)"
if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$uv_version" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --require-hashes -r scripts/uv-requirements.txt
fi

extra_flags=()
IFS=, read -ra names <<<"$extras"
for name in "${names[@]}"; do
  extra_flags+=(--extra "$name")
done
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
# --frozen: install what the lock says, never re-resolve (tests/unit/test_lock.py checks that
# the lock still matches pyproject.toml).
.venv/bin/uv export --quiet --frozen --no-emit-project --format requirements-txt \
  "${extra_flags[@]}" --output-file "$pins"
.venv/bin/uv pip install --quiet --python .venv/bin/python --require-hashes -r "$pins"
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
