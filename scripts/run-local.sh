#!/usr/bin/env bash
# Install what is missing, then run the whole pipeline on the local stack (Ctrl-C stops everything).
# Extra arguments go to `python -m sluice up` (e.g. --duration 120 for a bounded run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m sluice up "$@"
