"""k8s-keda/ and the azd overlay (infra/k8s/), rendered by kubectl and checked against the schemas they deploy to.

No cluster: ``kubectl kustomize`` renders, ``kubernetes-validate`` checks the built-in
kinds against the targeted Kubernetes version, KEDA's own schemas check ScaledObject
and TriggerAuthentication, the Secrets Store CSI schema checks SecretProviderClass, and
the ingest ScaledObject's numbers are checked to scale. Broken copies prove that each
check refuses what it should, by name.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import validation
from tests.deploy.validation import ROOT, RenderError, render

SAMPLE_ENV = Path(__file__).resolve().parent / "azd.sample.env"


def azd_tree(tmp_path: Path, env_text: str | None = None) -> Path:
    """A copy of k8s-keda/ and infra/k8s/ side by side, with azd's .env written into the overlay."""
    shutil.copytree(ROOT / "k8s-keda", tmp_path / "k8s-keda")
    shutil.copytree(ROOT / "infra" / "k8s", tmp_path / "infra" / "k8s")
    (tmp_path / "infra" / "k8s" / ".env").write_text(
        SAMPLE_ENV.read_text(encoding="utf-8") if env_text is None else env_text, encoding="utf-8")
    return tmp_path / "infra" / "k8s"


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(ROOT / "k8s-keda")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(azd_tree(tmp_path_factory.mktemp("azd")))


def of(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def test_the_base_is_valid_for_kubernetes_and_keda_with_only_placeholders_left(base: list[dict[str, Any]]) -> None:
    assert validation.problems(base, placeholders_allowed=True) == []
    assert {d["kind"] for d in base} >= {"Deployment", "CronJob", "ScaledObject", "TriggerAuthentication",
                                         "SecretProviderClass", "NetworkPolicy", "HorizontalPodAutoscaler"}


def test_the_azd_overlay_renders_with_every_placeholder_replaced_and_valid(deployed: list[dict[str, Any]]) -> None:
    assert validation.problems(deployed, placeholders_allowed=False) == []
    assert not [d for d in deployed if d["metadata"]["name"] == "azd-outputs"], "the outputs map is local-config"
    env = dict(line.split("=", 1) for line in SAMPLE_ENV.read_text(encoding="utf-8").splitlines() if "=" in line)
    settings = of(deployed, "ConfigMap", "sluice-settings")
    assert settings["data"]["SLUICE_REDIS_URL"] == env["AZURE_REDIS_URL"]
    scaled = of(deployed, "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == int(env["AZURE_EVENTHUB_PARTITIONS"]), "an integer, not a string"
    images = {c["image"] for d in deployed if d["kind"] in ("Deployment", "CronJob")
              for c in (d["spec"].get("jobTemplate", d)["spec"]["template"]["spec"]["containers"])}
    assert images == {env["SERVICE_SLUICE_IMAGE_NAME"]}
    assert of(deployed, "TriggerAuthentication")["spec"]["podIdentity"]["identityId"] == \
        env["AZURE_APP_IDENTITY_CLIENT_ID"]


def bicep_output(name: str, **params: int) -> int:
    """An integer output of infra/main.bicep computed for ``params``; Bicep divides integers as ``//`` does."""
    source = (ROOT / "infra" / "main.bicep").read_text(encoding="utf-8")
    found = re.search(rf"^output {name} int = ([\w\s(),/*+-]+)$", source, re.MULTILINE)
    assert found, f"infra/main.bicep has no integer output {name} built from numbers, parameters, max and min"
    return int(eval(found.group(1).replace("/", "//"), {"__builtins__": {}, "max": max, "min": min}, params))


def test_the_azd_overlay_keeps_the_fallback_within_the_partition_count(tmp_path: Path) -> None:
    """The overlay copies the hub's partition count (``eventHubPartitions``, 1 .. 32) into ``maxReplicaCount``; a
    fallback left at the base's 4 would exceed it for 2 or 3 partitions, a ScaledObject the validation refuses
    (and half the partitions, the fallback's intent, would hold for 8 only). So the fallback is an output of the
    partition count too, and every count main.bicep accepts renders a ScaledObject the validation accepts."""
    main = (ROOT / "infra" / "main.bicep").read_text(encoding="utf-8")
    bounds = re.search(r"@minValue\((\d+)\)\s*@maxValue\((\d+)\)\s*param eventHubPartitions int", main)
    assert bounds, "eventHubPartitions has bounds"
    low, high = int(bounds.group(1)), int(bounds.group(2))
    for partitions in sorted({low, 2, 3, 8, high} & set(range(low, high + 1))):
        fallback = bicep_output("AZURE_INGEST_FALLBACK_REPLICAS", eventHubPartitions=partitions)
        env = SAMPLE_ENV.read_text(encoding="utf-8")
        outputs = {"AZURE_EVENTHUB_PARTITIONS": partitions, "AZURE_INGEST_FALLBACK_REPLICAS": fallback}
        for variable, value in outputs.items():
            env = re.sub(rf"^{variable}=.*$", f"{variable}={value}", env, flags=re.MULTILINE)
        docs = render(azd_tree(tmp_path / str(partitions), env))
        scaled = of(docs, "ScaledObject")
        assert (scaled["spec"]["maxReplicaCount"], scaled["spec"]["fallback"]["replicas"]) == (
            partitions, max(1, partitions // 2)), f"{partitions} partitions"
        assert validation.scaling_problems(docs) == [], f"{partitions} partitions"


def test_an_overlay_missing_a_required_value_fails_and_names_it(tmp_path: Path) -> None:
    env = "\n".join(line for line in SAMPLE_ENV.read_text(encoding="utf-8").splitlines()
                    if not line.startswith("AZURE_CASSANDRA_HOST="))
    with pytest.raises(RenderError, match="AZURE_CASSANDRA_HOST"):
        render(azd_tree(tmp_path, env))


def test_an_overlay_with_an_empty_value_leaves_a_problem_that_names_the_field(tmp_path: Path) -> None:
    env = SAMPLE_ENV.read_text(encoding="utf-8").replace("AZURE_KEY_VAULT_NAME=kv-sluice-prod", "AZURE_KEY_VAULT_NAME=")
    docs = render(azd_tree(tmp_path, env))
    found = validation.problems(docs, placeholders_allowed=False)
    assert any("spec.parameters.keyvaultName is missing" in p for p in found), found


def test_the_base_placeholders_are_named_when_not_allowed(base: list[dict[str, Any]]) -> None:
    found = validation.placeholder_problems(base)
    assert any(p.startswith("ConfigMap/sluice-settings: data.SLUICE_CASSANDRA_HOSTS") for p in found), found


def broken(docs: list[dict[str, Any]], kind: str, change) -> list[dict[str, Any]]:
    out = copy.deepcopy(docs)
    change(next(d for d in out if d["kind"] == kind))
    return out


def trigger(doc: dict[str, Any]) -> dict[str, str]:
    return doc["spec"]["triggers"][0]["metadata"]


@pytest.mark.parametrize(("change", "named"), [
    (lambda d: trigger(d).update(unprocessedEventThreshold="0"), "unprocessedEventThreshold '0' cannot scale"),
    (lambda d: trigger(d).update(unprocessedEventThreshold="many"), "unprocessedEventThreshold 'many' cannot scale"),
    (lambda d: trigger(d).update(activationUnprocessedEventThreshold="500"), "leaves up to 500 events unprocessed"),
    (lambda d: trigger(d).update(checkpointStrategy="azureFunction"), "checkpointStrategy 'azureFunction'"),
    (lambda d: d["spec"].update(maxReplicaCount=64), "maxReplicaCount 64 exceeds the hub's 8 partitions"),
    (lambda d: d["spec"].pop("fallback"), "no fallback"),
    (lambda d: d["spec"]["fallback"].update(replicas=0), "fallback.replicas 0"),
    (lambda d: trigger(d).update(unprocessedEventThreshold="1000"), "is not events-per-second-per-replica"),
])
def test_a_scaled_object_that_cannot_scale_is_refused_by_name(base: list[dict[str, Any]], change, named: str) -> None:
    assert any(named in p for p in validation.scaling_problems(broken(base, "ScaledObject", change)))


def test_keda_schema_refuses_mistyped_missing_or_unknown_values(base: list[dict[str, Any]]) -> None:
    # (Its schemas, like KEDA's CRDs, let unknown fields through: the API server prunes them.)
    missing = broken(base, "ScaledObject", lambda d: d["spec"]["scaleTargetRef"].pop("name"))
    assert any("ScaledObject/sluice-ingest" in p and "name" in p for p in validation.keda_problems(missing))
    behavior = broken(base, "ScaledObject", lambda d: d["spec"]["fallback"].update(behavior="sometimes"))
    assert any("/spec/fallback/behavior" in p for p in validation.keda_problems(behavior))
    mistyped = broken(base, "ScaledObject", lambda d: d["spec"]["fallback"].update(failureThreshold="3"))
    assert any("/spec/fallback/failureThreshold must be integer" in p for p in validation.keda_problems(mistyped))
    auth = broken(base, "TriggerAuthentication", lambda d: d["spec"]["podIdentity"].update(provider=7))
    assert any("TriggerAuthentication/sluice-eventhub-identity" in p for p in validation.keda_problems(auth))


def test_kubernetes_schema_refuses_what_the_api_server_would(base: list[dict[str, Any]]) -> None:
    bad = broken(base, "HorizontalPodAutoscaler", lambda d: d["spec"].update(minReplicas="two"))
    assert any(p.startswith("HorizontalPodAutoscaler/sluice-lookups: spec/minReplicas")
               for p in validation.builtin_problems(bad))
    unknown = broken(base, "Deployment", lambda d: d["spec"]["template"]["spec"].update(serviceAcount="x"))
    assert any("serviceAcount" in p for p in validation.builtin_problems(unknown))


def test_secret_provider_class_schema_refuses_unknown_fields_and_missing_azure_parameters(
        base: list[dict[str, Any]]) -> None:
    bad = broken(base, "SecretProviderClass", lambda d: d["spec"].update(secretObject=[]))
    assert any("secretObject" in p for p in validation.secret_provider_problems(bad))
    missing = broken(base, "SecretProviderClass", lambda d: d["spec"]["parameters"].pop("tenantId"))
    assert any("spec.parameters.tenantId is missing" in p for p in validation.secret_provider_problems(missing))


def test_the_sample_env_covers_every_key_azure_yaml_passes() -> None:
    azure = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    passed = set(azure["services"]["sluice"]["k8s"]["kustomize"]["env"])
    sample = {line.split("=", 1)[0] for line in SAMPLE_ENV.read_text(encoding="utf-8").splitlines() if "=" in line}
    assert passed == sample


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get("matchExpressions")


def test_only_prometheus_reaches_any_port_but_the_lookups_http(base: list[dict[str, Any]]) -> None:
    """An ingress rule without ``from`` admits every source (any pod of any namespace, any address): only the
    lookups' HTTP port may be open like that. The metrics port is admitted from the Prometheus pods of the
    monitoring namespace alone, both selectors in one entry (namespace AND pods), as docs/deploy.md says."""
    policies = [d for d in base if d["kind"] == "NetworkPolicy"]
    pods = {d["metadata"]["name"]: (d["spec"]["jobTemplate"]["spec"]["template"] if d["kind"] == "CronJob"
                                    else d["spec"]["template"])["metadata"]["labels"]
            for d in base if d["kind"] in ("Deployment", "CronJob")}
    assert set(pods) == {"sluice-ingest", "sluice-lookups", "sluice-timers", "sluice-migrate"}
    for name, labels in pods.items():
        for policy in policies:
            if not _selects(policy["spec"]["podSelector"], labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                ports = [p.get("port") for p in rule.get("ports", [])]
                if not rule.get("from"):
                    assert name == "sluice-lookups" and ports == ["http"], (
                        f"{policy['metadata']['name']} admits {ports} of {name} from any source")
    (scrape,) = [p for p in policies if p["metadata"]["name"] == "sluice-metrics-scrape"]
    (rule,) = scrape["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["metrics"]
    (source,) = rule["from"]
    namespace = source["namespaceSelector"]["matchLabels"]
    prometheus = source["podSelector"]["matchLabels"]
    assert namespace == {"kubernetes.io/metadata.name": "monitoring"}
    assert prometheus == {"app.kubernetes.io/name": "prometheus"}, "the label the Prometheus Operator gives its pods"
    deploy = " ".join((ROOT / "docs" / "deploy.md").read_text(encoding="utf-8").split())
    assert "`app.kubernetes.io/name: prometheus`" in deploy
    assert "`kubernetes.io/metadata.name` is `monitoring`" in deploy


def test_kube_prometheus_stack_selects_the_pod_monitor_and_the_rules() -> None:
    """kube-prometheus-stack's Prometheus selects PodMonitors and PrometheusRules by ``release: <Helm release>``
    (podMonitorSelectorNilUsesHelmValues / ruleSelectorNilUsesHelmValues, true by default): without the label
    nothing is scraped and no alert is loaded. The label comes from the monitoring kustomization (one place to
    change it), and the docs name its value."""
    docs = render(ROOT / "k8s-keda" / "monitoring")
    selected = {d["kind"]: d["metadata"]["labels"].get("release") for d in docs
                if d["kind"] in ("PodMonitor", "PrometheusRule")}
    assert selected == {"PodMonitor": "kube-prometheus-stack", "PrometheusRule": "kube-prometheus-stack"}
    pod_monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/part-of": "sluice"}, \
        "the release label is on the objects, not in the pods they select"
    kustomization = yaml.safe_load((ROOT / "k8s-keda/monitoring/kustomization.yaml").read_text(encoding="utf-8"))
    assert {"release": "kube-prometheus-stack"} in [entry["pairs"] for entry in kustomization["labels"]]
    for doc in ("deploy.md", "observability.md"):
        assert "release: kube-prometheus-stack" in (ROOT / "docs" / doc).read_text(encoding="utf-8"), doc


def _one(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_a_lookups_pod_serves_on_while_it_leaves_the_service(base: list[dict[str, Any]]) -> None:
    """Kubernetes sends SIGTERM as it starts taking a pod out of the Service's EndpointSlice; the nodes' proxies
    and any ingress drop the endpoint a moment later, and the Functions host (PID 1 in the image) stops listening
    at once. Without a preStop delay, every rollout (maxSurge 1, maxUnavailable 0), scale-in or drain refused the
    requests routed to the pod meanwhile, though another replica was ready."""
    spec = _one(base, "Deployment", "sluice-lookups")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    delay = container["lifecycle"]["preStop"]["sleep"]["seconds"]  # Kubernetes' own sleep action (1.30 on)
    assert 3 <= delay < spec.get("terminationGracePeriodSeconds", 30) - 10, (
        "the delay must cover the endpoint's removal and leave the host time for its own shutdown")


def test_the_migration_jobs_are_kept_for_as_long_as_their_ttl_says(base: list[dict[str, Any]]) -> None:
    """Each release's migration Job is created from the suspended CronJob (`kubectl create job --from`), which
    owns it: past the CronJob's history limits (by default 3 successful, 1 failed) it deletes the oldest Jobs and
    their logs, whatever ttlSecondsAfterFinished (7 days) promises."""
    cron = _one(base, "CronJob", "sluice-migrate")["spec"]
    assert cron["jobTemplate"]["spec"]["ttlSecondsAfterFinished"] == 7 * 24 * 3600
    assert cron["successfulJobsHistoryLimit"] >= 10 and cron["failedJobsHistoryLimit"] >= 10
