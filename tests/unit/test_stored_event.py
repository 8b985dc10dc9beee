"""The stored event's JSON document: canonical (same event, same text) and faithful to its values."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from shared.domain.stored import StoredEvent, one_copy_each

AT = datetime(2026, 11, 23, 9, 30, 0, 123000, tzinfo=UTC)


def event(measurements: dict[str, float], attributes: dict[str, str]) -> StoredEvent:
    return StoredEvent(uuid.UUID(int=7), "dev-é✓", AT, "reading", "info", False, measurements,
                       attributes=attributes, enqueued_time=AT)


def test_the_text_is_compact_sorted_and_unescaped_as_json_writes_it() -> None:
    stored = event({"temperature": 21.5, "humidity": 40.0, "b": -0.0}, {"site": "nörth", "fw": "4.2"})
    assert stored.to_json() == json.dumps(stored.to_document(), sort_keys=True, separators=(",", ":"),
                                          ensure_ascii=False)


@given(st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False), max_size=6),
       st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4))
def test_any_event_reads_back_as_its_document_and_encodes_the_same_twice(measurements, attributes) -> None:
    stored = event(measurements, attributes)
    text = stored.to_json()
    assert json.loads(text) == stored.to_document()
    assert text == event(dict(reversed(list(measurements.items()))), attributes).to_json()  # order never shows


def test_of_two_copies_of_one_event_the_one_enqueued_later_supersedes_whatever_the_order() -> None:
    first = StoredEvent(uuid.UUID(int=7), "dev-1", AT, "reading", "info", False, {"t": 1.0}, enqueued_time=AT)
    resent = StoredEvent(uuid.UUID(int=7), "dev-1", AT, "reading", "info", False, {"t": 2.0},
                         enqueued_time=AT.replace(second=30))
    newer = StoredEvent(uuid.UUID(int=1), "dev-1", AT.replace(minute=31), "reading", "info", False, enqueued_time=AT)
    assert resent.supersedes(first) and not first.supersedes(resent)
    assert newer.supersedes(resent) and not resent.supersedes(newer)  # a newer event wins whenever it was enqueued
    assert not first.supersedes(first)


def test_one_copy_of_each_event_id_is_kept_in_its_place_the_one_enqueued_later() -> None:
    """A correction re-sent under its id with another event time is a second row of critical_events_by_device:
    a list read from it keeps the copy Redis keeps (``_newer.lua``), where that copy is, whichever comes first."""
    later = AT.replace(second=30)
    original = StoredEvent(uuid.UUID(int=7), "dev-1", AT.replace(minute=40), "reading", "critical", True,
                           {"t": 1.0}, enqueued_time=AT)
    corrected = StoredEvent(uuid.UUID(int=7), "dev-1", AT, "reading", "critical", True, {"t": 2.0},
                            enqueued_time=later)
    other = StoredEvent(uuid.UUID(int=9), "dev-1", AT.replace(minute=35), "reading", "critical", True,
                        enqueued_time=AT)
    assert corrected.kept_over(original) and not original.kept_over(corrected)
    assert one_copy_each([original, other, corrected]) == [other, corrected]  # newest first, as read
    assert one_copy_each([corrected, other, original]) == [corrected, other]
    assert one_copy_each([other, original]) == [other, original]  # nothing to collapse
