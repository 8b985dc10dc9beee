"""k8s-keda/: every manifest parses, and the things a mistake would silently break are checked.

Settings names against shared.settings, no secret values, the functions each
Deployment runs against what function_app.py registers, KEDA's scaler against the
ConfigMap (hub, consumer group, namespace, checkpoint layout, partition count),
identity and security settings, probes, budgets and the kustomization.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import GROUPS, env_names, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s-keda"
NAMESPACE = "sluice"
FUNCTIONS_SETTING = re.compile(r"^AzureFunctionsJobHost__functions__(\d+)$")
# Functions host settings the manifests may set (exact names); anything else must be a Sluice setting.
HOST_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsFeatureFlags", "AzureWebJobsSecretStorageType",
    "AzureFunctionsWebHost__hostid", "AzureWebJobsStorage", "PYTHON_ENABLE_OPENTELEMETRY",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
IDENTITY_CONNECTION_SUFFIXES = {"fullyQualifiedNamespace", "credential", "clientId"}
SECRET_VALUE = re.compile(
    r"(SharedAccessKey=|SharedAccessSignature|AccountKey=|password=|pwd=|-----BEGIN|sig=)", re.IGNORECASE)
KEY_LIKE = re.compile(r"^[A-Za-z0-9+/]{40,}={0,2}$")
TRIGGER_OF_DEPLOYMENT = {"sluice-ingest": "eventHubTrigger", "sluice-lookups": "httpTrigger",
                         "sluice-timers": "timerTrigger"}


@cache
def documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path.name, doc))
    return tuple(docs)


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc.get("kind") == kind}


def configmap() -> dict[str, Any]:
    return of_kind("ConfigMap")["sluice-settings"]


def settings_data() -> dict[str, str]:
    return configmap()["data"]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment or a CronJob."""
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]
    return workload["spec"]["template"]


def workloads() -> dict[str, dict[str, Any]]:
    """Everything that runs the image: the Deployments and the migration CronJob."""
    return {**of_kind("Deployment"), **of_kind("CronJob")}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template(workload)["spec"]["containers"]


def environment(workload: dict[str, Any]) -> dict[str, Any]:
    """Every variable a workload's container gets: ConfigMap keys (envFrom) and env entries."""
    (container,) = containers(workload)
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(of_kind("ConfigMap")[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


def functions_run_by(deployment: dict[str, Any]) -> list[str]:
    env = environment(deployment)
    indexed = sorted((int(m.group(1)), value) for name, value in env.items() if (m := FUNCTIONS_SETTING.match(name)))
    assert [i for i, _ in indexed] == list(range(len(indexed))), \
        f"{deployment['metadata']['name']}: AzureFunctionsJobHost__functions__N must count 0, 1, 2, ... without gaps"
    return [value for _, value in indexed]


@cache
def app_functions() -> dict[str, dict[str, Any]]:
    """Each function function_app.py registers, with its trigger binding (as the host indexes it)."""
    from tests.fixtures.functions import _index  # the shared index: get_functions() may run only once per app

    out = {}
    for function in _index().values():
        bindings = json.loads(function.get_function_json())["bindings"]
        (trigger,) = [b for b in bindings if b["type"].endswith("Trigger")]
        out[function.get_function_name()] = trigger
    return out


def sluice_settings() -> set[str]:
    return {name for group in GROUPS.values() for name in env_names(group)}


def strings(node: Any):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


# --- the files ---------------------------------------------------------------------------

def test_every_document_is_a_named_kubernetes_object_in_the_sluice_namespace() -> None:
    assert documents()
    for filename, doc in documents():
        if filename == "kustomization.yaml":
            continue
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), filename
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{filename}: {doc['kind']} outside {NAMESPACE}"
    names = Counter((doc["kind"], doc["metadata"]["name"]) for f, doc in documents() if f != "kustomization.yaml")
    assert not [k for k, n in names.items() if n > 1], "duplicate objects"


def test_the_kustomization_applies_every_manifest_and_leaves_one_image_name_to_map() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert kustomization["namespace"] == NAMESPACE
    # Overlays map the bare name "sluice" to <registry>/sluice:<sha>; a base that renamed it would make the
    # overlay's images entry match nothing (kustomize matches the name as the base leaves it).
    assert "images" not in kustomization
    for name, workload in workloads().items():
        for container in containers(workload):
            assert container["image"] == "sluice", f"{name}: {container['image']!r} would not be mapped by overlays"


# --- settings --------------------------------------------------------------------------

# Settings another branch adds (issue #21: the Redis Cluster client); once merged they are Sluice settings.
PENDING_SETTINGS: set[str] = set()


def test_every_variable_is_a_sluice_setting_or_a_known_host_setting() -> None:
    known = sluice_settings() | HOST_SETTINGS | PENDING_SETTINGS
    connections = {t.get("connection") for t in app_functions().values() if t.get("connection")}
    for name, workload in workloads().items():
        for variable in environment(workload):
            if FUNCTIONS_SETTING.match(variable) or variable in known:
                continue
            prefix, _, suffix = variable.partition("__")
            assert prefix in connections and suffix in IDENTITY_CONNECTION_SUFFIXES, \
                f"{name}: {variable} is neither a Sluice setting (shared/settings.py) nor a known host setting"


def test_the_configmap_is_valid_azure_settings() -> None:
    assert all(isinstance(v, str) for v in settings_data().values()), "ConfigMap values must be strings (quote numbers)"
    # As an environment deploys it: the base with the documented overlay's values in place of REPLACE_ME.
    settings = load_settings(deployed_settings())
    assert settings.storage.connection is None, "storage is an identity-based connection: no connection string"
    assert settings.storage.blob_endpoint == "https://sluiceprodstore.blob.core.windows.net"
    assert settings.cassandra.port == 10350 and settings.cassandra.tls
    assert settings.cassandra.password is None and settings.cassandra.password_secret
    # Azure Managed Redis: TLS on 10000 (Azure Cache for Redis, 6380, stays accepted through an overlay).
    assert re.fullmatch(r"rediss://[a-z0-9-]+\.[a-z0-9]+\.redis\.azure\.net:10000", settings.redis.url), (
        settings.redis.url
    )
    # signed in as the workload identity (Entra ID): no key, no key secret
    assert settings.redis.auth == "entra" and settings.redis.password is None and settings.redis.password_secret is None
    assert settings.postgres.sslmode == "verify-full" and str(settings.postgres.sslrootcert) == "system"
    assert settings.postgres.password is None and settings.postgres.password_secret
    assert settings.keyvault.url.startswith("https://") and settings.keyvault.ca_file is None


def test_azure_cache_for_redis_on_6380_stays_accepted() -> None:
    settings = load_settings({**deployed_settings(), "SLUICE_REDIS_URL": "rediss://legacy.redis.cache.windows.net:6380/0",
                              "SLUICE_REDIS_CLUSTER": "false"})
    assert settings.redis.url.endswith(":6380/0")


def test_every_required_setting_reaches_every_deployment() -> None:
    required = {"AzureWebJobsStorage__accountName"}  # required as one of two ways (StorageSettings), so named here
    for group in GROUPS.values():
        for info, variable in zip(group.model_fields.values(), env_names(group), strict=True):
            if info.is_required():
                required.add(variable)
    assert "SLUICE_CASSANDRA_HOSTS" in required
    for name, workload in workloads().items():
        missing = required - set(environment(workload))
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_no_value_looks_like_a_secret() -> None:
    for filename, doc in documents():
        assert doc.get("kind") != "Secret", f"{filename}: Secrets come from Key Vault, never from the repository"
        for text in strings(doc):
            assert not SECRET_VALUE.search(text), f"{filename}: {text[:40]!r}... looks like a credential"
            assert not KEY_LIKE.match(text), f"{filename}: {text[:12]!r}... looks like a key"
    for name, workload in workloads().items():
        for variable, value in environment(workload).items():
            if re.search(r"(PASSWORD|KEY|SECRET|CONNECTION)$", variable.upper()) and isinstance(value, str):
                assert variable.endswith("_SECRET"), f"{name}: {variable} has a literal value"
            # Storage is identity-based: a connection string would carry the account key.
            assert variable != "AzureWebJobsStorage", \
                f"{name}: {variable} is a storage connection string; use AzureWebJobsStorage__accountName"


def test_secret_references_come_from_key_vault_through_the_csi_driver() -> None:
    providers = of_kind("SecretProviderClass")
    synced = {(s["secretName"], d["key"]) for p in providers.values() for s in p["spec"].get("secretObjects", [])
              for d in s["data"]}
    for name, workload in workloads().items():
        pod = pod_template(workload)["spec"]
        csi = {v["csi"]["volumeAttributes"]["secretProviderClass"] for v in pod["volumes"] if "csi" in v}
        assert csi <= set(providers), f"{name} mounts an unknown SecretProviderClass"
        for variable, value in environment(workload).items():
            if isinstance(value, dict) and "secretKeyRef" in value:
                ref = value["secretKeyRef"]
                assert (ref["name"], ref["key"]) in synced, f"{name}: {variable} refers to a Secret nothing creates"
                provider = next(n for n, p in providers.items()
                                if any(s["secretName"] == ref["name"] for s in p["spec"].get("secretObjects", [])))
                assert provider in csi, f"{name} must mount {provider} for the driver to sync {ref['name']}"
    for provider in providers.values():
        parameters = provider["spec"]["parameters"]
        assert provider["spec"]["provider"] == "azure" and parameters["usePodIdentity"] == "false"
        assert parameters["clientID"] == service_account_client_id(), "the CSI driver must use the app's identity"


# --- functions per deployment --------------------------------------------------------------

def test_each_function_runs_in_exactly_one_deployment_of_its_trigger_type() -> None:
    registered = app_functions()
    assert set(of_kind("Deployment")) == set(TRIGGER_OF_DEPLOYMENT)
    seen: Counter[str] = Counter()
    for name, deployment in of_kind("Deployment").items():
        listed = functions_run_by(deployment)
        assert listed, f"{name} sets no AzureFunctionsJobHost__functions__0: it would run every function"
        for function in listed:
            assert function in registered, f"{name} runs {function!r}, which function_app.py does not register"
            assert registered[function]["type"] == TRIGGER_OF_DEPLOYMENT[name], \
                f"{function!r} is a {registered[function]['type']} but runs in {name}"
        seen.update(listed)
    unrun = sorted(set(registered) - set(seen))
    assert not unrun, f"registered but run by no Deployment: {unrun} (add them to k8s-keda/)"
    assert [f for f, n in seen.items() if n > 1] == []


def test_binding_expressions_resolve_from_the_configmap() -> None:
    data = settings_data()
    for function, trigger in app_functions().items():
        for value in strings(trigger):
            for setting in re.findall(r"%([^%]+)%", value):
                assert setting in data or setting in sluice_settings(), f"{function}: %{setting}% is never set"
        if trigger.get("connection"):
            assert f"{trigger['connection']}__fullyQualifiedNamespace" in data, \
                f"{function}: its connection {trigger['connection']!r} has no identity-based namespace"


# --- KEDA ----------------------------------------------------------------------------------

def scaled_ingest() -> tuple[dict[str, Any], dict[str, str]]:
    (scaled,) = of_kind("ScaledObject").values()
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "azure-eventhub"
    return scaled, trigger


def test_the_scaled_object_targets_the_ingest_deployment_which_keda_alone_sizes() -> None:
    scaled, _ = scaled_ingest()
    target = scaled["spec"]["scaleTargetRef"]["name"]
    assert target in of_kind("Deployment")
    assert [registered_trigger(f) for f in functions_run_by(of_kind("Deployment")[target])] == ["eventHubTrigger"]
    assert "replicas" not in of_kind("Deployment")[target]["spec"], "an apply would reset KEDA's replica count"
    assert scaled["spec"]["minReplicaCount"] == 0


def registered_trigger(function: str) -> str:
    return app_functions()[function]["type"]


def test_the_scaler_reads_the_checkpoints_the_host_writes_for_our_hub_and_group() -> None:
    _, trigger = scaled_ingest()
    metadata, data = trigger["metadata"], settings_data()
    assert metadata["checkpointStrategy"] == "blobMetadata"
    assert metadata["blobContainer"] == "azure-webjobs-eventhub"
    assert metadata["consumerGroup"] == data["SLUICE_INGEST_CONSUMER_GROUP"]
    assert metadata["eventHubName"] == data["SLUICE_INGEST_EVENTHUB_NAME"]
    assert f"{metadata['eventHubNamespace']}.servicebus.windows.net" == \
        data["EventHubConnection__fullyQualifiedNamespace"]
    assert int(metadata["unprocessedEventThreshold"]) > 0
    assert metadata.get("storageAccountName"), "pod identity reads checkpoints by account name"
    assert metadata["storageAccountName"] == data["AzureWebJobsStorage__accountName"], \
        "KEDA must read the checkpoints in the account the host writes them to"
    assert "connectionFromEnv" not in metadata and "storageConnectionFromEnv" not in metadata


def test_max_replicas_do_not_exceed_the_partition_count() -> None:
    scaled, _ = scaled_ingest()
    partitions = int(configmap()["metadata"]["annotations"]["sluice.io/eventhub-partition-count"])
    assert 1 <= scaled["spec"]["maxReplicaCount"] <= partitions


def test_keda_authenticates_with_workload_identity() -> None:
    _, trigger = scaled_ingest()
    auth = of_kind("TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    assert auth["spec"]["podIdentity"]["provider"] == "azure-workload"
    assert "secretTargetRef" not in auth["spec"]


# --- identity, security, availability -----------------------------------------------------

def service_account_client_id() -> str:
    account = of_kind("ServiceAccount")["sluice"]
    return account["metadata"]["annotations"]["azure.workload.identity/client-id"]


@pytest.mark.parametrize("name", [*sorted(TRIGGER_OF_DEPLOYMENT), "sluice-migrate"])
def test_pods_use_workload_identity_and_run_restricted(name: str) -> None:
    assert service_account_client_id()
    workload = workloads()[name]
    template = pod_template(workload)
    pod = template["spec"]
    assert pod["serviceAccountName"] in of_kind("ServiceAccount")
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    if security.get("readOnlyRootFilesystem"):
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "the host needs a writable /tmp"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind} incomplete"
    assert pod.get("automountServiceAccountToken") is False, "the pods never call the Kubernetes API"
    if workload["kind"] == "CronJob":
        return
    labels = workload["spec"]["selector"]["matchLabels"]
    assert labels.items() <= template["metadata"]["labels"].items()
    budgets = [b for b in of_kind("PodDisruptionBudget").values() if b["spec"]["selector"]["matchLabels"] == labels]
    assert len(budgets) == 1, f"{name} needs one PodDisruptionBudget"


def test_timers_run_as_one_replica_with_a_shared_host_id() -> None:
    timers = of_kind("Deployment")["sluice-timers"]
    assert timers["spec"]["replicas"] == 1
    assert not [s for s in of_kind("ScaledObject").values() if s["spec"]["scaleTargetRef"]["name"] == "sluice-timers"]
    assert not [h for h in of_kind("HorizontalPodAutoscaler").values()
                if h["spec"]["scaleTargetRef"]["name"] == "sluice-timers"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", settings_data()["AzureFunctionsWebHost__hostid"])


def test_lookups_have_a_service_at_least_two_replicas_and_health_probes() -> None:
    lookups = of_kind("Deployment")["sluice-lookups"]
    (hpa,) = [h for h in of_kind("HorizontalPodAutoscaler").values()
              if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": "sluice-lookups"}]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert "replicas" not in lookups["spec"]
    (service,) = of_kind("Service").values()
    labels = lookups["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = containers(lookups)
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    # Ready when the worker answers, whatever the shared stores do: a Redis or Cassandra outage must not empty the
    # Service (each replica still answers, from the other store or with a 503 that says what is down).
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/api/openapi.json" and readiness["port"] in ports
    openapi = app_functions()["openapi"]
    assert openapi["route"] == "openapi.json" and openapi["authLevel"] == "ANONYMOUS", "probes carry no function key"
    assert "livenessProbe" in container


def test_every_host_finds_its_keys_where_the_secret_storage_type_says() -> None:
    assert settings_data()["AzureWebJobsSecretStorageType"] == "kubernetes"
    for name, deployment in of_kind("Deployment").items():
        (container,) = containers(deployment)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "/run/secrets/functions-keys" in mounts, f"{name}: the host reads its keys there"
        assert mounts["/run/secrets/functions-keys"]["readOnly"] is True
        volume = next(v for v in pod_template(deployment)["spec"]["volumes"]
                      if v["name"] == mounts["/run/secrets/functions-keys"]["name"])
        provider = of_kind("SecretProviderClass")[volume["csi"]["volumeAttributes"]["secretProviderClass"]]
        objects = yaml.safe_load(provider["spec"]["parameters"]["objects"])["array"]
        aliases = {yaml.safe_load(o)["objectAlias"] for o in objects}
        assert {"host.master", "host.function.default"} <= aliases, f"{name}: keys missing from {aliases}"


def test_every_http_function_has_its_own_key_in_the_read_only_key_store() -> None:
    """The key store is read-only (files from the CSI driver, no ``AzureWebJobsKubernetesSecretName``). A request
    whose key is neither ``host.master`` nor ``host.function.default`` makes the host read the function's own keys
    (azure-functions-host ``SecretManager.GetFunctionSecretsAsync``: ``functions.<name in lower case>.<key>``); with
    none it generates one and ``KubernetesSecretsRepository.WriteAsync`` throws (read-only), so a wrong or rotated-out
    key gets a 500 instead of a 401. The host authenticates every HTTP request carrying a key, anonymous functions'
    too, so each HTTP function function_app.py registers needs ``functions.<name>.<key>``, as ``func kubernetes
    deploy`` writes ``functions.<name>.default``: a new function without it fails here."""
    data = settings_data()
    assert data["AzureWebJobsSecretStorageType"] == "kubernetes"
    assert "AzureWebJobsKubernetesSecretName" not in data, "the store is read-only: the host never writes keys"
    http = sorted(name.lower() for name, trigger in app_functions().items() if trigger["type"] == "httpTrigger")
    assert http, "the app has HTTP functions"
    objects = yaml.safe_load(of_kind("SecretProviderClass")["sluice-function-keys"]["spec"]["parameters"]["objects"])
    keys = {entry.get("objectAlias") or entry["objectName"] for entry in map(yaml.safe_load, objects["array"])}
    without = [name for name in http if not any(key.startswith(f"functions.{name}.") for key in keys)]
    assert not without, f"no functions.<name>.<key> in the read-only key store for {without} (mounted: {sorted(keys)})"


def test_migrations_are_a_suspended_job_template_running_the_cli() -> None:
    migrate = of_kind("CronJob")["sluice-migrate"]
    assert migrate["spec"]["suspend"] is True, "migrations run once per release, never on a schedule"
    (container,) = containers(migrate)
    assert container["command"] == ["python", "-m", "sluice", "migrate", "all"]
    assert container["workingDir"] == "/home/site/wwwroot", "where the image puts the sluice package"
    assert pod_template(migrate)["spec"]["restartPolicy"] == "Never"


def run_startup_probe(deployment: dict[str, Any], **overrides: str | None) -> subprocess.CompletedProcess[str]:
    """The Deployment's startup probe command, run here with the ConfigMap as its environment."""
    (container,) = containers(deployment)
    command = container["startupProbe"]["exec"]["command"]
    assert command[0] == "python"
    env = {**deployed_settings(), "PATH": "/usr/bin:/bin"}
    for name, value in overrides.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    return subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.timeout(120)
def test_the_startup_probe_refuses_bad_settings_by_name() -> None:
    for name, deployment in of_kind("Deployment").items():
        good = run_startup_probe(deployment)
        assert "ConfigurationError" not in good.stderr, f"{name}: {good.stderr[-500:]}"
        # Past the settings it checks the host's port: nothing listens on it here.
        assert good.returncode == 0 or "ConnectionRefusedError" in good.stderr, good.stderr[-500:]
    ingest = of_kind("Deployment")["sluice-ingest"]
    bad = run_startup_probe(ingest, SLUICE_CASSANDRA_PORT="not-a-port")
    assert bad.returncode != 0 and "SLUICE_CASSANDRA_PORT" in bad.stderr
    missing = run_startup_probe(ingest, AzureWebJobsStorage__accountName=None)
    assert missing.returncode != 0 and "AzureWebJobsStorage is not set" in missing.stderr


def documented_overlay() -> dict[str, Any]:
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    match = re.search(r"```yaml\n(# overlays/prod/kustomization\.yaml\n.*?)```", text, re.DOTALL)
    assert match, "docs/deploy.md lost its example overlay"
    return yaml.safe_load(match.group(1))


@cache
def rendered_overlay() -> tuple[dict[str, Any], ...]:
    """The base with the documented overlay's JSON-patch "replace" operations applied, as kustomize would.

    Every patched path must exist (a renamed key would make kustomize fail).
    """
    import copy

    overlay = documented_overlay()
    rendered = [copy.deepcopy(doc) for f, doc in documents() if f != "kustomization.yaml"]
    for patch in overlay["patches"]:
        target = patch["target"]
        chosen = [d for d in rendered if d["kind"] == target["kind"]
                  and target.get("name", d["metadata"]["name"]) == d["metadata"]["name"]]
        assert chosen, f"the overlay patches {target}, which the base does not have"
        for operation in yaml.safe_load(patch["patch"]):
            assert operation["op"] == "replace"
            *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
            for doc in chosen:
                node: Any = doc
                for part in parents:
                    node = node[int(part)] if isinstance(node, list) else node[part]
                key = int(last) if isinstance(node, list) else last
                assert isinstance(node, list) or key in node, f"{operation['path']} does not exist in {target}"
                node[key] = operation["value"]
    return tuple(rendered)


def deployed_settings() -> dict[str, str]:
    """The ConfigMap's data as the documented overlay deploys it."""
    return next(d for d in rendered_overlay() if d["kind"] == "ConfigMap")["data"]


def test_the_documented_overlay_replaces_every_placeholder() -> None:
    overlay = documented_overlay()
    assert overlay["resources"] == ["../../k8s-keda"]
    rendered = rendered_overlay()
    left = sorted({text for doc in rendered for text in strings(doc) if "REPLACE_ME" in text})
    assert not left, f"placeholders the documented overlay does not set: {left}"
    (image,) = overlay["images"]
    assert image["name"] == "sluice" and image["newTag"] and "REPLACE_ME" not in image["newName"]
    scaled, trigger = next((d, d["spec"]["triggers"][0]) for d in rendered if d["kind"] == "ScaledObject")
    settings = next(d for d in rendered if d["kind"] == "ConfigMap")
    assert scaled["spec"]["maxReplicaCount"] <= int(
        settings["metadata"]["annotations"]["sluice.io/eventhub-partition-count"])
    assert f"{trigger['metadata']['eventHubNamespace']}.servicebus.windows.net" == \
        settings["data"]["EventHubConnection__fullyQualifiedNamespace"]


def test_the_migrations_reach_postgresql_itself_while_the_workers_go_through_pgbouncer() -> None:
    """The migrations hold a session advisory lock (``pg_try_advisory_lock`` ... ``pg_advisory_unlock``); through the
    Flexible Server's PgBouncer (6432, transaction pooling) the two can run on different server connections, so the
    lock would neither keep two runs apart nor be released (pgbouncer.org/features.html: session-level advisory
    locks are not supported in transaction pooling)."""
    assert "pg_try_advisory_lock(" in (ROOT / "shared/adapters/postgres/migrations.py").read_text(encoding="utf-8")
    assert settings_data()["SLUICE_POSTGRES_PORT"] == "6432"
    (migrate,) = of_kind("CronJob").values()
    assert environment(migrate)["SLUICE_POSTGRES_PORT"] == "5432"
