"""What both Redis adapters share: the connection, the scripts by SHA, and error mapping."""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import ClusterDownError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.adapters.redis.client import REDIS_ERRORS, Client, RedisConnection, failed
from shared.adapters.redis.keys import Keys
from shared.adapters.redis.scripts import scripts

Command = tuple[object, ...]  # EVALSHA arguments: sha, number of keys, keys, arguments


class ScriptedRedis:
    """Runs the layout's scripts on one Redis or Redis Cluster; every failure is ``DependencyUnavailable``."""

    def __init__(self, connection: RedisConnection | Client, keys: Keys) -> None:
        self._connection = connection if isinstance(connection, RedisConnection) else RedisConnection.of(connection)
        self.keys = keys
        self._scripts = scripts()
        self.sha = {name: script.sha for name, script in self._scripts.items()}

    @property
    def client(self) -> Client:
        return self._connection.client()

    def load_scripts(self) -> None:
        """Load every script (on every master of a cluster); done on demand after ``NOSCRIPT``."""
        try:
            client = self.client
            for name, script in self._scripts.items():
                loaded = client.script_load(script.body)
                if loaded != script.sha:
                    raise RuntimeError(f"Redis returned SHA {loaded} for script {name}, expected {script.sha}")
        except REDIS_ERRORS as exc:
            raise failed("loading the scripts", exc) from exc

    def eval(self, name: str, keys: Sequence[str], args: Sequence[object], what: str):
        """One script call (its keys share one slot)."""
        sha = self.sha[name]
        try:
            client = self.client
            try:
                return client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                self.load_scripts()
                return client.evalsha(sha, len(keys), *keys, *args)
        except REDIS_ERRORS as exc:
            self._after(exc)
            raise failed(what, exc) from exc

    def pipeline(self, commands: Sequence[Command], what: str) -> list:
        """Send ``EVALSHA`` commands in one pipeline (a cluster groups them per node); raises on any error.

        After ``NOSCRIPT`` the scripts are loaded and every command is sent again:
        the scripts are idempotent, so what already ran is unchanged by the replay.
        """
        try:
            try:
                return self._send(commands)
            except NoScriptError:
                self.load_scripts()
                return self._send(commands)
        except REDIS_ERRORS as exc:
            self._after(exc)
            raise failed(what, exc) from exc

    def _after(self, exc: Exception) -> None:
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ClusterDownError)):
            self._connection.refresh()

    def _send(self, commands: Sequence[Command]) -> list:
        pipe = self.client.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command("EVALSHA", *args)
        return pipe.execute(raise_on_error=True)

    def ping(self) -> None:
        try:
            self.client.ping()
        except REDIS_ERRORS as exc:
            raise failed("PING", exc) from exc
