"""Ingest's final attempt: the batch letter and the rejected letters hold each item once."""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime

import azure.functions as func
import pytest
from azure.storage.blob import BlobServiceClient
from cassandra.cluster import NoHostAvailable

from shared import bootstrap
from tests.fixtures.functions import HostContext, user_function


def _closed_port() -> int:
    with socket.socket() as probe:  # nothing listens there once the socket is closed: Cassandra is "down"
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _batch(bodies: list[bytes], partition: str = "4") -> list[func.EventHubEvent]:
    now = datetime.now(UTC).replace(microsecond=0)
    return [func.EventHubEvent(
        body=raw,
        trigger_metadata={"PartitionContext": func.meta.Datum(
            json.dumps({"PartitionId": partition, "ConsumerGroup": "sluice"}), "json")},
        enqueued_time=now, partition_key=None, sequence_number=number, offset=number * 1000,
    ) for number, raw in enumerate(bodies, start=1)]


def test_an_invalid_event_is_not_dead_lettered_twice_when_the_final_attempt_dead_letters_the_batch(
        azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ingest (functions/ingest.py -> shared/services/ingest.py IngestService.handle): the invalid events are
    dead-lettered one by one (put_rejected, idempotent by name: rejected/.../p4/<seq>-body.json) after the store
    write, and on the final attempt before the batch letter; when the store still fails then, put_batch used to
    write *every* record of the batch, the invalid ones included, into batches/.../p4/<first>-<last>.json. Each
    invalid event was in two dead letters: `sluice deadletter list` showed it twice, `deadletter replay` ran it
    twice (and counted it "still invalid" twice), and the batch letter's count overstated what the store outage
    cost. Real components: the registered ingest function, Azurite, a Cassandra port nothing listens on (the
    cold-start outage of tests/integration/test_ingest.py)."""
    container = f"dl-{uuid.uuid4().hex[:12]}"
    settings = {
        "AzureWebJobsStorage": azurite_connection_string, "SLUICE_STORAGE_DEADLETTER_CONTAINER": container,
        "SLUICE_CASSANDRA_HOSTS": "127.0.0.1", "SLUICE_CASSANDRA_PORT": str(_closed_port()),
        "SLUICE_CASSANDRA_KEYSPACE": "ks_review", "SLUICE_CASSANDRA_CONNECT_TIMEOUT_SECONDS": "1",
        "SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS": "2", "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "SLUICE_POSTGRES_HOST": "127.0.0.1",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    try:
        valid = {"event_id": str(uuid.uuid4()), "device_id": "dev-1", "event_type": "reading",
                 "timestamp": datetime.now(UTC).isoformat(), "severity": "info", "measurements": {"t": 1.0}}
        batch = _batch([json.dumps(valid).encode(), b"garbage"])
        ingest = user_function("ingest")
        with pytest.raises(NoHostAvailable):  # attempt 0: the store is down, the host will retry
            ingest(batch, HostContext("ingest", 0, 5))
        ingest(batch, HostContext("ingest", 5, 5))  # the final attempt dead-letters the batch and returns

        client = BlobServiceClient.from_connection_string(azurite_connection_string).get_container_client(container)
        letters_of: dict[int, list[str]] = {}
        for blob in client.list_blobs():
            document = json.loads(client.download_blob(blob.name).readall())
            items = document["events"] if document["kind"] == "batch" else [document]
            for item in items:
                letters_of.setdefault(item["eventhub"]["sequence_number"], []).append(blob.name)
    finally:
        bootstrap.reset()
    assert set(letters_of) == {1, 2}, "every event of the batch is dead-lettered somewhere"
    duplicated = {sequence: names for sequence, names in letters_of.items() if len(names) > 1}
    assert not duplicated, f"dead-lettered more than once: {duplicated}"
