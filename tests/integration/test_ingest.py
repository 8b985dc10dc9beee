"""The ingest function as the host runs it: real ``func.EventHubEvent`` batches -> Cassandra emulator + Azurite.

The function is taken from ``function_app.app`` (as the Functions host indexes it)
and called with a host-like context, so these tests cover the binding decode,
the service, the Cosmos-aware retry policy, the event store and the dead-letter
sink together. Faults are injected in the emulator through its control table.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import BlobServiceClient
from cassandra.cluster import NoHostAvailable
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from emulators.cassandra.faults import clear_faults, inject_faults
from shared import bootstrap
from shared.adapters.blob_deadletter import BlobDeadLetterSink, DeadLetter
from shared.adapters.cassandra.aio import CassandraAsyncEventReader
from shared.adapters.cassandra.device_log import CassandraDeviceLog
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.reader import EVENT_SELECT, CassandraEventReader, stored_event
from shared.adapters.otel_metrics import OtelMetrics
from shared.domain.events import BadElement, EventMetadata, Rejected
from shared.domain.stored import StoredEvent
from shared.exceptions import TransientError
from sluice.__main__ import main as sluice_cli
from sluice.launcher import Running
from tests.fixtures.functions import HostContext, user_function
from tests.integration.test_event_store_binding import _same_write_timestamp_digits
from tests.unit.test_telemetry import collected

pytestmark = pytest.mark.timeout(120)

TABLES = ("events_by_id", "events_by_device", "device_latest", "events_by_time_bucket",
          "events_by_arrival_bucket", "critical_events_by_device")
NOW = datetime.now(UTC).replace(microsecond=0)


def event(device: str = "dev-1", *, at: datetime = NOW, severity: str = "info", **fields) -> dict:
    return {"event_id": str(uuid.uuid4()), "device_id": device, "event_type": "reading",
            "timestamp": at.isoformat(), "severity": severity, "measurements": {"temperature": 21.5}, **fields}


class Hub:
    """Numbers events as one Event Hubs partition would."""

    def __init__(self, partition: str = "0") -> None:
        self.partition = partition
        self.sequence = 0

    def batch(self, *bodies: dict | list | bytes) -> list[func.EventHubEvent]:
        out = []
        for body in bodies:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.sequence += 1
            out.append(func.EventHubEvent(
                body=raw,
                trigger_metadata={"PartitionContext": func.meta.Datum(
                    json.dumps({"PartitionId": self.partition, "ConsumerGroup": "sluice"}), "json")},
                enqueued_time=NOW + timedelta(milliseconds=self.sequence),
                partition_key=body.get("device_id") if isinstance(body, dict) else None,
                sequence_number=self.sequence,
                offset=self.sequence * 1000,  # the host hands a long over for cardinality many
            ))
        return out


def _environment(cassandra: Running, keyspace: str, storage: str, container: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": storage,
        "SLUICE_STORAGE_DEADLETTER_CONTAINER": container,
        "SLUICE_CASSANDRA_HOSTS": cassandra.host,
        "SLUICE_CASSANDRA_PORT": str(cassandra.port),
        "SLUICE_CASSANDRA_KEYSPACE": keyspace,
        "SLUICE_CASSANDRA_OVERLOAD_MAX_RETRIES": "8",
        "SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS": "5",
        "SLUICE_CRITICAL_RULES": '[{"measurement": "temperature", "op": ">", "value": 90}]',
        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "SLUICE_POSTGRES_HOST": "127.0.0.1",
    }


@pytest.fixture
def ingest(private_cassandra: Running, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[Callable[..., None]]:
    """The registered ``ingest`` function, wired to a fresh keyspace and dead-letter container."""
    keyspace = f"ks_{uuid.uuid4().hex[:12]}"
    container = f"dl-{uuid.uuid4().hex[:12]}"
    for name, value in _environment(private_cassandra, keyspace, azurite_connection_string, container).items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    apply_migrations(bootstrap.cassandra_session(), bootstrap.settings().cassandra)
    ingest_function = user_function("ingest")

    def call(events: list[func.EventHubEvent], *, retry_count: int = 0, max_retry_count: int = 5) -> None:
        ingest_function(events, HostContext("ingest", retry_count, max_retry_count))

    call.keyspace = keyspace  # type: ignore[attr-defined]
    call.container = container  # type: ignore[attr-defined]
    yield call
    clear_faults(private_cassandra.host, private_cassandra.port)
    bootstrap.reset()


def rows(keyspace: str, table: str) -> list[tuple]:
    return sorted(tuple(r) for r in bootstrap.cassandra_session().execute(f"SELECT * FROM {keyspace}.{table}"))


def snapshot(keyspace: str) -> dict[str, list[tuple]]:
    return {table: rows(keyspace, table) for table in TABLES}


def dead_letters(storage: str, container: str) -> list[dict]:
    client = BlobServiceClient.from_connection_string(storage).get_container_client(container)
    if not client.exists():
        return []
    return [json.loads(client.download_blob(b.name).readall()) for b in client.list_blobs()]


def test_a_valid_batch_is_stored_in_every_table(ingest) -> None:
    hub = Hub()
    normal = [event("dev-1", at=NOW - timedelta(seconds=i)) for i in range(5)]
    hot = event("dev-2", measurements={"temperature": 95.0})
    flagged = event("dev-3", severity="critical")
    ingest(hub.batch(*normal, hot, flagged))

    ks = ingest.keyspace
    by_id = {r.event_id: r for r in bootstrap.cassandra_session().execute(f"SELECT * FROM {ks}.events_by_id")}
    assert set(map(str, by_id)) == {e["event_id"] for e in [*normal, hot, flagged]}
    stored = by_id[uuid.UUID(hot["event_id"])]
    assert (stored.device_id, stored.critical, stored.measurements, stored.eh_partition) == ("dev-2", True,
                                                                                            {"temperature": 95.0}, "0")
    assert stored.eh_sequence_number == 6 and stored.eh_offset == "6000"
    assert len(rows(ks, "events_by_device")) == 7
    assert len(rows(ks, "events_by_time_bucket")) == 7
    assert len(rows(ks, "events_by_arrival_bucket")) == 7
    critical = {str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT * FROM {ks}.critical_events_by_device")}
    assert critical == {hot["event_id"], flagged["event_id"]}
    latest = {r.device_id: str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT * FROM {ks}.device_latest")}
    assert latest == {"dev-1": normal[0]["event_id"], "dev-2": hot["event_id"], "dev-3": flagged["event_id"]}
    assert dead_letters(ingest_storage(ingest), ingest.container) == []


def ingest_storage(ingest) -> str:
    return bootstrap.settings().storage.connection.get_secret_value()


def test_three_replays_leave_identical_rows(ingest) -> None:
    hub = Hub()
    batch = hub.batch(*[event(f"dev-{i % 3}", at=NOW - timedelta(seconds=i), severity="critical" if i == 4 else "info")
                        for i in range(20)])
    ingest(batch)
    first = snapshot(ingest.keyspace)
    for _ in range(3):
        ingest(batch)
    assert snapshot(ingest.keyspace) == first
    assert len(first["events_by_id"]) == 20


def test_out_of_order_arrivals_keep_the_newest_event_as_latest_state(ingest) -> None:
    hub = Hub()
    newest, oldest, middle = (event("dev-9", at=NOW - timedelta(minutes=m)) for m in (1, 30, 10))
    for body in (newest, oldest, middle):  # one batch each: arrival order is not event order
        ingest(hub.batch(body))
    [latest] = bootstrap.cassandra_session().execute(
        f"SELECT event_id, event_time FROM {ingest.keyspace}.device_latest WHERE device_id = 'dev-9'")
    assert str(latest.event_id) == newest["event_id"]
    assert len(rows(ingest.keyspace, "events_by_device")) == 3


def latest_states(keyspace: str, device: str) -> dict[str, StoredEvent | None]:
    """The device's latest state as each reader of ``device_latest`` serves it: the lookups' blocking reader (the
    state at T) and asyncio one (a cache miss), the change feed's ``latest_many``, the rebuild's device log (one
    device, and the scan)."""
    session = bootstrap.cassandra_session()
    reader = CassandraEventReader(session, keyspace)
    log = CassandraDeviceLog(session, keyspace)
    row = log.device(device)
    return {
        "latest": reader.latest(device),
        "asyncio": asyncio.run(CassandraAsyncEventReader(reader).latest(device)),
        "latest_many": next(iter(reader.latest_many([device])), None),
        "rebuild device": None if row is None else row.latest,
        "rebuild scan": next((r.latest for r in log.devices(None, 1000) if r.device_id == device), None),
    }


def test_a_correction_resent_in_a_later_batch_replaces_the_device_latest_state(ingest) -> None:
    """docs/events.md: an event id re-sent with other content (a correction) is stored as its later copy.
    ``device_latest`` is written ``USING TIMESTAMP`` the event time (ms * 1000 + 3 digits of the event id), the
    same for the original and its correction; Cassandra (and the emulator) resolve such a tie cell by cell by the
    greater value, so its content columns kept ``severity="warning"`` over ``"info"``, ``critical=true`` over
    ``false``, the greater measurement, and the correction's Event Hubs metadata: a state no device sent. The
    readers take only the position (the event id) from it, and the event from ``events_by_id``."""
    hub = Hub("0")
    original = event("dev-corr", severity="warning", measurements={"temperature": 95.0}, attributes={"fw": "2"})
    corrected = {**original, "severity": "info", "measurements": {"temperature": 20.0}, "attributes": {"fw": "1"}}
    ingest(hub.batch(original))
    ingest(hub.batch(corrected))

    [by_id] = bootstrap.cassandra_session().execute(
        f"SELECT severity, critical, measurements, attributes, eh_sequence_number FROM {ingest.keyspace}.events_by_id "
        "WHERE event_id = %s", [uuid.UUID(original["event_id"])])
    assert (by_id.severity, by_id.critical, dict(by_id.measurements), dict(by_id.attributes),
            by_id.eh_sequence_number) == ("info", False, {"temperature": 20.0}, {"fw": "1"}, 2)

    def plain(state: StoredEvent | None) -> tuple | None:
        return None if state is None else (str(state.event_id), state.severity, state.critical, state.measurements,
                                           state.attributes, state.enqueued_time)

    expected = (original["event_id"], "info", False, {"temperature": 20.0}, {"fw": "1"},
                NOW + timedelta(milliseconds=2))  # the correction's enqueued time (its sequence number is 2)
    served = {name: plain(state) for name, state in latest_states(ingest.keyspace, "dev-corr").items()}
    assert served == dict.fromkeys(served, expected)


def test_two_events_of_one_millisecond_sharing_a_write_timestamp_leave_one_whole_event_as_latest_state(
        ingest) -> None:
    """Two events of one device in one millisecond whose ids give the same 3 timestamp digits, stored by two
    invocations (one pair in 1,000), share device_latest's write timestamp: its cells resolve one by one. Every
    reader serves one of the two events whole (the same one), in either arrival order."""
    a, b = _same_write_timestamp_digits()
    for device, order in (("dev-tie-ab", (a, b)), ("dev-tie-ba", (b, a))):
        bodies = {event_id: event(device, event_id=str(event_id), event_type=f"type-{i}", severity=severity,
                                  measurements={f"m{i}": float(i)}, attributes={"copy": str(i)})
                  for i, (event_id, severity) in enumerate(((a, "warning"), (b, "info")))}
        hub = Hub("0")
        for event_id in order:
            ingest(hub.batch(bodies[event_id]))
        session = bootstrap.cassandra_session()
        stored = {event_id: stored_event(session.execute(
            f"SELECT {EVENT_SELECT} FROM {ingest.keyspace}.events_by_id WHERE event_id = %s", [event_id]).one())
            for event_id in (a, b)}
        served = latest_states(ingest.keyspace, device)
        state = served["latest"]
        assert served == dict.fromkeys(served, state), "every reader serves the same event"
        assert state in stored.values(), f"{device}: {state} is neither event"


def test_poison_events_are_dead_lettered_with_reason_and_bytes_and_the_rest_is_stored(ingest) -> None:
    hub = Hub("2")
    good = event("dev-1")
    not_json = b"{not json"
    not_utf8 = b"\xff\xfe{}"
    missing_device = {k: v for k, v in event().items() if k != "device_id"}
    mixed_array = [event("dev-4"), {**event("dev-4"), "timestamp": "yesterday"}]
    ingest(hub.batch(good, not_json, not_utf8, missing_device, mixed_array))

    stored = {str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT event_id FROM {ingest.keyspace}.events_by_id")}
    assert stored == {good["event_id"], mixed_array[0]["event_id"]}
    letters = dead_letters(ingest_storage(ingest), ingest.container)
    by_sequence = {d["eventhub"]["sequence_number"]: d for d in letters}
    assert sorted(by_sequence) == [2, 3, 4, 5]
    assert base64.b64decode(by_sequence[2]["original_base64"]) == not_json
    assert "JSON" in by_sequence[2]["reason"]
    assert base64.b64decode(by_sequence[3]["original_base64"]) == not_utf8
    assert "UTF-8" in by_sequence[3]["reason"]
    assert "device_id" in by_sequence[4]["reason"]
    assert by_sequence[5]["index"] == 1 and "timestamp" in by_sequence[5]["reason"]
    assert json.loads(base64.b64decode(by_sequence[5]["original_base64"])) == mixed_array
    assert {d["eventhub"]["partition_id"] for d in letters} == {"2"}


def test_a_dead_letters_reason_names_json_types_not_python_ones(ingest) -> None:
    """A dead letter's reason is for the producer (docs/operations.md: "look at them ... fix the producer"): a body
    ``null`` is refused as "body is a JSON null", an element ``true`` as "is a JSON boolean". (It said NoneType and
    bool, Python's type names, which JSON has not.)"""
    ingest(Hub("3").batch(b"null", b"[true, 1.5]"))
    reasons = sorted(d["reason"] for d in dead_letters(ingest_storage(ingest), ingest.container))
    assert reasons == ["2 of 2 elements are invalid; the first: element 0 is a JSON boolean, not an object",
                       "body is a JSON null, not an event object or an array of them"], reasons


def test_an_invalid_event_is_still_dead_lettered_after_its_container_was_deleted(ingest, caplog) -> None:
    """The sink created its container once per process and never again: once it was gone (deleted by hand, or
    soft-deleted and not restored yet), every later letter of that worker failed with ContainerNotFound, and on the
    final attempt the invocation raised, the host checkpointed past the batch and the invalid event was in no
    letter. A ContainerNotFound now makes the sink create the container again, say so, and write the letter."""
    hub = Hub("0")
    storage = ingest_storage(ingest)
    ingest(hub.batch(b"{first not json"))  # the worker's sink creates the container and writes the letter
    BlobServiceClient.from_connection_string(storage).delete_container(ingest.container)

    bad = b"{second not json"
    with caplog.at_level("WARNING", logger="shared.adapters.blob_deadletter"):
        ingest(hub.batch(event("dev-1"), bad), retry_count=5, max_retry_count=5)  # the final attempt

    assert [letter["original_text"] for letter in dead_letters(storage, ingest.container)] == [bad.decode()]
    assert any(f"dead-letter container {ingest.container} is gone" in r.getMessage() for r in caplog.records)


def test_throttling_injected_on_writes_is_retried_and_everything_is_stored(ingest, private_cassandra) -> None:
    hub = Hub()
    bodies = [event(f"dev-{i % 5}", at=NOW - timedelta(seconds=i)) for i in range(40)]
    inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", count=12,
                  retry_after_ms=5, applies_to="writes")
    ingest(hub.batch(*bodies))
    stored = {str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT event_id FROM {ingest.keyspace}.events_by_id")}
    assert stored == {b["event_id"] for b in bodies}
    [armed] = bootstrap.cassandra_session().execute("SELECT * FROM sluice_emulator.faults")
    assert armed.remaining == 0, "every injected fault was consumed by a retried write"
    assert dead_letters(ingest_storage(ingest), ingest.container) == []


def test_writes_that_time_out_but_landed_are_retried_by_the_host_and_stored_once(ingest, private_cassandra,
                                                                                   monkeypatch) -> None:
    """A hung node: the client gives up on writes the server has applied. The retry must not duplicate anything."""
    monkeypatch.setenv("SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS", "0.5")
    bootstrap.reset()
    hub = Hub("2")
    bodies = [event(f"dev-{i % 4}", at=NOW - timedelta(seconds=i),
                    severity="critical" if i % 7 == 0 else "info") for i in range(30)]
    batch = hub.batch(*bodies)
    # Every write of the first attempt: 125 rows in 4 requests (device_latest, written after them, is not sent)
    inject_faults(private_cassandra.host, private_cassandra.port, error="delay", count=4, applies_to="writes",
                  delay_ms=3000)
    with pytest.raises(TransientError, match="OperationTimedOut"):
        ingest(batch, retry_count=0, max_retry_count=5)  # the host retries the batch
    ingest(batch, retry_count=1, max_retry_count=5)
    first = snapshot(ingest.keyspace)
    assert {str(r[0]) for r in first["events_by_id"]} == {b["event_id"] for b in bodies}
    assert len(first["events_by_device"]) == len(first["events_by_time_bucket"]) == 30
    ingest(batch, retry_count=0, max_retry_count=5)  # a replay after the checkpoint was lost: nothing changes
    assert snapshot(ingest.keyspace) == first
    assert dead_letters(ingest_storage(ingest), ingest.container) == []


def test_a_permanent_outage_is_retried_by_the_host_then_dead_letters_the_batch_whole(ingest, private_cassandra,
                                                                                    monkeypatch) -> None:
    monkeypatch.setenv("SLUICE_CASSANDRA_OVERLOAD_MAX_RETRIES", "1")
    bootstrap.reset()
    hub = Hub("3")
    bodies = [event("dev-1", at=NOW - timedelta(seconds=i)) for i in range(6)]
    batch = [*hub.batch(*bodies), *hub.batch(b"garbage")]
    inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", ratio=1.0,
                  retry_after_ms=1, applies_to="writes")

    with pytest.raises(TransientError, match="Cassandra writes failed"):
        ingest(batch, retry_count=0, max_retry_count=5)  # not the last attempt: the host retries the batch
    # The rejected letters are written after the store (a letter changes only once what it held is stored): the
    # failed attempt wrote none; the attempt that stores, or the last one, writes them.
    assert dead_letters(ingest_storage(ingest), ingest.container) == []

    ingest(batch, retry_count=5, max_retry_count=5)  # the last attempt returns, the batch is dead-lettered
    letters = {d["kind"]: d for d in dead_letters(ingest_storage(ingest), ingest.container)}
    whole = letters["batch"]
    # The garbage is in its rejected letter already: the batch letter holds the six events, each once.
    assert whole["count"] == 6 and "event store unavailable" in whole["reason"]
    assert [base64.b64decode(e["original_base64"]) for e in whole["events"]] == [e.get_body() for e in batch[:6]]
    assert [e["eventhub"]["sequence_number"] for e in whole["events"]] == list(range(1, 7))
    assert letters["rejected"]["eventhub"]["sequence_number"] == 7
    assert [m["sequence_number"] for m in whole["rejected_separately"]] == [7]
    assert any(n.endswith("/p3/1-7.json") for n in blob_names(ingest_storage(ingest), ingest.container)), \
        "the letter is named for the whole batch: the audit counts 1-7 as dead-lettered"

    clear_faults(private_cassandra.host, private_cassandra.port)
    assert sluice_cli(["deadletter", "replay"]) == 0  # the operator's replay, once Cassandra is back
    assert len(rows(ingest.keyspace, "events_by_id")) == 6
    names = blob_names(ingest_storage(ingest), ingest.container)
    assert [n.split("/")[0] for n in names] == ["rejected", "replayed"], "the garbage stays; the batch is archived"
    assert names[1].startswith("replayed/batches/")
    assert sluice_cli(["deadletter", "replay"]) == 0
    assert len(rows(ingest.keyspace, "events_by_id")) == 6, "a second replay changes nothing"


def blob_names(storage: str, container: str) -> list[str]:
    client = BlobServiceClient.from_connection_string(storage).get_container_client(container)
    return sorted(b.name for b in client.list_blobs())


def test_cassandra_unreachable_at_a_cold_start_is_retried_then_dead_letters_the_batch(ingest, private_cassandra,
                                                                                       monkeypatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on: the worker's first connect is refused
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("SLUICE_CASSANDRA_PORT", str(closed_port))
    monkeypatch.setenv("SLUICE_CASSANDRA_CONNECT_TIMEOUT_SECONDS", "1")
    bootstrap.reset()
    hub = Hub("1")
    bodies = [event("dev-7", at=NOW - timedelta(seconds=i)) for i in range(3)]
    batch = hub.batch(*bodies)

    with pytest.raises(NoHostAvailable):
        ingest(batch, retry_count=0, max_retry_count=5)
    assert dead_letters(ingest_storage(ingest), ingest.container) == []
    ingest(batch, retry_count=5, max_retry_count=5)
    [whole] = dead_letters(ingest_storage(ingest), ingest.container)
    assert whole["kind"] == "batch" and "NoHostAvailable" in whole["reason"]
    assert [base64.b64decode(e["original_base64"]) for e in whole["events"]] == [e.get_body() for e in batch]

    assert sluice_cli(["deadletter", "replay"]) == 1  # still unreachable: the replay says so and keeps the letter
    assert [n.split("/")[0] for n in blob_names(ingest_storage(ingest), ingest.container)] == ["batches"]

    monkeypatch.setenv("SLUICE_CASSANDRA_PORT", str(private_cassandra.port))  # Cassandra is back
    bootstrap.reset()
    assert sluice_cli(["deadletter", "replay"]) == 0
    stored = {str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT event_id FROM {ingest.keyspace}.events_by_id")}
    assert stored == {b["event_id"] for b in bodies}
    assert [n.split("/")[0] for n in blob_names(ingest_storage(ingest), ingest.container)] == ["replayed"]


def vault_at(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's settings as on AKS: the Application Insights connection string is a secret of the vault at
    127.0.0.1:``port``."""
    monkeypatch.setenv("SLUICE_KEYVAULT_URL", f"https://127.0.0.1:{port}/")
    monkeypatch.setenv("SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET", "appinsights-connection-string")
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    bootstrap.reset()


def warnings_naming(caplog: pytest.LogCaptureFixture, text: str, *, within: float) -> list[str]:
    """The WARNING lines naming ``text``, waiting up to ``within`` seconds for the first (a timer thread logs it)."""
    deadline = time.monotonic() + within
    while True:
        found = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and text in r.getMessage()]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def silent_vault() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that accepts connections and never answers (a hung vault, or a firewall that drops the replies), and
    the connections it accepted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    server.close()


def test_a_key_vault_outage_at_a_cold_start_costs_telemetry_never_the_batch(ingest, caplog, monkeypatch) -> None:
    """The Application Insights connection string comes from Key Vault when the worker starts (AKS:
    SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET). With the vault unreachable the ingest service is still built: a
    WARNING names the secret, the worker runs without telemetry (retried later), and the final attempt stores the
    batch (Cassandra and Blob storage are up), so the host never checkpoints past a batch that is in neither
    place."""
    with socket.socket() as probe:  # a port nothing listens on: the vault is unreachable
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    vault_at(closed_port, monkeypatch)
    bodies = [event(f"dev-{i}") for i in range(3)]

    ingest(Hub("4").batch(*bodies), retry_count=5, max_retry_count=5)  # the final attempt: nothing may raise

    assert warnings_naming(caplog, "appinsights-connection-string", within=30), (
        "no warning names the secret telemetry could not read")
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" not in os.environ
    stored = {str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT event_id FROM {ingest.keyspace}.events_by_id")}
    assert stored == {b["event_id"] for b in bodies}


def test_a_key_vault_that_never_answers_does_not_hold_the_first_batch(ingest, monkeypatch, silent_vault) -> None:
    """A vault that accepts the connection and never answers: its client waits for its read timeout, retries,
    and gives up after about 45 s. That read belongs on the telemetry's own thread; the first invocation of the
    worker (an ingest batch, whose lease and the partition's lag wait with it) stores its events meanwhile."""
    port, accepted = silent_vault
    vault_at(port, monkeypatch)
    bodies = [event(f"dev-{i}") for i in range(3)]

    began = time.monotonic()
    ingest(Hub("4").batch(*bodies))
    took = time.monotonic() - began

    stored = {str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT event_id FROM {ingest.keyspace}.events_by_id")}
    assert stored == {b["event_id"] for b in bodies}
    deadline = time.monotonic() + 10
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert accepted, "the worker never asked the vault for the Application Insights connection string"
    assert took < 8, f"the first batch waited {took:.1f} s for a vault that never answers"


def test_a_storage_account_that_accepts_but_never_answers_fails_the_invocation_within_the_letters_deadline(
        ingest, silent_vault, monkeypatch) -> None:
    """A bad event while Blob storage hangs (accepts, never answers): docs/operations.md promises the function fails
    with 'could not write dead letter'. With the SDK's defaults (60 s reads, three retries) wrapped in the sink's 5
    attempts, one letter took about 25 minutes, past host.json's functionTimeout (10 minutes): the host timed the
    invocation out instead, with no clear error. The worker's client takes its timeouts and retries from the
    settings, and a letter gives up by SLUICE_STORAGE_DEADLETTER_DEADLINE_SECONDS (short ones here)."""
    port, accepted = silent_vault
    monkeypatch.setenv("AzureWebJobsStorage", (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT5"
        f"0uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1"))
    for name, value in (("CONNECT_TIMEOUT_SECONDS", "1"), ("READ_TIMEOUT_SECONDS", "1"), ("RETRIES", "1"),
                        ("DEADLETTER_DEADLINE_SECONDS", "10")):  # one request: at most 2 x (1 + 1) + 4 = 8 s
        monkeypatch.setenv(f"SLUICE_STORAGE_{name}", value)
    bootstrap.reset()
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            ingest(Hub().batch(b"{not json"), retry_count=5, max_retry_count=5)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    began = time.monotonic()
    worker.start()
    worker.join(30)  # the deadline, and the margin the slow CI machine needs; the old client took minutes
    took = time.monotonic() - began
    assert outcome, f"the invocation had not ended after {took:.0f} s"
    assert accepted, "the worker never reached the storage account"
    assert isinstance(outcome[0], TransientError) and "could not write dead letter" in str(outcome[0]), outcome
    assert took < 20, f"one dead letter took {took:.1f} s, past its 10 s deadline"


def test_an_identical_duplicate_in_one_batch_stores_the_same_copy_as_in_two_batches(ingest) -> None:
    """docs/events.md: the last write of an event id wins in the per-id tables, so what is stored does not depend on
    how the events were cut into batches. An identical re-send in one batch kept the EARLIER copy's Event Hubs
    metadata, while the same two copies in two batches keep the later one."""
    hub = Hub()
    one_batch = event("dev-a")
    ingest(hub.batch(one_batch, one_batch))           # seq 1, 2 in one batch
    two_batches = event("dev-b")
    ingest(hub.batch(two_batches))                   # seq 3
    ingest(hub.batch(two_batches))                   # seq 4
    session = bootstrap.cassandra_session()
    seq = {str(r.event_id): r.eh_sequence_number for r in session.execute(
        f"SELECT event_id, eh_sequence_number FROM {ingest.keyspace}.events_by_id")}
    assert (seq[one_batch["event_id"]], seq[two_batches["event_id"]]) == (2, 4)


def test_a_deeply_nested_sibling_does_not_keep_the_valid_elements_of_an_array_from_being_stored(ingest) -> None:
    """An array body [valid event, event whose attribute value is a JSON array nested 250 deep] is well-formed
    JSON far under the body limit, though deeper than the JSON parser's 200 levels: the valid element is stored
    and the body's letter names element 1 and its event id, with a reason naming the limit."""
    good = event("dev-1")
    nested = event("dev-1")
    depth = 250
    body = (b"[" + json.dumps(good).encode() + b", " + json.dumps({**nested, "attributes": {"a": "X"}}).encode()
            .replace(b'"X"', b"[" * depth + b"]" * depth) + b"]")
    assert len(body) < 4096 and json.loads(body)[0] == good  # valid JSON (Python's parser reads it)
    ingest(Hub("0").batch(body))

    [letter] = dead_letters(ingest_storage(ingest), ingest.container)
    stored = {str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT event_id FROM {ingest.keyspace}.events_by_id")}
    assert stored == {good["event_id"]}, letter["reason"]
    assert (letter["index"], letter["event_id"]) == (1, nested["event_id"]), letter["reason"]
    assert "more than 200 levels deep" in letter["reason"]


def test_a_too_deep_event_whose_id_holds_a_lone_surrogate_is_dead_lettered_and_the_rest_kept(ingest) -> None:
    """An event object nested past the parser's depth whose id is a lone surrogate escape (``"\\ud800"``) is not
    JSON, as the parser judges it: refused whole with its original bytes, and the batch's later letters written,
    on the final attempt too. Its id, taken as text, used to reach the letter, whose UTF-8 encoding then failed the
    invocation after the store: that letter and every later one of the batch were lost past the checkpoint."""
    good = event("dev-1")
    poison = b'{"x": ' + b"[" * 250 + b"]" * 250 + b', "event_id": "\\ud800"}'
    not_json = b"{not json"
    ingest(Hub("0").batch(good, poison, not_json), retry_count=5, max_retry_count=5)

    letters = dead_letters(ingest_storage(ingest), ingest.container)
    assert sorted(base64.b64decode(d["original_base64"]) for d in letters) == sorted([poison, not_json])
    assert [str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT event_id FROM {ingest.keyspace}.events_by_id")] == [good["event_id"]]


def test_an_element_with_a_number_past_the_parser_is_dead_lettered_by_index_and_its_siblings_stored(ingest) -> None:
    """An array body whose one element carries a measurement written as an integer of more than 4,300 digits (valid
    JSON; beyond double range, so an invalid event, and past what the JSON parser reads) was refused whole as "body
    is not valid JSON (number out of range ...)": its valid sibling was not stored and the letter named no element.
    Now, as for nesting past the parser's depth, only that element is refused, by its index, id and field."""
    good = event("dev-good")
    bad = event("dev-bad", measurements={"t": 0})
    body = json.dumps([good, bad]).replace('{"t": 0}', '{"t": 1' + "0" * 4300 + "}").encode()
    ingest(Hub("0").batch(body))

    [letter] = dead_letters(ingest_storage(ingest), ingest.container)
    stored = {str(r.event_id) for r in bootstrap.cassandra_session().execute(
        f"SELECT event_id FROM {ingest.keyspace}.events_by_id")}
    assert stored == {good["event_id"]}, letter["reason"]
    assert (letter["index"], letter["event_id"]) == (1, bad["event_id"]), letter["reason"]
    assert "measurements.t: number out of range" in letter["reason"]


def test_a_reason_never_copies_a_long_schema_version_or_key(ingest) -> None:
    """A ``schema_version`` sent as a 200,000-character string was copied whole into the reason (so the letter held
    the body twice and ingest logged a 200 KB WARNING line); so was an unknown key of that length, named in the
    error's location. The value is now named by its JSON type and length, a key by its first 64 characters."""
    long_version = event("dev-sv", schema_version="9" * 200_000)
    long_key = event("dev-key", **{"k" * 200_000: 1})
    ingest(Hub("0").batch(long_version, long_key))

    reasons = sorted((d["reason"] for d in dead_letters(ingest_storage(ingest), ingest.container)), key=len)
    assert len(reasons) == 2 and all(len(reason) < 300 for reason in reasons), [r[:300] for r in reasons]
    assert any("schema_version: Value error, a JSON string of 200000 characters is not a supported schema version"
               in reason for reason in reasons), reasons
    assert any(f"{'k' * 64}\u2026: Extra inputs are not permitted" in reason for reason in reasons), reasons


def test_a_letter_whose_texts_hold_a_lone_surrogate_is_written_and_reads_back(azurite_connection_string: str) -> None:
    """UTF-8 cannot encode a lone surrogate. The parser refuses them in bodies, but the sink must write any letter:
    one that failed to encode escaped its retries and took the batch's later letters with it."""
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    sink = BlobDeadLetterSink(service, f"dl-{uuid.uuid4().hex[:12]}")
    body = b'[{"event_id": "x"}]'
    meta = EventMetadata("0", "1000", 1, NOW, "dev-\udc80")
    sink.put_rejected([Rejected("element 0 (event_id \ud800) is bad", body, meta, 0, "\ud800",
                                (BadElement(0, "is bad \udfff", "\ud800"),))])

    [letter] = sink.read()
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "element 0 (event_id \ud800) is bad" and letter.records[0].body == body
    assert letter.records[0].metadata.partition_key == "dev-\udc80"


def _refusing(partition: str) -> Callable[[Any], None]:
    """A request hook of the Blob SDK: storage fails every request for the letters of ``partition``, as if it went
    down then."""
    def hook(request: Any) -> None:
        if f"/p{partition}/" in request.http_request.url:
            raise ServiceRequestError(f"connection refused: {request.http_request.url}")
    return hook


def test_when_the_batch_letter_fails_the_rejected_letters_written_before_it_are_accounted_in_the_ledger(
    ingest, azurite_connection_string: str
) -> None:
    """docs/operations.md ("the function fails with `could not write dead letter`"): ``sluice audit`` then lists
    the exact ranges in neither place, "not the records stored, nor those whose rejected letter was written before
    storage failed". Final attempt, the event store failing (a keyspace that is not ours) while the ledger works:
    record 2 (not JSON) gets its rejected letter, then the batch letter cannot be written (Blob refuses it: a lease
    on its name) and the call raises. Record 2 is in a letter, so the ledger accounts for it; only record 1 (valid,
    in neither place) is a gap. (Nothing was recorded when ``put_batch`` raised: record 2 was reported lost too.)
    The metrics count record 2's letter as well (they recorded nothing for the batch: ``_store_failed`` re-raised
    before ``_record``, while the path where the store succeeded and ``put_rejected`` failed counted its letters)."""
    from shared.adapters.cassandra.event_store import CassandraEventStore
    from shared.domain.events import RawRecord
    from shared.services.ingest import IngestService

    cfg = bootstrap.settings()
    elsewhere = cfg.cassandra.model_copy(update={"keyspace": f"ks_not_ours_{uuid.uuid4().hex[:8]}"})
    store = CassandraEventStore(bootstrap.cassandra_session(), elsewhere, cfg.rules.critical_rules)
    service_client = BlobServiceClient.from_connection_string(azurite_connection_string)
    container = service_client.get_container_client(ingest.container)
    container.create_container()
    blocker = container.get_blob_client(f"batches/{NOW:%Y/%m/%d}/p0/1-2.json")
    blocker.upload_blob(b"{}")
    lease = blocker.acquire_lease(lease_duration=-1)  # the batch letter cannot be written: Blob refuses it
    try:
        ledger = bootstrap.audit_ledger()
        reader = InMemoryMetricReader()
        service = IngestService(store, BlobDeadLetterSink(service_client, ingest.container, attempts=1),
                                cfg.ingest.limits(), ledger,
                                metrics=OtelMetrics(MeterProvider(metric_readers=[reader])))
        records = [RawRecord(json.dumps(event("dev-1")).encode(), EventMetadata("0", "1", 1, NOW)),
                   RawRecord(b"{not json", EventMetadata("0", "2", 2, NOW))]
        with pytest.raises(TransientError, match="could not write dead letter"):
            service.handle(records, final_attempt=True)

        rejected = [b.name for b in container.list_blobs(name_starts_with="rejected/")]
        assert rejected == [f"rejected/{NOW:%Y/%m/%d}/p0/2-body.json"]  # record 2 is durably dead-lettered
        covered = {n for first, last in ledger.accounted("0", 1, 2) for n in range(first, last + 1)}
        assert covered == {2}, covered
        metrics = collected(reader)
        assert metrics.get("sluice.deadletter.letters") == {frozenset({("reason", "malformed")}): 1}, metrics
        assert metrics.get("sluice.ingest.events") == {
            frozenset({("outcome", "dead_lettered"), ("messaging.destination.partition.id", "0")}): 1}, metrics
    finally:
        lease.release()


def test_rejected_letters_that_fail_part_way_name_the_ones_written(azurite_connection_string: str) -> None:
    """The sink writes the rejected letters one at a time; when one fails, the error names those written before it
    (``RejectedLettersFailed.written``), so ingest can count them as dead-lettered and the audit lists only the
    others as lost. Here Blob storage fails from the second letter on."""
    from shared.ports.ingest import RejectedLettersFailed

    service = BlobServiceClient.from_connection_string(azurite_connection_string, retry_total=0,
                                                       raw_request_hook=_refusing("down"))
    sink = BlobDeadLetterSink(service, f"dl-{uuid.uuid4().hex[:12]}", attempts=1)
    items = [Rejected("body is not valid JSON", b"{oops", EventMetadata(partition, str(seq), seq, NOW))
             for partition, seq in (("0", 1), ("down", 2), ("0", 3))]
    with pytest.raises(RejectedLettersFailed, match="could not write dead letter") as failed:
        sink.put_rejected(items)
    assert failed.value.written == (items[0],)
    assert [letter.records[0].metadata.sequence_number for letter in sink.read()] == [1]
