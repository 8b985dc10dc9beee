"""Append-only event log files, one per partition (used with ``--data-dir``).

Layout: ``<data-dir>/<hub>/<partition>.log``, a series of records::

    magic "EHR1" | u32 payload length | i64 sequence | i64 offset | i64 enqueued ms | u32 header length | payload

``payload`` is the stored message exactly as it is delivered, so a restart
serves the same bytes, offsets and sequence numbers. A record cut short by a
crash is detected on load and the file is truncated back to the last whole
record. Writes are flushed to the operating system after every publish (they
survive the emulator being killed, not a power loss: there is no fsync).
Expired events are dropped when the log is loaded, by rewriting the file.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_RECORD = struct.Struct(">4sIqqqI")
_MAGIC = b"EHR1"


class PartitionLog:
    """The log file of one partition, opened for appending."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = None

    def load(self, keep_after_ms: int) -> list[tuple[int, int, int, int, bytes]]:
        """Read all whole records, ``(sequence, offset, enqueued_ms, header_len, payload)``.

        Records enqueued before ``keep_after_ms`` are dropped, and the file is
        rewritten without them (and without a torn tail) when anything was dropped.
        """
        records: list[tuple[int, int, int, int, bytes]] = []
        if not self.path.exists():
            return records
        data = self.path.read_bytes()
        good_end, dropped = 0, 0
        for end, record in _records(data):
            good_end = end
            if record[2] < keep_after_ms:
                dropped += 1
            else:
                records.append(record)
        torn = len(data) - good_end
        if torn:
            logger.warning("%s: dropping %s bytes of a torn record at the end", self.path, torn)
        if dropped or torn:
            logger.info("%s: rewriting the log without %s expired events", self.path, dropped)
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                for sequence, offset, enqueued_ms, header_len, payload in records:
                    f.write(_encode(sequence, offset, enqueued_ms, header_len, payload))
            os.replace(tmp, self.path)
        return records

    def append(self, sequence: int, offset: int, enqueued_ms: int, header_len: int, payload: bytes) -> None:
        if self._file is None:
            self._file = self.path.open("ab")
        self._file.write(_encode(sequence, offset, enqueued_ms, header_len, payload))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _encode(sequence: int, offset: int, enqueued_ms: int, header_len: int, payload: bytes) -> bytes:
    return _RECORD.pack(_MAGIC, len(payload), sequence, offset, enqueued_ms, header_len) + payload


def _records(data: bytes) -> Iterator[tuple[int, tuple[int, int, int, int, bytes]]]:
    pos = 0
    while pos + _RECORD.size <= len(data):
        magic, length, sequence, offset, enqueued_ms, header_len = _RECORD.unpack_from(data, pos)
        end = pos + _RECORD.size + length
        if magic != _MAGIC or end > len(data):
            return
        yield end, (sequence, offset, enqueued_ms, header_len, data[pos + _RECORD.size : end])
        pos = end
