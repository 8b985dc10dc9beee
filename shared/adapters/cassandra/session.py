"""Building the cassandra-driver Cluster and Session from settings.

One Session per worker process, built on first use and reused by every
invocation (see ``shared.bootstrap``); nothing connects at import time.
Cosmos DB for Apache Cassandra: port 10350, TLS, PasswordAuthenticator with the
account name and key, ``SLUICE_CASSANDRA_LOCAL_DC`` set to the account's region.

A password given as a :class:`RotatingSecret` is re-read (rate-limited) for every
new connection (:class:`SecretAuthProvider`), so the driver's own reconnections
use the vault's current value. When every host refuses it (``AuthenticationFailed``)
at :func:`connect`, the secret is re-read and the connection tried once more. Open
connections stay logged in: Cassandra checks a password only at connection start-up.

Rows are named tuples from one class per column list (:mod:`shared.adapters.cassandra.rows`),
not a new class per result set as with the driver's default factory.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from cassandra import AuthenticationFailed, ConsistencyLevel
from cassandra.auth import AuthProvider, PlainTextAuthenticator, PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy

from shared.adapters.cassandra.retry import CosmosRetryPolicy, delay_retries
from shared.adapters.cassandra.rows import named_rows
from shared.adapters.secrets import RotatingSecret
from shared.settings import CassandraSettings

logger = logging.getLogger(__name__)

# The driver retries a node it lost every 1, 2, 4 ... seconds, by default up to every 600 s: after an outage of a
# few minutes the session would come back as late as ten minutes after the store did, ingest retrying and
# dead-lettering meanwhile. A pipeline wants it back within half a minute of the store.
RECONNECT_BASE_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 30.0


class SecretAuthProvider(AuthProvider):  # type: ignore[misc]  # cassandra-driver has no type hints: Any
    """PasswordAuthenticator log-ins with the current value of a secret.

    The driver gives up on a host for good after one refused log-in (its reconnection
    handlers stop on ``AuthenticationFailed``), so waiting for a refusal would leave a
    restarted node unused after a rotation. Each new connection therefore re-reads the
    secret first, rate-limited (``RotatingSecret.refresh``: connections opened
    together cost one read, and a vault outage keeps the cached value).
    """

    def __init__(self, username: str, secret: RotatingSecret) -> None:
        self.username = username
        self.secret = secret

    def new_authenticator(self, host: str) -> PlainTextAuthenticator:
        self.secret.refresh("opening a Cassandra connection")
        return PlainTextAuthenticator(self.username, self.secret.value())


class _Cluster(Cluster):  # type: ignore[misc]  # Cluster is untyped (Any): cassandra-driver has no stubs
    """A Cluster whose sessions wait out Cosmos DB's ``RetryAfterMs`` on a timer, not on the I/O thread
    (:func:`shared.adapters.cassandra.retry.delay_retries`)."""

    def connect(self, keyspace: str | None = None, wait_for_all_pools: bool = False) -> Session:
        return delay_retries(super().connect(keyspace, wait_for_all_pools))


def build_cluster(settings: CassandraSettings, password: str | RotatingSecret | None = None) -> Cluster:
    """A configured, not yet connected Cluster (the password comes resolved, never from logs)."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc)),
        retry_policy=CosmosRetryPolicy(
            max_retries=settings.overload_max_retries, max_wait=settings.overload_max_wait_seconds
        ),
        consistency_level=ConsistencyLevel.name_to_value[settings.consistency],
        request_timeout=settings.request_timeout_seconds,
        row_factory=named_rows,
    )
    options: dict[str, Any] = {
        "contact_points": settings.hosts,
        "port": settings.port,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
        "connect_timeout": settings.connect_timeout_seconds,
        "protocol_version": 4,
        "reconnection_policy": ExponentialReconnectionPolicy(RECONNECT_BASE_SECONDS, RECONNECT_MAX_SECONDS),
    }
    if settings.username and isinstance(password, RotatingSecret):
        options["auth_provider"] = SecretAuthProvider(settings.username, password)
    elif settings.username:
        options["auth_provider"] = PlainTextAuthProvider(settings.username, password or "")
    if settings.tls:
        context = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
        options["ssl_context"] = context
        # The driver resolves contact points to addresses and checks the certificate against the address;
        # Cosmos DB's certificate names the account's host, so name it (one contact point: Cosmos has one).
        if len(settings.hosts) == 1:
            options["ssl_options"] = {"server_hostname": settings.hosts[0]}
    return _Cluster(**options)


def connect(settings: CassandraSettings, password: str | RotatingSecret | None = None, *,
            keyspace: str | None = None) -> Session:
    """Connect and return a Session (bound to ``keyspace`` when given).

    A rotating ``password`` refused by every host is re-read once and the
    connection tried again if it changed.
    """
    used = password.value() if isinstance(password, RotatingSecret) else None
    try:
        session = _connect(build_cluster(settings, password), keyspace)
    except NoHostAvailable as exc:
        if not (isinstance(password, RotatingSecret) and _refused(exc) and password.refresh(rejected=used)):
            raise
        logger.warning("Cassandra refused the password of secret %s; connecting with its new value", password.name)
        session = _connect(build_cluster(settings, password), keyspace)
    logger.info("connected to Cassandra at %s:%s", ",".join(settings.hosts), settings.port)
    return session


def _connect(cluster: Cluster, keyspace: str | None) -> Session:
    try:
        return cluster.connect(keyspace)
    except Exception:
        cluster.shutdown()  # its threads would outlive every failed attempt of a retried invocation
        raise


def _refused(exc: NoHostAvailable) -> bool:
    """Whether every host refused the credentials (rather than being down)."""
    errors = list(exc.errors.values())
    return bool(errors) and all(isinstance(error, AuthenticationFailed) for error in errors)
