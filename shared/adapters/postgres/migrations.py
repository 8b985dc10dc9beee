"""Versioned, idempotent PostgreSQL migrations (``python -m sluice migrate postgres``).

Migrations are the files ``sql/NNN_name.sql`` next to this module, applied in
version order, each in its own transaction together with its row in
``schema_migrations`` (version, name, sha256, applied_at): a migration is either
fully applied and recorded, or not at all. A session advisory lock serialises
concurrent runners (two deploy slots, a CLI and a test), so a second runner
waits, then finds nothing left to do. The checksum of every applied file is
compared with the file on disk: editing a migration that already ran is refused
(write a new one instead), because databases would silently differ. Files are
read as UTF-8 (a byte order mark is ignored and a file in another encoding is a
``ConfigurationError`` naming it).

A migration run in a transaction is sent to PostgreSQL as one ``EXECUTE`` in a
``DO`` block, so its own transaction-control statements (``BEGIN; ... COMMIT;``,
a habit from other tools: ``BEGIN``, ``START TRANSACTION``, ``COMMIT``, ``END``,
``ROLLBACK``, ``ABORT``, ``SAVEPOINT``, ``RELEASE``, ``PREPARE TRANSACTION``,
``COMMIT``/``ROLLBACK PREPARED``) are refused by PostgreSQL's own parser
("EXECUTE of transaction commands is not implemented") instead of committing
the runner's transaction part-way, which a later failure would leave half
applied and unrecorded: the transaction is rolled back, nothing is applied or
recorded, and the refusal is a ``ConfigurationError`` naming the file (PostgreSQL
gives no position for it). No home-made SQL splitter decides what is a statement
(a column named ``begin``, ``'C:\\'``, nested ``/* */`` comments and dollar quotes
are PostgreSQL's to read). PL/pgSQL's ``EXECUTE`` also refuses a
``SELECT ... INTO new_table`` as the file's last statement ("EXECUTE of SELECT
... INTO is not implemented"): a ``ConfigurationError`` naming the file,
saying to write ``CREATE TABLE ... AS SELECT ...`` instead. A migration that
fails otherwise is a ``PermanentError`` naming it and, from PostgreSQL's
position of the error in the file (``internal_position``), its line (a lost
connection stays the driver's own error: PostgreSQL unavailable).

The runner connects to PostgreSQL itself (port 5432): through a pooler such as
PgBouncer its session advisory lock could be taken and released on different
server connections, so it refuses to run when the server process answering is
not the one it logged in to.

Each migration's transaction waits at most ``lock_timeout_seconds`` for a table
lock. A DDL statement needs an ACCESS EXCLUSIVE lock, and while it waits for one
(an enrichment window being written holds a read lock for as long as its read
from Cassandra lasts) PostgreSQL queues every later reader of the table behind
it: without a bound, the late scan and the next enrichment would block as long
as that transaction lasts. So the migration gives up its wait, rolls back, and
tries again after a growing pause; when every attempt times out it raises
``TransientError`` naming the migration (run ``migrate`` again later). An
inherited ``statement_timeout`` (a database or role default) is off for the
transaction: it would cancel that wait, or a backfill over a large table on
every run.

A migration whose first line is ``-- sluice: no transaction`` runs outside any
transaction instead (what ``CREATE INDEX CONCURRENTLY`` requires, which builds
an index without blocking the table's writes for the whole build): its
statements, separated by lines ``-- sluice: next statement``, run one by one in
autocommit, then its ``schema_migrations`` row is inserted. A failure part-way
leaves the statements before it applied and the migration unrecorded, so the
next run starts it again from its first statement: each must be safe to run
again (``IF EXISTS`` / ``IF NOT EXISTS``, and a concurrent build drops the
INVALID index a failed one leaves before building it again). Such a migration
waits for its locks without ``lock_timeout``: a concurrent build takes a SHARE
UPDATE EXCLUSIVE lock, which blocks neither readers nor writers while it waits
(and then waits for the transactions already writing the table to end), nor
``statement_timeout`` (a database or role default would cancel the build each time).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
    wait_fixed,
)

from shared.exceptions import ConfigurationError, PermanentError, TransientError

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).with_name("sql")
ADVISORY_LOCK_KEY = 0x5_1C_E0_01  # "sluice migrations"; any constant shared by every runner
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
NO_TRANSACTION = "-- sluice: no transaction"
NEXT_STATEMENT = re.compile(r"^-- sluice: next statement[ \t]*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class SqlMigration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def file(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"

    @property
    def in_transaction(self) -> bool:
        """False for a migration that must run outside a transaction (first line ``-- sluice: no transaction``)."""
        return self.sql.partition("\n")[0].strip() != NO_TRANSACTION

    @property
    def statements(self) -> list[str]:
        """The statements of a migration run outside a transaction, in order (separated by
        ``-- sluice: next statement`` lines); a migration run in a transaction is sent whole."""
        if self.in_transaction:
            return [self.sql]
        return [part.strip() for part in NEXT_STATEMENT.split(self.sql) if part.strip()]


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
        try:  # utf-8-sig: a byte order mark (Windows editors) would hide "-- sluice: no transaction"
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"migration file {path.name} is not UTF-8 ({exc}); save it as UTF-8") from exc
        found[version] = SqlMigration(version, match.group(2), text)
    return [found[v] for v in sorted(found)]


def apply_migrations(conn: psycopg.Connection, directory: Path = SQL_DIR, *, lock_timeout_seconds: float = 1.0,
                     attempts: int = 10, max_pause_seconds: float = 10.0) -> list[int]:
    """Apply every migration not yet recorded; returns the versions applied now (empty when up to date).

    ``conn`` must not be inside a transaction; it is left in its original
    autocommit mode. Raises :class:`ConfigurationError` when an applied
    migration's file changed, :class:`TransientError` naming the migration when
    it could not take its locks within ``lock_timeout_seconds`` in ``attempts``
    tries (paused 0.5 s, 1 s, 2 s... up to ``max_pause_seconds`` in between),
    :class:`ConfigurationError` for a migration with its own ``BEGIN``/``COMMIT``
    or ending in ``SELECT ... INTO`` (PostgreSQL refuses it; rolled back, nothing
    applied or recorded) or for a connection through a pooler, and :class:`PermanentError` naming the
    migration when it fails otherwise (that migration is rolled back, earlier ones
    stay). A lost connection is let through as the driver's ``psycopg.Error``.
    """
    migrations = discover(directory)
    previous_autocommit = conn.autocommit
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ConfigurationError("apply_migrations needs a connection outside any transaction")
    conn.autocommit = True
    try:
        _refuse_a_pooler(conn)
        _take_lock(conn)
        try:
            retrying = Retrying(stop=stop_after_attempt(attempts),
                                wait=wait_exponential(multiplier=0.5, max=max_pause_seconds),
                                retry=retry_if_exception_type(psycopg.errors.LockNotAvailable),
                                before_sleep=_log_lock_wait, reraise=True)
            applied = _apply(conn, migrations, retrying, int(lock_timeout_seconds * 1000))
        except BaseException:
            if not conn.broken:  # PostgreSQL releases a lost session's lock itself
                _unlock(conn)
            raise
        if not _unlock(conn):
            raise ConfigurationError("the PostgreSQL migrations' advisory lock was not held by this session when "
                                     "released: another session may have run migrations at the same time "
                                     "(a connection pooler?); run migrate against PostgreSQL directly (port 5432)")
        return applied
    finally:
        conn.autocommit = previous_autocommit


def _refuse_a_pooler(conn: psycopg.Connection) -> None:
    """Refuse a connection whose server process is not the one it logged in to (``BackendKeyData``): a pooler
    (PgBouncer) sits in between and may run the advisory lock and its release on different server connections."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    if row is None or row[0] != conn.info.backend_pid:
        raise ConfigurationError(
            "migrate reaches PostgreSQL through a connection pooler (PgBouncer): the migrations' session advisory "
            "lock needs a session of their own; run migrate against PostgreSQL directly (port 5432, not 6432)")


def _unlock(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
    return bool(row and row[0])


# How often a migrator waiting for another one asks for the lock again.
LOCK_POLL_SECONDS = 0.5


def _take_lock(conn: psycopg.Connection) -> None:
    """Take the migrators' advisory lock, waiting as long as another migrator holds it.

    Asked for again every :data:`LOCK_POLL_SECONDS` with ``pg_try_advisory_lock``, each a short statement, rather
    than waited for in one ``pg_advisory_lock``: a statement that waits holds a snapshot, and a ``CREATE INDEX
    CONCURRENTLY`` the other migrator runs waits for every older snapshot to end, so each would wait for the other
    until PostgreSQL's deadlock detector failed one of them (and a failed build leaves an INVALID index)."""
    Retrying(retry=retry_if_result(lambda taken: not taken), wait=wait_fixed(LOCK_POLL_SECONDS),
             before_sleep=_log_lock_held)(_try_lock, conn)


def _try_lock(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def _log_lock_held(state: RetryCallState) -> None:
    if state.attempt_number == 1:  # once: the wait lasts as long as the other migrator's run
        logger.info("another migrator holds the PostgreSQL migrations' lock; waiting for it to finish")


def _apply(conn: psycopg.Connection, migrations: list[SqlMigration], retrying: Retrying,
           lock_timeout_ms: int) -> list[int]:
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
        try:
            retrying(_apply_one, conn, migration, lock_timeout_ms)
        except psycopg.errors.LockNotAvailable as exc:
            raise TransientError(
                f"PostgreSQL migration {migration.file} could not take its locks "
                f"(waited {lock_timeout_ms} ms, {retrying.statistics['attempt_number']} times): "
                f"a long transaction holds its tables; run migrate again later ({_reason(exc)})"
            ) from exc
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise  # the connection was lost: PostgreSQL unavailable, not this migration's fault
            raise _failed(migration, exc) from exc
        logger.info("applied PostgreSQL migration %03d_%s", migration.version, migration.name)
        applied.append(migration.version)
    return applied


# What PL/pgSQL's EXECUTE answers for a BEGIN, COMMIT, ROLLBACK, SAVEPOINT... among the statements it runs, and for
# a SELECT ... INTO new_table as the last of them; neither error has a position.
_TRANSACTION_CONTROL_REFUSED = "EXECUTE of transaction commands is not implemented"
_SELECT_INTO_REFUSED = "EXECUTE of SELECT ... INTO is not implemented"


def _failed(migration: SqlMigration, exc: psycopg.Error) -> ConfigurationError | PermanentError:
    """A migration's failure on a server that answered (a syntax error, a statement cancelled, a deadlock), naming
    the migration (and its line, where PostgreSQL gives the error's position): a ``ConfigurationError`` for what
    PostgreSQL refuses to run inside the runner's transaction (a transaction-control statement, a final
    ``SELECT ... INTO``), else a ``PermanentError``."""
    if migration.in_transaction and exc.diag.message_primary == _TRANSACTION_CONTROL_REFUSED:
        return ConfigurationError(
            f"PostgreSQL migration {migration.file} contains a transaction-control statement (BEGIN, COMMIT, "
            "ROLLBACK, SAVEPOINT...): each migration runs in a transaction of its own; remove it (the migration was "
            "rolled back, nothing applied)")
    if migration.in_transaction and exc.diag.message_primary == _SELECT_INTO_REFUSED:
        return ConfigurationError(
            f"PostgreSQL migration {migration.file} ends in SELECT ... INTO, which PostgreSQL does not run in a "
            "migration: write CREATE TABLE ... AS SELECT ... instead (the migration was rolled back, nothing applied)")
    if migration.in_transaction:
        return PermanentError(f"PostgreSQL migration {migration.file} failed{_line(migration.sql, exc)} and was "
                              f"rolled back ({_reason(exc)})")
    return PermanentError(
        f"PostgreSQL migration {migration.file} (run outside a transaction) failed ({_reason(exc)}): its statements "
        "before the failing one stay applied and it is not recorded, so the next migrate starts it again from "
        "its first statement")


def _line(sent: str, exc: psycopg.Error) -> str:
    """`` at line N``: where in ``sent`` (one migration file, the string EXECUTEd) the error is, when PostgreSQL
    says: ``internal_position`` (1-based characters of the EXECUTEd string), else ``statement_position``."""
    for position in (exc.diag.internal_position, exc.diag.statement_position):
        if position and position.isdigit() and 0 < int(position) <= len(sent) + 1:
            return f" at line {sent[:int(position) - 1].count(chr(10)) + 1}"
    return ""


def _reason(exc: psycopg.Error) -> str:
    """The error's class and PostgreSQL's one-line message (not its CONTEXT, which quotes the whole file)."""
    return f"{type(exc).__name__}: {exc.diag.message_primary or (str(exc).splitlines() or [''])[0]}"


def _apply_one(conn: psycopg.Connection, migration: SqlMigration, lock_timeout_ms: int) -> None:
    """One migration and its ``schema_migrations`` row in one transaction, waiting at most ``lock_timeout_ms`` for
    each lock: a DDL statement waiting for its lock queues every later reader of the table behind it."""
    if not migration.in_transaction:
        _apply_outside_transaction(conn, migration)
        return
    with conn.transaction():
        # Transaction-local: at most lock_timeout_ms for a lock, and no statement_timeout a database or role default
        # would set (it would cancel a backfill over a large table on every run).
        conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', '0', true)",
                     (str(lock_timeout_ms),))
        # PL/pgSQL's EXECUTE runs every statement of the file, and PostgreSQL refuses a transaction-control one (a
        # COMMIT sent as a plain statement would commit this transaction part-way).
        body = sql.SQL("BEGIN EXECUTE {}; END").format(sql.Literal(migration.sql)).as_string(conn)
        conn.execute(sql.SQL("DO {}").format(sql.Literal(body)), prepare=False)
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:  # a backstop: never expected
            raise ConfigurationError(f"PostgreSQL migration {migration.file} ended the runner's transaction")
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.checksum),
        )


def _apply_outside_transaction(conn: psycopg.Connection, migration: SqlMigration) -> None:
    """A ``-- sluice: no transaction`` migration: each statement in autocommit, with neither ``lock_timeout`` nor
    ``statement_timeout`` (see the module docstring), then its ``schema_migrations`` row."""
    row = conn.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), "
                       "set_config('lock_timeout', '0', false), set_config('statement_timeout', '0', false)"
                       ).fetchone()
    assert row is not None  # a SELECT without FROM returns one row
    try:
        for statement in migration.statements:
            conn.execute(statement.encode(), prepare=False)
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.checksum),
        )
    finally:
        if not conn.broken:
            conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                         (row[0], row[1]))


def _log_lock_wait(state: RetryCallState) -> None:
    migration: SqlMigration = state.args[1]
    logger.warning("PostgreSQL migration %03d_%s.sql gave up waiting for a lock (attempt %d); trying again in %.1f s",
                   migration.version, migration.name, state.attempt_number,
                   state.next_action.sleep if state.next_action else 0.0)
