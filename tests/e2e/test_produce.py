"""``python -m sluice produce`` against the Event Hubs emulator, read back with the real consumer SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from azure.eventhub import EventHubConsumerClient

from sluice.loadgen import read_manifest

ROOT = Path(__file__).resolve().parents[2]


def read_all(connection: str, hub: str, expected: int, timeout: float = 30.0) -> list:
    """Every event of the hub from the start, as (partition, sequence number, partition key, body)."""
    received: list = []
    done = threading.Event()
    lock = threading.Lock()
    client = EventHubConsumerClient.from_connection_string(connection, consumer_group="other", eventhub_name=hub)

    def on_batch(context, events) -> None:
        with lock:
            for event in events:
                key = event.partition_key
                received.append((context.partition_id, event.sequence_number,
                                 key.decode() if isinstance(key, bytes) else key, event.body_as_str()))
            if len(received) >= expected:
                done.set()

    worker = threading.Thread(target=client.receive_batch, kwargs={
        "on_event_batch": on_batch, "starting_position": "-1", "max_batch_size": 500, "max_wait_time": 0.5})
    worker.start()
    try:
        done.wait(timeout)
    finally:
        client.close()
        worker.join(10)
    return received


@pytest.mark.timeout(90)
def test_produce_sends_the_manifest_exactly_keyed_by_device_and_in_order(isolated_eventhub, tmp_path):
    manifest = tmp_path / "sent.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "sluice", "produce", "--connection", isolated_eventhub.connection_string,
         "--hub", isolated_eventhub.name, "--count", "3000", "--rate", "3000", "--devices", "40",
         "--critical-ratio", "0.05", "--duplicate-ratio", "0.01", "--invalid-ratio", "0.01",
         "--out-of-order-ratio", "0.02", "--seed", "11", "--manifest", str(manifest), "--progress", "json",
         "--settings", str(tmp_path / "absent.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=80,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])["summary"]
    assert summary["sent"] == 3000 and summary["failed"] == 0
    assert summary["duplicate"] == pytest.approx(30, abs=1)
    assert summary["invalid"] == pytest.approx(30, abs=1)
    assert summary["critical"] == pytest.approx(0.05 * summary["valid"], abs=1)

    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(lines) == 3000
    expected = read_manifest(manifest)
    assert len(expected.valid) == summary["valid"]

    received = read_all(isolated_eventhub.connection_string, isolated_eventhub.name, 3000)
    assert len(received) == 3000
    # Each manifest line is one delivered event: same bytes, partition key = device id, the partition it names.
    by_body = defaultdict(list)
    by_id = defaultdict(list)
    for partition, _, key, body in received:
        by_body[body].append((partition, key))
        if body.startswith('{"event_id":"'):
            by_id[body[13:49]].append((partition, key))
    sends = defaultdict(int)
    for line in lines:
        sends[line["event_id"]] += line["kind"] != "invalid"
    for line in lines:
        where = by_body[line["body"]] if line["kind"] == "invalid" else by_id[line["event_id"]]
        if line["kind"] != "invalid":
            assert len(where) == sends[line["event_id"]], line  # sent once, or once more per duplicate
        assert where and all(w == (line["partition_id"], line["device_id"]) for w in where), line
    # One device, one partition; and within it, the order the generator made them.
    partitions_of = defaultdict(set)
    for partition, _, key, _ in received:
        partitions_of[key].add(partition)
    assert all(len(parts) == 1 for parts in partitions_of.values())
    order_sent = defaultdict(list)
    for line in lines:
        if line["kind"] == "valid":
            order_sent[line["device_id"]].append(line["event_id"])
    order_received = defaultdict(list)
    for _, _, key, body in sorted(received, key=lambda r: (r[0], r[1])):
        doc = json.loads(body) if body.startswith("{") and body.endswith("}") else None
        if (
            doc
            and "device_id" in doc
            and doc["event_id"] in expected.valid
            and doc["event_id"] not in order_received[key]
        ):
            order_received[key].append(doc["event_id"])
    assert order_received == order_sent


def test_produce_without_a_connection_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("EventHubConnection", raising=False)
    result = subprocess.run(
        [sys.executable, "-m", "sluice", "produce", "--count", "1", "--settings", str(tmp_path / "none.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "EventHubConnection" in result.stderr and "none.json" in result.stderr
