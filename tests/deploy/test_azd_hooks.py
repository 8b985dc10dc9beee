"""azure.yaml's hooks, run as azd runs them (``sh -c``), with stand-ins for ``kubectl`` and ``azd``.

No cluster can run here, so ``kubectl`` and ``azd`` are small scripts on ``PATH``
that record their arguments and answer what a cluster in a given state answers.
What is checked is the hooks' own logic: that ``azd up`` fails when a rollout
stalls or the migration Job fails (azd's kustomize deployment waits for neither),
and that it refuses to start without the kustomize alpha feature or without the
kustomize CLI that feature needs on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AZURE = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
DEPLOYMENTS = sorted(doc["metadata"]["name"] for path in (ROOT / "k8s-keda").glob("*.yaml")
                     for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
                     if doc and doc.get("kind") == "Deployment")

KUBECTL = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$*" in
  *"rollout status deploy/${STALLED:-none}"*) echo "deployment $STALLED exceeded its progress deadline" >&2; exit 1 ;;
  *" get job/"*) cat "$JOB_STATE" ;;
esac
exit 0
"""
# `azd config get <key>` as azd answers it: the stored value as JSON (alpha.aks.kustomize: $KUSTOMIZE; any key:
# AZD_CONFIG's "key=value" words), else an error.
AZD = """#!/bin/sh
echo "$*" >> "$CALLS"
[ "$*" = "config get alpha.aks.kustomize" ] && [ -n "$KUSTOMIZE" ] && echo "\\"$KUSTOMIZE\\"" && exit 0
if [ "$1 $2" = "config get" ]; then
  for pair in $AZD_CONFIG; do
    if [ "${pair%%=*}" = "$3" ]; then echo "\\"${pair#*=}\\""; exit 0; fi
  done
fi
exit 1
"""
KUSTOMIZE = """#!/bin/sh
echo "kustomize $*" >> "$CALLS"
exit 0
"""


def run_hook(script: str, tmp_path: Path, *, job_states: list[str] = (), kustomize: bool = True,
             **env: str) -> tuple[int, str, list[str]]:
    """Run ``script`` with the stand-ins; the Job's conditions go from one state to the next on each ``get``.

    ``kustomize=False``: no ``kustomize`` on ``PATH`` at all, whatever this machine has installed (only the
    stand-ins and the few system tools the preprovision hook runs are reachable).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_ins = [("kubectl", KUBECTL), ("azd", AZD)] + ([("kustomize", KUSTOMIZE)] if kustomize else [])
    for name, body in stand_ins:
        (bin_dir / name).write_text(body, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    if not kustomize:
        for tool in ("sh", "grep"):
            (bin_dir / tool).symlink_to(shutil.which(tool))
        path = str(bin_dir)
    calls, state = tmp_path / "calls", tmp_path / "state"
    calls.write_text("", encoding="utf-8")
    state.write_text(job_states[0] if job_states else "", encoding="utf-8")
    # The Job moves on while the hook sleeps: a sleep that shows the next state and returns at once.
    (bin_dir / "sleep").write_text(
        "#!/bin/sh\n" + "".join(f'grep -q "^{s}$" "$STATE_LOG" 2>/dev/null || {{ echo "{s}" >> "$STATE_LOG"; '
                                f'printf "{s}" > "$JOB_STATE"; exit 0; }}\n' for s in job_states[1:]),
        encoding="utf-8")
    (bin_dir / "sleep").chmod(0o755)
    environment = {"PATH": path, "CALLS": str(calls), "JOB_STATE": str(state),
                   "STATE_LOG": str(tmp_path / "states"), **env}
    done = subprocess.run(["sh", "-c", script], env=environment, capture_output=True, text=True, timeout=30,
                          check=False)
    return done.returncode, done.stderr, calls.read_text(encoding="utf-8").splitlines()


POSTDEPLOY = AZURE["services"]["sluice"]["hooks"]["postdeploy"]["run"]
PREPROVISION = AZURE["hooks"]["preprovision"]["run"]


def test_the_hook_waits_for_every_deployment_then_for_the_migration(tmp_path: Path) -> None:
    code, err, calls = run_hook(POSTDEPLOY, tmp_path, job_states=["", "Complete"])
    assert code == 0, err
    assert [c for c in calls if "rollout status" in c] == [
        f"-n sluice rollout status deploy/{d} --timeout=10m" for d in ("sluice-ingest", "sluice-timers",
                                                                        "sluice-lookups")]
    assert DEPLOYMENTS == ["sluice-ingest", "sluice-lookups", "sluice-timers"], "every Deployment is waited for"
    created = next(i for i, c in enumerate(calls) if "create job" in c)
    assert created > max(i for i, c in enumerate(calls) if "rollout status" in c), "migrations after the rollout"
    assert sum(" get job/" in c for c in calls) == 2, "polled until the Job completed"


def test_a_stalled_rollout_fails_the_deployment_before_any_migration(tmp_path: Path) -> None:
    code, err, calls = run_hook(POSTDEPLOY, tmp_path, STALLED="sluice-timers")
    assert code != 0 and "sluice-timers exceeded its progress deadline" in err
    assert not any("create job" in c for c in calls)


def test_a_failed_migration_job_fails_the_deployment_at_once_with_its_log(tmp_path: Path) -> None:
    code, err, calls = run_hook(POSTDEPLOY, tmp_path, job_states=["", "FailureTarget Failed"])
    assert code == 1 and "migration job sluice-migrate-" in err and "failed" in err
    assert any(c.startswith("-n sluice logs job/sluice-migrate-") for c in calls)


@pytest.mark.parametrize(("env", "allowed"), [
    ({}, False), ({"KUSTOMIZE": "off"}, False), ({"KUSTOMIZE": "on"}, True),
    ({"AZD_ALPHA_ENABLE_AKS_KUSTOMIZE": "true"}, True),
    # azd's rule (alpha_feature_manager): the variable, when a Go boolean, decides alone; else alpha.all or
    # alpha.aks.kustomize "on" in any case. The hook took only "true" and a lower-case "on" of the one key.
    ({"AZD_ALPHA_ENABLE_AKS_KUSTOMIZE": "false", "KUSTOMIZE": "on"}, False),
    ({"AZD_ALPHA_ENABLE_AKS_KUSTOMIZE": "1"}, True), ({"AZD_ALPHA_ENABLE_AKS_KUSTOMIZE": "TRUE"}, True),
    ({"AZD_CONFIG": "alpha.all=on"}, True), ({"KUSTOMIZE": "ON"}, True),
    ({"AZD_ALPHA_ENABLE_AKS_KUSTOMIZE": "yes", "KUSTOMIZE": "on"}, True),  # not a Go boolean: the config decides
], ids=["unset", "off", "on", "env-true", "env-false-wins", "env-1", "env-TRUE", "alpha-all", "on-upper",
        "env-not-a-bool"])
def test_provisioning_needs_the_kustomize_alpha_feature(tmp_path: Path, env: dict[str, str], allowed: bool) -> None:
    code, err, _ = run_hook(PREPROVISION, tmp_path, **env)
    assert (code == 0) is allowed, err
    if not allowed:
        assert "azd config set alpha.aks.kustomize on" in err


@pytest.mark.parametrize("env", [{"KUSTOMIZE": "on"}, {"AZD_ALPHA_ENABLE_AKS_KUSTOMIZE": "true"}])
def test_provisioning_needs_the_kustomize_cli_azd_checks_for(tmp_path: Path, env: dict[str, str]) -> None:
    """With the alpha feature on, azd adds the kustomize CLI to the AKS target's required tools and stops with
    "missing required tools: kustomize" at the package/deploy step (kubectl's built-in kustomize does not count):
    the hook refuses before anything is provisioned, saying what to install."""
    code, err, _ = run_hook(PREPROVISION, tmp_path, kustomize=False, **env)
    assert code == 1, err
    assert "kustomize CLI on PATH" in err and "kubectl.docs.kubernetes.io/installation/kustomize" in err


def test_the_prerequisites_name_the_kustomize_cli() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    prerequisites = deploy.split("Prerequisites on the machine that deploys:", 1)[1].split("\n\n", 1)[0]
    assert "`kustomize`" in prerequisites and "command -v kustomize" in PREPROVISION
