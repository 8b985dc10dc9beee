"""The counters ``bench e2e`` reports: losses and duplicates in the stores, and CQL requests in a byte stream."""

from __future__ import annotations

from bench._e2e_cpu import FrameCounter, count_losses


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
