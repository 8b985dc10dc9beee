"""``python -m sluice doctor keda`` against the local stack: our Event Hubs emulator and Azurite.

Events are sent through the real producer client; checkpoints are written by the
SDK's own ``BlobCheckpointStore`` (the layout the Functions host and the dev host
write), then the doctor reads them the way KEDA's blobMetadata strategy does.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.eventhub import EventData, EventHubProducerClient
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
from azure.storage.blob import BlobServiceClient

from sluice.__main__ import main

NAMESPACE = "sluice-test"
FQDN = f"{NAMESPACE}.servicebus.windows.net"
CONTAINER = "azure-webjobs-eventhub"
# Events sent per partition (the test hubs have four).
SENT = {"0": 30, "1": 12, "2": 0, "3": 7}


@pytest.fixture
def loaded_hub(isolated_eventhub: Any) -> Any:
    with EventHubProducerClient.from_connection_string(isolated_eventhub.connection_string,
                                                       eventhub_name=isolated_eventhub.name) as producer:
        for partition, count in SENT.items():
            if count:
                batch = producer.create_batch(partition_id=partition)
                for i in range(count):
                    batch.add(EventData(f"event {i}"))
                producer.send_batch(batch)
    return isolated_eventhub


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, loaded_hub: Any, azurite_connection_string: str) -> dict[str, str]:
    monkeypatch.setenv("EventHubConnection", loaded_hub.connection_string)
    monkeypatch.setenv("AzureWebJobsStorage", azurite_connection_string)
    return {"hub": loaded_hub.name, "storage": azurite_connection_string}


def checkpoint(storage: str, container: str, hub: str, partition: str, sequence: int, *,
               namespace: str = FQDN, group: str = "sluice") -> None:
    """Write one checkpoint with the SDK's checkpoint store (lower-cased blob name, metadata position)."""
    with BlobServiceClient.from_connection_string(storage) as service, contextlib.suppress(ResourceExistsError):
        service.create_container(container)
    store = BlobCheckpointStore.from_connection_string(storage, container)
    store.update_checkpoint({"fully_qualified_namespace": namespace, "eventhub_name": hub, "consumer_group": group,
                             "partition_id": partition, "sequence_number": sequence, "offset": str(sequence)})


def scaled_object(tmp_path: Path, hub: str, *, container: str = CONTAINER, namespace: str = NAMESPACE,
                  threshold: int = 5, activation: int = 0, max_replicas: int = 4,
                  account: str = "devstoreaccount1") -> str:
    document = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "sluice-ingest"},
        "spec": {"scaleTargetRef": {"name": "sluice-ingest"}, "minReplicaCount": 0, "maxReplicaCount": max_replicas,
                 "fallback": {"failureThreshold": 3, "replicas": 2},
                 "triggers": [{"type": "azure-eventhub", "metadata": {
                     "eventHubNamespace": namespace, "eventHubName": hub, "consumerGroup": "sluice",
                     "storageAccountName": account, "blobContainer": container,
                     "checkpointStrategy": "blobMetadata", "unprocessedEventThreshold": str(threshold),
                     "activationUnprocessedEventThreshold": str(activation)}}]}}
    path = tmp_path / f"scaled-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def doctor(capsys: pytest.CaptureFixture[str], path: str, *extra: str) -> tuple[int, str]:
    code = main(["doctor", "keda", "--scaled-object", path, *extra])
    return code, capsys.readouterr().out


def lags(out: str) -> dict[str, tuple[str, int]]:
    """partition -> (checkpoint column, lag) from the doctor's table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0].isdigit():
            rows[parts[0]] = (parts[3], int(parts[4]))
    return rows


def test_lag_per_partition_and_replicas_from_checkpoints_where_keda_reads_them(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    container = f"keda-{uuid.uuid4().hex[:8]}"
    checkpoint(env["storage"], container, env["hub"], "0", 9)    # 30 sent: last 29, lag 20
    checkpoint(env["storage"], container, env["hub"], "1", 11)   # 12 sent: all done
    # partition 2 is empty; partition 3 has no checkpoint yet: its 7 events all count
    code, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container))
    assert code == 0, out
    assert lags(out) == {"0": ("9", 20), "1": ("11", 0), "2": ("-", 0), "3": ("-", 7)}
    assert "total lag 27" in out
    # ceil(27 / 5) = 6, capped by maxReplicaCount 4 (and by the 4 partitions)
    assert "replicas KEDA would compute: 4" in out
    code, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container, threshold=10))
    assert "replicas KEDA would compute: 3" in out
    # At or below the activation threshold KEDA leaves (or puts) the Deployment at zero.
    code, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container, activation=27))
    assert "replicas KEDA would compute: 0" in out
    # Partition 3 without a checkpoint is noted (KEDA counts it whole), but it is the normal start: no warning.
    assert "note: no checkpoint yet for partitions 3" in out and "WARNING" not in out


def test_checkpoints_in_another_container_are_the_over_scaling_trap(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = f"elsewhere-{uuid.uuid4().hex[:8]}"
    for partition, count in SENT.items():
        if count:
            checkpoint(env["storage"], written, env["hub"], partition, count - 1)  # all processed
    code, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=f"empty-{uuid.uuid4().hex[:8]}"))
    assert code == 1
    assert lags(out)["0"] == ("-", 30) and "total lag 49" in out
    assert "replicas KEDA would compute: 4" in out
    warning = next(line for line in out.splitlines() if line.startswith("WARNING:") and written in line)
    assert "scales out to the maximum" in warning and env["hub"] in warning


def test_a_namespace_in_another_case_misses_the_lower_cased_checkpoints(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    container = f"case-{uuid.uuid4().hex[:8]}"
    for partition, count in SENT.items():
        if count:
            checkpoint(env["storage"], container, env["hub"], partition, count - 1)
    good, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container))
    assert good == 0 and "total lag 0" in out and "replicas KEDA would compute: 0" in out
    # The SDK lower-cases the whole blob name; KEDA lower-cases only the consumer group.
    code, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container, namespace="Sluice-Test"))
    assert code == 1 and "total lag 49" in out
    assert any(line.startswith("WARNING:") and f"{container}/{FQDN}/" in line for line in out.splitlines()), out


def _everything_processed(storage: str, container: str, hub: str, group: str = "sluice") -> None:
    for partition, count in SENT.items():
        if count:
            checkpoint(storage, container, hub, partition, count - 1, group=group)


def _without_consumer_group(path: str) -> str:
    """The ScaledObject at ``path`` with no consumerGroup in its trigger: KEDA then reads ``$Default``."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    del document["spec"]["triggers"][0]["metadata"]["consumerGroup"]
    Path(path).write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.mark.parametrize("host_group", ["sluice", None], ids=["host-group-set", "host-group-unknown"])
def test_a_trigger_reading_another_consumer_group_than_the_hosts_is_the_over_scaling_trap(
        env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        host_group: str | None) -> None:
    """The host (consumer group ``sluice``) has checkpointed every event. The trigger names no ``consumerGroup``,
    so KEDA reads ``$Default``, finds no checkpoint, counts every retained event and keeps ingest at
    ``maxReplicaCount`` for good. The doctor printed only a note ("no checkpoint yet ... until the first
    checkpoint", which never comes) and exited 0. It now warns and exits 1: from the host's
    SLUICE_INGEST_CONSUMER_GROUP when it is set where the doctor runs, else from the checkpoints of the hub it
    finds under another consumer group."""
    if host_group is None:
        monkeypatch.delenv("SLUICE_INGEST_CONSUMER_GROUP", raising=False)
    else:
        monkeypatch.setenv("SLUICE_INGEST_CONSUMER_GROUP", host_group)
    container = f"host-{uuid.uuid4().hex[:8]}"
    _everything_processed(env["storage"], container, env["hub"])

    code, out = doctor(capsys, _without_consumer_group(scaled_object(tmp_path, env["hub"], container=container)))

    assert code == 1, out
    warning = next(line for line in out.splitlines() if line.startswith("WARNING:"))
    assert "consumer group 'sluice'" in warning and "consumer group '$Default'" in warning, warning


def test_checkpoints_of_another_consumer_group_are_not_the_hosts_when_the_host_group_is_known(
        env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Another application reading the hub through its own consumer group checkpoints it too. When the host's group
    is known (SLUICE_INGEST_CONSUMER_GROUP) and is the trigger's, those checkpoints are not the host's: a partition
    the host has not checkpointed yet is the normal start (a note), not a warning."""
    monkeypatch.setenv("SLUICE_INGEST_CONSUMER_GROUP", "sluice")
    container = f"other-{uuid.uuid4().hex[:8]}"
    _everything_processed(env["storage"], container, env["hub"], group="other")

    code, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container))

    assert code == 0 and "WARNING" not in out, out
    assert "note: no checkpoint yet for partitions 0, 1, 3" in out


def test_a_trigger_reading_another_hub_than_the_hosts_is_warned_of(
        env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A trigger whose eventHubName is not the host's SLUICE_INGEST_EVENTHUB_NAME scales ingest on another hub's
    lag and finds none of the host's checkpoints: warned of, naming both, exit 1."""
    monkeypatch.setenv("SLUICE_INGEST_EVENTHUB_NAME", "telemetry")
    monkeypatch.setenv("SLUICE_INGEST_CONSUMER_GROUP", "sluice")
    container = f"hub-{uuid.uuid4().hex[:8]}"
    _everything_processed(env["storage"], container, env["hub"])

    code, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container))

    assert code == 1, out
    warning = next(line for line in out.splitlines() if line.startswith("WARNING:"))
    assert f"hub {env['hub']!r}" in warning and "hub 'telemetry'" in warning, warning


def test_a_scaled_object_reading_another_storage_account_is_the_over_scaling_trap(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """KEDA reads the checkpoints from the account the trigger's ``storageAccountName`` names (a typo, a patch naming
    another environment's account): it finds none there (or cannot read it: the scaler fails) and counts every
    retained event. The doctor read the app's own account and printed "total lag 0", "replicas KEDA would compute:
    0" and exited 0; it now warns, naming both accounts, and exits 1."""
    container = f"acct-{uuid.uuid4().hex[:8]}"
    for partition, count in SENT.items():
        if count:
            checkpoint(env["storage"], container, env["hub"], partition, count - 1)  # all processed
    good, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container))
    assert good == 0 and "WARNING" not in out, out
    code, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container, account="sluiceotherstore"))
    assert code == 1, f"doctor says all is well although KEDA reads account 'sluiceotherstore':\n{out}"
    warning = next(line for line in out.splitlines() if line.startswith("WARNING:") and "sluiceotherstore" in line)
    assert "'devstoreaccount1'" in warning and "storageAccountName" in warning


def test_a_checkpoint_without_metadata_makes_the_scaler_fail_and_the_fallback_apply(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    container = f"body-{uuid.uuid4().hex[:8]}"
    checkpoint(env["storage"], container, env["hub"], "0", 5)
    with BlobServiceClient.from_connection_string(env["storage"]) as service:
        # The position in the body (an older host's format), none in the metadata.
        service.get_blob_client(container, f"{FQDN}/{env['hub']}/sluice/checkpoint/1").upload_blob(
            json.dumps({"SequenceNumber": 3}), overwrite=True)
    code, out = doctor(capsys, scaled_object(tmp_path, env["hub"], container=container))
    assert code == 1
    assert "KEDA's scaler fails" in out and "no 'sequencenumber' metadata" in out
    assert "replicas KEDA would use: 2 (fallback)" in out


def test_a_scaled_object_that_cannot_scale_is_refused_by_name(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "keda", "--scaled-object", scaled_object(tmp_path, env["hub"], threshold=0)])
    assert code == 2
    assert "unprocessedEventThreshold must be a positive number" in capsys.readouterr().err


def test_without_an_event_hubs_connection_the_doctor_names_the_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azurite_connection_string: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EventHubConnection", raising=False)
    monkeypatch.delenv("EventHubConnection__fullyQualifiedNamespace", raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", azurite_connection_string)
    assert main(["doctor", "keda", "--scaled-object", scaled_object(tmp_path, "telemetry")]) == 2
    assert "EventHubConnection__fullyQualifiedNamespace" in capsys.readouterr().err


def test_status_lag_reads_the_host_checkpoints_and_caches_the_reading(env: dict[str, str]) -> None:
    """The status page's lag: the checkpoints the host writes under its connection's namespace.

    Read once per max_age.
    """
    from shared.adapters.eventhub_lag import (
        CachedPartitionLag,
        EventHubBlobLagReader,
        eventhub_client,
        host_checkpoint_source,
    )

    connection = os.environ["EventHubConnection"]  # noqa: SIM112 (the host's name)
    namespace = host_checkpoint_source(env["hub"], "sluice", connection_string=connection,
                                       fully_qualified_namespace=None).namespace
    for partition, sequence in {"0": 19, "1": 11, "3": 6}.items():
        checkpoint(env["storage"], CONTAINER, env["hub"], partition, sequence, namespace=namespace)
    source = host_checkpoint_source(env["hub"], "sluice", connection_string=connection,
                                    fully_qualified_namespace=None)
    now = [0.0]
    with eventhub_client(env["hub"], "sluice", connection_string=connection) as hub, \
            BlobServiceClient.from_connection_string(env["storage"]) as blobs:
        lag = CachedPartitionLag(EventHubBlobLagReader(hub, blobs, source), max_age=5.0, monotonic=lambda: now[0])
        # Sequence numbers start at 0: 30 sent and checkpointed at 19 leaves 10, 12 at 11 leaves 0, 7 at 6 leaves 0.
        assert lag.lag().partitions == {"0": 10, "1": 0, "2": 0, "3": 0}
        checkpoint(env["storage"], CONTAINER, env["hub"], "0", 29, namespace=namespace)
        now[0] = 4.9
        assert lag.lag().partitions["0"] == 10, "read again before max_age"
        now[0] = 5.0
        assert lag.lag().partitions == {"0": 0, "1": 0, "2": 0, "3": 0}
