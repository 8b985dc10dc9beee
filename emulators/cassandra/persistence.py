"""Persistence for ``--data-dir``: an append-only journal of records, and a snapshot.

Every applied record (see :mod:`.write` and :mod:`.ddl`) is appended to
``journal.bin`` as ``[4-byte length][pickle]`` before the response is sent
(written to the OS at once, so a killed process loses nothing; fsync'd every
``fsync_interval`` seconds, like Cassandra's periodic commitlog sync). On a
clean shutdown the whole state goes to ``snapshot.bin`` (written aside and
renamed) and the journal is emptied. Start-up loads the snapshot, then replays
the journal; a torn last record (crash mid-write) is dropped with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from .store import Partition, Row, TableData

if TYPE_CHECKING:
    from .engine import Engine

logger = logging.getLogger(__name__)
_LEN = struct.Struct(">I")
SNAPSHOT_VERSION = 2  # 2: rows keep the slots element operations wrote last (Row.by_element)


class _Snapshot(TypedDict):
    """What ``snapshot.bin`` holds (pickled)."""

    version: int
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

    # -- writing ---------------------------------------------------------------------
    def _open(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self.fd

    def append(self, record: tuple[Any, ...]) -> None:
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        os.write(self._open(), _LEN.pack(len(data)) + data)
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
        """Write the whole state aside, rename it over the snapshot, then empty the journal."""
        state: _Snapshot = {"version": SNAPSHOT_VERSION, "schema": [], "data": {}, "feed": {}, "seq": engine.feed.seq}
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
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with open(self.journal_path, "wb") as f:
            os.fsync(f.fileno())
        logger.info("snapshot written to %s", self.snapshot_path)

    # -- loading -------------------------------------------------------------------------
    def load(self, engine: Engine) -> None:
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
        replayed = 0
        if self.journal_path.exists():
            raw = self.journal_path.read_bytes()
            pos = 0
            while pos + 4 <= len(raw):
                (n,) = _LEN.unpack_from(raw, pos)
                if pos + 4 + n > len(raw):
                    break
                try:
                    record = pickle.loads(raw[pos + 4:pos + 4 + n])
                except Exception:
                    break
                engine.apply(record, replay=True)
                replayed += 1
                pos += 4 + n
            if pos != len(raw):
                logger.warning("dropping a torn record at the end of %s (%d bytes)", self.journal_path, len(raw) - pos)
                with open(self.journal_path, "r+b") as f:
                    f.truncate(pos)
        logger.info("loaded %s: %d keyspaces, %d journal records replayed", self.dir,
                    len(engine.catalog.keyspaces), replayed)

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

