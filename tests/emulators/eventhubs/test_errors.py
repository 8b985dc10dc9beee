"""Errors as the SDK reports them (sync and aio): unknown entities, size limit, tokens, owner level."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from azure.eventhub import EventData, EventDataBatch
from azure.eventhub.exceptions import AuthenticationError, ConnectError, ConnectionLostError, EventDataSendError

from emulators.eventhubs.links import MAX_MESSAGE_SIZE
from tests.emulators.eventhubs import aio_helpers
from tests.emulators.eventhubs.helpers import consumer, producer, receive
from tests.fixtures.eventhubs import IsolatedHub

pytestmark = pytest.mark.timeout(120)


def condition_of(error: BaseException) -> str | None:
    """The AMQP condition the SDK kept (``EventHubError.error``: the condition after its first colon)."""
    return getattr(error, "error", None)


def test_unknown_hub_and_consumer_group_are_not_found(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub
    with producer(IsolatedHub(hub.running, "no-such-hub")) as client:
        # the producer link is refused with amqp:not-found, then the SDK's partition look-up gets a 404
        with pytest.raises(ConnectError, match=r"(?s)404.*event hub 'no-such-hub' does not exist"):
            client.send_batch([EventData("x")])
        with pytest.raises(ConnectError, match=r"(?s)404.*no-such-hub"):
            client.get_eventhub_properties()
    with producer(hub) as client, pytest.raises(ConnectError, match=r"(?s)404.*partition '7' does not exist"):
        client.get_partition_properties("7")
    with pytest.raises(ConnectionLostError, match="consumer group 'nobody'") as received:
        receive(hub, "0", count=1, group="nobody", timeout=10)
    assert condition_of(received.value) == "not-found"

    async def aio() -> None:
        async def send_to_missing_hub() -> None:
            async with aio_helpers.producer(IsolatedHub(hub.running, "no-such-hub")) as client:
                await client.send_batch([EventData("x")])

        sent, received = await asyncio.gather(
            send_to_missing_hub(), aio_helpers.receive(hub, "0", count=1, group="nobody", timeout=10),
            return_exceptions=True)
        assert isinstance(sent, ConnectError) and "no-such-hub" in str(sent), sent
        assert isinstance(received, ConnectionLostError) and "consumer group 'nobody'" in str(received), received
        assert condition_of(received) == "not-found"

    aio_helpers.run(aio())


def test_declared_consumer_groups_match_case_insensitively(isolated_eventhub: IsolatedHub) -> None:
    with producer(isolated_eventhub) as client:
        client.send_batch([EventData("cg")], partition_id="1")
    assert [e.body_as_str() for e in receive(isolated_eventhub, "1", count=1, group="SLUICE")] == ["cg"]


def big_batch(size: int) -> EventDataBatch:
    """A batch the SDK lets through (its own check uses the batch's limit, set above the service's here)."""
    batch = EventDataBatch(max_size_in_bytes=4 * MAX_MESSAGE_SIZE)
    batch.add(EventData(b"x" * size))
    return batch


def test_oversize_message_is_refused_with_the_size_error(isolated_eventhub: IsolatedHub) -> None:
    with producer(isolated_eventhub) as client:
        assert client.create_batch().max_size_in_bytes == MAX_MESSAGE_SIZE  # the advertised max-message-size
        with pytest.raises(EventDataSendError, match="maximum message size is 1048576") as refused:
            client.send_batch(big_batch(MAX_MESSAGE_SIZE + 10))
        assert condition_of(refused.value) == "link:message-size-exceeded"
        with pytest.raises(ValueError, match="too large"):
            client.create_batch(max_size_in_bytes=MAX_MESSAGE_SIZE + 1)
        client.send_batch(big_batch(MAX_MESSAGE_SIZE - 1000), partition_id=None)  # just under: accepted
        props = [client.get_partition_properties(p) for p in client.get_partition_ids()]
    assert sum(p["last_enqueued_sequence_number"] + 1 for p in props) == 1  # only the accepted one is stored

    async def aio() -> None:
        async with aio_helpers.producer(isolated_eventhub) as client:
            with pytest.raises(EventDataSendError, match="maximum message size"):
                await client.send_batch(big_batch(MAX_MESSAGE_SIZE + 10))

    aio_helpers.run(aio())


def connection_string_with(hub: IsolatedHub, replace: str, by: str) -> IsolatedHub:
    class Patched(IsolatedHub):
        @property
        def connection_string(self) -> str:
            return hub.connection_string.replace(replace, by)

    return Patched(hub.running, hub.name)


def test_wrong_key_and_malformed_token_are_refused(isolated_eventhub: IsolatedHub) -> None:
    wrong_key = connection_string_with(isolated_eventhub, "SAS_KEY_VALUE", "not-the-key")
    with producer(wrong_key) as client, pytest.raises(AuthenticationError, match="401"):
        client.send_batch([EventData("x")])
    malformed = connection_string_with(isolated_eventhub, "SharedAccessKeyName=RootManageSharedAccessKey;"
                                       "SharedAccessKey=SAS_KEY_VALUE", "SharedAccessSignature=garbage")
    with (
        producer(malformed) as client,
        pytest.raises(AuthenticationError, match=r"(?s)401.*Malformed authorization token"),
    ):
        client.send_batch([EventData("x")])

    async def aio() -> None:
        async with aio_helpers.producer(wrong_key) as client:
            with pytest.raises(AuthenticationError, match="401"):
                await client.send_batch([EventData("x")])
        with pytest.raises(AuthenticationError, match="Malformed"):
            await aio_helpers.receive(malformed, "0", count=1, timeout=10)

    aio_helpers.run(aio())


class Listener:
    """A sync consumer receiving in a thread, collecting events and errors."""

    def __init__(self, hub: IsolatedHub, partition_id: str, **receive_kwargs: Any) -> None:
        self.client = consumer(hub)
        self.events: list[EventData] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(partition_id, receive_kwargs), daemon=True)
        self.thread.start()

    def _run(self, partition_id: str, kwargs: dict[str, Any]) -> None:
        self.client.receive(lambda _c, e: e is not None and self.events.append(e),
                            on_error=lambda _c, e: self.errors.append(e), partition_id=partition_id,
                            starting_position="-1", max_wait_time=0.2, **kwargs)

    def wait(self, predicate: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert predicate(), f"timed out; events {len(self.events)}, errors {self.errors}"

    def close(self) -> None:
        """Close in the background: the SDK's close waits out a one-second poll that no assertion needs."""
        threading.Thread(target=self.client.close, daemon=True).start()


def test_higher_owner_level_takes_the_partition(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub
    with producer(hub) as client:
        client.send_batch([EventData("before")], partition_id="0")
    first = Listener(hub, "0", owner_level=1)
    try:
        first.wait(lambda: first.events)
        second = Listener(hub, "0", owner_level=2)
        try:
            first.wait(lambda: first.errors)
            assert isinstance(first.errors[0], ConnectionLostError)
            assert condition_of(first.errors[0]) == "link:stolen"
            assert "higher epoch of '2'" in str(first.errors[0])
            second.wait(lambda: second.events)
            with producer(hub) as client:
                client.send_batch([EventData("after")], partition_id="0")
            second.wait(lambda: [e.body_as_str() for e in second.events] == ["before", "after"])
            assert [e.body_as_str() for e in first.events] == ["before"]
            assert not second.errors

            async def aio() -> None:
                # a lower owner level, and a receiver without one, are refused while the owner holds on;
                # another consumer group is not affected
                lower, none, other = await asyncio.gather(
                    aio_helpers.receive(hub, "0", count=1, timeout=10, owner_level=1),
                    aio_helpers.receive(hub, "0", count=1, timeout=10),
                    aio_helpers.receive(hub, "0", count=2, group="sluice", timeout=10),
                    return_exceptions=True)
                for refused in (lower, none):
                    assert isinstance(refused, ConnectionLostError) and "epoch" in str(refused), refused
                    assert condition_of(refused) == "link:stolen"
                assert [e.body_as_str() for e in other] == ["before", "after"]

            aio_helpers.run(aio())
        finally:
            second.close()
    finally:
        first.close()


def test_aio_owner_level_takeover(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub

    async def body() -> None:
        await aio_helpers.send(hub, ["x"], partition_id="3")
        low = asyncio.create_task(aio_helpers.receive(hub, "3", count=10**6, timeout=30, owner_level=5))
        await asyncio.sleep(2.0)  # the first receiver is attached and has read "x"
        high = await aio_helpers.receive(hub, "3", count=1, owner_level=6)
        assert [e.body_as_str() for e in high] == ["x"]
        with pytest.raises(ConnectionLostError) as lost:
            await asyncio.wait_for(low, 30)
        assert condition_of(lost.value) == "link:stolen"

    aio_helpers.run(body())
