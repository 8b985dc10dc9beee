"""Async helpers over the real azure-eventhub SDK (``azure.eventhub.aio``), failing fast.

Receives run concurrently with :func:`asyncio.gather`, which keeps tests that
need many receivers quick: every SDK client spends about half a second setting
up its connection, link and token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient

from tests.emulators.eventhubs.helpers import FAST
from tests.fixtures.eventhubs import IsolatedHub

T = TypeVar("T")


def producer(hub: IsolatedHub, **kwargs: Any) -> EventHubProducerClient:
    return EventHubProducerClient.from_connection_string(
        hub.connection_string, eventhub_name=hub.name, **{**FAST, **kwargs})


def consumer(hub: IsolatedHub, group: str = "$Default", **kwargs: Any) -> EventHubConsumerClient:
    return EventHubConsumerClient.from_connection_string(
        hub.connection_string, consumer_group=group, eventhub_name=hub.name, **{**FAST, **kwargs})


async def send(hub: IsolatedHub, texts: list[str], **batch_kwargs: Any) -> None:
    async with producer(hub) as client:
        batch = await client.create_batch(**batch_kwargs)
        for text in texts:
            batch.add(EventData(text))
        await client.send_batch(batch)


async def receive(hub: IsolatedHub, partition_id: str, *, count: int, starting_position: Any = "-1",
                  inclusive: bool = False, group: str = "$Default", timeout: float = 20.0,
                  settle: float = 0.0, client_kwargs: dict[str, Any] | None = None,
                  **receive_kwargs: Any) -> list[EventData]:
    """Receive from one partition until ``count`` events arrived (then ``settle`` more seconds) or ``timeout``.

    An error reported to ``on_error`` (or raised by ``receive_batch``) is raised here.
    """
    events: list[EventData] = []
    errors: list[BaseException] = []
    enough = asyncio.Event()
    client = consumer(hub, group, **(client_kwargs or {}))

    async def on_batch(_context: Any, batch: list[EventData]) -> None:
        events.extend(batch)
        if len(events) >= count:
            enough.set()

    async def on_error(_context: Any, error: BaseException) -> None:
        errors.append(error)
        enough.set()

    async def run() -> None:
        try:
            await client.receive_batch(on_batch, on_error=on_error, partition_id=partition_id,
                                       starting_position=starting_position, starting_position_inclusive=inclusive,
                                       max_wait_time=0.2, max_batch_size=500, **receive_kwargs)
        except Exception as exc:
            errors.append(exc)
            enough.set()

    task = asyncio.create_task(run())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(enough.wait(), timeout)
    if settle and not errors:
        await asyncio.sleep(settle)
    # The SDK's close waits out a one-second poll in its event processor; nothing here needs that wait, so
    # the receiver is closed in the background (asyncio.run cancels what is left when the test ends).
    closing = asyncio.create_task(_close(client, task))
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)
    if errors:
        raise errors[0]
    return events


_closing: set[asyncio.Task[None]] = set()
CLOSE_WAIT = 10.0


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, letting the receivers :func:`receive` closes in the background finish first.

    Left to ``asyncio.run``, a close still in flight is cancelled inside the SDK, which can keep the loop
    waiting until the test times out (seen once in CI on a loaded machine); waiting for it (at most
    ``CLOSE_WAIT`` seconds) ends the test when its clients are closed.
    """
    async def whole() -> T:
        try:
            return await main
        finally:
            if _closing:
                await asyncio.wait(set(_closing), timeout=CLOSE_WAIT)

    return asyncio.run(whole())


async def _close(client: EventHubConsumerClient, receiving: asyncio.Task[None]) -> None:
    await client.close()
    await asyncio.wait({receiving}, timeout=0.5)
    if not receiving.done():
        receiving.cancel()


def bodies(events: list[EventData]) -> list[str]:
    return [e.body_as_str() for e in events]
