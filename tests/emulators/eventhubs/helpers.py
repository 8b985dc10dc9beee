"""Small helpers over the real azure-eventhub SDK, with short timeouts and deadlines.

The SDK's defaults retry for minutes; these clients fail fast (``retry_total=0``
unless asked) so a broken emulator fails a test instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient

from tests.fixtures.eventhubs import IsolatedHub

FAST = {"retry_total": 0, "retry_backoff_factor": 0.1}


def producer(hub: IsolatedHub, **kwargs: Any) -> EventHubProducerClient:
    return EventHubProducerClient.from_connection_string(
        hub.connection_string, eventhub_name=hub.name, **{**FAST, **kwargs})


def consumer(hub: IsolatedHub, group: str = "$Default", **kwargs: Any) -> EventHubConsumerClient:
    return EventHubConsumerClient.from_connection_string(
        hub.connection_string, consumer_group=group, eventhub_name=hub.name, **{**FAST, **kwargs})


def receive(hub: IsolatedHub, partition_id: str, *, count: int, starting_position: Any = "-1",
            inclusive: bool = False, group: str = "$Default", timeout: float = 20.0,
            settle: float = 0.0, **receive_kwargs: Any) -> list[EventData]:
    """Receive from one partition until ``count`` events arrived or ``timeout`` passed.

    With ``settle`` > 0 it keeps listening that long after reaching ``count``, so a
    test can check that nothing more arrives.
    """
    events: list[EventData] = []
    errors: list[BaseException] = []
    done = threading.Event()
    client = consumer(hub, group)

    def on_batch(_context: Any, batch: list[EventData]) -> None:
        events.extend(batch)
        if len(events) >= count and not settle:
            done.set()

    def on_error(_context: Any, error: BaseException) -> None:
        errors.append(error)
        done.set()

    def run() -> None:
        try:
            client.receive_batch(on_batch, on_error=on_error, partition_id=partition_id,
                                 starting_position=starting_position, starting_position_inclusive=inclusive,
                                 max_wait_time=0.2, max_batch_size=500, **receive_kwargs)
        except BaseException as exc:
            errors.append(exc)
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not done.is_set() and time.monotonic() < deadline:
        if settle and len(events) >= count:
            time.sleep(settle)
            break
        done.wait(0.05)
    # The SDK's close waits out a one-second poll in its event processor; nothing here needs that wait, so
    # the receiver is closed in the background (its link is detached a moment later).
    threading.Thread(target=_close, args=(client, thread), daemon=True).start()
    if errors:
        raise errors[0]
    return events


def _close(client: EventHubConsumerClient, receiving: threading.Thread) -> None:
    client.close()
    receiving.join(10)


def bodies(events: list[EventData]) -> list[str]:
    return [e.body_as_str() for e in events]
