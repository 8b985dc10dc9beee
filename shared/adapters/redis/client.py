"""The redis-py client: one Redis, or a Redis Cluster (OSS cluster policy), built on first use.

``cluster=True`` builds ``RedisCluster``; ``cluster=None`` asks the server (``INFO
cluster``: ``cluster_enabled:1``) and builds what it says; ``False`` a plain
``Redis``. ``RedisCluster`` routes each command by its key's slot, groups a
pipeline's commands per node, follows ``MOVED``/``ASK`` and refreshes its slot
map after a failover. Nothing connects before the first use, and a failed
first use is retried on the next one, so a Redis that is down at start-up only
makes lookups bypass the cache.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException, RedisError
from redis.retry import Retry

from shared.exceptions import DependencyUnavailable, SluiceError

logger = logging.getLogger(__name__)

# Everything redis-py raises: RedisClusterException (e.g. SlotNotCoveredError) is not a RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

Client = redis.Redis | RedisCluster


class CrossSlotError(SluiceError):
    """A command's keys span hash slots: a bug in the key layout, never an outage (so never a cache bypass)."""


def failed(what: str, exc: BaseException) -> SluiceError:
    """The error to raise for a redis-py failure: ``DependencyUnavailable``, or ``CrossSlotError`` for a layout bug."""
    if isinstance(exc, ClusterCrossSlotError) or (
            isinstance(exc, RedisClusterException) and "same key slot" in str(exc)):
        return CrossSlotError(f"{what}: keys in more than one hash slot: {exc}")
    return DependencyUnavailable("redis", f"{what} failed: {type(exc).__name__}: {exc}")


def is_cluster(client: redis.Redis) -> bool:
    """Whether the server runs in cluster mode (``INFO cluster``)."""
    return bool(client.info("cluster").get("cluster_enabled"))


class RedisConnection:
    """Holds the client of one Redis URL; :meth:`client` builds it on first use."""

    def __init__(self, url: str, *, password: str | None = None, cluster: bool | None = None,
                 socket_timeout: float = 2.0, **options: Any) -> None:
        self.url = url
        self._options: dict[str, Any] = {"password": password, "socket_timeout": socket_timeout,
                                         "socket_connect_timeout": socket_timeout, **options}
        self._cluster = cluster
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
            return self._client

    def _build(self) -> Client:
        cluster = self._cluster
        if cluster is None:
            probe = redis.Redis.from_url(self.url, **self._options)
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
            return RedisCluster.from_url(self.url, retry=retry, **self._options)
        return redis.Redis.from_url(self.url, health_check_interval=30, **self._options)

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


def as_text(value: bytes | str) -> str:
    """A reply as text (the client returns bytes; a client made with ``decode_responses`` returns str)."""
    return value.decode() if isinstance(value, bytes) else value
