"""The ``enrichment`` timer function as the host indexes and calls it, wired by ``shared.bootstrap`` from settings.

Also covers the Parquet-on-Blob reference source (Azurite) end to end: the
bootstrap picks it from ``SLUICE_ENRICH_REFERENCE_SOURCE=parquet``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobServiceClient

from shared import bootstrap
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations as apply_cassandra
from shared.adapters.postgres.migrations import apply_migrations as apply_postgres
from shared.adapters.reference import upload_reference, upsert_reference
from shared.domain.enrichment import DeviceRef, SiteRef
from sluice.launcher import Running
from tests.fixtures.functions import HostContext, registered, user_function
from tests.integration.test_enrichment import make_event

pytestmark = pytest.mark.timeout(120)


def test_the_app_registers_a_timer_on_the_schedule_setting() -> None:
    function = registered("enrichment")
    trigger = function.get_trigger()
    assert trigger.get_binding_name() == "timerTrigger"
    assert trigger.schedule == "%SLUICE_ENRICH_SCHEDULE%"


@pytest.fixture
def environment(cassandra_emulator: Running, cassandra_keyspace: str, pg_dsn: str, azurite_connection_string: str,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    values = {
        "AzureWebJobsStorage": azurite_connection_string,
        "SLUICE_CASSANDRA_HOSTS": cassandra_emulator.host,
        "SLUICE_CASSANDRA_PORT": str(cassandra_emulator.port),
        "SLUICE_CASSANDRA_KEYSPACE": cassandra_keyspace,
        "SLUICE_CASSANDRA_SHARDS": "2",
        "SLUICE_CRITICAL_RULES": '[{"measurement": "temperature", "op": ">", "value": 90}]',
        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "SLUICE_POSTGRES_HOST": str(pg["host"]),
        "SLUICE_POSTGRES_PORT": str(pg.get("port", 5432)),
        "SLUICE_POSTGRES_DBNAME": str(pg["dbname"]),
        "SLUICE_POSTGRES_USER": str(pg.get("user", "postgres")),
        "SLUICE_POSTGRES_PREPARE_THRESHOLD": "none",  # as behind PgBouncer in transaction mode
        "SLUICE_ENRICH_INITIAL_LOOKBACK_SECONDS": "1800",
        "SLUICE_ENRICH_REFERENCE_CONTAINER": f"ref-{uuid.uuid4().hex[:12]}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    apply_cassandra(bootstrap.cassandra_session(), bootstrap.settings().cassandra)
    with bootstrap.postgres_pool().connection() as conn:
        apply_postgres(conn)
    yield values
    bootstrap.reset()


def _send_recent(now: datetime) -> list:
    cfg = bootstrap.settings()
    store = CassandraEventStore(bootstrap.cassandra_session(), cfg.cassandra, cfg.rules.critical_rules)
    # 20 minutes ago: inside the 30-minute initial lookback and in a window closed long ago
    events = [make_event("dev-p", now - timedelta(minutes=20), measurements={"temperature": 30.0}),
              make_event("dev-q", now - timedelta(minutes=20), measurements={"temperature": 95.0})]
    store.write(events)
    return events


@pytest.mark.parametrize("source", ["postgres", "parquet"])
def test_the_timer_enriches_with_either_reference_source(environment: dict[str, str], source: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_ENRICH_REFERENCE_SOURCE", source)
    bootstrap.reset()
    devices = [DeviceRef("dev-p", f"site-{source}", "TX-9", "9.9.9", source)]
    sites = [SiteRef(f"site-{source}", f"Site from {source}", "eu-north", "Europe/Stockholm", 59.3, 18.0)]
    if source == "postgres":
        with bootstrap.postgres_pool().connection() as conn:
            upsert_reference(conn, devices, sites)
    else:
        blobs = BlobServiceClient.from_connection_string(environment["AzureWebJobsStorage"])
        upload_reference(blobs, environment["SLUICE_ENRICH_REFERENCE_CONTAINER"], devices=devices, sites=sites)
    now = datetime.now(UTC)
    sent = _send_recent(now)

    user_function("enrichment")(TimerRequest(past_due=False), HostContext("enrichment"))

    with bootstrap.postgres_pool().connection() as conn:
        rows = conn.execute("SELECT event_id, device_id, known_device, site_id, owner, site_name, critical "
                            "FROM enriched_events ORDER BY device_id").fetchall()
        watermark = conn.execute("SELECT watermark FROM enrichment_state").fetchone()[0]
    assert rows == [
        (sent[0].event_id, "dev-p", True, f"site-{source}", source, f"Site from {source}", False),
        (sent[1].event_id, "dev-q", False, None, None, None, True),
    ]
    # every window that closed (end + 2 minutes lateness <= now) is enriched, and no further
    assert now - timedelta(minutes=7) < watermark <= now - timedelta(minutes=2)


def test_the_cli_runs_lists_unknown_devices_and_backfills(environment: dict[str, str],
                                                          capsys: pytest.CaptureFixture) -> None:
    from sluice.__main__ import main

    now = datetime.now(UTC)
    sent = _send_recent(now)
    assert main(["enrich", "run", "--until-done"]) == 0
    assert "enriched " in capsys.readouterr().out
    assert main(["enrich", "unknown-devices"]) == 0
    listing = capsys.readouterr().out
    assert "dev-q" in listing and "dev-p" in listing  # no reference data loaded: both unknown

    with bootstrap.postgres_pool().connection() as conn:
        upsert_reference(conn, [DeviceRef("dev-p", "s1"), DeviceRef("dev-q", "s1")], [SiteRef("s1", "Site 1")])
    start = (now - timedelta(minutes=25)).isoformat()
    assert main(["backfill", "--start", start, "--end", now.isoformat()]) == 0  # with the rich progress bar
    out = capsys.readouterr().out
    assert "backfilled" in out and "2 events (0 of unknown devices)" in out
    assert main(["enrich", "unknown-devices"]) == 0
    assert "no unknown devices" in capsys.readouterr().out
    with bootstrap.postgres_pool().connection() as conn:
        assert conn.execute("SELECT count(*) FROM enriched_events WHERE site_id = 's1'").fetchone() == (len(sent),)
    assert main(["enrich", "status"]) == 0
    assert "watermark: " in capsys.readouterr().out
    assert main(["backfill", "--start", now.isoformat(), "--end", start]) != 0
