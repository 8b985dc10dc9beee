"""Fault injection: make requests fail as Cosmos DB does under load or outage.

Control is plain CQL on the virtual table ``sluice_emulator.faults`` (exempt
from faults itself, like the system tables)::

    INSERT INTO sluice_emulator.faults (name, error, count, ratio, retry_after_ms, applies_to)
    VALUES ('current', 'overloaded', 5, null, 10, 'writes');   -- the next 5 writes fail
    SELECT * FROM sluice_emulator.faults;                      -- what is armed, and what is left
    TRUNCATE sluice_emulator.faults;                           -- clear (DELETE works too)

``error``: overloaded (0x1001, "Request rate is large ... RetryAfterMs=<n>"),
write_timeout (0x1100), read_timeout (0x1200), unavailable (0x1000), or
delay: no error, but the answer is held back ``delay_ms`` (a slow or hung node
as the client sees it). A delayed request takes effect at once, only its answer
is late, so a client that times out does not know whether its write landed: the
ambiguity a retry must be idempotent for. Other requests on the connection are
answered meanwhile (answers carry their stream id).
``count``: the next N matching requests fail; ``ratio``: that fraction of them
fail until cleared. ``applies_to``: all | reads | writes (a BATCH is a write).
:func:`inject_faults` / :func:`clear_faults` do this from tests without a driver
session, over one short native-protocol connection.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import struct
import uuid
from typing import TYPE_CHECKING, Any

from . import statements as st
from .errors import CqlError, Invalid, Overloaded, ReadTimeout, Unavailable, WriteTimeout, consistency_name

if TYPE_CHECKING:
    from .schema import Table
    from .wire import Value

logger = logging.getLogger(__name__)

CONTROL_KEYSPACE = "sluice_emulator"
CONTROL_TABLE = "faults"
ERRORS = ("overloaded", "write_timeout", "read_timeout", "unavailable", "delay")
MAX_DELAY_MS = 600_000
TARGETS = ("all", "reads", "writes")
_control_table: Table | None = None


def control_table() -> Table:
    global _control_table
    if _control_table is None:
        from .schema import Column, Table
        from .types import parse_type
        _control_table = Table(
            CONTROL_KEYSPACE, CONTROL_TABLE, uuid.uuid5(uuid.NAMESPACE_URL, "sluice_emulator.faults"),
            [Column("name", parse_type("text"), "partition_key", 0)], [],
            [Column(n, parse_type(t), "regular", -1) for n, t in (
                ("applies_to", "text"), ("count", "int"), ("error", "text"), ("ratio", "double"),
                ("remaining", "int"), ("retry_after_ms", "int"), ("delay_ms", "int"))],
            virtual=True)
    return _control_table


def control_statement(stmt: st.Statement) -> Table | None:
    """The control table if ``stmt`` addresses it."""
    name = getattr(stmt, "table", None)
    if isinstance(name, st.TableName) and name.keyspace == CONTROL_KEYSPACE:
        if name.name != CONTROL_TABLE:
            raise Invalid(f"unconfigured table {name.name} (the control keyspace has only {CONTROL_TABLE})")
        return control_table()
    return None


class FaultState:
    """What is armed. Checked on every user-table request before it runs."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.count: int | None = None
        self.remaining: int | None = None
        self.ratio: float | None = None
        self.retry_after_ms = 10
        self.delay_ms: int | None = None
        self.applies_to = "all"
        self._random = random.Random()
        self._held = 0.0  # seconds the answer of the request being run is to be held back

    def clear(self) -> None:
        self.error = self.count = self.remaining = self.ratio = self.delay_ms = None

    def arm(self, error: str, count: int | None, ratio: float | None, retry_after_ms: int, applies_to: str,
            delay_ms: int | None = None) -> None:
        if error not in ERRORS:
            raise Invalid(f"unknown fault error {error!r}; choose one of {', '.join(ERRORS)}")
        if applies_to not in TARGETS:
            raise Invalid(f"unknown fault target {applies_to!r}; choose one of {', '.join(TARGETS)}")
        if (count is None) == (ratio is None):
            raise Invalid("set exactly one of count (the next N requests fail) or ratio (a fraction of requests fail)")
        if count is not None and count < 0:
            raise Invalid(f"count must be >= 0, got {count}")
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            raise Invalid(f"ratio must be between 0 and 1, got {ratio}")
        if error == "delay" and (delay_ms is None or not 0 < delay_ms <= MAX_DELAY_MS):
            raise Invalid(f"error 'delay' needs delay_ms from 1 to {MAX_DELAY_MS}, got {delay_ms}")
        if error != "delay" and delay_ms is not None:
            raise Invalid(f"delay_ms applies to error 'delay' only, not {error!r}")
        self.error, self.count, self.remaining, self.ratio = error, count, count, ratio
        self.retry_after_ms, self.applies_to, self.delay_ms = retry_after_ms, applies_to, delay_ms
        logger.info("fault armed: %s count=%s ratio=%s applies_to=%s delay_ms=%s", error, count, ratio, applies_to,
                    delay_ms)

    def check(self, kind: str, consistency: int, write_type: str = "SIMPLE") -> None:
        """Raise the armed error if this request (kind: reads | writes) is to fail.

        ``consistency`` is the request's level and ``write_type`` the protocol's name for a write (SIMPLE,
        UNLOGGED_BATCH, CAS): the error carries both as Cassandra's would, and retry policies branch on them.
        """
        if self.error is None or (self.applies_to != "all" and self.applies_to != kind):
            return
        if self.remaining is not None:
            if self.remaining <= 0:
                return
            self.remaining -= 1
        elif self.ratio is not None and self._random.random() >= self.ratio:
            return
        if self.error == "delay":
            assert self.delay_ms is not None
            self._held = self.delay_ms / 1000
            return
        raise self.make_error(consistency, write_type)

    def take_delay(self) -> float:
        """Seconds to hold back the answer of the request just run (0: answer now); resets it."""
        held, self._held = self._held, 0.0
        return held

    def make_error(self, consistency: int, write_type: str) -> CqlError:
        if self.error == "overloaded":
            return Overloaded(
                "Request rate is large: the emulator injected a 429 (TooManyRequests). More Request Units may be "
                "needed, so no changes were made. Please retry this request later. "
                f"ActivityId={uuid.uuid4()}, RetryAfterMs={self.retry_after_ms}")
        if self.error == "write_timeout":
            return WriteTimeout("Operation timed out - received only 0 responses.", consistency, write_type)
        if self.error == "read_timeout":
            return ReadTimeout("Operation timed out - received only 0 responses.", consistency)
        return Unavailable(f"Cannot achieve consistency level {consistency_name(consistency)}", consistency)

    # -- the control table -------------------------------------------------------
    def execute(self, stmt: st.Statement, table: Table, values: list[Value], now: int) -> bytes:
        from . import results
        from .planner import resolve
        from .select import execute_select
        from .store import TableData
        if isinstance(stmt, st.Insert):
            given: dict[str, Any] = {}
            for name, term in zip(stmt.columns, stmt.values, strict=True):
                col = table.columns.get(name)
                if col is None:
                    raise Invalid(f"Undefined column name {name} in table {CONTROL_KEYSPACE}.{CONTROL_TABLE}")
                raw = resolve(term, col.type, values)
                given[name] = col.type.deserialize(raw) if isinstance(raw, bytes) else None
            self.arm(given.get("error") or "overloaded", given.get("count"), given.get("ratio"),
                     int(given.get("retry_after_ms") or 10), given.get("applies_to") or "all", given.get("delay_ms"))
            return results.VOID
        if isinstance(stmt, st.Delete | st.Truncate):
            self.clear()
            logger.info("faults cleared")
            return results.VOID
        if isinstance(stmt, st.Select):
            data = TableData(None)
            if self.error is not None:
                row = data.partition_for_write(b"current", 0).get_or_create(b"")
                row.touch(0, None)
                cells = {"applies_to": self.applies_to, "count": self.count, "error": self.error, "ratio": self.ratio,
                         "remaining": self.remaining, "retry_after_ms": self.retry_after_ms, "delay_ms": self.delay_ms}
                for col in table.regular:
                    if cells[col.name] is not None:
                        row.write(col.slot, col.type.serialize(cells[col.name]), 0, None)
            return execute_select(table, data, stmt, values, 0, None, now).encode()
        raise Invalid(f"{type(stmt).__name__} is not supported on {CONTROL_KEYSPACE}.{CONTROL_TABLE}")


# -- client-side helpers -------------------------------------------------------------

def _cql_literal(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _frame(stream: int, opcode: int, body: bytes) -> bytes:
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">H", len(raw)) + raw


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the emulator closed the control connection")
            buf += chunk
        return buf
    _, _, _, opcode, length = struct.unpack(">BBhBi", exact(9))
    return opcode, exact(length)


def run_statement(host: str, port: int, query: str, *, username: str | None = None, password: str | None = None,
                  ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
    """One statement over a bare native-protocol v4 connection: no driver, so no metadata refresh or pool."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = ssl_context.wrap_socket(raw, server_hostname=host) if ssl_context else raw
        body = struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0")
        sock.sendall(_frame(0, 0x01, body))
        opcode, payload = _read_frame(sock)
        if opcode == 0x03:  # AUTHENTICATE
            if username is None or password is None:
                raise RuntimeError("the emulator requires credentials: pass username= and password=")
            token = b"\x00" + username.encode() + b"\x00" + password.encode()
            sock.sendall(_frame(0, 0x0F, struct.pack(">i", len(token)) + token))
            opcode, payload = _read_frame(sock)
        if opcode == 0x00:
            raise RuntimeError(f"emulator refused the control connection: {payload[6:].decode(errors='replace')}")
        q = query.encode()
        sock.sendall(_frame(1, 0x07, struct.pack(">i", len(q)) + q + struct.pack(">HB", 0x0001, 0)))
        opcode, payload = _read_frame(sock)
        if opcode == 0x00:
            raise RuntimeError(f"emulator refused {query!r}: {payload[6:].decode(errors='replace')}")


def inject_faults(host: str, port: int, *, error: str = "overloaded", count: int | None = None,
                  ratio: float | None = None, retry_after_ms: int = 10, applies_to: str = "all",
                  delay_ms: int | None = None, username: str | None = None, password: str | None = None,
                  ssl_context: ssl.SSLContext | None = None) -> None:
    """Arm a fault on the emulator at host:port (see the module docstring); replaces what was armed."""
    if count is None and ratio is None:
        count = 1
    query = (f"INSERT INTO {CONTROL_KEYSPACE}.{CONTROL_TABLE} "
             "(name, error, count, ratio, retry_after_ms, applies_to, delay_ms) "
             f"VALUES ('current', {_cql_literal(error)}, {_cql_literal(count)}, {_cql_literal(ratio)}, "
             f"{int(retry_after_ms)}, {_cql_literal(applies_to)}, {_cql_literal(delay_ms)})")
    run_statement(host, port, query, username=username, password=password, ssl_context=ssl_context)


def clear_faults(host: str, port: int, *, username: str | None = None, password: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
    """Disarm every fault on the emulator at host:port."""
    run_statement(host, port, f"TRUNCATE {CONTROL_KEYSPACE}.{CONTROL_TABLE}", username=username, password=password,
                   ssl_context=ssl_context)
