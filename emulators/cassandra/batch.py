"""BATCH execution (unlogged, plain and prepared children, conditional).

Children run in order with the batch's timestamp unless they carry their own
``USING TIMESTAMP``. A conditional batch checks every condition first and
applies nothing unless all hold; as in Cassandra its children must all target
one partition of one table. A logged batch (``BEGIN BATCH``, and the driver's
default ``BatchStatement``) is refused before anything runs, with the Server
error Cosmos DB answers it with (:data:`LOGGED_REFUSED`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from . import results
from . import statements as st
from .errors import Invalid, ServerError
from .keys import join_key, partition_key
from .planner import BOOLEAN, resolve, resolve_int
from .results import Rows
from .select import resolve_restrictions
from .store import Cell, now_seconds
from .wire import Value
from .write import (
    WriteContext,
    _current_values,
    _insert_plan,
    _key_value,
    _lwt_result,
    check_conditional,
    condition_columns,
    conditions_hold,
    execute_delete,
    execute_insert,
    execute_update,
    is_conditional,
    primary_keys,
)

if TYPE_CHECKING:
    from .engine import Engine, Options, Session
    from .schema import Table


Child = tuple[st.Statement, list[Value], "Table | None"]
"""A BATCH child: its statement, its values, and for a prepared child the table it was prepared against (a plain
child's table is resolved in the session's keyspace)."""

# What Cosmos DB for Apache Cassandra answers a logged batch with (a Server error, code 0x0000), as users reported
# it; its documentation lists only unlogged batches as supported.
LOGGED_REFUSED = "Logged batches are not supported by the service yet. Please use unlogged batches instead."


def execute_batch(engine: Engine, kind: str, using: st.Using, children: list[Child], opts: Options,
                  session: Session) -> bytes:
    """Run a BATCH of ``kind`` (logged | unlogged) with the batch's ``USING``; each child comes with its values."""
    if kind == "logged":
        raise ServerError(LOGGED_REFUSED)
    now = now_seconds()
    if using.ttl is not None:
        raise Invalid("Global TTL on the BATCH statement is not supported.")
    ts = resolve_int(using.timestamp, opts.values, "timestamp")
    if ts is None:
        ts = opts.timestamp
    if ts is None:  # a batch is written at one timestamp, the coordinator's when the client gives none
        ts = time.time_ns() // 1000
    writes: list[tuple[st.Modification, list[Value]]] = []
    tables: list[Table] = []
    for stmt, values, prepared_table in children:
        if not isinstance(stmt, st.Insert | st.Update | st.Delete):
            raise Invalid("Only INSERT, UPDATE and DELETE statements are allowed in a BATCH")
        table = prepared_table or engine.resolve_table(stmt.table, session)
        if table.virtual:
            raise Invalid(f"{table.keyspace}.{table.name} is a system table and cannot be modified")
        if not isinstance(stmt, st.Insert):  # checked here: the children run without their conditions (below)
            check_conditional(table, stmt)
        writes.append((stmt, values))
        tables.append(table)
    conditional = [i for i, (s, _) in enumerate(writes) if is_conditional(s)]
    if conditional:  # a conditional batch is one Paxos round, as a conditional statement
        engine.faults.check("writes", opts.serial_consistency, "CAS")
    else:
        engine.faults.check("writes", opts.consistency, "UNLOGGED_BATCH")
    if conditional and (using.timestamp is not None or any(s.using.timestamp is not None for s, _ in writes)):
        raise Invalid("Cannot provide custom timestamp for conditional BATCH")
    if using.timestamp is not None and any(s.using.timestamp is not None for s, _ in writes):
        # Cassandra 4's BatchStatement.validate(): one timestamp for the batch, or one per statement, not both
        raise Invalid("Timestamp must be set either on BATCH or individual statements")
    if conditional:
        keys = set()
        for i, (stmt, values) in enumerate(writes):
            if isinstance(stmt, st.Insert):
                keys.add((tables[i].id, _insert_partition(tables[i], stmt, values)))
            else:
                r = resolve_restrictions(tables[i], stmt.where, values)
                keys.update((tables[i].id, pk) for pk, _ in primary_keys(tables[i], r, need_clustering=False))
        if len({t.id for t in tables}) > 1 or len(keys) > 1:
            raise Invalid("Batch with conditions cannot span multiple tables or partitions")
        ts = engine.paxos_timestamp(tables[0], next(iter(keys))[1])  # the ballot's, not the client's
        failed = _check_batch_conditions(engine, tables[0], [writes[i] for i in conditional], ts, now)
        if failed is not None:
            return failed.encode()
    # Every statement is checked and planned before any is applied, as Cassandra refuses a batch whole: a statement
    # refused after others were applied would leave part of the batch written behind the error.
    pending: list[tuple[Any, ...]] = []
    written: dict[tuple[Any, ...], tuple[Cell, bool | None]] = {}
    engine.pending = pending
    try:
        for i, (stmt, values) in enumerate(writes):
            ctx = WriteContext(values, ts, now, batch_cells=written)
            table = tables[i]
            seen = len(pending)
            if isinstance(stmt, st.Insert):  # conditions were checked above: run the children without them
                execute_insert(engine, table, dataclasses.replace(stmt, if_not_exists=False)
                               if stmt.if_not_exists else stmt, ctx)
            elif isinstance(stmt, st.Update):
                execute_update(engine, table, dataclasses.replace(stmt, if_exists=False, conditions=[])
                               if stmt.if_exists or stmt.conditions else stmt, ctx)
            else:
                execute_delete(engine, table, dataclasses.replace(stmt, if_exists=False, conditions=[])
                               if stmt.if_exists or stmt.conditions else stmt, ctx)
            written.update(((record[1], record[2], record[3], slot),
                            ((value, record[6], record[7]), record[9].get(slot) if record[9] else None))
                           for record in pending[seen:] if record[0] == "U" for slot, value in record[5])
    finally:
        engine.pending = None
    for record in pending:
        engine.apply(record)
    if conditional:
        spec = results.ColumnSpec(tables[0].keyspace, tables[0].name, "[applied]", BOOLEAN)
        return results.Rows([spec], [[b"\x01"]]).encode()
    return results.VOID


def _insert_partition(table: Table, stmt: st.Insert, values: list[Value]) -> bytes:
    by_name = dict(zip(stmt.columns, stmt.values, strict=True))
    parts = []
    for col in table.partition_key:
        if col.name not in by_name:
            raise Invalid(f"Some partition key parts are missing: {col.name}")
        value = resolve(by_name[col.name], col.type, values, col.name)
        if not isinstance(value, bytes):
            raise Invalid(f"Invalid null or unset value for partition key part {col.name}")
        parts.append(value)
    return partition_key(parts)


def _insert_key(table: Table, stmt: st.Insert, values: list[Value]) -> tuple[bytes, bytes]:
    """The primary key of an INSERT, checked as the INSERT itself checks it (all there, none null or unset)."""
    plan = _insert_plan(table, stmt)
    keys = {name: _key_value(col, resolve(term, col.type, values, name)) for name, (col, term) in plan.keys.items()}
    pk = partition_key([keys[n] for n in plan.pk_names])
    ck = join_key([keys[n] for n in plan.ck_names]) if plan.ck_names else b""
    return pk, ck


def _check_batch_conditions(engine: Engine, table: Table, children: list[tuple[st.Modification, list[Value]]],
                            ts: int, now: int) -> Rows | None:
    """None when every condition of a conditional batch holds (on one partition of ``table``), else its not-applied
    result, as Cassandra 4 builds it (BatchStatement.executeWithConditions, then
    ModificationStatement.buildCasFailureResultSet with isBatch): ``[applied]``, the primary key columns and the
    condition columns (each once, in order; every column when a statement is IF EXISTS or IF NOT EXISTS), one row
    per row the conditions read that exists, in clustering order; ``[applied]`` alone when none exists."""
    data = engine.table_data(table)
    rows = _condition_rows(table, children)  # refuses a mix of kinds on one row before any condition is read
    checked: dict[bytes, None] = {}  # the clustering keys the conditions read
    holds = True
    wildcard = False
    conditions: list[st.Condition] = []
    pk = b""
    for (stmt, values), (pk, ck) in zip(children, rows, strict=True):
        if isinstance(stmt, st.Insert):
            row, _ = _current_values(table, data, pk, ck, [], now)
            ok = row is None
            wildcard = True
        else:
            ok = conditions_hold(table, data, pk, ck, stmt.if_exists, stmt.conditions, WriteContext(values, ts, now))
            wildcard = wildcard or stmt.if_exists
            conditions += stmt.conditions
        checked.setdefault(ck, None)
        holds = holds and ok
    if holds:
        return None
    columns = table.all_columns() if wildcard else list(
        {c.name: c for c in [*table.partition_key, *table.clustering, *condition_columns(table, conditions)]}.values())
    sort_key = data.sort_key
    cks = sorted(checked, key=sort_key) if sort_key is not None else list(checked)
    found = [current for row, current in (_current_values(table, data, pk, ck, columns, now) for ck in cks)
             if row is not None]
    if not found:
        return _lwt_result(table, False)
    specs = [results.ColumnSpec(table.keyspace, table.name, "[applied]", BOOLEAN)]
    specs += [results.ColumnSpec(table.keyspace, table.name, c.name, c.type) for c in columns]
    return Rows(specs, [[b"\x00", *(v for _, v in current)] for current in found])


def _condition_rows(table: Table, children: list[tuple[st.Modification, list[Value]]]) -> list[tuple[bytes, bytes]]:
    """The row (partition key, clustering key) each conditional child's condition is on. As Cassandra 4
    (CQL3CasRequest.addExistsCondition and addConditions), a row takes one kind of condition: several IF NOT
    EXISTS, several IF EXISTS, or IF conditions, which all apply; a child bringing another kind to a row already
    conditioned is refused, with Cassandra's message (its wording for IF conditions after IF EXISTS included)."""
    kinds: dict[bytes, str] = {}
    rows = []
    for stmt, values in children:
        if isinstance(stmt, st.Insert):
            pk, ck = _insert_key(table, stmt, values)
            kind = "IF NOT EXISTS"
        else:
            keys = primary_keys(table, resolve_restrictions(table, stmt.where, values))
            if len(keys) != 1:
                raise Invalid("IN on the clustering key columns is not supported with conditional "
                              f"{'deletions' if isinstance(stmt, st.Delete) else 'updates'}")
            pk, ck = keys[0]
            kind = "IF EXISTS" if stmt.if_exists else "IF"
        previous = kinds.setdefault(ck, kind)
        if previous != kind:
            if kind == "IF" or previous == "IF":
                exists = "IF NOT EXISTS" if kind == "IF" else kind
                raise Invalid(f"Cannot mix IF conditions and {exists} for the same row")
            raise Invalid("Cannot mix IF EXISTS and IF NOT EXISTS conditions for the same row")
        rows.append((pk, ck))
    return rows
