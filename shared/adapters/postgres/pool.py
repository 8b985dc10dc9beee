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
* :func:`refuse_lost_prepared_statements`, run in the background when the pool is
  built (``make_pool(vet=...)``, a :class:`VettedPool`): prepared statements on
  behind a pooler that loses them (PgBouncer in transaction mode before 1.22 or
  without ``max_prepared_statements``) are a ``ConfigurationError`` naming
  ``SLUICE_POSTGRES_PREPARE_THRESHOLD``, raised by every borrow, not queries failing
  now and then. Building the pool does not wait for the check (a PostgreSQL that
  hangs must not hold a caller that does not need it, such as the status sections
  of the other stores); a borrow waits for its outcome within the borrow's own
  timeout, and raises ``PoolTimeout`` when there is none by then;
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
  connection; a connection the server (or PgBouncer) refused after it took the
  password (:func:`rejected_password`: told by what libpq knows of the log-in, not
  by the refusal's text, which is in the server's language) on any of the
  addresses tried re-reads the secret (rate-limited) and, if it changed, connects
  again at once; when that value is refused too, the secret goes back to the one
  last accepted. Connections already open keep working: PostgreSQL checks a
  password only at log-in.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_attempts, conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.adapters.secrets import RotatingSecret
from shared.exceptions import ConfigurationError
from shared.settings import PostgresSettings

logger = logging.getLogger(__name__)

# libpq formats an error the server sent as "SEVERITY:  message" (two spaces: pqBuildErrorMessage3's "%s:  "), in
# whatever language the server speaks; its own failures ("Connection refused", "server closed the connection
# unexpectedly", "fe_sendauth: no password supplied") have no such separator.
_SERVER_ERROR = re.compile(r"\S:  \S")


def rejected_password(exc: psycopg.Error) -> bool:
    """Whether a connection attempt failed in a way a refused password may explain (then the secret is re-read).

    By its SQLSTATE (class 28, invalid authorization) when psycopg has one. A failed log-in has none (libpq keeps
    the server's error to itself and gives only its message, in the server's ``lc_messages`` language, so no text
    is matched): then it is one where the server asked for the password, was given it (``used_password``, not
    ``needs_password``), and answered with an error of its own. That includes refusals after the password was
    taken (a missing database, ``too many connections for role``): their cost is one vault read per
    ``min_interval`` and no second log-in unless the vault holds another value (:meth:`RotatingSecret.refresh`);
    when the store refuses that value too, the secret goes back to the one it last accepted (a vault-first
    rotation's window, :meth:`RotatingSecret.fall_back`).
    A server that cannot be reached, that drops the connection without an answer, or that refuses before asking
    for a password (``too many clients already``) is never one.
    """
    if exc.sqlstate is not None:
        return exc.sqlstate.startswith("28")
    conn = exc.pgconn
    if conn is None or not conn.used_password or conn.needs_password:
        return False
    return _SERVER_ERROR.search(conn.error_message.decode("utf-8", "replace")) is not None


class VettedPool(ConnectionPool):
    """A pool that opens, and hands out connections, only once ``vet`` (run once, in a thread of its own, from
    construction) has passed: a ``ConfigurationError`` it raises is raised by every later borrow.

    The pool opens only after the check, so none of its connections takes the server connection the check's
    second connection must be served with behind a pooler in transaction mode. A borrow waits for the outcome at
    most its timeout (the pool's, or the one it is given), which bounds the connection too: when the check has not
    ended by then (a server that accepts connections and never answers), it raises ``PoolTimeout``, as a borrow
    that finds no connection in time does. Any other failure of ``vet`` is logged and refuses nothing (the check
    is best effort).
    """

    def __init__(self, conninfo: str, *, vet: Callable[[], None], open: bool = True, **kwargs: Any) -> None:
        super().__init__(conninfo, open=False, **kwargs)
        self._vetted = threading.Event()
        self._refused: ConfigurationError | None = None
        self._opening = threading.Lock()
        self._open_when_vetted = open
        threading.Thread(target=self._vet, args=(vet,), name=f"{self.name}-vet", daemon=True).start()

    def _vet(self, vet: Callable[[], None]) -> None:
        try:
            vet()
        except ConfigurationError as exc:
            logger.error("PostgreSQL pool %r refused: %s", self.name, exc)
            self._refused = exc
        except Exception:  # best effort: a check that cannot run is no reason to refuse the pool
            logger.exception("PostgreSQL pool %r: its start-up check failed; nothing refused", self.name)
        finally:
            with self._opening:
                try:
                    if self._open_when_vetted and self._refused is None:
                        self.open(wait=False)
                finally:
                    self._vetted.set()

    def close(self, timeout: float = 5.0) -> None:
        with self._opening:  # closed before the check ended: the check must not open it afterwards
            self._open_when_vetted = False
        super().close(timeout)

    def getconn(self, timeout: float | None = None) -> Any:
        budget = self.timeout if timeout is None else timeout
        started = time.monotonic()
        if not self._vetted.wait(budget):
            raise PoolTimeout(f"pool {self.name!r}: the start-up check of the PostgreSQL connection (whether "
                              f"prepared statements survive it) has given no answer within {budget:g}s")
        if self._refused is not None:
            raise ConfigurationError(str(self._refused))  # a new one each time: the stored one's traceback stays
        return super().getconn(max(0.0, budget - (time.monotonic() - started)))


def make_pool(conninfo: str, settings: PostgresSettings, *, password: RotatingSecret | None = None,
              open: bool = True, name: str = "sluice", vet: Callable[[], None] | None = None) -> ConnectionPool:
    """A pool on ``conninfo`` with the pool options of ``settings`` and, if given, a rotating ``password``; with
    ``vet``, a :class:`VettedPool` that runs it in the background and lends no connection before it passed."""
    if vet is not None:
        return VettedPool(conninfo, vet=vet, **_options(settings, password, open, name))
    return ConnectionPool(conninfo, **_options(settings, password, open, name))


def _options(settings: PostgresSettings, password: RotatingSecret | None, open: bool, name: str) -> dict[str, Any]:
    return dict(
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
    """A connection class that logs in with ``secret``'s current value, and re-reads it once if refused.

    The addresses are tried one by one here (psycopg's own order: :func:`psycopg.conninfo.conninfo_attempts`, each
    address of each host), not by psycopg's loop, whose error carries only the last attempt's ``pgconn``: a
    password refused on one address, then another that cannot be reached (a host list, a name with A and AAAA
    records), must still re-read the secret. When the re-read value is refused too, the secret goes back to the
    value a log-in last succeeded with (:meth:`RotatingSecret.fall_back`): :func:`rejected_password` counts
    refusals after the password was taken, such as ``too many connections for role``, and in a vault-first
    rotation's window the store takes only the old value.
    """

    class RotatingPasswordConnection(psycopg.Connection):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            attempts = conninfo_attempts(conninfo_to_dict(conninfo))
            used = secret.value()
            conn, errors = cls._log_in(attempts, used, kwargs)
            if conn is not None:
                return conn
            if not (any(rejected_password(exc) for _, exc in errors) and secret.refresh(rejected=used)):
                raise _failure(errors)
            logger.warning("PostgreSQL refused the password of secret %s; connecting with its new value", secret.name)
            used = secret.value()
            conn, errors = cls._log_in(attempts, used, kwargs)
            if conn is not None:
                return conn
            if any(rejected_password(exc) for _, exc in errors):
                secret.fall_back(used)
            raise _failure(errors)

        @classmethod
        def _log_in(cls, attempts: list[dict[str, Any]], password: str,
                    kwargs: dict[str, Any]) -> tuple[Any, list[tuple[dict[str, Any], psycopg.Error]]]:
            """The first address that takes ``password``, and the errors of those tried before (all of them when
            none did)."""
            errors: list[tuple[dict[str, Any], psycopg.Error]] = []
            for attempt in attempts:
                try:
                    conn = super().connect(make_conninfo("", **attempt), **kwargs, password=password)
                except psycopg.Error as exc:
                    errors.append((attempt, exc))
                else:
                    secret.accepted(password)
                    return conn, errors
            return None, errors

    return RotatingPasswordConnection


def _failure(errors: list[tuple[dict[str, Any], psycopg.Error]]) -> psycopg.Error:
    """The error psycopg raises when every attempt failed: the last one's, listing all of them when several."""
    last = errors[-1][1]
    if len(errors) == 1:
        return last
    lines = [str(last), "Multiple connection attempts failed. All failures were:"]
    lines.extend(f"- host: {attempt.get('host')!r}, port: {attempt.get('port')!r}, "
                 f"hostaddr: {attempt.get('hostaddr')!r}: {exc}" for attempt, exc in errors)
    return type(last)("\n".join(lines), pgconn=last.pgconn)
