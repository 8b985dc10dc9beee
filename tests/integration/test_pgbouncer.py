"""Enrichment and the reporting queries through PgBouncer in transaction mode (Debian's ``pgbouncer``).

Azure Flexible Server's built-in PgBouncer pools per transaction, so a session's
prepared statements, temporary tables and ``SET`` do not survive from one
transaction to the next. The enrichment scenarios of ``test_enrichment`` run here
again, unchanged, with their pool behind PgBouncer and prepared statements off
(``SLUICE_POSTGRES_PREPARE_THRESHOLD=none``, the documented setting); the figures
are still checked over a direct connection.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from azure.keyvault.secrets import SecretClient

from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations as apply_cassandra
from shared.adapters.keyvault import KeyVaultSecrets
from shared.adapters.postgres.enrichment_store import PostgresEnrichmentStore
from shared.adapters.postgres.migrations import apply_migrations as apply_postgres
from shared.adapters.postgres.pool import make_pool
from shared.adapters.postgres.reports import PostgresReports
from shared.adapters.reference import upsert_reference
from shared.adapters.secrets import RotatingSecret
from shared.settings import CassandraSettings, PostgresSettings
from sluice.launcher import Running
from sluice.secured import LocalPgBouncer
from tests.fixtures.keyvault import KeyVaultEmulator, unique_secret_name
from tests.fixtures.pgbouncer import through_pgbouncer

# The scenarios, collected again here: they take this module's ``stack`` (through PgBouncer).
from tests.integration.test_enrichment import (  # noqa: F401
    DEVICES,
    RULES,
    SITES,
    T0,
    Stack,
    W,
    build_service,
    database_time_zone,
    random_events,
    shared_session,
    test_a_reference_change_shows_in_the_next_windows,
    test_an_event_id_reused_in_a_new_window_moves_there_and_the_rest_of_the_window_is_stored,
    test_late_events_recompute_their_window,
    test_prepared_statements_survive_the_staging_tables_being_recreated,
    test_rerunning_changes_nothing,
    test_window_figures_match_an_independent_computation,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stack(cassandra_emulator: Running, cassandra_keyspace: str, pg_dsn: str, shared_session,  # noqa: F811
          pgbouncer: LocalPgBouncer) -> Iterator[Stack]:
    cassandra = CassandraSettings(hosts=[cassandra_emulator.host], port=cassandra_emulator.port,
                                  keyspace=cassandra_keyspace, shards=4, bucket_seconds=60, consistency="ONE")
    apply_cassandra(shared_session, cassandra)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # migrations take a session lock: run them directly
        apply_postgres(conn)
        upsert_reference(conn, DEVICES, SITES)
    pool = make_pool(through_pgbouncer(pgbouncer, pg_dsn),
                     PostgresSettings(host="unused", pool_min_size=1, pool_max_size=3, prepare_threshold=None))
    with pool.connection() as conn:
        assert conn.execute("SHOW port").fetchone() == ("5432",) and conn.info.port == pgbouncer.port
    service = build_service(shared_session, cassandra_keyspace, cassandra, pool)
    PostgresEnrichmentStore(pool).load_state(T0)
    yield Stack(cassandra_keyspace, pg_dsn, shared_session, CassandraEventStore(shared_session, cassandra, RULES), pool,
                service, [])
    pool.close()


def test_the_reporting_queries_answer_through_pgbouncer(stack: Stack) -> None:
    stack.send(random_events(random.Random(3), T0, 2 * W, 120))
    stack.service.run(now=T0 + 2 * W + timedelta(minutes=2))
    reports = PostgresReports(stack.pool, timeout=5)
    for _ in range(3):  # more rounds than pooled server connections: every query on whichever server connection
        position = reports.enrichment()
        assert position is not None
        days = reports.site_daily(site_id=None, day_from=None, day_to=None, limit=100)
        assert {row["site_id"] for row in days} >= {"site-a", "site-b"}
        assert reports.device_health(site_id="site-a", health=None, limit=10)


def test_prepared_statements_break_through_transaction_pooling_and_the_setting_avoids_them(
        pg_dsn: str, pgbouncer: LocalPgBouncer) -> None:
    """The fixture really pools per transaction: two clients share one server session, so their prepared
    statements collide; with ``prepare_threshold=None`` (the documented setting) nothing is prepared."""
    dsn = through_pgbouncer(pgbouncer, pg_dsn)
    query = "SELECT count(*) FROM pg_class WHERE relname = %s"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as a, \
            psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as b:
        a.execute(query, ("x",))
        with pytest.raises((psycopg.errors.DuplicatePreparedStatement, psycopg.errors.InvalidSqlStatementName)):
            for _ in range(3):
                b.execute(query, ("y",))
                a.execute(query, ("z",))
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as a, \
            psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as b:
        for _ in range(3):
            assert a.execute(query, ("x",)).fetchone() == (0,)
            assert b.execute(query, ("y",)).fetchone() == (0,)


def test_the_pools_utc_session_time_zone_holds_through_transaction_pooling(pg_dsn: str,
                                                                           pgbouncer: LocalPgBouncer) -> None:
    """The pool sets each new session's time zone to UTC with a ``SET`` (PgBouncer refuses libpq's ``options``
    startup parameter): ``TimeZone`` is a parameter PgBouncer tracks per client and sets on whichever server
    connection serves it, so every transaction of the pool reads UTC, while another client sharing the server
    connections keeps the database's zone."""
    dsn = through_pgbouncer(pgbouncer, pg_dsn)
    with database_time_zone(pg_dsn, "Europe/Paris"), psycopg.connect(dsn, autocommit=True) as other:
        pool = make_pool(dsn, PostgresSettings(host="unused", pool_min_size=1, pool_max_size=1, prepare_threshold=None))
        try:
            for _ in range(3):
                with pool.connection() as conn:
                    assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
                    assert conn.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
                assert other.execute("SHOW TimeZone").fetchone() == ("Europe/Paris",)
        finally:
            pool.close()


def _bootstrap_pool(monkeypatch: pytest.MonkeyPatch, conninfo: str, **values: str) -> object:
    """``bootstrap.postgres_pool()`` as a worker builds it, with settings that reach ``conninfo``'s database."""
    import json
    from functools import cache
    from pathlib import Path

    from shared import bootstrap
    from shared.settings import load_settings

    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    sample = json.loads((Path(__file__).resolve().parents[2] / "local.settings.sample.json").read_text())["Values"]
    loaded = load_settings({**sample, "SLUICE_POSTGRES_HOST": str(parts.get("host", "127.0.0.1")),
                            "SLUICE_POSTGRES_PORT": str(parts.get("port", "5432")),
                            "SLUICE_POSTGRES_DBNAME": str(parts["dbname"]),
                            "SLUICE_POSTGRES_USER": str(parts.get("user", "postgres")),
                            "SLUICE_POSTGRES_PASSWORD": str(parts.get("password", "")), **values})
    monkeypatch.setattr(bootstrap, "settings", cache(lambda: loaded))
    bootstrap.reset()
    try:
        pool = bootstrap.postgres_pool()
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        return pool
    finally:
        bootstrap.reset()


def test_prepared_statements_through_transaction_pooling_are_refused_when_the_pool_is_built(
        pg_dsn: str, pgbouncer: LocalPgBouncer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule (docs/security.md): behind PgBouncer in transaction mode, server-side prepared statements are off
    (``SLUICE_POSTGRES_PREPARE_THRESHOLD=none``). Was: the PgBouncer port with the default threshold (5) was taken,
    and every query prepared after its fifth run then failed now and then, on whichever server connection served
    the next transaction (``prepared statement "_pg3_0" does not exist``, ``... already exists``): the site report
    and the status said "postgres unavailable: ... DuplicatePreparedStatement" while PostgreSQL was up. Now the
    worker refuses to build the pool, naming the setting; directly, or with the threshold off, it is built."""
    from shared.exceptions import ConfigurationError

    through = through_pgbouncer(pgbouncer, pg_dsn)
    with pytest.raises(ConfigurationError, match="SLUICE_POSTGRES_PREPARE_THRESHOLD=none"):
        _bootstrap_pool(monkeypatch, through, SLUICE_POSTGRES_PREPARE_THRESHOLD="5")
    assert _bootstrap_pool(monkeypatch, through, SLUICE_POSTGRES_PREPARE_THRESHOLD="none")
    assert _bootstrap_pool(monkeypatch, pg_dsn, SLUICE_POSTGRES_PREPARE_THRESHOLD="5")


def test_migrations_through_pgbouncer_are_refused_naming_the_direct_port(pg_dsn: str,
                                                                         pgbouncer: LocalPgBouncer) -> None:
    """Rule (docs/enrichment.md): migrate runs against PostgreSQL itself, not through PgBouncer. Was: through
    transaction pooling the session advisory lock and its release could run on different server connections, so
    the lock kept no two runs apart and stayed held by a pooled server session. Now the runner sees that the server
    process answering is not the one it logged in to, and refuses before taking the lock."""
    from shared.exceptions import ConfigurationError

    through = through_pgbouncer(pgbouncer, pg_dsn)
    with psycopg.connect(through, autocommit=True, prepare_threshold=None) as conn, \
            pytest.raises(ConfigurationError, match=r"connection pooler \(PgBouncer\).*port 5432"):
        apply_postgres(conn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone() == (0,)
        assert apply_postgres(conn)  # directly, it runs


def test_a_pool_behind_pgbouncer_picks_up_a_rotated_password(pgbouncer: LocalPgBouncer,
                                                              keyvault_emulator: KeyVaultEmulator,
                                                              keyvault_client: SecretClient) -> None:
    """Rule (docs/security.md, "Rotation without a restart"): a log-in PgBouncer refuses for its password re-reads
    the secret and connects again with the vault's new value, as one PostgreSQL refuses does. Was: PgBouncer with
    ``auth_type = scram-sha-256`` (Azure's built-in PgBouncer on 6432) says ``SASL authentication failed``, not
    PostgreSQL's ``password authentication failed``; the refusal was not recognised, the secret never re-read, and
    the pool retried the stale cached password until the worker restarted."""
    name = unique_secret_name("pgbouncer")
    keyvault_client.set_secret(name, "the-password-before-the-rotation")
    vault = KeyVaultSecrets(keyvault_emulator.url, ca_file=str(keyvault_emulator.ca_file))
    try:
        secret = RotatingSecret(name, lambda: vault.fetch(name), min_interval=0.3)
        assert secret.value() == "the-password-before-the-rotation"  # read before the rotation, as at bootstrap
        keyvault_client.set_secret(name, pgbouncer.password)  # vault first; the store (PgBouncer) holds it too
        cfg = PostgresSettings(host=pgbouncer.host, port=pgbouncer.port, dbname="postgres", user=pgbouncer.user,
                               prepare_threshold=None, pool_min_size=0, pool_max_size=1, pool_timeout_seconds=5)
        with make_pool(cfg.conninfo(), cfg, password=secret) as pool, pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert secret.value() == pgbouncer.password
    finally:
        vault.close()
