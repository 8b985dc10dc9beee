"""The Event Hubs listener under ownership changes and restarts: no redelivery, no stale checkpoint, no wait.

Real SDK (azure-eventhub 5.15.1 + checkpointstoreblob), real Azurite and the Event Hubs
emulator through tests/fixtures; the listener is driven in-process so that two "pods"
(two ``EventHubListener`` objects on one consumer group) can be interleaved precisely.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub import EventData, EventHubProducerClient
from azure.storage.blob import BlobServiceClient

from devhost.app_loader import FunctionSpec
from devhost.eventhub_trigger import CHECKPOINT_CONTAINER, EventHubBinding, EventHubListener
from devhost.invocation import Invoker
from devhost.settings import EventHubOptions
from tests.fixtures.eventhubs import IsolatedHub

FAST = {"DEVHOST_EVENTHUBS_LOAD_BALANCING_SECONDS": "1", "DEVHOST_EVENTHUBS_OWNERSHIP_EXPIRATION_SECONDS": "4"}


def _listener(tmp_path: Path, hub: IsolatedHub, storage: str, seen: list[tuple[str, str, int]], who: str,
              options: EventHubOptions, many: bool = True) -> EventHubListener:
    def function(events: Any) -> None:
        for event in (events if many else [events]):
            seen.append((who, event.metadata["PartitionContext"]["PartitionId"], event.sequence_number))

    spec = FunctionSpec(name="f", trigger_type="eventHubTrigger", trigger={"name": "events"},
                        user_function=function, is_async=False, accepts_context=False, retry=None)
    binding = EventHubBinding(spec, hub.connection_string, hub.name, "$Default", many, "binary")
    (tmp_path / who).mkdir(exist_ok=True)
    return EventHubListener(binding, options, Invoker(tmp_path / who, threads=2), storage, environ=FAST)


def _send(hub: IsolatedHub, partition: str, *bodies: str) -> None:
    with EventHubProducerClient.from_connection_string(hub.connection_string, eventhub_name=hub.name) as producer:
        batch = producer.create_batch(partition_id=partition)
        for body in bodies:
            batch.add(EventData(body))
        producer.send_batch(batch)


def _checkpoints(storage: str, hub: str) -> dict[str, int]:
    with BlobServiceClient.from_connection_string(storage) as service:
        container = service.get_container_client(CHECKPOINT_CONTAINER)
        return {blob.name.rsplit("/", 1)[1]: int(blob.metadata["sequencenumber"])
                for blob in container.list_blobs(include=["metadata"])
                if f"/{hub.lower()}/" in blob.name and "/checkpoint/" in blob.name}


async def _until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


def test_from_enqueued_time_resumes_after_the_checkpointed_event(
        tmp_path: Path, isolated_eventhub: IsolatedHub, azurite_connection_string: str) -> None:
    """Rule: initialOffsetOptions apply only when a partition has NO checkpoint; with a checkpoint the
    host (Event Hubs extension 5.x, Azure.Messaging.EventHubs EventProcessor) resumes strictly AFTER the
    checkpointed event (EventPosition.FromOffset/FromSequenceNumber(..., isInclusive: false)).

    Was: the listener passed ``starting_position_inclusive=True`` for fromEnqueuedTime
    (devhost/eventhub_trigger.py ``_starting_position``), and azure-eventhub's
    ``EventProcessorMixin.get_init_event_position`` applies that flag to the checkpoint's offset too
    (``x-opt-offset >= '<checkpoint>'``). Interleaving: listener A (fromEnqueuedTime) processes events
    0..2 of partition 0 and checkpoints 2; A stops; listener B (another pod, or the restarted one) claims
    partition 0 and gets event 2 again before event 3. Every restart / ownership handover re-invokes the
    last checkpointed event of every partition - a duplicate the host never produces.
    """
    hub, storage = isolated_eventhub, azurite_connection_string
    options = EventHubOptions(initial_offset="fromEnqueuedTime",
                              initial_enqueued_time=datetime.now(UTC) - timedelta(hours=1))
    seen: list[tuple[str, str, int]] = []

    async def scenario() -> None:
        a = _listener(tmp_path, hub, storage, seen, "a", options)
        await a.start()
        await asyncio.to_thread(_send, hub, "0", "e0", "e1", "e2")
        await _until(lambda: _checkpoints(storage, hub.name).get("0") == 2)
        await a.stop()
        b = _listener(tmp_path, hub, storage, seen, "b", options)
        await b.start()
        await asyncio.sleep(3)  # b claims partition 0 and starts receiving from the checkpoint
        await asyncio.to_thread(_send, hub, "0", "e3")
        await _until(lambda: any(s == ("b", "0", 3) for s in seen))
        await b.stop()

    asyncio.run(scenario())
    assert [s for s in seen if s[0] == "b"] == [("b", "0", 3)]


def test_stop_writes_no_checkpoint_for_a_partition_another_host_now_owns(
        tmp_path: Path, isolated_eventhub: IsolatedHub, azurite_connection_string: str) -> None:
    """Rule: a processor only checkpoints partitions it owns; once ownership is lost (CloseReason /
    ProcessingStoppedReason.OwnershipLost) the host's partition processor is closed and discarded, so
    nothing it held back for batchCheckpointFrequency is ever written for that partition, and a
    checkpoint never moves backwards under the new owner.

    Was: ``EventHubListener.stop`` checkpointed ``state.uncheckpointed`` of EVERY partition it ever processed
    (``self._partitions`` was never pruned on close), including partitions lost to another host.
    Interleaving (batchCheckpointFrequency 2, four partitions): A owns all four and processes event 0 of
    each (held back, not checkpointed). B joins and steals two partitions (greedy fair share), processes
    event 0 again, then event 1 (its second batch) and checkpoints 1. A processes event 1 on the
    partitions it kept and checkpoints 1. A stops: it writes sequence number 0 over B's checkpoint 1 on
    the stolen partitions - B's position moves backwards (event 1 will be delivered again).
    """
    hub, storage = isolated_eventhub, azurite_connection_string
    options = EventHubOptions(batch_checkpoint_frequency=2)
    seen: list[tuple[str, str, int]] = []
    partitions = ["0", "1", "2", "3"]

    async def scenario() -> None:
        a = _listener(tmp_path, hub, storage, seen, "a", options)
        await a.start()
        await asyncio.sleep(2)
        for p in partitions:
            await asyncio.to_thread(_send, hub, p, "e0")
        await _until(lambda: {s[1] for s in seen if s[0] == "a"} == set(partitions))
        b = _listener(tmp_path, hub, storage, seen, "b", options)
        await b.start()
        await _until(lambda: len({s[1] for s in seen if s[0] == "b"}) >= 2)  # b stole and re-read event 0
        await asyncio.sleep(3)  # a's next balancing cycle has noticed the loss
        for p in partitions:
            await asyncio.to_thread(_send, hub, p, "e1")
        await _until(lambda: sorted(_checkpoints(storage, hub.name).values()) == [1, 1, 1, 1])
        before = _checkpoints(storage, hub.name)
        await a.stop()
        after = _checkpoints(storage, hub.name)
        await b.stop()
        assert all(after[p] >= before[p] for p in partitions), (before, after)

    asyncio.run(scenario())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("while_stopping", [False, True], ids=["running", "stopping"])
def test_a_batch_in_flight_when_its_partition_is_lost_does_not_move_the_new_owners_checkpoint_back(
        tmp_path: Path, isolated_eventhub: IsolatedHub, azurite_connection_string: str, while_stopping: bool) -> None:
    """Rule: once ownership is lost the host's partition processor does not checkpoint the batch it was running
    (EventHubListener.PartitionProcessor: CloseAsync cancels ``_ownershipLostTokenSource`` on
    ProcessingStoppedReason.OwnershipLost, and ProcessEventsAsync checkpoints only while it is not cancelled;
    Microsoft.Azure.WebJobs.Extensions.EventHubs src/Listeners/EventHubListener.PartitionProcessor.cs).

    Was: ``EventHubListener._process`` checkpointed its batch through the PartitionContext it started with after the
    function returned, and the SDK's PartitionContext does not check ownership. Interleaving: A owns all four
    partitions and is slow on event 0 of each; B joins, steals two partitions, re-reads event 0, then reads event 1
    and checkpoints 1; A's invocations return and A wrote 0 over B's 1: the checkpoint moved back and event 1 would
    be delivered again after the next hand-over. Variant "stopping": A is already draining in stop() when it loses
    the partitions (a rolling restart), and its in-flight batches and stop() must not write them either.
    """
    hub, storage = isolated_eventhub, azurite_connection_string
    partitions = ["0", "1", "2", "3"]
    a_started: list[str] = []
    a_finished: list[str] = []
    b_seen: list[tuple[str, int]] = []
    release_a = threading.Event()

    def slow_a(events: Any) -> None:
        partition = events[0].metadata["PartitionContext"]["PartitionId"]
        a_started.append(partition)
        release_a.wait(40)  # A is still working on event 0 while B takes the partition over
        a_finished.append(partition)

    def fast_b(events: Any) -> None:
        for event in events:
            b_seen.append((event.metadata["PartitionContext"]["PartitionId"], event.sequence_number))

    def listener(function: Any, who: str) -> EventHubListener:
        spec = FunctionSpec(name="f", trigger_type="eventHubTrigger", trigger={"name": "events"},
                            user_function=function, is_async=False, accepts_context=False, retry=None)
        binding = EventHubBinding(spec, hub.connection_string, hub.name, "$Default", True, "binary")
        (tmp_path / who).mkdir(exist_ok=True)
        return EventHubListener(binding, EventHubOptions(), Invoker(tmp_path / who, threads=4), storage, environ=FAST)

    async def scenario() -> tuple[dict[str, int], dict[str, int], set[str]]:
        a, b = listener(slow_a, "a"), listener(fast_b, "b")
        await a.start()
        a_stopping: asyncio.Task[None] | None = None
        try:
            await asyncio.sleep(2)  # A claims all four partitions (greedy)
            for p in partitions:
                await asyncio.to_thread(_send, hub, p, "e0")
            await _until(lambda: set(a_started) == set(partitions))
            if while_stopping:
                a_stopping = asyncio.create_task(a.stop())  # waits for the slow invocations
            await b.start()
            try:
                await _until(lambda: len({p for p, _ in b_seen}) >= 2)  # B stole partitions and re-read event 0
                stolen = {p for p, _ in b_seen}
                for p in stolen:
                    await asyncio.to_thread(_send, hub, p, "e1")
                await _until(lambda: all(_checkpoints(storage, hub.name).get(p) == 1 for p in stolen))
                await asyncio.sleep(3)  # A's next balancing cycle has noticed the loss
                before = {p: _checkpoints(storage, hub.name)[p] for p in stolen}
                release_a.set()  # A's slow invocations return now
                await _until(lambda: set(a_finished) == set(partitions))
                if a_stopping is not None:
                    await a_stopping
                await asyncio.sleep(2)  # A's checkpoint writes, if any, land
                after = {p: _checkpoints(storage, hub.name)[p] for p in stolen}
            finally:
                release_a.set()
                await b.stop()
        finally:
            release_a.set()
            await (a_stopping if a_stopping is not None else a.stop())
        return before, after, stolen

    before, after, stolen = asyncio.run(scenario())
    assert after == before, (f"after A's in-flight batches on the partitions B took ({sorted(stolen)}) finished, "
                             f"their checkpoints moved from {before} back to {after}")


def test_min_event_batch_size_does_not_hold_a_cardinality_one_function(
        tmp_path: Path, isolated_eventhub: IsolatedHub, azurite_connection_string: str) -> None:
    """Rule (host.json reference, extensions.eventHubs): minEventBatchSize "applies only to functions that
    receive multiple events" and maxWaitTime "is only considered when minEventBatchSize is larger than 1"
    for such functions; a cardinality-one function is invoked as soon as an event is received.

    Was: ``EventHubListener.start`` passed ``max_wait_time`` and ``_on_event_batch`` held events back whenever
    ``min_event_batch_size > 1``, whatever the cardinality. Interleaving: one host.json for an app with a
    batch function and a cardinality-one function (minEventBatchSize 5, maxWaitTime 20 s); one event arrives
    for the cardinality-one function: the host invokes it at once, the dev host waits the full maxWaitTime.
    """
    hub, storage = isolated_eventhub, azurite_connection_string
    options = EventHubOptions(min_event_batch_size=5, max_wait_time=timedelta(seconds=20))
    seen: list[tuple[str, str, int]] = []

    async def scenario() -> None:
        a = _listener(tmp_path, hub, storage, seen, "a", options, many=False)
        await a.start()
        await asyncio.sleep(2)
        await asyncio.to_thread(_send, hub, "0", "e0")
        try:
            await _until(lambda: bool(seen), timeout=8)
        finally:
            await a.stop()

    asyncio.run(scenario())
