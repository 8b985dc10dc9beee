"""The redis-py client: one Redis, or a Redis Cluster (OSS cluster policy), built on first use.

``cluster=True`` builds ``RedisCluster``; ``cluster=None`` asks the server (``INFO
cluster``: ``cluster_enabled:1``) and builds what it says; ``False`` a plain
``Redis``. ``RedisCluster`` routes each command by its key's slot, groups a
pipeline's commands per node, follows ``MOVED``/``ASK`` and refreshes its slot
map after a failover. Nothing connects before the first use, and a failed
first use is retried on the next one, so a Redis that is down at start-up only
makes lookups bypass the cache.

A password given as a :class:`RotatingSecret` is given to each new connection as
its cached value (a redis-py ``CredentialProvider``; the ACL user name comes from
the URL), so a slow or unreachable vault never holds a log-in that Redis accepts.
When Redis refuses it (``WRONGPASS``, ``NOAUTH``: ``AuthenticationError``), the
secret is re-read (rate-limited) and the log-in repeated once with the new value
(:meth:`SecretCredentials.log_in`): on a single Redis, in the client that asks
``INFO cluster`` (``cluster=None``), and on each node of a Redis Cluster alike.
Open connections stay logged in: Redis checks a password only at ``AUTH``.

With ``entra`` (a ``TokenCredential``) there is no password: each client gets an
:class:`~shared.adapters.redis.entra.EntraCredentials`, which signs in as the
identity's object id with an Entra ID token and re-``AUTH``s open connections
before the token ends (``entra.py``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection, ConnectionPool
from redis.credentials import CredentialProvider
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterCrossSlotError,
    ClusterError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry

from shared.adapters.redis.entra import EntraCredentials, Token
from shared.adapters.secrets import RotatingSecret
from shared.exceptions import DependencyRefused, DependencyUnavailable, SluiceError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

logger = logging.getLogger(__name__)

# Everything redis-py raises: RedisClusterException (e.g. SlotNotCoveredError) is not a RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

Client = redis.Redis | RedisCluster


# redis-py's cluster clients, blocking and asyncio: the only code whose AttributeError `redirects` maps.
_CLUSTER_MODULES = frozenset({"redis.cluster", "redis.asyncio.cluster"})


class RedirectToUnknownNode(RedisClusterException):
    """Redis Cluster redirected a command (``ASK``: a slot being migrated) to a node missing from the client's slot
    map, and redis-py failed on it with a bare ``AttributeError`` (``'NoneType' object has no attribute
    'redis_connection'``; ``'connection_kwargs'`` with redis.asyncio).

    It happens while a slot migrates to a master that owns no slot yet (a node added to scale out): ``CLUSTER
    SLOTS``, from which redis-py builds its map, does not list that node until the migration gives it a slot. Being
    a ``RedisClusterException``, it is mapped like any other Redis failure: ``DependencyUnavailable`` (the lookups
    bypass to Cassandra, the change feed keeps its position and retries) and a slot-map refresh.
    """


def _raised_in_cluster_client(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is redis-py's cluster client (not our code it called)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__") in _CLUSTER_MODULES


@contextmanager
def redirects() -> Iterator[None]:
    """Re-raise redis-py's ``AttributeError`` on a redirect to an unknown node as :class:`RedirectToUnknownNode`.

    Narrow on purpose: only an ``AttributeError`` raised inside redis-py's cluster modules is mapped, so a bug of
    ours (an ``AttributeError`` raised in our own code) still fails loudly instead of passing for an outage.
    """
    try:
        yield
    except AttributeError as exc:
        if not _raised_in_cluster_client(exc):
            raise
        raise RedirectToUnknownNode(
            f"Redis Cluster redirected a command to a node that is not in the client's slot map (a slot migrating "
            f"to a master added since the map was read?): redis-py failed with AttributeError: {exc}") from exc


class CrossSlotError(SluiceError):
    """A command's keys span hash slots: a bug in the key layout, never an outage (so never a cache bypass)."""


# Error replies that say the server (or the cluster) serves nothing now, not that it refused one command:
# CLUSTERDOWN and MASTERDOWN (ClusterError), a MOVED or ASK redis-py did not follow, TRYAGAIN (a slot migrating).
_OUTAGE_REPLIES: tuple[type[Exception], ...] = (ClusterError, AskError, TryAgainError)
# ... and BUSY (a script past its time limit: every command is refused until it ends), which redis-py has no class
# for. (LOADING, WRONGPASS and NOAUTH are ConnectionErrors in redis-py, "max number of clients reached" too.)
_OUTAGE_CODES = ("BUSY ",)


def refused(exc: BaseException) -> bool:
    """Whether a redis-py failure is the server's refusal of this one command, the server itself up and answering.

    That is an error reply (``ResponseError``): ``OOM`` (a full Redis with ``maxmemory-policy noeviction`` refuses
    writes and answers reads), ``READONLY`` (a replica), ``NOPERM``, a script's error. Not a refusal: the replies
    of a server or cluster that serves nothing now (``_OUTAGE_REPLIES``, ``BUSY``), and every other failure:
    connection errors, timeouts, redis-py's cluster failures (a slot not covered, a redirect to an unknown node).
    """
    return (isinstance(exc, ResponseError) and not isinstance(exc, _OUTAGE_REPLIES)
            and not str(exc).startswith(_OUTAGE_CODES))


def failed(what: str, exc: BaseException) -> SluiceError:
    """The error to raise for a redis-py failure: ``DependencyUnavailable`` (an outage), ``DependencyRefused`` (a
    subclass: the server refused this command, :func:`refused`), or ``CrossSlotError`` for a layout bug.

    The one place a Redis failure is classified: callers that must stop on any failure (the change feed, which then
    keeps its position) catch ``DependencyUnavailable``; the lookups' circuit breaker opens only for an outage."""
    if isinstance(exc, ClusterCrossSlotError) or (
            isinstance(exc, RedisClusterException) and "same key slot" in str(exc)):
        return CrossSlotError(f"{what}: keys in more than one hash slot: {exc}")
    if refused(exc):
        return DependencyRefused("redis", f"{what}: {type(exc).__name__}: {exc}")
    return DependencyUnavailable("redis", f"{what} failed: {type(exc).__name__}: {exc}")


@contextmanager
def calling(what: str) -> Iterator[None]:
    """Raise every redis-py failure inside the block, its failure on a redirect to an unknown node included
    (:func:`redirects`), as :func:`failed` maps it."""
    try:
        with redirects():
            yield
    except REDIS_ERRORS as exc:
        raise failed(what, exc) from exc


def primaries_answer(replies: Mapping[str, object]) -> None:
    """Raise ``DependencyUnavailable`` unless every master of a cluster answered ``PING`` (``replies``: the
    answer per master, by name).

    A plain ``PING`` on a cluster reaches one node: with a master dead, the slots it serves fail while that
    ``PING`` still answers, and a health check built on it would say Redis is up (and close the lookups'
    circuit breaker). A master missing an answer, or a slot map with no master at all, is down too."""
    if not replies:
        raise DependencyUnavailable("redis", "PING: the Redis Cluster's slot map lists no master")
    silent = [name for name, answer in replies.items() if answer is not True]
    if silent:
        raise DependencyUnavailable("redis", f"PING: no PONG from master(s) {', '.join(silent)}")


def is_cluster(client: redis.Redis) -> bool:
    """Whether the server runs in cluster mode (``INFO cluster``)."""
    return bool(client.info("cluster").get("cluster_enabled"))


class RedisConnection:
    """Holds the client of one Redis URL; :meth:`client` builds it on first use."""

    def __init__(self, url: str, *, password: str | RotatingSecret | None = None, entra: TokenCredential | None = None,
                 cluster: bool | None = None, socket_timeout: float = 2.0, **options: Any) -> None:
        self.url = url
        self._options: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout,
                                         **options}
        self._entra = entra
        if entra is not None:
            if password is not None:
                raise ValueError("a Redis connection signs in with a password or with Entra ID, not both")
        elif isinstance(password, RotatingSecret):
            self.url, username = without_username(url)
            self._options["credential_provider"] = SecretCredentials(username, password)
        else:
            self._options["password"] = password
        self._cluster = cluster
        self._provider: EntraCredentials | None = None
        self._client: Client | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, client: Client) -> RedisConnection:
        """Wrap a client built elsewhere (tests, benchmarks)."""
        connection = cls("redis://")
        connection._client = client
        connection._cluster = isinstance(client, RedisCluster)
        return connection

    @property
    def clustered(self) -> bool:
        self.client()
        return bool(self._cluster)

    @property
    def opened(self) -> bool:
        """Whether a client has been built (the health check's "connecting" ends there)."""
        return self._client is not None

    def client(self) -> Client:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._build()
                except REDIS_ERRORS as exc:
                    raise failed(f"connecting to {self._where()}", exc) from exc
                if self._provider is not None:
                    self._provider.deliver_to(self._signed_in_again)
            return self._client

    def _build(self) -> Client:
        if self._entra is not None and self._provider is None:
            # One per connection, kept across failed builds: its token request is the one every build's connections
            # wait for (a new provider per build would start another while the first still hangs). It re-AUTHs the
            # connections of the client that registers last, and a new connection waits for a token as long as for
            # Redis itself: its connect timeout.
            self._provider = EntraCredentials(self._entra, wait_seconds=self._options.get("socket_connect_timeout"))
            self._options["credential_provider"] = self._provider
        provider = self._options.get("credential_provider")
        hook = provider.log_in if isinstance(provider, SecretCredentials) else None
        cluster = self._cluster
        if cluster is None:
            # The probe logs in as a single Redis's client does (the hook): a refused password re-reads the secret.
            probe = redis.Redis.from_url(self.url, redis_connect_func=hook, **self._options)
            try:
                cluster = is_cluster(probe)
            finally:
                probe.close()
            logger.info("Redis at %s is %s", self._where(), "a cluster" if cluster else "a single node")
        self._cluster = cluster
        if cluster:
            # Few, short retries: a failover takes seconds, and the callers retry anyway (the change feed
            # on its next run, the lookups after their bypass window); long in-client retries only stall them.
            retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
            cluster_class = SecretLogInCluster if isinstance(provider, SecretCredentials) else RedisCluster
            return cluster_class.from_url(self.url, retry=retry, **self._options)
        return redis.Redis.from_url(self.url, health_check_interval=30, redis_connect_func=hook, **self._options)

    def _signed_in_again(self, token: Token) -> None:
        """``AUTH`` with a renewed Entra ID token on every pooled connection (each node's, on a cluster).

        Pool by pool and connection by connection (:func:`signed_in_again`): one connection the server closed meanwhile
        (a restarted shard, an idle timeout) must not keep the others on the token that is about to end.
        """
        client = self._client
        if client is None:
            return
        if isinstance(client, RedisCluster):
            # The startup nodes too: without dynamic startup nodes they are objects of their own, with their own pools.
            nodes = [*client.get_nodes(),  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                     *client.nodes_manager.startup_nodes.values()]
            pools = list({id(pool): pool for pool in (node.redis_connection.connection_pool for node in nodes
                                                      if node.redis_connection is not None)}.values())
        else:
            pools = [client.connection_pool]
        for pool in pools:
            try:
                signed_in_again(pool, token)
            except Exception:  # never the end of the other pools' sign-in; logged with its cause
                logger.warning("Redis re-authentication of one connection pool failed", exc_info=True)

    def refresh(self) -> None:
        """After a connection failure on a cluster: read the slot map again, so a promoted replica is found.

        redis-py refreshes its map on ``MOVED``, but a master that died answers nothing,
        and its pipelines keep aiming at it; best effort (the cluster may still be electing).
        """
        client = self._client
        if isinstance(client, RedisCluster):
            try:
                client.nodes_manager.initialize()
            except REDIS_ERRORS:
                logger.info("Redis Cluster slot map not refreshed yet", exc_info=True)

    def _where(self) -> str:
        return self.url.rsplit("@", 1)[-1]

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._provider is not None:
                self._provider.close()
                self._provider = None


def signed_in_again(pool: ConnectionPool, token: Token) -> None:
    """redis-py's ``ConnectionPool.re_auth_callback``, without stopping at the first connection that fails.

    Under the pool's lock (``get_connection`` takes idle connections under it): each busy connection is marked
    (``set_re_auth_token``: redis-py sends its ``AUTH`` as it is handed back), each open idle one sends ``AUTH`` now.
    An idle connection whose ``AUTH`` fails (the server closed it) is closed: its next use reconnects, signing in
    with the credential provider's token, which is the renewed one. redis-py's own callback lets that failure out
    of its loop, leaving every later connection of the pool on the old token.
    """
    with pool._lock:
        for busy in pool._in_use_connections:
            busy.set_re_auth_token(token)
        for idle in tuple(pool._available_connections):
            if not idle.is_connected:  # it signs in with the renewed token as it connects
                continue
            try:
                idle.send_command("AUTH", token.user, token.value)
                idle.read_response()
            except (RedisError, OSError) as exc:
                logger.info("Redis connection not re-authenticated (%s: %s); it reconnects on its next use",
                            type(exc).__name__, exc)
                idle.disconnect()


def as_text(value: bytes | str) -> str:
    """A reply as text (the client returns bytes; a client made with ``decode_responses`` returns str)."""
    return value.decode() if isinstance(value, bytes) else value


class SecretCredentials(CredentialProvider):
    """The ACL user and the cached value of its password secret, asked for at every new connection.

    The vault is read again only after Redis refuses that value (:meth:`log_in`), never before a log-in: a vault
    that does not answer must not hold connections to a Redis that still takes the cached password.
    """

    def __init__(self, username: str | None, secret: RotatingSecret) -> None:
        self.username = username
        self.secret = secret

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self.secret.value()
        return (self.username, password) if self.username else (password,)

    def log_in(self, connection: AbstractConnection, handshake: Callable[[], object] | None = None) -> None:
        """redis-py's log-in (``handshake``; the connection's ``on_connect`` unless given), repeated once with the
        secret's new value if the server refused the password."""
        if handshake is None:
            handshake = connection.on_connect
        used = self.secret.value()  # what get_credentials gives on_connect
        try:
            handshake()
        except AuthenticationError:
            if not self.secret.refresh(rejected=used):
                raise
            logger.warning("Redis refused the password of secret %s; logging in with its new value", self.secret.name)
            handshake()  # a refused AUTH leaves the socket open, not logged in


class SecretLogInCluster(RedisCluster):
    """A ``RedisCluster`` whose connections log in through :meth:`SecretCredentials.log_in`, as a single Redis's do.

    redis-py's cluster client makes its own ``on_connect`` every node's log-in and runs a caller's
    ``redis_connect_func`` only after that log-in succeeded, too late to answer a refused password; this is the
    one place a cluster connection's refusal can be caught and the log-in repeated with the secret's new value.
    """

    def on_connect(self, connection: AbstractConnection) -> None:
        handshake = functools.partial(super().on_connect, connection)
        credentials = connection.credential_provider
        if isinstance(credentials, SecretCredentials):
            credentials.log_in(connection, handshake)
        else:
            handshake()


def without_username(url: str) -> tuple[str, str | None]:
    """The URL without its user info, and the user name in it (redis-py refuses both a user and a provider),
    percent-decoded as redis-py's own URL parser decodes it (``app%40eu`` is the ACL user ``app@eu``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    username = unquote(userinfo.split(":", 1)[0]) or None
    return urlunsplit(parts._replace(netloc=host)), username
