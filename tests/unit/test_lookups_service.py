"""LookupService cache-aside logic with in-memory fakes of our ports, and the parameter parsers."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from functions.parameters import BadParameter, parse_device_id, parse_event_id, parse_limit, parse_since, parse_until
from shared.domain.stored import StoredEvent
from shared.domain.times import rfc3339
from shared.exceptions import DependencyRefused, DependencyUnavailable
from shared.ports.cache import SINCE_ALL, Cached
from shared.services.lookups import LookupService

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def ev(device="d1", minutes=0, critical=False) -> StoredEvent:
    return StoredEvent(event_id=uuid.uuid4(), device_id=device, event_time=NOW - timedelta(minutes=minutes),
                       event_type="t", severity="critical" if critical else "info", critical=critical)


class FakeCache:
    def __init__(self):
        self.latest, self.events, self.fills, self.down = {}, {}, [], False
        self.critical_fills, self.critical = [], {}

    def _check(self):
        if self.down:
            raise DependencyUnavailable("redis", "connection refused")

    async def get_latest(self, device_id):
        self._check()
        return self.latest.get(device_id)

    async def fill_latest(self, device_id, event, ttl, negative_ttl):
        self._check()
        self.fills.append(("latest", device_id, ttl if event else negative_ttl))
        self.latest.setdefault(device_id, Cached(event.to_json() if event else None))

    async def get_event(self, event_id):
        self._check()
        return self.events.get(event_id)

    async def fill_event(self, event_id, event, ttl, negative_ttl):
        self._check()
        self.fills.append(("event", event_id, ttl if event else negative_ttl))
        self.events.setdefault(event_id, Cached(event.to_json() if event else None))

    async def get_critical(self, device_id, since_ms, limit):
        self._check()
        return self.critical.get(device_id)  # what a lookup's fill left, known complete

    async def fill_critical(self, device_id, events, covers_since_ms, ttl):
        self._check()
        self.critical_fills.append((device_id, len(events), covers_since_ms))

    async def ping(self):
        self._check()


class FakeReader:
    def __init__(self, events=(), delay=0.0):
        self.rows = {e.event_id: e for e in events}
        self.stale: list[StoredEvent] = []
        self.reads, self.down, self.delay = 0, False, delay

    async def _read(self):
        self.reads += 1
        await asyncio.sleep(self.delay)
        if self.down:
            raise DependencyUnavailable("cassandra", "no host available")

    async def latest(self, device_id):
        await self._read()
        mine = [e for e in self.rows.values() if e.device_id == device_id]
        return max(mine, key=lambda e: e.event_time, default=None)

    async def event(self, event_id):
        await self._read()
        return self.rows.get(event_id)

    async def events(self, event_ids):
        await self._read()
        return {i: self.rows[i] for i in event_ids if i in self.rows}

    async def critical(self, device_id, *, since, limit):
        await self._read()
        # critical_events_by_device: a row per copy (stale: copies an event was corrected from), newest first
        mine = sorted((e for e in [*self.rows.values(), *self.stale] if e.device_id == device_id and e.critical
                       and (since is None or e.event_time >= since)), key=lambda e: e.event_time, reverse=True)
        return mine[:limit]

    async def ping(self, timeout=None):
        await self._read()


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(events=(), **kw):
    cache, reader, clock = FakeCache(), FakeReader(events, kw.pop("delay", 0.0)), Clock()
    service = LookupService(cache, reader, cache_ttl=100, ttl_jitter=10, negative_ttl=3, redis_retry_after=5,
                            monotonic=clock, critical_cap=kw.pop("critical_cap", 100), **kw)
    return service, cache, reader, clock


def sync(coroutine_function):
    """Run an ``async def`` test body on a fresh event loop (the service's coroutines need one)."""

    def test(*args, **kwargs):
        return asyncio.run(coroutine_function(*args, **kwargs))

    test.__name__ = coroutine_function.__name__
    return test


@sync
async def test_miss_fills_with_jittered_ttl_then_hits():
    e = ev()
    service, cache, reader, _ = make([e])
    first = await service.latest("d1")
    assert first.outcome == "miss" and first.document == e.to_json()
    again = await service.latest("d1")
    assert again.outcome == "hit" and again.document == e.to_json() and reader.reads == 1
    assert 100 <= cache.fills[0][2] <= 110


@sync
async def test_not_found_is_cached_with_the_negative_ttl_and_answered_as_negative():
    service, cache, reader, _ = make()
    assert not (await service.event(uuid.uuid4())).found
    assert cache.fills[0][2] == 3
    missing = await service.latest("ghost")
    assert not missing.found and missing.outcome == "miss"
    again = await service.latest("ghost")
    assert again.outcome == "negative" and again.cache == "hit" and reader.reads == 2


@sync
async def test_redis_down_bypasses_to_cassandra_and_retries_redis_after_the_pause():
    e = ev()
    service, cache, _reader, clock = make([e])
    cache.down = True
    first = await service.latest("d1")
    assert first.outcome == "bypass" and first.document == e.to_json()
    cache.down = False
    assert (await service.latest("d1")).outcome == "bypass"  # still within redis_retry_after: Redis left alone
    clock.now += 6
    assert (await service.latest("d1")).outcome == "miss"
    assert (await service.latest("d1")).outcome == "hit"


class HungCache(FakeCache):
    """Redis reads that, while ``hung`` is set, wait until ``release`` is set, then fail (a socket timeout) or
    answer; ``reads`` counts the reads that reached Redis."""

    def __init__(self):
        super().__init__()
        self.hung, self.release, self.reads = False, asyncio.Event(), 0

    async def get_latest(self, device_id):
        self.reads += 1
        if self.hung:
            await self.release.wait()
        return await super().get_latest(device_id)


def test_after_the_pause_one_request_probes_redis_and_the_others_bypass_until_it_answers(caplog):
    """Half-open: after ``redis_retry_after`` one request probes Redis; concurrent ones bypass it at once (no
    socket timeout each), a failed probe starts another pause without another warning, an answered one closes
    the breaker."""

    async def scenario() -> None:
        e = ev()
        service, _, reader, clock = make([e])
        cache = service._cache = HungCache()
        cache.down = True
        with caplog.at_level("DEBUG", logger="shared.services.lookups"):
            assert (await service.latest("d1")).outcome == "bypass"  # opens the breaker
            clock.now += 6
            cache.hung = True
            probe = asyncio.create_task(service.latest("d1"))
            await asyncio.sleep(0)  # the probe is waiting on Redis
            # a deadline: a request that asked the hung Redis too would wait for `release`
            others = await asyncio.wait_for(asyncio.gather(*(service.latest("d1") for _ in range(10))), 1)
            assert {o.outcome for o in others} == {"bypass"} and cache.reads == 2
            cache.release.set()  # the probe times out
            assert (await probe).outcome == "bypass"
            assert (await service.latest("d1")).outcome == "bypass" and cache.reads == 2  # another pause
            warnings = [r for r in caplog.records if r.levelname == "WARNING"]
            assert len(warnings) == 1 and "Redis failed" in warnings[0].getMessage()
            clock.now += 6
            cache.down = False
            assert (await service.latest("d1")).outcome == "miss"  # the probe answered: the breaker closed, filled
            assert (await service.latest("d1")).outcome == "hit" and cache.reads == 4
        assert reader.reads == 5 and "Redis answers again" in caplog.text  # the ten bypassing shared one read

    asyncio.run(scenario())


@sync
async def test_a_probe_cancelled_with_its_request_leaves_probing_to_the_next_request():
    service, _, _reader, clock = make([ev()])
    cache = service._cache = HungCache()
    cache.down = True
    await service.latest("d1")
    clock.now += 6
    cache.hung = True
    probe = asyncio.create_task(service.latest("d1"))
    await asyncio.sleep(0)
    assert (await asyncio.wait_for(service.latest("d1"), 1)).outcome == "bypass" and cache.reads == 2
    probe.cancel()  # the client went away while the probe waited on Redis
    with pytest.raises(asyncio.CancelledError):
        await probe
    cache.hung, cache.down = False, False
    assert (await service.latest("d1")).outcome == "miss" and cache.reads == 3  # this one probed
    assert (await service.latest("d1")).outcome == "hit"


@sync
async def test_a_healthy_health_check_closes_the_breaker_while_a_probe_waits():
    service, _, _reader, clock = make([ev()])
    cache = service._cache = HungCache()
    cache.down = True
    await service.latest("d1")
    clock.now += 6
    cache.hung, cache.down = True, False
    probe = asyncio.create_task(service.latest("d1"))
    await asyncio.sleep(0)
    assert (await service.health())[0] is True  # PING answers while the probe's read is still on its way
    cache.hung = False
    assert (await service.latest("d1")).outcome == "miss"  # closed: asked and filled, no probe needed
    cache.release.set()
    assert (await probe).outcome in {"hit", "miss"}
    assert (await service.latest("d1")).outcome == "hit"


@sync
async def test_a_failed_fill_opens_the_breaker_and_the_answer_is_still_served():
    e = ev()
    service, cache, reader, _clock = make([e])

    async def failing_fill(*args):
        raise DependencyUnavailable("redis", "connection reset")

    cache.fill_latest = failing_fill
    first = await service.latest("d1")
    assert first.document == e.to_json()
    assert (await service.latest("d1")).outcome == "bypass" and reader.reads == 2


def test_a_refused_fill_keeps_the_breaker_closed_and_is_logged_at_most_once_a_minute(caplog):
    """A fill Redis refuses (``DependencyRefused``: a full Redis, a read-only replica) is no outage: the answer is
    served from Cassandra as a miss, the next lookups still ask Redis (what it holds is a hit), and the warning is
    logged once per ``REFUSAL_LOG_INTERVAL``, the next one counting those held back."""

    from shared.services.lookups import REFUSAL_LOG_INTERVAL

    async def scenario() -> None:
        held, other = ev(), ev("d2")
        service, cache, reader, clock = make([held, other])
        await service.latest("d1")  # cached

        async def refused_fill(*args):
            raise DependencyRefused("redis", "caching the latest state refused: OutOfMemoryError: OOM ...")

        cache.fill_latest = refused_fill
        with caplog.at_level("WARNING", logger="shared.services.lookups"):
            first = await service.latest("d2")
            assert first.document == other.to_json() and first.outcome == "miss"
            assert (await service.latest("d1")).outcome == "hit"  # no bypass: Redis is asked, and holds it
            assert (await service.latest("d2")).outcome == "miss" and reader.reads == 3
            assert len(caplog.records) == 1 and "Redis refused a command while filling" in caplog.text
            clock.now += REFUSAL_LOG_INTERVAL
            await service.latest("d2")
        assert len(caplog.records) == 2 and "1 more refusals" in caplog.records[1].getMessage()
        assert all(r.levelname == "WARNING" for r in caplog.records)

    asyncio.run(scenario())


@sync
async def test_a_refused_read_is_a_miss_answered_from_cassandra_and_keeps_the_breaker_closed():
    e = ev()
    service, cache, reader, _clock = make([e])

    async def refused_read(*args):
        raise DependencyRefused("redis", "reading refused: NoPermissionError: NOPERM ...")

    cache.get_latest = refused_read
    answer = await service.latest("d1")
    assert answer.outcome == "miss" and answer.document == e.to_json()
    del cache.get_latest  # the refusal passed: the entry the miss filled is a hit
    assert (await service.latest("d1")).outcome == "hit" and reader.reads == 1


@sync
async def test_cassandra_down_raises_unless_cached():
    e = ev()
    service, _, reader, _ = make([e])
    await service.latest("d1")
    reader.down = True
    assert (await service.latest("d1")).outcome == "hit"
    with pytest.raises(DependencyUnavailable) as raised:
        await service.latest("d2")
    assert raised.value.dependency == "cassandra"


@sync
async def test_one_hundred_concurrent_misses_read_once():
    e = ev()
    service, _, reader, _ = make([e], delay=0.05)
    answers = await asyncio.gather(*(service.latest("d1") for _ in range(100)))
    assert reader.reads == 1 and {a.document for a in answers} == {e.to_json()}
    assert {a.outcome for a in answers} == {"miss"}


@sync
async def test_a_failed_read_is_shared_by_the_waiting_requests():
    service, _, reader, _ = make(delay=0.05)
    reader.down = True
    answers = await asyncio.gather(*(service.latest("d1") for _ in range(10)), return_exceptions=True)
    assert all(isinstance(a, DependencyUnavailable) for a in answers) and reader.reads == 1


@sync
async def test_a_cancelled_leader_leaves_the_read_to_its_waiters():
    """The leader's client went away (or its deadline passed): that cancels its own wait only. The waiter still gets
    the answer of the one read (a 503 would blame a Cassandra that answered)."""
    e = ev()
    service, _, reader, _ = make([e], delay=0.2)
    leader = asyncio.ensure_future(service.latest("d1"))
    await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(service.latest("d1"))
    await asyncio.sleep(0.01)
    leader.cancel()
    answer = await waiter
    assert (answer.document, answer.outcome) == (e.to_json(), "miss")
    assert leader.cancelled() and reader.reads == 1


@sync
async def test_a_read_nobody_waits_for_any_more_is_cancelled():
    service, cache, reader, _ = make([ev()], delay=0.2)
    leader = asyncio.ensure_future(service.latest("d1"))
    await asyncio.sleep(0.01)
    leader.cancel()
    await asyncio.sleep(0.3)
    assert cache.fills == []  # the read stopped: nothing filled
    assert (await service.latest("d1")).outcome == "miss" and reader.reads == 2  # the flight is gone: read again


@sync
async def test_critical_reads_at_least_the_cap_and_says_what_the_fill_covers():
    crit = [ev(minutes=i, critical=True) for i in range(5)]
    service, cache, _reader, _ = make([*crit, ev(minutes=10)], critical_cap=3)
    answer = await service.critical("d1", limit=2)
    assert answer.outcome == "miss"
    assert [e["event_id"] for e in json.loads(answer.document)["events"]] == [str(c.event_id) for c in crit[:2]]
    # 3 (the cap) were read and there are more: the fill covers only from just after the oldest one read
    assert cache.critical_fills == [("d1", 3, crit[2].event_time_ms + 1)]
    small = make([crit[0]], critical_cap=3)
    await small[0].critical("d1")
    assert small[1].critical_fills == [("d1", 1, SINCE_ALL)]


@sync
async def test_a_critical_miss_never_lists_a_copy_its_event_was_corrected_from():
    """A row of ``critical_events_by_device`` whose event's copy in ``events_by_id`` was enqueued after it is a
    superseded copy, wherever the correction moved the event: to another event time (listed there, if critical),
    before ``since``, or out of the critical events. It is neither listed nor filled into Redis; the ids of the rows
    read are looked up together, one read per miss."""
    from dataclasses import replace

    crit = [ev(minutes=i, critical=True) for i in range(1, 4)]
    moved, calmed = ev(minutes=0, critical=True), ev(minutes=0.5, critical=True)
    enqueued = NOW + timedelta(seconds=1)
    corrections = [replace(moved, event_time=NOW - timedelta(hours=1), enqueued_time=enqueued),
                   replace(calmed, critical=False, severity="info", enqueued_time=enqueued)]
    service, cache, reader, _ = make([*crit, *corrections], critical_cap=6)
    reader.stale = [replace(moved, enqueued_time=NOW), replace(calmed, enqueued_time=NOW)]
    answer = await service.critical("d1", limit=5)
    listed = [(e["event_id"], e["timestamp"]) for e in json.loads(answer.document)["events"]]
    assert answer.outcome == "miss"
    assert listed == [(str(e.event_id), rfc3339(e.event_time)) for e in [*crit, corrections[0]]], listed
    assert cache.critical_fills == [("d1", 4, SINCE_ALL)]  # 7 rows asked for (the cap and a quarter), 6 read: all
    assert reader.reads == 3  # the device's latest state, the critical rows, their ids in events_by_id
    since = await service.critical("d1", since=NOW - timedelta(minutes=2), limit=3)
    assert [e["event_id"] for e in json.loads(since.document)["events"]] == [str(e.event_id) for e in crit[:2]]


@sync
async def test_a_row_without_the_critical_flag_is_decided_with_the_rules_on_every_lookup():
    """A row written before the flag existed (``critical`` null) is critical by ``severity == "critical"`` or a
    rule of SLUICE_CRITICAL_RULES, as the change feed decides it, not ``false``: in the answer and in the fill.
    A ``critical_events_by_device`` row of it the rules no longer find critical is left out, as the feed leaves it
    out of the critical list."""
    from dataclasses import replace

    from shared.domain.rules import MeasurementRule

    by_severity = replace(ev(minutes=1, critical=True), critical=None)
    by_rule = replace(ev(minutes=2), critical=None, measurements={"temperature": 99.0})
    calm = replace(ev(minutes=3), critical=None, measurements={"temperature": 10.0})
    flagged = ev(minutes=4)  # a flag set false stays false whatever the rules say
    flagged = replace(flagged, measurements={"temperature": 99.0})
    service, cache, reader, _ = make([by_severity, by_rule, calm, flagged],
                                     rules=[MeasurementRule(measurement="temperature", op=">", value=90)])
    reader.critical = lambda device_id, *, since, limit: _rows([by_severity, by_rule, calm])  # the table's rows
    for event, critical in [(by_severity, True), (by_rule, True), (calm, False), (flagged, False)]:
        answer = await service.event(event.event_id)
        assert answer.outcome == "miss" and json.loads(answer.document)["critical"] is critical, event
        assert json.loads(cache.events[str(event.event_id)].document)["critical"] is critical  # the fill
    latest = await service.latest("d1")
    assert json.loads(latest.document)["critical"] is True and json.loads(latest.document)["severity"] == "critical"
    listed = json.loads((await service.critical("d1")).document)["events"]
    assert [(e["event_id"], e["critical"]) for e in listed] == [(str(by_severity.event_id), True),
                                                                (str(by_rule.event_id), True)]
    plain, _, _, _ = make([by_rule])  # no rules: severity alone decides
    assert json.loads((await plain.event(by_rule.event_id)).document)["critical"] is False


async def _rows(rows):
    return list(rows)


@sync
async def test_critical_document_is_json_even_for_an_awkward_device_id():
    service, _cache, _, _ = make([ev(device='q"\\x', critical=True)])
    answer = await service.critical('q"\\x')
    assert json.loads(answer.document)["device_id"] == 'q"\\x'


@sync
async def test_critical_of_an_unknown_device_is_not_found():
    service, _, _, _ = make()
    assert not (await service.critical("nobody")).found


@sync
async def test_critical_of_a_device_without_a_latest_state_lists_its_critical_events():
    """A correction that moved a device's newest event to another device leaves it without a latest state, not
    without events: its critical events are listed; without any it is not found."""
    crit = ev(device="d9", minutes=5, critical=True)
    service, _, reader, _ = make([crit])

    async def no_state(device_id):
        await reader._read()

    reader.latest = no_state
    answer = await service.critical("d9")
    assert [e["event_id"] for e in json.loads(answer.document)["events"]] == [str(crit.event_id)]
    assert not (await service.critical("d8")).found


@sync
async def test_cassandra_down_serves_a_cached_critical_list_without_the_latest_state_but_not_an_empty_one():
    """The latest entry expired before the critical set and Cassandra is down: a cached list naming events is served
    (as it would be for a device without a latest state); an empty one may be a device that does not exist (404)
    as well as one without critical events (200), so without the latest state it stays a 503, as does nothing."""
    crit = ev(device="d1", minutes=5, critical=True)
    service, cache, reader, _ = make([crit])
    cache.critical["d1"], cache.critical["nobody"] = [crit.to_json()], []
    reader.down = True
    answer = await service.critical("d1")
    assert answer.outcome == "hit"
    assert [e["event_id"] for e in json.loads(answer.document)["events"]] == [str(crit.event_id)]
    for device in ("nobody", "d2"):
        with pytest.raises(DependencyUnavailable) as raised:
            await service.critical(device)
        assert raised.value.dependency == "cassandra"
    with pytest.raises(DependencyUnavailable):  # beyond the last event time nothing is cached: the latest decides
        await service.critical("d1", since=datetime.max.replace(tzinfo=UTC))


@sync
async def test_health_reports_each_dependency_and_closes_the_breaker_when_redis_answers():
    service, cache, _reader, _clock = make([ev()])
    assert (await service.health())[0] is True
    cache.down = True
    healthy, body = await service.health()
    assert not healthy and body["dependencies"]["redis"]["status"] == "down"
    assert body["dependencies"]["cassandra"]["status"] == "up"
    assert (await service.latest("d1")).outcome == "bypass"
    cache.down = False
    assert (await service.health())[0] is True
    assert (await service.latest("d1")).outcome == "miss"  # no need to wait out redis_retry_after


@sync
async def test_health_says_connecting_while_the_first_check_runs_and_down_for_a_later_one_out_of_time():
    opened = {"cassandra": False}
    service, _cache, reader, _clock = make(
        delay=0.3, health_timeout=0.05, health_opened={"redis": lambda: True, "cassandra": lambda: opened["cassandra"]})
    healthy, body = await service.health()
    assert not healthy and body["dependencies"]["cassandra"] == {
        "status": "connecting", "error": "no answer within 0.05s; the first connection is still being made"}
    assert body["dependencies"]["redis"]["status"] == "up"
    healthy, body = await service.health()  # the first check still runs: not started again, still connecting
    assert not healthy and body["dependencies"]["cassandra"]["status"] == "connecting"
    assert reader.reads == 1
    await asyncio.sleep(0.3)  # the first check was not cancelled: it ends, and the store has answered once
    opened["cassandra"] = True
    healthy, body = await service.health()
    assert not healthy and body["dependencies"]["cassandra"] == {"status": "down", "error": "no answer within 0.05s"}
    assert reader.reads == 2
    reader.delay = 0.0
    assert (await service.health())[0] is True


@sync
async def test_health_says_down_for_a_first_check_out_of_time_once_other_traffic_opened_the_client():
    """Reads had connected and prepared before Cassandra hung: the health check's first run is no connect, so a
    check without an answer is a store that is down."""
    service, _cache, _reader, _clock = make(delay=0.3, health_timeout=0.05,
                                            health_opened={"redis": lambda: True, "cassandra": lambda: True})
    healthy, body = await service.health()
    assert not healthy and body["dependencies"]["cassandra"] == {"status": "down", "error": "no answer within 0.05s"}


@sync
async def test_health_says_down_not_connecting_for_a_first_check_refused_in_time():
    service, _cache, reader, _clock = make(health_timeout=0.05)
    reader.down = True
    healthy, body = await service.health()
    assert not healthy
    assert body["dependencies"]["cassandra"] == {"status": "down", "error": "cassandra unavailable: no host available"}


@pytest.mark.parametrize(("parse", "value", "parameter"), [
    (parse_device_id, "", "device_id"), (parse_device_id, "a b", "device_id"), (parse_device_id, "é", "device_id"),
    (parse_device_id, "x" * 129, "device_id"), (parse_event_id, "123", "event_id"),
    (parse_event_id, "urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8", "event_id"),
    (lambda v: parse_limit(v, 20), "-1", "limit"), (lambda v: parse_limit(v, 20), "1.5", "limit"),
    (lambda v: parse_limit(v, 20), "٣", "limit"), (parse_since, "2026-11-23", "since"),
    (parse_since, "2026-11-23T10:00:00", "since"), (parse_since, "2026-02-30T10:00:00Z", "since"),
    (parse_since, "2026-11-23T10:00:00+01:60", "since"), (parse_since, "2026-11-23T10:00:00+24:00", "since"),
    # RFC 3339's digits are ASCII: other scripts' digits (which Python's \d matches) are refused everywhere in a
    # time, the fraction's digits past the microseconds included, whichever parameter carries it
    (parse_since, "2026-11-23T10:00:00.123456\u0667Z", "since"),
    (parse_since, "2026-11-23T10:00:00.1234567\uff18Z", "since"),
    (lambda v: parse_since(v, "from"), "2026-11-23T10:00:00.12345678\u0669Z", "from"),
    (lambda v: parse_until(v, "at"), "2026-11-23T10:00:00.123456\u0667Z", "at"),
    (lambda v: parse_until(v, "to"), "2026-11-23T10:00:00.1234567\uff18+01:00", "to"),
    (parse_since, "\uff12026-11-23T10:00:00Z", "since"), (parse_since, "2026-11-23T10:00:00+0\u0661:00", "since"),
    # second 60 is a leap second only at 23:59:60 UTC
    (parse_since, "2016-12-31T12:59:60Z", "since"), (lambda v: parse_until(v, "at"), "2016-12-31T23:59:60+01:00", "at"),
])
def test_bad_parameters_are_named(parse, value, parameter):
    with pytest.raises(BadParameter) as raised:
        parse(value)
    assert raised.value.parameter == parameter and repr(value)[:20] in str(raised.value)


def test_good_parameters_parse():
    assert parse_device_id("pump-1.a:b_c") == "pump-1.a:b_c"
    # "." and ".." as a browser sends them, encoded twice (it removes "%2E" segments): the host decodes once
    assert [parse_device_id(v) for v in ("%2E", "%2e%2E", ".", "..")] == [".", "..", ".", ".."]
    assert parse_event_id("6BA7B810-9DAD-11D1-80B4-00C04FD430C8") == uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    assert parse_limit(None, 20) == 20 and parse_limit("7", 20) == 7
    assert parse_since("2026-11-23T10:00:00.5+02:00") == datetime(2026, 11, 23, 8, 0, 0, 500000, tzinfo=UTC)
    assert parse_since(None) is None
    # beyond microseconds a lower bound rounds up (no earlier event is at or after it), an upper bound is cut
    assert parse_since("2026-11-23T10:00:00.0000001Z") == datetime(2026, 11, 23, 10, 0, 0, 1, tzinfo=UTC)
    assert parse_since("2026-11-23T10:00:00.1234560Z") == datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)
    assert parse_until("2026-11-23T10:00:00.0000009Z", "to") == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert parse_since("9999-12-31T23:59:59.9999999Z") == datetime.max.replace(tzinfo=UTC)
    # RFC 3339's fraction is "." 1*DIGIT: ten digits and more were refused as "not an RFC 3339 time"
    assert parse_since("2026-11-23T10:00:00.0000000001Z") == datetime(2026, 11, 23, 10, 0, 0, 1, tzinfo=UTC)
    assert parse_until("2026-11-23T10:00:00.123456" + "9" * 30 + "Z", "at") == datetime(2026, 11, 23, 10, 0, 0,
                                                                                       123456, tzinfo=UTC)
    # a leap second is the millisecond before it, as ingest stores an event sent at one, for either bound
    leap = datetime(2016, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert parse_since("2016-12-31T23:59:60Z") == parse_until("2017-01-01T00:59:60.123456789+01:00", "to") == leap


@sync
async def test_waiters_give_up_with_503_instead_of_piling_reads_on_a_stuck_store():
    service, _, reader, _ = make([ev()], delay=0.5, flight_wait=0.05)

    async def ask(after: float):
        await asyncio.sleep(after)
        try:
            return (await service.latest("d1")).outcome
        except DependencyUnavailable as exc:
            return exc.dependency

    outcomes = await asyncio.gather(*(ask(i * 0.01) for i in range(5)))
    assert reader.reads == 1 and sorted(outcomes) == ["cassandra"] * 4 + ["miss"]


def test_a_new_event_loop_is_not_wedged_by_a_flight_an_old_loop_left_open():
    service, _, reader, _ = make([ev()], delay=10)
    old = asyncio.new_event_loop()
    flight = old.create_task(service.latest("d1"))  # left pending on purpose
    # ... so asyncio's "Task was destroyed but it is pending!" when it is collected is expected: only for it.
    old.set_exception_handler(
        lambda loop, context: None if context.get("task") is flight else loop.default_exception_handler(context))
    old.run_until_complete(asyncio.sleep(0.01))  # the flight is open, its read asleep
    old.close()  # and never finishes
    assert not flight.done()
    reader.delay = 0
    assert asyncio.run(asyncio.wait_for(service.latest("d1"), 2)).outcome == "miss"
