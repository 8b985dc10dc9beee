"""The system tables the driver reads, generated from the live schema on each query.

``system.local`` / ``system.peers`` describe one node (release_version 3.11.x,
so the driver uses its 3.x schema parser and falls back from
``system.peers_v2``, which is answered "unconfigured table" as 3.11 does).
``system_schema.*`` lists every keyspace, table and column truthfully, including
these system tables themselves.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable

from .keys import join_key, make_row_id, make_sort_key
from .murmur3 import murmur3_token
from .schema import DEFAULT_TABLE_OPTIONS, Catalog, Column, Table
from .store import TableData
from .types import parse_type

RELEASE_VERSION = "3.11.17"
CQL_VERSION = "3.4.4"
CLUSTER_NAME = "Sluice Cosmos Cassandra Emulator"
DATA_CENTER = "datacenter1"
RACK = "rack1"
NODE_TOKEN = "0"
_NS = uuid.UUID("6f1b8d2e-5a0c-4c5e-9a49-0e3c6f2d9b10")


def _table(keyspace: str, name: str, pk: list[tuple[str, str]], ck: list[tuple[str, str]],
           regular: list[tuple[str, str]]) -> Table:
    return Table(
        keyspace=keyspace, name=name, id=uuid.uuid5(_NS, f"{keyspace}.{name}"),
        partition_key=[Column(n, parse_type(t), "partition_key", i) for i, (n, t) in enumerate(pk)],
        clustering=[Column(n, parse_type(t), "clustering", i) for i, (n, t) in enumerate(ck)],
        regular=[Column(n, parse_type(t), "regular", -1) for n, t in regular],
        options=dict(DEFAULT_TABLE_OPTIONS), virtual=True,
    )


FMAP = "frozen<map<text, text>>"
TABLE_OPTION_COLUMNS = [
    ("bloom_filter_fp_chance", "double"), ("caching", FMAP), ("cdc", "boolean"), ("comment", "text"),
    ("compaction", FMAP), ("compression", FMAP), ("crc_check_chance", "double"),
    ("dclocal_read_repair_chance", "double"), ("default_time_to_live", "int"),
    ("extensions", "frozen<map<text, blob>>"), ("gc_grace_seconds", "int"), ("id", "uuid"),
    ("max_index_interval", "int"), ("memtable_flush_period_in_ms", "int"), ("min_index_interval", "int"),
    ("read_repair_chance", "double"), ("speculative_retry", "text"),
]

SYSTEM_TABLES: dict[tuple[str, str], Table] = {}
for _t in [
    _table("system", "local", [("key", "text")], [], [
        ("bootstrapped", "text"), ("broadcast_address", "inet"), ("cluster_name", "text"), ("cql_version", "text"),
        ("data_center", "text"), ("gossip_generation", "int"), ("host_id", "uuid"), ("listen_address", "inet"),
        ("native_protocol_version", "text"), ("partitioner", "text"), ("rack", "text"),
        ("release_version", "text"), ("rpc_address", "inet"), ("schema_version", "uuid"),
        ("thrift_version", "text"), ("tokens", "set<text>"), ("truncated_at", "map<uuid, blob>")]),
    _table("system", "peers", [("peer", "inet")], [], [
        ("data_center", "text"), ("host_id", "uuid"), ("preferred_ip", "inet"), ("rack", "text"),
        ("release_version", "text"), ("rpc_address", "inet"), ("schema_version", "uuid"), ("tokens", "set<text>")]),
    _table("system_schema", "keyspaces", [("keyspace_name", "text")], [], [
        ("durable_writes", "boolean"), ("replication", FMAP)]),
    _table("system_schema", "tables", [("keyspace_name", "text")], [("table_name", "text")],
           [("flags", "frozen<set<text>>"), *TABLE_OPTION_COLUMNS]),
    _table("system_schema", "columns", [("keyspace_name", "text")], [("table_name", "text"), ("column_name", "text")],
           [("clustering_order", "text"), ("column_name_bytes", "blob"), ("kind", "text"), ("position", "int"),
            ("type", "text")]),
    _table("system_schema", "dropped_columns", [("keyspace_name", "text")],
           [("table_name", "text"), ("column_name", "text")], [("dropped_time", "timestamp"), ("type", "text")]),
    _table("system_schema", "types", [("keyspace_name", "text")], [("type_name", "text")],
           [("field_names", "frozen<list<text>>"), ("field_types", "frozen<list<text>>")]),
    _table("system_schema", "functions", [("keyspace_name", "text")],
           [("function_name", "text"), ("argument_types", "frozen<list<text>>")],
           [("argument_names", "frozen<list<text>>"), ("body", "text"), ("called_on_null_input", "boolean"),
            ("language", "text"), ("return_type", "text")]),
    _table("system_schema", "aggregates", [("keyspace_name", "text")],
           [("aggregate_name", "text"), ("argument_types", "frozen<list<text>>")],
           [("final_func", "text"), ("initcond", "text"), ("return_type", "text"), ("state_func", "text"),
            ("state_type", "text")]),
    _table("system_schema", "triggers", [("keyspace_name", "text")], [("table_name", "text"), ("trigger_name", "text")],
           [("options", FMAP)]),
    _table("system_schema", "indexes", [("keyspace_name", "text")], [("table_name", "text"), ("index_name", "text")],
           [("kind", "text"), ("options", FMAP)]),
    _table("system_schema", "views", [("keyspace_name", "text")], [("view_name", "text")],
           [("base_table_id", "uuid"), ("base_table_name", "text"), ("include_all_columns", "boolean"),
            ("where_clause", "text"), *TABLE_OPTION_COLUMNS]),
]:
    SYSTEM_TABLES[(_t.keyspace, _t.name)] = _t

SYSTEM_KEYSPACE_REPLICATION = {
    "system": {"class": "org.apache.cassandra.locator.LocalStrategy"},
    "system_schema": {"class": "org.apache.cassandra.locator.LocalStrategy"},
}


class SystemTables:
    """Builds the rows of a system table on demand."""

    def __init__(self, catalog: Catalog, host_id: uuid.UUID, address: str) -> None:
        self.catalog = catalog
        self.host_id = host_id
        try:
            addr = ipaddress.ip_address(address)
            if addr.is_unspecified:
                addr = ipaddress.ip_address("127.0.0.1")
        except ValueError:
            addr = ipaddress.ip_address("127.0.0.1")
        self.address = addr
        self._builders: dict[tuple[str, str], Callable[[], list[dict[str, object]]]] = {
            ("system", "local"): self._local,
            ("system_schema", "keyspaces"): self._keyspaces,
            ("system_schema", "tables"): self._tables,
            ("system_schema", "columns"): self._columns,
        }

    def table(self, keyspace: str, name: str) -> Table | None:
        return SYSTEM_TABLES.get((keyspace, name))

    def data(self, table: Table) -> TableData:
        builder = self._builders.get((table.keyspace, table.name))
        rows = builder() if builder else []
        data = TableData(make_sort_key(table.clustering), make_row_id(table.clustering))
        for values in rows:
            pk = join_key([c.type.serialize(values[c.name]) for c in table.partition_key])
            ck = join_key([c.type.serialize(values[c.name]) for c in table.clustering]) if table.clustering else b""
            row = data.partition_for_write(pk, murmur3_token(pk)).get_or_create(ck)
            row.touch(0, None)
            for col in table.regular:
                v = values.get(col.name)
                if v is not None:
                    row.write(col.slot, col.type.serialize(v), 0, None)
        return data

    # -- builders --------------------------------------------------------------
    def _local(self) -> list[dict[str, object]]:
        return [{
            "key": "local", "bootstrapped": "COMPLETED", "broadcast_address": self.address,
            "cluster_name": CLUSTER_NAME, "cql_version": CQL_VERSION, "data_center": DATA_CENTER,
            "gossip_generation": 1, "host_id": self.host_id, "listen_address": self.address,
            "native_protocol_version": "4", "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "rack": RACK, "release_version": RELEASE_VERSION, "rpc_address": self.address,
            "schema_version": self.catalog.version, "thrift_version": "20.1.0", "tokens": {NODE_TOKEN},
        }]

    def _all_tables(self) -> list[Table]:
        tables = list(SYSTEM_TABLES.values())
        for ks in self.catalog.keyspaces.values():
            tables.extend(ks.tables.values())
        return tables

    def _keyspaces(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            {"keyspace_name": name, "durable_writes": True, "replication": repl}
            for name, repl in SYSTEM_KEYSPACE_REPLICATION.items()]
        for ks in self.catalog.keyspaces.values():
            rows.append({"keyspace_name": ks.name, "durable_writes": ks.durable_writes,
                         "replication": dict(ks.replication)})
        return rows

    def _tables(self) -> list[dict[str, object]]:
        rows = []
        for t in self._all_tables():
            opts = {**DEFAULT_TABLE_OPTIONS, **{k: v for k, v in t.options.items() if k in DEFAULT_TABLE_OPTIONS}}
            row: dict[str, object] = {"keyspace_name": t.keyspace, "table_name": t.name, "flags": {"compound"},
                                      "id": t.id, "cdc": None}
            for name, _ in TABLE_OPTION_COLUMNS:
                if name in opts:
                    row[name] = opts[name]
            row["default_time_to_live"] = t.default_ttl
            row["id"] = t.id
            rows.append(row)
        return rows

    def _columns(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for t in self._all_tables():
            for col in t.all_columns():
                rows.append({
                    "keyspace_name": t.keyspace, "table_name": t.name, "column_name": col.name,
                    "clustering_order": ("desc" if col.reversed else "asc") if col.kind == "clustering" else "none",
                    "column_name_bytes": col.name.encode(), "kind": col.kind,
                    "position": col.position, "type": col.type.cql(),
                })
        return rows
