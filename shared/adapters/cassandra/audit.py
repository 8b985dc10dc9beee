"""``CassandraAuditLedger``: each Event Hubs record's outcome in ``ingest_audit``, read per partition and block.

Rows are keyed ``((eh_partition, block), sequence_number, outcome)`` with
``block = sequence_number // BLOCK``: a block of 10,000 sequence numbers is at
most a few hundred kilobytes, one ingest batch touches one or two blocks (one
unlogged batch each: one partition, one mutation), and an audit of a range reads
the blocks it covers with a clustering-range query, never a scan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from shared.exceptions import DependencyUnavailable, TransientError
from shared.lazy import Once
from shared.ports.audit import AuditEntry

logger = logging.getLogger(__name__)

BLOCK = 10_000


class CassandraAuditLedger:
    """Implements ``shared.ports.audit.AuditLedger`` on Cassandra / Cosmos DB."""

    def __init__(self, session: Session | Callable[[], Session], keyspace: str, *, concurrency: int = 16,
                 timeout: float = 10.0) -> None:
        # A callable is called on first use (bootstrap's lazy session), inside ``record``, where a failure to
        # connect is a failed write the ingest service retries or dead-letters.
        self._session_of = session if callable(session) else (lambda: session)
        self._keyspace = keyspace
        self._concurrency = concurrency
        self._timeout = timeout
        self._statements = Once(self._prepare)

    @property
    def _session(self) -> Session:
        return self._session_of()

    def _prepare(self) -> tuple[PreparedStatement, PreparedStatement]:
        ks = self._keyspace
        insert = self._session.prepare(f"INSERT INTO {ks}.ingest_audit (eh_partition, block, sequence_number, outcome, "
                                       "recorded_at) VALUES (?, ?, ?, ?, ?)")
        insert.is_idempotent = True
        select = self._session.prepare(f"SELECT sequence_number FROM {ks}.ingest_audit WHERE eh_partition = ? AND "
                                       "block = ? AND sequence_number >= ? AND sequence_number <= ?")
        return insert, select

    def record(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        insert, _ = self._statements.get()
        now = datetime.now(UTC)
        blocks: dict[tuple[str, int], list[AuditEntry]] = {}
        for entry in entries:
            blocks.setdefault((entry.partition, entry.sequence_number // BLOCK), []).append(entry)
        work = []
        for (partition, block), members in blocks.items():
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            batch.is_idempotent = True
            for entry in members:
                batch.add(insert, (partition, block, entry.sequence_number, entry.outcome, now))
            work.append((batch, ()))
        results = execute_concurrent(self._session, work, concurrency=self._concurrency, raise_on_first_error=False)
        failures = [result for ok, result in results if not ok]
        if failures:
            raise TransientError(f"{len(failures)} of {len(work)} audit writes failed (first: "
                                 f"{type(failures[0]).__name__}: {failures[0]}); partitions and blocks: "
                                 f"{sorted(blocks)[:10]}")

    def accounted(self, partition: str, first: int, last: int) -> Iterator[int]:
        _, select = self._statements.get()
        for block in range(first // BLOCK, last // BLOCK + 1):
            try:
                rows = self._session.execute(select, (partition, block, first, last), timeout=self._timeout)
                for row in rows:
                    yield row.sequence_number
            except Exception as exc:  # the driver's errors have no common base beyond Exception
                raise DependencyUnavailable("Cassandra", f"cannot read the ingest audit of partition {partition}, "
                                            f"block {block}: {type(exc).__name__}: {exc}") from exc
