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
from typing import TYPE_CHECKING

from . import results
from . import statements as st
from .errors import Invalid, ServerError
from .planner import resolve_int
from .select import resolve_restrictions
from .store import now_seconds
from .write import WriteContext, _check_conditions, execute_delete, execute_insert, execute_update, primary_keys

if TYPE_CHECKING:
    from .engine import Engine, Options, Session


# What Cosmos DB for Apache Cassandra answers a logged batch with (a Server error, code 0x0000), as users reported
# it; its documentation lists only unlogged batches as supported.
LOGGED_REFUSED = "Logged batches are not supported by the service yet. Please use unlogged batches instead."


def execute_batch(engine: Engine, batch: st.Batch, children: list[tuple[st.Statement, list[object]]],
                  opts: Options, session: Session) -> bytes:
    if batch.kind == "logged":
        raise ServerError(LOGGED_REFUSED)
    now = now_seconds()
    if batch.using.ttl is not None:
        raise Invalid("Global TTL on the BATCH statement is not supported.")
    ts = resolve_int(batch.using.timestamp, opts.values, "timestamp")
    if ts is None:
        ts = opts.timestamp
    tables = []
    for stmt, _ in children:
        if not isinstance(stmt, st.Insert | st.Update | st.Delete):
            raise Invalid("Only INSERT, UPDATE and DELETE statements are allowed in a BATCH")
        table = engine.resolve_table(stmt.table, session)
        if table.virtual:
            raise Invalid(f"{table.keyspace}.{table.name} is a system table and cannot be modified")
        tables.append(table)
    engine.faults.check("writes", batch=True)
    conditional = [
        i
        for i, (s, _) in enumerate(children)
        if getattr(s, "if_exists", False) or getattr(s, "conditions", None) or getattr(s, "if_not_exists", False)
    ]
    if conditional:
        if batch.using.timestamp is not None or any(s.using.timestamp is not None for s, _ in children):  # type: ignore[attr-defined]
            raise Invalid("Cannot provide custom timestamp for conditional BATCH")
        keys = set()
        for i, (stmt, values) in enumerate(children):
            if isinstance(stmt, st.Insert):
                keys.add((tables[i].id, _insert_partition(tables[i], stmt, values)))
            else:
                r = resolve_restrictions(tables[i], stmt.where, values)
                keys.update((tables[i].id, pk) for pk, _ in primary_keys(tables[i], r, need_clustering=False))
        if len({t.id for t in tables}) > 1 or len(keys) > 1:
            raise Invalid("Batch with conditions cannot span multiple tables or partitions")
        for i in conditional:
            stmt, values = children[i]
            ctx = WriteContext(values, ts, now)
            table = tables[i]
            if isinstance(stmt, st.Insert):
                probe = dataclasses.replace(stmt, using=st.Using())
                failed = _probe_insert(engine, table, probe, ctx)
            else:
                r = resolve_restrictions(table, stmt.where, values)
                pk, ck = primary_keys(table, r)[0]
                failed = _check_conditions(
                    table, engine.table_data(table), pk, ck, stmt.if_exists, stmt.conditions, ctx
                )
            if failed is not None:
                return failed.encode()
    for i, (stmt, values) in enumerate(children):
        ctx = WriteContext(values, ts, now)
        table = tables[i]
        if isinstance(stmt, st.Insert):  # conditions were checked above: run the children without them
            execute_insert(engine, table, dataclasses.replace(stmt, if_not_exists=False)
                           if stmt.if_not_exists else stmt, ctx)
        elif isinstance(stmt, st.Update):
            execute_update(engine, table, dataclasses.replace(stmt, if_exists=False, conditions=[])
                           if stmt.if_exists or stmt.conditions else stmt, ctx)
        else:
            execute_delete(engine, table, dataclasses.replace(stmt, if_exists=False, conditions=[])
                           if stmt.if_exists or stmt.conditions else stmt, ctx)
    if conditional:
        spec = results.ColumnSpec(tables[0].keyspace, tables[0].name, "[applied]", _boolean())
        return results.Rows([spec], [[b"\x01"]]).encode()
    return results.VOID


def _boolean():
    from .planner import BOOLEAN
    return BOOLEAN


def _insert_partition(table, stmt: st.Insert, values: list[object]) -> bytes:
    from .keys import join_key
    from .planner import resolve
    by_name = dict(zip(stmt.columns, stmt.values, strict=True))
    parts = []
    for col in table.partition_key:
        if col.name not in by_name:
            raise Invalid(f"Some partition key parts are missing: {col.name}")
        value = resolve(by_name[col.name], col.type, values)
        if not isinstance(value, bytes):
            raise Invalid(f"Invalid null or unset value for partition key part {col.name}")
        parts.append(value)
    return join_key(parts)


def _probe_insert(engine: Engine, table, stmt: st.Insert, ctx: WriteContext):
    """The not-applied result if the row of a conditional INSERT exists, else None (nothing is written)."""
    from .keys import join_key
    from .planner import resolve
    from .write import _current_values
    keys = {}
    for name, term in zip(stmt.columns, stmt.values, strict=True):
        col = table.columns.get(name)
        if col is not None and col.kind != "regular":
            keys[name] = resolve(term, col.type, ctx.values)
    pk = join_key([keys[c.name] for c in table.partition_key])
    ck = join_key([keys[c.name] for c in table.clustering]) if table.clustering else b""
    row, current = _current_values(table, engine.table_data(table), pk, ck, table.all_columns(), ctx.now)
    if row is None:
        return None
    from .write import _lwt_result
    return _lwt_result(table, False, current)
