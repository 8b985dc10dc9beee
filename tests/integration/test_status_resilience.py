"""The operations routes (`/api/status`, `/api/devices/{id}/state`) and the page when a store hangs, fails or is slow.

Each docstring states the rule and, after "Was:", what went wrong before it held.
Real stores through the existing fixtures (PostgreSQL, Redis, Azurite, a private Cassandra emulator so its fault
injection reaches no other module); the only fakes are of Sluice's own ports, and a TCP endpoint of our own that
accepts connections and never answers (a hung dependency).
"""

# ruff: noqa: F811  (fixtures imported, then asked for by name)
from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import azure.functions as func
import psycopg
import pytest

from emulators.cassandra.faults import clear_faults, inject_faults
from shared import bootstrap
from shared.ports.dashboard import BucketFigures, Position
from shared.services.status import StatusService
from tests.fixtures.functions import run, user_function
from tests.integration import test_changefeed as cf
from tests.integration.test_dashboard_api import call, dash_env  # noqa: F401
from tests.integration.test_state_at import app_env, keyspace, rclient, session, state, store  # noqa: F401


@pytest.fixture(scope="module")
def cassandra_emulator(private_cassandra):
    """This module arms emulator faults (server-wide): every fixture here gets the module's own emulator."""
    return private_cassandra


# -- a dependency that accepts TCP and never answers, then recovers -------------------------------------------

class HangingEndpoint:
    """Accepts connections and holds them without a byte of answer; after ``recover()`` new connections are
    forwarded to ``target`` (the real store). Connections accepted while hung stay hung (their requests were lost)."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._recovered = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self._recovered:
                threading.Thread(target=self._forward, args=(conn,), daemon=True).start()
            else:
                self._held.append(conn)

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self._target))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        pump(upstream, client)

    def recover(self) -> None:
        self._recovered = True

    def close(self) -> None:
        self._recovered = True  # the SDK's retries of the held requests then reach the real store
        self._closed = True
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        self._listener.close()


def _azurite_port(connection_string: str) -> int:
    endpoint = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)["BlobEndpoint"]
    return int(endpoint.split(":")[2].split("/")[0])


@pytest.fixture
def hung_blob(app_env, pg_dsn, azurite_connection_string):
    """``dash_env``'s settings (migrated PostgreSQL, no Event Hubs) with Blob storage behind a hanging endpoint."""
    from shared.adapters.postgres.migrations import apply_migrations

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn)
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    port = _azurite_port(azurite_connection_string)
    endpoint = HangingEndpoint(port)
    app_env(AzureWebJobsStorage=azurite_connection_string.replace(f"127.0.0.1:{port}", f"127.0.0.1:{endpoint.port}"),
            SLUICE_STORAGE_DEADLETTER_CONTAINER=f"dl-{uuid.uuid4().hex[:12]}",
            SLUICE_POSTGRES_HOST=str(pg.get("host", "127.0.0.1")), SLUICE_POSTGRES_PORT=str(pg.get("port", "5432")),
            SLUICE_POSTGRES_DBNAME=str(pg["dbname"]), SLUICE_DASHBOARD_STATUS_CACHE_SECONDS="0",
            SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS="0.5", EventHubConnection="")
    yield endpoint
    endpoint.close()


def _errors(body: dict) -> dict[str, dict]:
    return {name: section for name, section in body.items() if isinstance(section, dict) and "error" in section}


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("hung_blob")
def test_a_hung_blob_store_holds_only_its_own_section() -> None:
    """Rule (docs/api.md, README): a section whose store does not answer is an error *in its own section*; the rest
    is still answered. Was: the dead-letter listing has no deadline of its own (the Blob SDK's 60 s read timeout,
    then three retries with 15 s+ back-off), and ``StatusService`` gives up waiting but the thread stays busy. The
    status pool has 7 threads, so after 7 polls every thread is stuck in the listing and the sections of healthy
    stores (Cassandra throughput, change feed, PostgreSQL, Redis, the health checks) queue behind them and all
    report "no answer within ...": the page says everything is down when only Blob storage is."""
    for _ in range(8):  # one page polling for 40 s (or 8 pages once)
        status, body = call("status")
        assert status == 200
    assert set(_errors(body)) == {"dead_letters"}, f"sections in error with only Blob storage hung: {_errors(body)}"


@pytest.mark.timeout(90)
def test_a_hung_postgres_holds_only_the_enrichment_section_of_the_first_status(app_env, pg_dsn,
                                                                               azurite_connection_string) -> None:
    """Rule (docs/api.md): a PostgreSQL that hangs makes only the enrichment section wait, within the section's
    timeout, from a pod's very first ``/api/status`` on. Was: building the status service built the PostgreSQL
    pool, whose prepared-statement check (``refuse_lost_prepared_statements``) connected first, synchronously, with
    a 5 s timeout: each pod's first status (every section of it) and first ``/api/reports/*`` took 6 s."""
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    endpoint = HangingEndpoint(int(pg.get("port", 5432)))
    try:
        app_env(AzureWebJobsStorage=azurite_connection_string,
                SLUICE_STORAGE_DEADLETTER_CONTAINER=f"dl-{uuid.uuid4().hex[:12]}",
                SLUICE_POSTGRES_HOST="127.0.0.1", SLUICE_POSTGRES_PORT=str(endpoint.port),
                SLUICE_DASHBOARD_STATUS_CACHE_SECONDS="0", SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS="1",
                SLUICE_LOOKUP_HEALTH_TIMEOUT_SECONDS="1", EventHubConnection="")
        started = time.monotonic()
        status, body = call("status")
        took = time.monotonic() - started
        assert status == 200, body
        assert body["enrichment"].get("dependency") == "postgres", body["enrichment"]
        assert took < 4.0, f"/api/status took {took:.1f}s with a section timeout of 2 s"
    finally:
        endpoint.close()


@pytest.mark.timeout(180)
def test_status_sections_recover_with_the_hung_store(hung_blob) -> None:
    """Rule: once a dependency answers again, the next status shows it (the page is the operator's view of a
    recovery). Was: the threads stuck in the listings made while the store was hung are not released when it
    recovers (each waits out the SDK's 60 s read timeout and retries), so for a minute or more after Blob storage is
    back every section, dead letters included, still reports "no answer"."""
    endpoint = hung_blob
    for _ in range(8):
        assert call("status")[0] == 200
    endpoint.recover()  # new connections now reach Azurite
    time.sleep(3)
    status, body = call("status")
    assert status == 200
    assert _errors(body) == {}, f"3 s after Blob storage recovered, sections still in error: {_errors(body)}"


# -- one section's unexpected error -------------------------------------------------------------------------

class _Arrivals:
    bucket_seconds = 60

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self._delay = delay
        self._lock = threading.Lock()

    def delayed_since(self, start, end):
        return None

    def buckets(self, reads):
        with self._lock:
            self.calls += 1
        time.sleep(self._delay)
        return [BucketFigures(r.start, 1, [5.0]) for r in reads]


class _Feed:
    def change_feed(self):
        return Position(datetime.now(UTC), datetime.now(UTC))


class _Reports:
    def enrichment(self):
        return Position(datetime.now(UTC), datetime.now(UTC))


class _DeadLetters:
    def count_since(self, since, *, cap):
        return 0, False


class _Cache:
    def hit_rate(self):
        return 0.5


class _BrokenCache:
    def hit_rate(self):
        raise ValueError("invalid literal for int() with base 10: 'n/a'")  # e.g. an unexpected INFO reply


class _Critical:
    def recent(self, limit):
        return []


class _Lag:
    def lag(self):
        return {"0": 0}

    def unreadable(self):
        return {}


def _health():
    return True, {"status": "ok", "dependencies": {"redis": {"status": "up", "latency_ms": 0.1}}}


def _service(*, arrivals=None, cache=None, cache_seconds: float = 0.0) -> StatusService:
    return StatusService(arrivals or _Arrivals(), _Feed(), _Reports(), _DeadLetters(), cache or _Cache(), _Critical(),
                         _Lag(), _health, cache_seconds=cache_seconds, section_timeout=2.0)


@pytest.mark.timeout(60)
def test_an_unexpected_error_in_one_section_is_that_sections_error(app_env, monkeypatch) -> None:
    """Rule (docs/api.md, README "a down store is an error in its own section of the status"): each section fails
    on its own. Was: ``StatusService.status`` catches only ``FutureTimeout`` and ``DependencyUnavailable``; any
    other exception from one section (a reply the adapter did not expect, a ``ConfigurationError`` or
    ``CrossSlotError`` from an adapter, a bug) propagates out of ``status()``, ``_mapped`` does not map it, and
    ``GET /api/status`` is a 500 without a JSON body: the page shows "status unavailable" for every tile."""
    app_env()
    monkeypatch.setattr(bootstrap, "status_service", lambda: _service(cache=_BrokenCache()))
    request = func.HttpRequest("GET", "http://localhost/api/status", params={}, route_params={}, body=b"")
    try:
        response = run(user_function("status")(request))
        outcome = response.status_code
    except Exception as exc:  # what the Functions host answers with a 500
        outcome = f"500 ({type(exc).__name__}: {exc})"
    assert outcome == 200, f"one section's error failed the whole status: {outcome}"


@pytest.mark.timeout(60)
def test_concurrent_status_requests_compute_the_status_once() -> None:
    """Rule (docs/api.md): "A pod computes the status at most once per SLUICE_DASHBOARD_STATUS_CACHE_SECONDS".
    Was: the cache is checked under the lock but the computation runs outside it, so every request that arrives
    while the cached status is stale computes it again: N pages polling together cost N times the store reads (the
    ~70 Cassandra requests, the Blob listing, INFO, the health probes), and the 7 status threads are shared by all
    N computations, so their sections queue behind each other."""
    arrivals = _Arrivals(delay=0.2)
    service = _service(arrivals=arrivals, cache_seconds=60.0)
    start = threading.Barrier(6)

    def poll() -> None:
        start.wait()
        service.status()

    threads = [threading.Thread(target=poll) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert arrivals.calls == 1, f"6 concurrent requests within a 60 s cache computed the status {arrivals.calls} times"


# -- one dependency, one name ----------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.timeout(120)
def test_a_store_the_lag_reader_cannot_read_is_named_as_the_status_names_it_elsewhere(
        isolated_eventhub, azurite_connection_string) -> None:
    """Rule (docs/api.md): a section in error names its dependency, and the page lists each dependency once in its
    header (``eventhubs error``, ``storage error``): it keys that list by the name. Was: the section's own name for
    its store (``eventhubs`` on a timeout, ``storage`` for the dead letters) and the lag reader's (``Event Hubs``,
    ``Blob storage``) differed, so one storage account down showed as two dependencies, ``storage error`` and
    ``Blob storage error``, and Event Hubs as ``Event Hubs`` or ``eventhubs`` depending on how it failed."""
    from azure.eventhub import EventData, EventHubProducerClient
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.blob_deadletter import BlobDeadLetterCounter
    from shared.adapters.eventhub_lag import (
        CachedPartitionLag,
        EventHubBlobLagReader,
        eventhub_client,
        host_checkpoint_source,
    )

    hub_name, connection = isolated_eventhub.name, isolated_eventhub.connection_string
    with EventHubProducerClient.from_connection_string(connection, eventhub_name=hub_name) as producer:
        producer.send_batch([EventData("one")], partition_id="0")  # a partition with events: its checkpoint is read
    down = azurite_connection_string.replace(f"127.0.0.1:{_azurite_port(azurite_connection_string)}",
                                             f"127.0.0.1:{_closed_port()}")
    gone = connection.replace(connection.split("sb://")[1].split(";")[0].rstrip("/"), f"127.0.0.1:{_closed_port()}")
    source = host_checkpoint_source(hub_name, "sluice", connection_string=connection, fully_qualified_namespace=None)
    with BlobServiceClient.from_connection_string(down, retry_total=0) as blobs, \
            BlobServiceClient.from_connection_string(azurite_connection_string) as storage, \
            eventhub_client(hub_name, "sluice", connection_string=connection) as hub, \
            eventhub_client(hub_name, "sluice", connection_string=gone) as unreachable:
        storage_down = StatusService(
            _Arrivals(), _Feed(), _Reports(), BlobDeadLetterCounter(blobs, f"dl-{uuid.uuid4().hex[:12]}"), _Cache(),
            _Critical(), CachedPartitionLag(EventHubBlobLagReader(hub, blobs, source)), _health,
            cache_seconds=0.0, section_timeout=60.0).status()
        hub_down = StatusService(
            _Arrivals(), _Feed(), _Reports(), _DeadLetters(), _Cache(), _Critical(),
            CachedPartitionLag(EventHubBlobLagReader(unreachable, storage, source)), _health,
            cache_seconds=0.0, section_timeout=60.0).status()
    named = {section: body.get("dependency") for section, body in _errors(storage_down).items()}
    assert named == {"dead_letters": "storage", "lag": "storage"}, storage_down
    assert {section: body.get("dependency") for section, body in _errors(hub_down).items()} == {"lag": "eventhubs"}, \
        hub_down


# -- a locked PostgreSQL table drains the pool ------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_a_locked_enrichment_state_does_not_drain_the_pool_of_the_site_report(dash_env, pg_dsn) -> None:
    """Rule (docs/api.md): each read behind the operations routes is bounded by SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS;
    a store that fails is an error *of that section*. Was: ``PostgresReports.enrichment`` (the status's enrichment
    section) sets no ``statement_timeout``/``lock_timeout`` (``_rows`` does, for the reports): with
    ``enrichment_state`` locked (a migration, ``VACUUM FULL``) each status poll leaves a pooled connection waiting on
    the lock for as long as it is held. After 4 polls (``SLUICE_POSTGRES_POOL_MAX_SIZE``) the pool is empty, and
    ``/api/reports/sites``, whose tables are not locked at all, answers 503 (as would the enrichment timer)."""
    dash_env(SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS="0.5", EventHubConnection="")
    assert call("status")[0] == 200 and call("report_sites")[0] == 200  # connected, migrated
    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("LOCK TABLE enrichment_state IN ACCESS EXCLUSIVE MODE")
        try:
            for _ in range(5):
                call("status")
            status, body = call("report_sites")
        finally:
            blocker.rollback()
    assert status == 200, f"report_site_daily (not locked) answered {status} {body}"


# -- dead letters counted by their enqueued day ----------------------------------------------------------------

@pytest.mark.timeout(90)
def test_a_dead_letter_written_now_for_an_older_event_is_counted_in_the_last_hour(dash_env) -> None:
    """Rule (docs/api.md): ``dead_letters.last_hour`` counts dead-letter blobs *modified in the last hour*. Wrong:
    ``BlobDeadLetterCounter`` lists only the day prefixes of the last hour, but a dead letter's name carries the
    Event Hubs *enqueued* day. An event enqueued two days ago and dead-lettered now (ingest catching up on a
    backlog after an outage, within the hub's retention) is under an older prefix and never listed: the tile says 0
    dead letters while they are being written."""
    from shared.adapters.blob_deadletter import BlobDeadLetterSink
    from shared.domain.events import EventMetadata, Rejected

    dash_env(EventHubConnection="")
    container = bootstrap.settings().storage.deadletter_container
    enqueued = datetime.now(UTC) - timedelta(days=2)
    BlobDeadLetterSink(bootstrap.blob_service(), container).put_rejected([Rejected(
        "contract: missing device_id", b'{"bad": true}',
        EventMetadata(partition_id="0", offset="1", sequence_number=42, enqueued_time=enqueued))])
    status, body = call("status")
    assert status == 200
    assert body["dead_letters"].get("last_hour") == 1, f"a dead letter written just now: {body['dead_letters']}"


# -- /state walks up to 367 partitions with no deadline ---------------------------------------------------------

@pytest.mark.timeout(300)
def test_state_at_answers_within_a_bounded_time_when_cassandra_is_slow(app_env, store, cassandra_emulator) -> None:
    """Rule (docs/api.md: 503 when Cassandra cannot answer; the lookups answer 503 after their Cassandra timeout):
    a request answers 200, 404 or 503 within a bound set by the read timeout, not by the data. Wrong:
    ``StateService._find`` reads up to 367 day partitions one after another, each with its own read timeout and no
    deadline for the request. A device whose events are all newer than ``at`` (an audit of a time before its first
    event) costs 368 sequential reads; with Cassandra answering each in 0.6 s (under the 1 s read timeout) the
    request takes ~220 s (Azure's HTTP front end gives up at 230 s; with the default 2 s timeout the worst case is
    ~12 minutes) and then still says 404 instead of 503."""
    app_env(SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS="1")
    now = datetime.now(UTC).replace(microsecond=0)
    store.write([cf.make_event("slow-1", now - timedelta(minutes=1))])
    at = now - timedelta(days=30)
    assert state("slow-1", at)[0] == 404  # connected, prepared; the walk itself
    inject_faults(cassandra_emulator.host, cassandra_emulator.port, error="delay", ratio=1.0, delay_ms=600,
                  applies_to="reads")
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(state("slow-1", at)), daemon=True)
    started = time.monotonic()
    try:
        worker.start()
        worker.join(20)
        waited = time.monotonic() - started
        answered, so_far = not worker.is_alive(), list(outcome)
    finally:
        clear_faults(cassandra_emulator.host, cassandra_emulator.port)
        worker.join(120)
    assert answered, f"no answer after {waited:.0f} s (read timeout 1 s): {so_far}; once faults were cleared: {outcome}"


# -- the page: a down Redis blanks the whole status view ---------------------------------------------------------

class _FunctionServer:
    """A minimal host for the registered HTTP functions the page uses (what ``python -m devhost`` does for them)."""

    ROUTES: ClassVar[dict[str, str]] = {"dashboard": "dashboard", "status": "status", "critical": "critical_feed"}

    def __init__(self) -> None:
        import http.server
        from urllib.parse import parse_qsl, urlsplit

        routes = self.ROUTES

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                name = routes.get(parts.path.removeprefix("/api/"))
                if name is None:
                    self.send_error(404)
                    return
                request = func.HttpRequest("GET", f"http://localhost{self.path}", params=dict(parse_qsl(parts.query)),
                                           route_params={}, body=b"")
                response = run(user_function(name)(request))
                body = response.get_body()
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() not in ("content-type", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Type", f"{response.mimetype}; charset={response.charset}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/dashboard"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.timeout(120)
def test_the_page_still_shows_the_status_when_redis_is_down(hung_blob, monkeypatch) -> None:
    """Rule (README: "a down store is an error in its own section of the status"; docs/api.md: /api/status stays
    200 with the failed section in error): with Redis down the page must still show the tiles of the stores that
    answer (throughput, lag, feed, enrichment, dead letters). Was: ``poll()`` in dashboard.js awaits
    ``Promise.all([api("/status"), api("/critical")])``; ``/api/critical`` is a 503 while Redis is down, so the
    status that did arrive is thrown away and the page only says "status unavailable: redis unavailable ...": every
    tile stays a dash for the whole outage, when the operator most needs the others."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    hung_blob.recover()  # Blob storage is fine in this test
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # a Redis that refuses connections
    monkeypatch.setenv("SLUICE_REDIS_URL", f"redis://127.0.0.1:{dead_port}/0")
    monkeypatch.setenv("SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS", "2")
    bootstrap.reset()
    status, body = call("status")
    assert status == 200 and "error" in body["cache"] and "error" not in body["throughput"], body  # the API is right
    assert call("critical_feed")[0] == 503

    server = _FunctionServer()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(server.url)
        deadline = time.monotonic() + 15
        rendered, updated = None, ""
        while time.monotonic() < deadline:
            rendered = driver.execute_script("return window.sluiceLastStatus || null")
            updated = driver.find_element("id", "updated").text
            if rendered is not None:
                break
            time.sleep(0.5)
        lag_tile = driver.find_element("css selector", '[data-tile="lag"]').text
    finally:
        driver.quit()
        server.close()
    assert rendered is not None, (f"the page drew no status in 15 s with only Redis down: #updated says {updated!r}, "
                                  f"lag tile {lag_tile!r}")
