"""Append-only event log files, one per partition (used with ``--data-dir``).

Layout: ``<data-dir>/<hub>/<partition>.log``, a series of records::

    magic "EHR1" | u32 payload length | i64 sequence | i64 offset | i64 enqueued ms | u32 header length | payload

``payload`` is the stored message exactly as it is delivered, so a restart
serves the same bytes, offsets and sequence numbers. Each record follows the
previous one: sequence number plus 1, offset plus the previous payload's length.

A record cut short by a crash (a torn tail: a prefix of a header at the very end,
or the last record's payload running past the end) is dropped on load, by
rewriting the file up to the last whole record. Anything else that does not
parse (a bad magic, a header that does not follow the previous record, or a
length running past the end while later records follow) is damage, not a
crash: loading raises :class:`StorageError` naming the file and the byte
position, and leaves the file as it is, since cutting there would destroy the
acknowledged events after it and hand their numbers out again.

Writes are flushed to the operating system after every publish (they survive
the emulator being killed, not a power loss: there is no fsync).
Expired events are dropped when the log is loaded, by rewriting the file; the
last record always stays, so numbering continues after everything expired.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO, NoReturn

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
        torn tail) when there was anything to drop. A damaged record before the end raises
        :class:`StorageError` and leaves the file untouched (see the module docstring).
        """
        records: list[Record] = []
        if not self.path.exists():
            return records, None
        try:
            data = self.path.read_bytes()
        except OSError as exc:  # a directory where the log should be, no permission...
            raise StorageError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        whole, good_end = _scan(data, self.path)
        dropped = 0
        last: Record | None = whole[-1] if whole else None
        for record in whole:
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


def _scan(data: bytes, path: Path) -> tuple[list[Record], int]:
    """The whole records of ``data`` and where they end; everything after that end is a torn tail.

    Raises :class:`StorageError` at the first record that is damaged rather than torn.
    """
    records: list[Record] = []
    pos = 0
    while pos < len(data):
        if pos + _RECORD.size > len(data):  # a header cut short: torn if it is the start of one
            if _MAGIC.startswith(data[pos : pos + len(_MAGIC)]):
                break
            _damaged(path, data, pos, "not a record header")
        magic, length, sequence, offset, enqueued_ms, header_len = _RECORD.unpack_from(data, pos)
        if magic != _MAGIC:
            _damaged(path, data, pos, f"bad magic {magic!r}")
        if records:
            previous = records[-1]
            expected = (previous[0] + 1, previous[1] + len(previous[4]))
            if (sequence, offset) != expected:
                _damaged(path, data, pos, f"sequence {sequence} at offset {offset} after sequence {previous[0]}, "
                         f"expected {expected[0]} at {expected[1]}")
        if header_len > length:
            _damaged(path, data, pos, f"header length {header_len} larger than the record ({length})")
        end = pos + _RECORD.size + length
        if end > len(data):  # torn, unless its length is wrong and the next record follows in the file
            later = _next_record(data, pos, sequence, offset)
            if later is None:
                break
            _damaged(path, data, pos, f"length {length} runs past the end, yet sequence {sequence + 1} "
                     f"starts at byte {later}")
        records.append((sequence, offset, enqueued_ms, header_len, data[pos + _RECORD.size : end]))
        pos = end
    return records, pos


def _next_record(data: bytes, pos: int, sequence: int, offset: int) -> int | None:
    """The position of a whole header of the record after the one at ``pos`` (``sequence``, ``offset``), if the file
    holds one where its own offset places it: the next sequence number, ``offset`` plus the bytes between the two.

    A record whose length runs past the end is torn when nothing follows it; when its next record does follow, its
    length is what is wrong. Bytes shaped like a header inside a torn record's payload (an event body may hold
    anything, a forwarded log record too) would have to name the next sequence number *and* the offset their place
    in the file gives, which a body written at another place in another log does not."""
    at = data.find(_MAGIC, pos + _RECORD.size)
    while at != -1 and at + _RECORD.size <= len(data):
        _, _, next_sequence, next_offset, _, _ = _RECORD.unpack_from(data, at)
        if next_sequence == sequence + 1 and next_offset - offset == at - pos - _RECORD.size:
            return at
        at = data.find(_MAGIC, at + 1)
    return None


def _damaged(path: Path, data: bytes, pos: int, what: str) -> NoReturn:
    raise StorageError(
        f"{path} is damaged at byte {pos} of {len(data)} ({what}); it was left as it is, since cutting it there "
        f"would lose the events after byte {pos}: move it aside, or truncate it to {pos} bytes to keep the events "
        f"before (see docs/emulators/eventhubs.md, --data-dir)"
    )
