"""RESULT message bodies (spec section 4.2.5): void, rows, set_keyspace, prepared, schema_change."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import wire
from .types import CqlType

KIND_VOID = 1
KIND_ROWS = 2
KIND_SET_KEYSPACE = 3
KIND_PREPARED = 4
KIND_SCHEMA_CHANGE = 5

FLAG_GLOBAL_TABLES_SPEC = 0x0001
FLAG_HAS_MORE_PAGES = 0x0002
FLAG_NO_METADATA = 0x0004

_II = struct.Struct(">ii")
VOID = wire.int_(KIND_VOID)


@dataclass(frozen=True)
class ColumnSpec:
    keyspace: str
    table: str
    name: str
    type: CqlType


def _specs(columns: list[ColumnSpec]) -> bytes:
    if not columns:
        return b""
    ks, tb = columns[0].keyspace, columns[0].table
    if all(c.keyspace == ks and c.table == tb for c in columns):
        return wire.string(ks) + wire.string(tb) + b"".join(wire.string(c.name) + c.type.option() for c in columns)
    return b"".join(wire.string(c.keyspace) + wire.string(c.table) + wire.string(c.name) + c.type.option()
                    for c in columns)


def _global_flag(columns: list[ColumnSpec]) -> int:
    if not columns:
        return 0
    ks, tb = columns[0].keyspace, columns[0].table
    return FLAG_GLOBAL_TABLES_SPEC if all(c.keyspace == ks and c.table == tb for c in columns) else 0


def rows_metadata(columns: list[ColumnSpec], paging_state: bytes | None = None, no_metadata: bool = False) -> bytes:
    flags = 0
    if paging_state is not None:
        flags |= FLAG_HAS_MORE_PAGES
    if no_metadata:
        flags |= FLAG_NO_METADATA
        head = _II.pack(flags, len(columns))
        return head + (wire.bytes_(paging_state) if paging_state is not None else b"")
    flags |= _global_flag(columns)
    head = _II.pack(flags, len(columns))
    if paging_state is not None:
        head += wire.bytes_(paging_state)
    return head + _specs(columns)


@dataclass
class Rows:
    """A ROWS result: ``rows`` are lists of cell bytes (None = null) in column order."""

    columns: list[ColumnSpec]
    rows: list[list[bytes | None]] = field(default_factory=list)
    paging_state: bytes | None = None

    def encode(self, no_metadata: bool = False) -> bytes:
        parts = [wire.int_(KIND_ROWS), rows_metadata(self.columns, self.paging_state, no_metadata),
                 wire.int_(len(self.rows))]
        enc = wire.bytes_
        for row in self.rows:
            parts.append(b"".join([enc(v) for v in row]))
        return b"".join(parts)


def set_keyspace(name: str) -> bytes:
    return wire.int_(KIND_SET_KEYSPACE) + wire.string(name)


def prepared(statement_id: bytes, bind: list[ColumnSpec], pk_indexes: list[int], result: list[ColumnSpec]) -> bytes:
    flags = _global_flag(bind)
    meta = _II.pack(flags, len(bind)) + wire.int_(len(pk_indexes)) + b"".join(wire.short(i) for i in pk_indexes)
    meta += _specs(bind)
    return wire.int_(KIND_PREPARED) + wire.short_bytes(statement_id) + meta + rows_metadata(result)


def schema_change_body(change: str, target: str, keyspace: str, name: str = "") -> bytes:
    body = wire.string(change) + wire.string(target) + wire.string(keyspace)
    if target != "KEYSPACE":
        body += wire.string(name)
    return body


def schema_change(change: str, target: str, keyspace: str, name: str = "") -> bytes:
    return wire.int_(KIND_SCHEMA_CHANGE) + schema_change_body(change, target, keyspace, name)
