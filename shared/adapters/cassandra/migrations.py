"""Versioned, idempotent Cassandra schema migrations (``python -m sluice migrate cassandra``).

Each migration is a list of CQL statements that are safe to run again
(``IF NOT EXISTS``) and of columns added only where missing; applied versions
are recorded in ``schema_migrations``, each only after its step succeeded, so a second run does nothing. The
keyspace and the time-bucket layout come from settings; the layout is recorded in ``sluice_meta`` at the first
migration and a later run with a different layout is refused, because readers would miss rows.

Two runners may apply the same migration at once (two deployments' migrate Jobs, a CLI run beside the Job), and
there is no lock: each step tolerates having been done by the other meanwhile. A keyspace, table or column the
server refuses to create because it now exists, with the intended type, counts as created (what exists is read
again after the error; the error's text is not matched), and the layout is recorded with a lightweight
transaction, so of two first runs with different layouts one records its own and the other is refused.
Nothing here runs at import time. The tables are explained in docs/data-model.md.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cassandra import ConfigurationException, InvalidRequest
from cassandra.cluster import Session

from shared.adapters.cassandra.query import applied, translated
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
    Migration(
        5,
        "ingest audit runs: keyed by first and last sequence number, so overlapping runs keep a row each",
        (
            # ingest_audit was keyed by first_sequence alone: a batch delivered again cut shorter overwrote the
            # run of the longer one. A primary key cannot be altered, so the runs go to a new table; the old one is
            # still read (see shared/adapters/cassandra/audit.py).
            """CREATE TABLE IF NOT EXISTS {ks}.ingest_audit_runs (
    eh_partition text, block bigint, first_sequence bigint, last_sequence bigint,
    stored int, dead_lettered int, duplicate int, recorded_at timestamp,
    PRIMARY KEY ((eh_partition, block), first_sequence, last_sequence)
)""",
        ),
    ),
)


# A schema change is control-plane work (Cosmos DB provisions a container per table) and the driver answers it
# only after its schema agreement check (up to 10 s by default): the data-request timeout
# (SLUICE_CASSANDRA_REQUEST_TIMEOUT_SECONDS, 10 s) is too short for it on a busy server.
DDL_TIMEOUT_SECONDS = 60.0

# What a server answers a schema change that conflicts with the schema as it now is (Cassandra: InvalidRequest for
# an existing column, AlreadyExists, a ConfigurationException, for an existing keyspace or table).
SCHEMA_CONFLICTS = (InvalidRequest, ConfigurationException)
_CREATE = re.compile(r"CREATE (KEYSPACE|TABLE) IF NOT EXISTS (\w+)(?:\.(\w+))?")


def apply_migrations(session: Session, settings: CassandraSettings) -> list[int]:
    """Create the keyspace and apply every migration not yet applied; returns the versions applied now."""
    ks = settings.keyspace
    replication = json.dumps(settings.replication).replace('"', "'")
    timeout = max(DDL_TIMEOUT_SECONDS, settings.request_timeout_seconds)

    def ddl(statement: str) -> None:
        _create(session, statement, timeout=timeout)

    ddl(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}")
    ddl(f"CREATE TABLE IF NOT EXISTS {ks}.schema_migrations "
        "(version int PRIMARY KEY, description text, applied_at timestamp)")
    ddl(f"CREATE TABLE IF NOT EXISTS {ks}.sluice_meta (key text PRIMARY KEY, value text)")
    _check_layout(session, settings)
    done = {row.version for row in session.execute(f"SELECT version FROM {ks}.schema_migrations")}
    applied_now = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            ddl(statement.format(ks=ks))
        for table, column, cql_type in migration.columns:
            _add_column(session, ks, table, column, cql_type, timeout=timeout)
        session.execute(
            f"INSERT INTO {ks}.schema_migrations (version, description, applied_at) VALUES (%s, %s, %s)",
            (migration.version, migration.description, datetime.now(UTC)),
        )
        logger.info("applied Cassandra migration %d: %s", migration.version, migration.description)
        applied_now.append(migration.version)
    return applied_now


def _create(session: Session, statement: str, *, timeout: float) -> None:
    """Run a schema statement; a ``CREATE ... IF NOT EXISTS`` refused because another runner created the same
    keyspace or table meanwhile counts as done, when the keyspace or table does exist once read again."""
    try:
        session.execute(statement, timeout=timeout)
    except SCHEMA_CONFLICTS:
        created = _CREATE.match(statement)
        if created is None:
            raise
        kind, keyspace, table = created.groups()
        if not _exists(session, kind, keyspace, table):
            raise
        logger.info("%s %s was created by another runner meanwhile", kind.lower(), created.group(0).split()[-1])


def _exists(session: Session, kind: str, keyspace: str, table: str | None) -> bool:
    if kind == "KEYSPACE":
        return session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                               (keyspace,)).one() is not None
    return session.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s AND table_name = %s",
                           (keyspace, table)).one() is not None


def _add_column(session: Session, keyspace: str, table: str, column: str, cql_type: str, *, timeout: float) -> None:
    """Add ``column`` where ``table`` lacks it. Added by another runner between the check and the ``ALTER``, it
    counts as added when it is there with the intended type; with another type it is refused: readers would fail."""
    present = _columns(session, keyspace, table)
    if column not in present:
        try:
            session.execute(f"ALTER TABLE {keyspace}.{table} ADD {column} {cql_type}", timeout=timeout)
            return
        except SCHEMA_CONFLICTS:
            present = _columns(session, keyspace, table)
            if column not in present:
                raise
            logger.info("%s.%s.%s was added by another runner meanwhile", keyspace, table, column)
    if _same_type(present[column], cql_type):
        return
    raise ConfigurationError(f"{keyspace}.{table}.{column} is of type {present[column]}; the migration adds it as "
                             f"{cql_type}. Drop the column (or correct infra/cassandra-tables.json), then migrate "
                             "again.")


def _same_type(found: str, wanted: str) -> bool:
    return found.replace(" ", "").lower() == wanted.replace(" ", "").lower()


def _columns(session: Session, keyspace: str, table: str) -> dict[str, str]:
    """The table's columns and their CQL types."""
    rows = session.execute("SELECT column_name, type FROM system_schema.columns "
                           "WHERE keyspace_name = %s AND table_name = %s", (keyspace, table))
    return {row.column_name: row.type for row in rows}


def _check_layout(session: Session, settings: CassandraSettings) -> None:
    """Record the bucket layout the settings ask for, or refuse them when another one is recorded. The write is
    conditional (``IF NOT EXISTS``): of two first runs started at once with different layouts, the one whose write
    lost reads the other's back and is refused, where a read then a plain write let both pass."""
    ks = settings.keyspace
    wanted = _layout(settings)
    if applied(session.execute(f"INSERT INTO {ks}.sluice_meta (key, value) VALUES ('bucket_layout', %s) "
                               "IF NOT EXISTS", (wanted,))):
        return
    recorded = _recorded_layout(session, settings)
    if recorded != wanted:
        _refuse_layout(settings, recorded, wanted)


def check_recorded_layout(session: Session, settings: CassandraSettings) -> None:
    """Refuse settings whose bucket layout differs from the one the migration recorded (a worker built with another
    one would write and read other partitions, hiding the rows already stored). Reads only: a keyspace not yet
    migrated (no keyspace, table or layout) passes, and the migration records the layout."""
    wanted = _layout(settings)
    with translated("reading the recorded bucket layout"):  # a store that cannot answer is an outage
        try:
            recorded = _recorded_layout(session, settings)
        except InvalidRequest:  # no such keyspace or table: not migrated yet
            return
    if recorded is not None and recorded != wanted:
        _refuse_layout(settings, recorded, wanted)


def _layout(settings: CassandraSettings) -> str:
    return json.dumps({"bucket_seconds": settings.bucket_seconds, "shards": settings.shards}, sort_keys=True)


def _recorded_layout(session: Session, settings: CassandraSettings) -> str | None:
    row = session.execute(f"SELECT value FROM {settings.keyspace}.sluice_meta WHERE key = 'bucket_layout'",
                          timeout=settings.request_timeout_seconds).one()
    return None if row is None else str(row.value)


def _refuse_layout(settings: CassandraSettings, recorded: str | None, wanted: str) -> None:
    raise ConfigurationError(
        f"keyspace {settings.keyspace} was created with bucket layout {recorded}; "
        f"settings ask for {wanted}. Changing SLUICE_CASSANDRA_BUCKET_SECONDS or SLUICE_CASSANDRA_SHARDS would "
        "hide existing rows."
    )
