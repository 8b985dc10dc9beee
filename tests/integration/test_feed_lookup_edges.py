"""Edges of the change feed and the lookups, through the registered functions (Cassandra emulator, real Redis):
ties within a millisecond, `since` at the edges of time, and Redis keys that expired under the feed.

The Cassandra emulator orders ``uuid`` clustering columns as Cassandra's ``UUIDType`` does
(emulators/cassandra/_typecodecs.py), so a miss answers in Cassandra's order."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest

from tests.fixtures.functions import HostContext, invoke
from tests.integration import test_changefeed as changefeed_tests
from tests.integration.test_changefeed import make_event
from tests.integration.test_dashboard_api import history

# fixtures shared with the change feed tests (used by name)
app_env, keyspace, session, store, rclient = (changefeed_tests.app_env, changefeed_tests.keyspace,
                                              changefeed_tests.session, changefeed_tests.store,
                                              changefeed_tests.rclient)

NOW = datetime.now(UTC).replace(microsecond=0)


def get(name: str, path: str, route_params: dict[str, str], params: dict[str, str] | None = None):
    request = func.HttpRequest("GET", f"http://localhost/api/{path}", route_params=route_params,
                               params=params or {}, body=b"")
    return invoke(name, request)


def latest(device: str):
    return get("device_latest", f"devices/{device}/latest", {"device_id": device})


def critical(device: str, **params: str):
    return get("device_critical", f"devices/{device}/critical", {"device_id": device}, params)


def body(response) -> dict:
    return json.loads(response.get_body())


def v1(timestamp_100ns: int, node: int = 1) -> uuid.UUID:
    """A version-1 (time-based) UUID with the given 60-bit timestamp."""
    return uuid.UUID(fields=(timestamp_100ns & 0xFFFFFFFF, (timestamp_100ns >> 32) & 0xFFFF,
                             ((timestamp_100ns >> 48) & 0x0FFF) | 0x1000, 0x80, 0x00, node), version=1)


def _tie_ids() -> tuple[uuid.UUID, uuid.UUID]:
    """Two ids, the greater first, whose device_latest write timestamps differ within the millisecond (one pair in
    1,000 shares them: docs/data-model.md)."""
    while True:
        a, b = sorted((uuid.uuid4(), uuid.uuid4()), reverse=True)
        if a.int * 1000 >> 128 != b.int * 1000 >> 128:
            return a, b


# -- 1. a valid RFC 3339 `since` near the datetime range's edge is a 500 ---------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("since", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_critical_since_at_the_edge_of_the_datetime_range_is_answered_not_a_500(app_env, store, since) -> None:
    app_env()
    store.write([make_event("edge-1", NOW - timedelta(minutes=1), severity="critical")])
    response = critical("edge-1", since=since)  # in UTC it is outside years 1-9999: was an OverflowError
    assert response.status_code == 400
    assert "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z" in body(response)["message"]


@pytest.mark.timeout(60)
def test_critical_since_in_the_last_millisecond_of_year_9999_is_answered_not_a_500(app_env, store) -> None:
    """``9999-12-31T23:59:59.9999Z`` is inside the years 1-9999 (a client's "no bound" sentinel is often the
    largest time it can write); rounded up to whole milliseconds it is in year 10000, which no datetime holds:
    was an OverflowError (500) for a device that exists. Nothing can be stored that late: 200, no events."""
    app_env()
    store.write([make_event("edge-9999", NOW - timedelta(minutes=1), severity="critical")])
    for since in ("9999-12-31T23:59:59.9999Z", "9999-12-31T23:59:59.9999999Z"):
        response = critical("edge-9999", since=since)
        assert response.status_code == 200, (since, response.get_body())
        assert body(response)["events"] == [], since


# -- 2. latest state: equal event times, the miss path answers a different event than the feed ------

@pytest.mark.timeout(60)
def test_latest_miss_breaks_equal_event_time_ties_by_event_id_like_the_feed(app_env, store) -> None:
    app_env()
    newer_id, older_id = _tie_ids()  # by the documented order (event time, then event id) newer_id wins
    at = NOW - timedelta(minutes=1)
    store.write([make_event("tie-1", at, event_id=older_id)])  # two ingest batches (two invocations)
    store.write([make_event("tie-1", at, event_id=newer_id)])
    answer = latest("tie-1")
    assert answer.status_code == 200 and answer.headers["X-Cache"] == "miss"
    assert body(answer)["event_id"] == str(newer_id)


# -- 3. critical events of one millisecond: a hit orders them unlike the miss that filled it --------

@pytest.mark.timeout(60)
def test_critical_events_of_one_millisecond_come_in_the_same_order_on_a_hit_as_on_the_miss(app_env, store) -> None:
    app_env()
    at = NOW - timedelta(minutes=1)
    events = [make_event("ctie-1", at, severity="critical") for _ in range(6)]
    store.write(events)
    first = critical("ctie-1")
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    again = critical("ctie-1")
    assert again.headers["X-Cache"] == "hit"
    assert [e["event_id"] for e in body(again)["events"]] == [e["event_id"] for e in body(first)["events"]]
    one = critical("ctie-1", limit="1")
    assert [e["event_id"] for e in body(one)["events"]] == [body(first)["events"][0]["event_id"]]


# -- 3b. ... with time-based event ids, ordered as Cassandra's UUIDType orders them, not as text ----------

@pytest.mark.timeout(60)
def test_critical_events_of_one_millisecond_with_time_based_ids_come_in_cassandras_uuid_order_on_a_hit(
        app_env, store) -> None:
    """``event_id`` is a CQL ``uuid``: Cassandra's ``UUIDType`` orders by version, then version-1 (time-based)
    ids by their 60-bit timestamp, whose low 32 bits (``time_low``) are what the text starts with. Ingest accepts
    any UUID, so ``get_critical.lua`` sorts a tie by that order, not by the text: a hit, and with ``limit=1`` the
    one event it answers, is then what the miss (Cassandra) answered, whether or not Redis had the list cached.
    Was: sorted as text, the hit reversed these two and ``limit=1`` answered the other event."""
    app_env()
    at = NOW - timedelta(minutes=1)
    # both version 1: `early` has the earlier timestamp but the greater text ("ffffffff-..." vs "00000001-...")
    early = v1((0x1EF << 48) | 0xFFFFFFFF)
    late = v1((0x1F0 << 48) | 0x00000001)
    assert str(late) < str(early)
    store.write([make_event("v1tie-1", at, severity="critical", event_id=early),
                 make_event("v1tie-1", at, severity="critical", event_id=late)])
    first = critical("v1tie-1")
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    assert [e["event_id"] for e in body(first)["events"]] == [str(early), str(late)]  # the earlier timestamp first
    again = critical("v1tie-1")
    assert again.headers["X-Cache"] == "hit"
    assert [e["event_id"] for e in body(again)["events"]] == [str(early), str(late)]
    one = critical("v1tie-1", limit="1")
    assert [e["event_id"] for e in body(one)["events"]] == [str(early)], one.headers["X-Cache"]


# -- 3c. ... whatever the events' attributes are named ------------------------------------------------

@pytest.mark.timeout(60)
def test_an_attribute_named_event_id_does_not_change_the_order_of_critical_events_of_one_millisecond(
        app_env, store) -> None:
    """The Lua scripts read a stored document's top-level fields by decoding it (``_field.lua``): ``"attributes"``
    sorts first in the document and its names are free text, so a text pattern for ``"event_id":"..."`` would
    find an attribute of that name (say the device's own message id) before the event's id. Two critical events
    of one millisecond, ids A < B (random UUIDs: text order is Cassandra's), A with the attribute
    ``{"event_id": "zzz"}``: the hit answers [A, B] as the miss did. Was: the hit sorted A by "zzz", [B, A]."""
    app_env()
    at = NOW - timedelta(minutes=1)
    a, b = sorted((uuid.uuid4(), uuid.uuid4()), key=str)
    store.write([make_event("attr-1", at, severity="critical", event_id=a, attributes={"event_id": "zzz"}),
                 make_event("attr-1", at, severity="critical", event_id=b)])
    first = critical("attr-1")
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    assert [e["event_id"] for e in body(first)["events"]] == [str(a), str(b)]
    again = critical("attr-1")
    assert again.headers["X-Cache"] == "hit"
    assert [e["event_id"] for e in body(again)["events"]] == [str(a), str(b)]


# -- 4. latest state goes backwards once the feed's key has expired (or Redis was flushed) -----------

@pytest.mark.timeout(60)
def test_a_late_older_event_after_the_latest_key_expired_does_not_regress_the_latest_state(app_env, store,
                                                                                            rclient) -> None:
    import time

    from azure.functions.timer import TimerRequest

    from shared import bootstrap
    from tests.fixtures.functions import user_function

    app_env(SLUICE_REDIS_TTL_SECONDS="2")
    newest = make_event("reg-1", NOW - timedelta(minutes=1))
    store.write([newest])
    user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))
    key = bootstrap.redis_change_sink().keys.latest("reg-1")
    assert json.loads(rclient.hget(key, "d"))["event_id"] == str(newest.event_id)

    deadline = time.monotonic() + 10
    while rclient.exists(key) and time.monotonic() < deadline:  # the feed's TTL ran out (a quiet device)
        time.sleep(0.2)
    assert not rclient.exists(key)

    late = make_event("reg-1", NOW - timedelta(minutes=30))  # an older event, arriving later
    store.write([late])
    user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))

    answer = latest("reg-1")
    assert answer.status_code == 200
    assert body(answer)["event_id"] == str(newest.event_id), answer.headers["X-Cache"]


# -- 5. `since` with a sub-millisecond fraction returns an event from before it -------------------

@pytest.mark.timeout(60)
def test_critical_since_with_a_sub_millisecond_fraction_excludes_events_before_it(app_env, store) -> None:
    app_env()
    at = NOW - timedelta(minutes=1)  # a whole second: .000
    store.write([make_event("frac-1", at, severity="critical")])
    since = (at + timedelta(microseconds=500)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    for _ in range(2):  # the miss (Cassandra), then the hit (Redis)
        response = critical("frac-1", since=since)
        assert response.status_code == 200
        assert body(response)["events"] == [], (since, response.headers["X-Cache"])


@pytest.mark.timeout(90)
def test_a_since_or_from_finer_than_a_microsecond_excludes_the_event_before_it(app_env, store) -> None:
    """``since`` (critical) and ``from`` (history) are lower bounds: "a finer since counts from the next one"
    (docs/api.md). Python keeps microseconds, and the digits beyond were cut toward the past, so
    ``<t>.0000001Z`` (100 ns after an event at ``t``, as Go's RFC3339Nano or Java's Instant write it) became
    ``t`` and listed that event. They now round the bound up (``at`` and ``to``, upper bounds, still cut)."""
    app_env()
    at = NOW - timedelta(minutes=1)  # a whole second
    store.write([make_event("ns-1", at, severity="critical")])
    since = at.strftime("%Y-%m-%dT%H:%M:%S") + ".0000001Z"  # 100 ns after the event
    answer = critical("ns-1", since=since)
    status, page = history("ns-1", **{"from": since, "to": (at + timedelta(seconds=1)).isoformat()})
    assert answer.status_code == 200 and status == 200, (answer.get_body(), page)
    returned = {"critical?since": [e["timestamp"] for e in body(answer)["events"]],
                "events?from": [e["timestamp"] for e in page["events"]]}
    assert returned == {"critical?since": [], "events?from": []}, (since, returned)


# -- 6. a re-sent critical event becomes a second member once its `ce:` key expired before its set ---

@pytest.mark.timeout(60)
def test_a_resent_critical_event_is_listed_once_even_after_its_member_key_expired(app_env, store, rclient) -> None:
    import time

    from azure.functions.timer import TimerRequest

    from shared import bootstrap
    from tests.fixtures.functions import user_function

    def run_feed() -> None:
        user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))

    app_env(SLUICE_REDIS_TTL_SECONDS="4")
    first = make_event("dup-1", NOW - timedelta(minutes=5), severity="critical",
                       enqueued=datetime.now(UTC) - timedelta(seconds=30))
    store.write([first])
    run_feed()
    keys = bootstrap.redis_change_sink().keys
    member = keys.member("dup-1", first.event_id)
    deadline = time.monotonic() + 15
    while rclient.exists(member) and time.monotonic() < deadline:  # the device keeps raising critical events,
        store.write([make_event("dup-1", NOW - timedelta(minutes=1), severity="critical")])  # so its set lives on
        run_feed()
        time.sleep(0.5)
    assert not rclient.exists(member) and rclient.exists(keys.critical("dup-1"))

    resent = make_event("dup-1", NOW - timedelta(minutes=5), severity="critical", event_id=first.event_id)
    store.write([resent])  # the same event again (a replay): a new enqueued time
    run_feed()
    critical("dup-1", limit="1000")  # a miss: Cassandra answers (each event once) and marks the set complete
    hit = critical("dup-1", limit="1000")
    assert hit.headers["X-Cache"] == "hit"
    listed = [e["event_id"] for e in body(hit)["events"]]
    assert listed.count(str(first.event_id)) == 1, listed


@pytest.mark.timeout(90)
def test_a_critical_event_corrected_to_another_event_time_is_listed_once_on_a_miss_as_on_the_hit(
        app_env, store) -> None:
    """``critical_events_by_device`` is keyed by event time and event id, so a correction re-sent under its id with
    another event time is a second row beside the one it corrects. The miss listed both (the id twice, one with
    the superseded content, each taking a place of ``limit``), the fill collapsed them to one member (the copy
    enqueued later, ``_newer.lua``) and the hit then answered otherwise. Now the miss collapses them as Redis does:
    the event once, as its later copy, on the miss as on the hit."""
    app_env()
    enqueued = datetime.now(UTC)
    original = make_event("fix-crit-1", NOW - timedelta(minutes=10), severity="critical",
                          measurements={"temperature": 120.0}, enqueued=enqueued - timedelta(seconds=60))
    corrected = make_event("fix-crit-1", NOW - timedelta(minutes=8), severity="critical",
                           measurements={"temperature": 99.0}, event_id=original.event_id,
                           enqueued=enqueued - timedelta(seconds=30))
    store.write([original])
    store.write([corrected])  # a later batch: the correction

    miss = critical("fix-crit-1")
    assert miss.status_code == 200 and miss.headers["X-Cache"] == "miss"
    hit = critical("fix-crit-1")
    assert hit.status_code == 200 and hit.headers["X-Cache"] == "hit"
    listed = [(e["event_id"], e["timestamp"], e["measurements"]) for e in body(miss)["events"]]
    corrected_at = (NOW - timedelta(minutes=8)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert listed == [(str(original.event_id), corrected_at, {"temperature": 99.0})], listed
    assert body(miss) == body(hit), (body(miss), body(hit))


@pytest.mark.timeout(120)
def test_a_critical_miss_never_lists_the_copy_an_event_was_corrected_from_beyond_the_rows_it_reads(
        app_env, store) -> None:
    """docs/api.md (``GET /api/devices/{device_id}/critical``): an event id re-sent with another event time (a
    correction) is listed once, as its copy enqueued later, on a miss as on a hit. A miss reads ``max(limit, cap)``
    and a quarter rows (125 with the defaults); here the correction moved the event an hour back, beyond them, so
    only its superseded copy is among the rows read. The miss checks the rows against ``events_by_id`` (the
    event's current copy) and leaves that copy out: the page is the newest 20 current events, and so is the hit
    that the miss's fill answers."""
    app_env()
    enqueued = datetime.now(UTC)
    device = "deep-fix-1"
    original = make_event(device, NOW - timedelta(seconds=30), severity="critical",
                          measurements={"temperature": 120.0}, enqueued=enqueued - timedelta(seconds=60))
    others = [make_event(device, NOW - timedelta(minutes=1, seconds=i), severity="critical",
                         enqueued=enqueued - timedelta(seconds=59)) for i in range(1, 125)]
    # the correction: the same id, an older event time (beyond the 125 rows a miss reads), enqueued later
    corrected = make_event(device, NOW - timedelta(hours=1), severity="critical",
                           measurements={"temperature": 99.0}, event_id=original.event_id,
                           enqueued=enqueued - timedelta(seconds=30))
    store.write([original, *others])
    store.write([corrected])  # a later batch: the correction
    newest = [str(e.event_id) for e in others[:20]]

    miss = critical(device)
    assert miss.status_code == 200 and miss.headers["X-Cache"] == "miss", miss.get_body()
    assert [e["event_id"] for e in body(miss)["events"]] == newest
    hit = critical(device)
    assert hit.headers["X-Cache"] == "hit" and body(hit) == body(miss)
    deeper = critical(device, limit="100")  # what the fill holds: the cap's worth, none of them the old copy
    assert deeper.headers["X-Cache"] == "hit"
    assert [e["event_id"] for e in body(deeper)["events"]] == [str(e.event_id) for e in others[:100]]


# -- 7. an event a lookup cached keeps being served after the feed applied its re-sent copy ---------

@pytest.mark.timeout(60)
def test_event_lookup_serves_the_resent_copy_after_the_change_feed_applied_it(app_env, store, session,
                                                                             keyspace) -> None:
    """``GET /api/events/{id}`` caches a non-critical event in ``e:<id>`` for ``SLUICE_LOOKUP_CACHE_TTL_SECONDS``
    (an hour); the change feed, which caches only critical events by id itself, replaces such a cached copy when
    it applies the event again (``RedisChangeSink.commands``: ``fill_event`` where the key exists), keeping the
    copy enqueued later. So once the feed has applied an event id re-sent with corrected content, the lookup
    answers the corrected copy, as Cassandra (``events_by_id``) does, not the superseded one as a hit."""
    import time

    from azure.functions.timer import TimerRequest

    from tests.fixtures.functions import user_function
    from tests.integration.test_lookups import event

    app_env()
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    event_id = uuid.uuid4()
    original = make_event("fix-1", at, measurements={"temperature": 21.0}, event_id=event_id,
                          enqueued=at + timedelta(seconds=1))
    store.write([original])
    user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))
    first = event(str(event_id))  # a miss: read from Cassandra and cached
    assert first.status_code == 200 and body(first)["measurements"] == {"temperature": 21.0}

    corrected = make_event("fix-1", at, measurements={"temperature": 23.5}, event_id=event_id,
                           enqueued=at + timedelta(seconds=40))
    store.write([corrected])
    time.sleep(0.01)
    user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))
    stored = session.execute(f"SELECT measurements FROM {keyspace}.events_by_id WHERE event_id = %s", (event_id,)).one()
    assert dict(stored.measurements) == {"temperature": 23.5}  # the store holds the corrected copy
    again = event(str(event_id))
    assert again.status_code == 200
    assert body(again)["measurements"] == {"temperature": 23.5}, (
        f"X-Cache: {again.headers.get('X-Cache')}: the superseded copy is served after the feed applied the new one")


# -- 8. a critical event corrected into one that is not critical leaves the device's critical list ----------

@pytest.mark.timeout(90)
@pytest.mark.parametrize("member_key", ["kept", "expired"])
def test_a_critical_event_corrected_into_a_non_critical_one_leaves_the_critical_hit(app_env, store, rclient,
                                                                                    member_key) -> None:
    """A device raised a critical event, then re-sent it under its id as not critical (a false alarm corrected).
    The feed's ``fill_event`` in its ``stale`` mode dropped the cached copy, but the device's critical set kept the
    old member until its TTL (days), so every hit of ``/critical`` listed the false alarm while a miss left it out.
    Now the stale command reports that the copy it dropped was critical, and the feed takes the event out of its
    device's set (``uncritical.lua``), also when its member key expired before the set."""
    from azure.functions.timer import TimerRequest

    from shared import bootstrap
    from tests.fixtures.functions import user_function

    def run_feed() -> None:
        user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))

    app_env()
    device, sent = f"unc-{member_key}", datetime.now(UTC) - timedelta(seconds=60)
    alarm = make_event(device, NOW - timedelta(minutes=6), severity="critical", enqueued=sent)
    other = make_event(device, NOW - timedelta(minutes=5), severity="critical", enqueued=sent)
    store.write([alarm, other])
    run_feed()
    critical(device)  # a miss: Cassandra answers, and the set is marked complete
    before = critical(device)
    assert before.headers["X-Cache"] == "hit", before.get_body()
    assert [e["event_id"] for e in body(before)["events"]] == [str(other.event_id), str(alarm.event_id)]
    if member_key == "expired":
        rclient.delete(bootstrap.redis_change_sink().keys.member(device, alarm.event_id))

    false_alarm = make_event(device, NOW - timedelta(minutes=6), severity="info", event_id=alarm.event_id,
                             enqueued=sent + timedelta(seconds=30))
    store.write([false_alarm])
    run_feed()
    hit = critical(device)
    assert hit.headers["X-Cache"] == "hit", hit.get_body()
    assert [e["event_id"] for e in body(hit)["events"]] == [str(other.event_id)], body(hit)
    member = bootstrap.redis_change_sink().keys.member(device, alarm.event_id)
    assert rclient.get(member).startswith(b"#gone:")  # for a lookup's fill in flight, for a short while only
    assert 0 < rclient.ttl(member) <= bootstrap.redis_change_sink().stale_marker_seconds

    again = make_event(device, NOW - timedelta(minutes=6), severity="critical", event_id=alarm.event_id,
                       enqueued=sent + timedelta(seconds=50))
    store.write([again])  # critical once more: a later re-send
    run_feed()
    listed = critical(device)
    assert [e["event_id"] for e in body(listed)["events"]] == [str(other.event_id), str(alarm.event_id)]


@pytest.mark.timeout(60)
def test_a_critical_fill_after_a_correction_to_non_critical_leaves_the_stale_critical_copy_out(app_env,
                                                                                             store) -> None:
    """A critical miss read the store; then a correction made the event not critical and the change feed applied
    it; then the miss's fill landed. It put the old critical copy into the device's set (``fill_critical.lua`` had
    no guard like ``fill_event.lua``'s note ``n``), so hits listed a non-critical event as critical for the cache
    TTL while ``GET /api/events/{id}`` said ``critical: false``. The fill now writes the events by id first and
    leaves out the copies ``fill_event`` refuses (a later copy noted), and ``uncritical.lua`` leaves a ``#gone:``
    marker for a fill that lands after it."""
    import asyncio

    from azure.functions.timer import TimerRequest

    from shared import bootstrap
    from tests.fixtures.functions import user_function
    from tests.integration.test_lookups import event

    app_env()
    at = NOW - timedelta(minutes=2)
    store.write([make_event("race-1", NOW - timedelta(minutes=5)),
                 original := make_event("race-1", at, severity="critical",
                                        enqueued=datetime.now(UTC) - timedelta(seconds=20))])
    assert latest("race-1").status_code == 200  # the device's latest state cached; its critical set is not
    service = bootstrap.lookup_service()
    real = service._reader

    def correct_and_run_the_feed() -> None:
        store.write([make_event("race-1", at, severity="info", event_id=original.event_id,
                                enqueued=datetime.now(UTC))])
        user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))

    class CorrectedMeanwhile:
        """The real reader; the correction is stored and applied by the feed after the miss's reads returned."""

        def __getattr__(self, name: str):
            return getattr(real, name)

        async def events(self, ids):
            found = await real.events(ids)
            await asyncio.to_thread(correct_and_run_the_feed)
            return found

    service._reader = CorrectedMeanwhile()
    try:
        assert critical("race-1").headers["X-Cache"] == "miss"  # answered with what it read: fine
    finally:
        service._reader = real
    assert body(event(str(original.event_id)))["critical"] is False  # the store's current copy
    user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))  # nothing left to apply

    later = critical("race-1")
    listed = [e for e in body(later)["events"] if e["event_id"] == str(original.event_id)]
    assert listed == [], f"X-Cache {later.headers['X-Cache']}: a corrected-away critical copy is served: {listed}"
