"""Secrets and TLS across Sluice: verification cannot be turned off, a key cannot leak, rotation breaks nothing.

Each docstring states the rule and, after "Was:", what went wrong before it held.

Real components only: the secured PostgreSQL and Redis of ``tests/fixtures/secured.py``
(certificates for 127.0.0.1 only, from a CA nothing trusts by default), the Key Vault
emulator, and the dev host as a process. Connecting to ``localhost`` with one of those
certificates must be refused by any client that verifies the chain and the host name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
import redis
import trustme
import yaml
from azure.keyvault.secrets import SecretClient
from cassandra.cluster import NoHostAvailable
from psycopg.conninfo import conninfo_to_dict

from shared import bootstrap
from shared.adapters.cassandra.session import connect as connect_cassandra
from shared.adapters.keyvault import KeyVaultSecrets
from shared.adapters.postgres.pool import make_pool
from shared.adapters.redis.aio import AsyncRedisConnection
from shared.adapters.redis.client import REDIS_ERRORS, RedisConnection
from shared.adapters.secrets import RotatingSecret, store_password
from shared.exceptions import ConfigurationError, DependencyUnavailable
from shared.services.history import BadToken, HistoryCursor
from shared.settings import CassandraSettings, PostgresSettings, load_settings
from sluice.delivery import Probe
from sluice.launcher import Running
from sluice.redis_cluster import LocalRedisCluster
from sluice.secured import LocalCA, LocalPostgres, LocalRedis
from tests.fixtures.cassandra import start_cassandra_emulator
from tests.fixtures.devhost import start_devhost, write_app
from tests.fixtures.keyvault import KeyVaultEmulator, unique_secret_name
from tests.fixtures.waiting import loop_stalls

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def _base_env(**overrides: str) -> dict[str, str]:
    """The required settings of every group (values that connect nowhere), plus ``overrides``."""
    env = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "SLUICE_CASSANDRA_HOSTS": "127.0.0.1",
        "SLUICE_REDIS_URL": "redis://127.0.0.1:1/0",
        "SLUICE_POSTGRES_HOST": "127.0.0.1",
    }
    env.update(overrides)
    return env


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """An environment without Sluice or host settings, and bootstrap's caches cleared before and after."""
    for name in list(os.environ):
        if name.startswith(("SLUICE_", "AzureWebJobsStorage", "EventHubConnection", "APPLICATIONINSIGHTS_",
                            "OTEL_")):
            monkeypatch.delenv(name)
    bootstrap.reset()
    yield monkeypatch
    bootstrap.reset()


# --- 1. PostgreSQL: the production manifest's TLS does not verify the server ---------------------------------

def test_production_configmap_postgres_tls_verifies_the_server(secured_postgres: LocalPostgres,
                                                                local_ca: LocalCA) -> None:
    """Rule (docs/security.md, "TLS"): PostgreSQL is reached over TLS with the chain and the host name checked
    (``SLUICE_POSTGRES_SSLMODE=verify-full``); every store over TLS *with verification* in production.

    Was: the AKS ConfigMap (``k8s-keda/configmap.yaml``) sets ``SLUICE_POSTGRES_SSLMODE: require``
    and no ``SLUICE_POSTGRES_SSLROOTCERT``; libpq's ``require`` encrypts but checks neither the chain nor the
    host name (without ``~/.postgresql/root.crt``, which the image does not have). Settings accept it. Here the
    pool built exactly as ``bootstrap.postgres_pool`` builds it, with the ConfigMap's TLS settings, logs in to
    ``localhost`` behind a certificate made for 127.0.0.1 by a CA it was never given: a man in the middle
    would be accepted, and the Key Vault password's log-in goes to it.
    """
    if (Path.home() / ".postgresql" / "root.crt").exists():
        pytest.skip("a ~/.postgresql/root.crt makes libpq verify under sslmode=require")
    data = next(doc for doc in yaml.safe_load_all((ROOT / "k8s-keda" / "configmap.yaml").read_text())
                if doc and doc.get("kind") == "ConfigMap" and "SLUICE_POSTGRES_SSLMODE" in doc.get("data", {}))["data"]
    role, password = f"rv_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    secured_postgres.create_role(role, password)
    tls = {"sslmode": data["SLUICE_POSTGRES_SSLMODE"]}
    if data.get("SLUICE_POSTGRES_SSLROOTCERT"):
        tls["sslrootcert"] = data["SLUICE_POSTGRES_SSLROOTCERT"]
    cfg = PostgresSettings(host="localhost", port=secured_postgres.port, dbname="postgres", user=role,
                           pool_min_size=0, pool_max_size=1, pool_timeout_seconds=5, **tls)
    with make_pool(cfg.conninfo(), cfg, password=RotatingSecret.fixed(password), open=True) as pool:
        try:
            with pool.connection() as conn:
                ssl = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        except Exception:  # refused: the server's certificate was checked
            return
    pytest.fail(f"with the production ConfigMap's sslmode={cfg.sslmode!r} (sslrootcert={cfg.sslrootcert}) the "
                f"pool logged in to localhost through TLS={ssl} behind a certificate for 127.0.0.1 only, signed "
                f"by an untrusted CA: the server is not verified")


# --- 2. Redis: a URL query turns TLS verification off and settings accept it ---------------------------------

@pytest.mark.parametrize("query", ["ssl_cert_reqs=none", "ssl_ca_certs={ca}&ssl_check_hostname=false",
                                   "ssl_ca_certs={ca}&ssl_check_hostname=n", "ssl_ca_certs={ca}&ssl_check_hostname=f"],
                         ids=["cert_reqs-none", "check_hostname-false", "check_hostname-n", "check_hostname-f"])
def test_redis_url_cannot_turn_tls_verification_off(secured_redis: LocalRedis, local_ca: LocalCA,
                                                    query: str) -> None:
    """Rule (docs/security.md): Redis over ``rediss://`` checks the chain and the host name; settings are
    validated at start-up and refuse combinations that silently weaken TLS (as they do for Cassandra's CA
    without TLS and PostgreSQL's CA with a non-verifying sslmode). ``ssl_check_hostname`` is refused in every
    spelling redis-py reads as false: its URL parser takes it with ``to_bool``, whose false strings are
    ``0``, ``F``, ``FALSE``, ``N``, ``NO`` in any case, so the settings ask that parser rather than a list.

    Was: ``SLUICE_REDIS_URL`` is passed to redis-py's ``from_url``, which honours the query
    arguments ``ssl_cert_reqs=none`` and ``ssl_check_hostname=false``. ``RedisSettings._redis_scheme`` checks
    only the scheme and a password, so such a URL is accepted and the client (built as bootstrap builds it)
    logs in, with the real password, to ``localhost`` behind a certificate for 127.0.0.1 (and, with
    ``cert_reqs=none``, from a CA it was never given). Later it refused ``false``, ``0``, ``no``, ``off`` and
    an empty value only, and ``ssl_check_hostname=n`` (or ``=f``) still turned the host name check off.
    """
    user, password = f"rv{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    secured_redis.set_password(password, username=user)
    url = f"rediss://{user}@localhost:{secured_redis.tls_port}/0?" + query.format(ca=local_ca.ca_file)
    try:
        settings = load_settings(_base_env(SLUICE_REDIS_URL=url))
    except ConfigurationError:
        return  # refused at start-up
    connection = RedisConnection(settings.redis.url, password=RotatingSecret.fixed(password), cluster=False,
                                 socket_timeout=settings.redis.socket_timeout_seconds)
    try:
        pong = connection.client().ping()
    except (DependencyUnavailable, *REDIS_ERRORS):
        return  # the TLS handshake was refused
    finally:
        connection.close()
    pytest.fail(f"SLUICE_REDIS_URL ...?{query.split('=')[0]}=... was accepted and the client logged in to "
                f"localhost (PING -> {pong}) with a certificate that does not name it: TLS is not verified")


# --- 3. Redis: a password in the URL escapes the check when its name is percent-encoded ----------------------

def test_redis_url_password_is_refused_however_it_is_encoded(secured_redis: LocalRedis, local_ca: LocalCA,
                                                             clean_env: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Rule (docs/configuration.md): a password inside ``SLUICE_REDIS_URL`` is refused at start-up, because
    the URL is logged with the settings (``settings loaded: ...``) and shown by the tools.

    Was: the check looks for ``password=`` literally in the query, but redis-py decodes query
    names (``parse_qs``), so ``?%70assword=<secret>`` passes validation and is used as the password. The
    real password then appears in the ``settings loaded`` log line (``Settings.as_dict``).
    """
    user, password = f"rv{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    secured_redis.set_password(password, username=user)
    url = f"rediss://{user}@127.0.0.1:{secured_redis.tls_port}/0?ssl_ca_certs={local_ca.ca_file}&%70assword={password}"
    for name, value in _base_env(SLUICE_REDIS_URL=url).items():
        clean_env.setenv(name, value)
    caplog.set_level(logging.INFO, logger="shared.bootstrap")
    try:
        bootstrap.settings()
    except ConfigurationError:
        return  # refused at start-up
    client = bootstrap.redis_client()
    try:
        logged_in = client.client().ping()
    finally:
        client.close()
    leaked = [record.getMessage() for record in caplog.records if password in record.getMessage()]
    assert not leaked, (
        f"SLUICE_REDIS_URL with ?%70assword= was accepted, the client logged in with it (PING -> {logged_in}), "
        f"and the password is in the log line {leaked[0][:60]!r}... (redis url: "
        f"{bootstrap.settings().as_dict()['redis']['url']!r})")


# --- 4. Rotation: the history page-token key is derived from the Cassandra password ----------------------------

def test_history_page_tokens_survive_a_cassandra_password_rotation(keyvault_emulator: KeyVaultEmulator,
                                                                   keyvault_client: SecretClient,
                                                                   clean_env: pytest.MonkeyPatch) -> None:
    """Rule (docs/security.md, "Rotation without a restart"): rotating a password in Key Vault needs no
    restart and interrupts nothing; pods that read the secret before and after a rotation keep working together.

    Was: without ``SLUICE_DASHBOARD_TOKEN_KEY`` (the ConfigMap sets none), ``bootstrap.history_service``
    derives the HMAC key of the device-history page tokens from the *Cassandra password*, read once per process.
    After a rotation, a pod started (or restarted) afterwards signs with another key than the pods still
    running, so a page token handed out by one lookups replica is refused by another ("the page token was
    modified or belongs to another device", HTTP 400), until every pod is restarted.
    """
    name = unique_secret_name("cass")
    keyvault_client.set_secret(name, uuid.uuid4().hex)
    env = _base_env(SLUICE_CASSANDRA_USERNAME="sluice", SLUICE_CASSANDRA_PASSWORD_SECRET=name,
                    SLUICE_CASSANDRA_TLS="true", SLUICE_KEYVAULT_URL=keyvault_emulator.url,
                    SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file))
    for key, value in env.items():
        clean_env.setenv(key, value)
    before = bootstrap.history_service()  # a lookups pod started before the rotation
    token = before._signer.encode("device-1", HistoryCursor(date(2026, 1, 2), None))

    keyvault_client.set_secret(name, uuid.uuid4().hex)  # rotation, vault first (the documented order)
    bootstrap.reset()
    after = bootstrap.history_service()  # the other replica, started after the rotation
    try:
        after._signer.decode("device-1", token)
    except BadToken as exc:
        pytest.fail(f"a page token from a pod started before the Cassandra password rotation is refused by a pod "
                    f"started after it: {exc}")


# --- 5. sluice up's own PostgreSQL: the trusted superuser socket is open to every local user -----------------

def test_local_postgres_superuser_socket_is_not_open_to_other_users(local_ca: LocalCA, tmp_path: Path) -> None:
    """Rule (docs/security.md, "Locally"; sluice/secured.py): the stack's PostgreSQL superuser is reachable
    only over the Unix socket "in our own 0700 directory", which is why ``--auth-local=trust`` is safe.

    Was: ``LocalPostgres.start`` creates its directory with ``mkdir`` (0755 under the usual umask)
    and never restricts it; when run as root it even moves it to a world-searchable ``/tmp/sluice-postgres-*``.
    The socket (0777 by default) in it trusts anyone who connects as ``postgres``: any local user gets the
    superuser of the stack's database, without a password (and can read or change every password role).
    """
    server = LocalPostgres(local_ca, tmp_path / "own" / "postgres")  # as OwnServices.start_postgres gives it
    server.start()
    try:
        mode = server.directory.stat().st_mode & 0o777
        if os.geteuid() == 0 and shutil.which("runuser") and shutil.which("psql"):
            result = subprocess.run(
                ["runuser", "-u", "nobody", "--", "psql", f"host={server.directory} port={server.port} "
                 "dbname=postgres user=postgres", "-Atc", "SELECT current_user, rolsuper FROM pg_roles "
                 "WHERE rolname = current_user"],
                capture_output=True, text=True, timeout=30, check=False)
            assert result.returncode != 0, (
                f"the local user 'nobody' logged in as the PostgreSQL superuser through the trusted socket in "
                f"{server.directory} (mode {mode:o}): {result.stdout.strip()!r}")
        assert mode & 0o077 == 0, f"{server.directory} holds the trusted superuser socket with mode {mode:o}"
    finally:
        server.stop()


# --- 6. dev host: a failed HTTP invocation logs the function key ----------------------------------------------

FAILING_APP = '''
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="fails", methods=["GET"])
def fails(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("store unavailable")
'''


def test_devhost_does_not_log_the_function_key(tmp_path: Path) -> None:
    """Rule (docs/security.md; functions/parameters.py ``logged_path``): no secret in logs; a request's query
    can hold the function key (``?code=``), so only its path may be logged.

    Was: ``devhost/http_trigger.py`` logs ``request.path_qs`` when an invocation fails, so the key
    given as ``?code=`` (how the operations page and the lookups are called) is written to the dev host's log
    (``.local/stack/logs/devhost.log`` under ``sluice up``).
    """
    key = f"key-{uuid.uuid4().hex}"
    root = tmp_path / "app"
    settings = write_app(root, FAILING_APP, values={"DEVHOST_FUNCTION_KEY": key})
    running: Running = start_devhost(root, settings=settings)
    try:
        try:
            urllib.request.urlopen(f"http://{running.address}/api/fails?code={key}", timeout=10)
            status = 200
        except urllib.error.HTTPError as error:
            status = error.code
        assert status == 500
    finally:
        running.stop(stop_timeout=20)
    output = running.output()
    assert key not in output, "the function key is in the dev host's log: " + next(
        line for line in output.splitlines() if key in line)


# --- 7. PostgreSQL: the production sslrootcert=system trusts the system's CAs ---------------------------------

_CONNECT = """
import sys, psycopg
conn = psycopg.connect(sys.argv[1], connect_timeout=5)
print(conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0])
"""


def test_production_sslrootcert_system_trusts_the_system_certificate_authorities(
        secured_postgres: LocalPostgres, local_ca: LocalCA, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule (docs/security.md, "TLS"): production verifies Azure PostgreSQL with ``sslmode=verify-full`` and
    ``sslrootcert=system`` (``k8s-keda/configmap.yaml``), and ``system`` means the system's trusted CAs
    (libpq docs, ``sslrootcert``: "the system's trusted CA roots will be loaded").

    For ``system`` libpq loads the default verify paths of the OpenSSL it was built with (shown here: it
    connects once ``SSL_CERT_FILE`` names the local CA). psycopg[binary]'s libpq brings its own OpenSSL, whose
    compiled-in locations do not exist on this or any system. So ``PostgresSettings.conninfo`` hands libpq the
    system's CA file as Python's ``ssl`` finds it; this is checked with ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``
    removed, since a machine that exports them (this one may) would hide the problem (the image sets them too:
    ``tests/unit/test_dockerfile.py``).

    Was: ``conninfo`` passed ``sslrootcert=system`` through and the Dockerfile set neither variable: in the
    image no CA at all was trusted, and every verify-full connection to Azure (DigiCert chain) failed with
    "certificate verify failed": no enrichment, reports or status on AKS.
    """
    import psycopg_binary

    configmap = next(doc for doc in yaml.safe_load_all((ROOT / "k8s-keda" / "configmap.yaml").read_text())
                     if doc and doc.get("kind") == "ConfigMap" and "SLUICE_POSTGRES_SSLMODE" in doc.get("data", {}))
    sslmode, sslrootcert = (configmap["data"]["SLUICE_POSTGRES_SSLMODE"],
                            configmap["data"]["SLUICE_POSTGRES_SSLROOTCERT"])
    assert (sslmode, sslrootcert) == ("verify-full", "system")

    # libpq's "system" is OpenSSL's default verify paths, which SSL_CERT_FILE overrides
    role, password = f"rv_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    secured_postgres.create_role(role, password)
    dsn = (f"host=127.0.0.1 port={secured_postgres.port} dbname=postgres user={role} password={password} "
           "sslmode=verify-full sslrootcert=system")
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    result = subprocess.run([sys.executable, "-c", _CONNECT, dsn], env={**env, "SSL_CERT_FILE": str(local_ca.ca_file)},
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr

    # without those variables, that OpenSSL's compiled-in locations: they do not exist
    libs = glob.glob(str(Path(psycopg_binary.__file__).parents[1] / "psycopg_binary.libs" / "libcrypto*"))
    assert libs, "psycopg_binary's bundled libcrypto not found"
    crypto = ctypes.CDLL(libs[0])
    bundled = []
    for name in ("X509_get_default_cert_file", "X509_get_default_cert_dir"):
        function = getattr(crypto, name)
        function.restype = ctypes.c_char_p
        bundled.append(function().decode())
    system = ssl.get_default_verify_paths()
    if not os.path.isfile(system.openssl_cafile):
        pytest.skip(f"this machine has no system CA file ({system.openssl_cafile}) to find")

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    cfg = PostgresSettings(host="db.postgres.database.azure.com", sslmode=sslmode, sslrootcert=sslrootcert)
    trusted = conninfo_to_dict(cfg.conninfo())["sslrootcert"]
    assert os.path.isfile(trusted) and os.path.samefile(trusted, system.openssl_cafile), (
        f"sslrootcert=system reaches libpq as {trusted!r}: psycopg-binary's OpenSSL then loads {bundled}, which do "
        f"not exist, so no CA is trusted; the system's store is {system.openssl_cafile}")


# --- 8. PostgreSQL: a Key Vault password is only sent to a server whose host name was checked --------------

def test_a_vault_password_is_never_sent_to_an_unchecked_host_name(secured_postgres: LocalPostgres,
                                                                  local_ca: LocalCA) -> None:
    """Rule (shared/settings.py, ``_VAULT_SECRET_NEEDS_TLS``; docs/security.md, "TLS"): a password kept in Key
    Vault is never sent to a server whose certificate and host name were not checked, so
    ``SLUICE_POSTGRES_PASSWORD_SECRET`` needs ``SLUICE_POSTGRES_SSLMODE=verify-full``. libpq's ``verify-ca``
    checks the chain only: with a public CA (``sslrootcert=system``) anyone holding a certificate from it can
    pose as the server and ask for the password in clear (libpq docs, "SSL Support").

    Was: the settings took ``verify-ca`` with a password secret, and the pool logged in to ``localhost``
    behind a certificate made for 127.0.0.1 only.
    """
    role, password = f"rv_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    secured_postgres.create_role(role, password)
    env = _base_env(SLUICE_POSTGRES_HOST="localhost", SLUICE_POSTGRES_PORT=str(secured_postgres.port),
                    SLUICE_POSTGRES_DBNAME="postgres", SLUICE_POSTGRES_USER=role,
                    SLUICE_POSTGRES_PASSWORD_SECRET="postgres-password", SLUICE_POSTGRES_SSLMODE="verify-ca",
                    SLUICE_POSTGRES_SSLROOTCERT=str(local_ca.ca_file), SLUICE_POSTGRES_POOL_MIN_SIZE="0",
                    SLUICE_POSTGRES_POOL_MAX_SIZE="1", SLUICE_POSTGRES_POOL_TIMEOUT_SECONDS="5",
                    SLUICE_KEYVAULT_URL="https://kv.vault.azure.net/")
    try:
        cfg = load_settings(env).postgres
    except ConfigurationError as exc:
        assert "SLUICE_POSTGRES_SSLMODE=verify-ca" in str(exc)
        return  # refused at start-up
    # the vault's value, as bootstrap.rotating_secret would hand it over
    with make_pool(cfg.conninfo(), cfg, password=RotatingSecret.fixed(password), open=True) as pool:
        try:
            with pool.connection() as conn:
                user = conn.execute("SELECT current_user").fetchone()[0]
        except Exception:  # refused: the host name was checked
            return
    pytest.fail(f"SLUICE_POSTGRES_PASSWORD_SECRET with SLUICE_POSTGRES_SSLMODE=verify-ca was accepted and the "
                f"password logged in as {user} to 'localhost' behind a certificate for 127.0.0.1 only")


# --- 9. Rotation: the stack's Probe (`sluice up`'s live figures, the delivery check) caches every password -------

def test_the_probe_follows_a_postgres_password_rotation(secured_postgres: LocalPostgres, local_ca: LocalCA,
                                                        keyvault_emulator: KeyVaultEmulator,
                                                        keyvault_client: SecretClient) -> None:
    """Rule (docs/security.md, "Rotation without a restart"; tests/integration/test_own_services.py): the Probe
    connects as the pipeline does, with a ``RotatingSecret`` per store, so a password rotated while ``sluice up``
    runs is followed: a refused log-in re-reads the vault and connects with the new value.

    Was: ``Probe._password`` read each secret once per Probe (``KeyVaultSecrets.get``, cached) and handed the
    clients a plain string: after a rotation the enrichment figure of ``sluice up`` (one Probe for the whole run)
    read ``OperationalError: password authentication failed`` until the run ended (Redis and Cassandra likewise,
    once they reconnected).
    """
    role, old, new = f"rv_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex, uuid.uuid4().hex
    secured_postgres.create_role(role, old)
    name = unique_secret_name("probe")
    keyvault_client.set_secret(name, old)
    values = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    values.update(SLUICE_KEYVAULT_URL=keyvault_emulator.url, SLUICE_KEYVAULT_CA_FILE=str(keyvault_emulator.ca_file),
                  SLUICE_POSTGRES_HOST="127.0.0.1", SLUICE_POSTGRES_PORT=str(secured_postgres.port),
                  SLUICE_POSTGRES_DBNAME="postgres", SLUICE_POSTGRES_USER=role, SLUICE_POSTGRES_PASSWORD="",
                  SLUICE_POSTGRES_SSLMODE="verify-full", SLUICE_POSTGRES_SSLROOTCERT=str(local_ca.ca_file),
                  SLUICE_POSTGRES_PASSWORD_SECRET=name)
    probe = Probe(values)
    try:
        with probe.pg() as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        keyvault_client.set_secret(name, new)  # vault first ...
        secured_postgres.set_password(role, new)  # ... then the store
        deadline = time.monotonic() + 10
        while True:
            try:
                with probe.pg() as conn:
                    assert conn.execute("SELECT current_user").fetchone() == (role,)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        probe.close()


# --- 10. SLUICE_REDIS_URL query values redis-py cannot take pass the settings ---------------------------------

@pytest.mark.parametrize("query", [
    "ssl_min_version=TLSv1_2",          # the natural spelling; redis-py parses this option with int()
    "ssl_certfile=/nonexistent/client.pem",
    "health_check_interval=1.5",        # redis-py: int()
    "db=one",                           # redis-py: int()
    "DB=0",                             # the settings compare names in lower case, redis-py as written
], ids=["ssl_min_version-name", "ssl_certfile-missing", "health_check_interval-float", "db-not-a-number",
        "option-name-in-capitals"])
def test_redis_url_option_values_redis_py_refuses_are_refused_at_start_up(
        secured_redis: LocalRedis, local_ca: LocalCA, clean_env: pytest.MonkeyPatch, query: str) -> None:
    """``RedisSettings._redis_scheme`` checks the names of the URL's query options but not their values, so a
    ``SLUICE_REDIS_URL`` whose option redis-py cannot use (``ssl_min_version=TLSv1_2``, a missing ``ssl_certfile``,
    ``health_check_interval=1.5``, ``db=one``; or a known name in capitals, ``DB=0``, which the settings check in
    lower case but redis-py passes on as an unknown argument: ``TypeError``) passes start-up, and every Redis use
    then fails (change feed, status, lookups) with an error that does not name the setting. Expected: refused at
    start-up with a ``ConfigurationError`` naming ``SLUICE_REDIS_URL``, as a missing ``ssl_ca_certs`` file is."""
    user, password = f"rv{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    secured_redis.set_password(password, username=user)
    url = (f"rediss://{user}@127.0.0.1:{secured_redis.tls_port}/0?ssl_ca_certs={local_ca.ca_file}&{query}")
    for name, value in _base_env(SLUICE_REDIS_URL=url, SLUICE_REDIS_PASSWORD=password,
                                 SLUICE_REDIS_CLUSTER="false").items():
        clean_env.setenv(name, value)
    _redis_url_refused_at_start_up(f"SLUICE_REDIS_URL ...&{query}")


def _redis_url_refused_at_start_up(what: str) -> None:
    """``bootstrap.settings()`` refuses the environment naming ``SLUICE_REDIS_URL``; else the test fails saying what
    the client then did at its first use."""
    try:
        bootstrap.settings()
    except ConfigurationError as exc:
        assert "SLUICE_REDIS_URL" in str(exc)
        return
    connection = bootstrap.redis_client()
    try:
        outcome = f"answered PING: {connection.client().ping()}"
    except Exception as exc:
        outcome = f"failed at its first use with {type(exc).__name__}: {exc}"
    finally:
        connection.close()
    pytest.fail(f"{what} was accepted at start-up; the client {outcome}")


# --- 11. Cassandra TLS: several contact points are checked against their IP addresses, not their names ---------

def test_cassandra_tls_with_several_contact_points_checks_the_names_they_were_given(tmp_path: Path) -> None:
    """With ``SLUICE_CASSANDRA_TLS=true`` and more than one host in ``SLUICE_CASSANDRA_HOSTS``,
    ``build_cluster`` sets no ``server_hostname`` (only for exactly one contact point), so the driver checks each
    node's certificate against the address it resolved the name to: a cluster whose certificates name its hosts
    (the usual case) is refused on every node, although the same node and certificate connect with one contact point.
    Expected: every contact point's certificate is checked against the host name it was configured with (or the
    settings refuse several contact points with TLS, naming the setting), as docs/security.md's "chain and host
    name" promises."""
    ca = trustme.CA(organization_name="review")
    names = ["localhost", socket.gethostname()]
    assert {socket.gethostbyname(name) for name in names} == {"127.0.0.1"}
    cert = ca.issue_cert(*names)  # names, not addresses: as Apache Cassandra nodes' certificates usually are
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(cert_file), append=i > 0)
    cert.private_key_pem.write_to_path(str(key_file))
    running = start_cassandra_emulator("--username", "sluice", "--password", "pw", "--tls-cert", str(cert_file),
                                       "--tls-key", str(key_file))
    try:
        def settings(hosts: list[str]) -> CassandraSettings:
            return CassandraSettings(hosts=hosts, port=running.port, username="sluice", password="pw", tls=True,
                                     tls_ca_file=ca_file, consistency="ONE", connect_timeout_seconds=5)

        one = connect_cassandra(settings(names[:1]), RotatingSecret.fixed("pw"))
        assert one.execute("SELECT release_version FROM system.local").one() is not None  # name and chain check out
        one.cluster.shutdown()
        try:
            both = connect_cassandra(settings(names), RotatingSecret.fixed("pw"))
        except NoHostAvailable as exc:
            pytest.fail(f"SLUICE_CASSANDRA_HOSTS={','.join(names)} (TLS, certificate naming both) is refused: {exc}")
        both.cluster.shutdown()
    finally:
        running.stop()


@contextlib.contextmanager
def black_holed_vault_secret(password: str) -> Iterator[RotatingSecret]:
    """A Redis password secret whose read at start-up got ``password`` and whose vault then went dark: it accepts
    connections and never answers (a black-holed endpoint), so every re-read waits for its timeouts."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        vault = KeyVaultSecrets(f"https://127.0.0.1:{hole.getsockname()[1]}/", timeout=2.0, retries=1)
        first = iter([password])
        secret = RotatingSecret("redis-password", lambda: next(first, None) or vault.fetch("redis-password"),
                                min_interval=5.0)
        secret.value()
        try:
            yield secret
        finally:
            vault.close()


# --- 12. A slow or black-holed vault stalls the lookups' Redis connections although nothing was rotated -------

def test_a_black_holed_vault_does_not_stall_the_lookups_redis_connections(secured_redis: LocalRedis) -> None:
    """``AsyncRedisConnection`` (the lookups) makes every new connection call ``RotatingSecret.refresh`` before it
    logs in (``SecretCredentials(refresh_each=True)``), and the first refresh after start-up always reads the
    vault, so when Key Vault does not answer a lookup's Redis command waits for the whole vault read (its timeouts
    and retries: about 45 s with the adapter's defaults) although Redis is up and the cached password is still
    valid; the lookups have no overall timeout to bypass to Cassandra. Expected: a new connection logs in with the
    cached value at once (the vault is read after a refusal, or off the request path), so a lookup is bounded by
    the Redis socket timeout."""
    user, password = f"rv{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    secured_redis.set_password(password, username=user)
    with black_holed_vault_secret(password) as secret:
        connection = AsyncRedisConnection(secured_redis.url(tls=True, host="127.0.0.1").replace(
            f"{secured_redis.username}@", f"{user}@"), password=secret, cluster=False, socket_timeout=1.0)

        async def ping() -> float:
            started = time.monotonic()
            assert await (await connection.client()).ping()
            return time.monotonic() - started

        try:
            took = asyncio.run(ping())
        finally:
            connection.close()
    assert took < 2.0, (f"a lookup's first Redis command (Redis up, password unchanged) took {took:.1f} s: it waited "
                        "for a read of the unreachable vault")


# --- 13. A database other than 0 on a Redis Cluster passes the settings -----------------------------------------

def test_a_redis_cluster_url_with_a_database_other_than_0_is_refused_at_start_up(
        redis_cluster: LocalRedisCluster | None, clean_env: pytest.MonkeyPatch) -> None:
    """A Redis Cluster (Azure Managed Redis' OSS cluster policy, ``SLUICE_REDIS_CLUSTER=true``) has only database 0,
    but ``RedisSettings`` accepts ``SLUICE_REDIS_URL=rediss://...:10000/1`` with it (the URL form Azure Cache for
    Redis uses with a database), and every Redis use then fails with redis-py's ``RedisClusterException`` ("A
    ``db`` querystring option can only be 0 in cluster mode"), naming no setting. Expected: start-up refuses the
    combination with a ``ConfigurationError`` naming ``SLUICE_REDIS_URL`` and ``SLUICE_REDIS_CLUSTER``."""
    assert redis_cluster is not None
    url = redis_cluster.url.rstrip("/")
    url = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    for name, value in _base_env(SLUICE_REDIS_URL=f"{url}/1", SLUICE_REDIS_CLUSTER="true").items():
        clean_env.setenv(name, value)
    _redis_url_refused_at_start_up(f"SLUICE_REDIS_URL={url}/1 with SLUICE_REDIS_CLUSTER=true")


# --- 14. verify-full without SLUICE_POSTGRES_SSLROOTCERT passes start-up and never connects ----------------------

def test_postgres_verify_full_without_a_root_certificate_is_refused_at_start_up(
        secured_postgres: LocalPostgres, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``PostgresSettings`` accepts ``SLUICE_POSTGRES_SSLMODE=verify-full`` (what a Key Vault password requires)
    without ``SLUICE_POSTGRES_SSLROOTCERT``; libpq then looks for ``~/.postgresql/root.crt``, which a worker does not
    have, and every connection fails (the pool only times out, "couldn't get a connection", and enrichment and the
    status page report PostgreSQL down) although nothing is wrong with the server. Expected: start-up refuses
    verify-ca/verify-full when no CA is named and libpq's default file does not exist, naming
    ``SLUICE_POSTGRES_SSLROOTCERT`` (``system`` for Azure), as it refuses a CA file that does not exist."""
    assert not (Path.home() / ".postgresql" / "root.crt").exists()
    user, password = f"rv{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    secured_postgres.create_role(user, password)
    env = _base_env(SLUICE_POSTGRES_HOST=secured_postgres.host, SLUICE_POSTGRES_PORT=str(secured_postgres.port),
                    SLUICE_POSTGRES_DBNAME="postgres", SLUICE_POSTGRES_USER=user, SLUICE_POSTGRES_PASSWORD=password,
                    SLUICE_POSTGRES_SSLMODE="verify-full")
    for name, value in env.items():
        clean_env.setenv(name, value)
    try:
        settings = bootstrap.settings()
    except ConfigurationError as exc:
        assert "SLUICE_POSTGRES_SSLROOTCERT" in str(exc)
        return
    pool = make_pool(settings.postgres.conninfo(), settings.postgres, password=RotatingSecret.fixed(password),
                     open=True, name="review-verify-full")
    try:
        with pool.connection(timeout=3) as conn:
            outcome = f"connected ({conn.execute('SELECT 1').fetchone()})"
    except Exception as exc:
        outcome = f"cannot connect: {type(exc).__name__}: {exc}"
    finally:
        pool.close()
    pytest.fail(f"SLUICE_POSTGRES_SSLMODE=verify-full without SLUICE_POSTGRES_SSLROOTCERT was accepted; the pool "
                f"{outcome}")


# --- 15. The lookups read the Redis password from Key Vault on the worker's event loop ---------------------------

def test_the_lookups_cold_start_reads_the_vault_off_the_event_loop(clean_env: pytest.MonkeyPatch) -> None:
    """``functions/lookups.py`` calls ``bootstrap.lookup_service()`` inside its ``async`` handlers; the first call
    builds ``redis_async_connection()``, whose ``rotating_secret`` reads the Redis password from Key Vault
    synchronously, so the vault read (its timeouts and retries: about 45 s with the adapter's defaults when the vault
    does not answer, again at every request while the build keeps failing) blocks the worker's event loop: every
    other lookup and ``/api/health`` stall with it. Expected, as ``SecretCredentials.get_credentials_async`` and the
    Entra token requests already do: the vault is never read on the lookups' event loop."""
    with socket.socket() as hole:  # a vault that accepts connections and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        url = f"https://127.0.0.1:{hole.getsockname()[1]}/"
        env = _base_env(SLUICE_REDIS_URL="rediss://127.0.0.1:6380/0", SLUICE_REDIS_PASSWORD_SECRET="redis-password",
                        SLUICE_KEYVAULT_URL=url)
        for name, value in env.items():
            clean_env.setenv(name, value)
        # the adapter as bootstrap builds it, with shorter timeouts so the test is quick (defaults: 10 s, 3 retries)
        vault = KeyVaultSecrets(url, timeout=1.5, retries=1)
        clean_env.setattr(bootstrap, "keyvault", bootstrap.built(lambda: vault))

        async def scenario() -> float:
            async with loop_stalls(every=0.02, settle=0.1) as gaps:
                with contextlib.suppress(DependencyUnavailable):  # the vault does not answer: the request answers 503
                    bootstrap.lookup_service()  # as device_latest & co. call it, inside the async handler
                await asyncio.sleep(0.1)
            return max(gaps)

        try:
            stalled = asyncio.run(scenario())
        finally:
            vault.close()
    assert stalled < 0.5, f"the worker's event loop stood still for {stalled:.1f} s while the vault was read"


# --- 15b. Connections waiting for the first read of a black-holed vault each read it again, one after another ----

def test_connections_waiting_for_a_first_read_of_a_black_holed_vault_share_its_outcome() -> None:
    """``RotatingSecret.value()`` reads the secret under its lock when nothing is cached yet (the lookups' Redis
    password, ``store_password(read_now=False)``: each new connection calls it on a thread). When that read failed (a
    black-holed vault: the adapter's timeouts and retries, ~45 s with its defaults), every connection that waited
    behind the lock made its own full read, one after another: N connections opened together at a cold start cost N
    vault reads back to back. As ``refresh`` does, the callers that waited take the read's error: one read in all."""
    with socket.socket() as hole:  # a vault that accepts connections and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        vault = KeyVaultSecrets(f"https://127.0.0.1:{hole.getsockname()[1]}/", timeout=0.5, retries=0)
        reads = 0

        class CountingVault:
            def fetch(self, name: str) -> str:
                nonlocal reads
                reads += 1
                return vault.fetch(name)

        secret = store_password(None, "redis-password", CountingVault, min_interval=5.0, read_now=False)
        assert secret is not None
        outcomes: list[str] = []
        start = threading.Barrier(5)

        def connection() -> None:
            start.wait()
            try:
                secret.value()
                outcomes.append("read")
            except DependencyUnavailable:
                outcomes.append("unavailable")

        threads = [threading.Thread(target=connection) for _ in range(5)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert outcomes == ["unavailable"] * 5
            assert reads == 1, f"5 connections waiting for the first read of an unreachable vault made {reads} reads"
            with pytest.raises(DependencyUnavailable):  # a later connection reads again (the vault may be back)
                secret.value()
            assert reads == 2
        finally:
            vault.close()


# --- 16. A black-holed vault stalls the change feed's new Redis Cluster connections although nothing was rotated ---

def test_a_black_holed_vault_does_not_stall_new_redis_cluster_connections(
        redis_cluster: LocalRedisCluster | None) -> None:
    """A vault that cannot be reached keeps the cached value (``secrets.py``): Redis may still take it, and the vault
    is re-read when Redis refuses the password, as test 12 holds for the lookups' clients. Here the password was
    read at start-up, the vault has gone dark since (it accepts TCP and never answers), Redis is up and the password
    unchanged. Expected: the first command of the change feed's blocking Redis Cluster client is bounded by the
    Redis socket timeout.

    Was: that client (``SecretCredentials(refresh_each=True)``) called ``RotatingSecret.refresh`` before every new
    connection, and the first refresh always reads the vault, so its first command waited for the whole vault read
    (timeouts and retries: about 40 s with the adapter's defaults) before it even logged in, and so did every new
    connection (a failover, a node added) each time the refresh interval had passed.
    """
    if redis_cluster is None:
        pytest.skip("SLUICE_TEST_REDIS_CLUSTER_URL names an external cluster: its ACL is not ours to change")
    user, password = f"bh{uuid.uuid4().hex[:10]}", uuid.uuid4().hex

    def on_every_node(*command: str) -> None:
        for port in redis_cluster.ports:
            with redis.Redis(host=redis_cluster.host, port=port) as node:
                node.execute_command(*command)

    on_every_node("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    with black_holed_vault_secret(password) as secret:
        connection = RedisConnection(redis_cluster.url.replace("redis://", f"redis://{user}@"), password=secret,
                                     cluster=True, socket_timeout=1.0)
        try:
            started = time.monotonic()
            connection.client().set(f"blackhole:{{{user}}}", "1")
            took = time.monotonic() - started
        finally:
            connection.close()
            on_every_node("ACL", "DELUSER", user)
    assert took < 2.0, (f"the first command on the Redis Cluster (Redis up, password unchanged) took {took:.1f} s: "
                        "it waited for a read of the unreachable vault")
