"""The ingest service's ordering: every record is stored or dead-lettered before handle() returns."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.events import EventMetadata, Limits, RawRecord
from shared.exceptions import ConfigurationError, TransientError
from shared.ports.ingest import RejectedLettersFailed
from shared.services.audit import gaps_in
from shared.services.ingest import IngestService, LazyEventStore

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class FakeStore:
    def __init__(self, failures: int = 0):
        self.failures = failures
        self.rows: dict[uuid.UUID, object] = {}
        self.calls = 0

    def write(self, events):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise TransientError("store down")
        for event in events:
            self.rows[event.event_id] = event


class FakeDeadLetters:
    """Writes the rejected letters one at a time, as the blob sink does; ``fail_at``: the letter (0-based, of all
    written) from which they fail, raising the port's ``RejectedLettersFailed`` with the ones this call wrote."""

    def __init__(self, broken: bool = False, fail_at: int | None = None):
        self.broken = broken
        self.fail_at = 0 if broken else fail_at
        self.rejected = []
        self.batches = []

    def put_rejected(self, rejected):
        for written, item in enumerate(rejected):
            if self.fail_at is not None and len(self.rejected) >= self.fail_at:
                raise RejectedLettersFailed("could not write dead letter: blob down", rejected[:written])
            self.rejected.append(item)

    def put_batch(self, bodies, reason, *, lettered=()):
        if self.broken:
            raise TransientError("blob down")
        self.batches.append(([b for i, b in enumerate(bodies) if i not in lettered], reason))


def record(seq: int, **fields) -> RawRecord:
    body = {
        "event_id": str(uuid.uuid4()),
        "device_id": "dev-1",
        "event_type": "telemetry",
        "timestamp": "2026-11-23T11:00:00Z",
        **fields,
    }
    return RawRecord(json.dumps(body).encode(), EventMetadata(partition_id="0", sequence_number=seq, enqueued_time=NOW))


def test_valid_events_are_stored_and_bad_ones_dead_lettered_in_the_same_call():
    store, dead = FakeStore(), FakeDeadLetters()
    records = [record(1), RawRecord(b"{oops", EventMetadata(sequence_number=2)), record(3, severity="bogus")]
    result = IngestService(store, dead, Limits()).handle(records, now=NOW)
    assert (result.received, result.stored, result.rejected) == (3, 1, 2)
    assert [r.original for r in dead.rejected] == [records[1].body, records[2].body]
    assert len(store.rows) == 1


def test_a_transient_failure_before_the_last_attempt_raises_for_the_retry():
    store, dead = FakeStore(failures=1), FakeDeadLetters()
    service = IngestService(store, dead, Limits())
    records = [record(1), record(2)]
    with pytest.raises(TransientError):
        service.handle(records, final_attempt=False, now=NOW)
    assert dead.batches == []
    result = service.handle(records, final_attempt=False, now=NOW)
    assert result.stored == 2 and len(store.rows) == 2


def test_the_rejected_letters_are_written_only_after_the_store_took_the_valid_events():
    """A store failure leaves the dead letters as they were: a replayed letter, rewritten naming only what is still
    invalid, must not lose an element the failed store did not take. The retry (or the final attempt) writes them."""
    store, dead = FakeStore(failures=1), FakeDeadLetters()
    service = IngestService(store, dead, Limits())
    records = [record(1), RawRecord(b"{oops", EventMetadata(sequence_number=2))]
    with pytest.raises(TransientError):
        service.handle(records, final_attempt=False, now=NOW)
    assert dead.rejected == [] and dead.batches == []
    assert service.handle(records, final_attempt=False, now=NOW).rejected == 1
    assert [r.original for r in dead.rejected] == [b"{oops"] and len(store.rows) == 1


def test_on_the_final_attempt_the_whole_batch_is_dead_lettered_with_the_reason():
    store, dead = FakeStore(failures=1), FakeDeadLetters()
    records = [record(1), record(2), RawRecord(b"bad", EventMetadata(sequence_number=3))]
    result = IngestService(store, dead, Limits()).handle(records, final_attempt=True, now=NOW)
    assert result.batch_dead_lettered and result.stored == 0
    [(bodies, reason)] = dead.batches
    assert [body for body, _ in bodies] == [r.body for r in records[:2]], "b'bad' has its rejected letter already"
    assert [r.original for r in dead.rejected] == [b"bad"]
    assert "event store unavailable: store down" in reason


def test_the_final_attempts_batch_letter_keeps_a_record_with_any_valid_element_whole():
    """A record of one valid and one invalid element stays in the batch letter (its valid event is only there); a
    record with nothing valid is left to its rejected letter, so no item is lettered twice."""
    store, dead = FakeStore(failures=1), FakeDeadLetters()
    mixed = json.dumps([json.loads(record(1).body), {"device_id": "x"}]).encode()
    records = [RawRecord(mixed, EventMetadata(sequence_number=1)),
               RawRecord(b"[1, 2]", EventMetadata(sequence_number=2)), record(3)]
    result = IngestService(store, dead, Limits()).handle(records, final_attempt=True, now=NOW)
    assert result.batch_dead_lettered and result.rejected == 3
    [(bodies, _)] = dead.batches
    assert [body for body, _ in bodies] == [mixed, records[2].body]


def test_an_event_judged_ahead_on_one_attempt_is_judged_so_on_every_later_one_and_dead_lettered_once():
    """The future skew is judged against the record's Event Hubs enqueued time, not each attempt's clock: the host's
    ``@retry`` spaces its attempts over at least 1+2+4+8+16 = 31 s, and an event 5 min 20 s ahead used to be rejected
    on attempt 0 and valid on the final one, so it was in its rejected letter *and* the batch letter (had the store
    come back, stored and in a letter saying it is invalid). A redelivery long after gets the same verdict too."""
    ahead = record(1, timestamp=(NOW + timedelta(minutes=5, seconds=20)).isoformat())
    other = record(2)
    store, dead = FakeStore(failures=2), FakeDeadLetters()
    service = IngestService(store, dead, Limits())
    with pytest.raises(TransientError):  # attempt 0: the store is down; the host will retry
        service.handle([ahead, other], final_attempt=False, now=NOW)
    assert service.handle([ahead, other], final_attempt=True, now=NOW + timedelta(seconds=31)).rejected == 1

    # The sink names a rejected letter by its record's position: each attempt rewrote the one letter.
    rejected_letters = {(r.metadata.partition_id, r.metadata.sequence_number): r.original for r in dead.rejected}
    letters = [*rejected_letters.values(), *(body for bodies, _ in dead.batches for body, _ in bodies)]
    assert letters.count(ahead.body) == 1, f"the event is in {letters.count(ahead.body)} dead letters"
    redelivered = service.handle([ahead, other], now=NOW + timedelta(hours=1))  # the store is back
    assert (redelivered.stored, redelivered.rejected) == (1, 1)
    assert uuid.UUID(json.loads(ahead.body)["event_id"]) not in store.rows


def test_when_the_dead_letter_sink_is_down_the_error_propagates():
    with pytest.raises(TransientError, match="blob down"):
        IngestService(FakeStore(), FakeDeadLetters(broken=True), Limits()).handle(
            [RawRecord(b"bad", EventMetadata())], now=NOW
        )


class BrokenStore:
    """A store failing the way no retry policy expects: a schema that is not ours."""

    def write(self, events):
        raise ConfigurationError("measurements is map<text, text> in events_by_id")


def test_any_store_failure_is_retried_then_dead_lettered_not_only_transient_ones():
    dead = FakeDeadLetters()
    service = IngestService(BrokenStore(), dead, Limits())
    records = [record(1), record(2)]
    with pytest.raises(ConfigurationError):
        service.handle(records, final_attempt=False, now=NOW)
    assert dead.batches == []
    result = service.handle(records, final_attempt=True, now=NOW)
    assert result.batch_dead_lettered
    [(bodies, reason)] = dead.batches
    assert [body for body, _ in bodies] == [r.body for r in records]
    assert reason == "event store unavailable: ConfigurationError: measurements is map<text, text> in events_by_id"


def test_a_lazy_store_is_built_on_the_first_write_and_built_again_after_a_failed_build():
    builds: list[str] = []
    real = FakeStore()

    def build():
        builds.append("attempt")
        if len(builds) == 1:
            raise ConnectionRefusedError("cassandra:9042 refused the connection")
        return real

    dead = FakeDeadLetters()
    service = IngestService(LazyEventStore(build), dead, Limits())
    service.handle([RawRecord(b"{oops", EventMetadata(sequence_number=1))], now=NOW)
    assert builds == []  # only invalid events: the store is not needed, and nothing stops the dead letter
    assert len(dead.rejected) == 1
    first = [record(2)]
    result = service.handle(first, final_attempt=True, now=NOW)
    assert result.batch_dead_lettered and "ConnectionRefusedError: cassandra:9042" in dead.batches[0][1]
    second = [record(3), record(4)]
    service.handle(second, final_attempt=True, now=NOW)
    service.handle([record(5)], final_attempt=True, now=NOW)
    assert builds == ["attempt", "attempt"] and len(real.rows) == 3 and len(dead.batches) == 1


class FailsFirst:
    """A fake port whose first ``failures`` writes raise ``TransientError("<what> down")``."""

    what = "port"

    def __init__(self, failures: int = 0):
        self.failures = failures

    def fail_if_due(self) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientError(f"{self.what} down")


class FakeLedger(FailsFirst):
    what = "ledger"

    def __init__(self, failures: int = 0):
        super().__init__(failures)
        self.entries = []
        self.runs = []

    def record(self, runs):
        self.fail_if_due()
        self.entries.extend((r.first, r.last, r.stored, r.dead_lettered, r.duplicate) for r in runs)
        self.runs.extend(runs)

    def accounted(self, partition, first, last):
        return [(r.first, r.last) for r in self.runs
                if r.partition == partition and r.last >= first and r.first <= last]


def test_the_audit_ledger_gets_each_records_outcome_after_the_store_and_a_failed_ledger_write_is_retried():
    store, dead, ledger = FakeStore(), FakeDeadLetters(), FakeLedger(failures=1)
    service = IngestService(store, dead, Limits(), ledger)
    records = [record(1), RawRecord(b"{oops", EventMetadata(partition_id="0", sequence_number=2)), record(3)]
    with pytest.raises(TransientError, match="ledger down"):
        service.handle(records, final_attempt=False, now=NOW)
    assert ledger.entries == []
    service.handle(records, final_attempt=False, now=NOW)
    assert ledger.entries == [(1, 3, 2, 1, 0)]


def test_a_batch_dead_lettered_on_the_final_attempt_is_recorded_as_dead_lettered():
    ledger = FakeLedger()
    records = [record(7), record(8)]
    result = IngestService(FakeStore(failures=1), FakeDeadLetters(), Limits(), ledger).handle(records, now=NOW)
    assert result.batch_dead_lettered
    assert ledger.entries == [(7, 8, 0, 2, 0)]


def test_a_rejected_letter_written_before_the_sink_failed_is_not_reported_as_lost():
    """docs/operations.md: when the function fails with ``could not write dead letter`` (the host checkpoints past
    the batch), ``sluice audit`` lists the exact ranges in neither place. The sink writes the rejected letters one by
    one and Blob storage fails after the first: batch 0..2 on its final attempt, 0 valid and stored, 1 not JSON and
    its letter written, 2 not JSON and its letter lost. Only 2 is in neither place. (Every record with a rejected
    item was left out of the ledger, so the audit sent the operator to re-read 1, which is dead-lettered.)"""
    records = [record(0), RawRecord(b"{not json", EventMetadata(partition_id="0", sequence_number=1)),
               RawRecord(b"{still not json", EventMetadata(partition_id="0", sequence_number=2))]
    store, dead, ledger = FakeStore(), FakeDeadLetters(fail_at=1), FakeLedger()
    with pytest.raises(RejectedLettersFailed, match="could not write dead letter"):
        IngestService(store, dead, Limits(), ledger).handle(records, final_attempt=True, now=NOW)
    assert [r.original for r in dead.rejected] == [b"{not json"] and len(store.rows) == 1
    assert ledger.entries == [(0, 1, 1, 1, 0)]
    assert gaps_in(0, 2, ledger.accounted("0", 0, 2)) == ((2, 2),)


def test_rejected_letters_written_before_the_sink_failed_after_the_store_did_are_recorded_as_dead_lettered():
    """The store down through the final attempt, then the sink fails after two rejected letters: the call raises
    before the batch letter. Record 1 (refused whole, its letter written) is dead-lettered; 0 (valid, not stored)
    and 3 (its letter lost) are in neither place, and neither is 2, whose letter names its bad element while its
    valid one was not stored."""
    mixed = json.dumps([json.loads(record(2).body), {"device_id": "x"}]).encode()
    records = [record(0), RawRecord(b"{not json", EventMetadata(partition_id="0", sequence_number=1)),
               RawRecord(mixed, EventMetadata(partition_id="0", sequence_number=2)),
               RawRecord(b"{still not json", EventMetadata(partition_id="0", sequence_number=3))]
    dead, ledger = FakeDeadLetters(fail_at=2), FakeLedger()
    with pytest.raises(RejectedLettersFailed):
        IngestService(FakeStore(failures=1), dead, Limits(), ledger).handle(records, final_attempt=True, now=NOW)
    assert [r.original for r in dead.rejected] == [b"{not json", mixed] and dead.batches == []
    assert ledger.entries == [(1, 1, 0, 1, 0)]
    assert gaps_in(0, 3, ledger.accounted("0", 0, 3)) == ((0, 0), (2, 3))


class BatchLetterRefused(FakeDeadLetters):
    """Writes the rejected letters; the batch letter fails (Blob storage went down between them)."""

    def put_batch(self, bodies, reason, *, lettered=()):
        raise TransientError("could not write dead letter: blob down")


def test_rejected_letters_written_before_the_batch_letter_failed_are_recorded_as_dead_lettered():
    """docs/operations.md: the audit lists neither the records stored nor those whose rejected letter was written
    before storage failed. The store down through the final attempt: 1 and 2 (refused whole) get their rejected
    letters, then the batch letter fails and the call raises. 1 and 2 are dead-lettered; 0 (valid, not stored) and
    3 (valid beside a bad element: its letter names only that) are in neither place. (Nothing was recorded.)"""
    mixed = json.dumps([json.loads(record(3).body), {"device_id": "x"}]).encode()
    records = [record(0), RawRecord(b"{not json", EventMetadata(partition_id="0", sequence_number=1)),
               RawRecord(b"[1, 2]", EventMetadata(partition_id="0", sequence_number=2)),
               RawRecord(mixed, EventMetadata(partition_id="0", sequence_number=3))]
    dead, ledger = BatchLetterRefused(), FakeLedger()
    with pytest.raises(TransientError, match="could not write dead letter"):
        IngestService(FakeStore(failures=1), dead, Limits(), ledger).handle(records, final_attempt=True, now=NOW)
    assert [r.original for r in dead.rejected] == [b"{not json", b"[1, 2]", mixed]
    assert ledger.entries == [(1, 2, 0, 3, 0)]
    assert gaps_in(0, 3, ledger.accounted("0", 0, 3)) == ((0, 0), (3, 3))


class FakeDelayLog(FailsFirst):
    what = "delay log"

    def __init__(self, failures: int = 0):
        super().__init__(failures)
        self.notes = []

    def record(self, batch):
        self.fail_if_due()
        self.notes.append(batch)


def enqueued(seq: int, at: datetime) -> RawRecord:
    plain = record(seq)
    return RawRecord(plain.body, EventMetadata(partition_id="2", sequence_number=seq, enqueued_time=at))


def test_a_batch_stored_long_after_its_enqueue_is_noted_with_its_oldest_event_before_the_ledger():
    """Enrichment's late scan reaches back to the note; a batch on time costs no note."""
    order: list[str] = []
    delays, ledger = FakeDelayLog(), FakeLedger()
    delays_record, ledger_record = delays.record, ledger.record
    delays.record = lambda batch: (order.append("note"), delays_record(batch))
    ledger.record = lambda runs: (order.append("ledger"), ledger_record(runs))
    service = IngestService(FakeStore(), FakeDeadLetters(), Limits(), ledger, delays=delays,
                            delayed_after=timedelta(minutes=1))
    service.handle([enqueued(5, NOW - timedelta(seconds=59)), enqueued(6, NOW)], now=NOW)
    assert delays.notes == [] and order == ["ledger"]
    late = [enqueued(7, NOW - timedelta(minutes=9)), enqueued(8, NOW - timedelta(minutes=8)),
            RawRecord(b"{oops", EventMetadata(partition_id="2", sequence_number=9,
                                              enqueued_time=NOW - timedelta(minutes=30)))]  # dead-lettered: not noted
    service.handle(late, now=NOW)
    [note] = delays.notes
    assert (note.partition, note.first_sequence, note.oldest_enqueued, note.events) == (
        "2", 7, NOW - timedelta(minutes=9), 2)
    assert order == ["ledger", "note", "ledger"]


def test_a_failed_note_fails_the_batch_like_a_store_write():
    store, delays = FakeStore(), FakeDelayLog(failures=1)
    service = IngestService(store, FakeDeadLetters(), Limits(), delays=delays, delayed_after=timedelta(seconds=1))
    records = [enqueued(1, NOW - timedelta(hours=1))]
    with pytest.raises(TransientError, match="delay log down"):
        service.handle(records, final_attempt=False, now=NOW)
    assert service.handle(records, final_attempt=False, now=NOW).stored == 1
    assert len(delays.notes) == 1


def test_a_failure_inside_validation_is_retried_then_dead_letters_the_batch(monkeypatch):
    # Validation must answer for every input; if it ever raises (a bug), the batch must not be lost: the host
    # checkpoints past it after the last attempt either way.
    import shared.services.ingest as ingest_module

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in validation")

    monkeypatch.setattr(ingest_module, "parse_records", broken)
    store, dead = FakeStore(), FakeDeadLetters()
    service = IngestService(store, dead, Limits())
    batch = [record(1), record(2)]
    with pytest.raises(RuntimeError, match="a bug in validation"):
        service.handle(batch, final_attempt=False)
    assert dead.batches == [] and store.rows == {}
    result = service.handle(batch, final_attempt=True)
    assert result.batch_dead_lettered and result.received == 2 and result.stored == 0
    [(bodies, reason)] = dead.batches
    assert [b for b, _ in bodies] == [r.body for r in batch]
    assert reason == "validation failed unexpectedly: RuntimeError: a bug in validation"


def test_the_bad_elements_of_one_array_body_are_one_dead_letter_holding_the_body_once():
    """An array body of many bad elements is one rejected item (every bad element named by index and reason, the
    original bytes kept once), so dead-lettering it costs about the body's size, and the batch's valid events are
    stored in the same call."""
    body = b"[" + b",".join([b"1"] * 20_000) + b"]"  # 40 kB, well inside SLUICE_INGEST_MAX_BODY_BYTES
    good = record(2)
    store, dead = FakeStore(), FakeDeadLetters()
    result = IngestService(store, dead, Limits()).handle(
        [RawRecord(body, EventMetadata(partition_id="0", sequence_number=1)), good], now=NOW)
    assert len(store.rows) == 1 and result.rejected == 20_000
    [rejected] = dead.rejected
    assert rejected.original == body and rejected.index == 0
    assert [e.index for e in rejected.elements] == list(range(20_000))
    assert {e.reason for e in rejected.elements[:2]} == {"element 0 is a JSON number, not an object",
                                                         "element 1 is a JSON number, not an object"}
    assert rejected.reason.startswith("20000 of 20000 elements are invalid; the first: element 0 is a JSON number")


class FakeCopies:
    """The stored copies a replay reads: event id -> (enqueued time, sequence number)."""

    def __init__(self, stored):
        self.stored = stored

    def copies(self, event_ids):
        from shared.ports.ingest import StoredCopy

        return {i: StoredCopy(*self.stored[i]) for i in event_ids if i in self.stored}


def test_a_replay_does_not_write_an_event_over_a_later_stored_copy_of_its_id():
    """With ``copies`` (``deadletter replay``), an event whose stored copy was enqueued later, or at the same time
    with a greater sequence number (later in the partition, as ingest's in-batch rule decides), is not written and
    counts as superseded; the same copy, an earlier one, or one not stored is written."""
    later, same_time_later, same_copy, earlier, absent = (record(n) for n in (5, 6, 7, 8, 9))
    ids = [uuid.UUID(json.loads(r.body)["event_id"]) for r in (later, same_time_later, same_copy, earlier)]
    copies = FakeCopies({ids[0]: (NOW + timedelta(milliseconds=1), 1), ids[1]: (NOW, 60), ids[2]: (NOW, 7),
                         ids[3]: (NOW - timedelta(seconds=1), 99)})
    store = FakeStore()
    result = IngestService(store, FakeDeadLetters(), Limits(), copies=copies).handle(
        [later, same_time_later, same_copy, earlier, absent], final_attempt=False, now=NOW)
    assert (result.stored, result.superseded) == (3, 2)
    assert set(store.rows) == {ids[2], ids[3], uuid.UUID(json.loads(absent.body)["event_id"])}
