"""``doctor keda``: the ingest lag as KEDA reads it, and the replicas KEDA would ask for.

Reads the ScaledObject (the base ``k8s-keda/ingest.yaml`` by default; better, the one
deployed: ``kubectl -n sluice get scaledobject sluice-ingest -o json | python -m
sluice doctor keda --scaled-object -``), then each partition's last enqueued
sequence number from Event Hubs and the checkpoint blob KEDA's ``blobMetadata``
strategy reads, and prints per partition the lag, the total, and the replica count
KEDA and the HPA would settle on. It warns when the checkpoints sit where KEDA does
not look (another container, another case, another strategy, another hub or consumer
group than the host's ``SLUICE_INGEST_EVENTHUB_NAME`` and ``SLUICE_INGEST_CONSUMER_GROUP``):
KEDA then counts every retained event as unprocessed and scales ingest out to its maximum.

Connections come from the same variables the app uses: Event Hubs from
``EventHubConnection`` (a connection string, local stack) or
``EventHubConnection__fullyQualifiedNamespace`` (identity, with ``__credential`` and
``__clientId`` as the host reads them), storage from
``AzureWebJobsStorage`` or ``AzureWebJobsStorage__accountName``. Exit status 0 when
KEDA would read every checkpoint, 1 when there is a warning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.exceptions import ConfigurationError
from sluice.arguments import nonnegative_int, positive_int

if TYPE_CHECKING:
    from shared.adapters.eventhub_lag import KedaCheckpointSource
    from shared.ports.lag import LagReading
    from shared.services.scaling import ScalingRule
    from shared.settings import IngestSettings, StorageSettings

BASE_SCALED_OBJECT = Path(__file__).resolve().parents[2] / "k8s-keda" / "ingest.yaml"
SERVICEBUS_SUFFIX = "servicebus.windows.net"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("doctor", help="check a deployment's moving parts")
    checks = parser.add_subparsers(dest="check", required=True, metavar="CHECK")
    keda = checks.add_parser("keda", help="Event Hubs lag and replicas as KEDA's azure-eventhub scaler sees them",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    keda.add_argument("--scaled-object", default=str(BASE_SCALED_OBJECT),
                      help="YAML or JSON holding the ingest ScaledObject ('-': standard input)")
    keda.add_argument("--namespace", help="fully qualified Event Hubs namespace in the checkpoint blob names "
                      f"(default: the trigger's eventHubNamespace + .{SERVICEBUS_SUFFIX})")
    keda.add_argument("--container", help="override the trigger's blobContainer")
    # the bounds KEDA and the HPA put on these: a threshold divides the lag, and an HPA has at least one replica
    keda.add_argument("--threshold", type=positive_int, help="override unprocessedEventThreshold (at least 1)")
    keda.add_argument("--activation", type=nonnegative_int, help="override activationUnprocessedEventThreshold")
    keda.add_argument("--max-replicas", type=positive_int, help="override maxReplicaCount (at least 1)")
    keda.set_defaults(func=run)


def load_scaled_object(text: str, origin: str) -> dict[str, Any]:
    """The first ScaledObject with an ``azure-eventhub`` trigger in ``text`` (JSON, or YAML when PyYAML is there).
    Text that is neither (a Helm template, a half-pasted manifest) is a ``ConfigurationError`` naming ``origin``."""
    try:
        documents: list[Any] = [json.loads(text)]
    except ValueError:
        try:
            import yaml
        except ImportError:  # the image ships no PyYAML: give it JSON (kubectl ... -o json)
            raise ConfigurationError(f"{origin}: not JSON, and PyYAML is not installed to read YAML") from None
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{origin}: neither JSON nor valid YAML: {' '.join(str(exc).split())}") from None
    for doc in documents:
        items = doc.get("items", [doc]) if isinstance(doc, dict) else []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or item.get("kind") != "ScaledObject":
                continue
            spec = item.get("spec")
            triggers = spec.get("triggers") if isinstance(spec, dict) else None
            if not isinstance(triggers, list):
                raise ConfigurationError(f"{origin}: ScaledObject {_name(item)} has no list of spec.triggers")
            for trigger in triggers:
                if isinstance(trigger, dict) and trigger.get("type") == "azure-eventhub":
                    if not isinstance(trigger.get("metadata"), dict):
                        raise ConfigurationError(f"{origin}: ScaledObject {_name(item)}: its azure-eventhub "
                                                 "trigger has no metadata")
                    scaled: dict[str, Any] = item
                    return scaled
    raise ConfigurationError(f"{origin}: no ScaledObject with an azure-eventhub trigger")


def read_scaled_object(path: str) -> tuple[dict[str, Any], str]:
    """:func:`load_scaled_object` of the file ``path`` ('-': standard input), and where it came from; a file that
    cannot be read is a ``ConfigurationError`` naming it."""
    origin = "standard input" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(f"cannot read the ScaledObject {origin}: {cause}") from None
    return load_scaled_object(text, origin), origin


def scaler_failure(reading: LagReading, scaled: dict[str, Any]) -> list[str]:
    """What KEDA does when its scaler cannot read a checkpoint (``reading.scaler_error``): the error, and the
    ScaledObject's fallback replica count, or that the replica count stays as it is. Empty when it can read them."""
    if not reading.scaler_error:
        return []
    fallback = scaled["spec"].get("fallback")
    replicas = fallback.get("replicas") if isinstance(fallback, dict) else None  # `fallback:` left empty: none
    return [f"KEDA's scaler fails: {reading.scaler_error}",
            f"replicas KEDA would use: {replicas} (fallback)" if replicas is not None
            else "replicas: unchanged (no fallback in the ScaledObject)"]


def _name(item: dict[str, Any]) -> str:
    metadata = item.get("metadata")
    return repr(metadata.get("name")) if isinstance(metadata, dict) else "(unnamed)"


def _trigger(scaled: dict[str, Any]) -> dict[str, str]:
    return next(t["metadata"] for t in scaled["spec"]["triggers"] if t["type"] == "azure-eventhub")


def scaling_rule(scaled: dict[str, Any], origin: str, *, threshold: int | None = None,
                 activation: int | None = None, max_replicas: int | None = None) -> ScalingRule:
    """The ScaledObject's ``ScalingRule`` (threshold, activation, replica bounds), with optional overrides."""
    from shared.services.scaling import ScalingRule

    spec, meta = scaled["spec"], _trigger(scaled)

    def whole(where: dict[str, Any], key: str, default: int) -> int:
        value = where.get(key, default)
        try:
            return int(value)
        except (TypeError, ValueError):  # a null, a list, a word: named, not a traceback
            raise ConfigurationError(f"{origin}: {key} is {value!r}, not a whole number") from None

    try:
        return ScalingRule(
            threshold=threshold if threshold is not None else whole(meta, "unprocessedEventThreshold", 64),
            activation=activation if activation is not None
            else whole(meta, "activationUnprocessedEventThreshold", 0),
            min_replicas=whole(spec, "minReplicaCount", 0),
            max_replicas=max_replicas if max_replicas is not None else whole(spec, "maxReplicaCount", 100))
    except ValueError as exc:
        raise ConfigurationError(f"{origin}: {exc}") from None


def storage_account_check(meta: dict[str, Any], read: str | None,
                          environ: Mapping[str, str] = os.environ) -> tuple[list[str], list[str]]:
    """Warnings and notes on whether KEDA reads the storage account the doctor read the checkpoints from (``read``,
    the app's ``AzureWebJobsStorage``). KEDA reads the account of ``storageAccountName`` (with pod identity) or of
    the connection string in the variable ``storageConnectionFromEnv`` names (resolved in the scale target's
    environment, which ``environ`` stands in for here): each one the trigger names is compared. A different account
    holds none of the host's checkpoints, so KEDA counts every retained event (or its scaler fails on an account
    it cannot read) whatever the lag read here says."""
    from shared.adapters.blob_service import connection_string_account

    named: list[tuple[str, str]] = []
    notes: list[str] = []
    if meta.get("storageAccountName"):
        named.append(("storageAccountName", str(meta["storageAccountName"])))
    variable = meta.get("storageConnectionFromEnv")
    if variable:
        connection = environ.get(str(variable))
        account = connection_string_account(connection) if connection else None
        if account is not None:
            named.append((f"storageConnectionFromEnv ({variable})", account))
        else:
            notes.append(f"the trigger's storageConnectionFromEnv names {variable}, which is "
                         f"{'not set' if connection is None else 'no connection string naming an account'} here: "
                         "not checked that KEDA reads the account the checkpoints were read from")
    if not named and not variable:
        notes.append("the trigger names no storage account (storageAccountName, storageConnectionFromEnv): not "
                     "checked that KEDA reads the account the checkpoints were read from")
    if named and read is None:
        notes.append("the storage endpoint read here names no account: not checked that KEDA reads it")
        return [], notes
    warnings = [f"KEDA reads the checkpoints from storage account {account!r} (the trigger's {where}), but they "
                f"were read here from {read!r} (AzureWebJobsStorage, where the host writes them): KEDA finds no "
                "checkpoint there, or cannot read that account and its scaler fails, so the lag and replicas above "
                "are not what KEDA sees"
                for where, account in named if read is not None and account.lower() != read.lower()]
    return warnings, notes


def host_check(meta: dict[str, Any], source: KedaCheckpointSource,
               ingest: IngestSettings) -> tuple[list[str], list[str]]:
    """Warnings and notes on whether the trigger (``meta``, read as ``source``) reads the hub the host reads and the
    consumer group it checkpoints under (``ingest``: SLUICE_INGEST_EVENTHUB_NAME and SLUICE_INGEST_CONSUMER_GROUP,
    as set where the doctor runs). KEDA looks for ``<namespace>/<eventHubName>/<consumerGroup>/checkpoint/<p>``,
    with ``$Default`` when the trigger names no ``consumerGroup``: under another group it finds none of the host's
    checkpoints, counts every retained event as unprocessed and keeps ingest at ``maxReplicaCount`` for good.
    Names compare without case (Event Hubs ignores it; a checkpoint path in another case is the reader's warning).
    A setting not set here is not compared: the host's binding has no default to stand in for it."""
    warnings: list[str] = []
    notes: list[str] = []
    if "eventhub_name" not in ingest.model_fields_set:
        notes.append("SLUICE_INGEST_EVENTHUB_NAME is not set here: not checked that the trigger's eventHubName is "
                     "the hub the host reads")
    elif source.eventhub.lower() != ingest.eventhub_name.lower():
        warnings.append(f"KEDA reads hub {source.eventhub!r} (the trigger's eventHubName), but the host reads hub "
                        f"{ingest.eventhub_name!r} (SLUICE_INGEST_EVENTHUB_NAME): KEDA scales ingest on another hub's "
                        f"lag, without the host's checkpoints; set eventHubName: {ingest.eventhub_name}")
    if "consumer_group" not in ingest.model_fields_set:
        notes.append("SLUICE_INGEST_CONSUMER_GROUP is not set here: not checked that the trigger's consumerGroup is "
                     "the one the host checkpoints under")
    elif source.consumer_group.lower() != ingest.consumer_group.lower():
        given = "the trigger's consumerGroup" if "consumerGroup" in meta else \
            "KEDA's default: the trigger names no consumerGroup"
        warnings.append(f"KEDA reads the checkpoints of consumer group {source.consumer_group!r} ({given}), but the "
                        f"host checkpoints under consumer group {ingest.consumer_group!r} "
                        "(SLUICE_INGEST_CONSUMER_GROUP): KEDA finds none of them, counts every retained event as "
                        f"unprocessed and keeps ingest at maxReplicaCount; set consumerGroup: {ingest.consumer_group}")
    return warnings, notes


def storage_settings() -> StorageSettings:
    """``StorageSettings`` from the environment, or a ``ConfigurationError`` naming each bad value."""
    from shared.settings import StorageSettings, load_group

    return load_group(StorageSettings)


def ingest_settings() -> IngestSettings:
    """``IngestSettings`` from the environment, or a ``ConfigurationError`` naming each bad value."""
    from shared.settings import IngestSettings, load_group

    return load_group(IngestSettings)


def run(args: argparse.Namespace) -> int:
    from shared.adapters.blob_service import blob_service_client, interactive_options
    from shared.adapters.eventhub_lag import EventHubBlobLagReader, HostEventHubConnection, KedaCheckpointSource
    from shared.services.scaling import desired_replicas

    scaled, origin = read_scaled_object(args.scaled_object)
    meta = _trigger(scaled)
    if not meta.get("eventHubName"):
        raise ConfigurationError(f"{origin}: the azure-eventhub trigger's metadata has no eventHubName")
    try:
        stale_threshold = int(meta.get("stalePartitionInfoThreshold", 10_000))
    except (TypeError, ValueError):
        raise ConfigurationError(f"{origin}: stalePartitionInfoThreshold "
                                 f"{meta.get('stalePartitionInfoThreshold')!r} is not a whole number") from None
    namespace = args.namespace or f"{meta.get('eventHubNamespace', '')}.{SERVICEBUS_SUFFIX}"
    if "REPLACE_ME" in namespace or namespace.startswith("."):
        raise ConfigurationError(f"{origin}: eventHubNamespace is {meta.get('eventHubNamespace')!r}: give the "
                                 f"deployed ScaledObject, or --namespace")
    source = KedaCheckpointSource(
        namespace=namespace, eventhub=meta["eventHubName"], consumer_group=meta.get("consumerGroup", "$Default"),
        container=args.container or meta.get("blobContainer", ""),
        strategy=meta.get("checkpointStrategy", ""),
        stale_threshold=stale_threshold)
    rule = scaling_rule(scaled, origin, threshold=args.threshold, activation=args.activation,
                        max_replicas=args.max_replicas)
    ingest = ingest_settings()
    host_warnings, host_notes = host_check(meta, source, ingest)
    hub = HostEventHubConnection.from_environ(os.environ).client(source.eventhub, source.consumer_group)
    blobs = blob_service_client(storage_settings(), **interactive_options())
    with hub, blobs:
        # where the host's group is not known, checkpoints of the hub under any group may be the host's
        reading = EventHubBlobLagReader(hub, blobs, source,
                                        other_groups="consumer_group" not in ingest.model_fields_set).read()
    account_warnings, account_notes = storage_account_check(meta, blobs.account_name)
    warnings = [*host_warnings, *reading.warnings, *account_warnings]

    print(f"hub {source.eventhub!r}, consumer group {source.consumer_group!r}, checkpoints "
          f"{source.container}/{source.blob_name('<partition>')}")
    print(f"{'partition':>9} {'beginning':>12} {'last':>12} {'checkpoint':>12} {'lag':>12}")
    for p in reading.partitions:
        checkpoint = "-" if p.checkpoint_sequence_number is None else str(p.checkpoint_sequence_number)
        print(f"{p.partition_id:>9} {p.beginning_sequence_number:>12} {p.last_enqueued_sequence_number:>12} "
              f"{checkpoint:>12} {p.unprocessed:>12}")
    print(f"total lag {reading.total}")
    failure = scaler_failure(reading, scaled)
    for line in failure:
        print(line)
    if not failure:
        replicas = desired_replicas(reading.total, len(reading.partitions), rule)
        print(f"replicas KEDA would compute: {replicas} (threshold {rule.threshold}, activation {rule.activation}, "
              f"{rule.min_replicas}..{rule.max_replicas}, {len(reading.partitions)} partitions)")
    for note in [*reading.notes, *host_notes, *account_notes]:
        print(f"note: {note}")
    for warning in warnings:
        print(f"WARNING: {warning}")
    return 1 if warnings or reading.scaler_error else 0
