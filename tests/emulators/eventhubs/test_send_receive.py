"""Producer and consumer through the real azure-eventhub SDK (sync)."""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.eventhub import EventData
from azure.eventhub.amqp import AmqpAnnotatedMessage

from emulators.eventhubs.broker import partition_for_key
from tests.emulators.eventhubs.helpers import bodies, producer, receive
from tests.fixtures.eventhubs import IsolatedHub

pytestmark = pytest.mark.timeout(120)


def send(hub: IsolatedHub, texts: list[str], **batch_kwargs: object) -> None:
    with producer(hub) as client:
        batch = client.create_batch(**batch_kwargs)
        for text in texts:
            batch.add(EventData(text))
        client.send_batch(batch)


def test_batches_properties_and_large_events(isolated_eventhub: IsolatedHub) -> None:
    texts = [f"event-{i}" for i in range(120)]
    event = EventData(b"\x00\x01binary\xff")
    event.properties = {"text": "héllo", "number": 7, "flag": True, "raw": b"\x01\x02", "pi": 3.5}
    event.content_type = "application/octet-stream"
    event.correlation_id = "corr-1"
    event.message_id = "msg-1"
    big = "x" * 600_000  # more than one frame
    with producer(isolated_eventhub) as client:
        batch = client.create_batch(partition_id="2")
        for text in texts:
            batch.add(EventData(text))
        client.send_batch(batch)
        client.send_event(event, partition_id="1")
        client.send_event(EventData(big), partition_id="0")
        client.send_event(EventData("small"), partition_id="0")
    with ThreadPoolExecutor(3) as pool:
        in_order = pool.submit(receive, isolated_eventhub, "2", count=120, prefetch=7)  # many credit top-ups
        with_properties = pool.submit(receive, isolated_eventhub, "1", count=1)
        large = pool.submit(receive, isolated_eventhub, "0", count=2)
        events, [got], sizes = in_order.result(), with_properties.result(), large.result()

    assert bodies(events) == texts
    assert [e.sequence_number for e in events] == list(range(120))
    offsets = [int(e.offset) for e in events]
    assert offsets == sorted(offsets) and len(set(offsets)) == 120 and offsets[0] == 0
    assert all(e.enqueued_time is not None and e.enqueued_time.tzinfo is not None for e in events)

    assert b"".join(got.body) == b"\x00\x01binary\xff"
    assert got.properties == {b"text": "héllo".encode(), b"number": 7, b"flag": True,
                              b"raw": b"\x01\x02", b"pi": 3.5}
    assert got.content_type == "application/octet-stream"
    assert got.correlation_id == "corr-1"
    assert got.message_id == "msg-1"
    assert got.raw_amqp_message.annotations[b"x-opt-sequence-number"] == 0

    assert bodies(sizes) == [big, "small"]


def test_same_partition_key_lands_on_one_partition_in_order(isolated_eventhub: IsolatedHub) -> None:
    with producer(isolated_eventhub) as client:
        for i in range(3):
            batch = client.create_batch(partition_key="device-42")
            for j in range(10):
                batch.add(EventData(f"{i}-{j}"))
            client.send_batch(batch)
        client.send_event(EventData("single"), partition_key="device-42")
    expected = str(partition_for_key("device-42", 4))
    events = receive(isolated_eventhub, expected, count=31)
    assert bodies(events) == [f"{i}-{j}" for i in range(3) for j in range(10)] + ["single"]
    assert {e.partition_key for e in events} == {b"device-42"}
    with producer(isolated_eventhub) as client:
        props = [client.get_partition_properties(p) for p in client.get_partition_ids()]
    assert sum(not p["is_empty"] for p in props) == 1


def test_without_key_partitions_take_turns(isolated_eventhub: IsolatedHub) -> None:
    with producer(isolated_eventhub) as client:
        for i in range(8):
            client.send_batch([EventData(f"rr-{i}")])
        counts = [client.get_partition_properties(p)["last_enqueued_sequence_number"] + 1
                  for p in client.get_partition_ids()]
    assert counts == [2, 2, 2, 2]


def test_starting_positions(isolated_eventhub: IsolatedHub) -> None:
    send(isolated_eventhub, [f"e{i}" for i in range(10)], partition_id="0")
    everything = receive(isolated_eventhub, "0", count=10)
    fifth = everything[5]
    before = everything[0].enqueued_time - dt.timedelta(milliseconds=1)
    after = everything[-1].enqueued_time
    cases = [
        (dict(starting_position=fifth.offset), ["e6", "e7", "e8", "e9"]),
        (dict(starting_position=fifth.offset, inclusive=True), ["e5", "e6", "e7", "e8", "e9"]),
        (dict(starting_position=7), ["e8", "e9"]),
        (dict(starting_position=7, inclusive=True), ["e7", "e8", "e9"]),
        (dict(starting_position=before), [f"e{i}" for i in range(10)]),
        (dict(starting_position=after, inclusive=True), [f"e{i}" for i in range(10)]),
        (dict(starting_position=after, timeout=2.0), []),
    ]
    # each receiver is its own SDK client (about a second to connect): run them side by side, in the hub's three
    # consumer groups, as Azure allows at most 5 receivers per partition and consumer group
    groups = ("$Default", "sluice", "other")
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = [pool.submit(receive, isolated_eventhub, "0", count=max(len(want), 1), settle=0.3,
                               group=groups[i % 3], **kwargs)
                   for i, (kwargs, want) in enumerate(cases)]
        for (kwargs, want), future in zip(cases, futures, strict=True):
            assert bodies(future.result()) == want, kwargs


def test_an_offset_past_the_last_events_is_refused_and_the_last_one_waits(isolated_eventhub: IsolatedHub) -> None:
    """Azure refuses an offset past the last event's ("The supplied offset '13953' is invalid. The last offset in
    the system is '13952'", Azure/azure-sdk-for-net#9213: a processor resuming inclusively at its checkpoint's
    offset + 1), not only one past where the next event will go. At the last offset, exclusively, a receiver
    waits for new events."""
    send(isolated_eventhub, [f"e{i}" for i in range(3)], partition_id="0")
    last = receive(isolated_eventhub, "0", count=3)[-1]
    for position, inclusive in ((int(last.offset) + 1, True), (int(last.offset) + 1, False)):
        with pytest.raises(Exception, match=f"offset '{position}' is invalid. The last offset in the system is "
                                            f"'{last.offset}'"):
            receive(isolated_eventhub, "0", count=1, starting_position=str(position), inclusive=inclusive, timeout=6)
    assert bodies(receive(isolated_eventhub, "0", count=1, starting_position=last.offset, inclusive=True)) == ["e2"]
    assert receive(isolated_eventhub, "0", count=1, starting_position=last.offset, timeout=2.0) == []


def test_latest_sees_only_new_events(isolated_eventhub: IsolatedHub) -> None:
    send(isolated_eventhub, ["old"], partition_id="3")
    with ThreadPoolExecutor(1) as pool, producer(isolated_eventhub) as client:
        future = pool.submit(receive, isolated_eventhub, "3", count=1, starting_position="@latest", timeout=20)
        # keep sending until the receiver (attached at some point) sees one: "@latest" gives no earlier events
        i = 0
        while not future.done():
            client.send_batch([EventData(f"new-{i}")], partition_id="3")
            i += 1
            time.sleep(0.3)
        result = future.result()
    assert result and bodies(result)[0].startswith("new-")


def test_the_publishers_delivery_annotations_reach_the_consumer(isolated_eventhub: IsolatedHub) -> None:
    """Event Hubs hands a publisher's delivery annotations to consumers, whatever other sections the event has.

    The SDK's live test against Azure (``test_send.py::test_send_amqp_annotated_message``) sends this
    message and reads ``delann_key`` back from every copy. A consumer that asks for the last-enqueued
    figures gets them in the same section (a message has one), next to the publisher's.
    """
    with_header = AmqpAnnotatedMessage(data_body=[b"aa", b"bb", b"cc"], header={"priority": 10},
                                       delivery_annotations={"delann_key": "delann_value"},
                                       application_properties={"body_type": "data"})
    with_annotations = AmqpAnnotatedMessage(data_body=[b"dd"], annotations={"ann_key": "ann_value"},
                                            delivery_annotations={"delann_key": "delann_value", "n": 7})
    with producer(isolated_eventhub) as client:
        client.send_batch([with_header, with_annotations], partition_id="0")   # in a batch envelope
        client.send_event(with_header, partition_id="0")                      # a single event
    events = receive(isolated_eventhub, "0", count=3, timeout=15)
    assert [e.body_as_str() for e in events] == ["aabbcc", "dd", "aabbcc"]
    assert [e.raw_amqp_message.delivery_annotations for e in events] == [
        {b"delann_key": b"delann_value"}, {b"delann_key": b"delann_value", b"n": 7}, {b"delann_key": b"delann_value"}]
    assert events[1].raw_amqp_message.annotations[b"ann_key"] == b"ann_value"

    tracked = receive(isolated_eventhub, "0", count=3, timeout=15, track_last_enqueued_event_properties=True)
    for event in tracked:
        annotations = event.raw_amqp_message.delivery_annotations
        assert annotations[b"delann_key"] == b"delann_value", "the publisher's, kept beside the figures"
        assert annotations[b"last_enqueued_sequence_number"] == 2
        assert annotations[b"last_enqueued_offset"] == tracked[-1].offset.encode()
    assert tracked[1].raw_amqp_message.delivery_annotations[b"n"] == 7


def test_a_partition_key_that_is_not_a_string_is_ignored(isolated_eventhub: IsolatedHub) -> None:
    """Event Hubs routes by a string partition key only: any other type is ignored and the events go
    round-robin (azure-eventhub warns so in ``EventDataBatch``, and sends the int as it is). Hashing
    ``str(42)`` would pin every event to one partition: per-key ordering the service never gives."""
    with producer(isolated_eventhub) as client:
        for i in range(8):
            batch = client.create_batch(partition_key=42)  # type: ignore[arg-type]  # what a caller may pass
            batch.add(EventData(f"int-key-{i}"))
            client.send_batch(batch)
        used = [pid for pid in client.get_partition_ids() if not client.get_partition_properties(pid)["is_empty"]]
    assert len(used) > 1, f"every event with the ignored non-string key went to partition(s) {used}"
