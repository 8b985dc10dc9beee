"""``lag``: the ingest hub's lag per partition, as KEDA computes it, from the host's own checkpoints.

Per partition: who owns it (the ownership blob's ``ownerid``), the checkpoint's
sequence number, the hub's last enqueued sequence number, the lag (last enqueued
minus checkpoint, counted as KEDA's ``azure-eventhub`` scaler counts it) and, for
the total, the replicas KEDA and the HPA would ask for with the threshold of the
ScaledObject (``k8s-keda/ingest.yaml`` by default).

Where ``doctor keda`` reads the checkpoints where the *ScaledObject* says KEDA
looks, this reads them where the *host* writes them (the container
``azure-webjobs-eventhub`` under the connection's namespace), the same reading the
lookups pods export as ``sluice.eventhub.lag`` (which leaves out a partition whose
checkpoint KEDA cannot read, where this prints the scaler's error). Connections:
``EventHubConnection`` (or ``EventHubConnection__fullyQualifiedNamespace``, with
``__credential`` and ``__clientId`` as the host reads them) and
``AzureWebJobsStorage``; the
hub and consumer group from ``SLUICE_INGEST_EVENTHUB_NAME`` and
``SLUICE_INGEST_CONSUMER_GROUP``. Exit status 0, or 1 when KEDA's scaler cannot read
a checkpoint (its fallback applies) or the checkpoints sit where KEDA would not find them.
"""

from __future__ import annotations

import argparse
import os

from sluice.commands.doctor import (
    BASE_SCALED_OBJECT,
    ingest_settings,
    read_scaled_object,
    scaler_failure,
    scaling_rule,
    storage_settings,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("lag", help="Event Hubs lag per partition and the replicas KEDA would ask for",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scaled-object", default=str(BASE_SCALED_OBJECT),
                        help="YAML or JSON holding the ingest ScaledObject, for its threshold ('-': standard input)")
    parser.add_argument("--eventhub", help="the hub (default: SLUICE_INGEST_EVENTHUB_NAME, or telemetry)")
    parser.add_argument("--consumer-group", help="the consumer group (default: SLUICE_INGEST_CONSUMER_GROUP)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared.adapters.blob_service import blob_service_client, interactive_options
    from shared.adapters.eventhub_lag import EventHubBlobLagReader, HostEventHubConnection, partition_owners
    from shared.services.scaling import desired_replicas

    scaled, origin = read_scaled_object(args.scaled_object)
    rule = scaling_rule(scaled, origin)
    ingest = ingest_settings()
    hub_name = args.eventhub or ingest.eventhub_name
    group = args.consumer_group or ingest.consumer_group
    connection = HostEventHubConnection.from_environ(os.environ)
    source = connection.checkpoint_source(hub_name, group)
    hub = connection.client(hub_name, group)
    blobs = blob_service_client(storage_settings(), **interactive_options())
    with hub, blobs:
        reading = EventHubBlobLagReader(hub, blobs, source).read()
        owners = partition_owners(blobs, source)

    print(f"hub {hub_name!r}, consumer group {group!r}, checkpoints {source.container}/"
          f"{source.blob_name('<partition>')}")
    print(f"{'partition':>9}  {'owner':<36} {'checkpoint':>12} {'last enqueued':>14} {'lag':>10}")
    for p in reading.partitions:
        checkpoint = "-" if p.checkpoint_sequence_number is None else str(p.checkpoint_sequence_number)
        print(f"{p.partition_id:>9}  {owners.get(p.partition_id, '-'):<36} {checkpoint:>12} "
              f"{p.last_enqueued_sequence_number:>14} {p.unprocessed:>10}")
    failure = scaler_failure(reading, scaled)
    if failure:  # a lag counted without the unreadable checkpoint is no replica count KEDA would ask for
        print(f"total lag {reading.total}")
        for line in failure:
            print(line)
    else:
        replicas = desired_replicas(reading.total, len(reading.partitions), rule)
        print(f"total lag {reading.total}; replicas KEDA would ask for: {replicas} (unprocessedEventThreshold "
              f"{rule.threshold}, activation {rule.activation}, {rule.min_replicas}..{rule.max_replicas} replicas, "
              f"{len(reading.partitions)} partitions)")
    for note in reading.notes:
        print(f"note: {note}")
    for warning in reading.warnings:
        print(f"WARNING: {warning}")
    return 1 if reading.warnings or reading.scaler_error else 0

