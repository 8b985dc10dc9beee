"""The audit's pure parts: gap runs, each record's outcome, and the range audited per partition."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.domain.events import EventMetadata, Limits, RawRecord, parse_records
from shared.exceptions import ConfigurationError
from shared.ports.lag import LagReading, PartitionLag
from shared.services.audit import AuditService, gaps_in
from shared.services.ingest import audit_runs


def test_gaps_are_what_no_run_covers() -> None:
    assert gaps_in(0, 9, [(0, 1), (4, 5), (9, 9)]) == ((2, 3), (6, 8))
    assert gaps_in(5, 7, [(0, 100)]) == ()
    assert gaps_in(5, 7, []) == ((5, 7),)
    # Overlapping runs (a batch delivered again, cut differently), in any order, and runs past the range.
    assert gaps_in(10, 30, [(15, 22), (10, 12), (11, 16), (25, 40)]) == ((23, 24),)
    assert gaps_in(10, 30, [(0, 9), (31, 40)]) == ((10, 30),)


def test_each_record_gets_its_outcomes() -> None:
    def record(seq: int, body: bytes) -> RawRecord:
        return RawRecord(body, EventMetadata(partition_id="2", sequence_number=seq))

    good = b'{"event_id": "6b0e8a52-3c2b-4f53-9d43-2f1b6d0f5a11", "device_id": "d", "event_type": "t", ' \
           b'"timestamp": "2026-12-05T10:00:00Z"}'
    records = [record(10, good), record(11, b"nope"), record(12, good), RawRecord(good, EventMetadata()),
               record(14, b"[]"), RawRecord(b"x", EventMetadata(partition_id="3", sequence_number=1))]
    parsed = parse_records(records, limits=Limits(), now=datetime(2026, 12, 5, 11, tzinfo=UTC))
    runs = [(r.partition, r.first, r.last, r.stored, r.dead_lettered, r.duplicate)
            for r in audit_runs(records, parsed.oks, parsed.errs)]
    # 10..12 consecutive; 13 never came, so 14 starts a run; partition 3 its own. The later copy of an id is the one
    # stored, as it would be in a batch of its own: here the copy from no partition (not audited), so 10 and 12 are
    # both its duplicates, accounted for all the same.
    assert runs == [("2", 10, 12, 0, 1, 2), ("2", 14, 14, 0, 1, 0), ("3", 1, 1, 0, 1, 0)]
    # Without it, 12 (the later copy) is the one stored and 10 its duplicate: still one of each.
    numbered = records[:3] + records[4:]
    parsed = parse_records(numbered, limits=Limits(), now=datetime(2026, 12, 5, 11, tzinfo=UTC))
    assert [e.metadata.sequence_number for e in parsed.oks] == [12]
    first = audit_runs(numbered, parsed.oks, parsed.errs)[0]
    assert (first.first, first.last, first.stored, first.dead_lettered, first.duplicate) == (10, 12, 1, 1, 1)


class Ledger:
    def __init__(self, runs: list[tuple[int, int]]) -> None:
        self.runs = runs
        self.reads: list[tuple[str, int, int]] = []

    def record(self, runs: object) -> None:
        raise AssertionError("not written by the audit")

    def accounted(self, partition: str, first: int, last: int) -> list[tuple[int, int]]:
        self.reads.append((partition, first, last))
        return [(s, e) for s, e in self.runs if e >= first and s <= last]


class Positions:
    def read(self) -> LagReading:
        return LagReading((PartitionLag("0", 100, 200, 180, 20), PartitionLag("1", 0, 5, None, 6)))


def test_a_window_audits_up_to_the_checkpoint_and_never_what_has_no_checkpoint() -> None:
    ledger = Ledger([(100, 149), (151, 180)])
    report = AuditService(ledger, Positions()).audit(window=50)
    assert ledger.reads == [("0", 131, 180)]
    assert [(p.partition, p.first, p.last, p.gaps) for p in report.partitions] == [
        ("0", 131, 180, ((150, 150),)), ("1", 0, -1, ())]
    assert report.missing == 1
    # The window reaches below what the hub still retains: records checkpointed past that expired before ingest
    # read them (ingest down longer than the retention) are missing, and only the ledger can say so.
    report = AuditService(ledger, Positions()).audit(window=1000)
    assert ledger.reads[-1] == ("0", 0, 180)
    assert report.partitions[0].gaps == ((0, 99), (150, 150))


def test_a_range_too_long_is_refused_by_name_and_one_start_is_required() -> None:
    with pytest.raises(ConfigurationError, match="partition 0: auditing 181 sequence numbers"):
        AuditService(Ledger([]), Positions(), max_span=100).audit(from_sequence=0)
    with pytest.raises(ConfigurationError, match="exactly one"):
        AuditService(Ledger([]), Positions()).audit(window=1, from_sequence=0)


def test_a_run_is_cut_at_block_boundaries_and_keeps_its_counts_once() -> None:
    from shared.adapters.cassandra.audit import BLOCK, split_at_blocks
    from shared.ports.audit import AuditRun

    pieces = split_at_blocks(AuditRun("0", BLOCK - 2, 2 * BLOCK + 1, 5, 1, 0))
    assert [(p.first, p.last) for p in pieces] == [(BLOCK - 2, BLOCK - 1), (BLOCK, 2 * BLOCK - 1),
                                                   (2 * BLOCK, 2 * BLOCK + 1)]
    assert [(p.stored, p.dead_lettered) for p in pieces] == [(5, 1), (0, 0), (0, 0)]


class FirstAt:
    """The hub's answer to "the first sequence number enqueued at or after T", per partition (None: none)."""

    def __init__(self, found: dict[str, int | None]) -> None:
        self.found = found

    def first_at(self, partition: str, at: object) -> int | None:
        return self.found[partition]


def test_a_since_the_hub_can_place_only_at_its_oldest_retained_event_is_marked_not_whole() -> None:
    """Partition 0 retains 100..200 (0..99 expired) and the first event since T is 100, the oldest retained: the
    expired ones may be since T too, so the report is not whole. Had the first been 150, a retained event before T
    (100) places T, and the audit is whole."""
    since = datetime(2026, 12, 5, tzinfo=UTC)
    placed_at_oldest = AuditService(Ledger([(100, 180)]), Positions(),
                                    FirstAt({"0": 100, "1": None})).audit(since=since)
    assert (placed_at_oldest.missing, placed_at_oldest.whole) == (0, False)
    assert placed_at_oldest.partitions[0].expired_below == 100
    placed = AuditService(Ledger([(150, 180)]), Positions(), FirstAt({"0": 150, "1": None})).audit(since=since)
    assert (placed.missing, placed.whole) == (0, True)


class EmptiedPositions:
    """Partition 0 checkpointed at 180, its last event, and the hub retains none of it any more: as Azure reports
    an empty partition, the beginning equals the last sequence number."""

    def read(self) -> LagReading:
        return LagReading((PartitionLag("0", 180, 180, 180, 0, empty=True),))


def test_a_partition_emptied_by_retention_is_marked_not_whole_from_the_next_sequence_number() -> None:
    """Nothing is retained, so nothing places T: every number up to the last may have been enqueued since T and
    expired. The beginning (180, equal to the last) is no retained event: 181 is the first that could be."""
    since = datetime(2026, 12, 5, tzinfo=UTC)
    report = AuditService(Ledger([(100, 180)]), EmptiedPositions(), FirstAt({"0": None})).audit(since=since)
    assert (report.whole, report.partitions[0].expired_below) == (False, 181)
    # a window audits the ledger whatever the hub retains
    ledger = Ledger([(100, 180)])
    assert AuditService(ledger, EmptiedPositions()).audit(window=50).missing == 0
    assert ledger.reads == [("0", 131, 180)]


def test_a_start_sequence_past_every_checkpoint_is_refused_naming_them() -> None:
    service = AuditService(Ledger([]), Positions())
    with pytest.raises(ConfigurationError,
                       match=r"sequence 181 is past every partition's checkpoint \(0: 180, 1: none\)"):
        service.audit(from_sequence=181)
    assert service.audit(from_sequence=180).partitions[0].audited == 1  # at the checkpoint: one to audit
