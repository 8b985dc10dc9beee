#!/usr/bin/env bash
# Warn (never fail) when the installed kubectl cannot render k8s-keda/: its built-in kustomize must know the
# `labels` field (kustomize 4.1+: kubectl 1.22+, whose kustomize is 4.2.0; 1.21's is 4.0.5), and Debian 12's
# kubernetes-client is kubectl 1.20.2, which stops at `unknown field "labels"`. Only the manifests' tests
# (tests/deploy/) need kubectl; the local stack does not. Called by scripts/install.sh after its Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v kubectl >/dev/null || exit 0
if ! error=$(kubectl kustomize k8s-keda 2>&1 >/dev/null); then
  found=$(kubectl version --client --short 2>/dev/null || kubectl version --client 2>/dev/null || true)
  found=$(printf '%s\n' "$found" | head -1)
  echo "install: WARNING: $(command -v kubectl) (${found:-version unknown}) cannot render k8s-keda/:" \
       "$(printf '%s\n' "$error" | tail -1)" >&2
  echo "install: WARNING: the manifests' tests (tests/deploy/) need kustomize 4.1+ (kubectl 1.22+; Debian 12's" \
       "kubernetes-client is 1.20): install a newer kubectl from https://pkgs.k8s.io. The local stack does" \
       "not need kubectl." >&2
fi
exit 0
