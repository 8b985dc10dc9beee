"""SELECT execution: restrictions, row iteration in token/clustering order, projection, paging.

Paging state (opaque to clients, resumable on any connection and after a
restart): ``b"P1"`` + table id + last partition key + last clustering key +
rows emitted so far (for LIMIT) + rows emitted in the last partition (for
PER PARTITION LIMIT). A state minted for another table is refused (Invalid).
"""

from __future__ import annotations

import itertools
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import statements as st
from .collections_ops import split_elements
from .errors import Invalid
from .keys import TOP, component_key, partition_key, split_key
from .murmur3 import murmur3_token
from .planner import BIGINT, INT, TEXT, resolve, resolve_int, table_column
from .results import ColumnSpec, Rows
from .schema import Column, Table
from .store import Partition, Row, TableData
from .types import CompareKey, CqlType
from .wire import UNSET, Value

Extractor = Callable[[Partition, Row, int], bytes | None]
_I = struct.Struct(">i")
_q = struct.Struct(">q")
FILTERING_MESSAGE = ("Cannot execute this query as it might involve data filtering and thus may have unpredictable "
                     "performance. If you want to execute this query despite the performance unpredictability, "
                     "use ALLOW FILTERING")


# -- projection -----------------------------------------------------------------

def _column_extractor(table: Table, col: Column) -> Extractor:
    if col.kind == "partition_key":
        n, i = len(table.partition_key), col.position
        if n == 1:
            return lambda part, row, now: part.key
        return lambda part, row, now: split_key(part.key, n)[i]
    if col.kind == "clustering":
        n, i = len(table.clustering), col.position
        if n == 1:
            return lambda part, row, now: row.ck
        return lambda part, row, now: split_key(row.ck, n)[i]
    slot = col.slot

    def regular(part: Partition, row: Row, now: int) -> bytes | None:
        c = row.cell(slot, now)
        return None if c is None else c[0]

    return regular


def projection(table: Table, selectors: list[st.Selector]) -> tuple[list[ColumnSpec], list[Extractor], bool]:
    """Result columns, one extractor per column, and whether this is COUNT(*)."""
    ks, tb = table.keyspace, table.name
    specs: list[ColumnSpec] = []
    extractors: list[Extractor] = []
    counting = False
    for sel in selectors:
        if sel.kind == "star":
            for col in table.all_columns():
                specs.append(ColumnSpec(ks, tb, col.name, col.type))
                extractors.append(_column_extractor(table, col))
        elif sel.kind == "column":
            col = table_column(table, sel.args[0])
            specs.append(ColumnSpec(ks, tb, sel.alias or col.name, col.type))
            extractors.append(_column_extractor(table, col))
        elif sel.kind in ("writetime", "ttl"):
            col = table_column(table, sel.args[0])
            if col.kind != "regular":
                raise Invalid(f"Cannot use selection function {'writeTime' if sel.kind == 'writetime' else 'ttl'} "
                              f"on PRIMARY KEY part {col.name}")
            if col.type.is_collection and not col.type.frozen:
                raise Invalid(f"Cannot use selection function {sel.kind} on non-frozen collection {col.name}")
            slot = col.slot
            if sel.kind == "writetime":
                specs.append(ColumnSpec(ks, tb, sel.alias or f"writetime({col.name})", BIGINT))

                def wt(part: Partition, row: Row, now: int, slot: int = slot) -> bytes | None:
                    c = row.cell(slot, now)
                    return None if c is None else _q.pack(c[1])

                extractors.append(wt)
            else:
                specs.append(ColumnSpec(ks, tb, sel.alias or f"ttl({col.name})", INT))

                def ttl(part: Partition, row: Row, now: int, slot: int = slot) -> bytes | None:
                    c = row.cell(slot, now)
                    return None if c is None or c[2] is None else _I.pack(c[2] - now)

                extractors.append(ttl)
        elif sel.kind == "token":
            if list(sel.args) != table.key_names:
                raise Invalid(f"Invalid token() arguments: expected the partition key ({', '.join(table.key_names)})")
            specs.append(ColumnSpec(ks, tb, sel.alias or f"system.token({', '.join(sel.args)})", BIGINT))
            extractors.append(lambda part, row, now: _q.pack(part.token))
        elif sel.kind == "count":
            counting = True
            specs.append(ColumnSpec(ks, tb, sel.alias or "count", BIGINT))
    if counting and len(selectors) > 1:
        raise Invalid("COUNT(*) cannot be combined with other selectors in this emulator")
    return specs, extractors, counting


# -- restrictions ---------------------------------------------------------------

@dataclass
class Restrictions:
    pk: dict[str, list[bytes]] = field(default_factory=dict)
    pk_in: bool = False  # a partition key column restricted by IN (not one of a single literal value: an =)
    eq: set[str] = field(default_factory=set)  # the columns restricted by = (or an IN of a single literal value)
    token_lo: tuple[int, bool] | None = None
    token_hi: tuple[int, bool] | None = None
    ck_eq: dict[str, list[bytes]] = field(default_factory=dict)
    ck_slice: dict[str, list[tuple[bytes, bool] | None]] = field(default_factory=dict)
    filters: list[tuple[Column, str, list[bytes]]] = field(default_factory=list)
    changefeed: str | None = None


def _value(term: st.Term, col_type: CqlType, values: list[Value], name: str) -> bytes:
    v = resolve(term, col_type, values, name)
    if v is None:
        raise Invalid(f"Invalid null value in condition for column {name}")
    if v is UNSET:
        raise Invalid(f"Invalid unset value for column {name}")
    return v


def resolve_restrictions(table: Table, where: list[st.Relation], values: list[Value]) -> Restrictions:
    r = Restrictions()
    for rel in where:
        if rel.kind == "changefeed":
            v = (resolve(rel.value, TEXT, values, "cosmos_changefeed_start_time")
                 if not isinstance(rel.value, tuple) else None)
            if not isinstance(v, bytes):
                raise Invalid("COSMOS_CHANGEFEED_START_TIME() needs a time string such as '2024-01-02T03:04:05Z'")
            r.changefeed = v.decode("utf-8")
            continue
        if rel.kind == "token":
            if list(rel.columns) != table.key_names:
                raise Invalid("The token function arguments must be in the partition key order: "
                              + ", ".join(table.key_names))
            assert not isinstance(rel.value, tuple)
            tok = int.from_bytes(_value(rel.value, BIGINT, values, "partition key token"), "big", signed=True)
            names = ", ".join(table.key_names)
            if rel.op in (">", ">=", "=") and r.token_lo is not None:
                raise Invalid(f"More than one restriction was found for the start bound on {names}")
            if rel.op in ("<", "<=", "=") and r.token_hi is not None:
                raise Invalid(f"More than one restriction was found for the end bound on {names}")
            if rel.op in (">", ">="):
                r.token_lo = (tok, rel.op == ">=")
            elif rel.op in ("<", "<="):
                r.token_hi = (tok, rel.op == "<=")
            else:
                r.token_lo = r.token_hi = (tok, True)
            continue
        col = table_column(table, rel.columns[0])
        # As Cassandra 4 (SingleColumnRelation.newINRestriction): an IN of one literal value is an =, an IN ? is an
        # IN whatever it is bound to
        if rel.op == "=" or (rel.op == "IN" and isinstance(rel.value, tuple) and len(rel.value) == 1):
            r.eq.add(col.name)
        if rel.op == "IN":
            if isinstance(rel.value, tuple):
                vals = [_value(t, col.type, values, col.name) for t in rel.value]
            else:
                vals = split_elements(_value(rel.value, CqlType("list", (col.type,)), values, col.name))
        elif rel.op in ("CONTAINS", "CONTAINS_KEY"):
            # As Cassandra 4 (SingleColumnRelation.newContainsRestriction, and the CQL reference: CONTAINS KEY
            # applies to maps)
            if not col.type.is_collection:
                raise Invalid(f"Cannot use CONTAINS on non-collection column {col.name}")
            if rel.op == "CONTAINS_KEY" and col.type.kind != "map":
                raise Invalid(f"Cannot use CONTAINS KEY on non-map column {col.name}")
            elem = col.type.params[0] if rel.op == "CONTAINS_KEY" or col.type.kind != "map" else col.type.params[1]
            assert not isinstance(rel.value, tuple)
            r.filters.append((col, rel.op, [_value(rel.value, elem, values, col.name)]))
            continue
        else:
            assert not isinstance(rel.value, tuple)
            vals = [_value(rel.value, col.type, values, col.name)]
        if col.kind == "partition_key":
            if rel.op not in ("=", "IN"):
                raise Invalid("Only EQ and IN relation are supported on the partition key (unless you use the "
                              "token() function)")
            if col.name in r.pk:
                raise Invalid(f"{col.name} cannot be restricted by more than one relation if it includes an Equal")
            r.pk[col.name] = vals
            r.pk_in = r.pk_in or (rel.op == "IN" and col.name not in r.eq)
        elif col.kind == "clustering" and rel.op in ("=", "IN"):
            if col.name in r.ck_eq or col.name in r.ck_slice:
                raise Invalid(f"{col.name} cannot be restricted by more than one relation if it includes an Equal")
            r.ck_eq[col.name] = vals
        elif col.kind == "clustering":
            if col.name in r.ck_eq:
                raise Invalid(f"{col.name} cannot be restricted by more than one relation if it includes an Equal")
            bounds = r.ck_slice.setdefault(col.name, [None, None])
            end = 0 if rel.op in (">", ">=") else 1
            if bounds[end] is not None:  # Cassandra refuses it too: it would not keep the tighter one
                raise Invalid(f"More than one restriction was found for the {('start', 'end')[end]} bound on "
                              f"{col.name}")
            bounds[end] = (vals[0], rel.op in (">=", "<="))
        else:
            r.filters.append((col, rel.op, vals))
    return r


def _matches(cmp: CompareKey, op: str, values: list[CompareKey]) -> bool:
    if op in ("=", "IN"):
        return cmp in values
    v = values[0]
    if op == "<":
        return cmp < v
    if op == "<=":
        return cmp <= v
    if op == ">":
        return cmp > v
    return cmp >= v


@dataclass
class Scan:
    """Everything needed to iterate the rows a SELECT (or DELETE/UPDATE range) addresses."""

    table: Table
    partition_keys: list[bytes] | None  # None: all partitions (optionally a token range)
    token_lo: tuple[int, bool] | None
    token_hi: tuple[int, bool] | None
    lo: tuple[tuple[Any, ...], bool] | None  # clustering sort-key bounds
    hi: tuple[tuple[Any, ...], bool] | None
    predicates: list[Callable[[Partition, Row, int], bool]]
    needs_filtering: bool


def plan_scan(table: Table, r: Restrictions) -> Scan:
    needs_filtering = False
    keys: list[bytes] | None = None
    if r.pk:
        if len(r.pk) == len(table.partition_key):
            combos = list(itertools.product(*(r.pk[c.name] for c in table.partition_key)))
            keys = [partition_key(list(combos[0]))] if len(combos) == 1 else _in_partition_keys(table, combos)
            if r.token_lo or r.token_hi:
                raise Invalid("token() restrictions cannot be combined with partition key equality in this emulator")
        else:
            needs_filtering = True
    predicates: list[Callable[[Partition, Row, int], bool]] = []
    if keys is None and r.pk:
        for col in table.partition_key:
            if col.name in r.pk:
                predicates.append(_key_predicate(table, col, "IN", r.pk[col.name]))
    # clustering: an equality prefix, then at most one slice. After an IN the prefix stops, and the next columns
    # are still restricted without filtering, as in Cassandra (IN, then =, IN or a slice), until a slice or a gap.
    prefix: list[Any] = []
    lo: tuple[tuple[Any, ...], bool] | None = None
    hi: tuple[tuple[Any, ...], bool] | None = None
    open_prefix = True
    after_in = False
    for col in table.clustering:
        if open_prefix and col.name in r.ck_eq and len(r.ck_eq[col.name]) == 1:
            prefix.append(component_key(col, r.ck_eq[col.name][0]))
            continue
        if after_in and col.name in r.ck_eq:
            predicates.append(_key_predicate(table, col, "IN", r.ck_eq[col.name]))
            continue
        if after_in and col.name in r.ck_slice:
            predicates += _slice_predicates(table, col, r.ck_slice[col.name])
            after_in = False
            continue
        after_in = False
        if open_prefix and col.name in r.ck_slice:
            lo_b, hi_b = r.ck_slice[col.name]
            if col.reversed:
                lo_b, hi_b = hi_b, lo_b
            p = tuple(prefix)
            if lo_b is not None:
                k = component_key(col, lo_b[0])
                lo = ((*p, k), True) if lo_b[1] else ((*p, k, TOP), True)
            if hi_b is not None:
                k = component_key(col, hi_b[0])
                hi = ((*p, k, TOP), True) if hi_b[1] else ((*p, k), False)
            open_prefix = False
            continue
        if open_prefix and col.name in r.ck_eq:  # IN: the prefix stops, the IN filters
            predicates.append(_key_predicate(table, col, "IN", r.ck_eq[col.name]))
            open_prefix = False
            after_in = True
            continue
        open_prefix = False
        if col.name in r.ck_eq:
            predicates.append(_key_predicate(table, col, "IN", r.ck_eq[col.name]))
            needs_filtering = True
        elif col.name in r.ck_slice:
            needs_filtering = True
            predicates += _slice_predicates(table, col, r.ck_slice[col.name])
    if prefix:
        p = tuple(prefix)
        if lo is None:
            lo = (p, True)
        if hi is None:
            hi = ((*p, TOP), True)
    if (r.ck_eq or r.ck_slice) and keys is None:
        needs_filtering = True
    for col, op, vals in r.filters:
        needs_filtering = True
        predicates.append(_cell_predicate(table, col, op, vals))
    return Scan(table, keys, r.token_lo, r.token_hi, lo, hi, predicates, needs_filtering)


def partition_order(table: Table) -> Callable[[bytes], tuple[CompareKey, ...]]:
    """The order of the partition keys an IN names: the key type's, column by column (Cassandra's partition key
    ClusteringComparator), not the token order of a range scan."""
    cols = table.partition_key
    n = len(cols)
    return lambda key: tuple(c.type.compare_key(v) for c, v in zip(cols, split_key(key, n), strict=True))


def _in_partition_keys(table: Table, combos: list[tuple[bytes, ...]]) -> list[bytes]:
    """The partitions of ``k IN (...)`` (the cartesian product for a composite key) as Cassandra 4 reads them: in
    the key type's order, values equal by it once (MultiCBuilder.build() into a BTreeSet ordered by the partition
    key's comparator; one SinglePartitionReadCommand per key, in that order). The first of equal values is kept."""
    order = partition_order(table)
    unique: dict[Any, bytes] = {}
    for combo in combos:
        key = partition_key(list(combo))
        unique.setdefault(order(key), key)
    return [unique[k] for k in sorted(unique)]


def _slice_predicates(table: Table, col: Column, bounds: list[tuple[bytes, bool] | None]
                      ) -> list[Callable[[Partition, Row, int], bool]]:
    """A clustering column's range (``[start, end]`` bounds, each ``(value, inclusive)`` or None) as filters."""
    lo_b, hi_b = bounds
    predicates = []
    if lo_b is not None:
        predicates.append(_key_predicate(table, col, ">=" if lo_b[1] else ">", [lo_b[0]]))
    if hi_b is not None:
        predicates.append(_key_predicate(table, col, "<=" if hi_b[1] else "<", [hi_b[0]]))
    return predicates


def _key_predicate(table: Table, col: Column, op: str, vals: list[bytes]) -> Callable[[Partition, Row, int], bool]:
    ctype = col.type
    wanted = [ctype.compare_key(v) for v in vals]
    if col.kind == "partition_key":
        n = len(table.partition_key)

        def get(part: Partition, row: Row) -> bytes:
            return split_key(part.key, n)[col.position]
    else:
        n = len(table.clustering)

        def get(part: Partition, row: Row) -> bytes:
            return split_key(row.ck, n)[col.position]

    return lambda part, row, now: _matches(ctype.compare_key(get(part, row)), op, wanted)


def _cell_predicate(table: Table, col: Column, op: str, vals: list[bytes]) -> Callable[[Partition, Row, int], bool]:
    slot = col.slot
    ctype = col.type
    if op in ("CONTAINS", "CONTAINS_KEY"):
        elem_type = ctype.params[0] if op == "CONTAINS_KEY" or ctype.kind != "map" else ctype.params[1]
        wanted = elem_type.deserialize(vals[0])
        entry = 0 if op == "CONTAINS_KEY" else 1

        def contains(part: Partition, row: Row, now: int) -> bool:
            c = row.cell(slot, now)
            if c is None:
                return False
            value = ctype.deserialize(c[0])
            if isinstance(value, dict):  # a map
                return wanted in (value.keys() if op == "CONTAINS_KEY" else list(value.values()))
            assert isinstance(value, list | frozenset)  # a list, a set, or a map whose keys Python cannot hash
            if ctype.kind == "map":  # (key, value) pairs
                return any(pair[entry] == wanted for pair in value)
            return wanted in value  # CONTAINS on a list or set (CONTAINS KEY is refused on them, above)

        return contains
    wanted_keys = [ctype.compare_key(v) for v in vals]

    def pred(part: Partition, row: Row, now: int) -> bool:
        c = row.cell(slot, now)
        return c is not None and _matches(ctype.compare_key(c[0]), op, wanted_keys)

    return pred


_MIN_TOKEN = -(2**63)  # Murmur3Partitioner's minimum token


# -- iteration ------------------------------------------------------------------

def iter_scan(scan: Scan, data: TableData, now: int, reverse: bool = False,
              resume: tuple[bytes, bytes] | None = None) -> Iterator[tuple[Partition, Row]]:
    """Live rows the scan addresses, strictly after ``resume``: partitions in token order, or in the IN's order
    (see :func:`_in_partition_keys`), rows in clustering order."""
    table = scan.table
    sort_key = data.sort_key
    if scan.partition_keys is not None:
        keys = scan.partition_keys
        if resume is not None:  # resume at the paging state's partition, in the IN's order
            order = partition_order(table)
            after = order(resume[0])
            keys = [k for k in keys if order(k) >= after]
        parts: Iterator[Partition] = (p for p in (data.partition(k) for k in keys) if p is not None)
    else:
        start: tuple[int, bytes] | None = None
        if scan.token_lo is not None:
            tok, incl = scan.token_lo
            start = (tok if incl else tok + 1, b"")
        if resume is not None:
            rstart = (murmur3_token(resume[0]), resume[0])
            if start is None or rstart > start:
                start = rstart
        end_tok, end_incl = scan.token_hi if scan.token_hi is not None else (None, True)
        if end_tok == _MIN_TOKEN:  # the minimum token as an end bound is the end of the ring (the last range)
            end_tok, end_incl = None, True
        parts = data.iter_partitions(start, True, end_tok, end_incl)
    predicates = scan.predicates
    for part in parts:
        lo, hi = scan.lo, scan.hi
        if resume is not None and part.key == resume[0] and sort_key is not None:
            rk = sort_key(resume[1])
            if reverse:
                if hi is None or rk <= hi[0]:
                    hi = (rk, False)
            elif lo is None or rk >= lo[0]:
                lo = (rk, False)
        elif resume is not None and part.key == resume[0]:
            continue  # the single row of this partition was already returned
        if lo is None and hi is None:
            rows = part.iter_rows(reverse)
        else:
            rows = part.iter_range(lo[0] if lo else None, lo[1] if lo else True,
                                   hi[0] if hi else None, hi[1] if hi else True, reverse)
        for row in rows:
            if not row.live(now):
                continue
            if predicates and not all(p(part, row, now) for p in predicates):
                continue
            yield part, row


def check_order(table: Table, order_by: list[tuple[str, str]], scan: Scan, r: Restrictions) -> bool:
    """Whether ORDER BY asks for the reverse of the table's clustering order (Invalid if it is neither).

    As Cassandra 4 (SelectStatement.Raw.isReversed): clustering columns in their declared order, where the ones
    restricted by = may be left out (``WHERE k = 1 AND a = 1 ORDER BY b DESC``), all in the table's order or all
    in its reverse."""
    if not order_by:
        return False
    if scan.partition_keys is None:
        raise Invalid("ORDER BY is only supported when the partition key is restricted by an EQ or an IN.")
    flips: set[bool] = set()
    position = 0
    for name, direction in order_by:
        col = table_column(table, name)
        if col.kind != "clustering":
            raise Invalid(f"Order by is currently only supported on the clustered columns of the PRIMARY KEY, "
                          f"got {name}")
        while position != col.position:
            if position > col.position or table.clustering[position].name not in r.eq:
                raise Invalid("Order by currently only supports the ordering of columns following their declared "
                              "order in the PRIMARY KEY")
            position += 1
        position += 1
        flips.add((direction == "DESC") != col.reversed)
    if len(flips) > 1:
        raise Invalid("Unsupported order by relation")
    return flips.pop()


# -- paging state ---------------------------------------------------------------

def encode_paging(table_id: uuid.UUID, pk: bytes, ck: bytes, emitted: int, in_partition: int) -> bytes:
    return b"P1" + table_id.bytes + struct.pack(">I", len(pk)) + pk + struct.pack(">I", len(ck)) + ck + \
        struct.pack(">qq", emitted, in_partition)


def decode_paging(state: bytes, table_id: uuid.UUID) -> tuple[bytes, bytes, int, int]:
    try:
        if state[:2] != b"P1":
            raise ValueError("not a SELECT paging state")
        if state[2:18] != table_id.bytes:
            raise Invalid("The paging state does not belong to this table (was it dropped and recreated?)")
        pos = 18
        (n,) = struct.unpack_from(">I", state, pos)
        pk = state[pos + 4:pos + 4 + n]
        pos += 4 + n
        (n,) = struct.unpack_from(">I", state, pos)
        ck = state[pos + 4:pos + 4 + n]
        pos += 4 + n
        emitted, in_part = struct.unpack_from(">qq", state, pos)
        return pk, ck, emitted, in_part
    except (struct.error, ValueError) as exc:
        raise Invalid(f"Invalid paging state: {exc}") from None


class _SelectPlan:
    """A SELECT's projection for one table, and its key terms when it names one row by partition key alone."""

    __slots__ = ("counting", "extractors", "point", "specs", "table", "width")

    def __init__(self, table: Table, stmt: st.Select) -> None:
        self.table = table
        self.width = len(table.regular)
        self.specs, self.extractors, self.counting = projection(table, stmt.selectors)
        self.point: list[tuple[Column, st.Term]] | None = None
        pk_names = {c.name for c in table.partition_key}
        rels = stmt.where
        if (not table.clustering and not stmt.order_by and stmt.limit is None and stmt.per_partition_limit is None
                and len(rels) == len(pk_names)
                and all(r.kind == "column" and r.op == "=" and not isinstance(r.value, tuple) for r in rels)
                and {r.columns[0] for r in rels} == pk_names):
            by_name = {r.columns[0]: r.value for r in rels if not isinstance(r.value, tuple)}  # none is, as checked
            self.point = [(c, by_name[c.name]) for c in table.partition_key]


def _select_plan(table: Table, stmt: st.Select) -> _SelectPlan:
    plan: _SelectPlan | None = stmt.__dict__.get("_plan")
    if plan is None or plan.table is not table or plan.width != len(table.regular):
        plan = _SelectPlan(table, stmt)
        stmt.__dict__["_plan"] = plan  # statements are cached by query text and shared by connections
    return plan


def execute_select(table: Table, data: TableData, stmt: st.Select, values: list[Value], page_size: int,
                   paging_state: bytes | None, now: int) -> Rows:
    plan = _select_plan(table, stmt)
    specs, extractors, counting = plan.specs, plan.extractors, plan.counting
    if plan.point is not None and not paging_state:  # a point read of a table without clustering columns
        key = partition_key([_value(term, col.type, values, col.name) for col, term in plan.point])
        part = data.partition(key)
        if part is not None and (row := part.single) is not None and row.live(now):
            return Rows(specs, [[_q.pack(1)]] if counting else [[f(part, row, now) for f in extractors]])
        return Rows(specs, [[_q.pack(0)]] if counting else [])
    r = resolve_restrictions(table, stmt.where, values)
    if r.changefeed is not None:
        raise Invalid("COSMOS_CHANGEFEED_START_TIME() is handled by the change feed")  # dispatched earlier
    scan = plan_scan(table, r)
    if scan.needs_filtering and not stmt.allow_filtering and not table.virtual:
        raise Invalid(FILTERING_MESSAGE)
    reverse = check_order(table, stmt.order_by, scan, r)
    limit = resolve_int(stmt.limit, values, "limit")
    if limit is not None and limit <= 0:
        raise Invalid(f"LIMIT must be strictly positive, got {limit}")
    ppl = resolve_int(stmt.per_partition_limit, values, "limit")
    if ppl is not None and ppl <= 0:
        raise Invalid(f"PER PARTITION LIMIT must be strictly positive, got {ppl}")
    if counting:
        # As Cassandra 3.0 and later: an aggregate over the whole selection reads every matching row; LIMIT and
        # PER PARTITION LIMIT bound the result's rows (one), not the rows counted.
        return Rows(specs, [[_q.pack(sum(1 for _ in iter_scan(scan, data, now)))]])
    page = page_size if page_size and page_size > 0 else None
    if stmt.order_by and r.pk_in:
        # As Cassandra: ORDER BY with IN on the partition key orders the rows of all the partitions together,
        # after the read, so only for a query that is not paged (no page size), whatever its LIMIT (with post-query
        # ordering SelectStatement.getDataLimits leaves the row limit unset, so the request is always paged).
        if page is not None:
            raise Invalid(IN_ORDER_BY_PAGED)
        return Rows(specs, [[f(part, row, now) for f in extractors]
                            for part, row in _merged(scan, data, now, reverse, ppl, limit,
                                                     table_column(table, stmt.order_by[-1][0]).position + 1)])
    resume = None
    emitted = in_part = 0
    if paging_state:
        pk, ck, emitted, in_part = decode_paging(paging_state, table.id)
        resume = (pk, ck)
    remaining = None if limit is None else limit - emitted
    out: list[list[bytes | None]] = []
    last: tuple[bytes, bytes] | None = None
    more = False
    last_key = resume[0] if resume else None
    for part, row in iter_scan(scan, data, now, reverse, resume):
        new_part = part.key != last_key
        current = 0 if new_part else in_part
        if ppl is not None and current >= ppl:
            continue
        if (remaining is not None and len(out) >= remaining) or (page is not None and len(out) >= page):
            more = remaining is None or len(out) < remaining
            break
        out.append([f(part, row, now) for f in extractors])
        last_key = part.key
        in_part = current + 1
        last = (part.key, row.ck)
    state = None
    if more and last is not None:
        state = encode_paging(table.id, last[0], last[1], emitted + len(out), in_part)
    return Rows(specs, out, state)


IN_ORDER_BY_PAGED = ("Cannot page queries with both ORDER BY and a IN restriction on the partition key; you must "
                     "either remove the ORDER BY or the IN and sort client side, or disable paging for this query")


def _merged(scan: Scan, data: TableData, now: int, reverse: bool, ppl: int | None,
            limit: int | None, ordered: int) -> list[tuple[Partition, Row]]:
    """The rows of several partitions in the order of the ``ordered`` first clustering columns (up to the ORDER BY's
    last; those it leaves out are restricted by =; ``reverse``: the opposite of the table's), each partition cut to
    ``ppl`` rows first, then the whole to ``limit``. As Cassandra sorts them (a stable sort on the ORDER BY columns
    only): rows equal in those columns stay in the order they were read, partition after partition, not ordered by
    the later clustering columns."""
    sort_key = data.sort_key
    assert sort_key is not None  # check_order allows ORDER BY only on clustering columns
    rows: list[tuple[Partition, Row]] = []
    taken: dict[bytes, int] = {}
    for part, row in iter_scan(scan, data, now, reverse):
        if ppl is None or taken.get(part.key, 0) < ppl:
            taken[part.key] = taken.get(part.key, 0) + 1
            rows.append((part, row))
    rows.sort(key=lambda pr: sort_key(pr[1].ck)[:ordered], reverse=reverse)  # stable, reverse=True too
    return rows if limit is None else rows[:limit]
