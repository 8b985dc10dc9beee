"""Append-only event log files, one per partition (used with ``--data-dir``).

Layout: ``<data-dir>/<hub>/<partition>.log``, a series of records::

    magic "EHR1" | u32 payload length | i64 sequence | i64 offset | i64 enqueued ms | u32 header length | payload

``payload`` is the stored message exactly as it is delivered, so a restart
serves the same bytes, offsets and sequence numbers. A record cut short by a
crash is detected on load and the file is truncated back to the last whole
record. Writes are flushed to the operating system after every publish (they
survive the emulator being killed, not a power loss: there is no fsync).
Expired events are dropped when the log is loaded, by rewriting the file; the
last record always stays, so numbering continues after everything expired.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from emulators.eventhubs.errors import StorageError

logger = logging.getLogger(__name__)

_RECORD = struct.Struct(">4sIqqqI")
Record = tuple[int, int, int, int, bytes]  # sequence, offset, enqueued ms, header length, payload
_MAGIC = b"EHR1"


class PartitionLog:
    """The log file of one partition, opened for appending."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission...
            raise StorageError(f"cannot create the directory {path.parent}: {exc.strerror or exc}") from None
        self._file: BinaryIO | None = None

    def load(self, keep_after_ms: int) -> tuple[list[Record], Record | None]:
        """Read all whole records: those enqueued at or after ``keep_after_ms``, and the last record.

        The last record is returned (and kept in the file) even when it expired: it carries the
        partition's numbering, so sequence numbers and offsets continue after a restart instead of
        starting again at 0. The file is rewritten without the other expired records (and without a
        torn tail) when there was anything to drop.
        """
        records: list[Record] = []
        if not self.path.exists():
            return records, None
        try:
            data = self.path.read_bytes()
        except OSError as exc:  # a directory where the log should be, no permission...
            raise StorageError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        good_end, dropped = 0, 0
        last: Record | None = None
        for end, record in _records(data):
            good_end = end
            last = record
            if record[2] < keep_after_ms:
                dropped += 1
            else:
                records.append(record)
        torn = len(data) - good_end
        if torn:
            logger.warning("%s: dropping %s bytes of a torn record at the end", self.path, torn)
        tail = [last] if last is not None and (not records or records[-1] is not last) else []  # kept though expired
        kept_tail = bool(tail)
        if (dropped - int(kept_tail)) or torn:
            logger.info("%s: rewriting the log without %s expired events", self.path, dropped - int(kept_tail))
            tmp = self.path.with_suffix(".tmp")
            try:
                with tmp.open("wb") as f:
                    for record in tail + records:
                        f.write(_encode(*record))
                os.replace(tmp, self.path)
            except OSError as exc:
                raise StorageError(f"cannot rewrite {self.path} (through {tmp}): {exc.strerror or exc}") from None
        return records, last

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


def _records(data: bytes) -> Iterator[tuple[int, Record]]:
    pos = 0
    while pos + _RECORD.size <= len(data):
        magic, length, sequence, offset, enqueued_ms, header_len = _RECORD.unpack_from(data, pos)
        end = pos + _RECORD.size + length
        if magic != _MAGIC or end > len(data):
            return
        yield end, (sequence, offset, enqueued_ms, header_len, data[pos + _RECORD.size : end])
        pos = end
