"""Building the cassandra-driver Cluster and Session from settings.

One Session per worker process, built on first use and reused by every
invocation (see ``shared.bootstrap``); nothing connects at import time.
Cosmos DB for Apache Cassandra: port 10350, TLS, PasswordAuthenticator with the
account name and key, ``SLUICE_CASSANDRA_LOCAL_DC`` set to the account's region.

A password given as a :class:`RotatingSecret` is read at every connection attempt,
the driver's own reconnections included, and a refused log-in (``AuthenticationFailed``)
re-reads the secret (rate-limited) and logs in once more with its new value before
the driver sees the refusal (:class:`SecretAuthenticator`, :class:`_SecretLogInConnection`).
Open connections stay logged in: Cassandra checks a password only at connection start-up.

Rows are named tuples from one class per column list (:mod:`shared.adapters.cassandra.rows`),
not a new class per result set as with the driver's default factory.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from cassandra import AuthenticationFailed, ConsistencyLevel
from cassandra.auth import AuthProvider, PlainTextAuthenticator, PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, DefaultConnection, ExecutionProfile, Session
from cassandra.connection import DefaultEndPoint, DefaultEndPointFactory
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


class SecretAuthenticator(PlainTextAuthenticator):  # type: ignore[misc]  # cassandra-driver is untyped: Any
    """A PasswordAuthenticator log-in with the value ``secret`` holds when the connection attempt starts.

    The value is taken here, on the thread that opens the connection, not in ``initial_response``: the driver
    calls that on its I/O thread, which must never wait for a vault read another thread holds the secret's lock
    for. :class:`_SecretLogInConnection` makes one per attempt, so each attempt uses the current value.
    """

    def __init__(self, username: str, secret: RotatingSecret) -> None:
        super().__init__(username, secret.value())
        self.secret = secret

    def again(self) -> SecretAuthenticator:
        """An authenticator for the next attempt: the secret's value now."""
        return SecretAuthenticator(self.username, self.secret)


class SecretAuthProvider(AuthProvider):  # type: ignore[misc]  # cassandra-driver has no type hints: Any
    """PasswordAuthenticator log-ins with the current value of a secret (:class:`SecretAuthenticator`).

    The driver builds one authenticator per connection factory, and for a node it lost it reuses that factory
    for every reconnection attempt of the outage; :class:`_SecretLogInConnection` therefore takes a new one,
    with the secret's value at that moment, for each attempt.
    """

    def __init__(self, username: str, secret: RotatingSecret) -> None:
        self.username = username
        self.secret = secret

    def new_authenticator(self, host: str) -> SecretAuthenticator:
        return SecretAuthenticator(self.username, self.secret)


class _SecretLogInConnection(DefaultConnection):  # type: ignore[misc]  # the driver's connection class: Any
    """The driver's connection class, whose log-in answers a refused password as the other stores' clients do.

    The driver gives up on a node for good after one refused log-in (its reconnection handler stops on
    ``AuthenticationFailed``), so the refusal is handled here, before the driver sees it: each attempt logs in
    with the secret's current value; when the node refuses it, the secret is re-read (rate-limited,
    ``RotatingSecret.refresh``) and, if it changed, the log-in is tried once more with the new value. This runs in
    ``factory``, on the thread that opens the connection (the driver's executor, or the caller of
    :func:`connect`) and waits for it, never on the driver's I/O thread, so a slow vault holds one connection
    attempt, never the driver's other connections. A node refused with the vault's current value stays refused:
    after a store-first rotation the driver gives up on it as before.
    """

    @classmethod
    def factory(cls, endpoint: Any, timeout: float, *args: Any, **kwargs: Any) -> Any:
        authenticator = kwargs.get("authenticator")
        if not isinstance(authenticator, SecretAuthenticator):
            return super().factory(endpoint, timeout, *args, **kwargs)
        authenticator = authenticator.again()
        try:
            return super().factory(endpoint, timeout, *args, **{**kwargs, "authenticator": authenticator})
        except AuthenticationFailed:
            if not authenticator.secret.refresh("a refused Cassandra log-in", rejected=authenticator.password):
                raise
        logger.warning("Cassandra at %s refused the password of secret %s; logging in with its new value",
                       endpoint, authenticator.secret.name)
        return super().factory(endpoint, timeout, *args, **{**kwargs, "authenticator": authenticator.again()})


class _NamedEndPoint(DefaultEndPoint):  # type: ignore[misc]  # the driver's endpoint class: Any
    """A node's address whose TLS certificate is checked against the host name it was configured by.

    Equal to the driver's own endpoint of the same address and port, so the node found again in
    ``system.peers`` is the same host, not a second one.
    """

    def __init__(self, address: str, port: int, server_name: str) -> None:
        super().__init__(address, port)
        self.server_name = server_name

    @property
    def ssl_options(self) -> dict[str, str]:
        return {"server_hostname": self.server_name}  # a new dict: the connection takes options out of it

    def __repr__(self) -> str:
        return f"<_NamedEndPoint: {self.address}:{self.port} ({self.server_name})>"


class _NamedEndPointFactory(DefaultEndPointFactory):  # type: ignore[misc]  # the driver's factory class: Any
    """Nodes found in ``system.peers``: one at an address a configured host name resolved to is checked against
    that name; any other against its address (the driver's default)."""

    def __init__(self, port: int, names: dict[str, str]) -> None:
        super().__init__(port=port)
        self.names = names

    def create(self, row: Any) -> Any:
        endpoint = super().create(row)
        name = self.names.get(endpoint.address)
        return _NamedEndPoint(endpoint.address, endpoint.port, name) if name else endpoint


def _named_contact_points(hosts: list[str], port: int) -> tuple[list[_NamedEndPoint], dict[str, str]]:
    """Each host's addresses as contact points checked against that host's name, and the name of each address.

    Resolved here, as the driver resolves contact points; a name that does not resolve is left out (the driver
    logs and skips such a contact point too), and none resolving leaves the driver's own error to say so.
    """
    names: dict[str, str] = {}
    for host in hosts:
        try:
            found = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
        except socket.gaierror:
            logger.warning("Cassandra contact point %s does not resolve; left out", host)
            continue
        for *_, address in found:
            names.setdefault(str(address[0]), host)  # the first name given for an address is the one checked
    return [_NamedEndPoint(address, port, name) for address, name in names.items()], names


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
        options["connection_class"] = _SecretLogInConnection
    elif settings.username:
        options["auth_provider"] = PlainTextAuthProvider(settings.username, password or "")
    if settings.tls:
        context = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
        options["ssl_context"] = context
        # The driver resolves contact points to addresses and checks each certificate against the address; a
        # certificate names the host, so check that name instead. One contact point (Cosmos DB has one): every
        # node, those found later included, is checked against it (Cosmos' certificate covers its nodes).
        # Several: each against the name its address was reached by; a node at no such address, against its
        # address (docs/security.md).
        if len(settings.hosts) == 1:
            options["ssl_options"] = {"server_hostname": settings.hosts[0]}
        else:
            contact_points, names = _named_contact_points(settings.hosts, settings.port)
            if contact_points:
                options["contact_points"] = contact_points
                options["endpoint_factory"] = _NamedEndPointFactory(settings.port, names)
    return _Cluster(**options)


def connect(settings: CassandraSettings, password: str | RotatingSecret | None = None, *,
            keyspace: str | None = None) -> Session:
    """Connect and return a Session (bound to ``keyspace`` when given).

    A rotating ``password`` refused by a host is re-read and that log-in tried again if it changed
    (:class:`_SecretLogInConnection`).
    """
    session = _connect(build_cluster(settings, password), keyspace)
    logger.info("connected to Cassandra at %s:%s", ",".join(settings.hosts), settings.port)
    return session


def _connect(cluster: Cluster, keyspace: str | None) -> Session:
    try:
        return cluster.connect(keyspace)
    except Exception:
        cluster.shutdown()  # its threads would outlive every failed attempt of a retried invocation
        raise
