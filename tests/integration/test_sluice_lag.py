"""``python -m sluice lag`` against our Event Hubs emulator and Azurite.

Checkpoints and ownership are written by the SDK's own ``BlobCheckpointStore``
under the connection's namespace (where the host and the dev host write them);
the command prints each partition's owner, checkpoint, last enqueued sequence
number and lag, and the replicas KEDA would ask for with the manifest's threshold.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
from azure.storage.blob import BlobServiceClient
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from shared.adapters.eventhub_lag import (
    HOST_CHECKPOINT_CONTAINER,
    CachedPartitionLag,
    EventHubBlobLagReader,
    KedaCheckpointSource,
    eventhub_client,
    host_checkpoint_source,
)
from shared.adapters.otel_metrics import OtelMetrics
from sluice.__main__ import main
from tests.integration.test_doctor_keda import checkpoint, env, loaded_hub, scaled_object  # noqa: F401 (fixtures)
from tests.unit.test_telemetry import collected


def rows(out: str) -> dict[str, tuple[str, str, int, int]]:
    """partition -> (owner, checkpoint, last enqueued, lag) from the table."""
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0].isdigit():
            table[parts[0]] = (parts[1], parts[2], int(parts[3]), int(parts[4]))
    return table


def test_lag_prints_owner_checkpoint_last_enqueued_lag_and_replicas(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLUICE_INGEST_EVENTHUB_NAME", env["hub"])
    monkeypatch.setenv("SLUICE_INGEST_CONSUMER_GROUP", "sluice")
    source = host_checkpoint_source(env["hub"], "sluice", connection_string=_connection(),
                                    fully_qualified_namespace=None)
    checkpoint(env["storage"], HOST_CHECKPOINT_CONTAINER, env["hub"], "0", 9, namespace=source.namespace)
    checkpoint(env["storage"], HOST_CHECKPOINT_CONTAINER, env["hub"], "1", 11, namespace=source.namespace)
    owner = f"worker-{uuid.uuid4()}"
    store = BlobCheckpointStore.from_connection_string(env["storage"], HOST_CHECKPOINT_CONTAINER)
    store.claim_ownership([{"fully_qualified_namespace": source.namespace, "eventhub_name": env["hub"],
                            "consumer_group": "sluice", "partition_id": "0", "owner_id": owner}])
    code = main(["lag", "--scaled-object", scaled_object(tmp_path, env["hub"], threshold=5)])
    out = capsys.readouterr().out
    assert code == 0, out
    # 30 sent to partition 0 (last 29) checkpointed at 9: 20; partition 1 done; 2 empty; 3 never checkpointed: all 7.
    assert rows(out) == {"0": (owner, "9", 29, 20), "1": ("-", "11", 11, 0), "2": ("-", "-", -1, 0),
                         "3": ("-", "-", 6, 7)}
    # ceil(27 / 5) = 6, capped by the test ScaledObject's maxReplicaCount of 4.
    assert "total lag 27; replicas KEDA would ask for: 4 (unprocessedEventThreshold 5" in out
    code = main(["lag", "--scaled-object", scaled_object(tmp_path, env["hub"], threshold=10)])
    assert "replicas KEDA would ask for: 3 " in capsys.readouterr().out


def test_lag_reads_the_threshold_of_the_base_manifest(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """Without --scaled-object the threshold is k8s-keda/ingest.yaml's."""
    import yaml

    from sluice.commands.doctor import BASE_SCALED_OBJECT
    manifest = next(d for d in yaml.safe_load_all(BASE_SCALED_OBJECT.read_text()) if d and d["kind"] == "ScaledObject")
    threshold = next(t for t in manifest["spec"]["triggers"] if t["type"] == "azure-eventhub")["metadata"][
        "unprocessedEventThreshold"]
    assert main(["lag", "--eventhub", env["hub"], "--consumer-group", "sluice"]) == 0
    out = capsys.readouterr().out
    assert f"unprocessedEventThreshold {threshold}," in out and "total lag 49" in out, out


def unreadable_checkpoint_on_partition_0(env: dict[str, str]) -> KedaCheckpointSource:  # noqa: F811
    """Checkpoints of partitions 0 (at 29: caught up), 1 and 3, then partition 0's blob loses its position (a hand
    edit, another tool's layout): metadata with an offset and no ``sequencenumber``."""
    source = host_checkpoint_source(env["hub"], "sluice", connection_string=_connection(),
                                    fully_qualified_namespace=None)
    for partition, sequence in (("0", 29), ("1", 11), ("3", 6)):
        checkpoint(env["storage"], HOST_CHECKPOINT_CONTAINER, env["hub"], partition, sequence,
                   namespace=source.namespace)
    with BlobServiceClient.from_connection_string(env["storage"]) as service:
        service.get_blob_client(HOST_CHECKPOINT_CONTAINER, source.blob_name("0")).set_blob_metadata({"offset": "29"})
    return source


def _connection() -> str:
    import os

    return os.environ["EventHubConnection"]  # noqa: SIM112




def test_lag_reports_a_checkpoint_keda_cannot_read_and_the_fallback_not_a_replica_count(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """When a checkpoint blob has no numeric ``sequencenumber`` KEDA's scaler fails and the ScaledObject's fallback
    applies (shared/adapters/eventhub_lag.py): ``lag`` says so as ``doctor keda`` does ("KEDA's scaler fails ...",
    the fallback replicas) and exits 1; it does not count the partition as never checkpointed and present the
    replicas computed from that as what KEDA asks for."""
    unreadable_checkpoint_on_partition_0(env)

    code = main(["lag", "--scaled-object", scaled_object(tmp_path, env["hub"], threshold=5, max_replicas=4),
                 "--eventhub", env["hub"], "--consumer-group", "sluice"])

    out = capsys.readouterr().out
    assert code == 1, out
    assert "KEDA's scaler fails" in out and "sequencenumber" in out, out
    assert "replicas KEDA would use: 2 (fallback)" in out, out
    assert "replicas KEDA would ask for" not in out, out


def test_the_lag_gauge_and_status_page_leave_out_a_checkpoint_keda_cannot_read(env: dict[str, str]) -> None:  # noqa: F811
    """Where KEDA's scaler fails on a partition's checkpoint (its fallback applies), it counts nothing there; the
    reader's own count (every retained event, as if never checkpointed) is no lag: on ``sluice.eventhub.lag`` it
    would grow with every event and fire ``SluiceEventHubLagGrowing`` on a caught-up partition. So the gauge has
    no point for the partition and the status page's lag reader names it as unreadable, while ``sluice lag``
    (above) still reports the scaler's error."""
    source = unreadable_checkpoint_on_partition_0(env)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with eventhub_client(env["hub"], "sluice", connection_string=_connection()) as hub, \
            BlobServiceClient.from_connection_string(env["storage"]) as blobs:
        lag = CachedPartitionLag(EventHubBlobLagReader(hub, blobs, source))
        assert EventHubBlobLagReader(hub, blobs, source).read().scaler_error
        figures = OtelMetrics(provider).register_lag_gauge(lag.fresh_lag, "sluice", period=0.5)
        deadline = time.monotonic() + 30
        while len(points := collected(reader).get("sluice.eventhub.lag", {})) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        figures.stop()
        provider.shutdown()
        counts = lag.lag()  # what the status page's lag section says (tests/unit/test_status_service.py)
    by_partition = {dict(attrs)["messaging.destination.partition.id"]: value for attrs, value in points.items()}
    # 30 sent to partition 0 and its checkpoint unreadable; 1 checkpointed at 11 of 11; 2 empty; 3 at 6 of 6.
    assert by_partition == {"1": 0, "2": 0, "3": 0}, by_partition
    assert counts.partitions == by_partition, counts
    unreadable = counts.unreadable
    assert list(unreadable) == ["0"] and "sequencenumber" in unreadable["0"], unreadable


class _Hub:
    """One partition holding events 0..10 and, as on a fresh deployment, no checkpoint yet."""

    def get_partition_ids(self) -> list[str]:
        return ["0"]

    def get_partition_properties(self, partition_id: str) -> dict[str, Any]:
        return {"id": partition_id, "beginning_sequence_number": 0, "last_enqueued_sequence_number": 10,
                "is_empty": False}


class _Blob:
    def get_blob_properties(self) -> Any:
        raise ResourceNotFoundError("The specified blob does not exist.")


class _ContainerScopedBlobs:
    """A ``BlobServiceClient`` as the workload identity sees the account under infra/'s role assignments (data roles
    on the containers only, tests/deploy/test_infra.py ``SCOPES``): List Containers, an operation on the account, is
    refused with 403 AuthorizationPermissionMismatch."""

    def get_blob_client(self, container: str, blob: str) -> _Blob:
        return _Blob()

    def list_containers(self, *args: Any, **kwargs: Any) -> Any:
        error = HttpResponseError(message="This request is not authorized to perform this operation using this "
                                          "permission. ErrorCode:AuthorizationPermissionMismatch")
        error.status_code = 403
        error.error_code = "AuthorizationPermissionMismatch"
        raise error


def test_the_lag_reading_survives_the_container_scoped_storage_roles_infra_grants() -> None:
    """A partition with events and no checkpoint (a first backlog) makes the reader look for checkpoints written
    elsewhere, which lists the account's containers; under the container-scoped roles the deployment grants, Azure
    refuses that (403). The look is a diagnostic: the reading (the status page's lag, the ``sluice.eventhub.lag``
    gauge, the audit) still carries KEDA's count for the partition, every retained event (10 - 0 + 1 = 11, KEDA's
    ``GetUnprocessedEventCountWithoutCheckpoint``), and a note says the look was refused, instead of reporting
    storage as down and no lag at all while KEDA scales ingest out on that backlog."""
    source = KedaCheckpointSource(namespace="evhns-sluice-prod.servicebus.windows.net", eventhub="telemetry",
                                  consumer_group="sluice", container=HOST_CHECKPOINT_CONTAINER)
    reader = EventHubBlobLagReader(_Hub(), _ContainerScopedBlobs(), source)  # type: ignore[arg-type]

    reading = reader.read()

    (partition,) = reading.partitions
    assert (partition.checkpoint_sequence_number, partition.unprocessed) == (None, 11)
    assert reading.warnings == () and reading.scaler_error is None
    (note,) = reading.notes
    assert "partitions 0" in note and "AuthorizationPermissionMismatch" in note, note


@pytest.mark.parametrize("connection", ["garbage", "SharedAccessKeyName=k;SharedAccessKey=hunter2",
                                        "Endpoint=;SharedAccessKey=hunter2"])
def test_a_connection_string_naming_no_endpoint_is_refused_as_such(connection: str) -> None:
    """A malformed EventHubConnection was reported as not set at all ("set EventHubConnection ... or ..."), sending
    the operator to look for a setting that is there. The message says it names no endpoint, without echoing it."""
    from shared.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="EventHubConnection is set but names no endpoint") as refused:
        host_checkpoint_source("hub", "sluice", connection_string=connection, fully_qualified_namespace=None)
    assert "hunter2" not in str(refused.value)
