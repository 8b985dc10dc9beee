"""EventHubConsumerClient with BlobCheckpointStore on Azurite: load balancing and resuming from checkpoints."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from azure.eventhub import EventData
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
from azure.storage.blob import BlobServiceClient

from tests.emulators.eventhubs.helpers import FAST, producer
from tests.fixtures.eventhubs import IsolatedHub

pytestmark = pytest.mark.timeout(120)


class Processor:
    """One EventHubConsumerClient with a checkpoint store, receiving in a thread and checkpointing every event."""

    def __init__(self, hub: IsolatedHub, store: BlobCheckpointStore, name: str) -> None:
        from azure.eventhub import EventHubConsumerClient

        self.name = name
        self.client = EventHubConsumerClient.from_connection_string(
            hub.connection_string, consumer_group="sluice", eventhub_name=hub.name, checkpoint_store=store,
            load_balancing_interval=0.5, partition_ownership_expiration_interval=5, **FAST)
        self.events: dict[str, list[str]] = defaultdict(list)
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_event(self, context: Any, event: EventData | None) -> None:
        if event is None:
            return
        with self.lock:
            self.events[context.partition_id].append(event.body_as_str())
        context.update_checkpoint(event)

    def _run(self) -> None:
        self.client.receive(self._on_event, on_error=lambda _c, e: self.errors.append(e),
                            starting_position="-1", max_wait_time=0.2)

    def received(self) -> dict[str, list[str]]:
        with self.lock:
            return {p: list(b) for p, b in self.events.items()}

    def close(self) -> None:
        self.client.close()
        self.thread.join(15)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def owners(store: BlobCheckpointStore, hub: IsolatedHub) -> dict[str, str]:
    namespace = f"{hub.running.host}:{hub.running.port}"
    listed = store.list_ownership(namespace, hub.name, "sluice")
    return {o["partition_id"]: o["owner_id"] for o in listed}


def test_two_consumers_balance_partitions_and_resume_from_checkpoints(
        isolated_eventhub: IsolatedHub, azurite_connection_string: str) -> None:
    hub = isolated_eventhub
    container = f"checkpoints-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azurite_connection_string).create_container(container)
    store = BlobCheckpointStore.from_connection_string(azurite_connection_string, container)

    def send_round(tag: str) -> dict[str, list[str]]:
        sent = {}
        with producer(hub) as client:
            for p in ("0", "1", "2", "3"):
                sent[p] = [f"{tag}-{p}-{i}" for i in range(5)]
                client.send_batch([EventData(b) for b in sent[p]], partition_id=p)
        return sent

    first = send_round("one")
    a = Processor(hub, store, "a")
    b = Processor(hub, store, "b")
    try:
        def balanced() -> bool:
            current = owners(store, hub)
            return len(current) == 4 and sorted(list(current.values()).count(o) for o in set(current.values())) == [
                2,
                2,
            ]

        wait_for(balanced, 45, "the two consumers to own two partitions each")
        second = send_round("two")
        everything = {p: first[p] + second[p] for p in first}

        def all_received() -> bool:
            merged: dict[str, list[str]] = defaultdict(list)
            for proc in (a, b):
                for p, got in proc.received().items():
                    merged[p].extend(got)
            return all(set(merged[p]) >= set(everything[p]) for p in everything)

        wait_for(all_received, 30, "every event to reach one of the consumers")
        # both consumers took part: each received events of exactly the partitions it came to own, or more
        # (a partition can change hands while balancing; its new owner resumes from the last checkpoint)
        assert a.received() and b.received()
        # the only errors allowed are the hand-overs: the new owner attaches with the same owner level (0)
        # and the service disconnects the old one with amqp:link:stolen, as Azure does
        assert all(getattr(e, "error", None) == "link:stolen" for e in a.errors + b.errors), a.errors + b.errors
    finally:
        a.close()
        b.close()

    # every partition has a checkpoint at its last event; a restarted consumer gets only what came after
    namespace = f"{hub.running.host}:{hub.running.port}"
    checkpoints = {c["partition_id"]: c["sequence_number"]
                   for c in store.list_checkpoints(namespace, hub.name, "sluice")}
    assert checkpoints == {p: 9 for p in ("0", "1", "2", "3")}
    third = send_round("three")
    c = Processor(hub, store, "c")
    try:
        wait_for(lambda: sum(len(v) for v in c.received().values()) >= 20, 45, "the restarted consumer")
        time.sleep(0.5)
        assert c.received() == third
    finally:
        c.close()
