"""Typing of bind markers and resolution of terms into wire bytes.

:func:`bind_specs` gives each bind marker of a statement its name and type,
as PREPARED metadata must state them (the driver encodes bound values with
these types and routes with the partition key indexes). :func:`resolve` turns
a term (literal, bound value or function call) into the bytes of a type.
"""

from __future__ import annotations

import datetime
import functools
import os
import random
import struct
import time
import uuid
from dataclasses import dataclass

from . import statements as st
from .errors import Invalid
from .schema import Column, Table
from .types import CqlType, InvalidValue, UnsupportedType, parse_type
from .wire import UNSET, Value

INT = parse_type("int")
BIGINT = parse_type("bigint")
TEXT = parse_type("text")
BOOLEAN = parse_type("boolean")


@dataclass(frozen=True)
class Spec:
    name: str
    type: CqlType


def collection_element_types(col: Column, column_name: str) -> tuple[CqlType, CqlType]:
    """(key type, value type) of an element access ``c[k]``."""
    t = col.type
    if t.kind == "map" and not t.frozen:
        return t.params[0], t.params[1]
    if t.kind == "list" and not t.frozen:
        return INT, t.params[0]
    raise Invalid(f"Invalid operation ({column_name}[...]) for non-map/list column {column_name} of type {t.cql()}")


def deleted_element_spec(col: Column) -> Spec:
    """The name and type of ``e`` in ``DELETE c[e]``, as Cassandra's ``Operation.ElementDeletion`` prepares it:
    a list's index, a set's element, a map's key; only for a collection that is not frozen."""
    t = col.type
    if not t.is_collection:
        raise Invalid(f"Invalid deletion operation for non collection column {col.name}")
    if t.frozen:
        raise Invalid(f"Invalid deletion operation for frozen collection column {col.name}")
    if t.kind == "list":
        return Spec(f"idx({col.name})", INT)
    if t.kind == "set":
        return Spec(f"value({col.name})", t.params[0])
    return Spec(f"key({col.name})", t.params[0])


def table_column(table: Table, name: str) -> Column:
    col = table.columns.get(name)
    if col is None:
        raise Invalid(f"Undefined column name {name} in table {table.keyspace}.{table.name}")
    return col


def condition_column(table: Table, name: str) -> Column:
    """The column an IF condition names: a regular column, as Cassandra 4 (ModificationStatement.Parsed
    .prepareConditions) refuses a condition on a partition key or clustering column."""
    col = table_column(table, name)
    if col.kind in ("partition_key", "clustering"):
        raise Invalid(f"PRIMARY KEY column '{col.name}' cannot have IF conditions")
    return col


def _term_specs(term: st.Term | tuple[st.Term, ...] | None, spec: Spec, out: dict[int, Spec]) -> None:
    if term is None:
        return
    if isinstance(term, tuple):
        for t in term:
            _term_specs(t, spec, out)
    elif isinstance(term, st.BindMarker):
        out[term.index] = Spec(term.name or spec.name, spec.type)
    elif isinstance(term, st.FunctionCall):
        result = _result_type(term)
        if result is not None:  # at PREPARE too, as Cassandra (an unsupported function is refused when run)
            check_assignable(term, result, spec.type, spec.name)
        for a in term.args:
            _term_specs(a, spec, out)


def _relation_specs(table: Table, relations: list[st.Relation], out: dict[int, Spec]) -> None:
    for rel in relations:
        if rel.kind == "token":
            _term_specs(rel.value, Spec("partition key token", BIGINT), out)
        elif rel.kind == "changefeed":
            _term_specs(rel.value, Spec("cosmos_changefeed_start_time", TEXT), out)
        else:
            col = table_column(table, rel.columns[0])
            if rel.op == "IN" and not isinstance(rel.value, tuple):
                _term_specs(rel.value, Spec(f"in({col.name})", CqlType("list", (col.type,))), out)
            elif rel.op == "CONTAINS":
                _term_specs(rel.value, Spec(col.name, col.type.params[-1] if col.type.params else col.type), out)
            elif rel.op == "CONTAINS_KEY":
                _term_specs(rel.value, Spec(col.name, col.type.params[0] if col.type.params else col.type), out)
            else:
                _term_specs(rel.value, Spec(col.name, col.type), out)


def _using_specs(using: st.Using, out: dict[int, Spec]) -> None:
    _term_specs(using.ttl, Spec("[ttl]", INT), out)
    _term_specs(using.timestamp, Spec("[timestamp]", BIGINT), out)


def _condition_specs(table: Table, conditions: list[st.Condition], out: dict[int, Spec]) -> None:
    for cond in conditions:
        col = condition_column(table, cond.column)
        if cond.element is not None:
            ktype, vtype = collection_element_types(col, col.name)
            _term_specs(cond.element, Spec(f"key({col.name})", ktype), out)
            _term_specs(cond.value, Spec(f"value({col.name})", vtype), out)
        else:
            _term_specs(cond.value, Spec(col.name, col.type), out)


def assignment_value_type(col: Column, kind: str) -> CqlType:
    t = col.type
    if kind == "remove" and t.kind == "map":
        return CqlType("set", (t.params[0],))
    return t


def bind_specs(stmt: st.Statement, table: Table | None, count: int) -> list[Spec]:
    """Name and type of every bind marker, by position."""
    out: dict[int, Spec] = {}
    _statement_specs(stmt, table, out)
    return _all_specs(out, count)


def batch_bind_specs(batch: st.Batch, tables: list[Table], count: int) -> list[Spec]:
    """Name and type of every bind marker of a CQL BATCH text, by position across the whole text (its ``USING`` and
    every child, each child against its table in ``tables``), as Cassandra numbers the markers of a batch."""
    out: dict[int, Spec] = {}
    _using_specs(batch.using, out)
    for child, table in zip(batch.statements, tables, strict=True):
        _statement_specs(child, table, out)
    return _all_specs(out, count)


def _all_specs(out: dict[int, Spec], count: int) -> list[Spec]:
    missing = [i for i in range(count) if i not in out]
    if missing:
        raise Invalid("bind markers are not supported in this position of the statement")
    return [out[i] for i in range(count)]


def _statement_specs(stmt: st.Statement, table: Table | None, out: dict[int, Spec]) -> None:
    if isinstance(stmt, st.Select) and table is not None:
        _relation_specs(table, stmt.where, out)
        _term_specs(stmt.limit, Spec("[limit]", INT), out)
        _term_specs(stmt.per_partition_limit, Spec("[per_partition_limit]", INT), out)
    elif isinstance(stmt, st.Insert) and table is not None:
        for name, term in zip(stmt.columns, stmt.values, strict=True):
            col = table_column(table, name)
            _term_specs(term, Spec(col.name, col.type), out)
        _using_specs(stmt.using, out)
    elif isinstance(stmt, st.Update) and table is not None:
        _using_specs(stmt.using, out)
        for a in stmt.assignments:
            col = table_column(table, a.column)
            if a.kind == "set_element":
                ktype, vtype = collection_element_types(col, col.name)
                _term_specs(a.element, Spec(f"idx({col.name})" if col.type.kind == "list" else f"key({col.name})",
                                            ktype), out)
                _term_specs(a.value, Spec(f"value({col.name})", vtype), out)
            else:
                _term_specs(a.value, Spec(col.name, assignment_value_type(col, a.kind)), out)
        _relation_specs(table, stmt.where, out)
        _condition_specs(table, stmt.conditions, out)
    elif isinstance(stmt, st.Delete) and table is not None:
        for name, element in stmt.columns:
            col = table_column(table, name)
            if element is not None:
                _term_specs(element, deleted_element_spec(col), out)
        _using_specs(stmt.using, out)
        _relation_specs(table, stmt.where, out)
        _condition_specs(table, stmt.conditions, out)


def pk_indexes(stmt: st.Statement, table: Table | None) -> list[int]:
    """Bind marker positions of the partition key columns, when each is bound by ``pk = ?``."""
    if table is None or not isinstance(stmt, st.Select | st.Update | st.Delete | st.Insert):
        return []
    found: dict[str, int] = {}
    if isinstance(stmt, st.Insert):
        for name, term in zip(stmt.columns, stmt.values, strict=True):
            if isinstance(term, st.BindMarker):
                found[name] = term.index
    else:
        for rel in stmt.where:
            if rel.kind == "column" and rel.op == "=" and isinstance(rel.value, st.BindMarker):
                found[rel.columns[0]] = rel.value.index
    indexes = [found.get(c.name) for c in table.partition_key]
    return [] if any(i is None for i in indexes) else [i for i in indexes if i is not None]


# -- term resolution -------------------------------------------------------------

_clock_seq = random.getrandbits(14)
_node = int.from_bytes(os.urandom(6), "big") | 0x010000000000
_last_ts = 0


def new_timeuuid() -> uuid.UUID:
    """A version 1 UUID, strictly increasing within this process."""
    global _last_ts
    ts = int(time.time() * 1e7) + 0x01B21DD213814000
    if ts <= _last_ts:
        ts = _last_ts + 1
    _last_ts = ts
    return uuid.UUID(fields=(ts & 0xFFFFFFFF, (ts >> 32) & 0xFFFF, ((ts >> 48) & 0x0FFF) | 0x1000,
                             0x80 | (_clock_seq >> 8), _clock_seq & 0xFF, _node))


# The result type of each function the emulator runs (Cassandra 4's TimeFcts and UuidFcts).
_RESULT_TYPES: dict[str, CqlType] = {
    "now": parse_type("timeuuid"), "currenttimeuuid": parse_type("timeuuid"), "uuid": parse_type("uuid"),
    "currenttimestamp": parse_type("timestamp"), "currentdate": parse_type("date"),
    "totimestamp": parse_type("timestamp"),
}  # fmt: skip

# The types whose values a receiver of another type reads as its own (AbstractType.isValueCompatibleWith:
# LongType, TimestampType, TimeType, SimpleDateType, IntegerType, UUIDType, UTF8Type); BytesType reads any.
_ALSO_READS: dict[str, frozenset[str]] = {
    "bigint": frozenset({"timestamp"}), "timestamp": frozenset({"bigint"}), "time": frozenset({"bigint"}),
    "date": frozenset({"int"}), "varint": frozenset({"int", "bigint", "timestamp"}),
    "uuid": frozenset({"timeuuid"}), "text": frozenset({"ascii"}),
}  # fmt: skip


def _result_type(fn: st.FunctionCall) -> CqlType | None:
    """The type of what ``fn`` returns, None for a call the emulator does not run (refused by :func:`_call`)."""
    if fn.name == "totimestamp":
        arg = fn.args[0] if len(fn.args) == 1 else None
        return _RESULT_TYPES["totimestamp"] if isinstance(arg, st.FunctionCall) and arg.name == "now" \
            and not arg.args else None
    return None if fn.args else _RESULT_TYPES.get(fn.name)


def check_assignable(fn: st.FunctionCall, result: CqlType, receiver: CqlType, name: str) -> None:
    """Refuse a function result of a type ``receiver`` does not read, as Cassandra 4 (FunctionCall.Raw.prepare,
    AbstractFunction.testAssignment): now() into a timestamp or an int key, uuid() into a timeuuid."""
    if result == receiver or receiver.kind == "blob" or result.kind in _ALSO_READS.get(receiver.kind, ()):
        return
    raise Invalid(f"Type error: cannot assign result of function system.{fn.name} (type {result.cql()}) to "
                  f"{name} (type {receiver.cql()})")


def _call(fn: st.FunctionCall, ctype: CqlType, receiver: str) -> bytes:
    result = _result_type(fn)
    if result is None:
        raise Invalid(f"function {fn.name}() is not supported by this emulator in this position")
    check_assignable(fn, result, ctype, receiver)
    name = fn.name
    if name in ("now", "currenttimeuuid"):
        return new_timeuuid().bytes
    if name == "uuid":
        return uuid.uuid4().bytes
    if name == "currentdate":
        return result.serialize(datetime.datetime.now(datetime.UTC).date())
    return struct.pack(">q", int(time.time() * 1000))  # currenttimestamp, totimestamp(now())


@functools.cache
def _has_sets_or_maps(ctype: CqlType) -> bool:
    """Whether a value of ``ctype`` has a canonical form other than its bytes as bound: Cassandra binds a set or a
    map, at any depth, frozen or not, into a sorted, de-duplicated collection (Sets.Value.fromSerialized and
    Maps.Value.fromSerialized build a TreeSet / TreeMap by the element or key comparator) and stores that."""
    return ctype.kind in ("set", "map") or any(_has_sets_or_maps(p) for p in ctype.params)


@functools.cache
def _canonical_when_bound(ctype: CqlType) -> bool:
    """Whether a bound value of ``ctype`` is put in canonical form here (:func:`_has_sets_or_maps`). Not a whole
    non-frozen collection whose elements hold no set or map: the write stores it normalized anyway
    (``collections_ops.normalize``), and sorting it twice would cost every ingest write its measurements map twice."""
    if ctype.is_collection and not ctype.frozen:
        return any(_has_sets_or_maps(p) for p in ctype.params)
    return _has_sets_or_maps(ctype)


def resolve(term: st.Term, ctype: CqlType, values: list[Value], receiver: str = "the value") -> Value:
    """The wire bytes of ``term`` as ``ctype``; None for null, :data:`UNSET` for an unset bound value.
    ``receiver`` names what receives it (a column, ``[timestamp]``, ...) in a type error."""
    if isinstance(term, st.BindMarker):
        if term.index >= len(values):  # the callers check the count first; this names the marker left unbound
            raise Invalid(f"No value for {term.name or 'bind marker ' + str(term.index)}: there were at least "
                          f"{term.index + 1} markers(?) in CQL but {len(values)} bound variables")
        value = values[term.index]
        if isinstance(value, bytes):
            try:
                ctype.validate(value)
            except (InvalidValue, UnsupportedType) as exc:
                raise Invalid(f"Invalid value for {term.name or 'bind marker ' + str(term.index)}: {exc}") from None
            if _canonical_when_bound(ctype):
                value = ctype.canonical(value)
        return value
    if isinstance(term, st.FunctionCall):
        return _call(term, ctype, receiver)
    if term.value is None:
        return None
    try:
        return ctype.from_literal(term.value)
    except (InvalidValue, UnsupportedType) as exc:
        raise Invalid(str(exc)) from None


def resolve_int(term: st.Term | None, values: list[Value], what: str) -> int | None:
    """A ``USING TIMESTAMP`` or ``LIMIT`` value; None when there is none or it is unset (as Cassandra: the
    default timestamp, no limit). A null is refused, as Cassandra refuses it."""
    if term is None:
        return None
    raw = resolve(term, BIGINT if what == "timestamp" else INT, values, f"[{what}]")
    if raw is None:
        raise Invalid(f"Invalid null value of {what}")
    if raw is UNSET:
        return None
    return int.from_bytes(raw, "big", signed=True)
