"""``CassandraAuditLedger``: the runs of sequence numbers ingest accounted for, in ``ingest_audit_runs``.

Rows are keyed ``((eh_partition, block), first_sequence, last_sequence)`` with
``block = first_sequence // BLOCK``; a run that crosses a block boundary is cut
there, so every row lies inside its block. One Event Hubs batch is one run, so one
row (two at a boundary): the ledger costs a row per batch, not per event. Writing
the same run again (a retried batch) overwrites the same row; a run that overlaps
another (a batch delivered again cut differently, by a pod that took the partition
over from an older checkpoint) is a row of its own, so neither erases the other.
An audit of a range reads the blocks it covers, one Cassandra partition each, never
a scan.

``ingest_audit`` (migration 2) was keyed by ``first_sequence`` alone, where a shorter
run overwrote a longer one starting at the same number; a primary key cannot be
altered, so migration 5 made the new table. The old one is no longer written and is
still read: every row in it is a run ingest did account for, so the history from
before the upgrade stays covered (no false gap right after it) and no gap is hidden.

Every hub numbers its partitions' records from 0, so a run says which hub it was
of: ingest writes ``eh_partition`` as ``<namespace>/<hub>/<partition>`` (the hub's
identity as the host's checkpoints name it, lowercase, :func:`ledger_partition`),
and the audit of a hub reads its own rows, never another hub's (ingest moved to a
new hub or namespace). Rows written before that carry the bare partition id; they
are still read, by the audit of whatever hub, so that history stays covered: an
audit across a hub move of ranges recorded before the upgrade cannot tell the
hubs apart. A hub deleted and created again under the same name and namespace is
the same identity: the ledger cannot tell it from its predecessor either.
The key is the same one row, so recording a run costs what it did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from shared.adapters.cassandra.query import execute_all
from shared.exceptions import DependencyUnavailable, TransientError
from shared.lazy import Once
from shared.ports.audit import AuditRun

logger = logging.getLogger(__name__)

BLOCK = 10_000
TABLE = "ingest_audit_runs"
LEGACY_TABLE = "ingest_audit"
"""Written by ingest before migration 5; read, never written (see the module docstring)."""


def ledger_partition(hub: str | None, partition: str) -> str:
    """The ``eh_partition`` value of ``partition`` of ``hub`` (``<namespace>/<hub>``), or the bare partition id
    without a hub (as every row written before the ledger named its hub)."""
    return f"{hub}/{partition}" if hub else partition


def split_at_blocks(run: AuditRun) -> list[AuditRun]:
    """``run`` cut at multiples of ``BLOCK`` (the counts stay on the first piece: they describe the whole run)."""
    pieces = []
    start = run.first
    while start <= run.last:
        end = min(run.last, (start // BLOCK + 1) * BLOCK - 1)
        pieces.append(AuditRun(run.partition, start, end, *((run.stored, run.dead_lettered, run.duplicate)
                                                             if start == run.first else (0, 0, 0))))
        start = end + 1
    return pieces


class CassandraAuditLedger:
    """Implements ``shared.ports.audit.AuditLedger`` on Cassandra / Cosmos DB."""

    def __init__(self, session: Session | Callable[[], Session], keyspace: str, *, concurrency: int = 16,
                 timeout: float = 10.0, hub: str | None = None) -> None:
        """``hub``: the identity of the hub ingest reads (``<namespace>/<hub>``, ``bootstrap.ingest_hub``); its runs
        are recorded under it, and read with the rows that name no hub. ``None``: bare partition ids only."""
        # A callable is called on first use (bootstrap's lazy session), inside ``record``, where a failure to
        # connect is a failed write the ingest service retries or dead-letters.
        self._session_of = session if callable(session) else (lambda: session)
        self._keyspace = keyspace
        self._concurrency = concurrency
        self._timeout = timeout
        self._hub = hub.lower() if hub else None
        self._statements = Once(self._prepare)

    @property
    def _session(self) -> Session:
        return self._session_of()

    def _prepare(self) -> tuple[PreparedStatement, tuple[PreparedStatement, PreparedStatement]]:
        ks = self._keyspace
        insert = self._session.prepare(
            f"INSERT INTO {ks}.{TABLE} (eh_partition, block, first_sequence, last_sequence, stored, "
            "dead_lettered, duplicate, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        insert.is_idempotent = True
        current, legacy = (self._session.prepare(f"SELECT first_sequence, last_sequence FROM {ks}.{table} "
                                                 "WHERE eh_partition = ? AND block = ? AND first_sequence <= ?")
                           for table in (TABLE, LEGACY_TABLE))
        return insert, (current, legacy)

    def record(self, runs: Sequence[AuditRun]) -> None:
        if not runs:
            return
        insert, _ = self._statements.get()
        now = datetime.now(UTC)
        hub = self._hub
        work = [(insert, (ledger_partition(hub, p.partition), p.first // BLOCK, p.first, p.last, p.stored,
                          p.dead_lettered, p.duplicate, now))
                for run in runs for p in split_at_blocks(run)]
        results = execute_all(self._session, work, concurrency=self._concurrency)
        failures = [result for ok, result in results if not ok]
        if failures:
            raise TransientError(f"{len(failures)} of {len(work)} audit writes failed (first: "
                                 f"{type(failures[0]).__name__}: {failures[0]}); runs: "
                                 f"{[(r.partition, r.first, r.last) for r in runs[:10]]}")

    def accounted(self, partition: str, first: int, last: int) -> Iterator[tuple[int, int]]:
        current, legacy = self._statements.get()[1]
        # This hub's rows, then the rows that name no hub (written before the ledger named it): both tables.
        reads = [(current, ledger_partition(self._hub, partition))] if self._hub else []
        reads += [(current, partition), (legacy, partition)]
        for block in range(first // BLOCK, last // BLOCK + 1):
            for select, key in reads:
                try:
                    rows = self._session.execute(select, (key, block, last), timeout=self._timeout)
                    for row in rows:
                        if row.last_sequence >= first:
                            yield row.first_sequence, row.last_sequence
                except Exception as exc:  # the driver's errors have no common base beyond Exception
                    raise DependencyUnavailable("Cassandra", f"cannot read the ingest audit of partition "
                                                f"{partition}, block {block}: {type(exc).__name__}: {exc}") from exc
