"""A refused link ends at the link: frames the client sent on it before seeing the refusal are ignored.

AMQP 1.0 frees a link's handle only after both detaches (part 2, 2.6.5). The SDK
sends a flow right after its attach, before the emulator's refusing detach can
arrive; escalating that flow to a session or connection error would hide the
refusal behind a dropped connection and an endless reconnect.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from azure.eventhub import EventData
from azure.eventhub import EventHubConsumerClient as SyncConsumerClient
from azure.eventhub.aio import EventHubConsumerClient

from emulators.eventhubs import frames
from emulators.eventhubs.codec import Long, Symbol, UInt
from tests.emulators.eventhubs.helpers import producer
from tests.emulators.eventhubs.rawamqp import RawClient, condition, source, target
from tests.fixtures.eventhubs import IsolatedHub

pytestmark = pytest.mark.timeout(120)


def _new_log_lines(hub: IsolatedHub, before: str) -> str:
    """What the emulator logged since ``before`` (it serves other tests' hubs too, one test at a time)."""
    seen = set(before.splitlines())
    return "\n".join(line for line in hub.running.output().splitlines() if line not in seen)


def _escalations(log: str) -> list[str]:
    return [line for line in log.splitlines() if "closing connection" in line or "ending session" in line]


def _attach_frame(handle: int, *, receiver: bool, address: str, selector: str | None = None,
                  properties: dict[Any, Any] | None = None) -> bytes:
    if receiver:
        return frames.frame(0, frames.ATTACH, [f"l-{handle}", UInt(handle), frames.ROLE_RECEIVER, None, None,
                                               source(address, selector), target("client"), None, None, None,
                                               None, None, None, properties])
    return frames.frame(0, frames.ATTACH, [f"l-{handle}", UInt(handle), frames.ROLE_SENDER, None, None,
                                           source("client"), target(address), None, None, UInt(0)])


def _early_frames(handle: int, *, receiver: bool) -> bytes:
    """What a client may send on a link before it reads the server's attach: a flow, and for a sender a transfer."""
    flow = frames.frame(0, frames.FLOW, [UInt(0), UInt(100000), UInt(0), UInt(100000), UInt(handle), UInt(0),
                                         UInt(100), None, False, False])
    if receiver:
        return flow + frames.frame(0, frames.DISPOSITION, [True, UInt(0), UInt(0), True, None, False])
    return frames.frame(0, frames.TRANSFER, [UInt(handle), UInt(0), b"\0\0\0\0", UInt(0), False, False],
                        b"\x00\x53\x75\xa0\x01x")


def _refused_then_alive(raw: RawClient, handle: int, attach: bytes, early: bytes, valid: str) -> list[Any]:
    """Send ``attach`` and the early frames in one write; return the refusal's condition, then prove the
    connection and session still serve a valid link on the same handle once the detaches are exchanged."""
    raw.send_raw(attach + early)
    _code, _attach, _ = raw.expect(frames.ATTACH)
    code, detach, _ = raw.expect(frames.DETACH, frames.END, frames.CLOSE)
    assert code == frames.DETACH, f"the refusal escalated to {frames.NAMES.get(code, code)}: {detach}"
    raw.send_raw(early)  # still in flight from the client's point of view: ignored as well
    raw.send_raw(frames.frame(0, frames.DETACH, [UInt(handle), True, None]))
    _, refused = raw.attach_receiver(handle, valid)
    assert refused is None, f"the session no longer serves links after a refusal: {condition(refused)}"
    raw.send_raw(frames.frame(0, frames.DETACH, [UInt(handle), True, None]))
    raw.expect(frames.DETACH)
    return detach


def test_every_refusal_tolerates_frames_sent_before_it(isolated_eventhub: IsolatedHub) -> None:
    name = isolated_eventhub.name
    valid = f"{name}/ConsumerGroups/$Default/Partitions/0"
    cases = [  # (receiver?, address, selector, expected condition, entity named in the description)
        (True, "no-such-hub/ConsumerGroups/$Default/Partitions/0", None, "amqp:not-found", "no-such-hub"),
        (True, f"{name}/ConsumerGroups/no-such-cg/Partitions/0", None, "amqp:not-found", "no-such-cg"),
        (True, f"{name}/ConsumerGroups/$Default/Partitions/9", None, "amqp:not-found", "'9'"),
        (True, valid, "amqp.annotation.x-opt-offset > 'bogus'", "com.microsoft:argument-error", "bogus"),
        (False, "no-such-hub", None, "amqp:not-found", "no-such-hub"),
        (False, f"{name}/Partitions/9", None, "amqp:not-found", "'9'"),
    ]
    before = isolated_eventhub.running.output()
    with RawClient(isolated_eventhub.running.host, isolated_eventhub.running.port) as raw:
        raw.open(mechanism="PLAIN", response=b"\0RootManageSharedAccessKey\0SAS_KEY_VALUE")
        for handle, (receiver, address, selector, expected, entity) in enumerate(cases, start=1):
            attach = _attach_frame(handle, receiver=receiver, address=address, selector=selector)
            detach = _refused_then_alive(raw, handle, attach, _early_frames(handle, receiver=receiver), valid)
            assert condition(detach) == expected, (address, detach)
            assert entity in str(detach[2].value[1]), (address, detach)
    assert _escalations(_new_log_lines(isolated_eventhub, before)) == []


def test_a_link_the_emulator_detaches_later_tolerates_the_clients_frames(isolated_eventhub: IsolatedHub) -> None:
    """A lower owner level is refused; a higher one takes the partition: the old link's flows are ignored."""
    address = f"{isolated_eventhub.name}/ConsumerGroups/$Default/Partitions/1"
    epoch = "com.microsoft:epoch"
    before = isolated_eventhub.running.output()
    with RawClient(isolated_eventhub.running.host, isolated_eventhub.running.port) as raw:
        raw.open(mechanism="PLAIN", response=b"\0RootManageSharedAccessKey\0SAS_KEY_VALUE")
        _, refused = raw.attach_receiver(1, address, properties={Symbol(epoch): Long(5)})
        assert refused is None
        _, refused = raw.attach_receiver(2, address, properties={Symbol(epoch): Long(3)})
        assert refused is not None and "3" in str(refused)
        raw.flow(2, delivery_count=0, credit=10)  # sent before it saw the refusal
        raw.send_raw(frames.frame(0, frames.DETACH, [UInt(2), True, None]))
        _, refused = raw.attach_receiver(3, address, properties={Symbol(epoch): Long(9)})
        assert refused is None
        # the owner-5 link was detached with the take-over error (read past by the attach above)
        raw.flow(1, delivery_count=0, credit=10)  # in flight when the take-over detach was sent
        raw.send_raw(frames.frame(0, frames.DETACH, [UInt(1), True, None]))
        _, refused = raw.attach_receiver(1, f"{isolated_eventhub.name}/ConsumerGroups/$Default/Partitions/2")
        assert refused is None, "the connection no longer serves links after a take-over"
    assert _escalations(_new_log_lines(isolated_eventhub, before)) == []


async def _first_error(hub: IsolatedHub, *, group: str = "$Default", timeout: float, **kwargs: Any) -> BaseException:
    """Receive with the SDK's default retry policy until ``on_error`` is called; return that error."""
    errors: asyncio.Queue[BaseException] = asyncio.Queue()

    async def on_error(_context: Any, error: BaseException) -> None:
        await errors.put(error)

    async def on_event(_context: Any, _event: EventData | None) -> None:
        pass

    client = EventHubConsumerClient.from_connection_string(hub.connection_string, consumer_group=group,
                                                           eventhub_name=hub.name)
    task = asyncio.create_task(client.receive(on_event, on_error=on_error,
                                              **{"partition_id": "0", "starting_position": "-1", **kwargs}))
    try:
        return await asyncio.wait_for(errors.get(), timeout)
    finally:
        await client.close()
        task.cancel()


def test_aio_consumer_refusals_reach_on_error_with_the_default_retry_policy(
        isolated_eventhub: IsolatedHub) -> None:
    """Default retries (3): the SDK re-attaches, then hands the refusal to ``on_error`` naming the entity."""
    hub = isolated_eventhub
    before = hub.running.output()

    async def run() -> None:
        missing_group = await _first_error(hub, group="no-such-cg", timeout=30)
        assert "consumer group 'no-such-cg'" in str(missing_group), missing_group
        bad_position = await _first_error(hub, starting_position="bogus", timeout=30)
        assert "bogus" in str(bad_position), bad_position
        beyond_end = await _first_error(hub, starting_position=10**6, timeout=30)
        assert "1000000" in str(beyond_end) and getattr(beyond_end, "error", None) == "argument-out-of-range"

    asyncio.run(run())
    log = _new_log_lines(hub, before)
    assert "refusing link" in log and "refusing consumer" in log, log[-2000:]
    assert _escalations(log) == []


def test_sync_consumer_gets_a_lower_owner_level_refusal_with_the_default_retry_policy(
        isolated_eventhub: IsolatedHub) -> None:
    """``amqp:link:stolen`` is raised by the sync consumer at once (it never retries it)."""
    hub = isolated_eventhub
    owner = sync_client(hub)
    lower = sync_client(hub)
    errors: list[BaseException] = []
    received: list[EventData] = []
    with producer(hub) as client:
        client.send_batch([EventData("first")], partition_id="3")
    threads = [
        threading.Thread(target=owner.receive, kwargs={"on_event": lambda _c, e: received.append(e),
                                                       "partition_id": "3",
                                                       "owner_level": 5, "starting_position": "-1"}, daemon=True),
        threading.Thread(target=lower.receive, kwargs={"on_event": lambda *_: None, "partition_id": "3",
                                                       "owner_level": 1, "starting_position": "-1",
                                                       "on_error": lambda _c, e: errors.append(e)}, daemon=True),
    ]
    before = hub.running.output()
    try:
        threads[0].start()
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:  # the owner's link is attached
            time.sleep(0.05)
        threads[1].start()
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert errors, "the lower owner level never reached on_error"
        assert "partition 3" in str(errors[0]) and hub.name in str(errors[0]), errors[0]
    finally:
        for client in (owner, lower):
            threading.Thread(target=client.close, daemon=True).start()
    assert _escalations(_new_log_lines(hub, before)) == []


def sync_client(hub: IsolatedHub) -> SyncConsumerClient:
    return SyncConsumerClient.from_connection_string(hub.connection_string, consumer_group="$Default",
                                                     eventhub_name=hub.name)


@pytest.mark.timeout(240)
def test_unknown_hub_and_partition_reach_both_clients_with_the_default_retry_policy(
        isolated_eventhub: IsolatedHub) -> None:
    """Sending raises and receiving reaches ``on_error``, each naming the entity, in sync and aio."""
    from azure.eventhub import EventHubProducerClient as SyncProducerClient
    from azure.eventhub.aio import EventHubProducerClient

    hub = isolated_eventhub
    missing = IsolatedHub(hub.running, "no-such-hub")
    before = hub.running.output()
    cases = [(missing, "0", "no-such-hub"), (hub, "9", "9")]
    for where, partition, entity in cases:
        with SyncProducerClient.from_connection_string(where.connection_string, eventhub_name=where.name) as p, \
                pytest.raises(Exception, match=entity):
            p.send_batch([EventData("x")], partition_id=partition)
        errors: list[BaseException] = []
        client = SyncConsumerClient.from_connection_string(where.connection_string, consumer_group="$Default",
                                                           eventhub_name=where.name)
        threading.Thread(target=client.receive, daemon=True, kwargs={
            "on_event": lambda *_: None, "partition_id": partition, "starting_position": "-1",
            "on_error": lambda _c, e, errors=errors: errors.append(e)}).start()
        deadline = time.monotonic() + 60
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        threading.Thread(target=client.close, daemon=True).start()
        assert errors and entity in str(errors[0]), (entity, errors)

    async def aio() -> None:
        for where, partition, entity in cases:
            async with EventHubProducerClient.from_connection_string(where.connection_string,
                                                                     eventhub_name=where.name) as p:
                with pytest.raises(Exception, match=entity):
                    await p.send_batch([EventData("x")], partition_id=partition)
            client = EventHubConsumerClient.from_connection_string(where.connection_string,
                                                                   consumer_group="$Default",
                                                                   eventhub_name=where.name)
            errors: asyncio.Queue[BaseException] = asyncio.Queue()

            async def on_error(_c: Any, e: BaseException, errors: asyncio.Queue[BaseException] = errors) -> None:
                await errors.put(e)

            async def on_event(_c: Any, _e: Any) -> None:
                pass

            task = asyncio.create_task(client.receive(on_event, on_error=on_error, partition_id=partition,
                                                      starting_position="-1"))
            try:
                error = await asyncio.wait_for(errors.get(), 60)
            finally:
                await client.close()
                task.cancel()
            assert entity in str(error), (entity, error)

    asyncio.run(aio())
    assert _escalations(_new_log_lines(hub, before)) == []


def test_aio_sixth_receiver_reaches_on_error_with_the_default_retry_policy(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub
    with producer(hub) as client:
        client.send_batch([EventData("first")], partition_id="2")
    before = hub.running.output()

    async def run() -> None:
        readers = [EventHubConsumerClient.from_connection_string(hub.connection_string, consumer_group="$Default",
                                                                 eventhub_name=hub.name) for _ in range(5)]
        attached: asyncio.Queue[int] = asyncio.Queue()
        tasks = []
        for index, reader in enumerate(readers):
            async def on_event(_c: Any, _e: Any, index: int = index) -> None:
                await attached.put(index)

            tasks.append(asyncio.create_task(reader.receive(on_event, partition_id="2", starting_position="-1")))
        try:
            for _ in readers:  # each has its link, since each received the event
                await asyncio.wait_for(attached.get(), 30)
            error = await _first_error(hub, timeout=30, partition_id="2")
            assert "maximum number of allowed receivers" in str(error), error
            assert f"partition 2 of {hub.name}" in str(error), error
        finally:
            for reader in readers:
                await reader.close()
            for task in tasks:
                task.cancel()

    asyncio.run(run())
    assert _escalations(_new_log_lines(hub, before)) == []
