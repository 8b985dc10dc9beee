"""The operations page's JSON routes against the Cassandra emulator, Redis, PostgreSQL and Azurite.

Events are written with the real event store (every table, as ingest writes
them); the functions ``function_app`` registers are called with real
``func.HttpRequest`` objects.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import azure.functions as func
import psycopg
import pytest

from shared.adapters.postgres.migrations import apply_migrations as apply_pg_migrations
from tests.fixtures.functions import HostContext, run, user_function
from tests.fixtures.waiting import poll
from tests.integration import test_changefeed as changefeed_tests
from tests.integration.test_changefeed import make_event

app_env, keyspace, session, store, rclient = (changefeed_tests.app_env, changefeed_tests.keyspace,
                                              changefeed_tests.session, changefeed_tests.store,
                                              changefeed_tests.rclient)


@pytest.fixture
def dash_env(app_env, pg_dsn, azurite_connection_string):
    """The app's settings with this test's PostgreSQL database (migrated) and Azurite."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_pg_migrations(conn)
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)

    def configure(**overrides: str) -> None:
        app_env(AzureWebJobsStorage=azurite_connection_string,
                SLUICE_STORAGE_DEADLETTER_CONTAINER=f"dl-{uuid.uuid4().hex[:12]}",
                SLUICE_POSTGRES_HOST=str(pg.get("host", "127.0.0.1")), SLUICE_POSTGRES_PORT=str(pg.get("port", "5432")),
                SLUICE_POSTGRES_DBNAME=str(pg["dbname"]), SLUICE_DASHBOARD_STATUS_CACHE_SECONDS="0", **overrides)

    return configure


def call(name: str, route: dict | None = None, **params: str) -> tuple[int, dict]:
    request = func.HttpRequest("GET", f"http://localhost/api/{name}", params=params, route_params=route or {}, body=b"")
    response = run(user_function(name)(request))
    return response.status_code, json.loads(response.get_body()) if response.mimetype == "application/json" else {}


def history(device: str, **params: str) -> tuple[int, dict]:
    return call("device_events", {"device_id": device}, **params)


@pytest.mark.timeout(90)
def test_history_pages_newest_first_across_days_with_a_signed_token(dash_env, store) -> None:
    dash_env()
    now = datetime.now(UTC).replace(microsecond=0)
    at = [now - timedelta(hours=30), now - timedelta(hours=2), now - timedelta(minutes=5), now - timedelta(minutes=5)]
    events = [make_event("hist-1", t, measurements={"temperature": float(i)}) for i, t in enumerate(at)]
    events.append(make_event("hist-2", now - timedelta(minutes=1)))
    store.write(events)
    frm = (now - timedelta(days=2)).isoformat()

    seen, token, pages = [], None, 0
    while True:
        status, body = history("hist-1", **{"from": frm, "limit": "1", **({"page": token} if token else {})})
        assert status == 200, body
        seen += body["events"]
        token, pages = body["next_page"], pages + 1
        if token is None:
            break
    assert [e["device_id"] for e in seen] == ["hist-1"] * 4
    times = [e["timestamp"] for e in seen]
    assert times == sorted(times, reverse=True)
    assert {e["event_id"] for e in seen} == {str(e.event_id) for e in events[:4]}

    # the edges of the calendar are empty ranges, not errors
    for edge in ({"to": "0001-01-01T00:00:00Z"}, {"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z"},
                 {"to": "9999-12-31T23:59:59Z", "from": "9999-12-01T00:00:00Z"}):
        status, body = history("hist-1", **edge)
        assert status == 200 and body["events"] == [], (edge, body)

    # the default range is the last 24 hours
    status, body = history("hist-1")
    assert status == 200 and len(body["events"]) == 3 and body["next_page"] is None


@pytest.mark.timeout(60)
def test_history_echoes_the_range_it_read_in_whole_milliseconds(dash_env, store) -> None:
    """docs/api.md: a ``from`` finer than milliseconds counts from the next millisecond, a ``to`` up to the one
    before, and the answer's ``from`` and ``to`` are that range: a ``from`` echoed cut towards the past named a range
    holding the event it left out."""
    dash_env()
    device = f"echo-{uuid.uuid4().hex[:8]}"
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    store.write([make_event(device, at), make_event(device, at + timedelta(milliseconds=2))])
    stamp = at.isoformat().replace("+00:00", "")
    status, body = history(device, **{"from": f"{stamp}.0005Z", "to": f"{stamp}.0025Z"})
    assert status == 200, body
    assert [e["timestamp"] for e in body["events"]] == [f"{stamp}.002Z"]
    assert (body["from"], body["to"]) == (f"{stamp}.001Z", f"{stamp}.002Z")
    # two bounds inside one millisecond, `from` past its start, hold none: rounded inwards they would cross, and
    # the answer would name a range whose `from` is after its `to` (the last millisecond of 9999 has no next one)
    for inside in ((f"{stamp}.0015Z", f"{stamp}.0019Z"), (f"{stamp}.0005Z", f"{stamp}.0005Z"),
                   ("9999-12-31T23:59:59.9995Z", "9999-12-31T23:59:59.9999999Z")):
        status, body = history(device, **dict(zip(("from", "to"), inside, strict=True)))
        assert status == 400 and body["parameter"] == "from" and "no whole millisecond" in body["message"], body
    status, body = history(device, **{"from": f"{stamp}.002Z", "to": f"{stamp}.0029Z"})  # one on `from`: it holds
    assert status == 200 and [e["timestamp"] for e in body["events"]] == [f"{stamp}.002Z"], body


@pytest.mark.timeout(60)
def test_a_modified_or_foreign_token_is_a_400_naming_the_page(dash_env, store) -> None:
    dash_env()
    now = datetime.now(UTC)
    store.write([make_event("tok-1", now - timedelta(minutes=m)) for m in (1, 2)] + [make_event("tok-2", now)])
    status, body = history("tok-1", limit="1")
    token = body["next_page"]
    assert status == 200 and token
    head, _, tail = token.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    payload[1][0] += 1  # move the position by a millisecond, keep the signature
    forged = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=").decode()
    for bad in (f"{forged}.{tail}", token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), "garbage", "a.b"):
        status, body = history("tok-1", page=bad)
        assert status == 400 and body["error"] == "bad_request" and body["parameter"] == "page", (bad, body)
    status, body = history("tok-2", page=token)  # another device's token
    assert status == 400 and body["parameter"] == "page"


@pytest.mark.parametrize(("route", "params", "parameter"), [
    ("device_events", {"from": "2026-11-23T10:00:00Z", "to": "2026-11-23T09:00:00Z"}, "from"),
    ("device_events", {"from": "yesterday"}, "from"),
    ("device_events", {"to": "2026-13-40T00:00:00Z"}, "to"),
    ("device_events", {"limit": "1001"}, "limit"),
    ("device_events", {"to": "0001-01-01T00:00:00+01:00"}, "to"),
    ("device_events", {"from": "9999-12-31T23:59:59Z"}, "from"),
    # RFC 3339's digits are ASCII, also past the microseconds (Arabic-Indic 7, fullwidth 8)
    ("device_events", {"from": "2026-11-23T09:30:00.123456\u0667Z"}, "from"),
    ("device_events", {"to": "2026-11-23T09:30:00.1234567\uff18Z"}, "to"),
    ("critical_feed", {"limit": "1001"}, "limit"),
    ("critical_feed", {"limit": "0"}, "limit"),
    ("report_sites", {"limit": "5000"}, "limit"),
    ("report_sites", {"from": "2026-11-24", "to": "2026-11-23"}, "from"),
    ("report_sites", {"from": "23/11/2026"}, "from"),
    ("report_devices", {"health": "<b>"}, "health"),
    ("report_devices", {"site_id": "a b"}, "site_id"),
])
@pytest.mark.timeout(60)
def test_bad_parameters_get_the_json_400_naming_them(dash_env, route, params, parameter) -> None:
    dash_env()
    status, body = call(route, {"device_id": "dev-1"} if route == "device_events" else None, **params)
    assert status == 400 and body["error"] == "bad_request" and body["parameter"] == parameter, body
    assert body["message"]


@pytest.mark.timeout(60)
def test_status_counts_recent_arrivals_and_reports_every_section(dash_env, store) -> None:
    # The first health probe prepares its statement; on a loaded machine that can outlast the 1 s default.
    # The section waits twice the read timeout: raised to outlast that first probe too.
    dash_env(SLUICE_LOOKUP_HEALTH_TIMEOUT_SECONDS="10", SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS="6",
             EventHubConnection="")  # no hub: lag not configured
    now = datetime.now(UTC)
    arrived = [now - timedelta(seconds=s) for s in (5, 20, 40, 90, 200, 400)]
    store.write([make_event(f"st-{i}", t, enqueued=t) for i, t in enumerate(arrived)])
    status, body = call("status")
    assert status == 200, body
    throughput = body["throughput"]
    assert throughput["events_last_minute"] == 3
    assert throughput["events_last_5_minutes"] == 5
    assert sum(b["events"] for b in throughput["series"]) == 6
    assert throughput["delay_p99_ms"] is not None
    assert body["dead_letters"] == {"last_hour": 0, "capped": False}
    assert body["lag"]["status"] == "not_configured" and body["lag"]["partitions"] is None, body["lag"]
    assert body["change_feed"]["updated_at"] is None  # the feed has not run yet
    assert body["dependencies"]["redis"]["status"] == "up" and body["dependencies"]["cassandra"]["status"] == "up"

    user_function("changefeed")(_timer(), HostContext("changefeed"))
    status, body = call("status")
    assert body["change_feed"]["staleness_seconds"] is not None and body["change_feed"]["staleness_seconds"] < 30


@pytest.mark.timeout(120)
def test_status_counts_events_written_late_into_a_closed_arrival_bucket(dash_env, store) -> None:
    """``events_by_arrival_bucket`` is keyed by Event Hubs *enqueued* time, so ingest working off a backlog writes
    into buckets that closed minutes ago. The status counts what the store holds: the events written into a closed
    bucket after a pod first read (and kept) it show in that bucket of the series and in ``events_last_5_minutes``
    once ingest notes the batch as stored late (as it does every batch stored that long after its enqueue), and
    that pod gives the same answer as a pod that never read the bucket before."""
    from shared.ports.ingest import DelayedBatch

    settings = {"SLUICE_LOOKUP_HEALTH_TIMEOUT_SECONDS": "10", "SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS": "6",
                "EventHubConnection": ""}
    dash_env(**settings)
    from shared import bootstrap

    width = bootstrap.settings().cassandra.bucket_seconds
    now = datetime.now(UTC)
    # a bucket closed well over 90 s ago, still within the last 5 minutes
    start = datetime.fromtimestamp((int((now - timedelta(seconds=200)).timestamp()) // width) * width, UTC)
    enqueued = start + timedelta(seconds=1)
    assert now - start >= timedelta(seconds=width + 100) and now - enqueued < timedelta(seconds=270), (width, start)
    store.write([make_event(f"late-a{i}", enqueued, enqueued=enqueued) for i in range(3)])
    status, first = call("status")
    assert status == 200, first
    assert first["throughput"]["bucket_seconds"] == width, first["throughput"]
    assert first["throughput"]["events_last_5_minutes"] == 3, first["throughput"]

    store.write([make_event(f"late-b{i}", enqueued, enqueued=enqueued) for i in range(4)])  # the backlog
    status, before_the_note = call("status")  # the bucket is kept: until ingest's note, this pod sees 3 there
    assert status == 200 and before_the_note["throughput"]["events_last_5_minutes"] == 3
    bootstrap.delay_log().record(DelayedBatch("0", 100, enqueued, 4))  # what ingest writes after such a batch
    time.sleep(0.01)  # a computation reads the notes written before its own time, in whole milliseconds
    stamp = start.strftime("%Y-%m-%dT%H:%M:%S")

    def figures(body: dict) -> tuple[int, list[int]]:
        throughput = body["throughput"]
        return throughput["events_last_5_minutes"], [b["events"] for b in throughput["series"]
                                                     if b["start"].startswith(stamp)]

    status, same_pod = call("status")
    assert status == 200 and figures(same_pod) == (7, [7]), same_pod["throughput"]
    bootstrap.reset()  # another pod: fresh services over the same store
    dash_env(**settings)
    status, other_pod = call("status")
    assert status == 200 and figures(other_pod) == figures(same_pod), other_pod["throughput"]


@pytest.mark.timeout(90)
def test_delay_p99_reflects_the_rows_stored_late_in_a_bucket_not_only_its_first_rows(dash_env, session,
                                                                                       keyspace) -> None:
    """The p99 ingest delay of a bucket (tile and chart) comes from a sample spread over the bucket: when ingest
    falls behind later in a bucket, the rows it stored late are in the sample, so a third of a bucket stored 30 s
    late shows a p99 of about 30 s. Was: each shard was sampled with ``LIMIT 128`` in clustering order
    (``enqueued_at`` ascending), which only ever saw the first rows enqueued in the bucket: 10 ms here."""
    dash_env(SLUICE_LOOKUP_HEALTH_TIMEOUT_SECONDS="10", SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS="6",
             EventHubConnection="")
    from shared import bootstrap

    width = bootstrap.settings().cassandra.bucket_seconds
    now = datetime.now(UTC)
    bucket = datetime.fromtimestamp((int(now.timestamp()) // width - 1) * width, UTC)  # the previous bucket
    insert = session.prepare(f"INSERT INTO {keyspace}.events_by_arrival_bucket (bucket, shard, enqueued_at, event_id, "
                             "device_id) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?")
    step = timedelta(seconds=width) / 200
    for i in range(200):
        enqueued = bucket + step * i
        delay_ms = 10 if i < 130 else 30_000  # the last 70 rows of the bucket were stored 30 s after their enqueue
        written_us = int(enqueued.timestamp() * 1_000_000) + delay_ms * 1000
        session.execute(insert, (bucket, 0, enqueued, uuid.uuid4(), f"lat-{i}", written_us))
    status, body = call("status")
    assert status == 200, body
    stamp = bucket.strftime("%Y-%m-%dT%H:%M:%S")
    [figures] = [b for b in body["throughput"]["series"] if b["start"].startswith(stamp)]
    assert figures["events"] == 200, figures
    assert figures["delay_p99_ms"] is not None and figures["delay_p99_ms"] >= 29_000, figures


@pytest.mark.timeout(60)
def test_critical_feed_is_the_redis_stream_newest_first(dash_env, store) -> None:
    dash_env()
    now = datetime.now(UTC)
    critical = [make_event("crit-1", now - timedelta(seconds=s), severity="critical") for s in (30, 20, 10)]
    store.write([*critical, make_event("crit-1", now)])
    user_function("changefeed")(_timer(), HostContext("changefeed"))
    status, body = call("critical_feed", limit="2")
    assert status == 200
    assert [e["event_id"] for e in body["events"]] == [str(critical[2].event_id), str(critical[1].event_id)]


@pytest.mark.timeout(60)
def test_critical_feed_drops_an_event_corrected_to_not_critical_and_shows_a_corrected_copy(dash_env, store) -> None:
    """The stream holds each event's first critical copy (``stream.lua`` appends an event id once). A critical event
    re-sent as not critical left its device's critical set, but ``/api/critical`` kept serving the superseded copy:
    the page listed as critical an event that is not. Each entry is now checked against ``e:<id>``: a correction no
    longer critical is left out (and the next entry fills the list), one still critical shows its current content,
    and one moved to a device of another stream shard shows once."""
    from shared import bootstrap

    def feed() -> None:
        user_function("changefeed")(_timer(), HostContext("changefeed"))

    def listed() -> list[tuple[str, str, str, dict]]:
        status, body = call("critical_feed", limit="2")
        assert status == 200, body
        return [(e["event_id"], e["device_id"], e["severity"], e["measurements"]) for e in body["events"]]

    dash_env()
    now = datetime.now(UTC)
    device = f"corr-{uuid.uuid4().hex[:8]}"
    older, kept, alarm = (make_event(device, now - timedelta(seconds=s), severity="critical",
                                     measurements={"p": float(s)}, enqueued=now - timedelta(seconds=20))
                          for s in (50, 40, 30))
    store.write([older, kept, alarm])
    feed()
    assert [e[0] for e in listed()] == [str(alarm.event_id), str(kept.event_id)]

    store.write([make_event(device, now - timedelta(seconds=30), severity="info", event_id=alarm.event_id,
                            enqueued=now - timedelta(seconds=5))])  # the same event re-sent, corrected
    feed()
    status, per_device = call("device_critical", {"device_id": device})
    assert status == 200 and str(alarm.event_id) not in [e["event_id"] for e in per_device["events"]], per_device
    assert [e[0] for e in listed()] == [str(kept.event_id), str(older.event_id)]

    keys = bootstrap.redis_change_sink().keys
    elsewhere = next(d for d in (f"{device}-{i}" for i in range(100)) if keys.shard(d) != keys.shard(device))
    store.write([make_event(elsewhere, now - timedelta(seconds=40), severity="critical", event_id=kept.event_id,
                            measurements={"p": 99.0}, enqueued=now - timedelta(seconds=4))])  # moved, critical
    feed()
    assert listed() == [(str(kept.event_id), elsewhere, "critical", {"p": 99.0}),
                        (str(older.event_id), device, "critical", {"p": 50.0})]


@pytest.mark.timeout(60)
def test_reports_read_the_views_with_filters_and_limit(dash_env, pg_dsn) -> None:
    dash_env()
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for site, day in (("s1", 0), ("s1", 1), ("s2", 1)):
            ws = start + timedelta(days=day)
            conn.execute("INSERT INTO site_window_stats (window_start, window_end, site_id, event_count, "
                         "critical_count, device_count, measurements) VALUES (%s, %s, %s, 10, 1, 2, '{}')",
                         (ws, ws + timedelta(minutes=5), site))
    status, body = call("report_sites", limit="2")
    assert status == 200 and [(r["site_id"], r["local_day"]) for r in body["rows"]] == [("s1", "2026-11-24"),
                                                                                          ("s2", "2026-11-24")]
    status, body = call("report_sites", site_id="s1", to="2026-11-23")
    assert [(r["site_id"], r["local_day"], r["event_count"]) for r in body["rows"]] == [("s1", "2026-11-23", 10)]
    status, body = call("report_devices", health="silent")
    assert status == 200 and body == {"rows": []}


@pytest.mark.timeout(60)
def test_the_page_is_self_contained_with_a_strict_policy(dash_env) -> None:
    dash_env()
    request = func.HttpRequest("GET", "http://localhost/api/dashboard", params={}, route_params={}, body=b"")
    response = user_function("dashboard")(request)
    page = response.get_body().decode()
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "/*SCRIPT*/" not in page and "/*STYLE*/" not in page
    assert "<script src" not in page and "stylesheet" not in page and "https://" not in page
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "unsafe" not in policy


def _timer():
    from azure.functions.timer import TimerRequest

    return TimerRequest(past_due=False)


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own: INFO stats are server-wide, the shared one's move with others' tests."""
    import socket
    import subprocess

    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        poll(pings, 10, "the private redis-server")
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(("hits", "misses"), [(30_000, 1), (1, 30_000)])
def test_the_cache_hit_rate_is_not_rounded_to_its_ends(private_redis, hits: int, misses: int) -> None:
    """Rounded to 4 places, 30,000 hits and 1 miss read as 1.0, which the page shows as "100.0 %" (no miss at all),
    and 1 hit in 30,001 reads as 0.0: the page's ">99.9 %" and "<0.1 %" never applied."""
    from shared.adapters.redis_dashboard import RedisCacheStats

    private_redis.config_resetstat()
    private_redis.set("present", "1")
    pipe = private_redis.pipeline(transaction=False)
    for _ in range(hits):
        pipe.get("present")
    for i in range(misses):
        pipe.get(f"absent-{i}")
    pipe.execute()
    assert RedisCacheStats(private_redis).hit_rate() == hits / (hits + misses)
