"""LookupService cache-aside logic with in-memory fakes of our ports, and the parameter parsers."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.stored import StoredEvent
from shared.exceptions import DependencyUnavailable
from shared.ports.cache import SINCE_ALL, Cached
from shared.services.lookups import (
    BadParameter,
    LookupService,
    parse_device_id,
    parse_event_id,
    parse_limit,
    parse_since,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def ev(device="d1", minutes=0, critical=False) -> StoredEvent:
    return StoredEvent(event_id=uuid.uuid4(), device_id=device, event_time=NOW - timedelta(minutes=minutes),
                       event_type="t", severity="critical" if critical else "info", critical=critical)


class FakeCache:
    def __init__(self):
        self.latest, self.events, self.fills, self.down = {}, {}, [], False
        self.critical_fills = []

    def _check(self):
        if self.down:
            raise DependencyUnavailable("redis", "connection refused")

    def get_latest(self, device_id):
        self._check()
        return self.latest.get(device_id)

    def fill_latest(self, device_id, event, ttl, negative_ttl):
        self._check()
        self.fills.append(("latest", device_id, ttl if event else negative_ttl))
        self.latest.setdefault(device_id, Cached(event.to_json() if event else None))

    def get_event(self, event_id):
        self._check()
        return self.events.get(event_id)

    def fill_event(self, event_id, event, ttl, negative_ttl):
        self._check()
        self.fills.append(("event", event_id, ttl if event else negative_ttl))
        self.events.setdefault(event_id, Cached(event.to_json() if event else None))

    def get_critical(self, device_id, since_ms, limit):
        self._check()
        return

    def fill_critical(self, device_id, events, covers_since_ms, ttl):
        self._check()
        self.critical_fills.append((device_id, len(events), covers_since_ms))

    def ping(self):
        self._check()


class FakeReader:
    def __init__(self, events=(), delay=0.0):
        self.rows = {e.event_id: e for e in events}
        self.reads, self.down, self.delay = 0, False, delay
        self._lock = threading.Lock()

    def _read(self):
        with self._lock:
            self.reads += 1
        time.sleep(self.delay)
        if self.down:
            raise DependencyUnavailable("cassandra", "no host available")

    def latest(self, device_id):
        self._read()
        mine = [e for e in self.rows.values() if e.device_id == device_id]
        return max(mine, key=lambda e: e.event_time, default=None)

    def event(self, event_id):
        self._read()
        return self.rows.get(event_id)

    def critical(self, device_id, *, since, limit):
        self._read()
        mine = sorted((e for e in self.rows.values() if e.device_id == device_id and e.critical
                       and (since is None or e.event_time >= since)), key=lambda e: e.event_time, reverse=True)
        return mine[:limit]

    def ping(self, timeout=None):
        self._read()


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


def test_miss_fills_with_jittered_ttl_then_hits():
    e = ev()
    service, cache, reader, _ = make([e])
    first = service.latest("d1")
    assert first.cache == "miss" and first.document == e.to_json()
    again = service.latest("d1")
    assert again.cache == "hit" and again.document == e.to_json() and reader.reads == 1
    assert 100 <= cache.fills[0][2] <= 110


def test_not_found_is_cached_with_the_negative_ttl():
    service, cache, reader, _ = make()
    assert not service.event(uuid.uuid4()).found
    assert cache.fills[0][2] == 3
    missing = service.latest("ghost")
    assert not missing.found and service.latest("ghost").cache == "hit" and reader.reads == 2


def test_redis_down_bypasses_to_cassandra_and_retries_redis_after_the_pause():
    e = ev()
    service, cache, _reader, clock = make([e])
    cache.down = True
    first = service.latest("d1")
    assert first.cache == "bypass" and first.document == e.to_json()
    cache.down = False
    assert service.latest("d1").cache == "bypass"  # still within redis_retry_after: Redis left alone
    clock.now += 6
    assert service.latest("d1").cache == "miss"
    assert service.latest("d1").cache == "hit"


def test_cassandra_down_raises_unless_cached():
    e = ev()
    service, _, reader, _ = make([e])
    service.latest("d1")
    reader.down = True
    assert service.latest("d1").cache == "hit"
    with pytest.raises(DependencyUnavailable) as raised:
        service.latest("d2")
    assert raised.value.dependency == "cassandra"


def test_one_hundred_concurrent_misses_read_once():
    e = ev()
    service, _, reader, _ = make([e], delay=0.05)
    barrier = threading.Barrier(100)
    answers = []

    def ask():
        barrier.wait()
        answers.append(service.latest("d1"))

    threads = [threading.Thread(target=ask) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reader.reads == 1 and {a.document for a in answers} == {e.to_json()}


def test_a_failed_read_is_shared_by_the_waiting_requests():
    service, _, reader, _ = make(delay=0.05)
    reader.down = True
    errors = []

    def ask():
        try:
            service.latest("d1")
        except DependencyUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 10 and reader.reads < 10


def test_critical_reads_at_least_the_cap_and_says_what_the_fill_covers():
    crit = [ev(minutes=i, critical=True) for i in range(5)]
    service, cache, _reader, _ = make([*crit, ev(minutes=10)], critical_cap=3)
    answer = service.critical("d1", limit=2)
    assert answer.cache == "miss"
    assert answer.document.count('"event_id"') == 2
    # 3 (the cap) were read and there are more: the fill covers only from just after the oldest one read
    assert cache.critical_fills == [("d1", 3, crit[2].event_time_ms + 1)]
    small = make([crit[0]], critical_cap=3)
    small[0].critical("d1")
    assert small[1].critical_fills == [("d1", 1, SINCE_ALL)]


def test_critical_of_an_unknown_device_is_not_found():
    service, _, _, _ = make()
    assert not service.critical("nobody").found


def test_health_reports_each_dependency():
    service, cache, _reader, _ = make()
    assert service.health()[0] is True
    cache.down = True
    healthy, body = service.health()
    assert not healthy and body["dependencies"]["redis"]["status"] == "down"
    assert body["dependencies"]["cassandra"]["status"] == "up"


@pytest.mark.parametrize(("parse", "value", "parameter"), [
    (parse_device_id, "", "device_id"), (parse_device_id, "a b", "device_id"), (parse_device_id, "é", "device_id"),
    (parse_device_id, "x" * 129, "device_id"), (parse_event_id, "123", "event_id"),
    (parse_event_id, "urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8", "event_id"),
    (lambda v: parse_limit(v, 20), "-1", "limit"), (lambda v: parse_limit(v, 20), "1.5", "limit"),
    (lambda v: parse_limit(v, 20), "٣", "limit"), (parse_since, "2026-11-23", "since"),
    (parse_since, "2026-11-23T10:00:00", "since"), (parse_since, "2026-02-30T10:00:00Z", "since"),
])
def test_bad_parameters_are_named(parse, value, parameter):
    with pytest.raises(BadParameter) as raised:
        parse(value)
    assert raised.value.parameter == parameter and repr(value)[:20] in str(raised.value)


def test_good_parameters_parse():
    assert parse_device_id("pump-1.a:b_c") == "pump-1.a:b_c"
    assert parse_event_id("6BA7B810-9DAD-11D1-80B4-00C04FD430C8") == uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    assert parse_limit(None, 20) == 20 and parse_limit("7", 20) == 7
    assert parse_since("2026-11-23T10:00:00.5+02:00") == datetime(2026, 11, 23, 8, 0, 0, 500000, tzinfo=UTC)
    assert parse_since(None) is None


def test_waiters_give_up_with_503_instead_of_piling_reads_on_a_stuck_store():
    service, _, reader, _ = make([ev()], delay=0.5, flight_wait=0.05)
    outcomes = []

    def ask():
        try:
            outcomes.append(service.latest("d1").cache)
        except DependencyUnavailable as exc:
            outcomes.append(exc.dependency)

    threads = [threading.Thread(target=ask) for _ in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert reader.reads == 1 and sorted(outcomes) == ["cassandra"] * 4 + ["miss"]
