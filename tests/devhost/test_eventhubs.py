"""The dev host's Event Hubs trigger against the Event Hubs emulator and Azurite, through the real SDKs.

A small test app (written to a temp dir, so these tests do not depend on the pipeline's
functions) appends one JSON line per invocation to a file: what it received, which
attempt it was, when it started and ended.
"""

from __future__ import annotations

import base64
import json
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub import EventData, EventHubProducerClient
from azure.eventhub.amqp import AmqpAnnotatedMessage
from azure.storage.blob import ContainerClient

from sluice.launcher import Running
from tests.fixtures.devhost import write_app

APP = '''
import json, os, threading, time, typing
import azure.functions as func

app = func.FunctionApp()
OUT = os.environ["TEST_OUT"]
_lock = threading.Lock()


def write(record):
    with _lock, open(OUT, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\\n")


@app.function_name("batches")
@app.event_hub_message_trigger(arg_name="events", event_hub_name="%TEST_HUB%", connection="TestEventHub",
                               consumer_group="sluice", cardinality="many", data_type="binary")
@app.retry(strategy="fixed_delay", max_retry_count="2", delay_interval="00:00:00.100")
def batches(events: typing.List[func.EventHubEvent], context: func.Context) -> None:  # list[...]: refused
    started = time.time()
    bodies = [json.loads(e.get_body()) for e in events]
    meta = events[0].metadata
    retry = context.retry_context
    record = {
        "function": "batches", "pid": os.getpid(), "partition": meta["PartitionContext"]["PartitionId"],
        "seqs": [e.sequence_number for e in events], "offsets": [e.offset for e in events],
        "keys": [e.partition_key for e in events], "enqueued": [e.enqueued_time.isoformat() for e in events],
        "bodies": bodies, "properties": meta["PropertiesArray"],
        "retry_count": retry.retry_count, "max_retry_count": retry.max_retry_count, "started": started,
    }
    write({**record, "phase": "start"})
    sleep = max((b.get("sleep", 0) for b in bodies), default=0)
    time.sleep(sleep)
    fail = max((b.get("fail", 0) for b in bodies), default=0)
    if retry.retry_count < fail:
        write({**record, "phase": "failed", "ended": time.time()})
        raise RuntimeError(f"failing attempt {retry.retry_count} of {fail}")
    write({**record, "phase": "done", "ended": time.time()})


@app.function_name("single")
@app.event_hub_message_trigger(arg_name="event", event_hub_name="%TEST_HUB%", connection="TestEventHub",
                               consumer_group="other")
async def single(event: func.EventHubEvent) -> None:
    write({"function": "single", "partition": event.metadata["PartitionContext"]["PartitionId"],
           "seq": event.sequence_number, "key": event.partition_key, "body": event.get_body().decode(),
           "properties": event.metadata["Properties"], "phase": "done"})
'''

HOST_JSON = {
    "version": "2.0",
    "extensions": {"eventHubs": {"maxEventBatchSize": 4, "prefetchCount": 64,
                                 "initialOffsetOptions": {"type": "fromStart"}}},
}


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, host: Running | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    output = host.output() if host is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{output}")


def send(connection_string: str, hub: str, partition: str, bodies: list[dict[str, Any]], *,
         key: str | None = None, properties: dict[str, Any] | None = None) -> None:
    with EventHubProducerClient.from_connection_string(connection_string, eventhub_name=hub) as producer:
        batch = producer.create_batch(partition_id=partition) if key is None else \
            producer.create_batch(partition_key=key)
        for body in bodies:
            event = EventData(json.dumps(body))
            if properties:
                event.properties = properties
            batch.add(event)
        producer.send_batch(batch)


def checkpoints(storage: str, namespace: str, hub: str, group: str) -> dict[str, dict[str, str]]:
    """Checkpoint blobs in the Functions host layout: partition -> metadata."""
    container = ContainerClient.from_connection_string(storage, "azure-webjobs-eventhub")
    prefix = f"{namespace}/{hub}/{group}/checkpoint/".lower()
    return {blob.name.rsplit("/", 1)[1]: dict(blob.metadata or {})
            for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"])}


def _eh_values(hub: Any, storage: str, out: Path) -> dict[str, str]:
    """The settings of an app reading ``hub`` (checkpoints in ``storage``) and recording into ``out``, with quick
    load balancing and ownership expiry."""
    return {"AzureWebJobsStorage": storage, "TestEventHub": hub.connection_string, "TEST_HUB": hub.name,
            "TEST_OUT": str(out), "DEVHOST_EVENTHUBS_LOAD_BALANCING_SECONDS": "1",
            "DEVHOST_EVENTHUBS_OWNERSHIP_EXPIRATION_SECONDS": "6"}


@pytest.fixture
def eh_app(tmp_path: Path, isolated_eventhub: Any, azurite_connection_string: str) -> dict[str, Any]:
    out = tmp_path / "records.jsonl"
    settings = write_app(tmp_path / "app", APP, host_json=HOST_JSON,
                         values=_eh_values(isolated_eventhub, azurite_connection_string, out))
    namespace = f"{isolated_eventhub.running.host}:{isolated_eventhub.running.port}"
    return {"root": tmp_path / "app", "settings": settings, "out": out, "hub": isolated_eventhub.name,
            "conn": isolated_eventhub.connection_string, "namespace": namespace,
            "storage": azurite_connection_string}


def done(records: list[dict[str, Any]], function: str = "batches") -> list[dict[str, Any]]:
    return [r for r in records if r["function"] == function and r["phase"] == "done"]


@pytest.mark.timeout(120)
def test_batches_order_metadata_checkpoints_and_resume(eh_app: dict[str, Any], devhost_factory: Any) -> None:
    hub, conn = eh_app["hub"], eh_app["conn"]
    # Sent before the host starts, so batches fill up to maxEventBatchSize (4).
    send(conn, hub, "0", [{"n": i, "sleep": 0.2} for i in range(10)], properties={"kind": "test", "n": 7})
    send(conn, hub, "1", [{"n": 100 + i, "sleep": 0.2} for i in range(6)])
    send(conn, hub, "2", [{"n": 200}], key="device-2")

    host = devhost_factory(eh_app["root"], settings=eh_app["settings"])
    wait_for(lambda: sum(len(r["seqs"]) for r in done(read_records(eh_app["out"]))) >= 17, 45,
             "17 events in the batches function", host)
    wait_for(lambda: len(done(read_records(eh_app["out"]), "single")) >= 17, 45, "17 single invocations", host)
    records = read_records(eh_app["out"])
    batches = done(records)

    by_partition: dict[str, list[dict[str, Any]]] = {}
    for record in batches:
        by_partition.setdefault(record["partition"], []).append(record)
    assert set(by_partition) == {"0", "1", "2"}
    for partition, items in by_partition.items():
        seqs = [s for r in items for s in r["seqs"]]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), f"partition {partition} out of order: {seqs}"
        assert all(1 <= len(r["seqs"]) <= 4 for r in items)
    assert [b["n"] for r in by_partition["0"] for b in r["bodies"]] == list(range(10))
    assert [b["n"] for r in by_partition["1"] for b in r["bodies"]] == [100 + i for i in range(6)]
    assert max(len(r["seqs"]) for r in by_partition["0"]) == 4, "events available up front must be batched"
    # Metadata as the binding gives it.
    first = by_partition["0"][0]
    assert first["properties"][0] == {"kind": "test", "n": 7}
    assert all(isinstance(o, int) for o in first["offsets"]) and first["enqueued"][0].endswith("+00:00")
    assert by_partition["2"][0]["keys"] == ["device-2"]
    assert first["retry_count"] == 0 and first["max_retry_count"] == 2
    # Partitions run concurrently: some batch of partition 0 overlaps some batch of partition 1 in time.
    assert any(a["started"] < b["ended"] and b["started"] < a["ended"]
               for a in by_partition["0"] for b in by_partition["1"])

    # Cardinality one: each event on its own, in order per partition, with the single-event metadata.
    singles = done(records, "single")
    for partition in ("0", "1"):
        seqs = [r["seq"] for r in singles if r["partition"] == partition]
        assert seqs == sorted(seqs) and len(seqs) == (10 if partition == "0" else 6)
    assert [r["key"] for r in singles if r["partition"] == "2"] == ["device-2"]
    assert next(r for r in singles if r["partition"] == "0")["properties"] == {"kind": "test", "n": 7}

    # Checkpoints in the host layout, with sequencenumber and offset metadata at the last event.
    # The host checkpoints after the invocation has returned, so the last checkpoints may still be in flight once
    # the records are written: wait for them to reach the last events, and never past them.
    last = {p: items[-1] for p, items in by_partition.items()}
    expected = {p: {"sequencenumber": str(r["seqs"][-1]), "offset": str(r["offsets"][-1])} for p, r in last.items()}

    def at_last(group: str) -> bool:
        found = checkpoints(eh_app["storage"], eh_app["namespace"], hub, group)
        positions = {p: {k: found[p].get(k) for k in ("sequencenumber", "offset")} for p in found}
        assert all(int(positions[p]["sequencenumber"] or -1) <= int(expected[p]["sequencenumber"])
                   for p in positions if p in expected), f"a checkpoint of {group} past its last event: {positions}"
        return positions == expected

    for group in ("sluice", "other"):
        wait_for(lambda g=group: at_last(g), 10, f"checkpoints of {group} at each partition's last event")

    # The blob KEDA's blobMetadata strategy reads: <namespace>/<hub>/<lower(consumer group)>/checkpoint/<partition>.
    keda = ContainerClient.from_connection_string(eh_app["storage"], "azure-webjobs-eventhub").get_blob_client(
        f"{eh_app['namespace']}/{hub}/{'SLUICE'.lower()}/checkpoint/0")
    assert int(keda.get_blob_properties().metadata["sequencenumber"]) == last["0"]["seqs"][-1]

    assert host.stop(stop_timeout=30) == 0
    # Restart: only what was sent since is delivered.
    send(conn, hub, "0", [{"n": 10 + i} for i in range(3)])
    # One more event on each other partition: a partition delivers in order, so anything redelivered from before its
    # checkpoint would come before these. Waiting for them is waiting for something, not for a while.
    for partition in ("1", "2"):
        send(conn, hub, partition, [{"n": 1000 + int(partition)}])
    before = len(batches)
    eh_app["out"].rename(eh_app["out"].with_suffix(".first"))
    host = devhost_factory(eh_app["root"], settings=eh_app["settings"])
    wait_for(lambda: sum(len(r["seqs"]) for r in done(read_records(eh_app["out"]))) >= 5, 45,
             "the 5 new events", host)
    again = done(read_records(eh_app["out"]))
    assert [b["n"] for r in again if r["partition"] == "0" for b in r["bodies"]] == [10, 11, 12], again
    assert sorted(b["n"] for r in again for b in r["bodies"]) == [10, 11, 12, 1001, 1002], again
    assert before > 0


@pytest.mark.timeout(120)
def test_retry_policy_checkpoint_after_retries_and_ctrl_c_finishing_the_batch_in_progress(
    eh_app: dict[str, Any], devhost_factory: Any,
) -> None:
    hub, conn = eh_app["hub"], eh_app["conn"]
    host = devhost_factory(eh_app["root"], settings=eh_app["settings"])
    send(conn, hub, "0", [{"n": 1, "fail": 1}])
    wait_for(lambda: done(read_records(eh_app["out"])), 45, "the first event to succeed", host)
    send(conn, hub, "0", [{"n": 2, "fail": 99}])
    wait_for(lambda: len([r for r in read_records(eh_app["out"])
                          if r["function"] == "batches" and r["phase"] == "failed"]) >= 4, 45,
             "three failed attempts of the second event", host)
    records = [r for r in read_records(eh_app["out"]) if r["function"] == "batches" and r["phase"] != "start"]
    first = [(r["phase"], r["retry_count"]) for r in records if r["bodies"][0]["n"] == 1]
    assert first == [("failed", 0), ("done", 1)]
    second = [(r["phase"], r["retry_count"], r["max_retry_count"]) for r in records if r["bodies"][0]["n"] == 2]
    assert second == [("failed", 0, 2), ("failed", 1, 2), ("failed", 2, 2)]
    # The host checkpoints after the last attempt even though it failed.
    seq = records[-1]["seqs"][0]
    wait_for(lambda: checkpoints(eh_app["storage"], eh_app["namespace"], hub, "sluice").get("0", {})
             .get("sequencenumber") == str(seq), 10, "the checkpoint past the failed event", host)

    # Ctrl-C while a slow batch runs: it finishes, is checkpointed, and the host exits 0.
    send(conn, hub, "3", [{"n": 3, "sleep": 2.0}])
    wait_for(lambda: [r for r in read_records(eh_app["out"]) if r["function"] == "batches"
                      and r["partition"] == "3"], 45, "the slow batch to start", host)
    assert host.stop(stop_timeout=30, sig=signal.SIGINT) == 0
    slow = [r for r in read_records(eh_app["out"]) if r["function"] == "batches" and r["partition"] == "3"]
    assert [r["phase"] for r in slow] == ["start", "done"]
    assert checkpoints(eh_app["storage"], eh_app["namespace"], hub, "sluice")["3"]["sequencenumber"] == \
        str(slow[-1]["seqs"][0])
    assert "Shutting down" in host.output()


@pytest.mark.timeout(90)
def test_after_a_crash_the_restarted_host_redelivers_only_what_was_not_checkpointed(
    eh_app: dict[str, Any], devhost_factory: Any,
) -> None:
    hub, conn = eh_app["hub"], eh_app["conn"]
    host = devhost_factory(eh_app["root"], settings=eh_app["settings"])
    send(conn, hub, "0", [{"n": i} for i in range(4)])
    wait_for(lambda: checkpoints(eh_app["storage"], eh_app["namespace"], hub, "sluice").get("0", {})
             .get("sequencenumber") == "3", 45, "the first events checkpointed", host)
    send(conn, hub, "0", [{"n": 99, "sleep": 3.0}])
    wait_for(lambda: [r for r in read_records(eh_app["out"]) if r["function"] == "batches"
                      and r["bodies"][0]["n"] == 99], 45, "the slow event to start", host)
    host.kill()
    host = devhost_factory(eh_app["root"], settings=eh_app["settings"])
    # The crashed host's ownership must expire (6 s here) before the partition is claimed again.
    wait_for(lambda: [r for r in done(read_records(eh_app["out"])) if r["bodies"][0]["n"] == 99], 40,
             "the slow event to be redelivered and finished", host)
    records = [r for r in read_records(eh_app["out"]) if r["function"] == "batches"]
    starts = [b["n"] for r in records if r["phase"] == "start" for b in r["bodies"]]
    assert starts.count(99) == 2, "delivered again after the crash"
    assert sorted(n for n in starts if n != 99) == [0, 1, 2, 3], "checkpointed events are not redelivered"
    assert host.stop(stop_timeout=30) == 0


@pytest.mark.timeout(120)
def test_an_event_whose_body_is_not_data_fails_its_invocation_as_the_host_does(
    eh_app: dict[str, Any], devhost_factory: Any,
) -> None:
    """The Functions host cannot bind an AMQP value or sequence body (.NET's EventData.EventBody raises), so the
    invocation fails, the retry policy runs its course and the batch is checkpointed past. The dev host handed the
    function the map's keys (binary) or its Python repr (string) instead: a silent wrong answer."""
    host = devhost_factory(eh_app["root"], settings=eh_app["settings"])
    with EventHubProducerClient.from_connection_string(eh_app["conn"], eventhub_name=eh_app["hub"]) as producer:
        batch = producer.create_batch(partition_id="0")
        batch.add(EventData(json.dumps({"n": 1})))
        batch.add(AmqpAnnotatedMessage(value_body={"n": 2}))
        batch.add(EventData(json.dumps({"n": 3})))
        producer.send_batch(batch)

    def checkpointed(group: str) -> bool:
        return checkpoints(eh_app["storage"], eh_app["namespace"], eh_app["hub"], group) \
            .get("0", {}).get("sequencenumber") == "2"

    wait_for(lambda: checkpointed("sluice") and checkpointed("other"), 60, "both groups past the event", host)
    records = read_records(eh_app["out"])
    assert [r["body"] for r in done(records, "single")] == ['{"n": 1}', '{"n": 3}']
    assert all(1 not in r["seqs"] for r in records if r["function"] == "batches")
    failed = [line for line in host.output().splitlines()
              if "Failed" in line and "EventBodyNotSupported: event 1 has an AMQP value body" in line]
    single = [line for line in failed if "Functions.single" in line]
    assert len(single) == 1 and len(failed) - len(single) == 3, "single has no retry policy; batches retries twice"


@pytest.mark.timeout(120)
def test_a_body_that_is_not_utf8_reaches_a_string_function_with_replacement_characters(
    eh_app: dict[str, Any], devhost_factory: Any,
) -> None:
    """As the host decodes a string binding (.NET's BinaryData.ToString()); the SDK's body_as_str raised a TypeError
    instead, which failed the partition's receive loop before any invocation."""
    host = devhost_factory(eh_app["root"], settings=eh_app["settings"])
    with EventHubProducerClient.from_connection_string(eh_app["conn"], eventhub_name=eh_app["hub"]) as producer:
        batch = producer.create_batch(partition_id="1")
        batch.add(EventData(b'{"v": "\xff"}'))
        batch.add(EventData(b'{"v": "ok"}'))
        producer.send_batch(batch)
    bodies = wait_for(lambda: (b := [r["body"] for r in done(read_records(eh_app["out"]), "single")]) and len(b) == 2
                      and b, 60, "both events", host)
    assert bodies == ['{"v": "\ufffd"}', '{"v": "ok"}']


METADATA_APP = '''
import json, os, typing
import azure.functions as func

app = func.FunctionApp()
OUT = os.environ["TEST_OUT"]


def describe(value):
    return {"type": type(value).__name__, "repr": repr(value)}


@app.function_name("batches")
@app.event_hub_message_trigger(arg_name="events", event_hub_name="%TEST_HUB%", connection="TestEventHub",
                               consumer_group="sluice", cardinality="many", data_type="binary")
def batches(events: typing.List[func.EventHubEvent]) -> None:
    meta = events[0].metadata
    record = {"function": "batches",
              "props": {k: describe(v) for k, v in meta["PropertiesArray"][0].items()},
              "system": {k: describe(v) for k, v in meta["SystemPropertiesArray"][0].items()}}
    try:
        json.dumps(dict(meta))
        record["dumps"] = "ok"
    except Exception as exc:
        record["dumps"] = repr(exc)
    with open(OUT, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\\n")
'''

TYPED_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
TYPED_AT = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture
def typed_metadata(tmp_path: Path, isolated_eventhub: Any, azurite_connection_string: str,
                   devhost_factory: Any) -> dict[str, Any]:
    """One event with typed application properties and a uuid message-id, as the function saw its metadata."""
    out = tmp_path / "records.jsonl"
    settings = write_app(tmp_path / "app", METADATA_APP, host_json={"version": "2.0"},
                         values=_eh_values(isolated_eventhub, azurite_connection_string, out))
    host = devhost_factory(tmp_path / "app", settings=settings)
    with EventHubProducerClient.from_connection_string(isolated_eventhub.connection_string,
                                                       eventhub_name=isolated_eventhub.name) as producer:
        batch = producer.create_batch(partition_id="0")
        event = EventData(b'{"n": 1}')
        event.properties = {"trace": TYPED_ID, "sig": b"\x01\x02\xff", "at": TYPED_AT, "n": 7}
        event.message_id = TYPED_ID
        batch.add(event)
        producer.send_batch(batch)
    records: list[dict[str, Any]] = wait_for(lambda: read_records(out), 60, "the batch", host)
    return records[0]


@pytest.mark.timeout(120)
def test_a_uuid_property_or_message_id_reaches_the_metadata_as_its_string(typed_metadata: dict[str, Any]) -> None:
    """The host serialises the .NET Guid into the metadata's JSON, so the function gets "12345678-1234-...". The dev
    host passed a ``uuid.UUID`` through: ``json.dumps(event.metadata)`` raised TypeError and comparisons with the
    string were False."""
    assert typed_metadata["props"]["trace"] == {"type": "str", "repr": repr(str(TYPED_ID))}
    assert typed_metadata["system"]["message-id"] == {"type": "str", "repr": repr(str(TYPED_ID))}
    assert typed_metadata["dumps"] == "ok"


@pytest.mark.timeout(120)
def test_amqp_timestamps_and_binaries_reach_the_metadata_as_the_hosts_json_has_them(
    typed_metadata: dict[str, Any],
) -> None:
    """x-opt-enqueued-time is a .NET DateTime on the host, an ISO-8601 string in its JSON (as EnqueuedTimeUtc, which
    the dev host writes the same way); a binary application property a byte[], base64. They came as an int of
    milliseconds and as hex. A timestamp application property stays an int: pyamqp decodes it to one, its type lost
    (docs/devhost.md, known differences), which this pins so a change is noticed."""
    system = typed_metadata["system"]
    assert system["x-opt-enqueued-time"] == system["EnqueuedTimeUtc"]
    assert system["x-opt-enqueued-time"]["type"] == "str"
    assert typed_metadata["props"]["sig"] == {"type": "str", "repr": repr(base64.b64encode(b"\x01\x02\xff").decode())}
    assert typed_metadata["props"]["at"] == {"type": "int", "repr": repr(int(TYPED_AT.timestamp() * 1000))}
    assert typed_metadata["props"]["n"] == {"type": "int", "repr": "7"}
