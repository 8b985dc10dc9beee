"""The Cassandra tables Sluice's migrations create, in the shape ``infra/cassandra-tables.json`` declares them.

Read back from a real server (the Cassandra emulator, through the driver's schema
metadata) after ``apply_migrations``, so the Bicep tables are compared with what the
migrations really make, not with a second parse of their CQL.
"""

from __future__ import annotations

from typing import Any


def declared_tables(session: Any, keyspace: str) -> dict[str, dict[str, Any]]:
    """table -> {columns: [{name, type}], partitionKeys: [{name}], clusterKeys: [{name, orderBy}]}."""
    session.cluster.refresh_schema_metadata()
    tables = session.cluster.metadata.keyspaces[keyspace].tables
    out = {}
    for name, table in tables.items():
        out[name] = {
            "columns": [{"name": c.name, "type": c.cql_type} for c in table.columns.values()],
            "partitionKeys": [{"name": c.name} for c in table.partition_key],
            "clusterKeys": [{"name": c.name, "orderBy": "Desc" if c.is_reversed else "Asc"}
                            for c in table.clustering_key],
        }
    return out
