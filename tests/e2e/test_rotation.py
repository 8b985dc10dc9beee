"""Rotating every store's password during a running load: the pipeline goes on, nothing is lost, nothing restarts.

The local stack as ``sluice up`` runs it (our own PostgreSQL and Redis behind
passwords and TLS, the Cassandra emulator with PasswordAuthenticator and TLS, the
passwords in the Key Vault emulator, the dev host running the functions), under a
load from ``python -m sluice produce``. During the load each password is rotated
twice: first the vault then the store (the documented order), later the store then
the vault. After each change the stores drop the application's connections (as a
failover or a connection's ``max_lifetime`` would), so the functions must log in
again with the new password. Then the load generator's manifest is checked exactly
(every valid event stored once, every invalid one dead-lettered, latest states,
critical events in Redis), enrichment must have written after the rotations, and
the dev host is the same process throughout.

The Cassandra emulator keeps open connections logged in (as Cassandra does), so
its rotation is exercised by the checks' own cold start, not by the dev host.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluice.delivery import Probe, check_delivery
from sluice.loadgen import read_manifest
from sluice.localstack import ROOT, LocalStack, StackOptions
from sluice.secured import SECRET_NAMES
from tests.fixtures.functions import _index  # get_functions() may run once per process: the shared index

pytestmark = pytest.mark.timeout(600)
LOAD_SECONDS = 40


def _rotate(stack: LocalStack, *, vault_first: bool) -> None:
    from azure.keyvault.secrets import SecretClient

    from shared.adapters.identity import LocalDevelopmentCredential

    own = stack.own
    new = {store: uuid.uuid4().hex for store in SECRET_NAMES}
    vault = SecretClient(stack.values["SLUICE_KEYVAULT_URL"], LocalDevelopmentCredential(),
                         verify_challenge_resource=False, connection_verify=stack.values["SLUICE_KEYVAULT_CA_FILE"])

    def in_vault() -> None:
        for store, name in SECRET_NAMES.items():
            vault.set_secret(name, new[store])

    def in_stores() -> None:
        own.postgres.set_password(own.user, new["postgres"])
        own.redis.set_password(new["redis"])
        (own.directory / "cassandra.pw").write_text(new["cassandra"])
        own.postgres.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{own.user}'")
        with own.redis.admin() as admin:
            admin.client_kill_filter(user=own.user)

    with vault:
        if vault_first:
            in_vault()
            in_stores()
        else:
            in_stores()
            time.sleep(3)  # the pipeline meets the old value in the vault meanwhile
            in_vault()
    own.passwords.update(new)


def _enrichment_updated_at(probe: Probe) -> datetime | None:
    with probe.pg() as conn:
        row = conn.execute("SELECT updated_at FROM enrichment_state WHERE name = 'default'").fetchone()
    return row[0] if row else None


def test_rotating_every_password_under_load_loses_nothing_and_restarts_nothing(tmp_path: Path) -> None:
    options = StackOptions(data_dir=tmp_path / "stack", http_port=0, eventhubs_port=0, cassandra_port=0,
                           azurite_port=0, keyvault_port=0, persist=False,
                           overrides={"SLUICE_KEYVAULT_REFRESH_MIN_INTERVAL_SECONDS": "1"})
    stack = LocalStack(options, say=lambda _: None)
    producer = None
    try:
        stack.ensure_postgres()
        stack.ensure_redis()
        for step in (stack.start_azurite, stack.start_cassandra, stack.start_eventhubs, stack.start_keyvault):
            step()
        stack.write_settings()
        stack.create_database()
        stack.migrate()
        devhost = stack.start_devhost()
        pid = devhost.process.pid
        since = datetime.now(UTC)
        manifest = tmp_path / "manifest.jsonl"
        producer = subprocess.Popen(
            [sys.executable, "-m", "sluice", "produce", "--connection", stack.eventhub_connection,
             "--hub", stack.values["SLUICE_INGEST_EVENTHUB_NAME"], "--rate", "20", "--devices", "20",
             "--duration", str(LOAD_SECONDS), "--critical-ratio", "0.05", "--invalid-ratio", "0.01",
             "--manifest", str(manifest)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(LOAD_SECONDS / 4)
        _rotate(stack, vault_first=True)
        time.sleep(LOAD_SECONDS / 4)
        _rotate(stack, vault_first=False)
        rotated_at = datetime.now(UTC)
        assert producer.wait(timeout=LOAD_SECONDS + 120) == 0, producer.stderr.read() if producer.stderr else ""

        expected = read_manifest(manifest)
        features = {f for f in _index() if "enrich" not in f}  # windows close minutes later: checked below
        probe = Probe(stack.values)  # a cold start after the rotations: every password read from the vault
        try:
            deadline, report = time.monotonic() + 180, None
            while time.monotonic() < deadline:
                report = check_delivery(expected, probe, features=features, since=since)
                if report.ok:
                    break
                time.sleep(5)
            assert report is not None and report.ok, report.problems if report else "no check ran"
            deadline = time.monotonic() + 90
            while (_enrichment_updated_at(probe) or since) < rotated_at and time.monotonic() < deadline:
                time.sleep(2)
            assert (_enrichment_updated_at(probe) or since) >= rotated_at, "enrichment wrote nothing after the rotation"
        finally:
            probe.close()
        assert devhost.alive() and devhost.process.pid == pid, "the dev host restarted"
        # Every connection of the application was dropped at each rotation and the old passwords no longer
        # work, so the writes above (critical events after the rotation, enrichment's state) prove that the
        # dev host's functions logged in again with the rotated passwords; its Redis connections say so too.
        with stack.own.redis.admin() as admin:
            ages = [int(c["age"]) for c in admin.client_list() if c.get("user") == stack.own.user]
        elapsed = (datetime.now(UTC) - rotated_at).total_seconds()
        assert ages, "the dev host holds no Redis connection"
        assert all(age <= elapsed + 1 for age in ages), "the dev host holds no Redis login made after the rotation"
        output = devhost.output()
        for password in stack.own.passwords.values():
            assert password not in output
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        own = stack.own
        stack.stop()
        if own is not None and own.postgres is not None:
            import shutil

            shutil.rmtree(own.postgres.directory, ignore_errors=True)
