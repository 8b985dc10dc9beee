"""The whole pipeline: load generator -> Event Hubs emulator -> dev host running function_app.py -> the stores.

Each test gets its own hub, keyspace, PostgreSQL database, Redis key prefix,
dead-letter container and dev host id, so nothing is shared with other tests.
The dev host is a real subprocess (``python -m devhost``) with a generated
local.settings.json; it is SIGKILLed in the middle of the load and restarted, and
the stores must still hold every event exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import redis

from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.session import connect
from shared.adapters.postgres.migrations import apply_migrations as apply_pg_migrations
from shared.domain.times import to_ms
from shared.settings import load_settings
from sluice.delivery import Probe, check_delivery
from sluice.loadgen import EventGenerator, EventHubSender, LoadRunner, LoadSpec, read_manifest
from tests.fixtures.devhost import start_devhost
from tests.fixtures.waiting import poll

ROOT = Path(__file__).resolve().parents[2]
WINDOW_SECONDS = 5
# Enrichment finds late events by Event Hubs enqueued time, re-reading only ``allowed lateness`` before its last
# scan; an event stored later than that after it was enqueued (the dev host is down for a few seconds here) would
# be missed. So the lateness must cover the crash's ingest lag, as it must cover the worst lag in production.
LATENESS_SECONDS = 20
FEATURES = {"ingest", "changefeed", "enrichment"}


def _values(*, hub, cassandra, keyspace, pg_dsn, redis_url, redis_prefix, storage) -> dict[str, str]:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    pg = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    return {
        **sample,
        "AzureWebJobsStorage": storage,
        "EventHubConnection": hub.connection_string,
        "SLUICE_INGEST_EVENTHUB_NAME": hub.name,
        "SLUICE_INGEST_CONSUMER_GROUP": "sluice",
        "SLUICE_STORAGE_DEADLETTER_CONTAINER": f"dl-{uuid.uuid4().hex[:12]}",
        "SLUICE_CASSANDRA_HOSTS": cassandra.host,
        "SLUICE_CASSANDRA_PORT": str(cassandra.port),
        "SLUICE_CASSANDRA_KEYSPACE": keyspace,
        "SLUICE_REDIS_URL": redis_url,
        "SLUICE_REDIS_KEY_PREFIX": redis_prefix,
        "SLUICE_POSTGRES_HOST": str(pg.get("host", "127.0.0.1")),
        "SLUICE_POSTGRES_PORT": str(pg.get("port", "5432")),
        "SLUICE_POSTGRES_DBNAME": str(pg["dbname"]),
        "SLUICE_POSTGRES_USER": str(pg.get("user", "postgres")),
        "SLUICE_CHANGEFEED_SCHEDULE": "*/1 * * * * *",
        "SLUICE_ENRICH_SCHEDULE": "*/2 * * * * *",
        "SLUICE_ENRICH_WINDOW_SECONDS": str(WINDOW_SECONDS),
        "SLUICE_ENRICH_ALLOWED_LATENESS_SECONDS": str(LATENESS_SECONDS),
        "SLUICE_ENRICH_INITIAL_LOOKBACK_SECONDS": "180",
        "SLUICE_ENRICH_MAX_WINDOWS_PER_RUN": "100",
        # A restarted host takes over the killed one's partitions and timer leases quickly.
        "DEVHOST_EVENTHUBS_LOAD_BALANCING_SECONDS": "1",
        "DEVHOST_EVENTHUBS_OWNERSHIP_EXPIRATION_SECONDS": "4",
        "AzureFunctionsWebHost__hostid": f"e2e-{uuid.uuid4().hex[:16]}",
    }


def _migrate_cassandra(values: dict[str, str]) -> None:
    """Apply the Cassandra migrations to the keyspace ``values`` (app settings) name."""
    settings = load_settings({k: v for k, v in values.items() if v != ""})
    session = connect(settings.cassandra, None)
    try:
        apply_migrations(session, settings.cassandra)
    finally:
        session.cluster.shutdown()


def _script_root(path: Path) -> Path:
    """The repository's function app, with a host.json whose timer leases expire after 15 s (the minimum)."""
    path.mkdir()
    for name in ("function_app.py", "functions", "shared"):
        (path / name).symlink_to(ROOT / name)
    host = json.loads((ROOT / "host.json").read_text())
    host["singleton"] = {"listenerLockPeriod": "00:00:15", "listenerLockRecoveryPollingInterval": "00:00:01"}
    (path / "host.json").write_text(json.dumps(host, indent=2))
    return path


@pytest.fixture
def pipeline(tmp_path, isolated_eventhub, cassandra_emulator, cassandra_keyspace, pg_dsn, redis_url, redis_prefix,
             azurite_connection_string):
    values = _values(hub=isolated_eventhub, cassandra=cassandra_emulator, keyspace=cassandra_keyspace,
                     pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix, storage=azurite_connection_string)
    _migrate_cassandra(values)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_pg_migrations(conn)
    reference = subprocess.run([sys.executable, "-m", "sluice", "reference", "load-sample", "--to", "postgres"],
                               cwd=ROOT, env={**os.environ, **values}, capture_output=True, text=True, timeout=60)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    settings_path = tmp_path / "local.settings.json"
    settings_path.write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=2))
    root = _script_root(tmp_path / "app")
    hosts = []

    def start():
        env = {k: v for k, v in values.items() if k.startswith(("DEVHOST_", "AzureFunctionsWebHost__"))}
        running = start_devhost(root, settings=settings_path, env=env, timeout=90)
        hosts.append(running)
        return running

    probe = Probe(values)
    yield start, probe, values
    probe.close()
    for running in hosts:
        running.stop(stop_timeout=20)


def _get(url: str) -> tuple[int, dict | list | None]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _wait_for_delivery(expected, probe, since, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        report = check_delivery(expected, probe, features=FEATURES, since=since)
        if report.ok or time.monotonic() > deadline:
            return report
        time.sleep(2)


def _diagnose(expected, probe) -> str:
    """For events missing from the enriched rows: when each was sent, enqueued and written, and the ledger."""
    ks = probe.settings.cassandra.keyspace
    with probe.pg() as conn:
        enriched = {str(r[0]) for r in conn.execute("SELECT event_id FROM enriched_events").fetchall()}
        ledger = conn.execute("SELECT window_start, event_count, reason, runs, first_enriched_at, last_enriched_at "
                              "FROM enrichment_windows ORDER BY window_start").fetchall()
        state = conn.execute("SELECT * FROM enrichment_state").fetchall()
    lines = [f"enrichment_state: {state}"]
    for event_id, record in expected.valid.items():
        if event_id in enriched:
            continue
        row = probe.session.execute(f"SELECT enqueued_time, writetime(device_id) AS w FROM {ks}.events_by_id "
                                    f"WHERE event_id = {event_id}").one()
        written = datetime.fromtimestamp(row.w / 1e6, UTC).isoformat() if row else None
        lines.append(f"not enriched: {event_id} t={record['timestamp']} ooo={record['out_of_order']} "
                     f"sent={datetime.fromtimestamp(record['sent_at'], UTC).isoformat()} "
                     f"enqueued={row.enqueued_time if row else None} written={written}")
    lines += [f"ledger: {r}" for r in ledger if r[1] or r[2] != "scheduled"][:40]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(150)
def test_every_event_lands_once_across_a_dev_host_crash(pipeline, isolated_eventhub, tmp_path):
    start, probe, values = pipeline
    since = datetime.now(UTC)
    host = start()
    spec = LoadSpec(devices=40, rate=150, count=1200, critical_ratio=0.05, duplicate_ratio=0.01,
                    invalid_ratio=0.01, out_of_order_ratio=0.03, seed=20261123)
    manifest_path = tmp_path / "sent.jsonl"
    sender = EventHubSender(isolated_eventhub.connection_string, isolated_eventhub.name)
    with manifest_path.open("w") as manifest:
        runner = LoadRunner(spec, sender, manifest=manifest)
        load = threading.Thread(target=runner.run)
        load.start()
        # Mid-stream: wait until some events are stored, then crash the host while the load goes on.
        deadline = time.monotonic() + 30
        while (probe.stored_count(since.replace(second=0, microsecond=0), datetime.now(UTC)) < 300
               and time.monotonic() < deadline):
            time.sleep(0.2)
        sent_before_kill = runner.summary.sent
        host.kill()
        killed_at = datetime.now(UTC)
        # Restart once the load has sent more while no host was running (events the new host must pick up).
        poll(lambda: runner.summary.sent >= min(spec.count, sent_before_kill + 50), 10,
              "events sent while the host is down")
        host = start()
        restarted_at = datetime.now(UTC)
        load.join(60)
    sender.close()
    assert not load.is_alive()
    summary = runner.summary
    assert summary.failed == 0 and summary.sent == 1200
    assert 0 < sent_before_kill < 1200, "the crash must come in the middle of the load"

    expected = read_manifest(manifest_path)
    load_done = datetime.now(UTC)
    report = _wait_for_delivery(expected, probe, since, timeout=75)
    timeline = f"since {since} killed {killed_at} restarted {restarted_at} load done {load_done}\n"
    assert report.ok, "\n".join(report.problems) + "\n" + timeline + _diagnose(expected, probe) + host.output()[-3000:]
    assert report.figures["stored"] == len(expected.valid)
    assert report.figures["dead_lettered"] == len(expected.invalid) > 0
    assert report.figures["critical_in_redis"] == len(expected.critical) > 0
    assert report.figures["windows_enriched"] == report.figures["windows"] > 0

    # No duplicated effects: one dead letter per invalid event, one stream entry per critical event.
    letters = probe.dead_letters(since)
    assert sorted(letter["original_text"] for letter in letters) == sorted(r["body"] for r in expected.invalid)
    prefix = values["SLUICE_REDIS_KEY_PREFIX"]
    client = redis.Redis.from_url(values["SLUICE_REDIS_URL"], decode_responses=True)
    try:
        shards = client.scan_iter(match=f"{prefix}critical:stream:*")  # the sharded stream (generation 0)
        stream = [entry for key in shards for entry in client.xrange(key)]
        on_stream = Counter(fields["event_id"] for _, fields in stream)
        assert set(on_stream) == set(expected.critical)
        assert max(on_stream.values()) == 1
        for device in {r["device_id"] for r in expected.critical.values()}:
            wanted = {r["event_id"] for r in expected.critical.values() if r["device_id"] == device}
            members = client.zrangebyscore(f"{prefix}d:{{{device}}}:crit", "(-inf", "+inf")  # not the marker
            ids = [json.loads(m)["event_id"] for m in members]
            assert sorted(ids) == sorted(wanted), members  # each critical event once, duplicates included
    finally:
        client.close()

    # The HTTP API serves what the pipeline stored.
    http = f"http://{host.host}:{host.port}/api"
    newest = expected.latest_by_device()
    device = next(iter(newest))
    status, body = _get(f"{http}/devices/{device}/latest")
    assert status == 200 and body["event_id"] == newest[device]["event_id"]
    critical = next(iter(expected.critical.values()))
    status, body = _get(f"{http}/events/{critical['event_id']}")
    assert status == 200 and body["event_id"] == critical["event_id"] and body["device_id"] == critical["device_id"]
    status, body = _get(f"{http}/devices/{critical['device_id']}/critical?limit=100")
    assert status == 200
    items = body["events"] if isinstance(body, dict) else body
    wanted = sorted((r for r in expected.critical.values() if r["device_id"] == critical["device_id"]),
                    key=lambda r: (r["timestamp"], r["event_id"]), reverse=True)
    assert list(dict.fromkeys(item["event_id"] for item in items)) == [r["event_id"] for r in wanted]
    invalid_id = next(r["event_id"] for r in expected.invalid if r["event_id"])
    status, _ = _get(f"{http}/events/{invalid_id}")
    assert status == 404


@pytest.mark.timeout(90)
def test_a_critical_event_sent_twice_is_listed_once(pipeline, isolated_eventhub):
    start, probe, values = pipeline
    host = start()
    event = EventGenerator(LoadSpec(seed=5, critical_ratio=1.0, duplicate_ratio=0, invalid_ratio=0)).take(1)[0]
    assert event.critical
    sender = EventHubSender(isolated_eventhub.connection_string, isolated_eventhub.name)
    ks = probe.settings.cassandra.keyspace
    enqueued = []
    try:
        for _ in range(2):  # two sends, so two enqueued times: what at-least-once producers do after a timeout
            assert all(sent.error is None for sent in sender.send([event]))
            row = poll(lambda: (r := probe.session.execute(
                f"SELECT enqueued_time, writetime(device_id) AS written FROM {ks}.events_by_id "
                f"WHERE event_id = {event.event_id}").one()) is not None and r.enqueued_time not in enqueued and r,
                30, "the event stored with a new enqueued time")
            enqueued.append(row.enqueued_time)
            # The change feed has applied this write once it saved a position after it (only this event flows).
            poll(lambda written=row.written: (f := probe.session.execute(
                f"SELECT updated_at FROM {ks}.feed_state WHERE name = 'events_by_id'").one()) is not None
                and f.updated_at is not None and to_ms(f.updated_at) >= written // 1000, 30,
                "a change feed position saved after the write")
    finally:
        sender.close()
    assert len(enqueued) == 2
    assert probe.critical_in_redis([event.event_id]) == {event.event_id}
    status, body = _get(f"http://{host.host}:{host.port}/api/devices/{event.device_id}/critical")
    assert status == 200
    items = body["events"] if isinstance(body, dict) else body
    assert [item["event_id"] for item in items] == [event.event_id]
    prefix = values["SLUICE_REDIS_KEY_PREFIX"]
    # Events only: the set also holds a completeness marker at score -inf (docs/redis-layout.md).
    members = probe.redis.zrangebyscore(f"{prefix}d:{{{event.device_id}}}:crit", "(-inf", "+inf")
    assert len(members) == 1, members  # a re-sent event is one member, not one per enqueued time


@pytest.mark.timeout(150)
@pytest.mark.parametrize("redis_kind", ["single", "cluster"])
def test_sluice_up_bounded_run_delivers_and_stops_everything(tmp_path, redis_prefix, redis_kind):
    database = f"sluice_up_{uuid.uuid4().hex[:10]}"
    keyspace = f"ks_{uuid.uuid4().hex[:12]}"
    # No out-of-order events here (the crash test has them), so a short allowed lateness is enough.
    argv = [
        sys.executable,
        "-m",
        "sluice",
        "up",
        "--duration",
        "6",
        "--rate",
        "150",
        "--devices",
        "30",
        "--critical-ratio",
        "0.05",
        "--invalid-ratio",
        "0.01",
        "--duplicate-ratio",
        "0.01",
        "--out-of-order-ratio",
        "0",
        "--data-dir",
        str(tmp_path / "stack"),
        "--in-memory",
        "--fresh",
        "--database",
        database,
        "--keyspace",
        keyspace,
        "--redis-prefix",
        redis_prefix,
        "--http-port",
        "0",
        "--eventhubs-port",
        "0",
        "--cassandra-port",
        "0",
        "--azurite-port",
        "0",
        "--keyvault-port",
        "0",
        "--drain-timeout",
        "60",
        "--set",
        f"SLUICE_ENRICH_WINDOW_SECONDS={WINDOW_SECONDS}",
        "--set",
        "SLUICE_ENRICH_ALLOWED_LATENESS_SECONDS=12",
        "--set",
        "SLUICE_ENRICH_SCHEDULE=*/2 * * * * *",
        "--set",
        "SLUICE_ENRICH_INITIAL_LOOKBACK_SECONDS=180",
        "--set",
        "SLUICE_ENRICH_MAX_WINDOWS_PER_RUN=100",
        "--set",
        "SLUICE_CHANGEFEED_SCHEDULE=*/1 * * * * *",
    ]
    if redis_kind == "cluster":
        argv.append("--redis-cluster")  # a real local Redis Cluster under the data dir, stopped with the stack
    try:
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=140,
                                env={**os.environ, "COLUMNS": "200"})
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    output = result.stdout + result.stderr
    verdict = output[output.find("figures: "):] if "figures: " in output else output[-6000:]
    assert result.returncode == 0, verdict
    assert "delivered:" in output
    figures = json.loads(output.split("figures: ", 1)[1].splitlines()[0])
    assert figures["stored"] == figures["valid"] > 700
    assert figures["dead_lettered"] == figures["invalid"] > 0
    assert figures["critical_in_redis"] > 0 and figures["windows_enriched"] == figures["windows"] > 0
    # Every child it started is gone, and the settings it wrote name the ports it used.
    settings = json.loads((tmp_path / "stack" / "local.settings.json").read_text())["Values"]
    assert settings["SLUICE_CASSANDRA_KEYSPACE"] == keyspace
    if redis_kind == "cluster":
        assert settings["SLUICE_REDIS_CLUSTER"] == "true" and "stopped Redis Cluster" in output
    for name in ("devhost", "eventhubs-emulator", "cassandra-emulator", "azurite"):
        assert f"stopped {name} (exit" in output
    port = int(settings["SLUICE_CASSANDRA_PORT"])
    import socket

    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the Cassandra emulator still listens after up exited"
