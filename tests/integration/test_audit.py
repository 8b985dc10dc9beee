"""The zero-loss audit through the emulators: Event Hubs, Azurite (checkpoints, dead letters) and Cassandra.

Records are sent to a hub of the Event Hubs emulator (which numbers them from 0
per partition), handed to the registered ``ingest`` function with those sequence
numbers as the host would, and checkpointed with the SDK's ``BlobCheckpointStore``
where the host writes checkpoints. ``python -m sluice audit`` must then find
nothing missing, and exactly the gap a test makes on purpose: a ledger row
deleted, or records the host checkpointed past without ever handing them over.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.eventhub import EventData, EventHubProducerClient
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
from azure.storage.blob import BlobServiceClient
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from emulators.cassandra.faults import clear_faults, inject_faults
from shared import bootstrap
from shared.adapters.audit_metrics import register_audit_gauge
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.eventhub_lag import HOST_CHECKPOINT_CONTAINER, host_checkpoint_source
from shared.domain.events import EventMetadata
from sluice.__main__ import main
from sluice.launcher import Running
from tests.fixtures.cassandra import start_cassandra_emulator
from tests.fixtures.eventhubs import IsolatedHub, start_eventhubs_emulator, write_config
from tests.fixtures.functions import HostContext, user_function

pytestmark = pytest.mark.timeout(180)

NOW = datetime.now(UTC).replace(microsecond=0)


def event(device: str = "dev-1", **fields: Any) -> dict:
    return {"event_id": str(uuid.uuid4()), "device_id": device, "event_type": "reading",
            "timestamp": NOW.isoformat(), "measurements": {"temperature": 21.5}, **fields}


@pytest.fixture(scope="module")
def private_cassandra() -> Iterator[Running]:
    """An emulator of this module's own, so armed faults never reach another test's requests."""
    running = start_cassandra_emulator()
    yield running
    running.stop()


@pytest.fixture
def stack(private_cassandra: Running, azurite_connection_string: str, isolated_eventhub: Any,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with audit_stack(isolated_eventhub, private_cassandra, azurite_connection_string, monkeypatch) as running:
        yield running


@contextlib.contextmanager
def audit_stack(isolated_eventhub: Any, cassandra_emulator: Running, azurite_connection_string: str,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The app's settings for ``isolated_eventhub``, a fresh keyspace and dead-letter container; ``deliver`` sends
    records to a partition and hands them to the registered ingest function with their sequence numbers, as the
    host does; ``checkpoint`` writes the host's checkpoint with the SDK's BlobCheckpointStore."""
    keyspace = f"ks_{uuid.uuid4().hex[:12]}"
    for name, value in {
        "AzureWebJobsStorage": azurite_connection_string,
        "SLUICE_STORAGE_DEADLETTER_CONTAINER": f"dl-{uuid.uuid4().hex[:12]}",
        "SLUICE_CASSANDRA_HOSTS": cassandra_emulator.host, "SLUICE_CASSANDRA_PORT": str(cassandra_emulator.port),
        "SLUICE_CASSANDRA_KEYSPACE": keyspace, "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "SLUICE_POSTGRES_HOST": "127.0.0.1", "EventHubConnection": isolated_eventhub.connection_string,
        "SLUICE_INGEST_EVENTHUB_NAME": isolated_eventhub.name, "SLUICE_INGEST_CONSUMER_GROUP": "sluice",
    }.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    apply_migrations(bootstrap.cassandra_session(), bootstrap.settings().cassandra)
    source = host_checkpoint_source(
        isolated_eventhub.name,
        "sluice",
        connection_string=isolated_eventhub.connection_string,
        fully_qualified_namespace=None,
    )
    with (
        BlobServiceClient.from_connection_string(azurite_connection_string) as service,
        contextlib.suppress(ResourceExistsError),
    ):
        service.create_container(HOST_CHECKPOINT_CONTAINER)
    store = BlobCheckpointStore.from_connection_string(azurite_connection_string, HOST_CHECKPOINT_CONTAINER)

    def checkpoint(partition: str, sequence: int) -> None:
        store.update_checkpoint(
            {
                "fully_qualified_namespace": source.namespace,
                "eventhub_name": source.eventhub,
                "consumer_group": "sluice",
                "partition_id": partition,
                "sequence_number": sequence,
                "offset": str(sequence),
            }
        )

    producer = EventHubProducerClient.from_connection_string(
        isolated_eventhub.connection_string, eventhub_name=isolated_eventhub.name
    )
    ingest_function = user_function("ingest")
    sent: dict[str, int] = {}

    def deliver(partition: str, bodies: list[bytes], *, ingest: bool = True, final: bool = False) -> None:
        """Send ``bodies`` to ``partition``, then hand them to ingest with their sequence numbers, as the host does."""
        batch = producer.create_batch(partition_id=partition)
        for body in bodies:
            batch.add(EventData(body))
        producer.send_batch(batch)
        first = sent.get(partition, 0)
        sent[partition] = first + len(bodies)
        if ingest:
            events = [
                func.EventHubEvent(
                    body=body,
                    enqueued_time=NOW + timedelta(milliseconds=first + i),
                    sequence_number=first + i,
                    offset=first + i,
                    trigger_metadata={
                        "PartitionContext": func.meta.Datum(
                            json.dumps({"PartitionId": partition, "ConsumerGroup": "sluice"}), "json"
                        )
                    },
                )
                for i, body in enumerate(bodies)
            ]
            ingest_function(events, HostContext("ingest", 5 if final else 0, 5))

    try:
        with producer:
            yield {"deliver": deliver, "checkpoint": checkpoint, "keyspace": keyspace, "cassandra": cassandra_emulator}
    finally:
        clear_faults(cassandra_emulator.host, cassandra_emulator.port)
        bootstrap.reset()


def key(partition: str) -> str:
    """``partition``'s ``eh_partition`` in the ledger: ingest names the hub it reads."""
    return f"{bootstrap.ingest_hub()}/{partition}"


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["audit", *args])
    return code, capsys.readouterr().out


def load(stack: dict[str, Any]) -> datetime:
    """Partition 0: 3 valid, then 1 not JSON, an event twice, an array half valid. Partition 1: 4 valid. Checkpointed.
    """
    since = datetime.now(UTC) - timedelta(seconds=1)
    valid = [event() for _ in range(3)]
    bodies = [json.dumps(e).encode() for e in valid]
    stack["deliver"]("0", bodies)  # sequence numbers 0..2, one run
    twice = json.dumps(event("dev-4")).encode()
    stack["deliver"]("0", [b"{not json", twice, twice, json.dumps([event("dev-2"), {"nope": 1}]).encode()])  # 3..6
    stack["deliver"]("1", [json.dumps(event("dev-3")).encode() for _ in range(4)])
    stack["checkpoint"]("0", 6)
    stack["checkpoint"]("1", 3)
    return since


def test_nothing_is_missing_when_every_record_was_stored_dead_lettered_or_a_duplicate(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    since = load(stack)
    runs = [
        tuple(r)
        for r in bootstrap.cassandra_session().execute(
            "SELECT first_sequence, last_sequence, stored, dead_lettered, duplicate "
            f"FROM {stack['keyspace']}.ingest_audit_runs "
            "WHERE eh_partition = %s AND block = 0", (key("0"),)
        )
    ]
    # One row per batch: 3 stored; then a bad body, an event twice (an exact duplicate in its batch) and an array
    # with one bad element.
    assert runs == [(0, 2, 3, 0, 0), (3, 6, 2, 2, 1)]
    code, out = audit(capsys, "--since", since.isoformat())
    assert code == 0, out
    assert "missing 0 of 11 audited: the zero-loss SLO holds" in out
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["0"], ["1"])}
    assert table == {"0": ["0", "6", "7", "0"], "1": ["0", "3", "4", "0"]}

    # From now on nothing has been checkpointed: no verdict drawn from an empty range
    code, out = audit(capsys, "--since", datetime.now(UTC).isoformat())
    assert code == 0, out
    assert "the zero-loss SLO holds" not in out
    assert "nothing was checkpointed in the range asked for, so nothing was audited" in out


def test_a_deleted_ledger_row_is_a_gap(stack: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    load(stack)
    bootstrap.cassandra_session().execute(
        f"DELETE FROM {stack['keyspace']}.ingest_audit_runs WHERE eh_partition = %s AND block = 0 "
        "AND first_sequence = 3 AND last_sequence = 6", (key("0"),)
    )
    code, out = audit(capsys, "--from-sequence", "0")
    assert code == 1, out
    assert [line for line in out.splitlines() if line.startswith("gap:")] == ["gap: partition 0 sequence 3..6"]
    assert "missing 4:" in out


def test_records_checkpointed_past_but_never_ingested_are_a_gap(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    since = load(stack)
    # Two more records reach partition 1 and the checkpoint moves past them, but ingest never saw them.
    stack["deliver"]("1", [json.dumps(event()).encode() for _ in range(2)], ingest=False)
    stack["checkpoint"]("1", 5)
    code, out = audit(capsys, "--since", since.isoformat())
    assert code == 1, out
    assert [line for line in out.splitlines() if line.startswith("gap:")] == ["gap: partition 1 sequence 4..5"]
    # Records past the checkpoint are in flight, not missing.
    stack["deliver"]("1", [json.dumps(event()).encode()], ingest=False)
    assert audit(capsys, "--since", since.isoformat())[1].count("gap:") == 1


def test_a_batch_dead_lettered_while_cassandra_was_down_is_accounted_by_its_letter(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Store and ledger both down on the final attempt: the batch letter names the run the ledger lacks."""
    since = load(stack)
    cassandra = stack["cassandra"]
    inject_faults(cassandra.host, cassandra.port, error="unavailable", ratio=1.0, applies_to="writes")
    stack["deliver"]("1", [json.dumps(event()).encode() for _ in range(3)], final=True)  # 4..6
    clear_faults(cassandra.host, cassandra.port)
    stack["checkpoint"]("1", 6)
    code, out = audit(capsys, "--since", since.isoformat())
    assert code == 0, out
    [line] = [line for line in out.splitlines() if line.startswith("dead-lettered batch:")]
    assert "partition 1 sequence 4..6" in line and re.search(r"/p1/4-6-[a-z0-9-]+\.[0-9a-f]{10}\.json", line), line
    # Without the letter, the same run is a gap.
    stack["deliver"]("1", [json.dumps(event()).encode()], ingest=False)  # 7, never ingested
    stack["checkpoint"]("1", 7)
    code, out = audit(capsys, "--since", since.isoformat())
    assert code == 1 and [line for line in out.splitlines() if line.startswith("gap:")] == [
        "gap: partition 1 sequence 7"
    ], out


@pytest.mark.timeout(180)
def test_replaying_rejected_letters_leaves_the_audit_without_loss(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """``deadletter replay`` records no audit run: each letter's records are accounted for by their batch's run
    already, which a replayed record's own run (keyed by its sequence number) would overwrite when it was the
    first of its batch, so after replaying the rejected letters the audit still finds nothing missing."""
    since = load(stack)  # partition 0, batch 3..6 starts with a body that is not JSON (rejected letter 3)
    code, out = audit(capsys, "--from-sequence", "0")
    assert code == 0 and "missing 0" in out, out

    assert main(["deadletter", "replay", "--kind", "rejected"]) == 0
    capsys.readouterr()

    code, out = audit(capsys, "--since", since.isoformat())
    assert code == 0, out


def test_the_worker_gauge_reports_the_missing_count_per_partition(stack: dict[str, Any]) -> None:
    """``sluice.audit.missing`` read by the OpenTelemetry SDK's in-memory reader. The audit runs on a thread of its
    own every ``max_age`` (never inside the collection), so the points follow the ledger within a few runs."""
    load(stack)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gauge = register_audit_gauge(bootstrap.audit_service(), window=1000, max_age=0.5, meter_provider=provider)
    try:
        _wait_for_points(reader, {"0": 0, "1": 0, "2": 0, "3": 0})  # 2 and 3: nothing checkpointed
        bootstrap.cassandra_session().execute(f"DELETE FROM {stack['keyspace']}.ingest_audit_runs WHERE "
                                              "eh_partition = %s AND block = 0 AND first_sequence = 0 AND "
                                              "last_sequence = 3", (key("1"),))
        _wait_for_points(reader, {"0": 0, "1": 4, "2": 0, "3": 0})
    finally:
        gauge.stop()
        provider.shutdown()


def _wait_for_points(reader: InMemoryMetricReader, expected: dict[str, int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (points := _points(reader)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{points} != {expected} after {timeout:g} s")
        time.sleep(0.2)


def _points(reader: InMemoryMetricReader) -> dict[str, int]:
    data = reader.get_metrics_data()
    return {
        point.attributes["messaging.destination.partition.id"]: point.value
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "sluice.audit.missing"
        for point in metric.data.data_points
    }


def test_since_through_ingests_own_consumer_group_is_refused_by_name(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLUICE_INGEST_AUDIT_CONSUMER_GROUP", "sluice")
    bootstrap.reset()
    assert main(["audit", "--since", "1h"]) == 2
    assert "SLUICE_INGEST_AUDIT_CONSUMER_GROUP" in capsys.readouterr().err
    bootstrap.reset()
    code, out = audit(capsys, "--from-sequence", "0")  # sequence numbers need no reader
    assert code == 0, out


def test_a_start_sequence_past_every_checkpoint_is_refused_not_reported_as_no_loss(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The audit never says "the zero-loss SLO holds" for a range it did not look at: ``--from-sequence N`` past
    every partition's checkpoint leaves every range empty (a typo'd or too large N), so it is refused naming the
    checkpoints (exit 2), here though partition 0 has records checkpointed past that were never stored."""
    stack["deliver"]("0", [json.dumps(event()).encode() for _ in range(3)], ingest=False)  # lost
    stack["checkpoint"]("0", 2)
    assert audit(capsys, "--from-sequence", "0")[0] == 1  # the loss is there

    code = main(["audit", "--from-sequence", "1000000"])

    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert "the zero-loss SLO holds" not in captured.out
    assert "1000000 is past every partition's checkpoint (0: 2, 1: none" in captured.err


def _hub_with_retention(tmp_path: Path, prefix: str, hours: float) -> Iterator[IsolatedHub]:
    """A hub of its own emulator whose events pass retention after ``hours`` (MessageRetentionInHours)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    running = start_eventhubs_emulator(config=write_config(tmp_path / "hubs.json", [name],
                                                           MessageRetentionInHours=hours))
    yield IsolatedHub(running, name)
    running.stop()


@pytest.fixture
def short_retention_hub(tmp_path: Path) -> Iterator[IsolatedHub]:
    """Events pass retention after about 11 s (MessageRetentionInHours 0.003)."""
    yield from _hub_with_retention(tmp_path, "short", 0.003)


def test_since_older_than_the_hubs_retention_is_reported_as_not_audited(
    private_cassandra: Running, azurite_connection_string: str, short_retention_hub: IsolatedHub,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``audit --since T`` promises every sequence number enqueued since T. When T is older than the oldest event
    the hub still retains, the expired records' times are unknown and T cannot be placed: the audit says that part
    was not audited, suggests ``--from-sequence``, does not claim the SLO holds, and exits 1. (It used to start at
    the oldest retained event without a word and report "missing 0", over records 0..2 here that were
    checkpointed past and never stored.)"""
    with audit_stack(short_retention_hub, private_cassandra, azurite_connection_string, monkeypatch) as stack:
        since = datetime.now(UTC) - timedelta(seconds=1)
        stack["deliver"]("0", [json.dumps(event()).encode() for _ in range(3)], ingest=False)  # 0..2: lost
        time.sleep(14)  # 0..2 pass the hub's retention (the ledger in Cassandra knows nothing of them)
        stack["deliver"]("0", [json.dumps(event()).encode() for _ in range(3)])  # 3..5: stored
        stack["checkpoint"]("0", 5)
        assert audit(capsys, "--from-sequence", "0")[0] == 1  # the loss is there

        code, out = audit(capsys, "--since", since.isoformat())

    assert code == 1, out
    assert "the zero-loss SLO holds" not in out
    assert "NOT AUDITED: partition 0:" in out and "below 3 have expired" in out and "--from-sequence 0" in out


class _DownLedger:
    """The audit ledger while Cassandra is down (writes fail); afterwards it holds what was written."""

    def __init__(self) -> None:
        self.down = True
        self.runs: list[tuple[str, int, int]] = []

    def record(self, runs: Any) -> None:
        from shared.exceptions import TransientError

        if self.down:
            raise TransientError("ledger down: NoHostAvailable")
        self.runs += [(r.partition, r.first, r.last) for r in runs]

    def accounted(self, partition: str, first: int, last: int) -> list[tuple[int, int]]:
        return [(lo, hi) for p, lo, hi in self.runs if p == partition and hi >= first and lo <= last]


class _Checkpointed:
    """The host checkpointed ``partition`` at ``checkpoint``."""

    def __init__(self, partition: str, checkpoint: int) -> None:
        self.partition, self.checkpoint = partition, checkpoint

    def read(self) -> Any:
        from shared.ports.lag import LagReading, PartitionLag

        return LagReading((PartitionLag(self.partition, 0, self.checkpoint, self.checkpoint, 0),))


class _NoStore:
    def write(self, events: Any) -> None:
        assert not events


def test_a_batch_of_only_invalid_records_dead_lettered_while_the_ledger_was_down_is_accounted_by_its_letter(
        azurite_connection_string: str) -> None:
    """On the final attempt with the ledger (Cassandra) down, a batch every record of which already has its own
    rejected letter still gets a batch letter: no event in it (``rejected_separately`` lists them), but its name
    spans the batch, so the audit counts the range as dead-lettered, not lost."""
    from shared.adapters.blob_deadletter import BlobDeadLetteredBatches, BlobDeadLetterSink
    from shared.domain.events import EventMetadata, Limits, RawRecord
    from shared.services.audit import AuditService
    from shared.services.ingest import IngestService

    container = f"dl-{uuid.uuid4().hex[:12]}"
    service_client = BlobServiceClient.from_connection_string(azurite_connection_string)
    ledger = _DownLedger()
    enqueued = datetime.now(UTC)
    records = [RawRecord(b"{not json", EventMetadata(partition_id="5", sequence_number=10, enqueued_time=enqueued)),
               RawRecord(b'{"device_id": "dev-1"}',
                         EventMetadata(partition_id="5", sequence_number=11, enqueued_time=enqueued))]
    result = IngestService(_NoStore(), BlobDeadLetterSink(service_client, container), Limits(), ledger).handle(
        records, final_attempt=True)
    assert result.batch_dead_lettered and result.rejected == 2
    client = service_client.get_container_client(container)
    letters = {b.name: json.loads(client.download_blob(b.name).readall()) for b in client.list_blobs()}
    [batch] = [letter for letter in letters.values() if letter["kind"] == "batch"]
    assert batch["events"] == [] and [m["sequence_number"] for m in batch["rejected_separately"]] == [10, 11]

    ledger.down = False  # Cassandra is back; the operator audits
    report = AuditService(ledger, _Checkpointed("5", 11),
                          letters=BlobDeadLetteredBatches(service_client, container)).audit(from_sequence=10)
    [partition] = report.partitions
    assert partition.gaps == (), f"the audit reports sequence numbers {partition.gaps} of partition 5 as lost"


def test_the_gauge_reports_records_checkpointed_past_that_expired_before_ingest_read_them(
    private_cassandra: Running, azurite_connection_string: str, short_retention_hub: IsolatedHub,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gauge counts what is missing in the window below the checkpoint, whatever the hub still retains. Ingest
    is down longer than the hub's retention (the classic Event Hubs loss): records 0..2 of partition 0 expire
    unread, the host resumes at the oldest retained record, ingests 3..5 and checkpoints 5, past 0..2. The CLI
    and the gauge both report the 3. (The window used to stop at the hub's oldest retained event: the gauge said 0
    and the alert that should page on this loss stayed silent.)"""
    with audit_stack(short_retention_hub, private_cassandra, azurite_connection_string, monkeypatch) as stack:
        stack["deliver"]("0", [json.dumps(event()).encode() for _ in range(3)], ingest=False)  # 0..2: never read
        time.sleep(14)  # 0..2 pass the hub's retention unread
        stack["deliver"]("0", [json.dumps(event()).encode() for _ in range(3)])  # 3..5: stored
        stack["checkpoint"]("0", 5)
        code, out = audit(capsys, "--from-sequence", "0")
        assert code == 1 and "missing 3" in out, out

        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        gauge = register_audit_gauge(bootstrap.audit_service(), window=1000, max_age=0.5, meter_provider=provider)
        try:
            deadline = time.monotonic() + 30
            while "0" not in (points := _points(reader)) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            gauge.stop()
            provider.shutdown()

    assert points.get("0") == 3, f"the gauge reports {points} while the CLI reports 3 missing in partition 0"


@pytest.fixture
def retention_36s_hub(tmp_path: Path) -> Iterator[IsolatedHub]:
    """Events pass retention after 36 s (MessageRetentionInHours 0.01)."""
    yield from _hub_with_retention(tmp_path, "ret36", 0.01)


@pytest.mark.timeout(240)
def test_since_is_not_placed_on_retention_read_before_the_events_at_it_expired(
    private_cassandra: Running, azurite_connection_string: str, retention_36s_hub: IsolatedHub,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Placing T costs a receiver's whole 10 s wait in a partition quiet since T. Partitions 0 and 1 are quiet, so
    partition 2 is placed about 20 s after the hub's properties were first read. Partition 2: 0..2 enqueued after
    T and lost (checkpointed past, never stored), 3..5 stored, checkpoint 5; 0..2 pass retention between the two.
    The first found since T is 3, now the oldest retained: T is not placed, 0..2 are NOT AUDITED and the exit
    status is 1. (With the oldest retained read before the placing, "3 > 0" passed for a placed T, and the audit
    said "the zero-loss SLO holds".)"""
    with audit_stack(retention_36s_hub, private_cassandra, azurite_connection_string, monkeypatch) as stack:
        for partition in ("0", "1"):  # before T: quiet partitions since then, each checkpointed
            stack["deliver"](partition, [json.dumps(event()).encode()])
            stack["checkpoint"](partition, 0)
        time.sleep(1)
        since = datetime.now(UTC)
        time.sleep(0.5)
        stack["deliver"]("2", [json.dumps(event()).encode() for _ in range(3)], ingest=False)  # 0..2: lost
        lost_at = time.monotonic()  # 0..2 pass retention about lost_at + 37 s
        time.sleep(17)
        stack["deliver"]("2", [json.dumps(event()).encode() for _ in range(3)])  # 3..5: stored, retained to +53 s
        stack["checkpoint"]("2", 5)
        time.sleep(max(0.0, lost_at + 20 - time.monotonic()))

        code, out = audit(capsys, "--since", since.isoformat())  # partition 2 placed about lost_at + 45 s

        assert audit(capsys, "--from-sequence", "0")[0] == 1  # the loss is there

    assert "the zero-loss SLO holds" not in out and code == 1, out


def test_when_only_the_rejected_letters_fail_the_audit_lists_only_what_is_in_neither_place(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/operations.md: when the function fails with ``could not write dead letter``, ``sluice audit`` lists
    the exact ranges in neither place. Partition 0, one batch 0..3 on its final attempt: 0..2 valid and stored,
    3 not JSON, and its rejected letter cannot be written (Blob down); the call fails and the host checkpoints 3.
    Ingest records the runs of what is stored, so only 3 is a gap. (No run was recorded at all, and the audit
    counted the stored 0..2 lost with 3.)"""
    from shared.adapters.blob_deadletter import BlobDeadLetterSink
    from shared.adapters.cassandra.event_store import CassandraEventStore
    from shared.domain.events import EventMetadata, RawRecord
    from shared.exceptions import TransientError
    from shared.services.ingest import IngestService
    from tests.fixtures.azurite import connection_string, free_port

    bodies = [json.dumps(event()).encode() for _ in range(3)] + [b"{not json"]
    stack["deliver"]("0", bodies, ingest=False)  # in the hub as 0..3
    cfg = bootstrap.settings()
    store = CassandraEventStore(bootstrap.cassandra_session(), cfg.cassandra, cfg.rules.critical_rules)
    blob_down = BlobServiceClient.from_connection_string(connection_string(free_port()), retry_total=0)
    service = IngestService(store, BlobDeadLetterSink(blob_down, "deadletters", attempts=1), cfg.ingest.limits(),
                            bootstrap.audit_ledger())
    records = [RawRecord(body, EventMetadata(partition_id="0", sequence_number=i, enqueued_time=datetime.now(UTC)))
               for i, body in enumerate(bodies)]
    with pytest.raises(TransientError, match="could not write dead letter"):
        service.handle(records, final_attempt=True)
    stack["checkpoint"]("0", 3)  # the host moves past the failed invocation

    code, out = audit(capsys, "--from-sequence", "0")

    assert code == 1 and [line for line in out.splitlines() if line.startswith("gap:")] == \
        ["gap: partition 0 sequence 3"], out


def hand_to_ingest(partition: str, first: int, bodies: list[bytes]) -> None:
    """Hand ``bodies`` to the registered ingest function as sequence numbers ``first``.. of ``partition``, as the
    host does with a batch delivered again (nothing is sent to the hub)."""
    events = [
        func.EventHubEvent(
            body=body, enqueued_time=datetime.now(UTC), sequence_number=first + i, offset=first + i,
            trigger_metadata={"PartitionContext": func.meta.Datum(
                json.dumps({"PartitionId": partition, "ConsumerGroup": "sluice"}), "json")},
        )
        for i, body in enumerate(bodies)
    ]
    user_function("ingest")(events, HostContext("ingest", 0, 5))


def test_a_batch_delivered_again_cut_shorter_does_not_erase_the_run_of_the_longer_one(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The ledger port: runs may overlap and recording is idempotent. Partition 0, records 0..9: pod A ingests them
    as one batch (run 0..9) and checkpoints 9; pod B, which claimed the partition from an older checkpoint while A
    was at work (a KEDA scale-out rebalancing), got 0..4 as its batch and ingests them again (run 0..4). Every
    record is stored and the SLO holds. (Keyed by the first sequence number only, B's run overwrote A's and the
    audit reported 5..9 missing.)"""
    bodies = [json.dumps(event()).encode() for _ in range(10)]
    stack["deliver"]("0", bodies)  # sent to the hub and ingested as one batch: run 0..9 (pod A)
    stack["checkpoint"]("0", 9)
    hand_to_ingest("0", 0, bodies[:5])  # pod B's batch of the same records, cut shorter: run 0..4

    code, out = audit(capsys, "--from-sequence", "0")

    assert code == 0 and "the zero-loss SLO holds" in out, out


def test_runs_recorded_before_migration_5_still_account_for_their_records(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Upgraded in place, the ledger's history is in ``ingest_audit`` (migration 2), where ingest wrote before: the
    audit reads it with ``ingest_audit_runs``, so right after the upgrade it reports no false gap, and a gap in
    neither table is still one."""
    load(stack)
    session, ks = bootstrap.cassandra_session(), stack["keyspace"]
    session.execute(f"DELETE FROM {ks}.ingest_audit_runs WHERE eh_partition = %s AND block = 0 "
                    "AND first_sequence = 0 AND last_sequence = 3", (key("1"),))
    session.execute(f"INSERT INTO {ks}.ingest_audit (eh_partition, block, first_sequence, last_sequence, stored, "
                    "dead_lettered, duplicate, recorded_at) VALUES ('1', 0, 0, 2, 3, 0, 0, toTimestamp(now()))")

    code, out = audit(capsys, "--from-sequence", "0")

    assert code == 1 and [line for line in out.splitlines() if line.startswith("gap:")] == \
        ["gap: partition 1 sequence 3"], out


def use_hub(hub: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest (and the audit) read ``hub`` from now on, with the same keyspace and dead-letter container."""
    monkeypatch.setenv("EventHubConnection", hub.connection_string)
    monkeypatch.setenv("SLUICE_INGEST_EVENTHUB_NAME", hub.name)
    bootstrap.reset()


def checkpoint_of(hub: Any, azurite_connection_string: str, partition: str, sequence: int) -> None:
    source = host_checkpoint_source(hub.name, "sluice", connection_string=hub.connection_string,
                                    fully_qualified_namespace=None)
    BlobCheckpointStore.from_connection_string(azurite_connection_string, HOST_CHECKPOINT_CONTAINER) \
        .update_checkpoint({"fully_qualified_namespace": source.namespace, "eventhub_name": source.eventhub,
                            "consumer_group": "sluice", "partition_id": partition, "sequence_number": sequence,
                            "offset": str(sequence)})


def send(hub: Any, partition: str, count: int) -> None:
    with EventHubProducerClient.from_connection_string(hub.connection_string, eventhub_name=hub.name) as producer:
        batch = producer.create_batch(partition_id=partition)
        for _ in range(count):
            batch.add(EventData(json.dumps(event()).encode()))
        producer.send_batch(batch)


@pytest.mark.timeout(240)
def test_the_audit_does_not_count_another_hubs_records_as_this_hubs(
    stack: dict[str, Any], _eventhubs_hub_pool: Any, azurite_connection_string: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every hub numbers its records from 0. Hub A's records 0..4 of partition 0 were ingested (and a batch of them
    dead-lettered too); then ingest moves to hub B (a hub recreated to change its partition count, a new namespace),
    whose records 0..4 of partition 0 the host checkpointed past without ingest ever storing them: lost. Hub A's
    ledger runs and batch letters must not answer for them."""
    hub_b = _eventhubs_hub_pool.take()
    hand_to_ingest("0", 0, [json.dumps(event()).encode() for _ in range(5)])  # hub A's 0..4: stored
    bootstrap.dead_letter_sink().put_batch(
        [(b"{}", EventMetadata(partition_id="0", sequence_number=n)) for n in range(5)], "test: hub A's letter")

    use_hub(hub_b, monkeypatch)
    send(hub_b, "0", 5)  # hub B's 0..4, never handed to ingest
    checkpoint_of(hub_b, azurite_connection_string, "0", 4)
    capsys.readouterr()

    code, out = audit(capsys, "--from-sequence", "0")

    assert "the zero-loss SLO holds" not in out, out
    assert code == 1 and "gap: partition 0 sequence 0..4" in out, out
    assert "dead-lettered batch:" not in out, out


def test_rows_and_batch_letters_that_name_no_hub_still_account_for_their_records(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs and batch letters written before they named their hub (a bare partition id, no ``eventhub`` metadata)
    are still read by the audit of the hub ingest reads: no false gap right after the upgrade."""
    load(stack)
    session, ks = bootstrap.cassandra_session(), stack["keyspace"]
    hub = bootstrap.ingest_hub()
    assert hub is not None
    assert [tuple(r) for r in session.execute(
        f"SELECT first_sequence, last_sequence FROM {ks}.ingest_audit_runs WHERE eh_partition = %s AND block = 0",
        (f"{hub}/1",))] == [(0, 3)]
    session.execute(f"DELETE FROM {ks}.ingest_audit_runs WHERE eh_partition = %s AND block = 0 "
                    "AND first_sequence = 0 AND last_sequence = 3", (f"{hub}/1",))
    session.execute(f"INSERT INTO {ks}.ingest_audit_runs (eh_partition, block, first_sequence, last_sequence, "
                    "stored, dead_lettered, duplicate, recorded_at) VALUES ('1', 0, 0, 1, 2, 0, 0, "
                    "toTimestamp(now()))")  # as ingest wrote it before
    container = bootstrap.blob_service().get_container_client(bootstrap.settings().storage.deadletter_container)
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    container.upload_blob("batches/2026/01/01/p1/2-3.json", b"{}")  # a letter of before: no metadata

    code, out = audit(capsys, "--from-sequence", "0")

    assert code == 0 and "the zero-loss SLO holds" in out, out
    assert "/p1/2-3.json" in out, out
