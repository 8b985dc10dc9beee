"""The running pipeline observed from outside: the zero-loss audit over what the dev host really checkpointed,
and a scrape of the dev host's real Prometheus endpoint.

The dev host (``python -m devhost``, a real subprocess) reads a hub of the Event
Hubs emulator, stores into the Cassandra emulator, dead-letters into Azurite and
checkpoints as the Functions host does; ``python -m sluice audit`` then runs as an
operator would, against the same settings.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.telemetry_names import BY_NAME
from sluice.delivery import Probe
from sluice.loadgen import EventHubSender, LoadRunner, LoadSpec, read_manifest
from tests.e2e.test_pipeline import _migrate_cassandra, _script_root, _values
from tests.fixtures.devhost import start_devhost

ROOT = Path(__file__).resolve().parents[2]
TELEMETRY_MERGED = (ROOT / "shared" / "telemetry.py").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def running(tmp_path, isolated_eventhub, cassandra_emulator, cassandra_keyspace, pg_dsn, redis_url, redis_prefix,
            azurite_connection_string):
    """A dev host on the repository's app with a metrics port, after N events went through it and were checkpointed."""
    values = _values(hub=isolated_eventhub, cassandra=cassandra_emulator, keyspace=cassandra_keyspace, pg_dsn=pg_dsn,
                     redis_url=redis_url, redis_prefix=redis_prefix, storage=azurite_connection_string)
    values["SLUICE_METRICS_PORT"] = str(_free_port())
    _migrate_cassandra(values)
    settings_path = tmp_path / "local.settings.json"
    settings_path.write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=2))
    env = {k: v for k, v in values.items() if k.startswith(("DEVHOST_", "AzureFunctionsWebHost__"))}
    host = start_devhost(_script_root(tmp_path / "app"), settings=settings_path, env=env, timeout=90)
    probe = Probe(values)
    since = datetime.now(UTC) - timedelta(seconds=2)
    spec = LoadSpec(devices=20, rate=200, count=300, duplicate_ratio=0.02, invalid_ratio=0.03, seed=20261205)
    sender = EventHubSender(isolated_eventhub.connection_string, isolated_eventhub.name)
    with (tmp_path / "sent.jsonl").open("w") as manifest:
        summary = LoadRunner(spec, sender, manifest=manifest).run()
    sender.close()
    deadline = time.monotonic() + 60
    while probe.lag()[0] and time.monotonic() < deadline:  # every record checkpointed
        time.sleep(0.5)
    assert probe.lag()[0] == 0, host.output()[-3000:]
    try:
        yield {"values": values, "since": since, "summary": summary, "host": host, "probe": probe,
               "expected": read_manifest(tmp_path / "sent.jsonl")}
    finally:
        probe.close()
        host.stop(stop_timeout=20)


def _audit(values: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice", "audit", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **{k: v for k, v in values.items() if v != ""}}, timeout=120)


@pytest.mark.timeout(240)
def test_the_audit_of_a_real_run_finds_nothing_missing_until_a_ledger_row_goes(running) -> None:
    values, summary = running["values"], running["summary"]
    result = _audit(values, "--since", running["since"].isoformat())
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"missing 0 of {summary.sent} audited: the zero-loss SLO holds" in result.stdout
    audited = sum(int(line.split()[3]) for line in result.stdout.splitlines() if line.split()[:1] and
                  line.split()[0].isdigit())
    assert audited == summary.sent, result.stdout  # one sequence number per record sent
    session = running["probe"].session
    ks = running["probe"].settings.cassandra.keyspace
    row = next(iter(session.execute(f"SELECT eh_partition, block, first_sequence, last_sequence FROM "
                                    f"{ks}.ingest_audit_runs LIMIT 1")))
    session.execute(f"DELETE FROM {ks}.ingest_audit_runs WHERE eh_partition = %s AND block = %s "
                    "AND first_sequence = %s AND last_sequence = %s",
                    (row.eh_partition, row.block, row.first_sequence, row.last_sequence))
    result = _audit(values, "--since", running["since"].isoformat())
    assert result.returncode == 1
    span = f"{row.first_sequence}" + (f"..{row.last_sequence}" if row.last_sequence != row.first_sequence else "")
    assert [line for line in result.stdout.splitlines() if line.startswith("gap:")] == [
        f"gap: partition {row.eh_partition.rsplit('/', 1)[-1]} sequence {span}"], result.stdout


@pytest.mark.skipif(not TELEMETRY_MERGED, reason="the dev host's exporter comes with shared/telemetry.py (helper H17)")
@pytest.mark.timeout(240)
def test_the_dev_hosts_prometheus_endpoint_serves_sluice_metrics(running) -> None:
    url = f"http://127.0.0.1:{running['values']['SLUICE_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    names = {s.name for s in samples}
    for instrument in ("sluice.ingest.events", "sluice.ingest.batch.duration", "sluice.eventhub.lag",
                       "sluice.audit.missing"):
        assert set(BY_NAME[instrument].series) <= names, f"{instrument} missing from {url}"
    stored = sum(s.value for s in samples if s.name == "sluice_ingest_events_total" and s.labels["outcome"] == "stored")
    dead = sum(s.value for s in samples
               if s.name == "sluice_ingest_events_total" and s.labels["outcome"] == "dead_lettered")
    expected = running["expected"]
    assert stored >= len(expected.valid) and dead == len(expected.invalid)
    assert all(s.value == 0 for s in samples if s.name == "sluice_audit_missing")
