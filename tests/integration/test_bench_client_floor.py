"""``bench._e2e_client_floor``: the raw clients handle every event of the run once, in every part, and clean up.

Against the Event Hubs and Cassandra emulators through the real SDK and driver, and the real
PostgreSQL and Redis: ``bench e2e`` divides each part's CPU by the events of the run, so a
part that read a page too few, wrote into the pipeline's own keyspace, or left its keys in
Redis would make the clients' ceiling wrong, or the stack dirty, without anyone noticing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from azure.eventhub import EventData, EventHubProducerClient

from bench.ingest import RULES, synthetic_bodies
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations as apply_cassandra
from shared.adapters.cassandra.session import connect
from shared.adapters.postgres.migrations import apply_migrations as apply_postgres
from shared.domain.events import Limits, RawRecord, parse_records
from shared.settings import CassandraSettings
from tests.fixtures.azurite import connection_string

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 60
DEVICES = 7
FEED_PAGE = 25  # three pages of the change feed


def _send(connection: str, hub: str, records: list[RawRecord]) -> None:
    """The records' bodies, spread over every partition."""
    with EventHubProducerClient.from_connection_string(connection, eventhub_name=hub) as producer:
        partitions = producer.get_partition_ids()
        for index, partition in enumerate(partitions):
            batch = producer.create_batch(partition_id=partition)
            for record in records[index::len(partitions)]:
                batch.add(EventData(record.body))
            producer.send_batch(batch)


def _floor(hub: Any, values: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIENT_FLOOR_VALUES": json.dumps(values), "CLIENT_FLOOR_EVENTHUB": hub.connection_string}
    return subprocess.run([sys.executable, "-m", "bench._e2e_client_floor", "--hub", hub.name, "--batch", "16",
                           *args], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture
def stores(cassandra_emulator: Any, cassandra_keyspace: str, pg_dsn: str, redis_url: str,
           redis_prefix: str) -> dict[str, str]:
    """Settings ``Values`` naming a keyspace and a database with the pipeline's schema, and a Redis prefix."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_postgres(conn)
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    return {
        "AzureWebJobsStorage": connection_string(10000),  # never connected to
        "SLUICE_CASSANDRA_HOSTS": cassandra_emulator.host, "SLUICE_CASSANDRA_PORT": str(cassandra_emulator.port),
        "SLUICE_CASSANDRA_KEYSPACE": cassandra_keyspace,
        "SLUICE_POSTGRES_HOST": str(pg.get("host", "127.0.0.1")), "SLUICE_POSTGRES_PORT": str(pg.get("port", 5432)),
        "SLUICE_POSTGRES_DBNAME": str(pg["dbname"]), "SLUICE_POSTGRES_USER": str(pg.get("user", "postgres")),
        "SLUICE_REDIS_URL": redis_url, "SLUICE_REDIS_KEY_PREFIX": redis_prefix,
        "SLUICE_CHANGEFEED_PAGE_SIZE": str(FEED_PAGE),
    }


@pytest.mark.timeout(240)
def test_every_part_handles_every_event_once_and_nothing_is_left_behind(
        isolated_eventhub: Any, stores: dict[str, str]) -> None:
    records = [RawRecord(r.body.replace(b'"severity": "info"', b'"severity": "critical"'), r.metadata)
               if index % 10 == 0 else r for index, r in enumerate(synthetic_bodies(EVENTS, DEVICES))]
    _send(isolated_eventhub.connection_string, isolated_eventhub.name, records)
    keyspace = stores["SLUICE_CASSANDRA_KEYSPACE"]
    settings = CassandraSettings(hosts=[stores["SLUICE_CASSANDRA_HOSTS"]], port=int(stores["SLUICE_CASSANDRA_PORT"]),
                                 keyspace=keyspace)
    session = connect(settings)
    apply_cassandra(session, settings)
    events = parse_records(records, limits=Limits()).oks
    CassandraEventStore(session, settings, RULES).write(events)  # what ingest stored: the floor reads it back

    done = _floor(isolated_eventhub, stores, "--events", str(EVENTS))

    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["events"] == EVENTS
    parts = figures["parts"]
    assert [parts[name]["count"] for name in ("feed", "windows", "postgres")] == [EVENTS] * 3
    assert all(part["cpu"] > 0 for part in parts.values())
    # The writes went to a keyspace of the floor's own, every event's rows; the pipeline's keeps one row each.
    ids = {e.body.event_id for e in events}
    devices = {e.body.device_id for e in events}
    critical = {e.body.event_id for e in events if e.body.severity == "critical"}
    assert len(critical) == EVENTS // 10
    written = {table: {row[0] for row in session.execute(f"SELECT event_id FROM {keyspace}_floor.{table}")}
               for table in ("events_by_id", "events_by_time_bucket", "events_by_device", "critical_events_by_device")}
    assert written == {"events_by_id": ids, "events_by_time_bucket": ids, "events_by_device": ids,
                       "critical_events_by_device": critical}
    latest = session.execute(f"SELECT device_id FROM {keyspace}_floor.device_latest")
    assert {row[0] for row in latest} == devices
    assert session.execute(f"SELECT COUNT(*) FROM {keyspace}.events_by_id").one()[0] == EVENTS
    assert 1 <= parts["writes"]["count"] < EVENTS
    # Per page of the feed, each device's newest event in it; three commands for each critical event, and one for
    # each other event (its lookup-cached copy replaced where one exists); and, as the change feed does, once per
    # device (its latest key missing under the floor's fresh prefix) a second pipeline's latest creating it.
    pages = -(-EVENTS // FEED_PAGE)
    per_event = 3 * len(critical) + (EVENTS - len(critical))
    assert len(devices) <= parts["redis"]["count"] - per_event - len(devices) <= pages * len(devices)
    client = redis.Redis.from_url(stores["SLUICE_REDIS_URL"])
    try:
        assert list(client.scan_iter(match=stores["SLUICE_REDIS_KEY_PREFIX"] + "*")) == []
    finally:
        client.close()
    session.cluster.shutdown()


@pytest.mark.timeout(120)
def test_fewer_events_than_asked_for_is_an_error_that_says_how_many(
        isolated_eventhub: Any, stores: dict[str, str]) -> None:
    records = synthetic_bodies(4, 2)
    _send(isolated_eventhub.connection_string, isolated_eventhub.name, records)

    done = _floor(isolated_eventhub, stores, "--events", "5", "--timeout", "5")

    assert done.returncode != 0
    assert "received 4 of 5 events" in done.stderr
