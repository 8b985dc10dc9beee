#!/usr/bin/env bash
# Install what is missing, then run every test: unit, integration (real PostgreSQL, Redis, Azurite and
# Sluice's emulators through the real SDKs) and end-to-end. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
