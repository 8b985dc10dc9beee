"""The dev host's receivers do not keep a delivery tag per event (``forget_settled_delivery_tags``).

The real azure-eventhub SDK receives from the emulator, which sends deliveries settled as Event Hubs
does; the links' tag sets are read after the events are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest
from azure.eventhub import EventData, EventHubProducerClient
from azure.eventhub._pyamqp.aio._receiver_async import ReceiverLink
from azure.eventhub.aio import EventHubConsumerClient

from devhost.eventhub_trigger import forget_settled_delivery_tags
from tests.fixtures.eventhubs import IsolatedHub

pytestmark = pytest.mark.timeout(60)
EVENTS = 300


def tags_kept_after_receiving(hub: IsolatedHub, ignore: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Receive every event of partition 0 once; the size of each live receiver link's tag set, before closing."""

    async def receive() -> list[int]:
        client = EventHubConsumerClient.from_connection_string(hub.connection_string, consumer_group="$Default",
                                                               eventhub_name=hub.name)
        got: list[int] = []
        done = asyncio.Event()

        async def on_batch(_context, events: list) -> None:
            got.extend(e.sequence_number for e in events)
            if len(got) >= EVENTS:
                done.set()

        task = asyncio.create_task(client.receive_batch(on_event_batch=on_batch, partition_id="0",
                                                        starting_position="-1", max_batch_size=50))
        await asyncio.wait_for(done.wait(), 30)
        sizes = [len(o._received_delivery_tags) for o in gc.get_objects()
                 if isinstance(o, ReceiverLink) and id(o) not in ignore]
        await client.close()
        task.cancel()  # receive_batch does not always return after close(); what it received is all we need
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert sorted(got) == list(range(EVENTS))
        return sizes

    return asyncio.run(receive())


def test_settled_deliveries_leave_no_tag_behind(isolated_eventhub: IsolatedHub,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with EventHubProducerClient.from_connection_string(isolated_eventhub.connection_string,
                                                       eventhub_name=isolated_eventhub.name) as producer:
        batch = producer.create_batch(partition_id="0")
        for n in range(EVENTS):
            batch.add(EventData(f"event {n}"))
        producer.send_batch(batch)
    sdk = getattr(ReceiverLink._incoming_transfer, "__wrapped__", ReceiverLink._incoming_transfer)
    monkeypatch.setattr(ReceiverLink, "_incoming_transfer", sdk)  # the SDK alone, whatever ran before here
    assert max(tags_kept_after_receiving(isolated_eventhub)) >= EVENTS  # it keeps one tag per event received

    forget_settled_delivery_tags()
    forget_settled_delivery_tags()  # idempotent: wrapped once
    assert ReceiverLink._incoming_transfer.__wrapped__ is sdk
    gc.collect()  # the first client's links may still be about; only this client's count
    before = {id(o) for o in gc.get_objects() if isinstance(o, ReceiverLink)}
    sizes = tags_kept_after_receiving(isolated_eventhub, ignore=before)
    assert sizes and max(sizes) == 0
