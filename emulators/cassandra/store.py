"""In-memory table data: partitions in Murmur3 token order, rows in clustering order.

Cells are kept as the serialized bytes a client binds and a result sends, with
their write timestamp (microseconds) and expiry (seconds since the epoch, or
None). Conflicts are resolved as Cassandra does: the higher timestamp wins; on
equal timestamps a deletion wins, then the greater value. Deletions leave
tombstones (row, partition and clustering-range) so that a later write with an
older ``USING TIMESTAMP`` stays shadowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from sortedcontainers import SortedKeyList, SortedList  # type: ignore[import-untyped]  # no py.typed, no stubs

Cell = tuple[bytes | None, int, int | None]  # value (None = tombstone), timestamp, expiry
LiveCell = tuple[bytes, int, int | None]  # a cell that holds a value: what Row.cell returns


def now_seconds() -> int:
    return int(time.time())


class Row:
    __slots__ = ("by_element", "cells", "ck", "deleted", "marker")

    def __init__(self, ck: bytes) -> None:
        self.ck = ck
        self.marker: tuple[int, int | None] | None = None  # row liveness from INSERT: (timestamp, expiry)
        self.deleted: int | None = None  # row tombstone timestamp
        self.cells: list[Cell | None] = []
        # Slots of non-frozen collections whose stored cell an element operation wrote last, so no collection
        # tombstone sits at the cell's timestamp - 1 (see write._overwrite): slot -> whether the cell holds only
        # elements written at its timestamp (none older, no element tombstone), which an overwrite at that timestamp
        # meets element by element as in Cassandra.
        self.by_element: dict[int, bool] | None = None

    def live(self, now: int) -> bool:
        m = self.marker
        if m is not None and (m[1] is None or m[1] > now):
            return True
        return any(c is not None and c[0] is not None and (c[2] is None or c[2] > now) for c in self.cells)

    def cell(self, slot: int, now: int) -> LiveCell | None:
        """The live cell of a regular column, or None."""
        if slot >= len(self.cells):
            return None
        c = self.cells[slot]
        if c is None or c[0] is None or (c[2] is not None and c[2] <= now):
            return None
        return c  # type: ignore[return-value]  # c[0] is not None (checked above): mypy does not narrow tuple items

    def raw_cell(self, slot: int) -> Cell | None:
        return self.cells[slot] if slot < len(self.cells) else None

    def write(self, slot: int, value: bytes | None, ts: int, expiry: int | None) -> bool:
        if self.deleted is not None and ts <= self.deleted:
            return False
        cells = self.cells
        if slot >= len(cells):
            cells.extend([None] * (slot + 1 - len(cells)))
        old = cells[slot]
        if old is not None:
            ots = old[1]
            if ts < ots:
                return False
            if ts == ots and not _wins_tie(value, expiry, old):
                return False
        cells[slot] = (value, ts, expiry)
        return True

    def mark_writer(self, slot: int, own_elements: bool | None) -> None:
        """Record what wrote the cell just written to ``slot``: a whole write (None), or an element operation, and
        whether the cell holds only elements it wrote (see :attr:`by_element`)."""
        if own_elements is not None:
            if self.by_element is None:
                self.by_element = {}
            self.by_element[slot] = own_elements
        elif self.by_element is not None:
            self.by_element.pop(slot, None)

    def touch(self, ts: int, expiry: int | None) -> bool:
        if self.deleted is not None and ts <= self.deleted:
            return False
        marker = self.marker
        if marker is None or ts > marker[0] or (ts == marker[0] and _expires_later(expiry, marker[1])):
            self.marker = (ts, expiry)
        return True

    def delete(self, ts: int) -> None:
        if self.deleted is None or ts > self.deleted:
            self.deleted = ts
        if self.marker is not None and self.marker[0] <= ts:
            self.marker = None
        cells = self.cells
        for i, c in enumerate(cells):
            if c is not None and c[1] <= ts:
                cells[i] = None


def _expires_later(expiry: int | None, other: int | None) -> bool:
    """At equal timestamps an expiring cell beats a live one, and the later expiry the earlier (Cassandra 4's
    Cells.resolveRegular and LivenessInfo.supersedes, CASSANDRA-14592)."""
    if (expiry is None) != (other is None):
        return expiry is not None
    return expiry is not None and other is not None and expiry > other


def _wins_tie(value: bytes | None, expiry: int | None, old: Cell) -> bool:
    """Whether a cell written at the stored cell's timestamp replaces it: a tombstone wins, then an expiring cell,
    then the later expiry, then the greater value (Cassandra 4's Cells.resolveRegular)."""
    if old[0] is None:
        return False
    if value is None:
        return True
    if (expiry is None) != (old[2] is None) or (expiry != old[2]):
        return _expires_later(expiry, old[2])
    return value > old[0]


def _same(key: Any) -> Any:
    return key


class Partition:
    """One partition. Tables without clustering columns keep their single row in :attr:`single`.

    Rows are told apart by their clustering bytes, or, when ``row_id`` is given (clustering types whose encoding is
    not canonical, see :func:`.keys.make_row_id`), by their sort key: then :attr:`rows` and :attr:`order` hold sort
    keys, and a row's :attr:`Row.ck` is the clustering as last written.
    """

    __slots__ = ("deleted", "key", "order", "ranges", "row_id", "rows", "single", "sort_key", "token")

    def __init__(self, key: bytes, token: int, sort_key: Callable[[bytes], Any] | None,
                 row_id: Callable[[bytes], Any] | None = None) -> None:
        self.key = key
        self.token = token
        self.deleted: int | None = None
        self.ranges: list[tuple[Callable[[Any], bool], int, Any]] | None = None  # range tombstones: covers, ts, spec
        self.single: Row | None = None
        self.sort_key = sort_key
        self.row_id = row_id
        if sort_key is None:
            self.rows: dict[Any, Row] | None = None
            self.order: SortedKeyList | None = None
        else:
            self.rows = {}
            self.order = SortedKeyList(key=sort_key if row_id is None else _same)

    def get(self, ck: bytes) -> Row | None:
        if self.rows is None:
            return self.single
        return self.rows.get(ck if self.row_id is None else self.row_id(ck))

    def get_or_create(self, ck: bytes, written: bool = False) -> Row:
        """The row of ``ck``, created if missing. ``written``: an upsert writes it, so a row equal to ``ck`` by the
        clustering comparator but written with other bytes (``1.0`` and ``1.00``) takes ``ck`` as its clustering."""
        if self.rows is None:
            if self.single is None:
                self.single = self._new_row(ck)
            return self.single
        rid = ck if self.row_id is None else self.row_id(ck)
        row = self.rows.get(rid)
        if row is None:
            row = self._new_row(ck)
            self.rows[rid] = row
            assert self.order is not None
            self.order.add(rid)
            if self.ranges:
                assert self.sort_key is not None
                sort_key = self.sort_key(ck)
                for covers, ts, _spec in self.ranges:
                    if covers(sort_key):
                        row.delete(ts)
        elif written:
            row.ck = ck
        return row

    def _new_row(self, ck: bytes) -> Row:
        row = Row(ck)
        if self.deleted is not None:
            row.deleted = self.deleted
        return row

    def iter_rows(self, reverse: bool = False) -> Iterator[Row]:
        if self.rows is None:
            if self.single is not None:
                yield self.single
            return
        assert self.order is not None
        rows = self.rows
        for ck in (reversed(self.order) if reverse else self.order):
            yield rows[ck]

    def iter_range(self, lo: Any, lo_incl: bool, hi: Any, hi_incl: bool, reverse: bool = False) -> Iterator[Row]:
        """Rows whose sort key lies between ``lo`` and ``hi`` (None = unbounded)."""
        if self.rows is None:
            yield from self.iter_rows()
            return
        assert self.order is not None
        rows = self.rows
        for ck in self.order.irange_key(lo, hi, (lo_incl, hi_incl), reverse=reverse):
            yield rows[ck]

    def delete(self, ts: int) -> None:
        if self.deleted is None or ts > self.deleted:
            self.deleted = ts
        for row in self.iter_rows():
            row.delete(ts)


class TableData:
    """The rows of one table."""

    def __init__(self, sort_key: Callable[[bytes], Any] | None, row_id: Callable[[bytes], Any] | None = None) -> None:
        self.sort_key = sort_key
        self.row_id = row_id
        self.partitions: dict[bytes, Partition] = {}
        self.tokens: SortedList = SortedList()  # (token, partition key)
        self._unindexed: list[tuple[int, bytes]] = []  # new partitions, merged into tokens when a scan needs them

    def partition(self, key: bytes) -> Partition | None:
        return self.partitions.get(key)

    def partition_for_write(self, key: bytes, token: int) -> Partition:
        part = self.partitions.get(key)
        if part is None:
            part = Partition(key, token, self.sort_key, self.row_id)
            self.partitions[key] = part
            self._unindexed.append((token, key))
        return part

    def iter_partitions(self, start: tuple[int, bytes] | None = None, inclusive: bool = True,
                        end_token: int | None = None, end_inclusive: bool = True) -> Iterator[Partition]:
        """Partitions in (token, key) order from ``start``; stops after ``end_token``."""
        if self._unindexed:
            self.tokens.update(self._unindexed)
            self._unindexed.clear()
        tokens = self.tokens
        idx = 0 if start is None else (tokens.bisect_left(start) if inclusive else tokens.bisect_right(start))
        parts = self.partitions
        while idx < len(tokens):
            token, key = tokens[idx]
            if end_token is not None and (token > end_token or (token == end_token and not end_inclusive)):
                return
            part = parts.get(key)
            if part is not None:
                yield part
            idx += 1

    def clear(self) -> None:
        self.partitions.clear()
        self.tokens.clear()
        self._unindexed.clear()
