"""INSERT, UPDATE, DELETE and BATCH: from statements to mutations.

A mutation is a plain tuple (it is also the record of the persistence journal):

- ``("U", table_id, pk, ck, marker, cells, ts, expiry, at, by_element)``: upsert;
  ``marker`` is True for INSERT (the row exists even with all columns null); ``cells``
  is a tuple of ``(slot, bytes | None)``; ``at`` is the wall-clock time, for the change
  feed; ``by_element`` maps the slots of ``cells`` that element operations wrote
  (collections not written whole) to whether they hold only that write's elements, see
  :attr:`.store.Row.by_element` and :func:`_overwrite`; None for none, as in older journals.
- ``("DR", table_id, pk, ck, ts)`` row, ``("DP", table_id, pk, ts)`` partition,
  ``("DS", table_id, pk, ck_eq, ck_slice, ts)`` clustering-range deletion.
- ``("T", table_id)`` truncate.

Lightweight transactions are linearizable here for free: the server runs one
statement at a time, so read-check-write cannot interleave.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import collections_ops as colls
from . import statements as st
from .errors import Invalid
from .keys import join_key, partition_key
from .planner import (
    BOOLEAN,
    INT,
    assignment_value_type,
    collection_element_types,
    condition_column,
    deleted_element_spec,
    resolve,
    resolve_int,
    table_column,
)
from .results import ColumnSpec, Rows
from .schema import Column, Table
from .select import Restrictions, _column_extractor, iter_scan, plan_scan, resolve_restrictions
from .store import Cell, Row, TableData
from .wire import UNSET, Value

MAX_TTL = 630720000
APPLIED_TRUE = b"\x01"
APPLIED_FALSE = b"\x00"


class Engine(Protocol):
    def table_data(self, table: Table) -> TableData: ...
    def apply(self, mutation: tuple[Any, ...]) -> None: ...
    def paxos_timestamp(self, table: Table, pk: bytes) -> int: ...


class WriteContext:
    """What a write needs besides the statement: bound values, default timestamp, clock."""

    __slots__ = ("batch_cells", "default_ts", "now", "values")

    def __init__(self, values: list[Value], default_ts: int | None, now: int,
                 batch_cells: dict[tuple[Any, ...], tuple[Cell, bool | None]] | None = None) -> None:
        self.values = values
        self.default_ts = default_ts
        self.now = now
        # In a BATCH: (table id, partition key, clustering key, slot) -> the cell an earlier statement writes there,
        # and what wrote it: a whole write (None) or an element operation, and whether the cell holds only the
        # elements it wrote (as :attr:`.store.Row.by_element`)
        self.batch_cells = batch_cells


def write_timestamp(using: st.Using, ctx: WriteContext) -> int:
    ts = resolve_int(using.timestamp, ctx.values, "timestamp")
    if ts is not None:
        return ts
    if ctx.default_ts is not None:
        return ctx.default_ts
    return time.time_ns() // 1000


def write_expiry(using: st.Using, table: Table, ctx: WriteContext) -> int | None:
    # As Cassandra's Attributes.getTimeToLive: no TTL or an unset one is the table's default, a null one is 0.
    raw = resolve(using.ttl, INT, ctx.values, "[ttl]") if using.ttl is not None else UNSET
    ttl = table.default_ttl if raw is UNSET else 0 if raw is None else int.from_bytes(raw, "big", signed=True)
    if ttl < 0:
        raise Invalid(f"A TTL must be greater or equal to 0, but was {ttl}")
    if ttl > MAX_TTL:
        raise Invalid(f"ttl is too large. requested ({ttl}) maximum ({MAX_TTL})")
    return ctx.now + ttl if ttl else None


def _key_value(col: Column, value: Value) -> bytes:
    if value is None:
        part = "partition key" if col.kind == "partition_key" else "clustering key"
        raise Invalid(f"Invalid null value in condition for {part} part {col.name}")
    if value is UNSET:
        raise Invalid(f"Invalid unset value for column {col.name}")
    return value


def primary_keys(table: Table, r: Restrictions, need_clustering: bool = True) -> list[tuple[bytes, bytes]]:
    """Every (partition key, clustering key) a WHERE on the full primary key names (= or IN)."""
    missing = [c.name for c in table.partition_key if c.name not in r.pk]
    if missing:
        raise Invalid(f"Some partition key parts are missing: {', '.join(missing)}")
    if r.token_lo or r.token_hi or r.filters:
        raise Invalid("Non PRIMARY KEY columns found in where clause or token() used: only the primary key can be "
                      "restricted in a modification statement")
    if need_clustering:
        missing = [c.name for c in table.clustering if c.name not in r.ck_eq]
        if missing or r.ck_slice:
            raise Invalid(f"Some clustering keys are missing: {', '.join(missing or list(r.ck_slice))}")
    # each key once, as Cassandra builds them into sets (an IN naming a row twice writes it once)
    pk_values = itertools.product(*(r.pk[c.name] for c in table.partition_key))
    pks = list(dict.fromkeys(partition_key(list(c)) for c in pk_values))
    if not table.clustering or any(c.name not in r.ck_eq for c in table.clustering):
        return [(pk, b"") for pk in pks]  # a whole partition, or a clustering range (need_clustering=False)
    ck_values = itertools.product(*(r.ck_eq[c.name] for c in table.clustering))
    cks = list(dict.fromkeys(join_key(list(c)) for c in ck_values))
    return [(pk, ck) for pk in pks for ck in cks]


def _lwt_result(table: Table, applied: bool, row_values: list[tuple[Column, bytes | None]] | None = None) -> Rows:
    specs = [ColumnSpec(table.keyspace, table.name, "[applied]", BOOLEAN)]
    values: list[bytes | None] = [APPLIED_TRUE if applied else APPLIED_FALSE]
    for col, v in row_values or []:
        specs.append(ColumnSpec(table.keyspace, table.name, col.name, col.type))
        values.append(v)
    return Rows(specs, [values])


def _current_values(table: Table, data: TableData, pk: bytes, ck: bytes, columns: list[Column],
                    now: int) -> tuple[Row | None, list[tuple[Column, bytes | None]]]:
    part = data.partition(pk)
    row = part.get(ck) if part is not None else None
    if row is None or not row.live(now):
        return None, []
    assert part is not None
    return row, [(c, _column_extractor(table, c)(part, row, now)) for c in columns]


class _InsertPlan:
    """What an INSERT's column list means for one table, worked out once per statement and table."""

    __slots__ = ("ck_names", "keys", "pk_names", "regular", "table", "width")

    def __init__(self, table: Table, stmt: st.Insert) -> None:
        self.table = table
        self.width = len(table.regular)
        self.keys: dict[str, tuple[Column, st.Term]] = {}
        self.regular: list[tuple[Column, st.Term]] = []
        for name, term in zip(stmt.columns, stmt.values, strict=True):
            col = table.columns.get(name)
            if col is None:
                raise Invalid(f"Undefined column name {name} in table {table.keyspace}.{table.name}")
            if col.kind != "regular":
                self.keys[name] = (col, term)
            else:
                self.regular.append((col, term))
        for group, what in ((table.partition_key, "partition key"), (table.clustering, "clustering key")):
            missing = [c.name for c in group if c.name not in self.keys]
            if missing:
                raise Invalid(f"Some {what} parts are missing: {', '.join(missing)}")
        self.pk_names = [c.name for c in table.partition_key]
        self.ck_names = [c.name for c in table.clustering]


def _insert_plan(table: Table, stmt: st.Insert) -> _InsertPlan:
    plan: _InsertPlan | None = stmt.__dict__.get("_plan")
    if plan is None or plan.table is not table or plan.width != len(table.regular):
        plan = _InsertPlan(table, stmt)
        stmt.__dict__["_plan"] = plan  # statements are cached by query text and shared by connections
    return plan


def execute_insert(engine: Engine, table: Table, stmt: st.Insert, ctx: WriteContext) -> Rows | None:
    values = ctx.values
    plan = _insert_plan(table, stmt)
    keys = {name: _key_value(col, resolve(term, col.type, values, name)) for name, (col, term) in plan.keys.items()}
    pk = partition_key([keys[n] for n in plan.pk_names])
    ck = join_key([keys[n] for n in plan.ck_names]) if plan.ck_names else b""
    if stmt.if_not_exists and stmt.using.timestamp is not None:
        raise Invalid("Cannot provide custom timestamp for conditional updates")
    # a conditional write takes its Paxos ballot's timestamp, never the client's (see Engine.paxos_timestamp)
    ts = engine.paxos_timestamp(table, pk) if stmt.if_not_exists else write_timestamp(stmt.using, ctx)
    expiry = write_expiry(stmt.using, table, ctx)
    data = engine.table_data(table)
    if stmt.if_not_exists:
        row, current = _current_values(table, data, pk, ck, table.all_columns(), ctx.now)
        if row is not None:
            return _lwt_result(table, False, current)
    cells: list[tuple[int, bytes | None]] = []
    cleared: list[tuple[int, bytes | None]] = []
    for col, term in plan.regular:
        v = resolve(term, col.type, values, col.name)
        if v is UNSET:
            continue
        _whole_value(table, data, pk, ck, col, v, ts, expiry, ctx, cells, cleared)
    at = time.time()
    if cleared:  # an empty collection: only its tombstone, a microsecond before the statement (see _overwrite)
        engine.apply(("U", table.id, pk, ck, False, tuple(cleared), ts - 1, None, at, None))
    engine.apply(("U", table.id, pk, ck, True, tuple(cells), ts, expiry, at, None))
    return _lwt_result(table, True) if stmt.if_not_exists else None


def is_conditional(stmt: st.Modification) -> bool:
    """A lightweight transaction: ``IF NOT EXISTS``, ``IF EXISTS`` or ``IF`` conditions."""
    if isinstance(stmt, st.Insert):
        return stmt.if_not_exists
    return stmt.if_exists or bool(stmt.conditions)


def check_conditional(table: Table, stmt: st.Update | st.Delete) -> None:
    """Refuse, before anything is read or written, IF conditions Cassandra or Cosmos DB refuse: on a PRIMARY KEY
    column (Cassandra), or on the deletion of an entire row of a table without the cell-level flags (Cosmos DB, see
    :data:`ENTIRE_ROW_CONDITIONAL_DELETE`). A BATCH checks its children here too, as it runs them without their
    conditions once it has checked those."""
    for cond in stmt.conditions:
        condition_column(table, cond.column)
    if isinstance(stmt, st.Delete) and stmt.conditions and not stmt.columns and not _cell_level(table):
        raise Invalid(ENTIRE_ROW_CONDITIONAL_DELETE)


def condition_columns(table: Table, conditions: list[st.Condition]) -> list[Column]:
    """The columns ``conditions`` name, each once, in the order of the IF (Cassandra's buildCasFailureResultSet
    collects them in a LinkedHashSet: "We can have multiple conditions on the same columns")."""
    columns: dict[str, Column] = {}
    for cond in conditions:
        col = condition_column(table, cond.column)
        columns.setdefault(col.name, col)
    return list(columns.values())


def conditions_hold(table: Table, data: TableData, pk: bytes, ck: bytes, if_exists: bool,
                    conditions: list[st.Condition], ctx: WriteContext) -> bool:
    """Whether ``IF EXISTS`` or the ``IF`` conditions hold on the row (``pk``, ``ck``) as it is now."""
    cols = [condition_column(table, c.column) for c in conditions]
    row, current = _current_values(table, data, pk, ck, cols, ctx.now)
    if if_exists:
        return row is not None
    holds = True
    for i, (cond, col) in enumerate(zip(conditions, cols, strict=True)):
        cur = current[i][1] if row is not None else None
        if cond.element is not None:
            ktype, vtype = collection_element_types(col, col.name)
            key = resolve(cond.element, ktype, ctx.values, f"key({col.name})")
            if key is None or key is UNSET:  # as Cassandra: "Invalid null value for map element access"
                raise Invalid(f"Invalid {'null' if key is None else 'unset'} value for {col.type.kind} element access")
            if col.type.kind == "map":
                cur = colls.map_get(ktype, cur, key)
            else:
                items = colls.split_elements(cur)
                idx = int.from_bytes(key, "big", signed=True)
                cur = items[idx] if 0 <= idx < len(items) else None
            ctype = vtype
        else:
            ctype = col.type
        want = resolve(cond.value, ctype, ctx.values, col.name if cond.element is None else f"value({col.name})")
        if want is UNSET:
            raise Invalid(f"Invalid unset value for column {col.name}")
        if cond.op in ("=", "!="):
            equal = (cur is None and want is None) or (cur is not None and want is not None
                                                       and ctype.compare_key(cur) == ctype.compare_key(want))
            ok = equal if cond.op == "=" else not equal
        else:
            if want is None:
                raise Invalid(f"Invalid comparison with null for operator \"{cond.op}\"")
            if cur is None:
                ok = False
            else:
                a, b = ctype.compare_key(cur), ctype.compare_key(want)
                ok = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[cond.op]
        holds = holds and ok
    return holds


def _check_conditions(table: Table, data: TableData, pk: bytes, ck: bytes, if_exists: bool,
                      conditions: list[st.Condition], ctx: WriteContext) -> Rows | None:
    """None when the conditions hold, else the not-applied result: ``[applied]``, then the current row's values of
    the condition columns (every column for IF EXISTS), or ``[applied]`` alone when there is no row."""
    if conditions_hold(table, data, pk, ck, if_exists, conditions, ctx):
        return None
    cols = table.all_columns() if if_exists else condition_columns(table, conditions)
    row, current = _current_values(table, data, pk, ck, cols, ctx.now)
    return _lwt_result(table, False, current if row is not None else [])


def _stored_ts(row: Row | None, col: Column) -> int | None:
    """The timestamp of the collection stored in ``col``, expired or not; None when there is none, or a tombstone of
    the whole collection, which shadows what is older than it here as in Cassandra. A tombstone an element operation
    left (it removed the last elements) counts: in Cassandra it shadows only those elements."""
    cell = row.raw_cell(col.slot) if row is not None else None
    by_element = cell is not None and row is not None and row.by_element is not None and col.slot in row.by_element
    return cell[1] if cell is not None and (cell[0] is not None or by_element) else None


def _whole_value(table: Table, data: TableData, pk: bytes, ck: bytes, col: Column, value: bytes | None, ts: int,
                 expiry: int | None, ctx: WriteContext, cells: list[tuple[int, bytes | None]],
                 cleared: list[tuple[int, bytes | None]]) -> None:
    """A column given a whole value (``INSERT``, ``SET c = v``): its cell, or for a non-frozen collection what
    :func:`_overwrite` makes of it, an emptied one only its tombstone (``cleared``, written at ``ts - 1``)."""
    if col.type.is_collection and not col.type.frozen:
        value = _overwrite(table, data, pk, ck, col, value, ts, expiry, ctx)
        if value is None:
            cleared.append((col.slot, None))
            return
    cells.append((col.slot, value))


def _overwrite(table: Table, data: TableData, pk: bytes, ck: bytes, col: Column, value: bytes | None, ts: int,
               expiry: int | None, ctx: WriteContext) -> bytes | None:
    """A whole non-frozen collection written (``INSERT ... c = v``, ``SET c = v``): the value to store, None for an
    empty collection or null. Refused where the single-cell collection would differ from Cassandra.

    Cassandra writes a collection tombstone at ``ts - 1`` and a cell per element at ``ts``
    (UpdateParameters.setComplexDeletionTimeForOverwrite, from Sets/Lists/Maps.Setter). Replacing the stored cell
    gives the same collection when every stored element is older than ``ts``; an empty collection or null is that
    tombstone alone, which the caller writes at ``ts - 1``. Elements written at ``ts`` already (the same row written
    again at the same timestamp: a redelivered write, or twice in one BATCH) survive that tombstone and meet the new
    ones element by element (:func:`_merged_at_one_timestamp`); where the result is one collection with one expiry
    it is stored, else the cell's tie rule keeps one of the two writes whole (a documented difference).

    A stored collection an element operation wrote last has no tombstone at its timestamp - 1, and may hold
    elements with older timestamps, or element tombstones, which one cell does not keep apart. An overwrite before
    it would remove the elements older than itself and add its own in Cassandra; one at its timestamp meets it
    element by element only when it holds that operation's elements alone. Any other is refused rather than
    answered with the stored collection.
    """
    new = colls.normalize(col.type, value)
    in_batch = ctx.batch_cells.get((table.id, pk, ck, col.slot)) if ctx.batch_cells is not None else None
    cell: Cell | None
    own_elements: bool | None
    if in_batch is not None:
        cell, own_elements = in_batch
        if own_elements is not None and not own_elements:
            raise Invalid(f"This emulator cannot combine, in one BATCH, an element operation on {col.name} (a "
                          "non-frozen collection) that found it not empty or removed elements with a later write "
                          "of it whole: the statements of a batch share one timestamp and Cassandra merges them "
                          "element by element; write the collection whole in one statement")
    else:
        part = data.partition(pk)
        row = part.get(ck) if part is not None else None
        cell = row.raw_cell(col.slot) if row is not None else None
        own_elements = row.by_element.get(col.slot) if row is not None and row.by_element else None
        if cell is not None and own_elements is not None and (cell[1] > ts or (cell[1] == ts and not own_elements)):
            raise Invalid(f"This emulator keeps {col.name} (a non-frozen collection) as one cell, last written at "
                          f"{cell[1]} by an element operation: an overwrite at {ts}, not after it, would replace "
                          "only the elements older than it in Cassandra (each element is a cell of its own there), "
                          "which one cell cannot tell apart; write the whole collection with a later timestamp")
    earlier = cell if cell is not None and cell[0] is not None else None
    if earlier is None or earlier[1] != ts:
        # Later: it replaces the collection. Older: the store keeps the newer collection, as Cassandra does when
        # that one was written whole (its tombstone at its timestamp - 1 shadows every older element); one an
        # element operation wrote last is refused above.
        return new
    merged = _merged_at_one_timestamp(col, earlier, new, expiry, bool(own_elements))
    if merged is _NOT_ONE_CELL:
        if col.type.kind == "list" and own_elements:
            raise Invalid(f"This emulator keeps {col.name} (a non-frozen collection) as one cell with one expiry: "
                          f"the elements an element operation wrote at {ts} expire otherwise than this write of "
                          "the whole list at the same timestamp would make them, and Cassandra keeps both "
                          "(each element is a cell with its own TTL there); write the whole list with a later "
                          "timestamp")
        # Two whole writes of a list, one key with two values, or two expiries: Cassandra would keep a mix of both
        # writes' elements, which one cell cannot hold. The cell's own tie rule keeps one of the two whole
        # (docs/emulators: not refused, since an event re-sent with its event time as timestamp writes exactly this).
        return new
    return merged  # type: ignore[return-value]  # the sentinel is excluded above


_NOT_ONE_CELL = object()


def _merged_at_one_timestamp(col: Column, stored: tuple[bytes | None, int, int | None], new: bytes | None,
                             expiry: int | None, by_element: bool) -> bytes | object | None:
    """Two writes of a whole set or map at one timestamp, as Cassandra reconciles them element by element
    (Cells.resolveRegular: an expiring cell beats a live one, then the later expiry, then the greater value): the
    collection to store if that is one cell again (one expiry, and a value the store takes over the stored one at
    the same timestamp: a union at one expiry, or the new collection on its later expiry), else ``_NOT_ONE_CELL``.

    A list's elements are keyed by time-UUIDs (Lists.Setter and Appender take fresh ones from the clock, Prepender
    ones before 2010, counted down), so both writes' elements stay, in the order of those keys. When ``by_element``
    (the stored list holds only what one append or prepend wrote at this timestamp, to an empty list) and both
    expire alike, that is the stored elements then the new ones: one cell again. Two whole lists (doubled in
    Cassandra) are never one cell here."""
    from .store import _expires_later  # the tie rule of single cells

    old_expiry = stored[2]
    kind = col.type.kind
    if kind == "list":
        if not by_element or expiry != old_expiry:
            return _NOT_ONE_CELL
        return colls.join_elements(colls.split_elements(stored[0]) + colls.split_elements(new))
    # Elements and keys meet by the element type's comparator (decimal 1.0 and 1.00 are one cell path); of two
    # that meet, the winning cell is kept whole, its key bytes with it: the stored one on a full tie (same expiry,
    # same value), which also keeps the union from sorting below the stored cell, and the new one on its later
    # expiry.
    key = col.type.params[0].compare_key
    if kind == "set":
        old_items = {key(e): e for e in colls.split_elements(stored[0])}
        new_items = {key(e): e for e in colls.split_elements(new)}
        if old_expiry == expiry:
            union = {**new_items, **old_items}
            return colls.join_elements([union[k] for k in sorted(union)])
        if old_items.keys() <= new_items.keys() and _expires_later(expiry, old_expiry):
            return new
        return _NOT_ONE_CELL
    old_map = {key(k): (k, v) for k, v in colls.split_map(stored[0])}
    new_map = {key(k): (k, v) for k, v in colls.split_map(new)}
    if old_expiry == expiry:
        # every element ties on expiry, and a key's greater value would win; written as one cell at the same
        # timestamp and expiry, the union replaces the stored one only when it is larger, so keys whose values
        # differ are refused
        if any(old_map[k][1] != kv[1] for k, kv in new_map.items() if k in old_map):
            return _NOT_ONE_CELL
        merged = {**new_map, **old_map}
    elif old_map.keys() <= new_map.keys() and _expires_later(expiry, old_expiry):
        merged = new_map  # every stored element meets a new one, which wins on its expiry
    else:
        return _NOT_ONE_CELL
    return colls.join_map([merged[k] for k in sorted(merged)])


def _element_op_check(table: Table, pk: bytes, ck: bytes, col: Column, stored_ts: int | None, ts: int,
                      ctx: WriteContext) -> None:
    """Refuse an element operation the single-cell collection would get wrong (see below)."""
    if ctx.batch_cells is not None and (table.id, pk, ck, col.slot) in ctx.batch_cells:
        raise Invalid(f"This emulator cannot combine, in one BATCH, a write of {col.name} (a non-frozen collection) "
                      "with an element operation on it: the statements of a batch share one timestamp and Cassandra "
                      "merges them element by element; write the collection whole in one statement")
    if stored_ts is not None and stored_ts >= ts:
        raise Invalid(f"This emulator keeps {col.name} (a non-frozen collection) as one cell written at {stored_ts}: "
                      f"an element operation at {ts}, not after it, would drop an element Cassandra keeps (each "
                      "element is a cell of its own there); write the whole collection, or use a later timestamp")


def _element_expiry_check(col: Column, adds: bool, stored: bytes | None, stored_expiry: int | None,
                          expiry: int | None) -> None:
    """Refuse an element operation that adds elements with another expiry than the stored elements': the
    collection is one cell with one expiry here, where each element of Cassandra's keeps its own TTL."""
    if adds and stored is not None and expiry != stored_expiry:
        now = "do not expire" if stored_expiry is None else f"expire at {stored_expiry}"
        new = "without a TTL" if expiry is None else f"expiring at {expiry}"
        raise Invalid(f"This emulator keeps {col.name} (a non-frozen collection) as one cell with one expiry: its "
                      f"elements {now}, and adding elements {new} would change the expiry of the elements already "
                      "there (each element has its own TTL in Cassandra); write the whole collection, or add "
                      "elements only with the stored elements' expiry")


def _assignment_cells(table: Table, data: TableData, pk: bytes, ck: bytes, assignments: list[st.Assignment],
                      ctx: WriteContext, ts: int, expiry: int | None
                      ) -> tuple[list[tuple[int, bytes | None, int | None]], list[tuple[int, bytes | None]],
                                 dict[int, bool] | None]:
    """The cells of an UPDATE's assignments, each with its expiry, the collections it empties (their tombstones
    go at ``ts - 1``, see :func:`_overwrite`) and the slots element operations write, each mapped to whether the
    collection holds only this statement's elements (see :attr:`.store.Row.by_element`). A non-frozen collection
    is one cell here, so an element operation (append, put, remove) rewrites the whole collection at the statement's
    timestamp: correct when that is after the stored collection's, refused otherwise. The rewritten collection keeps
    the stored elements' expiry (a removal leaves the other elements' TTLs alone, as in Cassandra); adding elements
    with another expiry is refused."""
    cells: list[tuple[int, bytes | None, int | None]] = []
    cleared: list[tuple[int, bytes | None]] = []
    written: dict[int, bytes | None] = {}  # slot -> its value after this statement's earlier operations
    kept: dict[int, tuple[bytes | None, int | None]] = {}  # slot -> the stored (live) collection and its expiry
    done: dict[int, list[tuple[str, Value]]] = {}  # slot -> (kind, element key or None) of those operations
    removing: set[int] = set()  # slots some operation removes elements from (leaving element tombstones)
    list_changes: dict[int, list[tuple[bytes, bytes | None]]] = {}  # slot -> the list's (index, value) settings
    row: Row | None = None
    part = data.partition(pk)
    if part is not None:
        row = part.get(ck)
    for a in assignments:
        col = table_column(table, a.column)
        if col.kind != "regular":
            raise Invalid(f"PRIMARY KEY part {col.name} found in SET part")
        if a.kind == "set":
            v = resolve(a.value, col.type, ctx.values, col.name)
            if v is UNSET:
                continue
            whole: list[tuple[int, bytes | None]] = []
            _whole_value(table, data, pk, ck, col, v, ts, expiry, ctx, whole, cleared)
            cells += [(slot, value, expiry) for slot, value in whole]
            continue
        if a.kind != "set_element" and (not col.type.is_collection or col.type.frozen):
            raise colls.not_a_collection(a.kind, col.type, col.name)  # before any read, as Cassandra's prepare
        if col.slot in written:  # `SET m['a'] = 1, m['b'] = 2` or `l = l + [1], l = l + [2]`: both apply
            current = written[col.slot]
        else:
            current_cell = row.cell(col.slot, ctx.now) if row is not None else None
            current = current_cell[0] if current_cell else None
            _element_op_check(table, pk, ck, col, _stored_ts(row, col), ts, ctx)
            kept[col.slot] = (current, current_cell[2] if current_cell else None)
        stored, stored_expiry = kept[col.slot]
        key: Value = None
        if a.kind == "set_element":
            assert a.element is not None
            ktype, vtype = collection_element_types(col, col.name)
            key = resolve(a.element, ktype, ctx.values, f"{'idx' if col.type.kind == 'list' else 'key'}({col.name})")
            value = resolve(a.value, vtype, ctx.values, f"value({col.name})")
            if key is None or key is UNSET:
                raise Invalid(f"Invalid null or unset key for {col.name}")
            if value is UNSET:
                continue
            if value is None:
                removing.add(col.slot)
            _element_expiry_check(col, value is not None, stored, stored_expiry, expiry)
            if col.type.kind == "list":  # every index is one of the list as it was before the statement
                changes = list_changes.setdefault(col.slot, [])
                changes.append((key, value))
                new = colls.set_indexes(stored, changes)
            else:
                new = colls.set_element(col.type, current, key, value)
        else:
            operand = resolve(a.value, assignment_value_type(col, a.kind), ctx.values, col.name)
            if operand is UNSET:
                continue
            _element_expiry_check(col, a.kind != "remove", stored, stored_expiry, expiry)
            if a.kind == "remove":
                removing.add(col.slot)
                new = colls.remove(col.type, current, operand)
            else:
                new = colls.add(col.type, current, operand, prepend=a.kind == "prepend")
        if col.slot in done:
            _check_combination(col, done[col.slot], a.kind, key)
        cells.append((col.slot, new, stored_expiry if stored is not None else expiry))
        written[col.slot] = new
        done.setdefault(col.slot, []).append((a.kind, key))
    by_element = {slot: kept[slot][0] is None and new is not None and slot not in removing
                  for slot, new in written.items()}
    return cells, cleared, by_element or None


def _check_combination(col: Column, earlier: list[tuple[str, Value]], kind: str, key: Value) -> None:
    """Several operations on one collection in one UPDATE. Cassandra applies them all to the row as it was before
    the statement, and the resulting cells merge; the emulator applies them one after the other, which gives the
    same collection when they are all appends, all prepends, all removals, or element settings of distinct keys
    or indexes. Any other mix is refused rather than answered differently."""
    kinds = {done for done, _ in earlier} | {kind}
    if len(kinds) == 1 and kind in ("add", "prepend", "remove") and not (kind == "add" and col.type.kind == "map"):
        return
    if kinds == {"set_element"} and all(key != other for _, other in earlier):
        return
    raise Invalid(f"This emulator cannot combine these operations on {col.name} in one UPDATE (Cassandra applies "
                  "each to the row as it was before the statement); split them into separate statements")


def _upserts(table: Table, pk: bytes, ck: bytes, cells: list[tuple[int, bytes | None, int | None]], ts: int,
             at: float, by_element: dict[int, bool] | None) -> list[tuple[Any, ...]]:
    """The upsert records (no row marker) of ``cells``, each ``(slot, value, expiry)``: one per expiry;
    ``by_element``: the slots element operations write (see :attr:`.store.Row.by_element`)."""
    by_expiry: dict[int | None, list[tuple[int, bytes | None]]] = {}
    for slot, value, expiry in cells:
        by_expiry.setdefault(expiry, []).append((slot, value))
    return [("U", table.id, pk, ck, False, tuple(group), ts, expiry, at, by_element)
            for expiry, group in by_expiry.items()]


def execute_update(engine: Engine, table: Table, stmt: st.Update, ctx: WriteContext) -> Rows | None:
    check_conditional(table, stmt)
    r = resolve_restrictions(table, stmt.where, ctx.values)
    keys = primary_keys(table, r)
    expiry = write_expiry(stmt.using, table, ctx)
    data = engine.table_data(table)
    conditional = stmt.if_exists or bool(stmt.conditions)
    if conditional:
        if stmt.using.timestamp is not None:
            raise Invalid("Cannot provide custom timestamp for conditional updates")
        if len(keys) != 1:
            raise Invalid("IN on the primary key is not supported with conditional updates")
        ts = engine.paxos_timestamp(table, keys[0][0])  # the ballot's, never the client's
        failed = _check_conditions(table, data, keys[0][0], keys[0][1], stmt.if_exists, stmt.conditions, ctx)
        if failed is not None:
            return failed
    else:
        ts = write_timestamp(stmt.using, ctx)
    # Every row is worked out before any is written: a row refused after others were written would leave the
    # statement half applied behind the error.
    records: list[tuple[Any, ...]] = []
    for pk, ck in keys:
        cells, cleared, by_element = _assignment_cells(table, data, pk, ck, stmt.assignments, ctx, ts, expiry)
        at = time.time()
        if cleared:
            records.append(("U", table.id, pk, ck, False, tuple(cleared), ts - 1, None, at, None))
        records += _upserts(table, pk, ck, cells, ts, at, by_element)
    for record in records:
        engine.apply(record)
    return _lwt_result(table, True) if conditional else None


# Cosmos DB's answer to a row deletion with IF conditions on a table without its cell-level flags (its documentation
# on lightweight transactions: "Row delete combined with IF condition is not supported if the flags are not enabled").
CELL_LEVEL_FLAGS = ("cosmosdb_cell_level_timestamp", "cosmosdb_cell_level_timestamp_tombstones",
                    "cosmosdb_cell_level_timetolive")
ENTIRE_ROW_CONDITIONAL_DELETE = (
    "Conditional delete of an entire row is not supported. (Azure Cosmos DB for Apache Cassandra supports it on "
    f"tables created WITH {' AND '.join(f'{flag}=true' for flag in CELL_LEVEL_FLAGS)}.)"
)


# Cassandra's answers to DELETE c[null] (Maps.DiscarderByKey, Lists.DiscarderByIndex, Sets.ElementDiscarder).
_NULL_ELEMENT = {"map": "Invalid null map key", "list": "Invalid null value for list index",
                 "set": "Invalid null set element"}


# What Cassandra 4 does with an unset element in DELETE c[?]: Maps.DiscarderByKey refuses it ("Invalid unset map
# key"), Lists.DiscarderByIndex returns before reading the list, and Sets.ElementDiscarder does not check for it, so
# it writes a tombstone for the element whose bytes are the unset marker's, which are empty: the set loses its
# empty element ('' of a set<text>), if it has one, and nothing else.
_UNSET_SET_ELEMENT = b""


def _cell_level(table: Table) -> bool:
    return all(table.options.get(flag) in (True, "true") for flag in CELL_LEVEL_FLAGS)


def execute_delete(engine: Engine, table: Table, stmt: st.Delete, ctx: WriteContext) -> Rows | None:
    check_conditional(table, stmt)
    r = resolve_restrictions(table, stmt.where, ctx.values)
    ts = write_timestamp(stmt.using, ctx)
    data = engine.table_data(table)
    conditional = stmt.if_exists or bool(stmt.conditions)
    full_row = all(c.name in r.ck_eq for c in table.clustering) and not r.ck_slice
    keys = primary_keys(table, r) if stmt.columns or conditional else primary_keys(table, r, need_clustering=False)
    if conditional:
        if stmt.using.timestamp is not None:
            raise Invalid("Cannot provide custom timestamp for conditional deletions")
        if len(keys) != 1:
            raise Invalid("IN on the primary key is not supported with conditional deletions")
        ts = engine.paxos_timestamp(table, keys[0][0])
        failed = _check_conditions(table, data, keys[0][0], keys[0][1], stmt.if_exists, stmt.conditions, ctx)
        if failed is not None:
            return failed
    records: list[tuple[Any, ...]] = []  # every row is worked out before any is written (see execute_update)
    if stmt.columns:
        for pk, ck in keys:
            cells: list[tuple[int, bytes | None, int | None]] = []
            part = data.partition(pk)
            row = part.get(ck) if part is not None else None
            # Each element deletion applies to the collection as it was before the statement, as in Cassandra:
            # ``DELETE m['a'], m['b']`` removes both keys, ``DELETE l[0], l[1]`` the first two elements.
            elements: dict[int, tuple[Column, bytes, int | None, list[bytes]]] = {}
            whole: set[int] = set()
            for name, element in stmt.columns:
                col = table_column(table, name)
                if col.kind != "regular":
                    raise Invalid(f"Invalid identifier {name} for deletion (should not be a PRIMARY KEY part)")
                if element is None:
                    whole.add(col.slot)
                    continue
                spec = deleted_element_spec(col)
                key = resolve(element, spec.type, ctx.values, spec.name)
                if key is UNSET:  # as Cassandra 4: refused for a map, nothing for a list (see _UNSET_SET_ELEMENT)
                    if col.type.kind == "map":
                        raise Invalid("Invalid unset map key")
                    if col.type.kind == "list":
                        continue
                    key = _UNSET_SET_ELEMENT
                if key is None:
                    raise Invalid(_NULL_ELEMENT[col.type.kind])  # a map, list or set here
                cur_cell = row.cell(col.slot, ctx.now) if row is not None else None
                cur = cur_cell[0] if cur_cell else None
                if cur is None and col.type.kind == "list":  # as Cassandra 4 (Lists.DiscarderByIndex)
                    raise Invalid("Attempted to delete an element from a list which is null")
                _element_op_check(table, pk, ck, col, _stored_ts(row, col), ts, ctx)
                if cur is None:  # a map key or set element of a null collection: nothing to delete
                    continue
                # the other elements keep their expiry (in Cassandra only the removed element's cell changes)
                assert cur_cell is not None
                elements.setdefault(col.slot, (col, cur, cur_cell[2], []))[3].append(key)
            cells += [(slot, None, None) for slot in whole]
            # each removes elements from a live collection: not its own elements alone
            by_element = {slot: False for slot in elements if slot not in whole} or None
            for slot, (col, cur, kept_expiry, removed) in elements.items():
                if slot in whole:
                    continue
                if col.type.kind == "list":
                    new = colls.set_indexes(cur, [(index, None) for index in removed], "delete an element from")
                else:
                    new = cur
                    for key in removed:
                        new = colls.set_element(col.type, new, key, None)
                cells.append((slot, new, kept_expiry))
            records += _upserts(table, pk, ck, cells, ts, time.time(), by_element)
    else:
        pks = sorted({pk for pk, _ in keys})
        for pk in pks:
            if not table.clustering:
                records.append(("DP", table.id, pk, ts))
            elif full_row:
                for kpk, ck in keys:
                    if kpk == pk:
                        records.append(("DR", table.id, pk, ck, ts))
            elif not r.ck_eq and not r.ck_slice:
                records.append(("DP", table.id, pk, ts))
            else:
                slices = {k: list(v) for k, v in r.ck_slice.items()}
                names = list(r.ck_eq)
                for combo in itertools.product(*(r.ck_eq[n] for n in names)):  # IN: one range per value
                    ck_eq = {n: [v] for n, v in zip(names, combo, strict=True)}
                    range_predicate(table, ck_eq, slices)  # refuses a range that is not a clustering prefix
                    records.append(("DS", table.id, pk, ck_eq, slices, ts))
    for record in records:
        engine.apply(record)
    return _lwt_result(table, True) if conditional else None


def range_predicate(table: Table, ck_eq: dict[str, list[bytes]],
                    ck_slice: dict[str, list[tuple[bytes, bool] | None]]) -> Callable[[Any], bool]:
    """The clustering sort keys a range deletion covers (used for its tombstone)."""
    r = Restrictions(ck_eq=ck_eq, ck_slice=ck_slice)
    r.pk = {c.name: [b"\x00"] for c in table.partition_key}  # any key: only the clustering bounds are used
    scan = plan_scan(table, r)
    lo, hi = scan.lo, scan.hi
    if scan.predicates:
        restricted = ", ".join([*ck_eq, *ck_slice])
        raise Invalid(
            f"A range deletion must restrict a prefix of the clustering columns "
            f"({', '.join(table.clustering_names)}) with = and at most one range on the last; got {restricted}"
        )

    def covers(sort_key: Any) -> bool:
        if lo is not None and (sort_key < lo[0] or (sort_key == lo[0] and not lo[1])):
            return False
        return not (hi is not None and (sort_key > hi[0] or (sort_key == hi[0] and not hi[1])))
    return covers


__all__ = ["WriteContext", "check_conditional", "execute_delete", "execute_insert", "execute_update", "iter_scan",
           "range_predicate"]
