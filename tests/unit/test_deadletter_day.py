"""The day folder of a dead letter comes from the Event Hubs enqueued time, in UTC whatever the process's zone."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from shared.adapters.blob_deadletter import _day, _lettered
from shared.domain.events import EventMetadata, Limits, RawRecord, parse_records


@pytest.fixture
def far_east_zone(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a naive time read as local lands on the day before
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_naive_enqueued_time_is_utc_and_an_aware_one_is_converted(far_east_zone) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    naive = datetime(2026, 11, 23, 5, 0)  # noqa: DTZ001 - a naive time, on purpose
    assert _day(EventMetadata(enqueued_time=naive), now) == "2026/11/23"
    assert _day(EventMetadata(enqueued_time=datetime(2026, 11, 23, 5, 0, tzinfo=UTC)), now) == "2026/11/23"
    assert _day(EventMetadata(), now) == "2030/01/01"


def test_a_replayed_record_keeps_the_day_of_its_letter_for_its_next_letter() -> None:
    """Without an enqueued time, a letter's day is the day of writing; replayed, its records carry the day its name
    says (``RawRecord.lettered``) to the letters written for them again, so those keep the name."""
    day = _lettered("rejected/2000/01/02/punknown/sha256-00-body.json")
    assert day == datetime(2000, 1, 2, tzinfo=UTC)
    assert _lettered("batches/2000/01/02/p0/1-2.json") == day
    assert _lettered("rejected/2000/13/45/p0/1-body.json") is None and _lettered("rejected/by-hand.json") is None
    records = [RawRecord(b"{not json", EventMetadata(), lettered=day),
               RawRecord(b'[{"not": "an event"}]', EventMetadata(), lettered=day), RawRecord(b"{", EventMetadata())]
    parsed = parse_records(records, limits=Limits())
    assert [r.lettered for r in parsed.errs] == [day, day, None]
