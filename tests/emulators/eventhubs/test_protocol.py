"""Protocol paths the SDK never takes, driven with raw AMQP frames: credit, SASL PLAIN, refusals, bad input."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from azure.eventhub import EventData

from emulators.eventhubs import frames
from emulators.eventhubs.codec import Symbol
from emulators.eventhubs.management import KEY_NAME, KEY_VALUE
from tests.emulators.eventhubs.helpers import producer
from tests.emulators.eventhubs.rawamqp import RawClient, condition
from tests.fixtures.eventhubs import IsolatedHub

pytestmark = pytest.mark.timeout(60)

PLAIN = f"\0{KEY_NAME}\0{KEY_VALUE}".encode()


def data_message(text: str) -> bytes:
    body = text.encode()
    return b"\x00\x53\x75\xa0" + bytes((len(body),)) + body


def connect(hub: IsolatedHub) -> RawClient:
    return RawClient(hub.running.host, hub.running.port)


def test_link_credit_is_never_exceeded_and_drain_is_answered(isolated_eventhub: IsolatedHub) -> None:
    hub = isolated_eventhub
    with producer(hub) as client:
        client.send_batch([EventData(f"m{i}") for i in range(10)], partition_id="0")
    with connect(hub) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        attach, refused = raw.attach_receiver(1, f"{hub.name}/ConsumerGroups/$Default/Partitions/0")
        assert refused is None and attach[9] == 0  # initial-delivery-count
        raw.flow(1, delivery_count=0, credit=3)
        got = [raw.expect(frames.TRANSFER) for _ in range(3)]
        assert [int(fields[1]) for _, fields, _ in got] == [0, 1, 2]
        raw.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # 7 more are waiting, but no credit is left
            raw.expect(frames.TRANSFER)
        raw.sock.settimeout(5)
        raw.flow(1, delivery_count=3, credit=20, drain=True)
        more = [raw.expect(frames.TRANSFER) for _ in range(7)]
        assert b"m9" in more[-1][2]
        _, flow, _ = raw.expect(frames.FLOW)  # the drain answer: credit used up, delivery-count advanced
        assert flow[8] is True and int(flow[6]) == 0 and int(flow[5]) == 23


def test_sasl_plain_with_the_emulator_key_needs_no_token_and_a_wrong_password_is_refused(
        isolated_eventhub: IsolatedHub) -> None:
    with connect(isolated_eventhub) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        _attach, refused = raw.attach_sender(1, isolated_eventhub.name)
        assert refused is None
        _, flow, _ = raw.expect(frames.FLOW)
        assert int(flow[6]) > 0
        raw.transfer(1, 0, data_message("plain"))
        _, disposition, _ = raw.expect(frames.DISPOSITION)
        assert disposition[4].descriptor == frames.ACCEPTED
    with connect(isolated_eventhub) as raw:
        assert raw.sasl("PLAIN", f"\0{KEY_NAME}\0wrong".encode()) == 1
    with connect(isolated_eventhub) as raw:
        assert raw.sasl("EXTERNAL") == 1


def test_anonymous_connection_without_a_token_is_unauthorized(isolated_eventhub: IsolatedHub) -> None:
    with connect(isolated_eventhub) as raw:
        raw.open()
        _attach, detach = raw.attach_sender(1, isolated_eventhub.name)
        assert condition(detach) == "amqp:unauthorized-access"


def test_unknown_partition_and_bad_addresses_are_refused(isolated_eventhub: IsolatedHub) -> None:
    name = isolated_eventhub.name
    with connect(isolated_eventhub) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        cases = {
            f"{name}/ConsumerGroups/$Default/Partitions/4": "amqp:not-found",
            f"{name}/ConsumerGroups/nope/Partitions/0": "amqp:not-found",
            f"{name}/Partitions/0": "amqp:not-found",
            "other-hub/ConsumerGroups/$Default/Partitions/0": "amqp:not-found",
        }
        for handle, (address, expected) in enumerate(cases.items(), start=1):
            _attach, detach = raw.attach_receiver(handle, address)
            assert condition(detach) == expected, address
            assert address.split("/")[-1] in str(detach[2].value[1]) or "nope" in address or "other" in address
        _attach, detach = raw.attach_sender(20, f"amqps://host/{name}/Partitions/9")
        assert condition(detach) == "amqp:not-found" and "partition '9'" in detach[2].value[1]


def test_unsupported_selectors_and_positions_out_of_range_are_refused(isolated_eventhub: IsolatedHub) -> None:
    address = f"{isolated_eventhub.name}/ConsumerGroups/$Default/Partitions/1"
    with connect(isolated_eventhub) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        cases = {
            "amqp.annotation.x-opt-offset < '5'": "amqp:not-implemented",
            "amqp.annotation.x-opt-sequence-number > 'abc'": "com.microsoft:argument-error",
            "amqp.annotation.x-opt-sequence-number > '100'": "com.microsoft:argument-out-of-range",
            "amqp.annotation.x-opt-offset > '5000'": "com.microsoft:argument-out-of-range",
        }
        for handle, (selector, expected) in enumerate(cases.items(), start=1):
            _attach, detach = raw.attach_receiver(handle, address, selector)
            assert condition(detach) == expected, selector


def test_unknown_message_format_is_rejected_and_the_link_stays_usable(isolated_eventhub: IsolatedHub) -> None:
    with connect(isolated_eventhub) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        raw.attach_sender(1, isolated_eventhub.name)
        raw.transfer(1, 0, data_message("odd"), message_format=0x12345678)
        _, disposition, _ = raw.expect(frames.DISPOSITION)
        assert disposition[4].descriptor == frames.REJECTED
        assert disposition[4].value[0].value[0] == Symbol("amqp:not-implemented")
        raw.transfer(1, 1, b"\x01\x02not a message")
        _, disposition, _ = raw.expect(frames.DISPOSITION)
        assert disposition[4].value[0].value[0] == Symbol("amqp:decode-error")
        raw.transfer(1, 2, data_message("fine"))
        _, disposition, _ = raw.expect(frames.DISPOSITION)
        assert disposition[4].descriptor == frames.ACCEPTED


def test_tls_and_garbage_get_an_answer_and_a_close_never_a_hang(isolated_eventhub: IsolatedHub) -> None:
    with connect(isolated_eventhub) as raw:
        raw.send_raw(frames.TLS_HEADER)
        assert raw.read_exact(8) == frames.SASL_HEADER  # "I speak SASL", then the emulator hangs up
        assert raw.sock.recv(100) == b""
    with connect(isolated_eventhub) as raw:
        raw.send_raw(b"GET / HTTP/1.1\r\n\r\n")
        assert raw.read_exact(8) == frames.SASL_HEADER
        assert raw.sock.recv(100) == b""
    with connect(isolated_eventhub) as raw:
        raw.open()
        raw.send_raw(b"\x00\x00\x00\x0c\x02\x00\x00\x00\xff\xff\xff\xff")  # a frame whose body is not AMQP
        _, close, _ = raw.expect(frames.CLOSE)
        assert condition([close[0]]) == "amqp:decode-error"
    with connect(isolated_eventhub) as raw:
        raw.open()
        raw.send_raw(b"\xff\xff\xff\xff\x02\x00\x00\x00")  # a 4 GB frame
        _, close, _ = raw.expect(frames.CLOSE)
        assert condition([close[0]]) == "amqp:connection:framing-error"
        raw.sock.settimeout(2)
        with pytest.raises((ConnectionError, socket.timeout, OSError)):
            raw.expect(frames.OPEN)


def test_a_consumer_that_stops_reading_holds_up_nobody(isolated_eventhub: IsolatedHub) -> None:
    """A receiver with a huge credit that does not read: the emulator pauses writing to it, keeps serving
    everyone else, and delivers everything in order once it reads again."""
    from emulators.eventhubs.message import BATCH_FORMAT

    hub = isolated_eventhub
    inner = b"\x00\x53\x75\xb0" + (500).to_bytes(4, "big") + b"s" * 500
    section = b"\x00\x53\x75\xb0" + len(inner).to_bytes(4, "big") + inner
    batches, per_batch = 60, 400  # about 14 MB: more than the kernel and the emulator (4 MB) buffer
    with connect(hub) as stalled, connect(hub) as publisher:
        stalled.open(mechanism="PLAIN", response=PLAIN)
        stalled.attach_receiver(1, f"{hub.name}/ConsumerGroups/$Default/Partitions/2")
        stalled.flow(1, delivery_count=0, credit=1_000_000)
        publisher.open(mechanism="PLAIN", response=PLAIN)
        publisher.attach_sender(1, f"{hub.name}/Partitions/2")
        for i in range(batches):
            publisher.transfer(1, i, section * per_batch, message_format=BATCH_FORMAT)
            _, disposition, _ = publisher.expect(frames.DISPOSITION)
            assert disposition[4].descriptor == frames.ACCEPTED
        with producer(hub) as client:  # the emulator still answers others at once
            assert client.get_partition_properties("2")["last_enqueued_sequence_number"] == batches * per_batch - 1
        ids = []
        while len(ids) < batches * per_batch:
            _, fields, _ = stalled.expect(frames.TRANSFER)
            ids.append(int(fields[1]))
        assert ids == list(range(batches * per_batch))


def test_a_stalled_consumer_of_large_events_is_not_buffered_its_whole_credit(isolated_eventhub: IsolatedHub) -> None:
    """A receiver that grants credit for many 900 kB events and reads nothing: the emulator hands output to the
    transport every megabyte and stops once the transport pauses, so its memory grows by a few megabytes, not by
    the events the credit covers (one chunk of up to 512 deliveries used to be framed into memory whole)."""
    import psutil

    hub = isolated_eventhub
    count, size = 80, 900_000
    with producer(hub) as client:
        for i in range(count):
            batch = client.create_batch(partition_id="3")
            batch.add(EventData(bytes([65 + i % 26]) * size))
            client.send_batch(batch)
    emulator = psutil.Process(hub.running.process.pid)
    before = emulator.memory_info().rss
    with connect(hub) as stalled:
        stalled.open(mechanism="PLAIN", response=PLAIN)
        stalled.attach_receiver(1, f"{hub.name}/ConsumerGroups/$Default/Partitions/3")
        stalled.flow(1, delivery_count=0, credit=1000)
        time.sleep(3)
        grown = emulator.memory_info().rss - before
    assert grown < 30 * 2**20, f"the emulator grew by {grown / 2**20:.0f} MB for a consumer that reads nothing"


def stall_on_a_shut_window(raw: RawClient, hub: IsolatedHub) -> None:
    """Give the receiver of handle 1 (partition 0) credit with the session window shut, publish three events to it,
    and check that none arrives."""
    raw.flow(1, delivery_count=0, credit=10, incoming_window=0)
    with producer(hub) as client:
        client.send_batch([EventData(f"a{i}") for i in range(3)], partition_id="0")
    raw.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        raw.expect(frames.TRANSFER)
    raw.sock.settimeout(5)


def test_a_window_reopened_by_another_links_flow_resumes_a_stalled_consumer(isolated_eventhub: IsolatedHub) -> None:
    """Every flow carries the session's window, with or without a link's handle (AMQP 1.0 part 2, 2.7.4): a
    consumer stalled by a closed window must resume when a flow for another link of its session re-opens it."""
    hub = isolated_eventhub
    with connect(hub) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        raw.attach_receiver(1, f"{hub.name}/ConsumerGroups/$Default/Partitions/0")
        raw.attach_receiver(2, f"{hub.name}/ConsumerGroups/$Default/Partitions/1")
        stall_on_a_shut_window(raw, hub)  # link A (handle 1)
        raw.flow(2, delivery_count=0, credit=0, incoming_window=100)  # link B's flow re-opens the window
        got = [raw.expect(frames.TRANSFER) for _ in range(3)]
        assert [int(fields[0]) for _, fields, _ in got] == [1, 1, 1]
        assert [payload.endswith(f"a{i}".encode()) for i, (_, _, payload) in enumerate(got)] == [True] * 3


def test_a_large_event_is_sent_in_frames_no_faster_than_the_session_window(isolated_eventhub: IsolatedHub) -> None:
    """A delivery larger than the client's max frame size takes several transfers; the emulator must not send
    more of them than the client's incoming window allows (AMQP 1.0 part 2, 2.5.6), must finish it when the
    window re-opens, and must not interleave the link's next delivery with it."""
    hub = isolated_eventhub
    body = bytes(range(256)) * 16  # 4 kB: about nine frames of 512 bytes
    with producer(hub) as client:
        batch = client.create_batch(partition_id="2")
        batch.add(EventData(body))
        batch.add(EventData(b"after"))
        client.send_batch(batch)
    window = 2
    with connect(hub) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN, max_frame_size=512, incoming_window=window)
        raw.attach_receiver(1, f"{hub.name}/ConsumerGroups/$Default/Partitions/2")
        raw.flow(1, delivery_count=0, credit=10)
        transfers: list[tuple[list[Any], bytes]] = []
        done = False  # the second delivery's last frame arrived
        while not done:
            for _ in range(window):
                _, fields, payload = raw.expect(frames.TRANSFER)
                transfers.append((fields, payload))
                done = int(fields[1]) == 1 and not fields[5]
                if done:
                    break
            else:
                raw.sock.settimeout(0.3)
                with pytest.raises(TimeoutError):  # the window is used up: nothing more until the next flow
                    raw.expect(frames.TRANSFER)
                raw.sock.settimeout(5)
                raw.flow(1, delivery_count=0, credit=10, incoming_window=window)
        ids = [int(fields[1]) for fields, _ in transfers]
        assert ids == [0] * (len(ids) - 1) + [1] and len(ids) > 2 * window
        first = b"".join(payload for fields, payload in transfers if int(fields[1]) == 0)
        assert first.endswith(b"\x00\x53\x75\xb0" + len(body).to_bytes(4, "big") + body)
        assert transfers[-1][1].endswith(b"after") and not transfers[-1][0][5]


def test_a_flow_on_a_detaching_handle_that_reopens_the_window_resumes_stalled_consumers(
        isolated_eventhub: IsolatedHub) -> None:
    """Every flow carries the session's window (part 2, 2.7.4) and the docs say any flow re-opening it resumes a
    stalled consumer. A flow on a handle the emulator just detached (refused, or taken over by an owner level)
    updated the window but returned before the resume: the stalled consumer of the same session hung."""
    hub = isolated_eventhub
    with connect(hub) as raw:
        raw.open(mechanism="PLAIN", response=PLAIN)
        raw.attach_receiver(1, f"{hub.name}/ConsumerGroups/$Default/Partitions/0")
        _, refused = raw.attach_receiver(5, f"{hub.name}/ConsumerGroups/$Default/Partitions/99")
        assert refused is not None  # handle 5 is now reserved in the session's ``detaching``
        stall_on_a_shut_window(raw, hub)
        # the client's flow for handle 5, sent before it saw the refusal, re-opens the session window
        raw.flow(5, delivery_count=0, credit=0, incoming_window=100)
        got = [raw.expect(frames.TRANSFER) for _ in range(3)]
        assert [int(fields[0]) for _, fields, _ in got] == [1, 1, 1]

