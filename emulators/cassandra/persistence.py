"""Persistence for ``--data-dir``: an append-only journal of records, and a snapshot.

Every applied record (see :mod:`.write` and :mod:`.ddl`) is appended to
``journal.bin`` before the response is sent (written to the OS at once, so a
killed process loses nothing; fsync'd every ``fsync_interval`` seconds, like
Cassandra's periodic commitlog sync). A record is ``[4-byte length][body]``,
the body ``"SJ" | u32 CRC-32 | u64 sequence number | pickle``; the CRC covers
the length, the sequence number and the pickle. Journals written before the
CRC hold bare pickles as bodies (they begin with the pickle opcode 0x80) and
are still read.

On a clean shutdown the whole state goes to ``snapshot.bin`` (written aside,
fsync'd, renamed, the directory fsync'd), with the sequence number of the last
record it holds; then the journal is emptied. A crash between the rename and
the emptying leaves records the snapshot already holds: start-up skips every
record whose sequence number the snapshot covers, so none is applied twice.

Start-up loads the snapshot, then replays the journal. Only a record cut short
at the very end (a crash mid-write: its length runs past the end of the file
and no whole record follows) is dropped, with a warning and a copy of the cut
bytes kept aside. Anything else that does not read back (a wrong CRC, an
unknown body, a length running past whole records) is damage:
:class:`JournalDamaged` names the file and the byte, and the file is left as it
is, since cutting it there would lose the acknowledged writes after it.

``DIR/lock`` is held (``flock``) while an emulator uses the directory, so a
second one on the same directory is refused instead of both appending to one
journal and each snapshot dropping the other's writes.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pickle
import struct
import time
import uuid
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict

from .store import Partition, Row, TableData

if TYPE_CHECKING:
    from .engine import Engine

logger = logging.getLogger(__name__)
_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">2sIQ")  # magic, CRC-32 (of the length, the sequence number and the pickle), sequence number
_MAGIC = b"SJ"
_LEGACY = 0x80  # the first byte of a body that is a bare pickle (protocol 2 and later): a journal of before the CRC
# 2: rows keep the slots element operations wrote last (Row.by_element); 3: journal_seq, the last journal record held
SNAPSHOT_VERSION = 3


class JournalDamaged(Exception):
    """``journal.bin`` holds a record that cannot be read back, before its end (not a torn last record)."""


def lock_data_dir(data_dir: Path) -> int:
    """Hold ``DIR/lock`` (``flock``, released when the process ends, however it ends) and write our pid into it;
    ValueError naming ``--data-dir`` when another emulator holds it."""
    path = data_dir / "lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ValueError(f"--data-dir {data_dir}: cannot open {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"--data-dir {data_dir} is in use by another emulator (pid {holder}): stop that one, "
                         "or give this one its own --data-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _crc(length: bytes, seq: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(seq.to_bytes(8, "big"), zlib.crc32(length)))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Snapshot(TypedDict):
    """What ``snapshot.bin`` holds (pickled)."""

    version: int
    journal_seq: int  # every journal record up to this sequence number is in the snapshot (version 3)
    schema: list[tuple[Any, ...]]  # CK and CT records, as in the journal
    data: dict[uuid.UUID, list[tuple[Any, ...]]]  # per table: (key, token, deleted, ranges, rows) per partition
    feed: dict[uuid.UUID, tuple[list[int], list[float], list[tuple[bytes, bytes]]]]  # FeedLog seqs, ats, keys
    seq: int


class Journal:
    def __init__(self, data_dir: str, fsync_interval: float = 1.0) -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.journal_path = self.dir / "journal.bin"
        self.snapshot_path = self.dir / "snapshot.bin"
        self.fsync_interval = fsync_interval
        self.fd: int | None = None
        self.dirty = False
        self.seq = 0  # the sequence number of the last record applied (loaded, or appended)

    # -- writing ---------------------------------------------------------------------
    def _open(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self.fd

    def append(self, record: tuple[Any, ...]) -> None:
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        self.seq += 1
        length = _LEN.pack(_HEAD.size + len(data))
        os.write(self._open(), length + _HEAD.pack(_MAGIC, _crc(length, self.seq, data), self.seq) + data)
        self.dirty = True

    def sync(self) -> None:
        if self.fd is not None and self.dirty:
            os.fsync(self.fd)
            self.dirty = False

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval)
            self.sync()

    def close(self) -> None:
        if self.fd is not None:
            self.sync()
            os.close(self.fd)
            self.fd = None

    # -- snapshot ------------------------------------------------------------------------
    def snapshot(self, engine: Engine) -> None:
        """Write the whole state aside, rename it over the snapshot, then empty the journal (a crash in between
        leaves records the snapshot holds, which :meth:`load` skips by their sequence numbers)."""
        state: _Snapshot = {"version": SNAPSHOT_VERSION, "journal_seq": self.seq, "schema": [], "data": {},
                            "feed": {}, "seq": engine.feed.seq}
        for ks in engine.catalog.keyspaces.values():
            state["schema"].append(("CK", ks.name, ks.replication, ks.durable_writes))
            for t in ks.tables.values():
                cols = [(c.name, c.type.cql(), c.kind, c.position, c.reversed)
                        for c in [*t.partition_key, *t.clustering, *t.regular]]
                state["schema"].append(("CT", ks.name, t.name, str(t.id), cols, t.options))
                data = engine.tables[t.id]
                state["data"][t.id] = [
                    (p.key, p.token, p.deleted, [(spec, ts) for _c, ts, spec in p.ranges or []],
                     [(r.ck, r.marker, r.deleted, r.cells, r.by_element) for r in p.iter_rows()])
                    for p in data.partitions.values()]
        for tid, log in engine.feed.logs.items():
            state["feed"][tid] = (log.seqs, log.ats, log.keys)
        tmp = self.snapshot_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)
        _fsync_dir(self.dir)  # the rename itself must be on disk before the journal it replaces is emptied
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with open(self.journal_path, "wb") as f:
            os.fsync(f.fileno())
        logger.info("snapshot written to %s", self.snapshot_path)

    # -- loading -------------------------------------------------------------------------
    def load(self, engine: Engine) -> None:
        """Load the snapshot, then replay the journal records it does not hold; :class:`JournalDamaged` when a
        record before the end cannot be read back (the file is left as it is)."""
        covered = -1  # journal records up to this sequence number are in the snapshot; legacy ones: -1 none, else all
        if self.snapshot_path.exists():
            with open(self.snapshot_path, "rb") as f:
                state = pickle.load(f)
            for record in state["schema"]:
                engine.apply(record, replay=True)
            for tid, parts in state["data"].items():
                self._restore(engine, tid, parts)
            from .changefeed import FeedLog
            for tid, (seqs, ats, keys) in state["feed"].items():
                log = FeedLog(seqs, ats, keys)
                for seq, key in zip(seqs, keys, strict=True):
                    log.latest[key] = seq
                engine.feed.logs[tid] = log
            engine.feed.seq = state["seq"]
            if "journal_seq" in state:
                covered = self.seq = state["journal_seq"]
        replayed = skipped = 0
        if self.journal_path.exists():
            raw = self.journal_path.read_bytes()
            pos = 0
            legacy_allowed = True  # records of before the CRC come first (a newer emulator appended after them)
            while pos < len(raw):
                if pos + _LEN.size > len(raw):
                    break  # a torn length at the end
                length = raw[pos:pos + _LEN.size]
                (n,) = _LEN.unpack(length)
                body_at, end = pos + _LEN.size, pos + _LEN.size + n
                if end > len(raw):
                    if self._whole_record_after(raw, body_at):
                        self._damaged(raw, pos, f"its length {n} runs past the end, and whole records follow")
                    break  # the last record, cut short
                body = raw[body_at:end]
                if n >= _HEAD.size and body[:2] == _MAGIC:
                    _, crc, seq = _HEAD.unpack_from(body)
                    data = body[_HEAD.size:]
                    if _crc(length, seq, data) != crc:
                        self._damaged(raw, pos, "its CRC does not match")
                    legacy_allowed = False
                    apply = seq > covered
                    self.seq = max(self.seq, seq)
                elif n and body[0] == _LEGACY and legacy_allowed:
                    data, apply = body, covered < 0  # a snapshot with journal_seq was written after it: it holds it
                else:
                    self._damaged(raw, pos, "not a journal record")
                try:
                    record = pickle.loads(data)
                except Exception as exc:
                    self._damaged(raw, pos, f"it does not unpickle: {exc}")
                if apply:
                    engine.apply(record, replay=True)
                    replayed += 1
                else:
                    skipped += 1
                pos = end
            if pos != len(raw):
                aside = self.dir / f"journal.torn-{int(time.time())}.bin"
                aside.write_bytes(raw[pos:])
                logger.warning("dropping a torn record at the end of %s (%d bytes, kept in %s)",
                               self.journal_path, len(raw) - pos, aside)
                with open(self.journal_path, "r+b") as f:
                    f.truncate(pos)
        logger.info("loaded %s: %d keyspaces, %d journal records replayed, %d already in the snapshot", self.dir,
                    len(engine.catalog.keyspaces), replayed, skipped)

    def _damaged(self, raw: bytes, pos: int, what: str) -> NoReturn:
        raise JournalDamaged(
            f"{self.journal_path} is damaged at byte {pos} of {len(raw)} ({what}); it was left as it is, since "
            f"cutting it there would lose the writes after byte {pos}: move it aside, or truncate it to {pos} bytes "
            "to keep the writes before (see docs/emulators/cassandra.md, Persistence)")

    @staticmethod
    def _whole_record_after(raw: bytes, pos: int) -> bool:
        """Whether a whole record (with a CRC that matches) starts after ``pos``: then the length before it is
        damaged, not the last record's, cut short by a crash."""
        at = raw.find(_MAGIC, pos + 1)
        while at != -1:
            start = at - _LEN.size
            if start >= pos and at + _HEAD.size <= len(raw):
                length = raw[start:at]
                (n,) = _LEN.unpack(length)
                if n >= _HEAD.size and at + n <= len(raw):
                    _, crc, seq = _HEAD.unpack_from(raw, at)
                    if _crc(length, seq, raw[at + _HEAD.size:at + n]) == crc:
                        return True
            at = raw.find(_MAGIC, at + 1)
        return False

    @staticmethod
    def _restore(engine: Engine, tid: Any, parts: list[Any]) -> None:
        from .write import range_predicate
        data: TableData = engine.tables[tid]
        table = engine._table_by_id(tid)
        for key, token, deleted, ranges, rows in parts:
            part: Partition = data.partition_for_write(key, token)
            part.deleted = deleted
            if ranges:
                part.ranges = [(range_predicate(table, spec[0], spec[1]), ts, spec) for spec, ts in ranges]
            for ck, marker, row_deleted, cells, *by_element in rows:  # version 1 rows lack by_element: none
                row: Row = part.get_or_create(ck)
                row.marker, row.deleted, row.cells = marker, row_deleted, cells
                row.by_element = by_element[0] if by_element else None

