"""docs/deploy.md agrees with infra/ and k8s-keda/: the roles it lists, the overlay it gives to copy."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
RESOURCES = (ROOT / "infra" / "resources.bicep").read_text(encoding="utf-8")

# The built-in role ids of resources.bicep's `roles` and their display names (the same in every tenant).
ROLE_NAMES = {
    "a638d3c7-ab3a-418d-83e6-5f17a39d4fde": "Azure Event Hubs Data Receiver",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}


def _roles_granted_to_the_workload_identity() -> set[str]:
    ids = dict(re.findall(r"^  (\w+): '([0-9a-f-]{36})'$", RESOURCES, re.MULTILINE))
    granted = set()
    for block in re.split(r"^resource ", RESOURCES, flags=re.MULTILINE):
        if "Microsoft.Authorization/roleAssignments" not in block.split("\n", 1)[0]:
            continue
        if "principalId: app.properties.principalId" in block:
            granted.add(ROLE_NAMES[ids[re.search(r"roles\.(\w+)\)", block).group(1)]])
    return granted


def _section(title: str) -> str:
    start = DEPLOY.index(title)
    end = DEPLOY.find("\n#", start + len(title))
    return DEPLOY[start:end]


def test_the_documented_role_assignments_are_every_role_the_workload_identity_gets() -> None:
    """docs/deploy.md "Role assignments: least privilege, one identity" lists the workload identity's roles, and
    its appendix ("deploying without azd") gives the `az role assignment create` commands for them. infra/ grants a
    fifth one, Monitoring Metrics Publisher on Application Insights, which every pod needs because the ConfigMap
    sets APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD (the exporter signs in with the identity).
    Neither the table nor the appendix named it: a deployment made by hand from the appendix had every
    telemetry export (traces, logs, the metrics the Application Insights alerts read) refused with 403."""
    granted = _roles_granted_to_the_workload_identity()
    assert "Monitoring Metrics Publisher" in granted, "premise: infra/ grants it"
    table = _section("### Role assignments: least privilege, one identity")
    documented = {row.split("|")[1].strip() for row in table.splitlines() if row.startswith("| ")} - {"role"}
    assert granted <= documented, f"granted by infra/ but not in the table: {sorted(granted - documented)}"
    appendix = DEPLOY[DEPLOY.index("## Appendix: deploying without azd"):]
    commanded = set(re.findall(r'--role "([^"]+)"', appendix))
    assert granted <= commanded, f"no `az role assignment create` in the appendix for: {sorted(granted - commanded)}"


def test_the_documented_manual_overlay_keeps_the_fallback_at_half_the_partitions(tmp_path: Path) -> None:
    """docs/deploy.md (Scaling, "fallback") states the rule: while KEDA's scaler fails, ingest holds
    `fallback.replicas` = half the partitions (two per replica, at least 1), and the azd overlay derives it from the
    partition count. The manual overlay the same doc gives ("Configure and apply", overlays/prod) raises the
    partition annotation and maxReplicaCount to 32 and left the base's fallback of 4, so a copy of it held 4
    replicas for 32 partitions (8 per replica, a quarter of the documented capacity) whenever the scaler fails."""
    import shutil

    from tests.deploy.validation import render

    overlay = re.search(r"```yaml\n# overlays/prod/kustomization.yaml\n(.*?)```", DEPLOY, re.DOTALL)
    assert overlay, "docs/deploy.md has the overlays/prod example"
    shutil.copytree(ROOT / "k8s-keda", tmp_path / "k8s-keda")
    (tmp_path / "overlays" / "prod").mkdir(parents=True)
    (tmp_path / "overlays" / "prod" / "kustomization.yaml").write_text(overlay.group(1), encoding="utf-8")
    docs = render(tmp_path / "overlays" / "prod")
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    partitions = scaled["spec"]["maxReplicaCount"]
    assert partitions == 32, "premise: the example is for a 32-partition hub"
    assert scaled["spec"]["fallback"]["replicas"] == max(1, partitions // 2)


MIGRATE = ROOT / "k8s-keda" / "migrate.yaml"
_MIGRATE_WAIT = re.compile(r"kubectl -n sluice wait --for=condition=complete "
                           r"--timeout=(\d+)(s|m|h)\s+job/sluice-migrate")


def test_the_documented_wait_for_the_migration_job_outlasts_its_deadline() -> None:
    """The release waits for the migration Job (deploy.md "Rolling out safely", step 2, and migrate.yaml's header)
    before it applies the new code; the Job may run until its activeDeadlineSeconds (operations.md: a concurrent
    index build first waits for enrichment's transactions). Was: 10 minutes against a 15-minute deadline, so a
    migration still running read as a timeout, and a rollout went on (or stopped) before its schema was there."""
    manifest = MIGRATE.read_text(encoding="utf-8")
    deadline = int(yaml.safe_load(manifest)["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"])
    unit = {"s": 1, "m": 60, "h": 3600}
    waits = {name: [int(n) * unit[u] for n, u in _MIGRATE_WAIT.findall(text)]
             for name, text in (("docs/deploy.md", DEPLOY), ("k8s-keda/migrate.yaml", manifest))}
    assert all(waits.values()), waits
    assert all(seconds > deadline for found in waits.values() for seconds in found), (deadline, waits)
