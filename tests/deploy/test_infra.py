"""infra/ (Bicep) and azure.yaml: the invariants a wrong edit would break, checked on the text.

Bicep cannot be compiled here (no Bicep CLI in the package registries), so the
templates are read as text: every resource block, its role assignments and scopes,
and every output. The Cosmos tables are compared with what the migrations create on a
real server (the Cassandra emulator).
"""

from __future__ import annotations

import json
import re
import uuid
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.deploy.cassandra_schema import declared_tables
from tests.deploy.validation import ROOT

INFRA = ROOT / "infra"
APP_PRINCIPAL = "app.properties.principalId"
# The one role assignment that is not the workload identity's: the nodes pull the image.
NOT_THE_APP = {"kubeletPull": ("acrPull", "registry", "aks.properties.identityProfile.kubeletidentity.objectId")}
# role -> the scope each assignment of it must have (least privilege: never the account, namespace or vault).
SCOPES = {"eventHubsDataReceiver": "eventHub", "storageBlobDataOwner": "containers[i]",
          "keyVaultSecretsUser": "secretRefs[i]", "monitoringMetricsPublisher": "insights"}
SECRETISH = re.compile(
    r"listKeys|listConnectionStrings|listCredentials|[Pp]assword|Key\b|ConnectionString|secret\.value", re.IGNORECASE
)


@cache
def text(name: str) -> str:
    return (INFRA / name).read_text(encoding="utf-8")


def blocks(source: str) -> dict[str, tuple[str, str]]:
    """Each ``resource <symbol> '<type>@<version>' = ... { ... }`` as symbol -> (type, body)."""
    out = {}
    for match in re.finditer(r"^resource (\w+) '([^'@]+)@[^']+' = (?:\[for [^:]+: )?\{", source, re.MULTILINE):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(source[i], 0)
            i += 1
        out[match.group(1)] = (match.group(2), source[match.end():i])
    return out


def outputs(source: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^output (\w+) \w+ = (.+)$", source, re.MULTILINE)}


def resources() -> dict[str, tuple[str, str]]:
    return blocks(text("resources.bicep"))


def field(body: str, key: str) -> str:
    match = re.search(rf"^\s*{key}: (.+)$", body, re.MULTILINE)
    assert match, f"no {key} in {body[:200]}"
    return match.group(1).strip()


@cache
def base_manifests() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "k8s-keda").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


def manifest(kind: str) -> dict:
    (doc,) = [d for d in base_manifests() if d.get("kind") == kind]
    return doc


def settings() -> dict[str, str]:
    return next(d for d in base_manifests() if d.get("kind") == "ConfigMap")["data"]


def bicep_var(name: str) -> str:
    match = re.search(rf"^var {name} = '([^']*)'$", text("resources.bicep"), re.MULTILINE)
    assert match, f"var {name} is not a string literal in resources.bicep"
    return match.group(1)


# --- role assignments ----------------------------------------------------------------

def test_every_role_assignment_goes_to_the_workload_identity_at_the_narrowest_scope() -> None:
    assignments = {
        s: body for s, (kind, body) in resources().items() if kind == "Microsoft.Authorization/roleAssignments"
    }
    assert len(assignments) >= 4
    seen = set()
    for symbol, body in assignments.items():
        role = re.search(r"roles\.(\w+)\)", field(body, "roleDefinitionId")).group(1)
        principal, scope = field(body, "principalId"), field(body, "scope")
        assert field(body, "principalType") == "'ServicePrincipal'"
        if symbol in NOT_THE_APP:
            assert (role, scope, principal) == NOT_THE_APP[symbol], symbol
            continue
        assert principal == APP_PRINCIPAL, f"{symbol} grants {role} to {principal}, not the workload identity"
        assert SCOPES.get(role) == scope, f"{symbol}: {role} at {scope}; least privilege is {SCOPES.get(role)}"
        seen.add(role)
    assert seen == set(SCOPES), f"missing role assignments: {set(SCOPES) - seen}"


def test_the_roles_are_the_builtin_ones() -> None:
    # The well-known ids of the built-in roles (the same in every tenant).
    ids = dict(re.findall(r"^  (\w+): '([0-9a-f-]{36})'$", text("resources.bicep"), re.MULTILINE))
    assert ids == {"eventHubsDataReceiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
                   "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
                   "keyVaultSecretsUser": "4633458b-17de-408a-b874-0445c86b69e6",
                   "acrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
                   "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb"}


def test_application_insights_without_local_auth_is_reached_with_the_workload_identity() -> None:
    """With DisableLocalAuth only Entra ID sign-in is ingested, by an identity that is Monitoring Metrics Publisher
    on the resource (learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication): without the grant and the
    pods' authentication string every export is refused, and the alerts over customMetrics never fire."""
    (insights,) = [symbol for symbol, (kind, _) in resources().items() if kind == "Microsoft.Insights/components"]
    assert field(resources()[insights][1], "DisableLocalAuth") == "true"
    grants = [body for kind, body in resources().values() if kind == "Microsoft.Authorization/roleAssignments"
              and field(body, "scope") == insights and "roles.monitoringMetricsPublisher" in body]
    assert grants and field(grants[0], "principalId") == "app.properties.principalId"
    assert settings()["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"


def test_the_identity_trusts_sluices_service_account_and_kedas() -> None:
    creds = {s: body for s, (kind, body) in resources().items() if kind.endswith("/federatedIdentityCredentials")}
    subjects = {field(body, "subject") for body in creds.values()}
    account = manifest("ServiceAccount")["metadata"]
    assert bicep_var("kubernetesNamespace") == account["namespace"] and bicep_var("serviceAccount") == account["name"]
    assert subjects == {"'system:serviceaccount:${kubernetesNamespace}:${serviceAccount}'",
                        "'system:serviceaccount:kube-system:keda-operator'"}
    for body in creds.values():
        assert field(body, "parent") == "app" and "oidcIssuerProfile.issuerURL" in field(body, "issuer")
    auth = manifest("TriggerAuthentication")["spec"]["podIdentity"]
    assert auth["provider"] == "azure-workload" and auth["identityId"], "KEDA must act as the app's identity"


# --- outputs -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["main.bicep", "resources.bicep"])
def test_no_output_carries_a_secret(name: str) -> None:
    source = text(name)
    secure = set(re.findall(r"@secure\(\)\s*(?:@description\([^)]*\)\s*)?param (\w+)", source))
    found = outputs(source)
    assert found
    for output, expression in found.items():
        assert not SECRETISH.search(expression), f"{name}: output {output} = {expression} may carry a secret"
        assert not set(re.findall(r"\w+", expression)) & secure, f"{name}: output {output} uses a @secure() param"


def test_every_value_the_configmap_gets_is_an_output() -> None:
    main = outputs(text("main.bicep"))
    azure = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    env = azure["services"]["sluice"]["k8s"]["kustomize"]["env"]
    for key, value in env.items():
        (variable,) = re.fullmatch(r"\$\{(\w+)\}", value).groups()
        assert variable == key
        assert variable in main or variable.startswith("SERVICE_SLUICE_"), f"{variable} is not a Bicep output"
    overlay = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text(encoding="utf-8"))
    sources = {r["source"]["fieldPath"].removeprefix("data.") for r in overlay["replacements"]}
    assert sources == set(env), f"overlay and azure.yaml differ: {sources ^ set(env)}"
    resources_out = outputs(text("resources.bicep"))
    for output, expression in main.items():
        for used in re.findall(r"resources\.outputs\.(\w+)", expression):
            assert used in resources_out, f"main.bicep {output} reads resources.outputs.{used}, which does not exist"
    # azd's AKS host needs these two.
    assert {"AZURE_AKS_CLUSTER_NAME", "AZURE_CONTAINER_REGISTRY_ENDPOINT"} <= set(main)


def test_main_passes_every_parameter_resources_declares() -> None:
    declared = set(re.findall(r"^param (\w+)", text("resources.bicep"), re.MULTILINE))
    module = re.search(r"module resources 'resources.bicep' = \{.*?params: \{(.*?)\n  \}", text("main.bicep"),
                       re.DOTALL).group(1)
    passed = set(re.findall(r"^\s+(\w+): ", module, re.MULTILINE))
    assert passed == declared


# --- what infra/ and k8s-keda/ must agree on --------------------------------------------

def test_names_agree_with_the_manifests() -> None:
    data, trigger = settings(), manifest("ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert bicep_var("eventHubName") == data["SLUICE_INGEST_EVENTHUB_NAME"] == trigger["eventHubName"]
    assert bicep_var("consumerGroupName") == data["SLUICE_INGEST_CONSUMER_GROUP"] == trigger["consumerGroup"]
    assert bicep_var("checkpointContainer") == trigger["blobContainer"]
    assert bicep_var("deadLetterContainer") == data["SLUICE_STORAGE_DEADLETTER_CONTAINER"]
    assert bicep_var("keyspaceName") == data["SLUICE_CASSANDRA_KEYSPACE"]
    assert bicep_var("postgresDatabase") == data["SLUICE_POSTGRES_DBNAME"]
    assert bicep_var("postgresUser") == data["SLUICE_POSTGRES_USER"]


def test_names_keda_reads_are_lower_case() -> None:
    """KEDA keeps the case of the namespace and hub in the checkpoint path; the host lower-cases them."""
    source = text("resources.bicep")
    assert "var words = filter(split(toLower(" in source and "var token = toLower(" in source
    assert re.search(r"resource eventHubNamespace [^\n]+\n  name: 'evhns-\$\{name\}-\$\{token\}'", source)
    assert bicep_var("eventHubName") == bicep_var("eventHubName").lower()
    assert bicep_var("consumerGroupName") == bicep_var("consumerGroupName").lower()


def test_every_secret_the_manifests_name_is_written_to_key_vault_and_readable() -> None:
    written = {field(body, "name").strip("'") for kind, body in resources().values()
               if kind == "Microsoft.KeyVault/vaults/secrets"}
    listed = re.search(r"^var secretNames = \[\n(.*?)^\]", text("resources.bicep"), re.MULTILINE | re.DOTALL).group(1)
    assert set(re.findall(r"'([a-z0-9-]+)'", listed)) == written, "every secret written gets its reader assignment"
    named = {v for k, v in settings().items() if k.endswith("_PASSWORD_SECRET")}
    spc = manifest("SecretProviderClass")["spec"]["parameters"]["objects"]
    named |= {yaml.safe_load(o)["objectName"] for o in yaml.safe_load(spc)["array"]}
    assert named <= written, f"named in k8s-keda/ but never written: {named - written}"


def test_partitions_and_the_keda_maximum_agree() -> None:
    default = int(re.search(r"^param eventHubPartitions int = (\d+)$", text("main.bicep"), re.MULTILINE).group(1))
    scaled = manifest("ScaledObject")["spec"]
    count = int(manifest("ConfigMap")["metadata"]["annotations"]["sluice.io/eventhub-partition-count"])
    assert default == scaled["maxReplicaCount"] == count
    assert "partitionCount: eventHubPartitions" in text("resources.bicep")


# AKS's kube-reserved CPU by a node's core count (its "resource reservations"): allocatable = cores - reserved.
AKS_RESERVED_CPU_MILLI = {2: 100, 4: 140, 8: 180, 16: 260, 32: 420}
KUBE_SYSTEM_HEADROOM = 0.25  # of the CPU allocatable: KEDA, the CSI driver, Cilium, Container Insights


def _cpu_milli(value: object) -> int:
    text_value = str(value)
    return int(text_value[:-1]) if text_value.endswith("m") else int(float(text_value) * 1000)


def _requested(name: str) -> int:
    (deployment,) = [d for d in base_manifests() if d.get("kind") == "Deployment" and d["metadata"]["name"] == name]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return sum(_cpu_milli(c["resources"]["requests"]["cpu"]) for c in containers)


def test_the_node_pool_grows_to_hold_the_most_ingest_pods_keda_may_ask_for() -> None:
    """KEDA scales ingest up to the partition count (the overlay sets maxReplicaCount from it), up to the 32 that
    main.bicep accepts. A fixed pool of 3 x Standard_D4ds_v5 allocates 11.6 CPUs, where 32 ingest pods of 0.5 CPU,
    the lookups' two and the timers request about 17: the pods past that stayed Pending and the backlog drained at a
    fraction of the planned rate. The cluster autoscaler must be on, and its ceiling must hold them with room for
    kube-system."""
    main, pool = text("main.bicep"), resources()["aks"][1]
    assert field(pool, "enableAutoScaling") == "true"
    assert field(pool, "minCount") == "aksNodeCount"
    assert field(pool, "maxCount") == "max(aksNodeCount, aksNodeMaxCount)"
    most_partitions = int(re.search(r"@maxValue\((\d+)\)\nparam eventHubPartitions int", main).group(1))
    node_size = re.search(r"^param aksNodeSize string = '(\w+)'$", main, re.MULTILINE).group(1)
    max_nodes = int(re.search(r"^param aksNodeMaxCount int = (\d+)$", main, re.MULTILINE).group(1))
    cores = int(re.fullmatch(r"Standard_[A-Z]+(\d+)[a-z]*_v\d+", node_size).group(1))
    allocatable = max_nodes * (cores * 1000 - AKS_RESERVED_CPU_MILLI[cores]) * (1 - KUBE_SYSTEM_HEADROOM)
    lookups_min = manifest("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    needed = (most_partitions * _requested("sluice-ingest") + lookups_min * _requested("sluice-lookups")
              + _requested("sluice-timers"))
    assert needed <= allocatable, f"{needed}m requested at {most_partitions} partitions, {allocatable:.0f}m at most"
    parameters = json.loads(text("main.parameters.json"))["parameters"]
    assert parameters["aksNodeMaxCount"]["value"] == f"${{SLUICE_AKS_NODE_MAX_COUNT={max_nodes}}}"


def test_managed_redis_takes_the_workload_identity_and_no_key() -> None:
    """Access keys off, the workload identity as a Redis user (access policy assignment ``default``, its object id
    the user name its tokens sign in with), and the pods set to sign in with Entra ID: no Redis key is in the vault
    or the settings. A deployment with keys on and no key secret, or entra without the assignment, cannot sign in."""
    found = resources()
    assert field(found["redisDatabase"][1], "accessKeysAuthentication") == "'Disabled'"
    (user,) = [body for kind, body in found.values()
               if kind == "Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments"]
    assert field(user, "parent") == "redisDatabase" and field(user, "accessPolicyName") == "'default'"
    assert "objectId: app.properties.principalId" in user
    assert settings()["SLUICE_REDIS_AUTH"] == "entra" and "SLUICE_REDIS_PASSWORD_SECRET" not in settings()
    assert "listKeys" not in found["redisDatabase"][1] and "redisDatabase.listKeys" not in text("resources.bicep")


def test_the_services_are_configured_as_sluice_expects() -> None:
    found = resources()
    aks = found["aks"][1]
    assert re.search(r"oidcIssuerProfile: \{ enabled: true \}", aks)
    assert re.search(r"workloadIdentity: \{ enabled: true \}", aks)
    assert re.search(r"keda: \{ enabled: true \}", aks)
    assert "azureKeyvaultSecretsProvider" in aks and "networkPolicy: 'cilium'" in aks
    redis = found["redisDatabase"][1]
    assert (
        "port: 10000" in redis and "clusteringPolicy: 'OSSCluster'" in redis and "clientProtocol: 'Encrypted'" in redis
    )
    assert settings()["SLUICE_REDIS_URL"].endswith(":10000") and settings()["SLUICE_REDIS_CLUSTER"] == "true"
    pgbouncer = found["pgbouncer"][1]
    assert "name: 'pgbouncer.enabled'" in pgbouncer and "value: 'true'" in pgbouncer
    assert settings()["SLUICE_POSTGRES_PORT"] == "6432" and settings()["SLUICE_POSTGRES_PREPARE_THRESHOLD"] == "none"
    cosmos = found["cosmos"][1]
    assert "EnableCassandra" in cosmos
    assert "autoscaleSettings" in found["tables"][1]
    assert "disableLocalAuth: true" in found["eventHubNamespace"][1]
    assert "allowSharedKeyAccess: false" in found["storage"][1]
    assert "enableRbacAuthorization: true" in found["vault"][1]
    for symbol in ("logs", "insights"):
        assert symbol in found


def test_container_insights_has_the_data_collection_rule_its_identity_sign_in_needs() -> None:
    """With ``useAADAuth`` the monitoring add-on collects nothing until a data collection rule with the
    ContainerInsights extension is associated with the cluster (Microsoft's onboarding templates for managed
    identity auth create both): without them the workspace silently receives no pod log."""
    source = text("resources.bicep")
    assert "useAADAuth: 'true'" in source
    rule = re.search(r"^resource (\w+) 'Microsoft\.Insights/dataCollectionRules@[^']+' = \{\n(.*?)^\}", source,
                     re.MULTILINE | re.DOTALL)
    assert rule and "extensionName: 'ContainerInsights'" in rule.group(2)
    assert "workspaceResourceId: logs.id" in rule.group(2)
    assert rule.group(2).count("'Microsoft-ContainerInsights-Group-Default'") == 2, "collected and sent"
    association = re.search(r"^resource \w+ 'Microsoft\.Insights/dataCollectionRuleAssociations@[^']+' = \{\n(.*?)^\}",
                            source, re.MULTILINE | re.DOTALL)
    assert association and "scope: aks" in association.group(1)
    assert f"dataCollectionRuleId: {rule.group(1)}.id" in association.group(1)


def test_azure_yaml_deploys_the_overlay_to_aks() -> None:
    azure = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", azure["name"])
    service = azure["services"]["sluice"]
    assert service["host"] == "aks" and (ROOT / service["docker"]["path"]).exists()
    assert (ROOT / service["k8s"]["kustomize"]["dir"] / "kustomization.yaml").exists()
    assert service["k8s"]["namespace"] == manifest("Namespace")["metadata"]["name"]
    assert azure["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    declared = set(re.findall(r"^param (\w+)", text("main.bicep"), re.MULTILINE))
    assert set(parameters) <= declared


@pytest.mark.timeout(120)
def test_the_cosmos_tables_are_the_ones_the_migrations_create(cassandra_emulator) -> None:
    from shared.adapters.cassandra.migrations import apply_migrations
    from shared.adapters.cassandra.session import connect
    from shared.settings import CassandraSettings

    keyspace = f"ks_{uuid.uuid4().hex[:12]}"
    cfg = CassandraSettings(hosts=["127.0.0.1"], port=cassandra_emulator.port, keyspace=keyspace)
    session = connect(cfg, keyspace="system")
    try:
        apply_migrations(session, cfg)
        created = declared_tables(session, keyspace)
    finally:
        session.cluster.shutdown()
    declared = {t["name"]: t["schema"] for t in json.loads(text("cassandra-tables.json"))["tables"]}
    assert declared.keys() == created.keys(), f"tables differ: {declared.keys() ^ created.keys()}"
    for name, schema in created.items():
        assert declared[name]["partitionKeys"] == schema["partitionKeys"], name
        assert declared[name]["clusterKeys"] == schema["clusterKeys"], name
        assert sorted(map(json.dumps, declared[name]["columns"])) == sorted(map(json.dumps, schema["columns"])), name
    throughput = {t["name"]: t["throughput"] for t in json.loads(text("cassandra-tables.json"))["tables"]}
    assert set(throughput.values()) == {"events", "state"}
    assert throughput["events_by_id"] == "events" and throughput["feed_state"] == "state"


def test_the_infra_tree_holds_no_compiled_or_local_files() -> None:
    assert not list(INFRA.rglob("*.json.bak")) and not (INFRA / "k8s" / ".env").exists()
    assert Path(ROOT / ".gitignore").read_text(encoding="utf-8").count("infra/k8s/.env") == 1


# azd accepts environment names matching ^[a-zA-Z0-9-\(\)_\.]{1,64}$ (azure-dev cli/azd/pkg/environment/environment.go,
# EnvironmentNameRegexp); Azure's naming rules (learn.microsoft.com/azure/azure-resource-manager/management/
# resource-name-rules) for the names derived from it.
_NAME_RULES = {
    "storage account": ("st{short}{token}", re.compile(r"[a-z0-9]{3,24}")),
    "Key Vault": ("kv{short}{token}", re.compile(r"[a-zA-Z](?!.*--)[a-zA-Z0-9-]{1,22}[a-zA-Z0-9]")),
    "Event Hubs namespace": ("evhns-{name}-{token}", re.compile(r"[a-zA-Z][a-zA-Z0-9-]{4,48}[a-zA-Z0-9]")),
    # Microsoft.Cache/redisEnterprise: 1-60 letters, digits and hyphens, no leading, trailing or consecutive hyphen.
    "Managed Redis": ("redis-{name}-{token}", re.compile(r"(?=.{1,60}$)[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")),
}
# The WebJobs host id (HostIdValidator): 1-32 lower-case letters, digits and dashes, no leading, trailing or
# consecutive dash; the host refuses to start with any other.
_HOST_ID = re.compile(r"(?=.{1,32}$)[a-z0-9]+(?:-[a-z0-9]+)*")


def _bicep_name(environment_name: str) -> str:
    """resources.bicep's ``name``, evaluated as Bicep does (the caller asserts the template's expressions)."""
    cleaned = environment_name.replace("_", "-").replace(".", "-").replace("(", "").replace(")", "").lower()
    cut = ("-".join(word for word in cleaned.split("-") if word) or "env")[:20]
    return cut[:-1] if cut.endswith("-") else cut


# The 20th character of the two in the middle is a hyphen: the cut used to leave it last.
@pytest.mark.parametrize("environment_name", ["sluice.prod", "Sluice_(blue)", "a", "contoso-prod-europe-west",
                                              "fabrikam-ingest-dev-weu", "-blue--green_.canary-", "(_)",
                                              "sluice-prod-westeurope-blue-green-2026-canary-with-64-characters"])
def test_every_environment_name_azd_accepts_gives_valid_resource_names(environment_name: str) -> None:
    assert re.fullmatch(r"[a-zA-Z0-9-\(\)_\.]{1,64}", environment_name), "azd accepts the name"
    # The template's expressions, evaluated here as Bicep does (the asserts keep the two in step).
    source = text("resources.bicep")
    assert ("var words = filter(split(toLower(replace(replace(replace(replace(environmentName, '_', '-'), '.', '-'), "
            "'(', ''), ')', '')), '-'), word => !empty(word))") in source
    assert "var cut = take(empty(words) ? 'env' : join(words, '-'), 20)" in source
    assert "var name = endsWith(cut, '-') ? take(cut, length(cut) - 1) : cut" in source
    assert "var shortName = take(replace(name, '-', ''), 9)" in source
    assert int(re.search(r"@maxLength\((\d+)\)\s*(?:@\w+\(.*\)\s*)*param environmentName", text("main.bicep"),
                         re.DOTALL).group(1)) >= len(environment_name)
    name = _bicep_name(environment_name)
    short = name.replace("-", "")[:9]
    for what, (pattern, rule) in _NAME_RULES.items():
        value = pattern.format(name=name, short=short, token="x7k2m9q4r1t8z")  # uniqueString(): 13 of [a-z0-9]
        bicep = pattern.replace("{", "${").replace("${short}", "${shortName}")
        assert f"name: '{bicep}'" in source, what
        assert rule.fullmatch(value), f"{what} {value!r} for environment {environment_name!r}"
    assert "output functionsHostId string = take('sluice-${name}', 32)" in source
    host_id = f"sluice-{name}"[:32]
    assert _HOST_ID.fullmatch(host_id), f"the Functions host id {host_id!r} for environment {environment_name!r}"


# --- backups and the checkpoint store ------------------------------------------------------

def test_the_cassandra_account_takes_periodic_backups_geo_redundant() -> None:
    """Continuous backup (point-in-time restore) exists only for the NoSQL, MongoDB, Table and Gremlin APIs (Cosmos DB,
    "Continuous backup with point-in-time restore", current limitations): an account for Cassandra that asks for it
    is refused, and with it everything `azd up` provisions after it."""
    cosmos = resources()["cosmos"][1]
    assert "EnableCassandra" in cosmos and "Continuous" not in cosmos
    policy = field(cosmos, "backupPolicy")
    assert policy.startswith("{ type: 'Periodic', periodicModeProperties: {")
    assert "backupIntervalInMinutes: cosmosBackupIntervalMinutes" in policy
    assert "backupRetentionIntervalInHours: cosmosBackupRetentionHours" in policy
    assert "backupStorageRedundancy: cosmosBackupStorageRedundancy" in policy
    main = text("main.bicep")
    interval = int(re.search(r"^param cosmosBackupIntervalMinutes int = (\d+)$", main, re.MULTILINE).group(1))
    retention = int(re.search(r"^param cosmosBackupRetentionHours int = (\d+)$", main, re.MULTILINE).group(1))
    # Cosmos DB's limits: an interval of 1 .. 24 hours, a retention of 8 .. 720 hours and at least two intervals.
    assert 60 <= interval <= 1440 and 8 <= retention <= 720 and retention * 60 >= 2 * interval
    assert re.search(r"^param cosmosBackupStorageRedundancy string = 'Geo'$", main, re.MULTILINE)


def test_the_checkpoint_store_has_blob_soft_delete_and_versioning_off_and_a_delete_lock() -> None:
    """The host's Event Hubs checkpoints and ownership blobs (and KEDA's reading of them) live in this account's blob
    service: Microsoft's checkpoint store guidance wants blob soft delete and versioning off there. Sluice's dead
    letters share the account (they follow AzureWebJobsStorage), so container soft delete stays and a CanNotDelete
    lock, on by default, keeps the account from being deleted."""
    source, found = text("resources.bicep"), resources()
    services = {s: body for s, (kind, body) in found.items()
                if kind == "Microsoft.Storage/storageAccounts/blobServices"}
    holders = {field(body, "parent") for kind, body in found.values()
               if kind == "Microsoft.Storage/storageAccounts/blobServices/containers"}
    assert holders == {"blobService"} and bicep_var("checkpointContainer") == "azure-webjobs-eventhub"
    service = services["blobService"]
    assert field(service, "deleteRetentionPolicy") == "{ enabled: false }"
    assert field(service, "isVersioningEnabled") == "false"
    assert field(service, "containerDeleteRetentionPolicy") == "{ enabled: true, days: 7 }"
    lock = re.search(r"^resource storageLock 'Microsoft\.Authorization/locks@[^']+' = if \(storageDeleteLock\) \{\n"
                     r"(.*?)^\}", source, re.MULTILINE | re.DOTALL)
    assert lock and "scope: storage" in lock.group(1) and "level: 'CanNotDelete'" in lock.group(1)
    assert re.search(r"^param storageDeleteLock bool = true$", text("main.bicep"), re.MULTILINE)
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    lock_name = re.search(r"name: '([^']+)'", lock.group(1)).group(1)
    assert f"az lock delete --name {lock_name}" in deploy, "docs/deploy.md says how to remove it before azd down"


def test_every_allowed_postgres_tier_has_the_builtin_pgbouncer() -> None:
    """Flexible Server's built-in PgBouncer (6432, which every worker uses) exists only on General Purpose and Memory
    Optimized: a Burstable server would leave nothing listening there."""
    allowed = re.search(r"^@allowed\(\[([^\]]*)\]\)\nparam postgresTier string = '(\w+)'$", text("main.bicep"),
                        re.MULTILINE)
    assert allowed and set(re.findall(r"'(\w+)'", allowed.group(1))) == {"GeneralPurpose", "MemoryOptimized"}
    assert allowed.group(2) == "GeneralPurpose"
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "`postgresTier` is `GeneralPurpose` or `MemoryOptimized`" in deploy
