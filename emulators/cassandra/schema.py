"""Keyspaces, tables and columns: the schema the emulator serves and reports.

The same objects answer ``system_schema`` queries (so the driver's
``cluster.metadata`` is truthful) and drive statement planning. Each change
bumps :attr:`Catalog.version`, reported as ``schema_version`` in
``system.local``, which the driver polls for schema agreement after DDL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from .errors import ServerError
from .types import CqlType

SYSTEM_KEYSPACES = ("system", "system_schema", "system_auth", "system_distributed", "system_traces")
DEFAULT_TABLE_OPTIONS: dict[str, object] = {
    "bloom_filter_fp_chance": 0.01,
    "caching": {"keys": "ALL", "rows_per_partition": "NONE"},
    "comment": "",
    "compaction": {"class": "org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy",
                   "max_threshold": "32", "min_threshold": "4"},
    "compression": {"chunk_length_in_kb": "64", "class": "org.apache.cassandra.io.compress.LZ4Compressor"},
    "crc_check_chance": 1.0,
    "dclocal_read_repair_chance": 0.1,
    "default_time_to_live": 0,
    "extensions": {},
    "gc_grace_seconds": 864000,
    "max_index_interval": 2048,
    "memtable_flush_period_in_ms": 0,
    "min_index_interval": 128,
    "read_repair_chance": 0.0,
    "speculative_retry": "99PERCENTILE",
}
COSMOS_TABLE_OPTIONS = (
    "cosmosdb_provisioned_throughput",
    "cosmosdb_autoscale_max_throughput",
    "cosmosdb_cell_level_timestamp",
    "cosmosdb_cell_level_timestamp_tombstones",
    "cosmosdb_cell_level_timetolive",
    "analytical_storage_time_to_live",
)


@dataclass
class Column:
    name: str
    type: CqlType
    kind: str  # partition_key | clustering | regular
    position: int  # index within its kind (-1 for regular columns, as system_schema reports)
    reversed: bool = False
    slot: int = -1  # index of a regular column in a row's cell list


@dataclass
class Table:
    keyspace: str
    name: str
    id: uuid.UUID
    partition_key: list[Column]
    clustering: list[Column]
    regular: list[Column]
    options: dict[str, object] = field(default_factory=dict)
    virtual: bool = False

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        for slot, col in enumerate(self.regular):
            col.slot = slot
        self.columns: dict[str, Column] = {c.name: c for c in self.all_columns()}
        self.key_names = [c.name for c in self.partition_key]
        self.clustering_names = [c.name for c in self.clustering]

    def all_columns(self) -> list[Column]:
        """Columns in ``SELECT *`` order: partition key, clustering, then the others by name."""
        return [*self.partition_key, *self.clustering, *sorted(self.regular, key=lambda c: c.name)]

    @property
    def default_ttl(self) -> int:
        ttl = self.options.get("default_time_to_live", 0)
        if isinstance(ttl, int):  # ddl._options admits integers only; int(): a bool counts as 0 or 1
            return int(ttl)
        raise ServerError(f"default_time_to_live of {self.keyspace}.{self.name} is not an integer: {ttl!r}")

    def column(self, name: str) -> Column:
        col = self.columns.get(name)
        if col is None:
            raise KeyError(name)
        return col


@dataclass
class Keyspace:
    name: str
    replication: dict[str, str]
    durable_writes: bool = True
    tables: dict[str, Table] = field(default_factory=dict)


class Catalog:
    """Every keyspace and table; user keyspaces only (system tables are virtual, see :mod:`.system_tables`)."""

    def __init__(self) -> None:
        self.keyspaces: dict[str, Keyspace] = {}
        self.version = uuid.uuid4()

    def bump(self) -> None:
        self.version = uuid.uuid4()

    def table(self, keyspace: str, name: str) -> Table | None:
        ks = self.keyspaces.get(keyspace)
        return ks.tables.get(name) if ks else None
