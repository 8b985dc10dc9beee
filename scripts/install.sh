#!/usr/bin/env bash
# Install what the local stack and the tests need, from scratch or on top of an earlier install:
# Debian packages only if missing, a Python virtual environment from the pinned requirements, the npm
# packages (Azurite, KEDA's schemas), and checkov in a virtual environment of its own (.venv-tools).
# Each step is skipped when what it installs is already there and its inputs did not change.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)   # the PgBouncer (transaction mode) tests
# kubectl renders the manifests for their validation (tests/deploy/: `kubectl kustomize`); Debian ships it
# in the package kubernetes-client (too old for k8s-keda/ on Debian 12: scripts/check-kubectl.sh warns).
command -v kubectl >/dev/null || missing+=(kubernetes-client)
command -v chromium >/dev/null || missing+=(chromium)            # the operations page's browser tests
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if ((${#missing[@]})); then
  echo "install: Debian packages ${missing[*]}"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
# Debian 12's kubectl (1.20) cannot render k8s-keda/ (kustomize 4.1+ needed): a warning, not a failure
bash scripts/check-kubectl.sh

want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.sluice-requirements 2>/dev/null)" != "$want" ]; then
  echo "install: Python packages into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > .venv/.sluice-requirements
fi

want=$(sha256sum package-lock.json | cut -c1-16)
if [ ! -x node_modules/.bin/azurite-blob ] || [ "$(cat node_modules/.sluice-lock 2>/dev/null)" != "$want" ]; then
  echo "install: npm packages (Azurite, KEDA schemas)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > node_modules/.sluice-lock
fi

want=$(sha256sum requirements-tools.txt | cut -c1-16)
if [ ! -x .venv-tools/bin/checkov ] || [ "$(cat .venv-tools/.sluice-requirements 2>/dev/null)" != "$want" ]; then
  echo "install: checkov into .venv-tools (its own environment: its pins clash with the app's)"
  [ -x .venv-tools/bin/python ] || python3 -m venv .venv-tools
  .venv-tools/bin/python -m pip install -q --disable-pip-version-check -r requirements-tools.txt
  echo "$want" > .venv-tools/.sluice-requirements
fi
