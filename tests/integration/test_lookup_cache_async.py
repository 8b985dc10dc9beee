"""``AsyncRedisLookupCache`` (``redis.asyncio``) on a real single Redis and a real Redis Cluster.

It must read and write exactly what the blocking adapters do (same keys, same
scripts), survive a script flush, follow the generation pointer, and say
``DependencyUnavailable`` when Redis is gone (``DependencyRefused`` when it
answers, refusing a command); on the cluster any command whose keys span slots
fails the test (``redis_server``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import contextmanager

import pytest
from redis import exceptions as rx

from shared.adapters.redis import RedisChangeSink, RedisGenerations, RedisLookupCache
from shared.adapters.redis.aio import AsyncRedisConnection, AsyncRedisLookupCache
from shared.adapters.redis.client import RedirectToUnknownNode, failed
from shared.adapters.redis.generations import Pointer
from shared.exceptions import DependencyRefused, DependencyUnavailable
from shared.ports.cache import SINCE_ALL
from shared.services.changefeed import apply_changes
from tests.integration import test_changefeed as changefeed_tests
from tests.integration.test_changefeed_redis import ev

private_redis = changefeed_tests.private_redis


@pytest.fixture
def client(redis_server):
    c = redis_server.client()
    yield c
    c.close()


def connection_for(redis_server) -> AsyncRedisConnection:
    return AsyncRedisConnection(redis_server.url, cluster=None)  # asks the server what it is


def test_reads_and_fills_match_the_blocking_adapters(redis_server, client, redis_prefix):
    sink = RedisChangeSink(client, key_prefix=redis_prefix, critical_per_device_max=4)
    blocking = RedisLookupCache(client, key_prefix=redis_prefix, critical_per_device_max=4)
    connection = connection_for(redis_server)
    cache = AsyncRedisLookupCache(connection, key_prefix=redis_prefix, critical_per_device_max=4)
    crit = [ev("a1", i, critical=True) for i in range(6)]
    apply_changes(sink, crit, None, list)

    async def scenario() -> None:
        assert (await cache.get_latest("a1")).document == blocking.get_latest("a1").document == crit[-1].to_json()
        assert await cache.get_latest("nobody") is None
        await cache.fill_latest("nobody", None, ttl=60, negative_ttl=5)
        assert (await cache.get_latest("nobody")).document is None and blocking.get_latest("nobody").document is None
        await cache.fill_latest("a1", crit[0], ttl=60, negative_ttl=5)  # older: never replaces the newer state
        assert (await cache.get_latest("a1")).document == crit[-1].to_json()
        assert await cache.get_critical("a1", SINCE_ALL, 2) is None  # written by the feed alone: not known complete
        await cache.fill_critical("a1", crit[::-1], SINCE_ALL, ttl=60)
        newest = [e.to_json() for e in crit[::-1][:3]]
        assert await cache.get_critical("a1", SINCE_ALL, 3) == blocking.get_critical("a1", SINCE_ALL, 3) == newest
        event_id = str(crit[0].event_id)
        assert (await cache.get_event(event_id)).document == crit[0].to_json()
        await cache.fill_event("missing", None, ttl=60, negative_ttl=5)
        assert (await cache.get_event("missing")).document is None
        await cache.ping()

    asyncio.run(scenario())
    asyncio.run(cache.get_latest("a1"))  # a second event loop gets a client of its own
    connection.close()


def test_scripts_are_loaded_again_after_a_script_flush(redis_server, client, redis_prefix):
    cache = AsyncRedisLookupCache(connection_for(redis_server), key_prefix=redis_prefix)
    client.script_flush()  # on every master of a cluster
    crit = ev("f1", 1, critical=True)

    async def scenario() -> None:
        await cache.fill_latest("f1", crit, ttl=60, negative_ttl=5)
        client.script_flush()
        await cache.fill_critical("f1", [crit], SINCE_ALL, ttl=60)  # a pipeline, after NOSCRIPT
        assert await cache.get_critical("f1", SINCE_ALL, 5) == [crit.to_json()]

    asyncio.run(scenario())
    assert json.loads(RedisLookupCache(client, key_prefix=redis_prefix).get_latest("f1").document)["device_id"] == "f1"


def test_the_live_generation_is_followed(redis_server, client, redis_prefix):
    sink = RedisChangeSink(client, key_prefix=redis_prefix, generation_cache_seconds=0)
    cache = AsyncRedisLookupCache(connection_for(redis_server), key_prefix=redis_prefix, generation_cache_seconds=0)
    generations = RedisGenerations(client, redis_prefix, cache_seconds=0)
    old, new = ev("g1", 1), ev("g1", 2)
    apply_changes(sink, [old], None, list)
    pointer = generations.start_building(0, "test", 60_000)
    assert isinstance(pointer, Pointer)
    sink.pipeline(
        [(sink.sha["latest"], 1, sink.keys_of(pointer.building).latest("g1"), "9" * 17, new.to_json(), 60)], "test")

    async def scenario() -> None:
        assert (await cache.get_latest("g1")).document == old.to_json()
        generations.switch(pointer.building, "test")
        assert (await cache.get_latest("g1")).document == new.to_json()

    asyncio.run(scenario())


def hmget_calls(admin) -> int:
    return int(admin.info("commandstats").get("cmdstat_hmget", {"calls": 0})["calls"])


@contextmanager
def _pointer_cache(port: int, prefix: str, seconds: float):
    """A lookup cache on the private Redis at ``port`` keeping the generation pointer ``seconds``, and a blocking
    client to set up and count with; both closed after."""
    import redis

    connection = AsyncRedisConnection(f"redis://127.0.0.1:{port}/0", cluster=False)
    admin = redis.Redis(host="127.0.0.1", port=port)
    try:
        yield AsyncRedisLookupCache(connection, key_prefix=prefix, generation_cache_seconds=seconds), admin
    finally:
        admin.close()
        connection.close()


@pytest.mark.timeout(60)
def test_the_generation_pointer_is_read_at_most_once_per_cache_period_under_a_burst(private_redis):
    """A warm cache whose cached pointer has just expired, then 50 concurrent lookups: one read of the pointer
    (docs/redis-layout.md: one ``HMGET`` per ``generation_cache_seconds`` per process), not one per lookup."""
    _server, port = private_redis
    with _pointer_cache(port, "gp:", 0.3) as (cache, admin):

        async def burst() -> None:
            await cache.get_latest("warm")  # the pointer read once, cached for 0.3 s
            await asyncio.sleep(0.4)
            admin.config_resetstat()
            await asyncio.gather(*(cache.get_latest(f"d-{i}") for i in range(50)))

        asyncio.run(burst())
        assert hmget_calls(admin) == 50 + 1, f"{hmget_calls(admin) - 50} reads of the pointer in one period"


@pytest.mark.timeout(60)
def test_a_failed_pointer_read_fails_the_lookups_sharing_it_and_the_next_lookup_reads_again(private_redis):
    _server, port = private_redis
    with _pointer_cache(port, "gf:", 60) as (cache, admin):

        async def scenario() -> None:
            admin.set("gf:generation", "not a hash")  # HMGET of the pointer answers WRONGTYPE
            answers = await asyncio.gather(*(cache.get_latest(f"d-{i}") for i in range(10)),
                                           return_exceptions=True)
            assert all(isinstance(answer, DependencyUnavailable) for answer in answers), answers
            assert hmget_calls(admin) == 1
            admin.delete("gf:generation")
            assert await cache.get_latest("d-0") is None  # a miss
            assert hmget_calls(admin) == 1 + 2  # the pointer read again (nothing of the failure cached), then the key

        admin.config_resetstat()
        asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_redis_gone_is_dependency_unavailable_within_the_socket_timeout(private_redis):
    server, port = private_redis
    cache = AsyncRedisLookupCache(AsyncRedisConnection(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5),
                                  key_prefix="gone:")

    async def scenario() -> float:
        await cache.ping()
        server.kill()
        started = time.perf_counter()
        with pytest.raises(DependencyUnavailable) as raised:
            await cache.get_latest("d1")
        assert raised.value.dependency == "redis"
        assert not isinstance(raised.value, DependencyRefused)  # an outage: the lookups' breaker opens on it
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 5


@pytest.mark.timeout(60)
def test_a_full_redis_refuses_fills_as_dependency_refused_and_still_answers_reads(private_redis):
    """``maxmemory-policy noeviction`` at its ``maxmemory``: Redis answers reads and refuses writes (``OOM``). Each
    fill, alone or pipelined with others (the fill scripts, the critical fill's pipeline), raises
    ``DependencyRefused`` (a ``DependencyUnavailable``: the change feed still stops on it), never a plain outage."""
    import redis

    _, port = private_redis
    cache = AsyncRedisLookupCache(AsyncRedisConnection(f"redis://127.0.0.1:{port}/0", cluster=False),
                                  key_prefix="full:")
    stored, critical = ev("held", 1), ev("held", 2, critical=True)
    admin = redis.Redis(host="127.0.0.1", port=port)

    async def scenario() -> None:
        await cache.fill_latest("held", stored, ttl=60, negative_ttl=5)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        fills = [cache.fill_latest("other", stored, ttl=60, negative_ttl=5),
                 cache.fill_event(str(stored.event_id), stored, ttl=60, negative_ttl=5),
                 cache.fill_critical("held", [critical], SINCE_ALL, ttl=60)]
        for fill in fills:  # one at a time: each command sent alone
            with pytest.raises(DependencyRefused, match="OutOfMemoryError"):
                await fill
        together = await asyncio.gather(*(cache.fill_latest(f"o{i}", stored, ttl=60, negative_ttl=5)
                                          for i in range(3)), return_exceptions=True)  # one pipeline
        assert [type(answer) for answer in together] == [DependencyRefused] * 3, together
        assert (await cache.get_latest("held")).document == stored.to_json()  # reads are answered

    try:
        asyncio.run(scenario())
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()


@pytest.mark.parametrize(("error", "kind"), [
    (rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), "refused"),
    (rx.ReadOnlyError("You can't write against a read only replica."), "refused"),
    (rx.NoPermissionError("this user has no permissions to run the 'evalsha' command"), "refused"),
    (rx.ResponseError("Error running script (call to f_0123): @user_script:1: ..."), "refused"),
    (rx.ResponseError("BUSY Redis is busy running a script."), "outage"),
    (rx.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), "outage"),
    (rx.TimeoutError("Timeout reading from socket"), "outage"),
    (rx.BusyLoadingError("Redis is loading the dataset in memory"), "outage"),
    (rx.AuthenticationError("invalid username-password pair"), "outage"),
    (rx.ClusterDownError("The cluster is down"), "outage"),
    (rx.MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."), "outage"),
    (rx.TryAgainError("Multiple keys request during rehashing of slot"), "outage"),
    (rx.MovedError("3999 127.0.0.1:7001"), "outage"),
    (rx.SlotNotCoveredError("Command # 1 (HMGET) has no slot"), "outage"),
    (RedirectToUnknownNode("ASK to 127.0.0.1:7007"), "outage"),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value)
def test_a_redis_error_reply_is_a_refusal_and_anything_else_an_outage(error: Exception, kind: str) -> None:
    """``client.failed``: the one classification of redis-py's failures. An error reply to one command (the server
    up and answering) is ``DependencyRefused``; the replies of a server or cluster that serves nothing now (BUSY,
    CLUSTERDOWN, MASTERDOWN, TRYAGAIN, a redirect not followed) and every connection, timeout or cluster-client
    failure are an outage, ``DependencyUnavailable`` alone."""
    mapped = failed("caching event x", error)
    assert isinstance(mapped, DependencyUnavailable) and mapped.dependency == "redis"
    assert isinstance(mapped, DependencyRefused) == (kind == "refused"), mapped


def test_concurrent_lookups_share_round_trips_on_a_connection_or_two(redis_url, redis_prefix):
    """64 lookups in flight at once are pipelined, not spread over 64 connections (one per command)."""
    import redis

    name = f"aio-{uuid.uuid4().hex[:8]}"
    cache = AsyncRedisLookupCache(AsyncRedisConnection(redis_url, cluster=False, client_name=name),
                                  key_prefix=redis_prefix)
    events = [ev(f"p{i}", i) for i in range(64)]

    async def scenario() -> list:
        await asyncio.gather(*(cache.fill_latest(e.device_id, e, ttl=60, negative_ttl=5) for e in events))
        return await asyncio.gather(*(cache.get_latest(e.device_id) for e in events))

    answers = asyncio.run(scenario())
    assert [a.document for a in answers] == [e.to_json() for e in events]
    raw = redis.Redis.from_url(redis_url)
    try:
        mine = [c for c in raw.client_list() if c.get("name") == name]
    finally:
        raw.close()
    assert 1 <= len(mine) <= 2, f"{len(mine)} connections for 128 concurrent commands"
