"""checkov on k8s-keda/, the Dockerfile and infra/: no failed check, and only the skips listed here.

checkov runs from its own virtual environment (``.venv-tools``, made by
scripts/install.sh: its pinned dependencies clash with the app's). Each skip carries
its reason, and docs/deploy.md lists the same ids, so a skip cannot be added silently.
In-manifest skips (``checkov.io/skip*`` annotations) are counted too.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.deploy.validation import ROOT

CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"

SKIPS: dict[str, dict[str, str]] = {
    "dockerfile": {
        "CKV_DOCKER_2": "no HEALTHCHECK: the image runs on Kubernetes, where the manifests' startup, readiness "
                        "and liveness probes do that job (Docker HEALTHCHECK is ignored there)",
    },
    "bicep": {
        "CKV_AZURE_166": "ACR quarantine and image verification are Premium features; Standard is used",
        "CKV_AZURE_139": "ACR, Cosmos DB, Key Vault and storage keep public endpoints (TLS, Entra ID or keys): "
                         "private endpoints need a virtual network design per deployment",
        "CKV_AZURE_101": "see CKV_AZURE_139: Cosmos DB public endpoint",
        "CKV_AZURE_99": "see CKV_AZURE_139: Cosmos DB without an IP filter (AKS egress is not fixed)",
        "CKV_AZURE_189": "see CKV_AZURE_139: Key Vault public endpoint (RBAC, per-secret role assignments)",
        "CKV_AZURE_109": "see CKV_AZURE_139: Key Vault without a firewall",
        "CKV_AZURE_35": "see CKV_AZURE_139: storage without a default-deny rule (shared keys are off)",
        "CKV_AZURE_141": "AKS local accounts stay on so that azd can fetch credentials without kubelogin",
        "CKV_AZURE_6": "no API server authorized IP ranges: azd and CI reach it from changing addresses",
        "CKV_AZURE_227": "encryption at host needs a subscription feature registration azd cannot make",
        "CKV_AZURE_172": "false positive: secret rotation is on (the add-on's config takes the string 'true')",
        "CKV_AZURE_206": "false positive: the account is zone-redundant (Standard_ZRS)",
        "CKV_AZURE_43": "false positive: the name is an expression (lower-case letters and digits, at most 24)",
        "CKV_AZURE_132": "key-based metadata writes stay allowed: python -m sluice migrate runs CQL DDL "
                         "(CREATE ... IF NOT EXISTS) with the account key",
        "CKV_AZURE_140": "the Cassandra API authenticates with the account key: local auth cannot be off",
        "CKV_AZURE_41": "no expiry on secrets: an expired secret stops Sluice (it refuses one); rotation adds "
                        "a new version instead",
    },
    "kubernetes": {},
}
TARGETS = {"kubernetes": ["-d", "k8s-keda"], "dockerfile": ["-f", "Dockerfile"], "bicep": ["-d", "infra"]}


def checkov(framework: str) -> dict:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run scripts/install.sh (it makes .venv-tools with checkov)")
    argv = [str(CHECKOV), *TARGETS[framework], "--framework", framework, "--output", "json",
            "--skip-download", "--compact"]
    if SKIPS[framework]:
        argv += ["--skip-check", ",".join(SKIPS[framework])]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                         env={"PATH": "/usr/bin:/bin", "BC_SKIP_MAPPING": "TRUE", "HOME": "/tmp"})
    assert run.stdout.strip(), run.stderr[-2000:]
    report = json.loads(run.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", sorted(TARGETS))
def test_checkov_passes_with_only_the_documented_skips(framework: str) -> None:
    report = checkov(framework)
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c.get("file_path")) for c in results.get("failed_checks", [])]
    assert failed == [], f"checkov {framework}: {failed}"
    assert report["summary"]["passed"] > 0
    # --skip-check leaves its checks out; what is reported as skipped comes from the files themselves.
    inline = {c["check_id"] for c in results.get("skipped_checks", [])}
    allowed = {"CKV_K8S_14", "CKV_K8S_43"} if framework == "kubernetes" else set()
    assert inline == allowed, f"in-file skips: only the image tag an overlay sets, got {sorted(inline)}"


def test_every_skip_is_documented() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for framework, skips in SKIPS.items():
        for check in skips:
            assert check in text, f"{check} ({framework}) is skipped but docs/deploy.md does not say why"
    for check in ("CKV_K8S_14", "CKV_K8S_43"):
        assert check in text
