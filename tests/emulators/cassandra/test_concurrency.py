"""20 concurrent clients writing 10,000 rows: nothing lost, nothing duplicated."""

from __future__ import annotations

import threading

import pytest
from cassandra.cluster import Cluster
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.query import SimpleStatement

from sluice.launcher import Running

pytestmark = pytest.mark.timeout(120)
CLIENTS = 20
ROWS = 10_000


def test_twenty_clients_write_ten_thousand_rows(cassandra_emulator: Running, cassandra_keyspace: str) -> None:
    setup = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, protocol_version=4)
    session = setup.connect(cassandra_keyspace)
    session.execute("CREATE TABLE t (shard int, seq int, writer int, PRIMARY KEY (shard, seq))")
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLIENTS)

    def client(n: int) -> None:
        pinned = {"protocol_version": 4} if n % 2 else {}  # half negotiate the version, half pin it
        cluster = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, **pinned)
        try:
            s = cluster.connect(cassandra_keyspace)
            ps = s.prepare("INSERT INTO t (shard, seq, writer) VALUES (?, ?, ?)")
            mine = [(i % 16, i, n) for i in range(n, ROWS, CLIENTS)]
            barrier.wait(timeout=60)
            results = execute_concurrent_with_args(s, ps, mine, concurrency=25, raise_on_first_error=False)
            failed = [r.result_or_exc for r in results if not r.success]
            if failed:
                errors.append(failed[0])
        except BaseException as exc:  # reported below, with the client number
            errors.append(RuntimeError(f"client {n}: {exc!r}"))
        finally:
            cluster.shutdown()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=110)
    assert not errors, errors[:3]
    rows = list(session.execute(SimpleStatement("SELECT seq, writer FROM t", fetch_size=1000)))
    setup.shutdown()
    assert len(rows) == ROWS
    assert sorted(r.seq for r in rows) == list(range(ROWS))
    assert all(r.writer == r.seq % CLIENTS for r in rows)
