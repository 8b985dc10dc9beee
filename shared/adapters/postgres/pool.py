"""The psycopg connection pool, configured from settings (the only pool Sluice builds).

* ``check`` on borrow (``ConnectionPool.check_connection``): a connection the
  server or a proxy closed since it was returned (idle timeout, failover,
  ``pg_terminate_backend``) is replaced before the caller sees it;
* ``max_lifetime``: connections are recycled, so DNS or credential changes and
  server-side leaks do not live for ever;
* ``prepare_threshold``: ``None`` turns server-side prepared statements off, which
  PgBouncer in transaction mode (built into Azure PostgreSQL Flexible Server on
  port 6432) needs. Nothing in Sluice keeps session state across transactions
  either: temporary tables are ``ON COMMIT DROP`` and settings are ``SET LOCAL``;
* :func:`refuse_lost_prepared_statements`, before the pool is built: prepared
  statements on behind a pooler that loses them (PgBouncer in transaction mode
  before 1.22 or without ``max_prepared_statements``) are a ``ConfigurationError``
  naming ``SLUICE_POSTGRES_PREPARE_THRESHOLD``, not queries failing now and then;
* the session's ``TimeZone`` is UTC (``configure``, a ``SET`` on each new
  connection): psycopg hands a ``timestamptz`` over in that zone, and the
  database's or server's ``timezone`` setting (or the client's ``PGTZ``) may be
  one with DST, in which Python's arithmetic on the value would be wall-clock. Not
  the libpq ``options=-c timezone=UTC`` startup parameter: PgBouncer refuses
  ``options`` unless told to ignore it (``ignore_startup_parameters``); a ``SET
  TIME ZONE`` it tracks (``TimeZone`` is one of its tracked parameters) and
  applies to whichever server connection serves each transaction. The adapters
  still convert what they read with ``utc()``;
* the password, when given as a :class:`RotatingSecret`, is read for each new
  connection; a connection refused for its password (SQLSTATE 28P01, or PgBouncer's
  ``SASL authentication failed`` with scram-sha-256) re-reads the secret
  (rate-limited) and, if it changed, connects again at once. Connections
  already open keep working: PostgreSQL checks a password only at log-in.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.adapters.secrets import RotatingSecret
from shared.exceptions import ConfigurationError
from shared.settings import PostgresSettings

logger = logging.getLogger(__name__)

# libpq does not expose the SQLSTATE of a failed log-in (psycopg's error has none), only the server's message:
# PostgreSQL says the first for 28P01 (invalid_password), as PgBouncer does with md5 or plain; PgBouncer with
# scram-sha-256 (Azure Flexible Server's built-in PgBouncer) says the second.
_REJECTED = ("password authentication failed", "SASL authentication failed")


def rejected_password(exc: psycopg.OperationalError) -> bool:
    """Whether a connection attempt failed because the server, or PgBouncer, refused the log-in.

    By its SQLSTATE (class 28, invalid authorization) when psycopg has one, otherwise by the refusal's message.
    """
    if exc.sqlstate is not None:
        return exc.sqlstate.startswith("28")
    return any(text in str(exc) for text in _REJECTED)


def make_pool(conninfo: str, settings: PostgresSettings, *, password: RotatingSecret | None = None,
              open: bool = True, name: str = "sluice") -> ConnectionPool:
    """A pool on ``conninfo`` with the pool options of ``settings`` and, if given, a rotating ``password``."""
    return ConnectionPool(
        conninfo,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        max_lifetime=settings.pool_max_lifetime_seconds,
        timeout=settings.pool_timeout_seconds,
        check=ConnectionPool.check_connection,
        kwargs={"prepare_threshold": settings.prepare_threshold},
        connection_class=psycopg.Connection if password is None else _rotating(password),
        configure=_utc_session,
        open=open,
        name=name,
    )


def connect(conninfo: str, *, password: RotatingSecret | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
    """One connection outside the pool (the operator's tools), logged in as the pool's are: with ``password``'s
    current value, re-read once if the server refuses it."""
    connection_class = psycopg.Connection if password is None else _rotating(password)
    return connection_class.connect(conninfo, **kwargs)


def refuse_lost_prepared_statements(conninfo: str, settings: PostgresSettings, *,
                                    password: RotatingSecret | None = None, timeout: float = 5.0) -> None:
    """Raise ``ConfigurationError`` when prepared statements are on and the server sessions behind ``conninfo`` are
    shared between clients without the pooler tracking prepared statements.

    psycopg prepares a query on its server session once it ran ``prepare_threshold`` times, then runs it by name.
    Behind PgBouncer in transaction mode (before 1.22, or with ``max_prepared_statements = 0``) the next transaction
    may run on another server connection, where that name is unknown or another client's: queries fail now and
    then, long after start-up, as if PostgreSQL were down. So: a connection whose server process is not the one it
    was told at log-in (``BackendKeyData``) is behind a pooler; a statement it prepares (a name of its own) is then
    run by a second connection, which a pooler in transaction mode serves with the server connection just released.
    When that runs it, two clients share a server session and its prepared statements. A pooler in session mode, or
    one that tracks prepared statements, answers that the second connection has no such statement.

    Best effort: when the server cannot be reached or the check fails otherwise, nothing is refused (the pool waits
    for the server as before).
    """
    if settings.prepare_threshold is None:
        return
    options: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, round(timeout))}
    name = f"sluice_probe_{os.urandom(6).hex()}"  # this probe's own, never one of psycopg's _pg3_ names
    try:
        with connect(conninfo, password=password, **options) as first:
            row = first.execute("SELECT pg_backend_pid()").fetchone()
            if row is None or row[0] == first.info.backend_pid:
                return  # the server itself: one session, one server process
            if first.pgconn.prepare(name.encode(), b"SELECT 1").status != psycopg.pq.ExecStatus.COMMAND_OK:
                return
            with connect(conninfo, password=password, **options) as second:
                try:
                    second.execute(sql.SQL("EXECUTE {}").format(sql.Identifier(name)))
                except psycopg.errors.InvalidSqlStatementName:
                    return  # not this client's statement: sessions are not shared, or the pooler tracks them
    except psycopg.Error as exc:  # not reached, or a pooler answering in a way of its own: the check is no reason
        logger.warning("could not check whether prepared statements survive the PostgreSQL connection: %s", exc)
        return
    raise ConfigurationError(
        f"SLUICE_POSTGRES_PREPARE_THRESHOLD={settings.prepare_threshold} turns server-side prepared statements on, "
        f"but {settings.host}:{settings.port} shares server sessions between clients without tracking them (a "
        f"pooler in transaction mode, such as Azure's built-in PgBouncer on 6432): queries would fail now and then "
        f"with 'prepared statement ... does not exist' or '... already exists'. Set "
        f"SLUICE_POSTGRES_PREPARE_THRESHOLD=none (or run PgBouncer 1.22 or newer with max_prepared_statements above 0)")


def _utc_session(conn: psycopg.Connection) -> None:
    """A new connection's session time zone: UTC, whatever the server's or database's ``timezone`` setting."""
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()  # (the pool wants the connection back idle, outside a transaction)


def _rotating(secret: RotatingSecret) -> type[psycopg.Connection]:
    """A connection class that logs in with ``secret``'s current value, and re-reads it once if refused."""

    class RotatingPasswordConnection(psycopg.Connection):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            used = secret.value()
            try:
                return super().connect(conninfo, **kwargs, password=used)
            except psycopg.OperationalError as exc:
                if not (rejected_password(exc) and secret.refresh(rejected=used)):
                    raise
            logger.warning("PostgreSQL refused the password of secret %s; connecting with its new value", secret.name)
            return super().connect(conninfo, **kwargs, password=secret.value())

    return RotatingPasswordConnection
