"""The psycopg connection pool, configured from settings.

* ``check`` on borrow (``ConnectionPool.check_connection``): a connection the
  server or a proxy closed since it was returned (idle timeout, failover,
  ``pg_terminate_backend``) is replaced before the caller sees it;
* ``max_lifetime``: connections are recycled, so DNS or credential changes and
  server-side leaks do not live for ever;
* ``prepare_threshold``: ``None`` turns server-side prepared statements off, which
  PgBouncer in transaction mode (built into Azure PostgreSQL Flexible Server on
  port 6432) needs. Nothing in Sluice keeps session state across transactions
  either: temporary tables are ``ON COMMIT DROP`` and settings are ``SET LOCAL``.
"""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from shared.settings import PostgresSettings


def make_pool(conninfo: str, settings: PostgresSettings, *, open: bool = True, name: str = "sluice") -> ConnectionPool:
    """A pool on ``conninfo`` (which carries the password, if any) with the pool options of ``settings``."""
    return ConnectionPool(
        conninfo,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        max_lifetime=settings.pool_max_lifetime_seconds,
        timeout=settings.pool_timeout_seconds,
        check=ConnectionPool.check_connection,
        kwargs={"prepare_threshold": settings.prepare_threshold},
        open=open,
        name=name,
    )
