"""Rotation without a restart: each store refuses the old password, Sluice re-reads the secret and goes on.

Real stores with real passwords (PostgreSQL scram-sha-256 on its own cluster, a
Redis ACL user, the Cassandra emulator's PasswordAuthenticator), the Key Vault
emulator through the real SDK, and TLS verified against one local CA. Both
orders: the vault first then the store (the documented order), and the store
first then the vault (the refresh waits for the vault and keeps retrying).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import psycopg
import pytest
import redis
from azure.keyvault.secrets import SecretClient
from cassandra.cluster import NoHostAvailable

from shared import bootstrap
from shared.adapters.cassandra.session import connect
from shared.adapters.keyvault import KeyVaultSecrets
from shared.adapters.postgres.pool import connect as pg_connect
from shared.adapters.postgres.pool import make_pool
from shared.adapters.redis.aio import AsyncRedisConnection, AsyncSecretCredentials
from shared.adapters.redis.client import RedisConnection
from shared.adapters.secrets import RotatingSecret
from shared.exceptions import ConfigurationError, DependencyUnavailable
from shared.settings import CassandraSettings, PostgresSettings, load_settings
from sluice.secured import LocalCA, LocalPostgres, LocalRedis
from tests.fixtures.keyvault import KeyVaultEmulator, start_keyvault_emulator, unique_secret_name
from tests.fixtures.secured import start_secured_cassandra

pytestmark = pytest.mark.timeout(120)
INTERVAL = 0.5
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def vault(keyvault_emulator: KeyVaultEmulator) -> Iterator[KeyVaultSecrets]:
    adapter = KeyVaultSecrets(keyvault_emulator.url, ca_file=str(keyvault_emulator.ca_file))
    yield adapter
    adapter.close()


def _secret(vault: KeyVaultSecrets, client: SecretClient, value: str) -> RotatingSecret:
    name = unique_secret_name("pw")
    client.set_secret(name, value)
    return RotatingSecret(name, lambda: vault.fetch(name), min_interval=INTERVAL)


def _eventually(check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _password() -> str:
    return uuid.uuid4().hex


# --- PostgreSQL ---

@pytest.fixture
def pg_role(secured_postgres: LocalPostgres) -> str:
    return f"app_{uuid.uuid4().hex[:10]}"


def _pg_settings(server: LocalPostgres, ca: LocalCA, role: str, *, host: str = "127.0.0.1") -> PostgresSettings:
    return PostgresSettings(host=host, port=server.port, dbname="postgres", user=role, sslmode="verify-full",
                            sslrootcert=ca.ca_file, pool_min_size=1, pool_max_size=2, pool_timeout_seconds=20)


def _sessions(server: LocalPostgres, role: str) -> int:
    with psycopg.connect(server.admin_dsn()) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)).fetchone()
    return row[0] if row else 0


def _kick(server: LocalPostgres, role: str) -> None:
    """End the role's sessions, as a failover or ``max_lifetime`` would: the pool must log in again."""
    server.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")


@pytest.mark.parametrize("vault_first", [True, False], ids=["vault-then-store", "store-then-vault"])
def test_postgres_pool_logs_in_with_the_rotated_password(secured_postgres: LocalPostgres, local_ca: LocalCA,
                                                         pg_role: str, vault: KeyVaultSecrets,
                                                         keyvault_client: SecretClient, vault_first: bool) -> None:
    old, new = _password(), _password()
    secured_postgres.create_role(pg_role, old)
    secret = _secret(vault, keyvault_client, old)
    cfg = _pg_settings(secured_postgres, local_ca, pg_role)
    with make_pool(cfg.conninfo(), cfg, password=secret) as pool:
        with pool.connection() as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        if vault_first:
            keyvault_client.set_secret(secret.name, new)
            secured_postgres.set_password(pg_role, new)
        else:
            secured_postgres.set_password(pg_role, new)
            _kick(secured_postgres, pg_role)
            time.sleep(INTERVAL * 2)  # the pool's reconnect attempts now meet the old value in the vault too
            keyvault_client.set_secret(secret.name, new)
        _kick(secured_postgres, pg_role)
        with pool.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone() == (pg_role,)
    assert secret.value() == new


def test_a_refused_password_that_the_vault_still_holds_fails_clearly(secured_postgres: LocalPostgres,
                                                                     local_ca: LocalCA, pg_role: str,
                                                                     vault: KeyVaultSecrets,
                                                                     keyvault_client: SecretClient) -> None:
    secured_postgres.create_role(pg_role, _password())
    secret = _secret(vault, keyvault_client, "not-the-password")
    cfg = _pg_settings(secured_postgres, local_ca, pg_role)
    with make_pool(cfg.conninfo(), cfg, password=secret, open=False) as pool:
        conn_class = pool.connection_class
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        conn_class.connect(cfg.conninfo())


def test_a_non_password_refusal_in_the_vault_first_window_keeps_the_password_the_store_takes(
        secured_postgres: LocalPostgres, local_ca: LocalCA, pg_role: str, vault: KeyVaultSecrets,
        keyvault_client: SecretClient) -> None:
    """Between a vault-first rotation's two steps the store still takes the old password. A log-in refused after
    the password was taken for another reason (``too many connections for role`` here; likewise reserved slots, a
    PgBouncer that cannot reach its server) reads as a refused password (libpq gives no SQLSTATE), so the vault's
    new value is read and tried; the store refuses it. The secret then went on with the new value, and every new
    connection was refused until the store was rotated, although the old password still worked."""
    old, new = _password(), _password()
    secured_postgres.create_role(pg_role, old)
    secured_postgres.execute(f'ALTER ROLE "{pg_role}" CONNECTION LIMIT 1')
    secret = _secret(vault, keyvault_client, old)
    cfg = _pg_settings(secured_postgres, local_ca, pg_role)
    first = pg_connect(cfg.conninfo(), password=secret, autocommit=True)
    try:
        keyvault_client.set_secret(secret.name, new)  # the documented order: the vault first ...
        with pytest.raises(psycopg.OperationalError):
            pg_connect(cfg.conninfo(), password=secret, autocommit=True)  # the role's one slot is taken: refused
    finally:
        first.close()
    _eventually(lambda: _assert(_sessions(secured_postgres, pg_role) == 0))  # its server process has ended
    # ... the store not rotated yet: it still takes the old value
    with pg_connect(cfg.conninfo(), password=secret, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (pg_role,)
    assert secret.value() == old
    secured_postgres.set_password(pg_role, new)  # ... then the store: the next refusal tries the new value again
    time.sleep(INTERVAL)
    with pg_connect(cfg.conninfo(), password=secret, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (pg_role,)
    assert secret.value() == new


def test_a_password_refused_on_one_of_several_addresses_re_reads_the_secret(
        secured_postgres: LocalPostgres, local_ca: LocalCA, pg_role: str, vault: KeyVaultSecrets,
        keyvault_client: SecretClient) -> None:
    """psycopg tries each address of each host (a libpq host list, a name with A and AAAA records) and, when all
    fail, raises an error carrying only the last attempt's ``pgconn``. A password refused by the first address,
    then a second one that cannot be reached (no IPv6 route, a standby down), read as an outage: the secret was
    never re-read, and after a rotation the worker stayed locked out until it restarted."""
    old, new = _password(), _password()
    secured_postgres.create_role(pg_role, old)
    secret = _secret(vault, keyvault_client, old)
    assert secret.value() == old
    keyvault_client.set_secret(secret.name, new)  # rotated: the vault, then the store
    secured_postgres.set_password(pg_role, new)
    # the server on 127.0.0.1, then an address nothing listens on (our PostgreSQL listens on 127.0.0.1 only)
    cfg = _pg_settings(secured_postgres, local_ca, pg_role, host="127.0.0.1,127.0.0.2")
    with pg_connect(cfg.conninfo(), password=secret, autocommit=True, connect_timeout=3) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (pg_role,)
    assert secret.value() == new
    secured_postgres.set_password(pg_role, _password())  # refused everywhere: psycopg's error, listing each address
    time.sleep(INTERVAL)
    with pytest.raises(psycopg.OperationalError, match=r"(?s)password authentication failed.*127\.0\.0\.2"):
        pg_connect(cfg.conninfo(), password=secret, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="module")
def german_postgres(local_ca: LocalCA) -> Iterator[LocalPostgres]:
    """Our own PostgreSQL whose messages are German, as any self-hosted server with a localised ``lc_messages`` (or
    one made by ``initdb`` under ``LANG=de_DE.UTF-8``) answers. The locale is compiled into a directory of our own
    (``LOCPATH``), so nothing of the system changes."""
    if shutil.which("localedef") is None:
        pytest.skip("localedef is not installed")
    locales = Path(tempfile.mkdtemp(prefix="sluice-locale-"))
    locales.chmod(0o755)
    made = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(locales / "de_DE.UTF-8")],
                          capture_output=True, check=False, timeout=120)
    if not (locales / "de_DE.UTF-8" / "LC_MESSAGES").exists():
        pytest.skip(f"cannot compile the de_DE.UTF-8 locale: {made.stderr[-300:]!r}")
    previous = os.environ.get("LOCPATH")
    os.environ["LOCPATH"] = str(locales)
    try:
        server = LocalPostgres(local_ca).start()
    finally:
        if previous is None:
            os.environ.pop("LOCPATH", None)
        else:
            os.environ["LOCPATH"] = previous
    try:
        server.execute("ALTER SYSTEM SET lc_messages = 'de_DE.UTF-8'", "SELECT pg_reload_conf()")
        time.sleep(0.5)
        yield server
    finally:
        server.stop()
        if server.directory is not None:
            shutil.rmtree(server.directory, ignore_errors=True)
        shutil.rmtree(locales, ignore_errors=True)


def test_postgres_with_localised_messages_picks_up_a_rotated_password(german_postgres: LocalPostgres,
                                                                      local_ca: LocalCA, vault: KeyVaultSecrets,
                                                                      keyvault_client: SecretClient) -> None:
    """A refusal in another language ("Passwort-Authentifizierung ... fehlgeschlagen") is a refusal too: psycopg
    gives no SQLSTATE for a failed log-in, so a refusal told by its English text was never seen here, the secret
    never re-read, and every new connection failed until the worker restarted."""
    role = f"app_{uuid.uuid4().hex[:10]}"
    old, new = _password(), _password()
    german_postgres.create_role(role, old)
    secret = _secret(vault, keyvault_client, old)
    cfg = _pg_settings(german_postgres, local_ca, role)
    with make_pool(cfg.conninfo(), cfg, password=secret, open=False) as pool:
        conn_class = pool.connection_class
    with conn_class.connect(cfg.conninfo()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    with pytest.raises(psycopg.OperationalError, match="Passwort"):  # the set-up holds: it refuses in German
        psycopg.connect(cfg.conninfo(password="wrong"))
    keyvault_client.set_secret(secret.name, new)  # vault first, then the store (docs/security.md's order)
    german_postgres.set_password(role, new)
    with conn_class.connect(cfg.conninfo()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    assert secret.value() == new


def test_verify_full_refuses_a_certificate_for_another_host(secured_postgres: LocalPostgres, local_ca: LocalCA,
                                                           pg_role: str) -> None:
    password = _password()
    secured_postgres.create_role(pg_role, password)
    good = _pg_settings(secured_postgres, local_ca, pg_role)
    with psycopg.connect(good.conninfo(password)) as conn:
        assert conn.info.pgconn.ssl_in_use
    wrong_host = _pg_settings(secured_postgres, local_ca, pg_role, host="localhost")
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(wrong_host.conninfo(password))


# --- Redis ---

@pytest.mark.parametrize("vault_first", [True, False], ids=["vault-then-store", "store-then-vault"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_redis_logs_in_with_the_rotated_password(secured_redis: LocalRedis, vault: KeyVaultSecrets,
                                                 keyvault_client: SecretClient, vault_first: bool, tls: bool) -> None:
    user, old, new = f"app{uuid.uuid4().hex[:10]}", _password(), _password()
    secured_redis.set_password(old, username=user)
    secret = _secret(vault, keyvault_client, old)
    url = secured_redis.url(tls=tls).replace(f"{secured_redis.username}@", f"{user}@")
    connection = RedisConnection(url, password=secret, cluster=False)
    key = f"rotation:{user}"
    try:
        connection.client().set(key, "1")
        if vault_first:
            keyvault_client.set_secret(secret.name, new)
            secured_redis.set_password(new, username=user)
        else:
            secured_redis.set_password(new, username=user)
            time.sleep(INTERVAL * 2)
            keyvault_client.set_secret(secret.name, new)
        with secured_redis.admin() as admin:
            admin.client_kill_filter(user=user)  # as a failover would: every connection logs in again
        assert _eventually(lambda: connection.client().incr(key)) == 2
        assert secret.value() == new
    finally:
        connection.close()


def test_redis_with_cluster_auto_detected_logs_in_with_the_rotated_password(
        secured_redis: LocalRedis, vault: KeyVaultSecrets, keyvault_client: SecretClient) -> None:
    """With ``cluster=None`` (``SLUICE_REDIS_CLUSTER`` unset) the client that asks ``INFO cluster`` logs in first:
    a refused password re-reads the secret there too, as with ``cluster=False`` (the log-in hook).

    Was: that client logged in with the cached value only, so a rotation before the connection's first use
    (Redis down, or not used yet) left every ``client()`` refused with the stale value until a restart.
    """
    user, old, new = f"app{uuid.uuid4().hex[:10]}", _password(), _password()
    secured_redis.set_password(old, username=user)
    secret = _secret(vault, keyvault_client, old)
    assert secret.value() == old  # read at bootstrap, before the client is built
    keyvault_client.set_secret(secret.name, new)  # vault first ...
    secured_redis.set_password(new, username=user)  # ... then the store
    url = secured_redis.url(tls=True).replace(f"{secured_redis.username}@", f"{user}@")
    connection = RedisConnection(url, password=secret, cluster=None)
    try:
        assert _eventually(lambda: connection.client().ping(), timeout=10)
    finally:
        connection.close()
    assert secret.value() == new


@pytest.mark.parametrize("cluster", [False, None], ids=["one-redis", "auto-detected"])
def test_the_lookups_redis_logs_in_with_the_rotated_password_at_the_first_refusal(
        secured_redis: LocalRedis, vault: KeyVaultSecrets, keyvault_client: SecretClient, cluster: bool | None,
        caplog: pytest.LogCaptureFixture) -> None:
    """The lookups' ``redis.asyncio`` connections log in with the cached password and read the vault only when Redis
    refuses it (``AsyncSecretCredentials.log_in_async``): after a vault-first rotation, the first command on a new
    connection is refused with the old value, re-reads the secret and logs in with the new one, no error seen."""
    user, old, new = f"app{uuid.uuid4().hex[:10]}", _password(), _password()
    secured_redis.set_password(old, username=user)
    secret = _secret(vault, keyvault_client, old)
    url = secured_redis.url(tls=True).replace(f"{secured_redis.username}@", f"{user}@")
    connection = AsyncRedisConnection(url, password=secret, cluster=cluster)
    key = f"rotation:{user}"

    async def scenario() -> object:
        client = await connection.client()
        await client.set(key, "1")
        await asyncio.sleep(INTERVAL * 2)
        keyvault_client.set_secret(secret.name, new)
        secured_redis.set_password(new, username=user)
        with secured_redis.admin() as admin:
            admin.client_kill_filter(user=user)
        for _ in range(3):  # the killed socket may surface once; a refused log-in must not
            try:
                return await client.incr(key)
            except redis.AuthenticationError:
                raise
            except redis.ConnectionError:
                continue
        raise AssertionError("no connection after the kill")

    try:
        assert asyncio.run(scenario()) == 2
        assert secret.value() == new
        # read after the refusal, not before each connection
        assert f"Redis refused the password of secret {secret.name}" in caplog.text
    finally:
        connection.close()


def test_a_percent_encoded_acl_user_in_the_url_signs_in(secured_redis: LocalRedis) -> None:
    """An ACL user name with a reserved character is percent-encoded in ``SLUICE_REDIS_URL`` (RFC 3986) and
    signs in decoded, as redis-py's own URL parser decodes it: ``redis://app%40eu@...`` is the user ``app@eu``.
    With a password secret the user is taken out of the URL for the credential provider, so Sluice decodes it
    there itself; sent still encoded, AUTH would be refused (WRONGPASS) and retried as if after a rotation."""
    user, password = f"app{uuid.uuid4().hex[:6]}@eu", _password()
    secured_redis.set_password(password, username=user)
    url = secured_redis.url(tls=False).replace(f"{secured_redis.username}@", f"{user.replace('@', '%40')}@")
    connection = RedisConnection(url, password=RotatingSecret.fixed(password), cluster=False, socket_timeout=2)
    try:
        assert connection.client().ping()
    finally:
        connection.close()


def test_rediss_refuses_a_certificate_for_another_host(secured_redis: LocalRedis) -> None:
    secret = RotatingSecret.fixed(secured_redis.password)
    good = RedisConnection(secured_redis.url(tls=True), password=secret, cluster=False)
    wrong = RedisConnection(secured_redis.url(tls=True, host="localhost"), password=secret, cluster=False)
    try:
        assert good.client().ping()
        with pytest.raises(redis.exceptions.ConnectionError, match="Hostname mismatch"):
            wrong.client().ping()
    finally:
        good.close()
        wrong.close()


# --- Cassandra ---

def _cassandra_settings(emulator, ca: LocalCA, *, host: str = "127.0.0.1") -> CassandraSettings:
    """Settings of a login whose password comes from the vault (the tests hand ``connect`` the secret itself)."""
    return CassandraSettings(hosts=[host], port=emulator.running.port, username=emulator.username,
                             password_secret="cassandra-password", tls=True, tls_ca_file=ca.ca_file,
                             consistency="ONE", connect_timeout_seconds=5)


@pytest.mark.parametrize("vault_first", [True, False], ids=["vault-then-store", "store-then-vault"])
def test_cassandra_connects_with_the_rotated_password(local_ca: LocalCA, tmp_path: Path, vault: KeyVaultSecrets,
                                                      keyvault_client: SecretClient, vault_first: bool) -> None:
    old, new = _password(), _password()
    emulator = start_secured_cassandra(local_ca, tmp_path, old)
    secret = _secret(vault, keyvault_client, old)
    settings = _cassandra_settings(emulator, local_ca)
    try:
        session = connect(settings, secret)
        assert session.execute("SELECT release_version FROM system.local").one() is not None
        session.cluster.shutdown()
        time.sleep(INTERVAL)  # a refused log-in re-reads the secret, at most once per interval
        if vault_first:
            keyvault_client.set_secret(secret.name, new)
            emulator.set_password(new)
        else:
            emulator.set_password(new)
            with pytest.raises(NoHostAvailable):
                connect(settings, secret)  # the vault still holds the old value: refused, clearly
            keyvault_client.set_secret(secret.name, new)
            time.sleep(INTERVAL)
        session = connect(settings, secret)  # a worker's cold start after the rotation, with the cached old value
        assert session.execute("SELECT release_version FROM system.local").one() is not None
        session.cluster.shutdown()
        assert secret.value() == new
    finally:
        emulator.running.stop()


def test_a_cassandra_session_reconnects_with_the_rotated_password_after_a_node_restart(
        local_ca: LocalCA, tmp_path: Path, vault: KeyVaultSecrets, keyvault_client: SecretClient) -> None:
    old, new = _password(), _password()
    emulator = start_secured_cassandra(local_ca, tmp_path, old)
    secret = _secret(vault, keyvault_client, old)
    settings = _cassandra_settings(emulator, local_ca)
    session = connect(settings, secret)
    try:
        assert session.execute("SELECT release_version FROM system.local").one()
        keyvault_client.set_secret(secret.name, new)
        emulator.set_password(new)
        emulator.running.stop()  # the node restarts: the driver must log in again, and gives up after one refusal
        time.sleep(INTERVAL)
        emulator = start_secured_cassandra(local_ca, tmp_path, new, port=settings.port)
        assert _eventually(lambda: session.execute("SELECT release_version FROM system.local").one(), timeout=60)
        assert secret.value() == new
    finally:
        session.cluster.shutdown()
        emulator.running.stop()


def test_a_cassandra_node_down_during_a_vault_first_rotation_is_logged_in_to_with_the_new_password(
        local_ca: LocalCA, tmp_path: Path, vault: KeyVaultSecrets, keyvault_client: SecretClient) -> None:
    """A node that goes down while the vault still holds the old password, and comes back with the rotated one,
    is logged in to with the vault's new value by the session's own reconnection.

    Was: the driver builds a node's reconnection factory once, when the node goes down, with an authenticator
    holding the password read then; every attempt of the outage logged in with it, the node refused it with
    ``AuthenticationFailed``, and the driver gave up on the node for good (here the only node: ``NoHostAvailable``
    until the worker restarted).
    """
    old, new = _password(), _password()
    emulator = start_secured_cassandra(local_ca, tmp_path, old)
    secret = _secret(vault, keyvault_client, old)
    settings = _cassandra_settings(emulator, local_ca)
    session = connect(settings, secret)
    try:
        assert session.execute("SELECT release_version FROM system.local").one()
        [host] = session.cluster.metadata.all_hosts()
        emulator.running.stop()  # the node goes down while the vault still holds `old`
        _eventually(lambda: _assert(_reconnecting(session, host)), timeout=20)
        time.sleep(INTERVAL * 2)
        keyvault_client.set_secret(secret.name, new)  # the rotation, vault first ...
        emulator = start_secured_cassandra(local_ca, tmp_path, new, port=settings.port)  # ... then the store
        try:
            _eventually(lambda: session.execute("SELECT release_version FROM system.local").one(), timeout=45)
        except NoHostAvailable:
            fresh = connect(settings, secret)  # the vault and the node agree: a new session logs in at once
            try:
                assert fresh.execute("SELECT release_version FROM system.local").one()
            finally:
                fresh.cluster.shutdown()
            pytest.fail("45 s after the node came back with the rotated password the session still has no host, "
                        "while a new session logs in at once: the driver's reconnection used the password read "
                        "when the node went down, was refused, and stopped for good")
        assert secret.value() == new
    finally:
        session.cluster.shutdown()
        emulator.running.stop()


def _assert(condition: bool) -> None:
    assert condition


def _reconnecting(session, host) -> bool:
    """Whether the driver has seen the node go (a query finds the dead connections) and is reconnecting to it."""
    with contextlib.suppress(Exception):
        session.execute("SELECT release_version FROM system.local")
    return host._reconnection_handler is not None


def test_cassandra_tls_refuses_a_certificate_for_another_host(local_ca: LocalCA, tmp_path: Path) -> None:
    emulator = start_secured_cassandra(local_ca, tmp_path, "pw")
    try:
        with pytest.raises(NoHostAvailable, match=r"certificate|match"):
            connect(_cassandra_settings(emulator, local_ca, host="localhost"), RotatingSecret.fixed("pw"))
    finally:
        emulator.running.stop()


# --- Key Vault outage ---

def test_a_vault_outage_keeps_the_cached_value(tmp_path: Path) -> None:
    emulator = start_keyvault_emulator(tmp_path)
    adapter = KeyVaultSecrets(emulator.url, ca_file=str(emulator.ca_file), retries=0, timeout=2)
    try:
        name = unique_secret_name("pw")
        emulator.client().set_secret(name, "cached")
        secret = RotatingSecret(name, lambda: adapter.fetch(name), min_interval=0)
        assert secret.value() == "cached"
        emulator.running.stop()
        assert secret.refresh() is False, "an unreachable vault changes nothing"
        assert secret.value() == "cached"
        with pytest.raises(DependencyUnavailable, match="key vault"):
            adapter.fetch(name)  # and a cold start without a cached value is a clear, retryable error
    finally:
        adapter.close()
        emulator.running.stop()


def test_any_error_from_the_source_keeps_the_cached_value_but_a_first_read_raises_it(
        caplog: pytest.LogCaptureFixture) -> None:
    # the source's contract is a SluiceError; one that escapes it anyway must not reach the stores' log-in code
    failure: list[Exception] = []

    def fetch() -> str:
        if failure:
            raise failure[0]
        return "cached"

    failure.append(OSError("Could not find a suitable TLS CA certificate bundle"))
    first = RotatingSecret("s", fetch, min_interval=0)
    with pytest.raises(OSError):
        first.refresh()  # nothing cached yet: not swallowed
    with pytest.raises(OSError):
        first.value()
    failure.clear()
    assert first.value() == "cached"
    failure.append(ValueError("unexpected"))
    with caplog.at_level(logging.WARNING, logger="shared.adapters.secrets"):
        assert first.refresh() is False
    assert first.value() == "cached"
    assert "keeping the cached value: ValueError: unexpected" in caplog.text


def test_refresh_is_rate_limited_per_secret() -> None:
    reads: list[int] = []
    now = [0.0]

    def fetch() -> str:
        reads.append(1)
        return f"v{len(reads)}"

    secret = RotatingSecret("s", fetch, min_interval=5, clock=lambda: now[0])
    assert secret.value() == "v1"
    assert secret.refresh() is True and secret.value() == "v2", "the first refresh reads at once"
    now[0] = 4.9
    assert secret.refresh() is False and len(reads) == 2, "within the interval: no read"
    now[0] = 5.0
    assert secret.refresh() is True and secret.value() == "v3"


def test_the_interval_runs_from_the_end_of_a_slow_read() -> None:
    # A read that lasts longer than min_interval must not leave the next refresh free to read at once: the vault
    # gets min_interval of quiet after each read, however long the read took.
    now = [0.0]
    reads: list[int] = []

    def slow_fetch() -> str:
        reads.append(1)
        now[0] += 10.0  # the read takes 10 s, twice the interval
        return f"v{len(reads)}"

    secret = RotatingSecret("s", slow_fetch, min_interval=5, clock=lambda: now[0])
    assert secret.value() == "v1"
    assert secret.refresh() is True and len(reads) == 2
    now[0] += 4.9
    assert secret.refresh() is False and len(reads) == 2, "4.9 s after the read ended: no read"
    now[0] += 0.1
    assert secret.refresh() is True and len(reads) == 3


def test_a_refresh_that_waited_for_another_ones_read_takes_its_outcome() -> None:
    # Even with no interval at all, a caller that queued while another caller's read ran does not read again: that
    # read is as fresh as any it could make. (The lock is wrapped only to know when the second caller is waiting.)
    reading, release, waiting = threading.Event(), threading.Event(), threading.Event()
    reads: list[int] = []

    def fetch() -> str:
        reads.append(1)
        if len(reads) == 2:
            reading.set()
            release.wait(10)
        return f"v{len(reads)}"

    secret = RotatingSecret("s", fetch, min_interval=0)
    used = secret.value()
    inner = secret._lock

    class NoticedLock:
        def __enter__(self) -> None:
            if inner.locked():
                waiting.set()
            inner.acquire()

        def __exit__(self, *exc: object) -> None:
            inner.release()

    secret._lock = NoticedLock()  # type: ignore[assignment]
    results: dict[str, bool] = {}
    first = threading.Thread(target=lambda: results.update(first=secret.refresh(rejected=used)))
    first.start()
    assert reading.wait(10)
    second = threading.Thread(target=lambda: results.update(second=secret.refresh(rejected=used)))
    second.start()
    assert waiting.wait(10)
    release.set()
    first.join(10)
    second.join(10)
    assert results == {"first": True, "second": True}, "both retry with the value the first one read"
    assert len(reads) == 2 and secret.value() == "v2", "the second caller took the first one's read"


def test_refreshes_waiting_on_a_slow_vault_read_cost_one_read_not_one_each() -> None:
    # "At most once per min_interval, however many connections fail at once": refresh() used to stamp the read's
    # start and hold the lock through the read, so when a read outlasted min_interval (a slow or black-holed vault;
    # the adapter's defaults are 10 s timeouts with 3 retries, against a 5 s interval) every caller queued on the
    # lock found the interval over and made its own full read: N connections refused together cost N vault reads
    # back to back. Here: the real adapter against an address that accepts TCP and never answers (0.5 s timeout, no
    # retries), four connections refreshing together, min_interval 0.2 s.
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(32)  # the kernel completes the TCP handshakes; nothing ever answers TLS
        port = blackhole.getsockname()[1]
        adapter = KeyVaultSecrets(f"https://127.0.0.1:{port}/", timeout=0.5, retries=0)
        reads: list[float] = []
        lock = threading.Lock()

        def fetch() -> str:
            with lock:
                reads.append(1)
                first = len(reads) == 1
            if first:
                return "cached-value"  # the value read at start-up, while the vault was fine
            return adapter.fetch("pg-password")

        secret = RotatingSecret("pg-password", fetch, min_interval=0.2)
        try:
            assert secret.value() == "cached-value"
            start = threading.Barrier(4)
            results: list[bool] = []

            def refused_connection() -> None:
                start.wait()
                results.append(secret.refresh(rejected="cached-value"))

            threads = [threading.Thread(target=refused_connection) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        finally:
            adapter.close()
    assert results == [False] * 4 and secret.value() == "cached-value"
    vault_reads = len(reads) - 1
    assert vault_reads == 1, f"4 connections refused together made {vault_reads} vault reads, one after the other"


def test_a_connection_refused_with_the_old_value_retries_with_the_value_another_refresh_read() -> None:
    # Two connections log in with v1 and are refused together; the first one's refresh reads v2, the second one's
    # is rate-limited: it must still try v2, not fail (the cached value is not the one the store refused).
    reads: list[int] = []
    secret = RotatingSecret("s", lambda: (reads.append(1), f"v{len(reads)}")[1], min_interval=5, clock=lambda: 0.0)
    used = secret.value()
    assert secret.refresh(rejected=used) is True and secret.value() == "v2"
    assert secret.refresh(rejected=used) is True and len(reads) == 2, "rate-limited, yet v2 is not what was refused"
    assert secret.refresh(rejected="v2") is False and len(reads) == 2, "v2 refused too: nothing new to try"
    assert RotatingSecret.fixed("x").refresh(rejected="y") is False, "a fixed value never changes"



def test_a_lookup_connection_signing_in_while_the_secret_is_re_read_never_blocks_the_event_loop() -> None:
    # The lookups' Redis connections take the password on the event loop (redis-py awaits get_credentials_async in
    # on_connect). value() used to wait on the secret's lock, which a refresh holds through its whole vault read
    # (run on a thread): while a re-read ran, any new connection froze the worker's loop, every lookup with it, for
    # the vault's latency. Once read, the cached value is handed out at once, the re-read's when it is done.
    started = threading.Event()
    reads: list[str] = []

    def slow_vault() -> str:
        reads.append("read")
        if len(reads) == 1:
            return "old-password"
        started.set()  # the re-read has begun and holds the secret's lock
        time.sleep(1.5)
        return "new-password"

    secret = RotatingSecret("redis-password", slow_vault, min_interval=0.0)
    assert secret.value() == "old-password"  # the first value, read at start
    credentials = AsyncSecretCredentials(None, secret)

    async def scenario() -> tuple[float, tuple[str, ...]]:
        refreshing = asyncio.create_task(asyncio.to_thread(secret.refresh, "a refused Redis Cluster log-in"))
        assert await asyncio.to_thread(started.wait, 5.0)
        signing_in = asyncio.create_task(credentials.get_credentials_async())  # a new connection meanwhile
        before = time.monotonic()
        await asyncio.sleep(0.05)  # any other lookup's work on the same loop
        stalled = time.monotonic() - before
        assert await refreshing is True
        return stalled, await signing_in

    stalled, signed_in_with = asyncio.run(scenario())
    assert stalled < 0.5, f"the event loop was blocked for {stalled:.2f}s by a vault read on another thread"
    assert signed_in_with == ("old-password",), "the cached value, not a half-read one"
    assert secret.value() == "new-password"


# --- through bootstrap: the wiring the Functions host runs ---

def _environ(**overrides: str) -> dict[str, str]:
    values = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    return {**values, **overrides}


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch):
    def use(environ: dict[str, str]):
        loaded = load_settings(environ)
        monkeypatch.setattr(bootstrap, "settings", cache(lambda: loaded))
        bootstrap.reset()
        return loaded

    yield use
    bootstrap.reset()


@pytest.mark.parametrize("store", ["POSTGRES", "REDIS", "CASSANDRA"])
def test_a_missing_secret_stops_start_up_naming_the_secret_and_the_vault(
        keyvault_emulator: KeyVaultEmulator, use_settings, store: str) -> None:
    name = unique_secret_name("missing")
    tls = {"POSTGRES": {"SLUICE_POSTGRES_SSLMODE": "verify-full", "SLUICE_POSTGRES_SSLROOTCERT": "system"},
           "REDIS": {"SLUICE_REDIS_URL": "rediss://127.0.0.1:6379/0"},
           "CASSANDRA": {"SLUICE_CASSANDRA_TLS": "true"}}[store]  # a vault password is only sent over TLS
    login = {"SLUICE_CASSANDRA_USERNAME": "sluice"} if store == "CASSANDRA" else {}  # a user name needs a password
    use_settings(_environ(**{f"SLUICE_{store}_PASSWORD_SECRET": name, **login,
                             "SLUICE_KEYVAULT_URL": keyvault_emulator.url,
                             "SLUICE_KEYVAULT_CA_FILE": str(keyvault_emulator.ca_file), **tls}))
    build = {"POSTGRES": bootstrap.postgres_pool, "REDIS": bootstrap.redis_client,
             "CASSANDRA": bootstrap.cassandra_session}[store]
    with pytest.raises(ConfigurationError) as caught:
        build()
    assert name in str(caught.value) and keyvault_emulator.url in str(caught.value)


def test_an_unreachable_vault_at_cold_start_is_a_clear_retryable_error(use_settings, local_ca: LocalCA) -> None:
    from sluice.localstack import free_port

    url = f"https://127.0.0.1:{free_port()}/"
    use_settings(_environ(SLUICE_POSTGRES_PASSWORD_SECRET="pg-password", SLUICE_POSTGRES_SSLMODE="verify-full",
                          SLUICE_POSTGRES_SSLROOTCERT="system", SLUICE_KEYVAULT_URL=url,
                          SLUICE_KEYVAULT_CA_FILE=str(local_ca.ca_file)))
    with pytest.raises(DependencyUnavailable) as caught:
        bootstrap.postgres_pool()
    assert "pg-password" in str(caught.value) and url in str(caught.value)


def test_bootstrap_clients_use_the_vault_and_follow_a_rotation(
        secured_postgres: LocalPostgres, secured_redis: LocalRedis, local_ca: LocalCA, tmp_path: Path,
        keyvault_emulator: KeyVaultEmulator, keyvault_client: SecretClient, use_settings,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    role, user = f"app_{uuid.uuid4().hex[:10]}", f"app{uuid.uuid4().hex[:10]}"
    passwords = {store: _password() for store in ("pg", "redis", "cassandra")}
    names = {store: unique_secret_name(store) for store in passwords}
    for store, value in passwords.items():
        keyvault_client.set_secret(names[store], value)
    secured_postgres.create_role(role, passwords["pg"])
    secured_redis.set_password(passwords["redis"], username=user)
    cassandra = start_secured_cassandra(local_ca, tmp_path, passwords["cassandra"])
    try:
        use_settings(_environ(
            SLUICE_KEYVAULT_URL=keyvault_emulator.url, SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file),
            SLUICE_KEYVAULT_REFRESH_MIN_INTERVAL_SECONDS="0.5",
            SLUICE_POSTGRES_HOST="127.0.0.1", SLUICE_POSTGRES_PORT=str(secured_postgres.port),
            SLUICE_POSTGRES_DBNAME="postgres", SLUICE_POSTGRES_USER=role, SLUICE_POSTGRES_SSLMODE="verify-full",
            SLUICE_POSTGRES_SSLROOTCERT=str(local_ca.ca_file), SLUICE_POSTGRES_PASSWORD_SECRET=names["pg"],
            SLUICE_REDIS_URL=secured_redis.url(tls=True).replace(f"{secured_redis.username}@", f"{user}@"),
            SLUICE_REDIS_CLUSTER="false", SLUICE_REDIS_PASSWORD_SECRET=names["redis"],
            SLUICE_CASSANDRA_HOSTS="127.0.0.1", SLUICE_CASSANDRA_PORT=str(cassandra.running.port),
            SLUICE_CASSANDRA_USERNAME=cassandra.username, SLUICE_CASSANDRA_TLS="true",
            SLUICE_CASSANDRA_TLS_CA_FILE=str(local_ca.ca_file), SLUICE_CASSANDRA_PASSWORD_SECRET=names["cassandra"],
        ))

        def use_all() -> None:
            with bootstrap.postgres_pool().connection() as conn:
                assert conn.execute("SELECT current_user").fetchone() == (role,)
            assert bootstrap.redis_client().client().ping()
            assert bootstrap.cassandra_session().execute("SELECT release_version FROM system.local").one()

        use_all()
        session = bootstrap.cassandra_session()
        rotated = {store: _password() for store in passwords}
        for store, value in rotated.items():
            keyvault_client.set_secret(names[store], value)
        secured_postgres.set_password(role, rotated["pg"])
        secured_redis.set_password(rotated["redis"], username=user)
        cassandra.set_password(rotated["cassandra"])
        _kick(secured_postgres, role)
        with secured_redis.admin() as admin:
            admin.client_kill_filter(user=user)
        _eventually(use_all)
        assert bootstrap.cassandra_session() is session, "nothing was rebuilt by a restart"
        for store in ("pg", "redis", "cassandra"):
            assert passwords[store] not in caplog.text and rotated[store] not in caplog.text, \
                f"the {store} password reached the logs"
    finally:
        cassandra.running.stop()


def test_a_refused_cassandra_password_is_re_read_once_per_interval_across_session_builds(
        local_ca: LocalCA, tmp_path: Path, keyvault_emulator: KeyVaultEmulator, keyvault_client: SecretClient,
        use_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused session build is not cached: each ingest batch and lookup builds it again. Each build made a new
    ``RotatingSecret``, which read the vault at once and again at its first refusal (no earlier refresh to
    rate-limit it): two vault reads per build while Cassandra refuses the vault's value (a store-first rotation),
    whatever ``SLUICE_KEYVAULT_REFRESH_MIN_INTERVAL_SECONDS`` says."""
    name = unique_secret_name("cass")
    keyvault_client.set_secret(name, "what-the-vault-holds")
    cassandra = start_secured_cassandra(local_ca, tmp_path, "what-the-store-takes")  # the store rotated first
    reads: list[str] = []
    original = KeyVaultSecrets.fetch

    def counted(self: KeyVaultSecrets, secret_name: str) -> str:
        reads.append(secret_name)
        return original(self, secret_name)

    monkeypatch.setattr(KeyVaultSecrets, "fetch", counted)
    try:
        use_settings(_environ(
            SLUICE_KEYVAULT_URL=keyvault_emulator.url, SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file),
            SLUICE_KEYVAULT_REFRESH_MIN_INTERVAL_SECONDS="60",
            SLUICE_CASSANDRA_HOSTS="127.0.0.1", SLUICE_CASSANDRA_PORT=str(cassandra.running.port),
            SLUICE_CASSANDRA_USERNAME=cassandra.username, SLUICE_CASSANDRA_TLS="true",
            SLUICE_CASSANDRA_TLS_CA_FILE=str(local_ca.ca_file), SLUICE_CASSANDRA_PASSWORD_SECRET=name,
        ))
        for _ in range(10):
            with pytest.raises(NoHostAvailable):  # AuthenticationFailed
                bootstrap.cassandra_session()
        assert reads == [name, name], "the first read and one re-read in the 60 s interval, for ten builds"
    finally:
        cassandra.running.stop()


def test_the_redis_clients_share_one_rotating_secret(keyvault_emulator: KeyVaultEmulator,
                                                     keyvault_client: SecretClient, use_settings) -> None:
    """The sync and async Redis clients log in with the same secret: one ``RotatingSecret``, so one read (and one
    re-read per interval after a refusal) for both, until ``bootstrap.reset``."""
    name = unique_secret_name("redis")
    keyvault_client.set_secret(name, "redis-password")
    loaded = use_settings(_environ(
        SLUICE_KEYVAULT_URL=keyvault_emulator.url, SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file),
        SLUICE_REDIS_URL="rediss://127.0.0.1:6379/0", SLUICE_REDIS_PASSWORD_SECRET=name))
    sync = bootstrap.redis_sign_in(loaded.redis)["password"]
    assert sync is bootstrap.redis_sign_in(loaded.redis, read_now=False)["password"]
    assert sync.value() == "redis-password"
    bootstrap.reset()
    assert bootstrap.redis_sign_in(loaded.redis)["password"] is not sync, "reset forgets it"


def test_a_redis_cluster_logs_in_with_the_rotated_password(redis_cluster, vault: KeyVaultSecrets,
                                                           keyvault_client: SecretClient) -> None:
    if redis_cluster is None:
        pytest.skip("SLUICE_TEST_REDIS_CLUSTER_URL names an external cluster: its ACL is not ours to change")
    user, old, new = f"app{uuid.uuid4().hex[:10]}", _password(), _password()

    def on_every_node(*command: str) -> None:
        for port in redis_cluster.ports:
            with redis.Redis(host=redis_cluster.host, port=port) as node:
                node.execute_command(*command)

    on_every_node("ACL", "SETUSER", user, "on", f">{old}", "~*", "&*", "+@all")
    secret = _secret(vault, keyvault_client, old)
    connection = RedisConnection(redis_cluster.url.replace("redis://", f"redis://{user}@"), password=secret,
                                 cluster=True)
    key = f"rotation:{{{user}}}"
    try:
        connection.client().set(key, "1")
        time.sleep(INTERVAL)
        keyvault_client.set_secret(secret.name, new)
        on_every_node("ACL", "SETUSER", user, "resetpass", f">{new}")
        on_every_node("CLIENT", "KILL", "USER", user)
        assert _eventually(lambda: connection.client().incr(key)) == 2
        assert secret.value() == new
    finally:
        connection.close()
        on_every_node("ACL", "DELUSER", user)


def test_an_unreachable_vault_at_cold_start_retries_then_dead_letters_the_ingest_batch(
        use_settings, local_ca: LocalCA, azurite_connection_string: str) -> None:
    from datetime import UTC, datetime

    from shared.domain.events import EventMetadata, RawRecord
    from sluice.localstack import free_port

    url = f"https://127.0.0.1:{free_port()}/"
    container = f"dl-{uuid.uuid4().hex[:12]}"
    use_settings(_environ(SLUICE_CASSANDRA_USERNAME="sluice", SLUICE_CASSANDRA_PASSWORD_SECRET="cassandra-password",
                          SLUICE_CASSANDRA_TLS="true",
                          SLUICE_KEYVAULT_URL=url, SLUICE_KEYVAULT_CA_FILE=str(local_ca.ca_file),
                          AzureWebJobsStorage=azurite_connection_string, SLUICE_STORAGE_DEADLETTER_CONTAINER=container))
    body = json.dumps({"event_id": str(uuid.uuid4()), "device_id": "dev-1", "event_type": "telemetry",
                       "timestamp": datetime.now(UTC).isoformat()}).encode()
    records = [RawRecord(body, EventMetadata(partition_id="0", sequence_number=1, enqueued_time=datetime.now(UTC)))]
    service = bootstrap.ingest_service()
    with pytest.raises(DependencyUnavailable, match="key vault"):
        service.handle(records, final_attempt=False)  # the host retries the batch
    result = service.handle(records, final_attempt=True)
    assert result.batch_dead_lettered
    [letter] = list(bootstrap.dead_letter_sink().read("batch"))
    assert "key vault" in letter.reason and "cassandra-password" in letter.reason
    assert [r.body for r in letter.records] == [body], "the original bytes are kept: nothing is lost"
