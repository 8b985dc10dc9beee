"""Versioned, idempotent Cassandra schema migrations (``python -m sluice migrate cassandra``).

Each migration is a list of CQL statements that are safe to run again
(``IF NOT EXISTS``) and of columns added only where missing; applied versions
are recorded in ``schema_migrations``, so a second run does nothing. The keyspace and the time-bucket layout come from
settings; the layout is recorded in ``sluice_meta`` at the first migration and a
later run with a different layout is refused, because readers would miss rows.
Nothing here runs at import time. The tables are explained in docs/data-model.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from cassandra.cluster import Session

from shared.exceptions import ConfigurationError
from shared.settings import CassandraSettings

logger = logging.getLogger(__name__)

# Columns every event table carries, so any of them can answer for an event.
EVENT_COLUMNS = """
    event_type text,
    severity text,
    critical boolean,
    measurements map<text, double>,
    attributes map<text, text>,
    schema_version int,
    eh_partition text,
    eh_offset text,
    eh_sequence_number bigint,
    enqueued_time timestamp"""


@dataclass(frozen=True)
class Migration:
    """``statements`` are run as they are; each of ``columns`` (table, column, CQL type) is added to its table
    where the table lacks it (``ALTER TABLE ... ADD`` has no ``IF NOT EXISTS`` on every server we run on, and a
    table Bicep created from ``infra/cassandra-tables.json`` has the column already)."""

    version: int
    description: str
    statements: tuple[str, ...]
    columns: tuple[tuple[str, str, str], ...] = ()


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "event tables, latest state, critical events, feed state",
        (
            f"""CREATE TABLE IF NOT EXISTS {{ks}}.events_by_device (
    device_id text, day date, event_time timestamp, event_id uuid,{EVENT_COLUMNS},
    PRIMARY KEY ((device_id, day), event_time, event_id)
) WITH CLUSTERING ORDER BY (event_time DESC, event_id ASC)""",
            f"""CREATE TABLE IF NOT EXISTS {{ks}}.events_by_id (
    event_id uuid PRIMARY KEY, device_id text, event_time timestamp,{EVENT_COLUMNS}
)""",
            f"""CREATE TABLE IF NOT EXISTS {{ks}}.device_latest (
    device_id text PRIMARY KEY, event_id uuid, event_time timestamp,{EVENT_COLUMNS}
)""",
            f"""CREATE TABLE IF NOT EXISTS {{ks}}.events_by_time_bucket (
    bucket timestamp, shard int, event_time timestamp, event_id uuid, device_id text,{EVENT_COLUMNS},
    PRIMARY KEY ((bucket, shard), event_time, event_id)
)""",
            f"""CREATE TABLE IF NOT EXISTS {{ks}}.events_by_arrival_bucket (
    bucket timestamp, shard int, enqueued_at timestamp, event_id uuid, device_id text,
    event_time timestamp,{EVENT_COLUMNS},
    PRIMARY KEY ((bucket, shard), enqueued_at, event_id)
)""",
            f"""CREATE TABLE IF NOT EXISTS {{ks}}.critical_events_by_device (
    device_id text, event_time timestamp, event_id uuid,{EVENT_COLUMNS},
    PRIMARY KEY ((device_id), event_time, event_id)
) WITH CLUSTERING ORDER BY (event_time DESC, event_id ASC)""",
            """CREATE TABLE IF NOT EXISTS {ks}.feed_state (
    name text PRIMARY KEY, start_time timestamp, paging_state blob, watermark timestamp,
    version bigint, updated_at timestamp
)""",
        ),
    ),
    Migration(
        2,
        "ingest audit: the runs of Event Hubs sequence numbers ingest accounted for, by partition and block",
        (
            # One partition per Event Hubs partition and block of 10,000 sequence numbers, so an audit reads a
            # range in a few partitions and a partition stays small (see shared/adapters/cassandra/audit.py).
            """CREATE TABLE IF NOT EXISTS {ks}.ingest_audit (
    eh_partition text, block bigint, first_sequence bigint, last_sequence bigint,
    stored int, dead_lettered int, duplicate int, recorded_at timestamp,
    PRIMARY KEY ((eh_partition, block), first_sequence)
)""",
        ),
    ),
    Migration(
        3,
        "delayed batches: ingest's note of a batch stored long after its enqueue, for enrichment's late scan",
        (
            # One partition per bucket of the time ingest wrote the note (the layout's bucket width), so the
            # late scan reads the few buckets since its last position (see shared/adapters/cassandra/delays.py).
            """CREATE TABLE IF NOT EXISTS {ks}.delayed_batches (
    bucket timestamp, written_at timestamp, eh_partition text, first_sequence bigint,
    oldest_enqueued timestamp, events int,
    PRIMARY KEY ((bucket), written_at, eh_partition, first_sequence)
)""",
        ),
    ),
    Migration(
        4,
        "change feed: how far the portable feed has taken ingest's delay notes into account",
        (),
        # Written with the watermark, so a re-read a note started continues where the last run stopped
        # (see shared/adapters/cassandra/feed.py).
        columns=(("feed_state", "noted_until", "timestamp"),),
    ),
)


# A schema change is control-plane work (Cosmos DB provisions a container per table) and the driver answers it
# only after its schema agreement check (up to 10 s by default): the data-request timeout
# (SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS, 10 s) is too short for it on a busy server.
DDL_TIMEOUT_SECONDS = 60.0


def apply_migrations(session: Session, settings: CassandraSettings) -> list[int]:
    """Create the keyspace and apply every migration not yet applied; returns the versions applied now."""
    ks = settings.keyspace
    replication = json.dumps(settings.replication).replace('"', "'")
    timeout = max(DDL_TIMEOUT_SECONDS, settings.request_timeout_seconds)

    def ddl(statement: str) -> None:
        session.execute(statement, timeout=timeout)

    ddl(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}")
    ddl(f"CREATE TABLE IF NOT EXISTS {ks}.schema_migrations "
        "(version int PRIMARY KEY, description text, applied_at timestamp)")
    ddl(f"CREATE TABLE IF NOT EXISTS {ks}.sluice_meta (key text PRIMARY KEY, value text)")
    _check_layout(session, settings)
    done = {row.version for row in session.execute(f"SELECT version FROM {ks}.schema_migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            ddl(statement.format(ks=ks))
        for table, column, cql_type in migration.columns:
            if column not in _columns(session, ks, table):
                ddl(f"ALTER TABLE {ks}.{table} ADD {column} {cql_type}")
        session.execute(
            f"INSERT INTO {ks}.schema_migrations (version, description, applied_at) VALUES (%s, %s, %s)",
            (migration.version, migration.description, datetime.now(UTC)),
        )
        logger.info("applied Cassandra migration %d: %s", migration.version, migration.description)
        applied.append(migration.version)
    return applied


def _columns(session: Session, keyspace: str, table: str) -> set[str]:
    rows = session.execute("SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s AND table_name = %s",
                           (keyspace, table))
    return {row.column_name for row in rows}


def _check_layout(session: Session, settings: CassandraSettings) -> None:
    ks = settings.keyspace
    wanted = json.dumps({"bucket_seconds": settings.bucket_seconds, "shards": settings.shards}, sort_keys=True)
    row = session.execute(f"SELECT value FROM {ks}.sluice_meta WHERE key = 'bucket_layout'").one()
    if row is None:
        session.execute(f"INSERT INTO {ks}.sluice_meta (key, value) VALUES ('bucket_layout', %s)", (wanted,))
    elif row.value != wanted:
        raise ConfigurationError(
            f"keyspace {ks} was created with bucket layout {row.value}; settings ask for {wanted}. "
            "Changing SLUICE_CASSANDRA_BUCKET_SECONDS or SLUICE_CASSANDRA_SHARDS would hide existing rows."
        )
