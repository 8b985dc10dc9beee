"""CQL error responses (native protocol v4, section 9) as Python exceptions.

Every failure the server reports is one of these; the connection turns it into
an ERROR frame whose body is ``[int code][string message]`` plus the
code-specific fields that :meth:`CqlError.extra` returns.
"""

from __future__ import annotations

import struct

CONSISTENCY_NAMES = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "SERIAL",
                     "LOCAL_SERIAL", "LOCAL_ONE")
"""The [consistency] codes of the spec (section 3), in code order: 0x0000 ANY to 0x000A LOCAL_ONE."""


def consistency_name(code: int) -> str:
    return CONSISTENCY_NAMES[code] if 0 <= code < len(CONSISTENCY_NAMES) else f"0x{code:04x}"


class CqlError(Exception):
    """Base of every error the server sends back to a client."""

    code = 0x0000  # Server error

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def extra(self) -> bytes:
        """Code-specific fields that follow the message in the ERROR body."""
        return b""


class ServerError(CqlError):
    code = 0x0000


class ProtocolError(CqlError):
    code = 0x000A


class BadCredentials(CqlError):
    code = 0x0100


class Unavailable(CqlError):
    code = 0x1000

    def __init__(self, message: str, consistency: int = 0x0001, required: int = 1, alive: int = 0) -> None:
        super().__init__(message)
        self.consistency, self.required, self.alive = consistency, required, alive

    def extra(self) -> bytes:
        return struct.pack(">Hii", self.consistency, self.required, self.alive)


class Overloaded(CqlError):
    code = 0x1001


class WriteTimeout(CqlError):
    code = 0x1100

    def __init__(self, message: str, consistency: int = 0x0001, write_type: str = "SIMPLE") -> None:
        super().__init__(message)
        self.consistency, self.write_type = consistency, write_type

    def extra(self) -> bytes:
        wt = self.write_type.encode()
        return struct.pack(">HiiH", self.consistency, 0, 1, len(wt)) + wt


class ReadTimeout(CqlError):
    code = 0x1200

    def __init__(self, message: str, consistency: int = 0x0001) -> None:
        super().__init__(message)
        self.consistency = consistency

    def extra(self) -> bytes:
        return struct.pack(">HiiB", self.consistency, 0, 1, 0)


class CqlSyntaxError(CqlError):
    code = 0x2000


class Unauthorized(CqlError):
    code = 0x2100


class Invalid(CqlError):
    code = 0x2200


class ConfigError(CqlError):
    code = 0x2300


class AlreadyExists(CqlError):
    code = 0x2400

    def __init__(self, keyspace: str, table: str = "") -> None:
        what = f"table {keyspace}.{table}" if table else f"keyspace {keyspace}"
        super().__init__(f"Cannot add already existing {what}")
        self.keyspace, self.table = keyspace, table

    def extra(self) -> bytes:
        ks, tb = self.keyspace.encode(), self.table.encode()
        return struct.pack(">H", len(ks)) + ks + struct.pack(">H", len(tb)) + tb


class Unprepared(CqlError):
    code = 0x2500

    def __init__(self, statement_id: bytes) -> None:
        super().__init__(f"Prepared query with ID {statement_id.hex()} not found (either the query was not prepared "
                         "on this host (maybe the host has been restarted?) or you have prepared too many queries "
                         "and it has been evicted from the internal cache)")
        self.statement_id = statement_id

    def extra(self) -> bytes:
        return struct.pack(">H", len(self.statement_id)) + self.statement_id
