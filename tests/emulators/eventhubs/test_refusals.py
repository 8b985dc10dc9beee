"""A refused link ends at the link: frames the client sent on it before seeing the refusal are ignored.

AMQP 1.0 frees a link's handle only after both detaches (part 2, 2.6.5). The SDK
sends a flow right after its attach, before the emulator's refusing detach can
arrive; escalating that flow to a session or connection error would hide the
refusal behind a dropped connection and an endless reconnect.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient

from emulators.eventhubs import frames
from emulators.eventhubs.codec import Long, Symbol, UInt
from tests.emulators.eventhubs.rawamqp import RawClient, condition, source, target
from tests.fixtures.eventhubs import IsolatedHub

pytestmark = pytest.mark.timeout(120)


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
    with RawClient(isolated_eventhub.running.host, isolated_eventhub.running.port) as raw:
        raw.open(mechanism="PLAIN", response=b"\0RootManageSharedAccessKey\0SAS_KEY_VALUE")
        for handle, (receiver, address, selector, expected, entity) in enumerate(cases, start=1):
            attach = _attach_frame(handle, receiver=receiver, address=address, selector=selector)
            detach = _refused_then_alive(raw, handle, attach, _early_frames(handle, receiver=receiver), valid)
            assert condition(detach) == expected, (address, detach)
            assert entity in str(detach[2].value[1]), (address, detach)
    assert "closing connection" not in isolated_eventhub.running.output()


def test_a_link_the_emulator_detaches_later_tolerates_the_clients_frames(isolated_eventhub: IsolatedHub) -> None:
    """A lower owner level is refused; a higher one takes the partition: the old link's flows are ignored."""
    address = f"{isolated_eventhub.name}/ConsumerGroups/$Default/Partitions/1"
    epoch = "com.microsoft:epoch"
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
    assert "closing connection" not in isolated_eventhub.running.output()


async def _first_error(hub: IsolatedHub, *, group: str = "$Default", timeout: float, **kwargs: Any) -> BaseException:
    """Receive with the SDK's default retry policy until ``on_error`` is called; return that error."""
    errors: asyncio.Queue[BaseException] = asyncio.Queue()

    async def on_error(_context: Any, error: BaseException) -> None:
        await errors.put(error)

    async def on_event(_context: Any, _event: EventData | None) -> None:
        pass

    client = EventHubConsumerClient.from_connection_string(hub.connection_string, consumer_group=group,
                                                           eventhub_name=hub.name)
    task = asyncio.create_task(client.receive(on_event, on_error=on_error, partition_id="0",
                                              **{"starting_position": "-1", **kwargs}))
    try:
        return await asyncio.wait_for(errors.get(), timeout)
    finally:
        await client.close()
        task.cancel()


def test_aio_consumer_refusals_reach_on_error_with_the_default_retry_policy(
        isolated_eventhub: IsolatedHub) -> None:
    """Default retries (3): the SDK re-attaches, then hands the refusal to ``on_error`` naming the entity."""
    hub = isolated_eventhub

    async def run() -> None:
        missing_group = await _first_error(hub, group="no-such-cg", timeout=30)
        assert "consumer group 'no-such-cg'" in str(missing_group), missing_group
        bad_position = await _first_error(hub, starting_position="bogus", timeout=30)
        assert "bogus" in str(bad_position), bad_position

    asyncio.run(run())
    log = hub.running.output()
    assert "closing connection" not in log and "ending session" not in log, log[-2000:]
