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
  connection; a connection refused for its password (SQLSTATE 28P01) re-reads the
  secret (rate-limited) and, if it changed, connects again at once. Connections
  already open keep working: PostgreSQL checks a password only at log-in.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from shared.adapters.secrets import RotatingSecret
from shared.settings import PostgresSettings

logger = logging.getLogger(__name__)

# libpq does not expose the SQLSTATE of a failed log-in, only the server's message;
# PostgreSQL and PgBouncer both say this for 28P01 (invalid_password).
_REJECTED = "password authentication failed"


def rejected_password(exc: psycopg.OperationalError) -> bool:
    """Whether a connection attempt failed because the server refused the password (28P01)."""
    return _REJECTED in str(exc)


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
