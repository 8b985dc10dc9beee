"""``GET /api/devices/{id}/state?at=T`` against the Cassandra emulator, through the registered function.

Events are written by the real event store in an arrival order unlike their
event-time order (an old event arrives last), over several day partitions.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration import test_changefeed as cf
from tests.integration.test_dashboard_api import call
from tests.integration.test_lookups import device_whose_newest_event_moved

app_env, keyspace, session, store, rclient = cf.app_env, cf.keyspace, cf.session, cf.store, cf.rclient


def state(device: str, at: datetime | str) -> tuple[int, dict]:
    return call("device_state_at", {"device_id": device}, at=at if isinstance(at, str) else at.isoformat())


@pytest.mark.timeout(90)
def test_state_at_is_exact_before_between_and_after_events_whatever_their_arrival(app_env, store) -> None:
    app_env()
    base = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=5)
    times = [base, base + timedelta(hours=1), base + timedelta(days=2), base + timedelta(days=2, minutes=30)]
    events = [cf.make_event("audit-1", t, measurements={"v": float(i)}) for i, t in enumerate(times)]
    tie = [cf.make_event("audit-1", times[1], event_id=uuid.UUID(int=i)) for i in (5, 2**127)]
    # arrival order: the newest first, the oldest last, the tie in between
    store.write([events[3]])
    store.write([events[2]])
    store.write(tie)
    store.write([events[1]])
    store.write([events[0]])
    store.write([cf.make_event("other", base + timedelta(minutes=1))])
    winner_at_1 = max([events[1], *tie], key=lambda e: str(e.event_id))
    ms = timedelta(milliseconds=1)

    cases = [
        (base - ms, None),                               # before every event
        (base, events[0]),                               # exactly at the first
        (base + timedelta(minutes=59), events[0]),       # between, same day
        (times[1], winner_at_1),                         # a tie on time: the larger event id
        (base + timedelta(days=1), winner_at_1),         # a day with no event: the walk goes back
        (times[2] - ms, winner_at_1),
        (times[2], events[2]),
        (times[3] - ms, events[2]),
        (times[3], events[3]),
        (datetime.now(UTC) + timedelta(days=1), events[3]),  # after every event: the latest state
    ]
    for at, expected in cases:
        status, body = state("audit-1", at)
        if expected is None:
            assert status == 404 and body["error"] == "not_found", (at, body)
        else:
            assert status == 200 and body["event_id"] == str(expected.event_id), (at, body)
            assert body["device_id"] == "audit-1"

    # an offset other than Z means the same instant
    status, body = state("audit-1", (times[2] - ms).astimezone(datetime.now().astimezone().tzinfo).isoformat())
    assert status == 200 and body["event_id"] == str(winner_at_1.event_id)
    status, body = state("never-seen", datetime.now(UTC))
    assert status == 404


@pytest.mark.parametrize(("device", "at", "parameter"), [
    ("audit-1", "", "at"),
    ("audit-1", "yesterday", "at"),
    ("audit-1", "2026-11-23T09:30:00", "at"),        # no offset
    ("audit-1", "2026-13-45T09:30:00Z", "at"),       # not a date
    # RFC 3339 offsets: minutes 00-59, hours 00-23 (fromisoformat read +01:60 as +02:00, -00:99 as -01:39)
    ("audit-1", "2026-11-23T09:30:00+01:60", "at"),
    ("audit-1", "2026-11-23T09:30:00-00:99", "at"),
    ("audit-1", "2026-11-23T09:30:00+24:00", "at"),
    ("audit-1", "2026-11-23T09:30:00.123456\u0667Z", "at"),  # RFC 3339's digits are ASCII, past the microseconds too
    ("bad id!", "2026-11-23T09:30:00Z", "device_id"),
])
def test_bad_parameters_are_400_naming_them(app_env, device, at, parameter) -> None:
    app_env()
    status, body = call("device_state_at", {"device_id": device}, **({"at": at} if at else {}))
    assert status == 400 and body["error"] == "bad_request" and body["parameter"] == parameter, body


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00Z", "0001-01-02T00:00:00Z", "0001-12-31T23:59:59Z"])
def test_a_time_near_the_start_of_the_calendar_is_searched_back_to_it_and_found_empty(app_env, store, at) -> None:
    """A valid RFC 3339 time (the API document allows any): the look-back stops at year 1 instead of failing."""
    app_env()
    store.write([cf.make_event("early-1", datetime.now(UTC) - timedelta(minutes=1))])
    status, body = state("early-1", at)
    assert status == 404 and body["error"] == "not_found", body


@pytest.mark.timeout(180)
def test_the_state_at_a_past_time_does_not_change_when_the_device_reports_later(app_env, store) -> None:
    """docs/api.md: 404 when the device has no event at or before T, "events more than 366 days before T are not
    searched". The shortcut through the device's newest event (``device_latest``) answered that event whenever it
    was at or before T, however old: an event 400 days before T was the state at T (200) until the device
    reported again after T, and 404 from then on (the walk stops at the look-back). Now the shortcut keeps to the
    look-back too: one answer, the documented 404, whatever the device reports after T."""
    app_env(SLUICE_DASHBOARD_STATE_DEADLINE_SECONDS="120")
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    store.write([cf.make_event("lookback-1", at - timedelta(days=400))])
    before = state("lookback-1", at)
    store.write([cf.make_event("lookback-1", datetime.now(UTC) - timedelta(minutes=1))])  # reports again, after T
    after = state("lookback-1", at)
    assert before[0] == after[0] == 404 and before[1]["error"] == after[1]["error"] == "not_found", (before, after)


@pytest.mark.timeout(60)
def test_a_device_whose_newest_event_moved_to_another_device_is_walked_for_its_other_events(app_env, store) -> None:
    """docs/api.md: 404 only when the device has no event at or before T. A correction moved the device's newest
    event to another device, so it has no latest state for the shortcut; the walk finds its rows (events_by_device
    keeps the moved event's row too, which the walk does not leave out)."""
    app_env()
    device, _ = device_whose_newest_event_moved(store)
    status, body = state(device, datetime.now(UTC))
    assert status == 200 and body["device_id"] == device, body


@pytest.mark.timeout(90)
def test_a_newest_event_corrected_to_an_earlier_time_does_not_hide_an_event_between(app_env, store) -> None:
    """docs/api.md: the state at T is the latest event at or before T in events_by_device, and does not change when
    the device reports after T. Event A at t+10 min is corrected (its id re-sent, enqueued later) to t; B is at
    t+5 min. The correction loses to A's position in device_latest (written with the event time as write
    timestamp), so the position is still at t+10 while events_by_id holds A at t: the shortcut through the
    device's newest event answered A's copy at t for T = t+7 min. The answer is B: the copy is not at the
    position's time, so the state service walks."""
    app_env()
    device = f"stc-{uuid.uuid4().hex[:8]}"
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    a_id = uuid.uuid4()
    b = cf.make_event(device, t + timedelta(minutes=5), enqueued=t)
    store.write([cf.make_event(device, t + timedelta(minutes=10), event_id=a_id, enqueued=t), b])
    store.write([cf.make_event(device, t, event_id=a_id, enqueued=t + timedelta(minutes=20))])  # the correction
    status, body = state(device, t + timedelta(minutes=7))
    assert status == 200 and body["event_id"] == str(b.event_id), (status, body)
    # A's corrected copy is still the answer at a T between its new and old times but before B
    status, body = state(device, t + timedelta(minutes=1))
    assert status == 200 and body["event_id"] == str(a_id) and body["timestamp"].startswith(
        t.strftime("%Y-%m-%dT%H:%M:%S")), (status, body)
