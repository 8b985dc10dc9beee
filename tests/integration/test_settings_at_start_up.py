"""Settings that the stores would read otherwise than written are refused at start-up, naming the variable.

Real stores only: the machine's PostgreSQL and Redis (``tests/fixtures/services.py``) and the Cassandra emulator
(``tests/fixtures/cassandra.py``); clients are built the way ``shared.bootstrap`` builds them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from shared import bootstrap
from shared.adapters.cassandra.migrations import apply_migrations as apply_cassandra
from shared.adapters.cassandra.session import connect
from shared.adapters.postgres.enrichment_store import PostgresEnrichmentStore
from shared.adapters.postgres.migrations import apply_migrations as apply_postgres
from shared.adapters.postgres.pool import make_pool
from shared.exceptions import ConfigurationError
from shared.settings import PostgresSettings, load_settings
from sluice.launcher import Running

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE: dict[str, str] = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]


@pytest.fixture
def sample_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The process environment holding exactly the sample's settings (what ``func start`` would hand the worker),
    bootstrap's cached clients cleared before and after."""
    for name in list(os.environ):
        if name.startswith(("SLUICE_", "AzureWebJobsStorage", "EventHubConnection", "APPLICATIONINSIGHTS_", "OTEL_")):
            monkeypatch.delenv(name)
    for name, value in SAMPLE.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    yield monkeypatch
    bootstrap.reset()


# --- 1. SLUICE_REDIS_URL: host, port and options are not checked, redis-py reads them otherwise ----------------

@pytest.mark.parametrize("template", [
    "redis://:{port}/0",               # the host left out (e.g. an empty ${REDIS_HOST} in a template)
    "redis://{host}:0/0",              # port 0
    "redis://{host}:70000/0",          # a port out of range
    "redis://{host}:{port}/0?ssl=true",  # an option redis-py does not know (StackExchange.Redis spelling)
], ids=["no-host", "port-0", "port-out-of-range", "unknown-option"])
def test_a_redis_url_that_redis_py_would_not_take_as_written_is_refused_at_start_up(
        redis_url: str, sample_env: pytest.MonkeyPatch, template: str) -> None:
    """``SLUICE_REDIS_URL`` names the host and port Sluice connects to, and a value that cannot
    be used as written stops start-up with a ``ConfigurationError`` naming ``SLUICE_REDIS_URL``.

    Why: docs/configuration.md: "A missing or invalid value stops the first invocation with one error that names
    **every** bad variable"; the other stores' ports are checked (``SLUICE_CASSANDRA_PORT``/``SLUICE_POSTGRES_PORT``
    1..65535, port 0 refused) and ``SLUICE_KEYVAULT_URL``/``AzureWebJobsStorage__blobServiceUri`` are refused when
    they "name no host". ``RedisSettings._redis_scheme`` checks only the scheme, a password and the TLS options.

    Was: redis-py's ``parse_url`` reads a URL without a host as ``localhost``, drops port 0 (``if url.port:``) and
    connects to 6379, raises a bare ``ValueError`` for a port out of range and passes an unknown query option
    (``?ssl=true``) to the connection class, which raises ``TypeError``. The settings accept all four, so the
    worker either silently talks to another Redis than the one configured, or fails at the first cache use
    with an error that names no setting (and is not ``DependencyUnavailable``, so the lookups do not even bypass).
    """
    parts = urlsplit(redis_url)
    url = template.format(host=parts.hostname, port=parts.port or 6379)
    sample_env.setenv("SLUICE_REDIS_URL", url)
    try:
        load_settings()
    except ConfigurationError as exc:
        assert "SLUICE_REDIS_URL" in str(exc)
        return
    connection = bootstrap.redis_client()  # as the change feed and the status page get it
    try:
        client = connection.client()
        client.ping()
        kwargs = client.connection_pool.connection_kwargs
        outcome = f"answered PING from {kwargs.get('host') or 'localhost'}:{kwargs.get('port') or 6379}"
    except Exception as exc:
        outcome = f"failed at its first use with {type(exc).__name__}: {exc}"
    pytest.fail(f"SLUICE_REDIS_URL={url} was accepted at start-up; the client bootstrap builds from it {outcome}")


# --- 2. SLUICE_CASSANDRA_LOCAL_DC keeps surrounding whitespace, and no node is ever used ---------------------

def test_whitespace_around_the_local_data_center_is_not_taken_for_part_of_its_name(
        cassandra_emulator: Running) -> None:
    """``SLUICE_CASSANDRA_LOCAL_DC=" datacenter1 "`` is either trimmed (and the session connects
    to the data center of that name) or refused at start-up naming ``SLUICE_CASSANDRA_LOCAL_DC``.

    Why: the README's table: "Local data center (Cosmos DB: the region, e.g. `West Europe`)": Cosmos DB's names hold
    spaces, so they get quoted in app settings and YAML, and a stray one at either end is an easy slip. The contact
    points of the same group are trimmed (``_split_csv``), and docs/configuration.md promises that an invalid value
    stops start-up with an error naming the variable.

    Was: the value is kept as written and handed to ``DCAwareRoundRobinPolicy``; no node's data center equals
    ``"datacenter1 "``, so every node is ignored and ``connect`` fails with ``NoHostAvailable: Unable to connect to
    any servers``: it reads as an outage of a Cassandra that is up (ingest retries, then dead-letters every batch),
    and nothing names the setting.
    """
    from emulators.cassandra.system_tables import DATA_CENTER

    base = dict(SAMPLE, SLUICE_CASSANDRA_HOSTS=cassandra_emulator.host,
                SLUICE_CASSANDRA_PORT=str(cassandra_emulator.port), SLUICE_CASSANDRA_CONNECT_TIMEOUT_SECONDS="3")
    exact = connect(load_settings(dict(base, SLUICE_CASSANDRA_LOCAL_DC=DATA_CENTER)).cassandra)
    exact.cluster.shutdown()  # the name as the cluster spells it connects: only the whitespace differs below

    padded = f" {DATA_CENTER} "
    try:
        settings = load_settings(dict(base, SLUICE_CASSANDRA_LOCAL_DC=padded))
    except ConfigurationError as exc:
        assert "SLUICE_CASSANDRA_LOCAL_DC" in str(exc)
        return
    try:
        session = connect(settings.cassandra)
    except Exception as exc:
        pytest.fail(f"SLUICE_CASSANDRA_LOCAL_DC={padded!r} was accepted at start-up (kept as "
                    f"{settings.cassandra.local_dc!r}), and connecting to the emulator, whose data center is "
                    f"{DATA_CENTER!r}, then failed with {type(exc).__name__}: {exc}")
    session.cluster.shutdown()


# --- 3. SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS outside what PostgreSQL's statement_timeout can hold ----------

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", ["3600000", "0.0004"], ids=["beyond-int-range", "under-a-millisecond"])
def test_the_enrichment_statement_timeout_is_a_timeout_postgresql_can_apply(pg_dsn: str, value: str) -> None:
    """a ``SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS`` that passes start-up is applied as the
    enrichment transaction's ``statement_timeout``; one that PostgreSQL cannot apply is refused at start-up naming
    the variable.

    Why: the README's table: "PostgreSQL statement_timeout of the enrichment transaction", validated at start-up
    (``gt=0``, so a timeout is always meant to be on); docs/configuration.md: an invalid value stops start-up with
    an error naming it.

    Was: the field has no upper bound and ``PostgresEnrichmentStore`` sends ``int(seconds * 1000)`` milliseconds.
    ``3600000`` (an hour written in milliseconds into a *_SECONDS setting) is 3.6e9 ms, beyond PostgreSQL's
    integer range for ``statement_timeout``: every enrichment transaction then fails with ``InvalidParameterValue``
    (not even a ``TransientError``), run after run, naming ``statement_timeout`` rather than the setting. A value
    under a millisecond is truncated to ``0``, which PostgreSQL reads as "no timeout": the opposite of the setting.
    (``PostgresReports`` guards the low end with ``max(1, ...)``; the enrichment store does not.)
    """
    try:
        settings = load_settings(dict(SAMPLE, SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS=value))
    except ConfigurationError as exc:
        assert "SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS" in str(exc)
        return
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_postgres(conn)
    pool = make_pool(pg_dsn, PostgresSettings(host="unused", pool_min_size=0, pool_max_size=1,
                                              pool_timeout_seconds=10))
    try:
        store = PostgresEnrichmentStore(pool, statement_timeout_seconds=settings.enrichment.statement_timeout_seconds)
        try:
            store.load_state(T0)
        except psycopg.Error as exc:
            pytest.fail(f"SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS={value} was accepted at start-up, and every "
                        f"enrichment transaction then fails: {type(exc).__name__}: {exc}")
        with store._transaction("reading the timeout in force") as conn:
            row = conn.execute("SHOW statement_timeout").fetchone()
        assert row is not None
        assert row[0] != "0", (f"SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS={value} was accepted at start-up, and the "
                               "enrichment transaction runs with statement_timeout=0: no timeout at all")
    finally:
        pool.close()


# --- 4. SLUICE_POSTGRES_HOST keeps surrounding whitespace (and whitespace alone passes for a host) ------------

def test_whitespace_around_the_postgres_host_is_not_taken_for_part_of_its_name() -> None:
    """``SLUICE_POSTGRES_HOST`` with a space at either end is trimmed (and the pool reaches that
    host) or refused at start-up naming ``SLUICE_POSTGRES_HOST``; whitespace alone is refused like an unset value.

    Why: ``SLUICE_POSTGRES_HOST`` is **required** (README's table), and docs/configuration.md: "A missing or invalid
    value stops the first invocation with one error that names **every** bad variable". The Cassandra contact points
    of the same settings are trimmed (``_split_csv``), and a blank list of them is refused ("List should have at
    least 1 item"); ``SLUICE_REDIS_URL`` with a leading space is refused too.

    Was: ``PostgresSettings.host`` is a plain ``str``: ``" "`` passes for a host, and ``"127.0.0.1 "`` is handed to
    libpq as it stands, which cannot resolve it. The pool only logs its failed attempts, so the enrichment and the
    reports see a ``PoolTimeout`` after ``SLUICE_POSTGRES_POOL_TIMEOUT_SECONDS`` (30 s by default), as if the
    server were down, and nothing names the setting.
    """
    from tests.fixtures.services import PG_ADMIN_DSN

    server = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    host = str(server.get("host", "127.0.0.1"))
    base = dict(SAMPLE, SLUICE_POSTGRES_PORT=str(server.get("port", 5432)), SLUICE_POSTGRES_USER=str(server["user"]),
                SLUICE_POSTGRES_DBNAME="postgres", SLUICE_POSTGRES_POOL_MIN_SIZE="0",
                SLUICE_POSTGRES_POOL_TIMEOUT_SECONDS="3")
    with pytest.raises(ConfigurationError, match="SLUICE_POSTGRES_HOST"):
        load_settings({name: value for name, value in base.items() if name != "SLUICE_POSTGRES_HOST"})  # sanity

    problems = []
    for padded in (" ", f"{host} "):
        try:
            cfg = load_settings(dict(base, SLUICE_POSTGRES_HOST=padded)).postgres
        except ConfigurationError as exc:
            assert "SLUICE_POSTGRES_HOST" in str(exc)
            continue
        if padded.strip() == "":
            problems.append(f"SLUICE_POSTGRES_HOST={padded!r} was accepted at start-up as the host {cfg.host!r}")
            continue
        pool = make_pool(cfg.conninfo(), cfg)  # as bootstrap.postgres_pool builds it (no password: trust)
        try:
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            problems.append(f"SLUICE_POSTGRES_HOST={padded!r} was accepted at start-up (kept as {cfg.host!r}), and "
                            f"the pool then failed with {type(exc).__name__}: {exc}")
        finally:
            pool.close()
    assert not problems, "; ".join(problems)


# --- 5. EventHubConnection is the host's, and was read first when a lag reader was built --------------------------

def test_a_malformed_event_hubs_connection_stops_every_pods_start_not_the_status_page(
        sample_env: pytest.MonkeyPatch) -> None:
    """``EventHubConnection`` (with its ``__credential``) is what ingest's trigger connects with, and what every pod
    serving ``/api/status`` reads the lag with; every Deployment takes it from the one ConfigMap.

    Was: ``load_settings`` did not check it. A lookups pod with a connection string naming no endpoint and a bad
    ``__credential`` started; building its status service built the lag reader, which raised
    ``ConfigurationError``, so ``/api/status`` and ``/api/critical`` failed whole (500) and the page showed
    "status unavailable" for Cassandra, Redis, PostgreSQL and storage too. Now the startup probe's check and the
    worker's start refuse it, naming both variables, never the key."""
    sample_env.setenv("EventHubConnection", "Endpoint=;SharedAccessKeyName=k;SharedAccessKey=hunter2")
    sample_env.setenv("EventHubConnection__credential", "secret")
    with pytest.raises(ConfigurationError) as probe:
        load_settings()  # every Deployment's startup probe
    with pytest.raises(ConfigurationError) as worker:
        bootstrap.start_worker()  # the readiness probe's request and every first invocation
    for refused in (probe, worker):
        message = str(refused.value)
        assert "EventHubConnection is set but names no endpoint" in message, message
        assert "EventHubConnection__credential='secret'" in message, message
        assert "hunter2" not in message


# --- 6. A value wrapped in quotes (a .env file, docker --env-file) was taken with its quotes ----------------------

def test_a_quoted_postgres_host_is_refused_at_start_up_not_failed_at_every_connection(pg_dsn: str) -> None:
    """``SLUICE_POSTGRES_HOST="127.0.0.1"`` (quotes included) was accepted: libpq then looks up the host
    ``"127.0.0.1"`` and every enrichment run fails as if PostgreSQL were down, never named as a configuration error.
    Refused at start-up naming the variable (the unquoted value reaches the server)."""
    dbname = str(psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"])
    good = load_settings(dict(SAMPLE, SLUICE_POSTGRES_DBNAME=dbname))
    with psycopg.connect(good.postgres.conninfo(), connect_timeout=5) as conn:
        conn.execute("SELECT 1")
    with pytest.raises(ConfigurationError, match="SLUICE_POSTGRES_HOST: the value is wrapped in quotes"):
        load_settings(dict(SAMPLE, SLUICE_POSTGRES_DBNAME=dbname, SLUICE_POSTGRES_HOST='"127.0.0.1"'))


# --- 7. The bucket layout was checked by the migration only ---------------------------------------------------------

def test_a_worker_whose_bucket_layout_differs_from_the_recorded_one_does_not_start(
        cassandra_emulator: Running, sample_env: pytest.MonkeyPatch) -> None:
    """A worker started with ``SLUICE_CASSANDRA_SHARDS=4`` against a keyspace migrated with 8 (the ConfigMap edited,
    pods restarted, no migration run) built its services and read and wrote with the other layout: the portable
    feed and enrichment never scanned shards 4-7, hiding stored rows without an error. Bootstrap's Cassandra session
    now compares the settings with ``sluice_meta.bucket_layout`` once and stops with the migration's error; a
    keyspace not yet migrated passes."""
    keyspace = f"ks_{uuid.uuid4().hex[:12]}"
    base = dict(SLUICE_CASSANDRA_HOSTS=cassandra_emulator.host, SLUICE_CASSANDRA_PORT=str(cassandra_emulator.port),
                SLUICE_CASSANDRA_KEYSPACE=keyspace, SLUICE_CHANGEFEED_MODE="portable")
    for name, value in base.items():
        sample_env.setenv(name, value)
    bootstrap.cassandra_session()  # not migrated yet: nothing recorded, nothing to compare
    bootstrap.reset()
    migrated = load_settings(dict(SAMPLE, **base, SLUICE_CASSANDRA_SHARDS="8")).cassandra
    session = connect(migrated, keyspace="system")
    try:
        apply_cassandra(session, migrated)
    finally:
        session.cluster.shutdown()
    sample_env.setenv("SLUICE_CASSANDRA_SHARDS", "8")
    bootstrap.changefeed_service()  # the recorded layout: fine
    bootstrap.reset()
    sample_env.setenv("SLUICE_CASSANDRA_SHARDS", "4")
    with pytest.raises(ConfigurationError, match="bucket layout"):
        bootstrap.changefeed_service()  # the portable feed scans the bucket shards by this layout
