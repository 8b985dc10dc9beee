"""Validation of rendered manifests without a cluster: what CI runs on ``k8s-keda/`` and ``infra/k8s/``.

1. ``kubectl kustomize`` renders a directory (Debian's kubectl);
2. built-in kinds are validated against the Kubernetes version Sluice targets
   (``kubernetes-validate``, strict: unknown fields are errors);
3. KEDA's kinds against KEDA's own CRD schemas (``@kubernetes-models/keda`` through
   ``keda_validate.mjs``);
4. SecretProviderClass against the Secrets Store CSI schema (``schemas/``) plus what
   the Azure provider needs;
5. the ingest ScaledObject's numbers against what can scale.

Every problem is a line that names the object and the field.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.34.0"
KEDA_VERSION = "2.19"
PLACEHOLDER = "REPLACE_ME"
AZURE_SPC_PARAMETERS = ("clientID", "keyvaultName", "tenantId", "objects")


class RenderError(Exception):
    """``kubectl kustomize`` refused the directory; the message is kubectl's."""


def render(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl is not installed (scripts/install.sh installs Debian's kubectl)")
    run = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120,
                         check=False)
    if run.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory}: {run.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def builtin_problems(docs: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    import kubernetes_validate

    problems = []
    for doc in docs:
        group = str(doc.get("apiVersion", "")).split("/")[0]
        if group in ("keda.sh", "secrets-store.csi.x-k8s.io"):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name_of(doc)}: {doc.get('apiVersion')} is not a Kubernetes {version} kind")
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            problems.append(f"{name_of(doc)}: {path}: {exc.message}")
    return problems


def keda_problems(docs: list[dict[str, Any]]) -> list[str]:
    node = shutil.which("node")
    if node is None:
        return ["node is not installed: KEDA's schemas cannot be checked"]
    keda = [d for d in docs if str(d.get("apiVersion", "")).startswith("keda.sh/")]
    run = subprocess.run([node, str(HERE / "keda_validate.mjs")], input=json.dumps(keda), capture_output=True,
                         text=True, timeout=120, check=False, cwd=ROOT)
    if run.returncode != 0:
        return [f"keda_validate.mjs failed (npm ci installs @kubernetes-models/keda): {run.stderr.strip()[-800:]}"]
    return [f"{r['kind']}/{r['name']}: {error}" for r in json.loads(run.stdout) for error in r["errors"]]


def secret_provider_problems(docs: list[dict[str, Any]]) -> list[str]:
    import jsonschema

    schema = json.loads((HERE / "schemas" / "secretproviderclass-v1.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for doc in docs:
        if doc.get("kind") != "SecretProviderClass":
            continue
        for error in validator.iter_errors(doc):
            problems.append(f"{name_of(doc)}: /{'/'.join(map(str, error.path))}: {error.message}")
        spec = doc.get("spec", {})
        if spec.get("provider") == "azure":
            parameters = spec.get("parameters", {})
            for key in AZURE_SPC_PARAMETERS:
                if not parameters.get(key):
                    problems.append(f"{name_of(doc)}: spec.parameters.{key} is missing (the Azure provider needs it)")
            try:
                objects = yaml.safe_load(parameters.get("objects") or "array: []")["array"]
                for item in objects:
                    entry = yaml.safe_load(item)
                    if not entry.get("objectName"):
                        problems.append(f"{name_of(doc)}: spec.parameters.objects: an entry has no objectName")
            except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"{name_of(doc)}: spec.parameters.objects is not the provider's YAML list: {exc}")
    return problems


def _int(metadata: dict[str, Any], key: str, default: int | None = None) -> int | None:
    value = metadata.get(key)
    if value is None:
        return default
    try:
        return int(str(value))
    except ValueError:
        return None


def scaling_problems(docs: list[dict[str, Any]]) -> list[str]:
    """The ingest ScaledObject's numbers: a threshold that scales, a fallback and limits that make sense."""
    problems = []
    partitions = None
    for doc in docs:
        count = doc.get("metadata", {}).get("annotations", {}).get("sluice.io/eventhub-partition-count")
        if doc.get("kind") == "ConfigMap" and count is not None:
            partitions = int(count) if str(count).isdigit() else None
            if partitions is None:
                problems.append(f"{name_of(doc)}: sluice.io/eventhub-partition-count {count!r} is not a number")
    for doc in docs:
        if doc.get("kind") != "ScaledObject":
            continue
        spec, where = doc.get("spec", {}), name_of(doc)
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        for trigger in spec.get("triggers", []):
            if trigger.get("type") != "azure-eventhub":
                continue
            metadata = trigger.get("metadata", {})
            threshold = _int(metadata, "unprocessedEventThreshold", 64)
            activation = _int(metadata, "activationUnprocessedEventThreshold", 0)
            if threshold is None or threshold <= 0:
                problems.append(f"{where}: unprocessedEventThreshold {metadata.get('unprocessedEventThreshold')!r} "
                                "cannot scale: it must be a positive integer")
            if activation is None or activation < 0:
                problems.append(f"{where}: activationUnprocessedEventThreshold "
                                f"{metadata.get('activationUnprocessedEventThreshold')!r} must be an integer >= 0")
            elif low == 0 and activation > 0:
                problems.append(f"{where}: activationUnprocessedEventThreshold {activation} with minReplicaCount 0 "
                                f"leaves up to {activation} events unprocessed for good")
            if metadata.get("checkpointStrategy") != "blobMetadata":
                problems.append(f"{where}: checkpointStrategy {metadata.get('checkpointStrategy')!r}: the Functions "
                                "host writes blobMetadata checkpoints; KEDA would find none and over-scale")
            rate = doc.get("metadata", {}).get("annotations", {}).get("sluice.io/events-per-second-per-replica")
            drain = doc.get("metadata", {}).get("annotations", {}).get("sluice.io/drain-seconds")
            if threshold and rate and drain and threshold != math.floor(float(rate) * float(drain)):
                problems.append(f"{where}: unprocessedEventThreshold {threshold} is not events-per-second-per-replica "
                                f"{rate} x drain-seconds {drain} = {math.floor(float(rate) * float(drain))}")
        if not isinstance(high, int) or not isinstance(low, int) or not 0 <= low <= high or high < 1:
            problems.append(f"{where}: minReplicaCount {low!r} / maxReplicaCount {high!r} cannot scale")
        elif partitions is not None and high > partitions:
            problems.append(f"{where}: maxReplicaCount {high} exceeds the hub's {partitions} partitions")
        fallback = spec.get("fallback")
        if not fallback:
            problems.append(f"{where}: no fallback: while the scaler fails ingest could stay at 0 replicas")
        elif isinstance(high, int) and not 1 <= fallback.get("replicas", 0) <= high:
            problems.append(
                f"{where}: fallback.replicas {fallback.get('replicas')!r} must be 1..maxReplicaCount {high}"
            )
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        if not behavior.get("scaleDown", {}).get("stabilizationWindowSeconds"):
            problems.append(f"{where}: no scale-down stabilizationWindowSeconds: each scale-in moves partitions")
    return problems


def placeholder_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []

    def walk(node: Any, path: str, doc: dict[str, Any]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}", doc)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]", doc)
        elif isinstance(node, str) and PLACEHOLDER in node:
            problems.append(f"{name_of(doc)}: {path.lstrip('.')} is still {node!r}")

    for doc in docs:
        walk(doc, "", doc)
    return problems


def problems(docs: list[dict[str, Any]], *, placeholders_allowed: bool) -> list[str]:
    found = builtin_problems(docs) + keda_problems(docs) + secret_provider_problems(docs) + scaling_problems(docs)
    if not placeholders_allowed:
        found += placeholder_problems(docs)
    return found
