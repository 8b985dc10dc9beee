"""Cosmos DB's change feed: ``SELECT ... WHERE COSMOS_CHANGEFEED_START_TIME() = '<time>'``.

Every applied upsert (INSERT/UPDATE, not DELETE) appends ``(seq, at, pk, ck)`` to
its table's log; ``seq`` is global and increasing, ``at`` the wall-clock time.
A feed query starts at the first entry at or after the start time, or right
after the position its paging state holds (``b"F1"`` + table id + seq), and
returns each changed row once, at its latest modification, in modification
order; deleted rows are skipped. A paging state is always returned, even for an
empty page (as Cosmos does), so a reader polls with it forever; auto-paging a
feed result in the driver would never end (use ``current_rows``/``paging_state``).
"""

from __future__ import annotations

import bisect
import datetime
import struct
import uuid
from dataclasses import dataclass, field

from . import statements as st
from .errors import Invalid
from .keys import partition_key
from .results import Rows
from .schema import Table
from .select import projection, resolve_restrictions
from .store import TableData
from .wire import Value

_STATE = struct.Struct(">2s16sq")


@dataclass
class FeedLog:
    seqs: list[int] = field(default_factory=list)
    ats: list[float] = field(default_factory=list)
    keys: list[tuple[bytes, bytes]] = field(default_factory=list)
    latest: dict[tuple[bytes, bytes], int] = field(default_factory=dict)

    def append(self, seq: int, at: float, pk: bytes, ck: bytes) -> None:
        if self.ats and at < self.ats[-1]:
            at = self.ats[-1]  # keep the log sorted by time even if the clock steps back
        key = (pk, ck)
        self.seqs.append(seq)
        self.ats.append(at)
        self.keys.append(key)
        self.latest[key] = seq


class ChangeFeed:
    """Per-table modification logs and the global sequence."""

    def __init__(self) -> None:
        self.logs: dict[uuid.UUID, FeedLog] = {}
        self.seq = 0

    def record(self, table_id: uuid.UUID, pk: bytes, ck: bytes, at: float) -> None:
        self.seq += 1
        log = self.logs.get(table_id)
        if log is None:
            log = self.logs[table_id] = FeedLog()
        log.append(self.seq, at, pk, ck)

    def drop(self, table_id: uuid.UUID) -> None:
        self.logs.pop(table_id, None)


def parse_start_time(text: str) -> float:
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace(" ", "T"))
    except ValueError:
        raise Invalid(f"COSMOS_CHANGEFEED_START_TIME() value {text!r} is not an ISO-8601 time "
                      "such as '2024-01-02T03:04:05Z'") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def execute_feed(feed: ChangeFeed, table: Table, data: TableData, stmt: st.Select, values: list[Value],
                 page_size: int, paging_state: bytes | None, now: int) -> Rows:
    specs, extractors, counting = projection(table, stmt.selectors)
    if counting:
        raise Invalid("COUNT(*) is not supported on the change feed")
    r = resolve_restrictions(table, stmt.where, values)
    assert r.changefeed is not None
    if r.ck_eq or r.ck_slice or r.filters or r.token_lo or r.token_hi or stmt.order_by:
        raise Invalid("The change feed can only be restricted by the full partition key (equality)")
    # Refused rather than ignored: the feed pages by the request's page size alone
    for name, given in (("LIMIT", stmt.limit), ("PER PARTITION LIMIT", stmt.per_partition_limit)):
        if given is not None:
            raise Invalid(f"{name} is not supported on the change feed in this emulator: bound a read by the page "
                          "size (fetch_size)")
    if sum(1 for rel in stmt.where if rel.kind == "changefeed") > 1:
        raise Invalid("More than one COSMOS_CHANGEFEED_START_TIME() restriction was found")
    wanted: set[bytes] | None = None
    if r.pk:
        if len(r.pk) != len(table.partition_key) or any(len(v) != 1 for v in r.pk.values()):
            raise Invalid("The change feed can only be restricted by the full partition key (equality)")
        wanted = {partition_key([r.pk[c.name][0] for c in table.partition_key])}
    log = feed.logs.get(table.id) or FeedLog()
    if paging_state:
        try:
            magic, tid, after = _STATE.unpack(paging_state)
        except struct.error:
            raise Invalid("Invalid paging state for the change feed") from None
        if magic != b"F1":
            raise Invalid("Invalid paging state: not a change feed continuation")
        if tid != table.id.bytes:
            raise Invalid("The change feed continuation does not belong to this table (was it dropped and recreated?)")
        index = bisect.bisect_right(log.seqs, after)
    else:
        start = parse_start_time(r.changefeed)
        index = bisect.bisect_left(log.ats, start)
        after = log.seqs[index - 1] if index > 0 else 0
    limit = page_size if page_size and page_size > 0 else 5000
    out: list[list[bytes | None]] = []
    seqs, keys, latest = log.seqs, log.keys, log.latest
    position = after
    while index < len(seqs) and len(out) < limit:
        seq = seqs[index]
        key = keys[index]
        index += 1
        position = seq
        if latest.get(key) != seq:
            continue  # a later modification of this row comes further on
        if wanted is not None and key[0] not in wanted:
            continue
        part = data.partition(key[0])
        if part is None:
            continue
        row = part.get(key[1])
        if row is None or not row.live(now):
            continue
        out.append([f(part, row, now) for f in extractors])
    return Rows(specs, out, _STATE.pack(b"F1", table.id.bytes, position))
