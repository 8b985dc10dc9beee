"""The day folder of a dead letter comes from the Event Hubs enqueued time, in UTC whatever the process's zone."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from shared.adapters.blob_deadletter import _day
from shared.domain.events import EventMetadata


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
