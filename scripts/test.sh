#!/usr/bin/env bash
# Install what is missing, then run every test: unit, integration (real PostgreSQL, Redis, Azurite and
# Sluice's emulators through the real SDKs) and end-to-end. Extra arguments go to pytest.
# The tests run on pytest-xdist workers (pyproject.toml's addopts: 4 workers; one file alone runs without any);
# SLUICE_TEST_WORKERS=N sets the number, 0 runs everything in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The `sluice up` shutdown tests start whole stacks (seven processes each): they run alone, after the rest, so
# their load does not starve the tests bound by a timeout (lookups, state, token renewal) on two cores.
SHUTDOWN=tests/e2e/test_localstack_shutdown.py
.venv/bin/python -m pytest --ignore="$SHUTDOWN"
exec .venv/bin/python -m pytest -n0 "$SHUTDOWN"
