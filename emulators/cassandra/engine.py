"""The emulator's state and statement execution, independent of any connection.

One :class:`Engine` per server: the catalog, each table's rows, the change
feed, prepared statements (shared by all connections, keyed like Cassandra by
MD5 of keyspace + query text), fault injection and the optional journal. Every
change goes through :meth:`Engine.apply` with a record (see :mod:`.write` and
:mod:`.ddl`), which is also what the journal stores and replays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import ddl, results
from . import statements as st
from .changefeed import ChangeFeed, execute_feed
from .errors import CqlError, Invalid, Unprepared
from .faults import FaultState, control_statement
from .keys import make_row_id, make_sort_key
from .murmur3 import murmur3_token
from .parser import parse
from .planner import batch_bind_specs, bind_specs, pk_indexes
from .results import ColumnSpec, Rows
from .schema import Catalog, Keyspace, Table
from .select import execute_select, projection
from .store import TableData, now_seconds
from .system_tables import SystemTables
from .types import parse_type
from .wire import Value
from .write import WriteContext, execute_delete, execute_insert, execute_update, is_conditional, range_predicate

logger = logging.getLogger(__name__)
_PARSE_CACHE_SIZE = 4096


@dataclasses.dataclass
class Options:
    """Per-request options of QUERY / EXECUTE / BATCH (spec 4.1.4)."""

    consistency: int = 0x0001  # ONE; an injected error reports the request's level, as Cassandra's do
    serial_consistency: int = 0x0008  # SERIAL, the level of a conditional write's Paxos round
    values: list[Value] = dataclasses.field(default_factory=list)
    names: list[str] | None = None
    skip_metadata: bool = False
    page_size: int = 0
    paging_state: bytes | None = None
    timestamp: int | None = None


@dataclasses.dataclass
class Prepared:
    """A prepared statement, bound at PREPARE to the table it names in the keyspace it was prepared in.

    ``table`` stays valid as long as the statement does: DROP and ALTER TABLE evict the table's statements,
    so an EXECUTE of any connection (whatever its keyspace) runs against that table, and after a schema
    change gets UNPREPARED and re-prepares with the new metadata, as in Cassandra.
    """

    id: bytes
    query: str
    keyspace: str | None
    statement: st.Statement
    markers: int
    table_id: uuid.UUID | None
    table: Table | None
    bind: list[ColumnSpec]
    pk_indexes: list[int]
    result: list[ColumnSpec]


class Session:
    """Per-connection state."""

    def __init__(self) -> None:
        self.keyspace: str | None = None


class Engine:
    def __init__(self, address: str = "127.0.0.1", host_id: uuid.UUID | None = None) -> None:
        self.catalog = Catalog()
        self.tables: dict[uuid.UUID, TableData] = {}
        self.feed = ChangeFeed()
        self.system = SystemTables(self.catalog, host_id or uuid.uuid4(), address)
        self.prepared: dict[bytes, Prepared] = {}
        self.faults = FaultState()
        self.journal: Any = None  # persistence.Journal when --data-dir is set
        self.pending: list[tuple[Any, ...]] | None = None  # a BATCH's writes, applied once every statement passed
        self.schema_listeners: list[Callable[[bytes], None]] = []
        self._parsed: dict[str, tuple[st.Statement, int]] = {}
        self.paxos: dict[tuple[uuid.UUID, bytes], int] = {}  # (table id, partition key) -> its last ballot's timestamp

    def paxos_timestamp(self, table: Table, pk: bytes) -> int:
        """The timestamp of a conditional write to partition ``pk``: its Paxos ballot's, the server's clock and
        always after the partition's previous ballot, whatever the client's clock says (Cassandra rewrites the
        updates of a CAS to the ballot's timestamp, StorageProxy.cas; ClientState.getTimestampForPaxos). So an
        applied LWT is never shadowed by an earlier one written with a later client timestamp."""
        key = (table.id, pk)
        ts = max(time.time_ns() // 1000, self.paxos.get(key, 0) + 1)
        self.paxos[key] = ts
        return ts

    # -- state changes ---------------------------------------------------------
    def apply(self, record: tuple[Any, ...], replay: bool = False) -> None:
        if self.pending is not None and not replay:
            self.pending.append(record)
            return
        kind = record[0]
        if kind == "U":
            _, tid, pk, ck, marker, cells, ts, expiry, at = record[:9]
            by_element = record[9] if len(record) > 9 else None  # journals of before it was recorded: none
            data = self.tables[tid]
            part = data.partitions.get(pk)
            if part is None:
                part = data.partition_for_write(pk, murmur3_token(pk))
            row = part.get_or_create(ck, written=True)
            applied = row.touch(ts, expiry) if marker else False
            for slot, value in cells:
                if row.write(slot, value, ts, expiry if value is not None else None):
                    applied = True
                    if by_element or row.by_element:
                        row.mark_writer(slot, by_element.get(slot) if by_element else None)
            if applied:
                self.feed.record(tid, pk, ck, at)
        elif kind == "DR":
            _, tid, pk, ck, ts = record
            part = self.tables[tid].partition_for_write(pk, murmur3_token(pk))
            part.get_or_create(ck).delete(ts)
        elif kind == "DP":
            _, tid, pk, ts = record
            self.tables[tid].partition_for_write(pk, murmur3_token(pk)).delete(ts)
        elif kind == "DS":
            _, tid, pk, ck_eq, ck_slice, ts = record
            table = self._table_by_id(tid)
            covers = range_predicate(table, ck_eq, ck_slice)
            part = self.tables[tid].partition_for_write(pk, murmur3_token(pk))
            part.ranges = [*(part.ranges or []), (covers, ts, (ck_eq, ck_slice))]
            assert part.sort_key is not None
            for row in part.iter_rows():
                if covers(part.sort_key(row.ck)):
                    row.delete(ts)
        elif kind == "T":
            self.tables[record[1]].clear()
            self.feed.drop(record[1])
        else:
            self._apply_schema(record)
        if self.journal is not None and not replay:
            self.journal.append(record)

    def _apply_schema(self, record: tuple[Any, ...]) -> None:
        kind = record[0]
        if kind == "CK":
            _, name, replication, durable = record
            self.catalog.keyspaces[name] = Keyspace(name, dict(replication), durable)
        elif kind == "DK":
            ks = self.catalog.keyspaces.pop(record[1], None)
            for t in (ks.tables.values() if ks else []):
                self._forget_table(t)
        elif kind == "CT":
            table = ddl.build_table(record)
            self.catalog.keyspaces[table.keyspace].tables[table.name] = table
            self.tables[table.id] = TableData(make_sort_key(table.clustering), make_row_id(table.clustering))
        elif kind == "DT":
            table = self.catalog.keyspaces[record[1]].tables.pop(record[2])
            self._forget_table(table)
        elif kind == "AT":
            from .schema import Column
            table = self.catalog.keyspaces[record[1]].tables[record[2]]
            for name, type_cql in record[3]:
                table.regular.append(Column(name, parse_type(type_cql), "regular", -1))
            table.reindex()
            # Cassandra invalidates them too: their result metadata (SELECT *) and, with Skip_metadata, the shape
            # of the rows the client decodes would no longer match the table
            self._evict_prepared(table)
        else:
            raise ValueError(f"unknown record kind {kind!r}")
        self.catalog.bump()

    def _forget_table(self, table: Table) -> None:
        self.tables.pop(table.id, None)
        self.feed.drop(table.id)
        self._evict_prepared(table)

    def _evict_prepared(self, table: Table) -> None:
        """Forget the prepared statements of ``table``: their next EXECUTE answers UNPREPARED."""
        for pid in [p.id for p in self.prepared.values() if p.table_id == table.id]:
            del self.prepared[pid]

    def _table_by_id(self, tid: uuid.UUID) -> Table:
        for ks in self.catalog.keyspaces.values():
            for t in ks.tables.values():
                if t.id == tid:
                    return t
        raise KeyError(tid)

    def table_data(self, table: Table) -> TableData:
        if table.virtual:
            return self.system.data(table)
        return self.tables[table.id]

    # -- lookups ---------------------------------------------------------------
    def resolve_table(self, name: st.TableName, session: Session) -> Table:
        keyspace = name.keyspace or session.keyspace
        if keyspace is None:
            raise Invalid("No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename")
        table = self.catalog.table(keyspace, name.name) or self.system.table(keyspace, name.name)
        if table is None:
            if keyspace not in self.catalog.keyspaces and self.system.table(keyspace, "local") is None \
                    and keyspace not in ("system", "system_schema"):
                raise Invalid(f"Keyspace {keyspace} does not exist")
            raise Invalid(f"unconfigured table {name.name}")
        return table

    def parse(self, query: str) -> tuple[st.Statement, int]:
        cached = self._parsed.get(query)
        if cached is None:
            cached = parse(query)
            if len(self._parsed) >= _PARSE_CACHE_SIZE:
                self._parsed.clear()
            self._parsed[query] = cached
        return cached

    # -- PREPARE ---------------------------------------------------------------
    def prepare(self, query: str, session: Session) -> Prepared:
        keyspace = session.keyspace
        pid = hashlib.md5(((keyspace or "") + query).encode()).digest()
        existing = self.prepared.get(pid)
        if existing is not None:
            return existing
        stmt, markers = self.parse(query)
        table: Table | None = None
        control = control_statement(stmt)
        if control is not None:
            table = control
        elif isinstance(stmt, st.Select | st.Insert | st.Update | st.Delete):
            table = self.resolve_table(stmt.table, session)
        elif isinstance(stmt, st.Batch):
            raise Invalid("BATCH statements cannot be prepared as a whole; prepare each statement")
        specs = bind_specs(stmt, table, markers)
        ks, tb = (table.keyspace, table.name) if table else (keyspace or "", "")
        bind = [ColumnSpec(ks, tb, s.name, s.type) for s in specs]
        result: list[ColumnSpec] = []
        if isinstance(stmt, st.Select) and table is not None:
            result = projection(table, stmt.selectors)[0]
        prepared = Prepared(pid, query, keyspace, stmt, markers, table.id if table and not table.virtual else None,
                            table, bind, pk_indexes(stmt, table), result)
        self.prepared[pid] = prepared
        return prepared

    def lookup_prepared(self, pid: bytes) -> Prepared:
        prepared = self.prepared.get(pid)
        if prepared is None:
            raise Unprepared(pid)
        return prepared

    # -- execution ---------------------------------------------------------------
    def named_values(self, names: list[str] | None, values: list[Value], specs: list[str]) -> list[Value]:
        if names is None:
            return values
        by_name = dict(zip(names, values, strict=True))
        out: list[Value] = []
        for spec in specs:
            if spec not in by_name:
                raise Invalid(f"Missing value for bind variable {spec}")
            out.append(by_name[spec])
        return out

    def execute(self, stmt: st.Statement, markers: int, opts: Options, session: Session,
                prepared: Prepared | None = None) -> bytes:
        """Run one statement; returns the RESULT body."""
        if isinstance(stmt, st.Use):
            if stmt.keyspace not in self.catalog.keyspaces and stmt.keyspace not in ("system", "system_schema"):
                raise Invalid(f"Keyspace '{stmt.keyspace}' does not exist")
            session.keyspace = stmt.keyspace
            return results.set_keyspace(stmt.keyspace)
        control = control_statement(stmt)
        if control is not None:
            return self.faults.execute(stmt, control, opts.values, now_seconds())
        if isinstance(stmt, st.Batch):
            from .batch import execute_batch
            values = opts.values
            if opts.names is not None:  # by the names of the markers across the whole text, as Cassandra binds them
                tables = [self.resolve_table(c.table, session) for c in stmt.statements]
                values = self.named_values(opts.names, values,
                                           [s.name for s in batch_bind_specs(stmt, tables, markers)])
                opts = dataclasses.replace(opts, values=values, names=None)
            if len(values) != markers:
                raise Invalid(f"There were {markers} markers(?) in CQL but {len(values)} bound variables")
            return execute_batch(self, stmt.kind, stmt.using, [(c, values, None) for c in stmt.statements],
                                 opts, session)
        if isinstance(stmt, st.Select | st.Insert | st.Update | st.Delete):
            table = (prepared.table if prepared is not None and prepared.table is not None
                     else self.resolve_table(stmt.table, session))
            values = opts.values
            if opts.names is not None:
                specs = [
                    s.name
                    for s in (
                        prepared.bind
                        if prepared
                        else [ColumnSpec("", "", s.name, s.type) for s in bind_specs(stmt, table, markers)]
                    )
                ]
                values = self.named_values(opts.names, values, specs)
            if len(values) != markers:
                raise Invalid(f"There were {markers} markers(?) in CQL but {len(values)} bound variables")
            if self.faults.error is not None and not table.virtual:
                if isinstance(stmt, st.Select):
                    self.faults.check("reads", opts.consistency)
                elif is_conditional(stmt):
                    self.faults.check("writes", opts.serial_consistency, "CAS")  # the Paxos round's level
                else:
                    self.faults.check("writes", opts.consistency)
            now = now_seconds()
            if isinstance(stmt, st.Select):
                data = self.table_data(table)
                if any(r.kind == "changefeed" for r in stmt.where):
                    rows = execute_feed(self.feed, table, data, stmt, values, opts.page_size, opts.paging_state, now)
                else:
                    rows = execute_select(table, data, stmt, values, opts.page_size, opts.paging_state, now)
                return rows.encode(no_metadata=opts.skip_metadata and prepared is not None)
            if table.virtual:
                raise Invalid(f"{table.keyspace}.{table.name} is a system table and cannot be modified")
            ctx = WriteContext(values, opts.timestamp, now)
            if isinstance(stmt, st.Insert):
                out: Rows | None = execute_insert(self, table, stmt, ctx)
            elif isinstance(stmt, st.Update):
                out = execute_update(self, table, stmt, ctx)
            else:
                out = execute_delete(self, table, stmt, ctx)
            return results.VOID if out is None else out.encode()
        if prepared is not None and prepared.keyspace != session.keyspace:  # DDL runs where it was prepared
            session = Session()
            session.keyspace = prepared.keyspace
        return self.execute_schema(stmt, session)

    def execute_schema(self, stmt: st.Statement, session: Session) -> bytes:
        if isinstance(stmt, st.CreateKeyspace):
            record = ddl.create_keyspace(self.catalog, stmt)
            return self._schema_result(record, "CREATED", "KEYSPACE", stmt.name)
        if isinstance(stmt, st.DropKeyspace):
            if stmt.name not in self.catalog.keyspaces:
                if stmt.if_exists:
                    return results.VOID
                raise Invalid(f"Cannot drop non existing keyspace '{stmt.name}'.")
            return self._schema_result(("DK", stmt.name), "DROPPED", "KEYSPACE", stmt.name)
        keyspace = (stmt.table.keyspace or session.keyspace) if isinstance(stmt, st.TableStatement) else None
        if keyspace is None:
            raise Invalid("No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename")
        if isinstance(stmt, st.CreateTable):
            record = ddl.create_table(self.catalog, stmt, keyspace)
            return self._schema_result(record, "CREATED", "TABLE", keyspace, stmt.table.name)
        if isinstance(stmt, st.DropTable):
            if self.catalog.table(keyspace, stmt.table.name) is None:
                if stmt.if_exists and keyspace in self.catalog.keyspaces:
                    return results.VOID
                if keyspace not in self.catalog.keyspaces:
                    raise Invalid(f"Keyspace {keyspace} doesn't exist")
                raise Invalid(f"unconfigured table {stmt.table.name}")
            return self._schema_result(("DT", keyspace, stmt.table.name), "DROPPED", "TABLE", keyspace,
                                       stmt.table.name)
        if isinstance(stmt, st.AlterTableAdd):
            record = ddl.alter_add(self.catalog, stmt, keyspace)
            return self._schema_result(record, "UPDATED", "TABLE", keyspace, stmt.table.name)
        if isinstance(stmt, st.Truncate):
            table = self.resolve_table(stmt.table, session)
            if table.virtual:
                raise Invalid(f"Cannot TRUNCATE system table {table.keyspace}.{table.name}")
            self.apply(("T", table.id))
            return results.VOID
        raise Invalid(f"{type(stmt).__name__} statements are not supported by this emulator")

    def _schema_result(self, record: tuple[Any, ...] | None, change: str, target: str, keyspace: str,
                       name: str = "") -> bytes:
        if record is None:
            return results.VOID
        self.apply(record)
        body = results.schema_change_body(change, target, keyspace, name)
        for listener in list(self.schema_listeners):
            try:
                listener(body)
            except Exception:  # a broken connection must not fail the DDL
                logger.debug("schema event listener failed", exc_info=True)
        return results.schema_change(change, target, keyspace, name)


__all__ = ["CqlError", "Engine", "Options", "Prepared", "Session"]
