"""The counters ``bench e2e`` reports: losses and duplicates in the stores, and CQL requests in a byte stream."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter

from bench._e2e_cpu import CqlCounter, FrameCounter, count_losses
from sluice.secured import LocalCA


def test_count_losses_counts_missing_and_extra_rows_and_stream_entries() -> None:
    counted = count_losses(
        valid=["a", "b", "c", "d"],
        stored=["a", "b", "b", "d", "zz"],  # c missing, b twice, zz not ours
        critical=["b", "d"],
        critical_present=["b"],  # d missing in Redis
        stream=["b", "b", "b", "x"],  # b two extra entries, x not ours
    )
    assert counted == {"lost_stored": 1, "duplicate_stored": 1, "lost_critical": 1, "duplicate_critical": 2,
                       "lost": 2, "duplicated": 3}


def test_count_losses_is_zero_when_everything_is_there_once() -> None:
    counted = count_losses(valid=["a", "b"], stored=["b", "a"], critical=["a"], critical_present=["a"], stream=["a"])
    assert counted["lost"] == 0
    assert counted["duplicated"] == 0


def _frame(opcode: int, body: bytes, stream: int = 1) -> bytes:
    return bytes([0x04, 0, stream >> 8, stream & 0xFF, opcode]) + len(body).to_bytes(4, "big") + body


def test_frame_counter_counts_requests_across_arbitrary_splits() -> None:
    batch = bytes([1]) + (3).to_bytes(2, "big") + b"x" * 40  # unlogged, 3 statements
    data = (_frame(0x01, b"\x00\x00") + _frame(0x0A, b"e" * 100) + _frame(0x0D, batch) + _frame(0x07, b"q" * 7)
            + _frame(0x0A, b""))
    for size in (1, 2, 5, 9, 10, 64, len(data)):
        counter = FrameCounter()
        for start in range(0, len(data), size):
            counter.feed(data[start:start + size])
        assert dict(counter.requests) == {"execute": 2, "batch": 1, "query": 1}, size
        assert counter.batched_statements == 3, size


def test_the_counting_proxy_closes_with_no_connection_left() -> None:
    """Closing used to gather the pending tasks outside the proxy's loop, which failed even with none."""
    with socket.create_server(("127.0.0.1", 0)) as target:
        counter = CqlCounter("127.0.0.1", target.getsockname()[1])
        counter.close()
    assert counter.totals() == (Counter(), 0)


def test_the_counting_proxy_reads_the_frames_of_a_tls_connection(tmp_path) -> None:
    """In front of a TLS server (the local stack's own Cassandra) it ends TLS on both sides to read the frames."""
    ca = LocalCA(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(ca.cert_file, ca.key_file)
    received = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            plain, _ = listener.accept()
            with server_tls.wrap_socket(plain, server_side=True) as conn:
                while chunk := conn.recv(65536):
                    received.extend(chunk)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        counter = CqlCounter("127.0.0.1", listener.getsockname()[1], tls=(ca.cert_file, ca.key_file, ca.ca_file))
        batch = bytes([1]) + (2).to_bytes(2, "big") + b"x" * 10
        frames = _frame(0x07, b"q" * 5) + _frame(0x0D, batch)
        client_tls = ssl.create_default_context(cafile=str(ca.ca_file))
        with socket.create_connection(("127.0.0.1", counter.port)) as plain, \
                client_tls.wrap_socket(plain, server_hostname="127.0.0.1") as client:
            client.sendall(frames)
            deadline = time.monotonic() + 10
            while counter.totals()[0]["batch"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        server.join(10)
        counter.close()
    assert counter.totals() == (Counter({"query": 1, "batch": 1}), 2)
    assert bytes(received) == frames  # and the server got them as they were sent
