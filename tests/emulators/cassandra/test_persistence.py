"""--data-dir: schema, rows, tombstones and TTLs survive a clean stop and a crash; without it nothing is kept."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Cluster, Session

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
