"""The audit's pure parts: gap runs, each record's outcome, and the range audited per partition."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.domain.events import EventMetadata, Limits, RawRecord, parse_records
from shared.exceptions import ConfigurationError
from shared.ports.lag import LagReading, PartitionLag
from shared.services.audit import AuditService, gaps_in
from shared.services.ingest import audit_entries


def test_gaps_are_inclusive_runs() -> None:
    assert gaps_in(0, 9, {0, 1, 4, 5, 9}) == ((2, 3), (6, 8))
    assert gaps_in(5, 7, {5, 6, 7}) == ()
    assert gaps_in(5, 7, set()) == ((5, 7),)


def test_each_record_gets_its_outcomes() -> None:
    def record(seq: int, body: bytes) -> RawRecord:
        return RawRecord(body, EventMetadata(partition_id="2", sequence_number=seq))

    good = b'{"event_id": "6b0e8a52-3c2b-4f53-9d43-2f1b6d0f5a11", "device_id": "d", "event_type": "t", ' \
           b'"timestamp": "2026-12-05T10:00:00Z"}'
    records = [record(10, good), record(11, b"nope"), record(12, good), RawRecord(good, EventMetadata())]
    parsed = parse_records(records, limits=Limits(), now=datetime(2026, 12, 5, 11, tzinfo=UTC))
    outcomes = [(e.sequence_number, e.outcome) for e in audit_entries(records, parsed.oks, parsed.errs)]
    assert outcomes == [(10, "stored"), (11, "dead_lettered"), (12, "duplicate")]


class Ledger:
    def __init__(self, accounted: set[int]) -> None:
        self.numbers = accounted
        self.reads: list[tuple[str, int, int]] = []

    def record(self, entries: object) -> None:
        raise AssertionError("not written by the audit")

    def accounted(self, partition: str, first: int, last: int) -> set[int]:
        self.reads.append((partition, first, last))
        return {n for n in self.numbers if first <= n <= last}


class Positions:
    def read(self) -> LagReading:
        return LagReading((PartitionLag("0", 100, 200, 180, 20), PartitionLag("1", 0, 5, None, 6)))


def test_a_window_audits_up_to_the_checkpoint_and_never_what_has_no_checkpoint() -> None:
    ledger = Ledger(set(range(100, 181)) - {150})
    report = AuditService(ledger, Positions()).audit(window=50)
    assert ledger.reads == [("0", 131, 180)]
    assert [(p.partition, p.first, p.last, p.gaps) for p in report.partitions] == [
        ("0", 131, 180, ((150, 150),)), ("1", 0, -1, ())]
    assert report.missing == 1
    # The window never reaches below what the hub still retains.
    AuditService(ledger, Positions()).audit(window=1000)
    assert ledger.reads[-1] == ("0", 100, 180)


def test_a_range_too_long_is_refused_by_name_and_one_start_is_required() -> None:
    with pytest.raises(ConfigurationError, match="partition 0: auditing 181 sequence numbers"):
        AuditService(Ledger(set()), Positions(), max_span=100).audit(from_sequence=0)
    with pytest.raises(ConfigurationError, match="exactly one"):
        AuditService(Ledger(set()), Positions()).audit(window=1, from_sequence=0)
