"""The lookups' Redis on an asyncio event loop: ``AsyncRedisConnection`` and ``AsyncRedisLookupCache``.

``redis.asyncio`` (replies parsed by hiredis when installed) keeps its sockets on
the event loop that opened them, so :class:`AsyncRedisConnection` holds one
client per loop: the worker's single loop in production; a test or benchmark
that runs a new loop gets a new client. ``cluster`` is decided as in
``client.py`` (``True``, ``False``, or ``None``: ask the server), and a cluster
client re-reads its slot map after a connection failure, so a promoted replica
is found. Nothing connects before the first use.

:class:`AsyncRedisLookupCache` implements ``LookupCache`` with the same key
layout, scripts and commands as the blocking ``RedisLookupCache``; a hit is one
``HMGET``. While commands are in flight, the single-slot commands (``HMGET``,
the fill scripts) asked for in one turn of the event loop go out as one pipeline
(per node on a cluster), so concurrent lookups share round trips and socket
calls instead of each paying for its own; an idle worker sends a command at once.
The generation pointer is read at most once per ``generation_cache_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, ClusterDownError, NoScriptError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.adapters.redis.base import Command
from shared.adapters.redis.client import (
    REDIS_ERRORS,
    RedirectToUnknownNode,
    SecretCredentials,
    failed,
    primaries_answer,
    redirects,
    without_username,
)
from shared.adapters.redis.entra import EntraCredentials, Token
from shared.adapters.redis.generations import generation_prefix
from shared.adapters.redis.keys import Keys, check_prefix
from shared.adapters.redis.lookup_cache import (
    Script,
    cached,
    critical_event_fills,
    critical_fill,
    event_fill,
    latest_fill,
    still_current,
)
from shared.adapters.redis.scripts import scripts
from shared.adapters.secrets import RotatingSecret
from shared.domain.stored import StoredEvent
from shared.exceptions import DependencyUnavailable
from shared.ports.cache import Cached

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

logger = logging.getLogger(__name__)

AsyncClient = aioredis.Redis | RedisCluster
_RECONNECTING = (RedisConnectionError, RedisTimeoutError, ClusterDownError, RedirectToUnknownNode)


class AsyncRedisConnection:
    """The ``redis.asyncio`` client of one Redis URL for the running event loop, built on first use."""

    def __init__(self, url: str, *, password: str | RotatingSecret | None = None, entra: TokenCredential | None = None,
                 cluster: bool | None = None, socket_timeout: float = 2.0, **options: Any) -> None:
        self.url = url
        self._options: dict[str, Any] = {"socket_timeout": socket_timeout,
                                         "socket_connect_timeout": socket_timeout, **options}
        self._entra = entra
        if entra is not None:
            if password is not None:
                raise ValueError("a Redis connection signs in with a password or with Entra ID, not both")
        elif isinstance(password, RotatingSecret):
            # Each connection logs in with the cached value; the vault is read when Redis refuses it
            # (AsyncSecretCredentials), never before: a slow vault must not hold a lookup whose password is good.
            self.url, username = without_username(url)
            self._options["credential_provider"] = AsyncSecretCredentials(username, password)
        else:
            self._options["password"] = password
        self._cluster = cluster
        self._provider: EntraCredentials | None = None
        # the provider of a failed build, and its loop: the next build on that loop takes it (see _build)
        self._spare: tuple[asyncio.AbstractEventLoop, EntraCredentials] | None = None
        self._build_lock: asyncio.Lock | None = None
        self._build_loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._given = False

    @classmethod
    def of(cls, client: AsyncClient) -> AsyncRedisConnection:
        """Wrap a client built elsewhere (benchmarks, tests); it is used on whichever loop calls it."""
        connection = cls("redis://")
        connection._client, connection._given = client, True
        connection._cluster = isinstance(client, RedisCluster)
        return connection

    @property
    def opened(self) -> bool:
        """Whether a client has been built (the health check's "connecting" ends there)."""
        return self._client is not None

    async def client(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._client
        if client is not None and (self._given or self._loop is loop):
            return client
        if self._build_lock is None or self._build_loop is not loop:
            self._build_lock, self._build_loop = asyncio.Lock(), loop
        async with self._build_lock:  # concurrent first uses wait for one client, not one each
            client = self._client
            if client is not None and self._loop is loop:
                return client
            try:
                return await self._build(loop)
            except REDIS_ERRORS as exc:
                self._note_refusal(exc)
                raise failed(f"connecting to {self._where()}", exc) from exc

    async def _build(self, loop: asyncio.AbstractEventLoop) -> AsyncClient:
        options = self._options
        provider = None
        if self._entra is not None:  # one per client: it signs that client's connections in again (entra.py)
            provider = self._spare_for(loop)
            if provider is None:
                # a new connection waits for a token as long as for Redis itself: its connect timeout
                provider = EntraCredentials(self._entra, wait_seconds=options.get("socket_connect_timeout"))
            options = {**options, "credential_provider": provider}
        try:
            cluster = self._cluster
            credentials = options.get("credential_provider")
            hook = credentials.log_in_async if isinstance(credentials, AsyncSecretCredentials) else None
            if cluster is None:
                probe = aioredis.Redis.from_url(self.url, redis_connect_func=hook, **options)
                try:
                    cluster = bool((await probe.info("cluster")).get("cluster_enabled"))
                finally:
                    await probe.aclose()
                logger.info("Redis at %s is %s", self._where(), "a cluster" if cluster else "a single node")
                self._cluster = cluster
            client: AsyncClient
            if cluster:
                # Few, short retries, as client.py explains: the lookups bypass the cache instead of stalling.
                client = RedisCluster.from_url(self.url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                                               **options)
                try:
                    # The slot map is read here, once: commands sent concurrently to a cluster client that has not
                    # read it yet fail in redis-py 8.1 (each starts the reading, and one closes the connections
                    # another is using: "'NoneType' object has no attribute 'writelines'").
                    await client.initialize()
                except BaseException:
                    await client.aclose()
                    raise
            else:
                client = aioredis.Redis.from_url(self.url, health_check_interval=30, redis_connect_func=hook,
                                                 **options)
        except BaseException:
            if provider is not None:
                self._keep_spare(loop, provider)
            raise
        self._discard()
        self._client, self._loop, self._provider = client, loop, provider
        if provider is not None:
            provider.deliver_to(self._signed_in_again, loop)
        return client

    async def _signed_in_again(self, token: Token) -> None:
        """After an Entra ID token renewal: every connection reconnects, and signs in with the new token as it does.

        Not ``AUTH`` in place: redis-py's asyncio pools send a busy connection's ``AUTH`` after handing it back,
        racing the next command on the same socket, and the cluster nodes' re-``AUTH`` skips busy connections and
        the slot-map connection. Marked connections are closed by redis-py itself where no command can share
        them: a busy one when it is released, an idle one (the cluster's, and the nodes manager's) before its next
        command; a single Redis's idle ones while holding the pool's lock, so none is handed out half closed.
        (``pool.disconnect(inuse_connections=False)`` takes no lock, and the closings it gathers run a loop turn
        later, after a command may have taken one of those connections.) A handshake per connection per token.
        """
        client = self._client
        if isinstance(client, RedisCluster):
            # By object, not by name: redis-py keeps the startup node of the URL as its own ClusterNode beside the
            # slot map's node of the same name, and each has its own connections (the slot map's serve commands).
            nodes = {id(node): node for node in [*client.get_nodes(), *client.nodes_manager.startup_nodes.values()]}
            for node in nodes.values():
                node.update_active_connections_for_reconnect()
                for idle in tuple(node._free):  # as redis-py's own topology refresh marks them
                    idle.mark_for_reconnect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        elif client is not None:
            pool = client.connection_pool
            async with pool._lock:  # get_connection takes idle connections under this lock
                for connection in pool._in_use_connections:  # closed by release(), once their command is done
                    connection.mark_for_reconnect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                for connection in tuple(pool._available_connections):
                    try:  # one that fails to close (it times out) still ends up closed: never the end of the rest
                        await connection.disconnect()
                    except (RedisError, OSError) as exc:
                        logger.info("Redis connection not closed cleanly for the renewed token: %s: %s",
                                    type(exc).__name__, exc)

    async def failed(self, exc: BaseException) -> None:
        """After a connection failure, or a redirect to a node missing from the slot map, on a cluster: re-read the
        slot map (best effort, see ``client.py``)."""
        self._note_refusal(exc)
        client = self._client
        if isinstance(client, RedisCluster) and isinstance(exc, _RECONNECTING):
            try:
                await client.nodes_manager.initialize()
            except REDIS_ERRORS:
                logger.info("Redis Cluster slot map not refreshed yet", exc_info=True)

    def _note_refusal(self, exc: BaseException) -> None:
        """A refused password on a connection no log-in hook of ours opened (a cluster's): re-read the secret."""
        credentials = self._options.get("credential_provider")
        if isinstance(credentials, AsyncSecretCredentials) and _refused(exc):
            credentials.refused()

    def _spare_for(self, loop: asyncio.AbstractEventLoop) -> EntraCredentials | None:
        """The provider a failed build on ``loop`` left, taken (a spare of another loop is closed).

        Kept across failed builds: its token request, in flight or failed, is the one the next build's connections
        wait for; a new provider per build would start another while the first still hangs (an endpoint that does
        not answer fails each build after the connect timeout, and each lookup builds again). One per loop, as the
        client is: the provider of a loop's client signs that client in again on that loop, and is closed with it.
        """
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        spare_loop, provider = spare
        if spare_loop is loop:
            return provider
        provider.close()
        return None

    def _keep_spare(self, loop: asyncio.AbstractEventLoop, provider: EntraCredentials) -> None:
        spare, self._spare = self._spare, (loop, provider)
        if spare is not None and spare[1] is not provider:
            spare[1].close()

    def _discard(self) -> None:
        """Drop the client of another loop, closing it on that loop if it still runs."""
        client, loop, provider = self._client, self._loop, self._provider
        self._client = self._loop = self._provider = None
        if provider is not None:
            provider.close()
        if client is not None and not self._given and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(client.aclose()))

    def close(self) -> None:
        """Forget the client (closed on its own loop when that still runs); callable from any thread."""
        self._discard()
        spare, self._spare = self._spare, None
        if spare is not None:
            spare[1].close()

    def _where(self) -> str:
        return self.url.rsplit("@", 1)[-1]


def _refused(exc: BaseException | None) -> bool:
    """Whether Redis refused the password somewhere in ``exc``'s chain (a cluster client wraps the refusal)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, AuthenticationError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class AsyncSecretCredentials(SecretCredentials):
    """The password secret of the lookups' connections: the cached value, the vault read only when Redis refuses it.

    A single Redis logs in through :meth:`log_in_async` (its ``redis_connect_func``): refused, the secret is
    re-read on a thread (rate-limited, ``RotatingSecret.refresh``) and, if it changed, the log-in is tried once
    more on the same connection, as the blocking client and the Cassandra log-in do. ``redis.asyncio``'s cluster
    client takes no log-in hook: a refused connection fails (the lookup bypasses to Cassandra) and its refusal
    starts one re-read in the background (:meth:`refused`), whose value the next connection uses. The first value
    is read on a thread too, so a worker whose first lookup finds the vault slow keeps its event loop turning.
    """

    def __init__(self, username: str | None, secret: RotatingSecret) -> None:
        super().__init__(username, secret)
        self._rereading: asyncio.Task[bool] | None = None

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        password = self.secret.value() if self.secret.read else await asyncio.to_thread(self.secret.value)
        return (self.username, password) if self.username else (password,)

    async def log_in_async(self, connection: AbstractConnection) -> None:
        """redis-py's log-in, repeated once with the secret's new value if the server refused the password."""
        if not self.secret.read:
            try:
                await asyncio.to_thread(self.secret.value)
            except BaseException:  # the vault (DependencyUnavailable: the lookup bypasses), not Redis: close it here
                await connection.disconnect()
                raise
        used = self.secret.value()  # what get_credentials_async gives on_connect
        try:
            await connection.on_connect()
        except AuthenticationError:
            if not await asyncio.to_thread(self.secret.refresh, "a refused Redis log-in", rejected=used):
                raise
            logger.warning("Redis refused the password of secret %s; logging in with its new value", self.secret.name)
            await connection.on_connect()  # a refused AUTH leaves the socket open, not logged in

    def refused(self) -> None:
        """After a refused log-in where no hook runs (a cluster): re-read the secret on a thread, once at a time."""
        if self._rereading is None or self._rereading.done():
            self._rereading = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.secret.refresh, "a refused Redis Cluster log-in"))


class _AutoPipeline:
    """Commands sent at once while idle; while others are in flight, those of one loop turn go as one pipeline.

    A lone command (nothing pending, nothing in flight) is sent directly, with no
    extra task or loop turn. Otherwise it waits for the end of the current turn,
    where every command asked for meanwhile goes out in one pipeline (at most
    ``batch``), so a busy worker pays one round trip and one socket write for many.
    """

    def __init__(self, connection: AsyncRedisConnection, batch: int = 64) -> None:
        self._connection = connection
        self._batch = batch
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(self, *command: Any) -> Any:
        """The command's reply; raises what redis-py raised for this command or for the whole pipeline."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests): nothing of the old one's state applies
            self._loop, self._pending, self._in_flight = loop, [], 0
        if not self._in_flight and not self._pending:
            self._in_flight += 1
            try:
                client = await self._connection.client()
                return await client.execute_command(*command)
            finally:
                self._in_flight -= 1
        waiter = loop.create_future()
        if not self._pending:  # the task's first step runs after this turn's other callbacks: it sends them all
            self._track(loop.create_task(self._send_pending()))
        self._pending.append((command, waiter))
        return await waiter

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_pending(self) -> None:
        pending, self._pending = self._pending, []
        for first in range(self._batch, len(pending), self._batch):
            self._track(asyncio.create_task(self._send(pending[first : first + self._batch])))
        await self._send(pending[: self._batch])

    async def _send(self, pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        self._in_flight += 1
        try:
            client = await self._connection.client()
            if len(pending) == 1:
                answers: list[Any] = [await client.execute_command(*pending[0][0])]
            else:
                pipe = client.pipeline(transaction=False) if isinstance(client, aioredis.Redis) else client.pipeline()
                for command, _ in pending:
                    pipe.execute_command(*command)
                answers = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the waiters map it; a cancellation must not leave them hanging
            for _, waiter in pending:
                if not waiter.done():
                    waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._in_flight -= 1
        for (_, waiter), answer in zip(pending, answers, strict=True):
            if waiter.done():
                continue
            if isinstance(answer, Exception):
                waiter.set_exception(answer)
            else:
                waiter.set_result(answer)


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A shared read's error counts as retrieved: no "never retrieved" log when every caller gave up on it."""
    if not task.cancelled():
        task.exception()


class AsyncRedisLookupCache:
    """Implements ``LookupCache`` (``shared.ports.cache``) with ``redis.asyncio``."""

    def __init__(
        self,
        connection: AsyncRedisConnection | AsyncClient,
        *,
        key_prefix: str = "sluice:",
        critical_per_device_max: int = 100,
        stream_shards: int = 8,
        generation_cache_seconds: float = 1.0,
    ) -> None:
        self._connection = (
            connection if isinstance(connection, AsyncRedisConnection) else AsyncRedisConnection.of(connection)
        )
        self.key_prefix = check_prefix(key_prefix)
        self.stream_shards = stream_shards
        self.critical_cap = critical_per_device_max
        self._pointer_key = f"{key_prefix}generation"
        self._cache_seconds = generation_cache_seconds
        self._generations: dict[int, Keys] = {}
        self._live: tuple[float, Keys] | None = None
        self._pointer_read: asyncio.Task[Keys] | None = None
        self._commands = _AutoPipeline(self._connection)
        self._scripts = scripts()
        self.sha = {name: script.sha for name, script in self._scripts.items()}
        self._keys_of(0)  # validates the shard count now

    @property
    def connection(self) -> AsyncRedisConnection:
        return self._connection

    def _keys_of(self, generation: int) -> Keys:
        keys = self._generations.get(generation)
        if keys is None:
            keys = Keys(generation_prefix(self.key_prefix, generation), self.stream_shards)
            self._generations[generation] = keys
        return keys

    async def keys(self) -> Keys:
        """The keys of the live generation (the pointer read at most once per ``generation_cache_seconds``).

        Once the cached pointer is stale, the lookups that ask meanwhile share one read of it (a task of its own,
        so a lookup that gives up does not stop it for the others); a failed read fails them all, and the next
        lookup reads again.
        """
        live = self._live
        if live is not None and time.monotonic() - live[0] < self._cache_seconds:
            return live[1]
        loop = asyncio.get_running_loop()
        reading = self._pointer_read
        if reading is None or reading.done() or reading.get_loop() is not loop:
            reading = self._pointer_read = loop.create_task(self._read_pointer())
            reading.add_done_callback(_retrieved)
        return await asyncio.shield(reading)

    async def _read_pointer(self) -> Keys:
        asked = time.monotonic()  # Redis read the pointer after this: it is no older than that
        try:
            with redirects():
                (generation,) = await self._commands.call("HMGET", self._pointer_key, "live")
        except DependencyUnavailable:  # connecting failed (already mapped)
            raise
        except REDIS_ERRORS as exc:
            await self._connection.failed(exc)
            raise failed("reading the generation pointer", exc) from exc
        keys = self._keys_of(int(generation) if generation else 0)
        self._live = (asked, keys)
        return keys

    async def _hash_doc(self, key: str, what: str) -> Cached | None:
        try:
            with redirects():
                document, marker = await self._commands.call("HMGET", key, "d", "k")
        except DependencyUnavailable:  # connecting failed (already mapped)
            raise
        except REDIS_ERRORS as exc:
            await self._connection.failed(exc)
            raise failed(f"reading {what}", exc) from exc
        return cached(document, marker)

    async def _load_scripts(self, client: AsyncClient) -> None:
        for name, script in self._scripts.items():  # a cluster loads each on every master
            loaded = await client.script_load(script.body)
            if loaded != script.sha:
                raise RuntimeError(f"Redis returned SHA {loaded} for script {name}, expected {script.sha}")

    async def _eval(self, script: Script, what: str) -> Any:
        name, keys, args = script
        sha = self.sha[name]
        try:
            with redirects():
                try:
                    return await self._commands.call("EVALSHA", sha, len(keys), *keys, *args)
                except NoScriptError:
                    await self._load_scripts(await self._connection.client())
                    return await self._commands.call("EVALSHA", sha, len(keys), *keys, *args)
        except DependencyUnavailable:  # connecting failed (already mapped)
            raise
        except REDIS_ERRORS as exc:
            await self._connection.failed(exc)
            raise failed(what, exc) from exc

    async def _pipeline(self, commands: Sequence[Command], what: str) -> list[Any]:
        """``EVALSHA`` commands in one pipeline (per node on a cluster); after ``NOSCRIPT`` all are sent again."""
        try:
            client = await self._connection.client()
            with redirects():
                try:
                    return await self._send(client, commands)
                except NoScriptError:
                    await self._load_scripts(client)
                    return await self._send(client, commands)
        except REDIS_ERRORS as exc:
            await self._connection.failed(exc)
            raise failed(what, exc) from exc

    @staticmethod
    async def _send(client: AsyncClient, commands: Sequence[Command]) -> list[Any]:
        pipe = client.pipeline(transaction=False) if isinstance(client, aioredis.Redis) else client.pipeline()
        for args in commands:
            pipe.execute_command("EVALSHA", *args)  # type: ignore[arg-type]  # Command holds str and int values
        return await pipe.execute(raise_on_error=True)

    async def get_latest(self, device_id: str) -> Cached | None:
        keys = await self.keys()
        return await self._hash_doc(keys.latest(device_id), f"the latest state of device {device_id!r}")

    async def fill_latest(self, device_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        script = latest_fill(await self.keys(), device_id, event, ttl, negative_ttl)
        await self._eval(script, f"caching the latest state of device {device_id!r}")

    async def get_event(self, event_id: str) -> Cached | None:
        keys = await self.keys()
        return await self._hash_doc(keys.event(event_id), f"event {event_id}")

    async def fill_event(self, event_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        await self._eval(event_fill(await self.keys(), event_id, event, ttl, negative_ttl), f"caching event {event_id}")

    async def get_critical(self, device_id: str, since_ms: int, limit: int) -> list[str] | None:
        keys = await self.keys()
        docs = await self._eval(
            ("get_critical", [keys.critical(device_id)], [since_ms, limit]),
            f"reading the critical events of device {device_id!r}",
        )
        return None if docs is None else [doc.decode() for doc in docs]

    async def fill_critical(
        self, device_id: str, events: Sequence[StoredEvent], covers_since_ms: int, ttl: int
    ) -> None:
        keys, what = await self.keys(), f"caching the critical events of device {device_id!r}"
        if events:  # by id first: see critical_fill
            replies = await self._pipeline(critical_event_fills(keys, self.sha, events, ttl), what)
            events = still_current(events, replies)
        command = critical_fill(keys, self.sha, device_id, events, covers_since_ms, ttl, self.critical_cap)
        await self._pipeline([command], what)

    async def ping(self) -> None:
        """``PING``; on a cluster, every master at once (``client.primaries_answer`` says why), naming one that
        failed."""
        try:
            client = await self._connection.client()
            with redirects():
                if not isinstance(client, RedisCluster):
                    await client.ping()
                    return
                masters = client.get_primaries()
        except REDIS_ERRORS as exc:
            await self._connection.failed(exc)
            raise failed("PING", exc) from exc
        replies = await asyncio.gather(*(_ping(client, node) for node in masters), return_exceptions=True)
        for node, reply in zip(masters, replies, strict=True):
            if isinstance(reply, REDIS_ERRORS):
                await self._connection.failed(reply)
                raise failed(f"PING of master {node.name}", reply) from reply
            if isinstance(reply, BaseException):
                raise reply
        primaries_answer({node.name: reply for node, reply in zip(masters, replies, strict=True)})


async def _ping(client: RedisCluster, node: ClusterNode) -> object:
    """``PING`` one node of a cluster (only there: no retry on another node)."""
    with redirects():
        return await client.ping(target_nodes=node)
