"""Connecting with the unmodified driver: negotiation, system tables, metadata, schema agreement."""

from __future__ import annotations

import pytest
from cassandra.cluster import Cluster, Session

from sluice.launcher import Running

pytestmark = pytest.mark.timeout(60)


def test_default_cluster_negotiates_v4_and_reads_system_local(cluster: Cluster) -> None:
    s = cluster.connect()
    assert cluster.protocol_version == 4
    local = s.execute("SELECT * FROM system.local WHERE key='local'").one()
    assert local.release_version.startswith("3.11")
    assert local.partitioner == "org.apache.cassandra.dht.Murmur3Partitioner"
    assert list(s.execute("SELECT * FROM system.peers")) == []
    s.shutdown()


def test_peers_v2_is_unconfigured_as_in_3_11(cluster: Cluster) -> None:
    from cassandra import InvalidRequest
    s = cluster.connect()
    with pytest.raises(InvalidRequest, match="unconfigured table peers_v2"):
        s.execute("SELECT * FROM system.peers_v2")
    s.shutdown()


def test_metadata_is_truthful_after_ddl(session: Session, cassandra_keyspace: str) -> None:
    session.execute("CREATE TABLE events (device text, bucket int, at timestamp, seq int, body blob, "
                    "tags set<text>, PRIMARY KEY ((device, bucket), at, seq)) "
                    "WITH CLUSTERING ORDER BY (at DESC, seq ASC) AND default_time_to_live = 3600")
    meta = session.cluster.metadata
    assert session.cluster.control_connection.wait_for_schema_agreement()
    session.cluster.refresh_schema_metadata()  # the keyspace was created by the fixture, outside this driver
    table = meta.keyspaces[cassandra_keyspace].tables["events"]
    assert [c.name for c in table.partition_key] == ["device", "bucket"]
    assert [c.name for c in table.clustering_key] == ["at", "seq"]
    assert table.clustering_key[0].is_reversed and not table.clustering_key[1].is_reversed
    assert table.columns["tags"].cql_type == "set<text>"
    assert table.options["default_time_to_live"] == 3600
    assert meta.keyspaces[cassandra_keyspace].replication_strategy.replication_factor == 1


def test_schema_version_changes_with_ddl(session: Session) -> None:
    before = session.execute("SELECT schema_version FROM system.local WHERE key='local'").one().schema_version
    result = session.execute("CREATE TABLE t (k int PRIMARY KEY)")
    assert result.response_future.is_schema_agreed  # the driver checked agreement after the DDL, and it held
    after = session.execute("SELECT schema_version FROM system.local WHERE key='local'").one().schema_version
    assert before != after


def test_many_connections_and_streams(cassandra_emulator: Running, cassandra_keyspace: str) -> None:
    clusters = [Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port) for _ in range(3)]
    try:
        sessions = [c.connect(cassandra_keyspace) for c in clusters]
        sessions[0].execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
        futures = [sessions[i % 3].execute_async("INSERT INTO t (k, v) VALUES (%s, %s)", (i, i)) for i in range(300)]
        for f in futures:
            f.result()
        assert sessions[1].execute("SELECT COUNT(*) FROM t").one().count == 300
    finally:
        for c in clusters:
            c.shutdown()


def test_system_schema_is_complete_and_empty_where_cassandra_would_be(session: Session,
                                                                        cassandra_keyspace: str) -> None:
    session.execute("CREATE TABLE t (a int, b text, c bigint, v map<text, frozen<list<int>>>, PRIMARY KEY ((a, b), c))")
    for name in ("types", "functions", "aggregates", "triggers", "indexes", "views"):
        assert list(session.execute(f"SELECT * FROM system_schema.{name} WHERE keyspace_name = %s",
                                    (cassandra_keyspace,))) == []
    columns = {r.column_name: (r.kind, r.position, r.type, r.clustering_order) for r in session.execute(
        "SELECT * FROM system_schema.columns WHERE keyspace_name = %s AND table_name = 't'", (cassandra_keyspace,))}
    assert columns == {
        "a": ("partition_key", 0, "int", "none"), "b": ("partition_key", 1, "text", "none"),
        "c": ("clustering", 0, "bigint", "asc"), "v": ("regular", -1, "map<text, frozen<list<int>>>", "none")}
    tables = [r.table_name for r in session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (cassandra_keyspace,))]
    assert tables == ["t"]
    keyspaces = {r.keyspace_name for r in session.execute("SELECT keyspace_name FROM system_schema.keyspaces")}
    assert {cassandra_keyspace, "system", "system_schema"} <= keyspaces


def test_driver_metadata_follows_ddl_and_drops(session: Session, cassandra_keyspace: str) -> None:
    session.execute("CREATE TABLE gone (k int PRIMARY KEY, v text)")
    meta = session.cluster.metadata
    session.cluster.refresh_schema_metadata()
    assert "gone" in meta.keyspaces[cassandra_keyspace].tables
    session.execute("ALTER TABLE gone ADD extra int")
    session.cluster.refresh_table_metadata(cassandra_keyspace, "gone")
    assert "extra" in meta.keyspaces[cassandra_keyspace].tables["gone"].columns
    session.execute("DROP TABLE gone")
    session.cluster.refresh_schema_metadata()
    assert "gone" not in meta.keyspaces[cassandra_keyspace].tables
