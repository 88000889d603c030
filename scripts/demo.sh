#!/usr/bin/env bash
# Sets everything up and runs the demo: echo model server + worker on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/forwarder demo "$@"
