"""What both Redis adapters share: the connection, the scripts by SHA, error mapping and the generation pointer.

The keys are those of the *live* generation (``generations.py``), read through
the pointer that is cached for ``generation_cache_seconds``; while a rebuild
fills another generation, :meth:`ScriptedRedis.write_keys` names both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from shared.adapters.redis.client import (
    REDIS_ERRORS,
    Client,
    RedirectToUnknownNode,
    RedisConnection,
    failed,
    primaries_answer,
    redirects,
)
from shared.adapters.redis.generations import RedisGenerations, generation_prefix
from shared.adapters.redis.keys import Keys, check_prefix
from shared.adapters.redis.scripts import scripts
from shared.exceptions import DependencyUnavailable

Command = tuple[object, ...]  # EVALSHA arguments: sha, number of keys, keys, arguments


class ScriptedRedis:
    """Runs the layout's scripts on one Redis or Redis Cluster; every failure is ``DependencyUnavailable``
    (redis-py's failure on a redirect to a node it does not know included: ``client.redirects``)."""

    def __init__(self, connection: RedisConnection | Client, key_prefix: str, stream_shards: int = 8, *,
                 generation_cache_seconds: float = 1.0) -> None:
        self._connection = connection if isinstance(connection, RedisConnection) else RedisConnection.of(connection)
        self.key_prefix = check_prefix(key_prefix)
        self.stream_shards = stream_shards
        self.generations = RedisGenerations(self._connection, key_prefix, cache_seconds=generation_cache_seconds)
        self._keys: dict[int, Keys] = {}
        self.keys_of(0)  # validates the shard count now
        self._scripts = scripts()
        self.sha = {name: script.sha for name, script in self._scripts.items()}

    @property
    def client(self) -> Client:
        return self._connection.client()

    @property
    def connection(self) -> RedisConnection:
        return self._connection

    def keys_of(self, generation: int) -> Keys:
        """The key names of one generation."""
        keys = self._keys.get(generation)
        if keys is None:
            keys = self._keys[generation] = Keys(generation_prefix(self.key_prefix, generation), self.stream_shards)
        return keys

    @property
    def keys(self) -> Keys:
        """The keys of the generation the lookups read: the live one."""
        return self.keys_of(self.generations.current().live)

    def write_keys(self) -> list[Keys]:
        """Where changes go: the live generation and, while a rebuild runs, the one it builds."""
        pointer = self.generations.current()
        if pointer.building is None:
            return [self.keys_of(pointer.live)]
        return [self.keys_of(pointer.live), self.keys_of(pointer.building)]

    def load_scripts(self) -> None:
        """Load every script (on every master of a cluster); done on demand after ``NOSCRIPT``."""
        try:
            client = self.client
            for name, script in self._scripts.items():
                with redirects():
                    loaded = client.script_load(script.body)
                if loaded != script.sha:
                    raise RuntimeError(f"Redis returned SHA {loaded} for script {name}, expected {script.sha}")
        except REDIS_ERRORS as exc:
            raise failed("loading the scripts", exc) from exc

    def eval(self, name: str, keys: Sequence[str], args: Sequence[EncodableT], what: str) -> Any:
        """One script call (its keys share one slot)."""
        sha = self.sha[name]
        try:
            client = self.client
            with redirects():
                try:
                    return client.evalsha(sha, len(keys), *keys, *args)
                except NoScriptError:
                    self.load_scripts()
                    return client.evalsha(sha, len(keys), *keys, *args)
        except REDIS_ERRORS as exc:
            self._after(exc)
            raise failed(what, exc) from exc

    def pipeline(self, commands: Sequence[Command], what: str, *, replicas: int = 0,
                 wait_ms: int = 1000) -> list[Any]:
        """Send ``EVALSHA`` commands in one pipeline (a cluster groups them per node); raises on any error.

        After ``NOSCRIPT`` the scripts are loaded and every command is sent again:
        the scripts are idempotent, so what already ran is unchanged by the replay.

        With ``replicas``, each master's share ends with ``WAIT <replicas> <wait_ms>`` on the connection that
        carried it (``WAIT`` counts the writes of its own connection only), and a master whose replicas did not
        all acknowledge in time raises ``DependencyUnavailable``: the writes are on the master, but a failover
        before its replica caught up would lose them, so the caller must not treat them as durable.
        """
        def send(page: Sequence[Command]) -> list[Any]:
            return self._send_replicated(page, replicas, wait_ms, what) if replicas else self._send(page)

        try:
            with redirects():
                try:
                    return send(commands)
                except NoScriptError:
                    self.load_scripts()
                    return send(commands)
        except REDIS_ERRORS as exc:
            self._after(exc)
            raise failed(what, exc) from exc

    def _after(self, exc: Exception) -> None:
        # AskError (and MovedError, its subclass) reach us only from _send_replicated's per-node pipelines
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ClusterDownError, RedirectToUnknownNode,
                            AskError)):
            self._connection.refresh()

    def _send(self, commands: Sequence[Command]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command("EVALSHA", *args)
        replies: list[Any] = pipe.execute(raise_on_error=True)
        return replies

    def _send_replicated(self, commands: Sequence[Command], replicas: int, wait_ms: int, what: str) -> list[Any]:
        """``_send``, with one pipeline per master sent on that master's own client, ending with ``WAIT``.

        redis-py's cluster pipeline cannot carry ``WAIT`` (a keyless command it would send to every node), so
        the commands are grouped by the master of their first key (a script's keys share one slot) here. A
        redirect (``MOVED``/``ASK``, a slot moved meanwhile) fails the page, refreshes the slot map, and the
        page is written again by the next run.
        """
        client = self.client
        groups: dict[str, tuple[redis.Redis, list[int]]] = {}
        if isinstance(client, RedisCluster):
            for index, args in enumerate(commands):
                node = client.get_node_from_key(str(args[2]))  # type: ignore[no-untyped-call]  # unannotated in redis-py
                groups.setdefault(node.name, (client.get_redis_connection(node), []))[1].append(index)
        else:
            groups["redis"] = (client, list(range(len(commands))))
        replies: list[Any] = [None] * len(commands)
        short: list[str] = []
        for name, (node_client, indexes) in groups.items():
            pipe = node_client.pipeline(transaction=False)
            for index in indexes:
                pipe.execute_command("EVALSHA", *commands[index])  # type: ignore[no-untyped-call]  # as above
            pipe.execute_command("WAIT", replicas, wait_ms)  # type: ignore[no-untyped-call]  # as above
            answers = pipe.execute(raise_on_error=True)
            for index, answer in zip(indexes, answers, strict=False):
                replies[index] = answer
            if int(answers[-1]) < replicas:
                short.append(f"{name}: {answers[-1]}")
        if short:
            raise DependencyUnavailable(
                "redis", f"{what}: written, but not acknowledged by {replicas} replica(s) within {wait_ms} ms "
                         f"({', '.join(short)} acknowledged); a failover now could lose it, so it is not yet durable")
        return replies

    def ping(self) -> None:
        """``PING``; on a cluster, every master in turn (:func:`primaries_answer` says why), naming the one that
        failed."""
        try:
            with redirects():
                client = self.client
                if not isinstance(client, RedisCluster):
                    client.ping()
                    return
                masters = client.get_primaries()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        except REDIS_ERRORS as exc:
            raise failed("PING", exc) from exc
        replies: dict[str, object] = {}
        for node in masters:
            try:
                with redirects():
                    replies[node.name] = client.ping(target_nodes=node)
            except REDIS_ERRORS as exc:
                raise failed(f"PING of master {node.name}", exc) from exc
        primaries_answer(replies)
