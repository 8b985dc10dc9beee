"""Producer, consumer and properties through the real azure-eventhub SDK (``azure.eventhub.aio``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from azure.eventhub import EventData
from azure.eventhub.amqp import AmqpAnnotatedMessage

from emulators.eventhubs.broker import partition_for_key
from tests.emulators.eventhubs.aio_helpers import bodies, producer, receive, run, send
from tests.fixtures.eventhubs import IsolatedHub

pytestmark = pytest.mark.timeout(120)


def test_partition_key_batches_and_single_events_keep_order(isolated_eventhub: IsolatedHub) -> None:
    async def body() -> None:
        async with producer(isolated_eventhub) as client:
            for i in range(3):
                batch = await client.create_batch(partition_key="sensor-7")
                for j in range(20):
                    batch.add(EventData(f"{i}-{j}"))
                await client.send_batch(batch)
            await client.send_event(EventData("one"), partition_key="sensor-7")
            await client.send_batch([EventData("list-a"), EventData("list-b")], partition_key="sensor-7")
        expected = str(partition_for_key("sensor-7", 4))
        events = await receive(isolated_eventhub, expected, count=63)
        assert bodies(events) == [f"{i}-{j}" for i in range(3) for j in range(20)] + ["one", "list-a", "list-b"]
        assert [e.sequence_number for e in events] == list(range(63))
        assert {e.partition_key for e in events} == {b"sensor-7"}
        assert all(e.raw_amqp_message.annotations[b"x-opt-partition-key"] == b"sensor-7" for e in events)
        async with producer(isolated_eventhub) as client:
            empty = [(await client.get_partition_properties(p))["is_empty"] for p in await client.get_partition_ids()]
        assert empty.count(False) == 1 and not empty[int(expected)]

    run(body())


def test_round_robin_and_explicit_partition(isolated_eventhub: IsolatedHub) -> None:
    async def body() -> None:
        async with producer(isolated_eventhub) as client:
            for i in range(12):
                await client.send_event(EventData(f"rr-{i}"))
            await client.send_event(EventData("direct"), partition_id="2")
            counts = [(await client.get_partition_properties(p))["last_enqueued_sequence_number"] + 1
                      for p in ("0", "1", "2", "3")]
        assert counts == [3, 3, 4, 3]
        events = await receive(isolated_eventhub, "2", count=4)
        assert bodies(events)[-1] == "direct" and events[-1].partition_key is None
        assert b"x-opt-partition-key" not in events[-1].raw_amqp_message.annotations

    run(body())


def test_every_starting_position(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub

    async def body() -> None:
        await send(hub, [f"e{i}" for i in range(10)], partition_id="1")
        everything = await receive(hub, "1", count=10)
        assert bodies(everything) == [f"e{i}" for i in range(10)]
        fifth = everything[5]
        before = everything[0].enqueued_time - dt.timedelta(milliseconds=1)
        after = everything[-1].enqueued_time
        cases = {
            "offset exclusive": (dict(starting_position=fifth.offset), 4, "e6"),
            "offset inclusive": (dict(starting_position=fifth.offset, inclusive=True), 5, "e5"),
            "sequence exclusive": (dict(starting_position=7), 2, "e8"),
            "sequence inclusive": (dict(starting_position=7, inclusive=True), 3, "e7"),
            "time before the first": (dict(starting_position=before), 10, "e0"),
            "time inclusive of the last": (dict(starting_position=after, inclusive=True), 10, "e0"),
            "-1 (start of stream)": (dict(starting_position="-1"), 10, "e0"),
            "per-partition dict": (dict(starting_position={"1": 2}), 7, "e3"),
        }
        # at most 5 receivers per partition and consumer group (as in Azure): the cases share the hub's three groups
        groups = ("$Default", "sluice", "other")
        results = await asyncio.gather(*(receive(hub, "1", count=n, settle=0.3, group=groups[i % 3], **kw)
                                         for i, (kw, n, _) in enumerate(cases.values())))
        for (name, (_, n, first)), got in zip(cases.items(), results, strict=True):
            assert len(got) == n and bodies(got)[0] == first and bodies(got)[-1] == "e9", name

    run(body())


def test_latest_and_time_after_the_last_see_only_new_events(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub

    async def body() -> None:
        async with producer(hub) as client:
            await client.send_batch([EventData("old-0"), EventData("old-1")], partition_id="3")
            after = (await receive(hub, "3", count=2))[-1].enqueued_time
            latest = asyncio.create_task(receive(hub, "3", count=1, starting_position="@latest"))
            later = asyncio.create_task(receive(hub, "3", count=1, starting_position=after))
            i = 0
            # keep sending until both receivers (attached at some point) saw one: neither may get an old event
            while not (latest.done() and later.done()):
                await client.send_batch([EventData(f"new-{i}")], partition_id="3")
                i += 1
                await asyncio.wait({latest, later}, timeout=0.3)
        for task in (latest, later):
            assert bodies(task.result())[0].startswith("new-")

    run(body())


def test_credit_is_honoured(isolated_eventhub: IsolatedHub) -> None:
    """A tiny prefetch means many credit top-ups: nothing may be lost, duplicated or reordered."""

    async def body() -> None:
        texts = [f"c{i}" for i in range(200)]
        await send(isolated_eventhub, texts, partition_id="0")
        small, single = await asyncio.gather(
            receive(isolated_eventhub, "0", count=200, prefetch=7, settle=0.3),
            receive(isolated_eventhub, "0", count=30, prefetch=1, settle=0.3),
        )
        assert bodies(small) == texts
        assert bodies(single) == texts[: len(single)] and len(single) >= 30

    run(body())


def test_message_properties_and_application_properties_round_trip(isolated_eventhub: IsolatedHub) -> None:
    when = int(dt.datetime(2026, 11, 23, 12, 30, 15, 123000, tzinfo=dt.UTC).timestamp() * 1000)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    message = AmqpAnnotatedMessage(
        data_body=[b"part-1|", b"part-2"],
        properties={"message_id": "m-1", "user_id": b"alice", "to": "dest", "subject": "subj",
                    "reply_to": "reply", "correlation_id": ident, "content_type": "application/json",
                    "content_encoding": "gzip", "absolute_expiry_time": when, "creation_time": when,
                    "group_id": "group", "group_sequence": 42, "reply_to_group_id": "rgroup"},
        application_properties={"s": "héllo ✓", "i": -7, "f": 1.25, "b": False,
                                "raw": b"\x00\xff", "u": ident, "none": None},
        annotations={"x-opt-custom": "kept", "x-opt-sequence-number": 999},
        header={"priority": 7, "durable": True},
    )

    async def body() -> None:
        async with producer(isolated_eventhub) as client:
            await client.send_event(message, partition_id="2")
            await client.send_event(EventData("x" * 300_000), partition_id="2")
        first, big = await receive(isolated_eventhub, "2", count=2)
        raw = first.raw_amqp_message
        assert raw.body_type.value == "data" and b"".join(raw.body) == b"part-1|part-2"
        p = raw.properties
        assert (p.message_id, p.user_id, p.to, p.subject, p.reply_to) == (b"m-1", b"alice", b"dest", b"subj",
                                                                          b"reply")
        assert p.correlation_id == ident
        assert (p.content_type, p.content_encoding, p.group_id, p.group_sequence, p.reply_to_group_id) == (
            b"application/json", b"gzip", b"group", 42, b"rgroup")
        assert p.absolute_expiry_time == p.creation_time == when
        assert first.properties == {b"s": "héllo ✓".encode(), b"i": -7, b"f": 1.25, b"b": False,
                                    b"raw": b"\x00\xff", b"u": ident, b"none": None}
        annotations = raw.annotations
        assert annotations[b"x-opt-custom"] == b"kept"
        assert annotations[b"x-opt-sequence-number"] == 0 == first.sequence_number  # the service's, not the client's
        assert annotations[b"x-opt-offset"] == b"0" and first.offset == "0"
        assert isinstance(first.enqueued_time, dt.datetime)
        assert abs((first.enqueued_time - dt.datetime.now(dt.UTC)).total_seconds()) < 30
        assert raw.header.priority == 7 and raw.header.durable is True
        assert big.body_as_str() == "x" * 300_000 and big.sequence_number == 1
        assert int(big.offset) > 0

    run(body())


def test_properties_queries(isolated_eventhub: IsolatedHub) -> None:
    async def body() -> None:
        async with producer(isolated_eventhub) as client:
            hub_props = await client.get_eventhub_properties()
            assert hub_props["eventhub_name"] == isolated_eventhub.name
            assert hub_props["partition_ids"] == ["0", "1", "2", "3"]
            assert isinstance(hub_props["created_at"], dt.datetime)
            empty = await client.get_partition_properties("3")
            assert empty["is_empty"] is True and empty["last_enqueued_sequence_number"] == -1
            assert empty["beginning_sequence_number"] == -1  # Azure: an empty partition's beginning is its last
            # a partition that never had an event has Azure's "not set" time (0001-01-01), not 1970
            assert empty["last_enqueued_time_utc"] == dt.datetime.min.replace(tzinfo=dt.UTC)
            await client.send_batch([EventData("a"), EventData("bb"), EventData("ccc")], partition_id="3")
            props = await client.get_partition_properties("3")
        events = await receive(isolated_eventhub, "3", count=3, track_last_enqueued_event_properties=True)
        assert props["eventhub_name"] == isolated_eventhub.name and props["id"] == "3"
        assert props["is_empty"] is False
        assert props["beginning_sequence_number"] == 0
        assert props["last_enqueued_sequence_number"] == 2
        assert props["last_enqueued_offset"] == events[-1].offset
        assert props["last_enqueued_time_utc"] == events[-1].enqueued_time
        # with track_last_enqueued_event_properties every delivery carries them as delivery annotations
        info = events[0].raw_amqp_message.delivery_annotations
        assert info[b"last_enqueued_sequence_number"] == 2
        assert info[b"last_enqueued_offset"] == events[-1].offset.encode()

    run(body())


def test_many_producers_and_consumers_at_once(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub
    producers, per_producer = 8, 50

    async def produce(n: int) -> None:
        async with producer(hub) as client:
            for chunk in range(0, per_producer, 10):
                batch = await client.create_batch(partition_key=f"key-{n}")
                for i in range(chunk, chunk + 10):
                    batch.add(EventData(f"{n}:{i}"))
                await client.send_batch(batch)

    async def body() -> None:
        counts = {str(p): 0 for p in range(4)}
        for n in range(producers):
            counts[str(partition_for_key(f"key-{n}", 4))] += per_producer
        readers = [asyncio.create_task(receive(hub, p, count=counts[p], timeout=40, settle=0.3))
                   for p in counts if counts[p]]
        await asyncio.gather(*(produce(n) for n in range(producers)))
        results = await asyncio.gather(*readers)
        seen: dict[int, list[int]] = {}
        for events in results:
            for text in bodies(events):
                n, i = text.split(":")
                seen.setdefault(int(n), []).append(int(i))
        assert seen == {n: list(range(per_producer)) for n in range(producers)}

    run(body())
