"""--data-dir: schema, rows, tombstones and TTLs survive a clean stop and a crash; without it nothing is kept; the
journal's crash windows, damage and lock."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Cluster, Session
from cassandra.query import SimpleStatement

from sluice.launcher import LaunchError
from tests.fixtures.cassandra import start_cassandra_emulator

pytestmark = pytest.mark.timeout(90)


@contextmanager
def _running(*args: str, end: str = "stop") -> Iterator[tuple[Cluster, Session]]:
    """An emulator started with ``args`` and a session on it; then the session shut down and the emulator ended:
    ``stop`` (SIGTERM), ``clean stop`` (asserting it exited 0, after its snapshot) or ``kill`` (a crash)."""
    emulator = start_cassandra_emulator(*args)
    try:
        cluster = Cluster(contact_points=[emulator.host], port=emulator.port, protocol_version=4)
        try:
            yield cluster, cluster.connect()
        finally:
            cluster.shutdown()
    finally:
        if end == "kill":
            emulator.kill()
        elif end == "clean stop":
            assert emulator.stop() == 0
        else:
            emulator.stop()


def test_data_survives_clean_stop_and_crash(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    with _running("--data-dir", data_dir, end="clean stop") as (_, s):
        s.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        s.execute("CREATE TABLE ks.t (p text, c int, v text, m map<text, int>, PRIMARY KEY (p, c)) "
                  "WITH CLUSTERING ORDER BY (c DESC)")
        ins = s.prepare("INSERT INTO ks.t (p, c, v) VALUES (?, ?, ?)")
        for c in range(10):
            s.execute(ins, ("a", c, f"v{c}"))
        s.execute("DELETE FROM ks.t WHERE p = 'a' AND c >= 8")
        s.execute("UPDATE ks.t SET m['x'] = 1 WHERE p = 'a' AND c = 0")
        s.execute("INSERT INTO ks.t (p, c, v) VALUES ('b', 1, 'ttl') USING TTL 1000")
    with _running("--data-dir", data_dir, end="kill") as (cluster, s):
        assert [r.c for r in s.execute("SELECT c FROM ks.t WHERE p = 'a'")] == list(range(7, -1, -1))
        assert dict(s.execute("SELECT m FROM ks.t WHERE p = 'a' AND c = 0").one().m) == {"x": 1}
        assert 990 <= s.execute("SELECT ttl(v) FROM ks.t WHERE p = 'b' AND c = 1").one()[0] <= 1000
        s.execute("INSERT INTO ks.t (p, c, v) VALUES ('a', 9, 'old') USING TIMESTAMP 1")  # still shadowed
        s.execute("INSERT INTO ks.t (p, c, v) VALUES ('z', 0, 'written just before the crash')")
        table = cluster.metadata.keyspaces["ks"].tables["t"]
        assert [c.name for c in table.clustering_key] == ["c"] and table.clustering_key[0].is_reversed
    with _running("--data-dir", data_dir) as (_, s):
        assert s.execute("SELECT v FROM ks.t WHERE p = 'z' AND c = 0").one().v == "written just before the crash"
        assert s.execute("SELECT v FROM ks.t WHERE p = 'a' AND c = 9").one() is None
        assert s.execute("SELECT COUNT(*) FROM ks.t").one()[0] == 10
    assert (Path(data_dir) / "snapshot.bin").exists()


def test_without_data_dir_nothing_is_kept() -> None:
    with _running() as (_, s):
        s.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
    with _running() as (cluster, s):
        assert "ks" not in cluster.metadata.keyspaces


def test_what_wrote_a_collection_last_survives_a_clean_stop_and_a_crash(tmp_path: Path) -> None:
    """An overwrite older than an element operation is refused (see test_collections_model) after a restart too:
    the snapshot keeps which collections an element operation wrote last, the journal replays it."""
    data_dir = str(tmp_path / "data")
    refused = "by an element operation"
    with _running("--data-dir", data_dir, end="clean stop") as (_, s):
        s.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        s.execute("CREATE TABLE ks.t (k int PRIMARY KEY, m map<text, int>)")
        for k in (1, 2):
            s.execute(f"INSERT INTO ks.t (k, m) VALUES ({k}, {{'a': 1}}) USING TIMESTAMP 1000")
        s.execute("UPDATE ks.t USING TIMESTAMP 3000 SET m['b'] = 2 WHERE k = 1")
        s.execute("INSERT INTO ks.t (k, m) VALUES (2, {'b': 2}) USING TIMESTAMP 3000")
    with _running("--data-dir", data_dir, end="kill") as (_, s):
        with pytest.raises(InvalidRequest, match=refused):  # from the snapshot
            s.execute("INSERT INTO ks.t (k, m) VALUES (1, {'c': 3}) USING TIMESTAMP 2000")
        s.execute("INSERT INTO ks.t (k, m) VALUES (2, {'c': 3}) USING TIMESTAMP 2000")  # written whole: shadowed
        s.execute("UPDATE ks.t USING TIMESTAMP 4000 SET m['d'] = 4 WHERE k = 2")
    with _running("--data-dir", data_dir) as (_, s):
        with pytest.raises(InvalidRequest, match=refused):  # from the journal
            s.execute("INSERT INTO ks.t (k, m) VALUES (2, {'c': 3}) USING TIMESTAMP 2000")
        assert dict(s.execute("SELECT m FROM ks.t WHERE k = 2").one().m) == {"b": 2, "d": 4}


FEED = "SELECT p FROM ks.{} WHERE COSMOS_CHANGEFEED_START_TIME() = '2000-01-01T00:00:00Z'"
CREATE_KS = "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"


def _record_starts(raw: bytes) -> list[int]:
    """Where each ``[4-byte length][body]`` record of a journal starts."""
    starts, pos = [], 0
    while pos < len(raw):
        starts.append(pos)
        pos += 4 + struct.unpack_from(">I", raw, pos)[0]
    return starts


def test_crash_right_after_the_snapshot_rename_keeps_the_store_startable(tmp_path: Path) -> None:
    """A kill -9 between the rename of the new snapshot and the emptying of journal.bin leaves the new snapshot AND
    the old journal on disk: the state reproduced here (journal copied before the clean stop, put back after it).
    The store must still load, each record applied once: a write to a table dropped later, replayed over a
    snapshot that already holds the drop, would fail the start-up."""
    data_dir = tmp_path / "data"
    with _running("--data-dir", str(data_dir), end="clean stop") as (_, s):  # snapshot 1: both tables
        s.execute(CREATE_KS)
        s.execute("CREATE TABLE ks.gone (p int PRIMARY KEY, v text)")
        s.execute("CREATE TABLE ks.kept (p int PRIMARY KEY, v text)")
    with _running("--data-dir", str(data_dir), end="clean stop") as (_, s):  # snapshot 2 renamed in place ...
        s.execute("INSERT INTO ks.gone (p, v) VALUES (1, 'a')")
        s.execute("INSERT INTO ks.kept (p, v) VALUES (1, 'a')")
        s.execute("DROP TABLE ks.gone")
        journal_before_snapshot = (data_dir / "journal.bin").read_bytes()
    (data_dir / "journal.bin").write_bytes(journal_before_snapshot)  # ... and the crash came before the emptying
    with _running("--data-dir", str(data_dir)) as (_, s):
        assert [tuple(r) for r in s.execute("SELECT p, v FROM ks.kept")] == [(1, "a")]


def test_crash_right_after_the_snapshot_rename_does_not_replay_the_change_feed_twice(tmp_path: Path) -> None:
    """Same crash window, without a DROP: the journal's upserts must not be applied a second time over the snapshot
    (each would record a new change-feed entry), or a reader holding the continuation it was handed before the stop
    gets rows that did not change again."""
    data_dir = tmp_path / "data"
    with _running("--data-dir", str(data_dir), end="clean stop") as (_, s):
        s.execute(CREATE_KS)
        s.execute("CREATE TABLE ks.t (p int PRIMARY KEY, v text)")
        for p in range(3):
            s.execute("INSERT INTO ks.t (p, v) VALUES (%s, 'a')", (p,))
        page = s.execute(SimpleStatement(FEED.format("t"), fetch_size=100))
        assert sorted(r.p for r in page.current_rows) == [0, 1, 2]
        continuation = page.paging_state
        journal_before_snapshot = (data_dir / "journal.bin").read_bytes()
    (data_dir / "journal.bin").write_bytes(journal_before_snapshot)
    with _running("--data-dir", str(data_dir)) as (_, s):
        page = s.execute(SimpleStatement(FEED.format("t"), fetch_size=100), paging_state=continuation)
        assert [r.p for r in page.current_rows] == []  # nothing changed since the continuation


def test_a_second_emulator_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    """Two emulators on one --data-dir would both append to one journal.bin, and each clean stop would write a
    snapshot of its own memory only and empty the journal, losing the writes the other one acknowledged. The second
    is refused at start (exit 2, an error naming --data-dir); after the first stops, the directory is free again."""
    data_dir = tmp_path / "data"
    with _running("--data-dir", str(data_dir), end="clean stop") as (_, s):
        s.execute(CREATE_KS)
        s.execute("CREATE TABLE ks.t (p int PRIMARY KEY, v text)")
        second = subprocess.run(
            [sys.executable, "-m", "emulators.cassandra", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=30)
        assert second.returncode == 2
        assert f"error: --data-dir {data_dir} is in use by another emulator" in second.stderr
        with pytest.raises(LaunchError):
            start_cassandra_emulator("--data-dir", str(data_dir))
        s.execute("INSERT INTO ks.t (p, v) VALUES (1, 'acknowledged by the first')")
    with _running("--data-dir", str(data_dir)) as (_, s):
        assert [r.p for r in s.execute("SELECT p FROM ks.t")] == [1]


def _three_upserts_then_kill(data_dir: Path) -> None:
    with _running("--data-dir", str(data_dir), end="kill") as (_, s):
        s.execute(CREATE_KS)
        s.execute("CREATE TABLE ks.t (p int PRIMARY KEY, v text)")
        for p in range(1, 4):
            s.execute("INSERT INTO ks.t (p, v) VALUES (%s, 'x')", (p,))


def _refused_start(data_dir: Path) -> str:
    """Start an emulator on ``data_dir`` that must refuse to: its stderr."""
    run = subprocess.run([sys.executable, "-m", "emulators.cassandra", "--host", "127.0.0.1", "--port", "0",
                          "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, run.stderr
    return run.stderr


@pytest.mark.parametrize("damage", ["body", "crc", "length"])
def test_a_damaged_record_inside_the_journal_stops_the_start_and_destroys_nothing(tmp_path: Path, damage: str) -> None:
    """A damaged record followed by whole ones is not a crash mid-append: cutting the journal there would delete
    every acknowledged write after it. The start is refused, naming the file and the byte, and the file is left as
    it is. ``body``: its pickle damaged; ``crc``: damage that still unpickles (a flipped value byte); ``length``: its
    length running past the end of the file, with whole records after it."""
    data_dir = tmp_path / "data"
    _three_upserts_then_kill(data_dir)
    journal = data_dir / "journal.bin"
    raw = bytearray(journal.read_bytes())
    starts = _record_starts(bytes(raw))
    assert len(starts) == 5  # CK, CT, three upserts
    damaged = starts[3]  # the second upsert
    if damage == "body":
        raw[damaged + 4] = 0x00
    elif damage == "crc":
        raw[raw.index(b"x", damaged, starts[4])] = ord("y")
    else:
        struct.pack_into(">I", raw, damaged, 1 << 30)
    journal.write_bytes(bytes(raw))
    stderr = _refused_start(data_dir)
    assert f"{journal} is damaged at byte {damaged} of {len(raw)}" in stderr
    assert journal.read_bytes() == raw, "the damaged journal was changed"
    journal.write_bytes(raw[:damaged])  # what the error says to do, to keep the records before
    with _running("--data-dir", str(data_dir)) as (_, s):
        assert sorted(r.p for r in s.execute("SELECT p FROM ks.t")) == [1]


def test_a_torn_last_record_is_dropped_and_kept_aside(tmp_path: Path) -> None:
    """A crash mid-append leaves a record cut short at the very end: it is dropped (the write was never
    acknowledged), its bytes are kept in journal.torn-*.bin, and the records before it load."""
    data_dir = tmp_path / "data"
    _three_upserts_then_kill(data_dir)
    journal = data_dir / "journal.bin"
    raw = journal.read_bytes()
    last = _record_starts(raw)[-1]
    torn = raw[last:len(raw) - 3]
    journal.write_bytes(raw[:last] + torn)
    with _running("--data-dir", str(data_dir), end="kill") as (_, s):
        assert sorted(r.p for r in s.execute("SELECT p FROM ks.t")) == [1, 2]
    assert journal.read_bytes() == raw[:last]
    assert [p.read_bytes() for p in data_dir.glob("journal.torn-*.bin")] == [torn]


def _as_legacy_journal(raw: bytes) -> bytes:
    """The same records as journals were written before the CRC: ``[4-byte length][pickle]``."""
    out = b""
    for start in _record_starts(raw):
        (n,) = struct.unpack_from(">I", raw, start)
        body = raw[start + 4 + 14:start + 4 + n]  # without "SJ", the CRC and the sequence number
        out += struct.pack(">I", len(body)) + body
    return out


def test_a_journal_of_before_the_crc_is_still_read(tmp_path: Path) -> None:
    """The local stack's data directory may hold a journal written before records had a CRC and a sequence number:
    it is replayed (and new records are appended after it); after the next clean stop its records are in the
    snapshot, and a copy of it put back (the crash between the snapshot's rename and the journal's emptying) is
    not applied again."""
    data_dir = tmp_path / "data"
    _three_upserts_then_kill(data_dir)
    journal = data_dir / "journal.bin"
    legacy = _as_legacy_journal(journal.read_bytes())
    journal.write_bytes(legacy)
    with _running("--data-dir", str(data_dir), end="kill") as (_, s):
        assert sorted(r.p for r in s.execute("SELECT p FROM ks.t")) == [1, 2, 3]
        s.execute("INSERT INTO ks.t (p, v) VALUES (4, 'x')")
    with _running("--data-dir", str(data_dir), end="clean stop") as (_, s):
        assert sorted(r.p for r in s.execute("SELECT p FROM ks.t")) == [1, 2, 3, 4]
        journal_before_snapshot = journal.read_bytes()
    journal.write_bytes(journal_before_snapshot)
    with _running("--data-dir", str(data_dir)) as (_, s):
        page = s.execute(SimpleStatement(FEED.format("t"), fetch_size=100))
        assert sorted(r.p for r in page.current_rows) == [1, 2, 3, 4]  # one change-feed entry each
