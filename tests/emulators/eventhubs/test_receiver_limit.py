"""At most 5 receivers per partition and consumer group, as Azure allows; the sixth is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from azure.eventhub import EventData
from azure.eventhub.exceptions import ConnectionLostError

from emulators.eventhubs import frames
from emulators.eventhubs.broker import MAX_RECEIVERS_PER_PARTITION
from emulators.eventhubs.codec import Symbol, UInt
from emulators.eventhubs.links import EPOCH, RECEIVER_NAME
from emulators.eventhubs.management import KEY_NAME, KEY_VALUE
from tests.emulators.eventhubs import aio_helpers
from tests.emulators.eventhubs.rawamqp import RawClient, condition, source, target
from tests.fixtures.eventhubs import IsolatedHub

pytestmark = pytest.mark.timeout(120)

LIMIT_TEXT = "maximum number of allowed receivers per partition in a consumer group which is 5"
PLAIN = f"\0{KEY_NAME}\0{KEY_VALUE}".encode()


class Reader:
    """An aio SDK consumer receiving from one partition until closed, keeping its events and errors."""

    def __init__(self, hub: IsolatedHub, partition_id: str, group: str = "$Default") -> None:
        self.client = aio_helpers.consumer(hub, group)
        self.events: list[EventData] = []
        self.errors: list[BaseException] = []
        self.task = asyncio.create_task(self.client.receive(
            self._on_event, on_error=self._on_error, partition_id=partition_id, starting_position="-1",
            max_wait_time=0.2))

    async def _on_event(self, _context: Any, event: EventData | None) -> None:
        if event is not None:
            self.events.append(event)

    async def _on_error(self, _context: Any, error: BaseException) -> None:
        self.errors.append(error)

    async def wait(self, what: str, timeout: float = 20.0) -> None:
        """Until the reader has events (``what="events"``) or errors."""
        async def until() -> None:
            while not getattr(self, what):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(until(), timeout)

    async def close(self) -> None:
        """Close and wait: the link is detached when this returns."""
        await self.client.close()
        await asyncio.wait({self.task}, timeout=0.5)
        self.task.cancel()


def test_five_readers_per_partition_and_group_then_the_sixth_is_refused(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub
    assert MAX_RECEIVERS_PER_PARTITION == 5

    async def body() -> None:
        await aio_helpers.send(hub, ["e"], partition_id="0")
        five = [Reader(hub, "0") for _ in range(5)]
        others: list[Reader] = []
        try:
            await asyncio.gather(*(r.wait("events") for r in five))
            assert all(not r.errors for r in five)

            # the limit is per consumer group and per partition: these two are admitted meanwhile
            sixth, elsewhere = Reader(hub, "0"), [Reader(hub, "0", group="sluice"), Reader(hub, "1")]
            others += [sixth, *elsewhere]
            await aio_helpers.send(hub, ["f"], partition_id="1")
            await asyncio.gather(sixth.wait("errors"), *(r.wait("events") for r in elsewhere))
            assert all(not r.errors for r in elsewhere)
            refused = sixth.errors[0]
            assert isinstance(refused, ConnectionLostError), refused
            assert getattr(refused, "error", None) == "resource-limit-exceeded"
            assert LIMIT_TEXT in str(refused)
            # the SDK sends no receiver name, so Azure lists each as "nil"
            assert "List of connected receivers - nil, nil, nil, nil, nil" in str(refused)
            assert not sixth.events
            await sixth.close()  # before a slot frees up: the SDK would attach it again

            # a closed reader frees its slot
            await five.pop(0).close()
            replacement = Reader(hub, "0")
            others.append(replacement)
            await replacement.wait("events")
            assert not replacement.errors
            assert [e.body_as_str() for e in replacement.events] == ["e"]
            assert all(not r.errors for r in five)
        finally:
            await asyncio.gather(*(r.close() for r in five + others))

    aio_helpers.run(body())


def address(hub: IsolatedHub, partition_id: str = "2", group: str = "$Default") -> str:
    return f"{hub.name}/ConsumerGroups/{group}/Partitions/{partition_id}"


def named(name: str) -> dict[Symbol, Any]:
    return {Symbol(RECEIVER_NAME): name}


def detach(raw: RawClient, handle: int) -> None:
    raw.send_raw(frames.frame(0, frames.DETACH, [UInt(handle), True, None]))
    raw.expect(frames.DETACH)


def test_refusal_names_the_receivers_and_every_way_of_leaving_frees_a_slot(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub
    with RawClient(hub.running.host, hub.running.port) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        for handle in range(1, 5):
            _attach, refused = raw.attach_receiver(handle, address(hub), properties=named(f"reader-{handle}"))
            assert refused is None
        _attach, refused = raw.attach_receiver(5, address(hub))  # no name: "nil"
        assert refused is None
        _attach, refused = raw.attach_receiver(6, address(hub), properties=named("reader-6"))
        assert condition(refused) == "amqp:resource-limit-exceeded"
        description = refused[2].value[1]
        assert LIMIT_TEXT in description
        assert "List of connected receivers - reader-1, reader-2, reader-3, reader-4, nil." in description
        assert f"partition 2 of {hub.name}/$Default" in description

        detach(raw, 2)  # the client detaches one: its slot is free
        _attach, refused = raw.attach_receiver(7, address(hub), properties=named("reader-7"))
        assert refused is None
        _attach, refused = raw.attach_receiver(8, address(hub))
        assert "reader-1, reader-3, reader-4, nil, reader-7." in refused[2].value[1]
    # the connection is gone: all five slots are free
    with RawClient(hub.running.host, hub.running.port) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        for handle in range(1, 6):
            _attach, refused = raw.attach_receiver(handle, address(hub))
            assert refused is None, handle
        # a session that ends frees its receivers too
        raw.send_raw(frames.frame(0, frames.END, [None]))
        raw.expect(frames.END)
        raw.send_raw(frames.frame(0, frames.BEGIN, [None, UInt(0), UInt(100000), UInt(100000), UInt(100)]))
        raw.expect(frames.BEGIN)
        for handle in range(1, 6):
            _attach, refused = raw.attach_receiver(handle, address(hub))
            assert refused is None, handle


def attach_with_owner_level(raw: RawClient, handle: int, address: str, level: int) -> list[list[Any]]:
    """Attach a receiver with an owner level; returns the detaches the emulator sent before its attach."""
    raw.send_raw(frames.frame(0, frames.ATTACH, [
        f"recv-{handle}", UInt(handle), frames.ROLE_RECEIVER, None, None, source(address), target("client"),
        None, None, None, None, None, None, {Symbol(EPOCH): level}]))
    detaches = []
    while True:
        _channel, code, fields, _payload = raw.read_frame()
        if code == frames.ATTACH:
            assert int(fields[1]) == handle
            return detaches
        if code == frames.DETACH:
            detaches.append(fields)


def test_an_owner_level_receiver_takes_a_full_partition(isolated_eventhub: IsolatedHub) -> None:
    """The owner-level rules come first: an epoch receiver joining five others disconnects them (before its
    attach is answered) instead of being refused for the limit, and then it alone holds the partition."""
    hub = isolated_eventhub
    with RawClient(hub.running.host, hub.running.port) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        for handle in range(1, 6):
            assert raw.attach_receiver(handle, address(hub, "3"))[1] is None
        stolen = attach_with_owner_level(raw, 6, address(hub, "3"), 1)
        assert sorted(int(d[0]) for d in stolen) == [1, 2, 3, 4, 5]
        assert {condition(d) for d in stolen} == {"amqp:link:stolen"}
        # more with the same owner level: each takes over from the one before, none is refused for the limit
        for handle in range(7, 13):
            stolen = attach_with_owner_level(raw, handle, address(hub, "3"), 1)
            assert [int(d[0]) for d in stolen] == [handle - 1]
            assert condition(stolen[0]) == "amqp:link:stolen"
        raw.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # and the last one was not detached
            raw.expect(frames.DETACH)
