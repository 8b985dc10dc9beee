"""How the Event Hubs listener turns what the SDK hands it into invocations and checkpoints.

The SDK's processor is replaced by direct calls of the batch callback with a small
in-memory partition context (our port of the SDK's); the functions and the invoker are real.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub import CloseReason, EventData

from devhost.app_loader import FunctionSpec, RetryPolicy
from devhost.errors import DevHostError
from devhost.eventhub_trigger import EventHubBinding, EventHubListener
from devhost.invocation import Invoker
from devhost.settings import EventHubOptions
from tests.devhost.test_functions import _event


@dataclass
class FakePartitionContext:
    partition_id: str = "0"
    fully_qualified_namespace: str = "ns"
    eventhub_name: str = "hub"
    consumer_group: str = "$Default"
    checkpoints: list[int] = field(default_factory=list)

    async def update_checkpoint(self, event: EventData) -> None:
        self.checkpoints.append(event.sequence_number)


def listener(tmp_path: Path, function: Any, *, many: bool = True, retry: RetryPolicy | None = None,
             **options: Any) -> EventHubListener:
    spec = FunctionSpec(name="f", trigger_type="eventHubTrigger", trigger={"name": "events"},
                        user_function=function, is_async=False, accepts_context=False, retry=retry)
    binding = EventHubBinding(spec, "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b", "hub",
                              "$Default", many, "binary")
    return EventHubListener(binding, EventHubOptions(**options), Invoker(tmp_path, threads=2), "unused", environ={})


def recording_listener(tmp_path: Path, **options: Any) -> tuple[EventHubListener, list[list[int]]]:
    """A listener whose function records the sequence numbers of each batch it is given, and that record."""
    seen: list[list[int]] = []
    return listener(tmp_path, lambda events: seen.append([e.sequence_number for e in events]), **options), seen


def events(*seqs: int) -> list[EventData]:
    return [_event(str(n).encode(), n) for n in seqs]


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_batches_are_split_at_max_size_and_checkpointed_after_each(tmp_path: Path) -> None:
    host, seen = recording_listener(tmp_path, max_event_batch_size=3)
    context = FakePartitionContext()
    asyncio.run(host._on_event_batch(context, events(1, 2, 3, 4, 5, 6, 7)))
    assert seen == [[1, 2, 3], [4, 5, 6], [7]]
    assert context.checkpoints == [3, 6, 7]


def test_the_conversion_of_each_batch_is_charged_to_the_function_as_its_input(tmp_path: Path) -> None:
    """bench e2e counts it as the worker's CPU (in Azure the Python worker converts what the host hands it)."""
    host = listener(tmp_path, lambda events: None, max_event_batch_size=3)
    asyncio.run(host._on_event_batch(FakePartitionContext(), events(*range(1, 301))))
    figures = host._invoker.cpu.snapshot()
    assert figures["f:input"]["calls"] == figures["f"]["calls"] == 100
    assert figures["f:input"]["cpu_seconds"] > 0


def test_min_batch_size_waits_for_more_events_or_the_wait_time(tmp_path: Path) -> None:
    host, seen = recording_listener(tmp_path, max_event_batch_size=10, min_event_batch_size=3,
                                    max_wait_time=timedelta(seconds=0.3))
    context = FakePartitionContext()

    async def scenario() -> None:
        await host._on_event_batch(context, events(1, 2))
        assert seen == []
        await host._on_event_batch(context, events(3))
        assert seen == [[1, 2, 3]]
        await host._on_event_batch(context, events(4))
        await host._on_event_batch(context, [])  # the SDK's idle call, before the wait time
        assert seen == [[1, 2, 3]]
        await asyncio.sleep(0.35)
        await host._on_event_batch(context, [])
        assert seen == [[1, 2, 3], [4]]

    asyncio.run(scenario())
    assert context.checkpoints == [3, 4]


def test_a_remainder_below_the_min_batch_size_waits_too(tmp_path: Path) -> None:
    host, seen = recording_listener(tmp_path, max_event_batch_size=4, min_event_batch_size=3,
                                    max_wait_time=timedelta(seconds=30))
    context = FakePartitionContext()
    asyncio.run(host._on_event_batch(context, events(1, 2, 3, 4, 5)))
    assert seen == [[1, 2, 3, 4]]
    assert context.checkpoints == [4]


def test_a_remainder_below_min_batch_size_waits_max_wait_time_from_its_own_arrival(tmp_path: Path) -> None:
    """With minEventBatchSize > 1 events wait for the minimum or maxWaitTime since the first waiting one; the host's
    cache starts a new wait for what a full batch leaves over. Interleaving (max 4, min 3, wait 0.3 s): events 1-2
    arrive at t=0 and wait; events 3-5 arrive at t=0.2, so 1-4 are invoked and 5 is left over; at t=0.35 the SDK's
    idle call comes. Event 5 has waited 0.15 s, under maxWaitTime and below the minimum: it still waits. It was sent
    at once as an undersized batch while its wait was counted from event 1's arrival."""
    host, seen = recording_listener(tmp_path, max_event_batch_size=4, min_event_batch_size=3,
                                    max_wait_time=timedelta(seconds=0.3))
    context = FakePartitionContext()

    async def scenario() -> None:
        await host._on_event_batch(context, events(1, 2))
        await asyncio.sleep(0.2)
        await host._on_event_batch(context, events(3, 4, 5))
        assert seen == [[1, 2, 3, 4]]
        await asyncio.sleep(0.15)
        await host._on_event_batch(context, [])  # the SDK's idle call
        assert seen == [[1, 2, 3, 4]], "event 5 was invoked before waiting maxWaitTime or reaching the minimum"
        await asyncio.sleep(0.2)
        await host._on_event_batch(context, [])
        assert seen == [[1, 2, 3, 4], [5]]

    asyncio.run(scenario())


def test_checkpoint_frequency_and_the_final_checkpoint_on_stop(tmp_path: Path) -> None:
    host = listener(tmp_path, lambda events: None, max_event_batch_size=1, batch_checkpoint_frequency=2)
    context = FakePartitionContext()

    async def scenario() -> None:
        await host._on_event_batch(context, events(1, 2, 3))
        assert context.checkpoints == [2]
        await host.stop()  # no client was started; the uncheckpointed batch is checkpointed
        await host._on_event_batch(context, events(4))  # after stop: not invoked, not checkpointed

    asyncio.run(scenario())
    assert context.checkpoints == [2, 3]


def test_cardinality_one_invokes_per_event_in_order(tmp_path: Path) -> None:
    seen: list[int] = []
    host = listener(tmp_path, lambda events: seen.append(events.sequence_number), many=False,
                    max_event_batch_size=10)
    context = FakePartitionContext()
    asyncio.run(host._on_event_batch(context, events(5, 6, 7)))
    assert seen == [5, 6, 7]
    assert context.checkpoints == [7]


def test_a_failing_batch_is_checkpointed_once_the_retries_are_spent(tmp_path: Path) -> None:
    attempts: list[int] = []

    def fails(events: list[Any]) -> None:
        attempts.append(events[0].sequence_number)
        raise RuntimeError("poison")

    host = listener(tmp_path, fails, retry=RetryPolicy("fixed_delay", 1, delay=timedelta(0)))
    context = FakePartitionContext()
    asyncio.run(host._on_event_batch(context, events(9)))
    assert attempts == [9, 9]
    assert context.checkpoints == [9]


@pytest.mark.timeout(60)
def test_shutdown_abandons_a_poison_batch_retried_forever_with_a_zero_delay(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A poison batch retried forever (``max_retry_count`` -1) with a zero delay must not hold ``stop()``: the retry
    loop sees shutdown, the batch is abandoned and not checkpointed, so it is delivered again on the next start.
    Was: the loop never noticed shutdown (a zero-timeout ``asyncio.wait_for`` times out even when the event is
    set), so Ctrl-C hung for ``--shutdown-timeout`` and then exited 1 with no partition checkpointed or released."""
    attempts: list[int] = []

    def poison(events: list[Any]) -> None:
        attempts.append(1)
        raise RuntimeError("poison")

    host = listener(tmp_path, poison, retry=RetryPolicy("fixed_delay", -1, delay=timedelta(0)))
    context = FakePartitionContext()

    async def scenario() -> tuple[bool, int]:
        receiving = asyncio.create_task(host._on_event_batch(context, events(7)))
        await _until(lambda: len(attempts) >= 3)
        before = len(attempts)
        try:
            await asyncio.wait_for(host.stop(), timeout=5)
            stopped = True
        except TimeoutError:
            stopped = False
        after = len(attempts)
        receiving.cancel()
        for task in list(host._inflight):
            task.cancel()
        await asyncio.gather(receiving, *host._inflight, return_exceptions=True)
        return stopped, after - before

    caplog.set_level(logging.CRITICAL, logger="devhost.invocation")  # thousands of "Executed ... (Failed" lines
    try:
        stopped, after_stop = asyncio.run(scenario())
    finally:
        host._invoker.shutdown()
    assert stopped, f"stop() did not return within 5 s; {after_stop} more attempts were made after it was called"
    assert context.checkpoints == [], "a batch abandoned by shutdown must not be checkpointed"


@pytest.mark.timeout(60)
def test_shutdown_starts_no_new_invocation_for_the_rest_of_a_cardinality_one_batch(tmp_path: Path) -> None:
    """With cardinality one, shutdown lets the invocation in progress finish and starts no other one for the rest of
    its batch, as the host's single-dispatch loop stops once cancelled; the checkpoint is the last event invoked, and
    the rest is read again on the next start. Was: every remaining event of the batch (up to maxEventBatchSize) was
    still invoked after stop(), so shutdown outlasted --shutdown-timeout with slow events and exited 1 without
    writing any checkpoint."""
    started: list[int] = []
    first_running = threading.Event()

    def slow(events: Any) -> None:  # the trigger's name; one event with cardinality one
        started.append(events.sequence_number)
        first_running.set()
        time.sleep(0.1)

    host = listener(tmp_path, slow, many=False, max_event_batch_size=30)
    context = FakePartitionContext()

    async def scenario() -> int:
        receiving = asyncio.create_task(host._on_event_batch(context, events(*range(30))))
        await asyncio.wait_for(asyncio.to_thread(first_running.wait), timeout=10)
        at_stop = len(started)
        try:
            await asyncio.wait_for(host.stop(), timeout=20)
        finally:
            await asyncio.gather(receiving, return_exceptions=True)
        return at_stop

    try:
        at_stop = asyncio.run(scenario())
    finally:
        host._invoker.shutdown()
    assert started[at_stop:] == [], f"invocations were started after stop() was called: {started[at_stop:]}"
    assert context.checkpoints == [started[-1]], "the checkpoint is the last event invoked, never one past it"


@pytest.mark.timeout(60)
def test_a_cardinality_one_event_abandoned_by_shutdown_is_not_checkpointed_past(tmp_path: Path) -> None:
    """Shutdown during the retry delay of event 2: events 0 and 1 were processed and are checkpointed, event 2 is
    abandoned and read again on the next start, and nothing after it is invoked."""
    seen: list[int] = []

    def fails_on_2(events: Any) -> None:
        seen.append(events.sequence_number)
        if events.sequence_number == 2:
            raise RuntimeError("poison")

    host = listener(tmp_path, fails_on_2, many=False, max_event_batch_size=10,
                    retry=RetryPolicy("fixed_delay", -1, delay=timedelta(seconds=30)))
    context = FakePartitionContext()

    async def scenario() -> None:
        receiving = asyncio.create_task(host._on_event_batch(context, events(0, 1, 2, 3, 4)))
        await _until(lambda: 2 in seen)
        await asyncio.wait_for(host.stop(), timeout=10)
        await receiving

    try:
        asyncio.run(scenario())
    finally:
        host._invoker.shutdown()
    assert seen == [0, 1, 2]
    assert context.checkpoints == [1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("many", [True, False], ids=["many", "one"])
@pytest.mark.parametrize("while_stopping", [False, True], ids=["running", "stopping"])
def test_a_batch_running_when_its_partition_is_lost_is_not_checkpointed(tmp_path: Path, many: bool,
                                                                        while_stopping: bool) -> None:
    """A partition closed (lost to another host) while its batch runs: the invocation in progress finishes, nothing is
    checkpointed for it, by the batch or by stop(), and with cardinality one no further event is invoked. The SDK's
    PartitionContext does not check ownership, so a checkpoint written after the loss would move the new owner's
    back. tests/devhost/test_listener_handover.py shows it with two listeners on the real SDK."""
    seen: list[int] = []
    running = threading.Event()
    release = threading.Event()

    def blocks(events: Any) -> None:
        seen.extend(e.sequence_number for e in (events if many else [events]))
        running.set()
        release.wait(10)

    host = listener(tmp_path, blocks, many=many, max_event_batch_size=10)
    context = FakePartitionContext()

    async def scenario() -> None:
        await host._on_partition_initialize(context)
        receiving = asyncio.create_task(host._on_event_batch(context, events(1, 2, 3)))
        await asyncio.wait_for(asyncio.to_thread(running.wait), timeout=10)
        stopping = asyncio.create_task(host.stop()) if while_stopping else None
        await asyncio.sleep(0.05)
        await host._on_partition_close(context, CloseReason.OWNERSHIP_LOST)
        release.set()
        await receiving
        if stopping is not None:
            await stopping
        else:
            await host.stop()

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        host._invoker.shutdown()
    assert seen == ([1, 2, 3] if many else [1])
    assert context.checkpoints == []


def test_ownership_must_outlive_the_load_balancing_interval(tmp_path: Path) -> None:
    spec = FunctionSpec(name="f", trigger_type="eventHubTrigger", trigger={"name": "events"},
                        user_function=lambda events: None, is_async=False, accepts_context=False, retry=None)
    binding = EventHubBinding(spec, "Endpoint=sb://x/", "hub", "$Default", True, "")
    with pytest.raises(DevHostError, match="DEVHOST_EVENTHUBS_OWNERSHIP_EXPIRATION_SECONDS"):
        EventHubListener(binding, EventHubOptions(), Invoker(tmp_path, threads=1), "unused", environ={
            "DEVHOST_EVENTHUBS_LOAD_BALANCING_SECONDS": "10", "DEVHOST_EVENTHUBS_OWNERSHIP_EXPIRATION_SECONDS": "5"})
