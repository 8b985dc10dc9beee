"""Versioned, idempotent PostgreSQL migrations (``python -m sluice migrate postgres``).

Migrations are the files ``sql/NNN_name.sql`` next to this module, applied in
version order, each in its own transaction together with its row in
``schema_migrations`` (version, name, sha256, applied_at): a migration is either
fully applied and recorded, or not at all. A session advisory lock serialises
concurrent runners (two deploy slots, a CLI and a test), so a second runner
waits, then finds nothing left to do. The checksum of every applied file is
compared with the file on disk: editing a migration that already ran is refused
(write a new one instead), because databases would silently differ.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from shared.exceptions import ConfigurationError

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).with_name("sql")
ADVISORY_LOCK_KEY = 0x5_1C_E0_01  # "sluice migrations"; any constant shared by every runner
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class SqlMigration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = SQL_DIR) -> list[SqlMigration]:
    """Every ``NNN_name.sql`` file in version order; refuses duplicate versions and stray names."""
    found: dict[int, SqlMigration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ConfigurationError(f"migration file {path.name} is not named NNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ConfigurationError(f"migration version {version} appears twice ({found[version].name}, {path.name})")
        found[version] = SqlMigration(version, match.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def apply_migrations(conn: psycopg.Connection, directory: Path = SQL_DIR) -> list[int]:
    """Apply every migration not yet recorded; returns the versions applied now (empty when up to date).

    ``conn`` must not be inside a transaction; it is left in its original
    autocommit mode. Raises :class:`ConfigurationError` when an applied
    migration's file changed, and lets ``psycopg.Error`` through when a
    migration fails (that migration is rolled back, earlier ones stay).
    """
    migrations = discover(directory)
    previous_autocommit = conn.autocommit
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ConfigurationError("apply_migrations needs a connection outside any transaction")
    conn.autocommit = True
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            return _apply(conn, migrations)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    finally:
        conn.autocommit = previous_autocommit


def _apply(conn: psycopg.Connection, migrations: list[SqlMigration]) -> list[int]:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    done = {row[0]: (row[1], row[2]) for row in conn.execute("SELECT version, name, checksum FROM schema_migrations")}
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            name, checksum = done[migration.version]
            if checksum != migration.checksum:
                raise ConfigurationError(
                    f"PostgreSQL migration {migration.version:03d}_{name}.sql changed after it was applied; "
                    "add a new migration instead of editing an applied one"
                )
            continue
        with conn.transaction():
            conn.execute(migration.sql.encode(), prepare=False)  # no parameters, unprepared: every statement runs
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
        logger.info("applied PostgreSQL migration %03d_%s", migration.version, migration.name)
        applied.append(migration.version)
    return applied
