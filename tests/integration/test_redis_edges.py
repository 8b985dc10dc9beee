"""Redis edges: a rebuilt critical list claims only what it holds, a vault read never stalls the lookups' loop,
every rebuild key expires. Each docstring states the rule and, after "Was:", what went wrong before it held.

Real Redis (127.0.0.1:6379) and the session's real Redis Cluster through the
existing fixtures (``redis_server`` runs a test on both).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from shared.adapters.redis import RedisChangeSink, RedisLookupCache
from shared.adapters.redis.aio import AsyncRedisConnection, AsyncRedisLookupCache
from shared.adapters.redis_rebuild import RedisCacheBuilder
from shared.adapters.secrets import RotatingSecret
from shared.ports.cache import SINCE_ALL
from tests.fixtures.waiting import loop_stalls
from tests.integration.test_changefeed_redis import NOW, ev


@pytest.fixture
def client(redis_server):
    c = redis_server.client()
    yield c
    c.close()


def _drop(client, prefix: str) -> None:
    from redis.cluster import RedisCluster

    nodes = [client.get_redis_connection(n) for n in client.get_primaries()] if isinstance(client, RedisCluster) \
        else [client]
    for node in nodes:
        for key in list(node.scan_iter(match=prefix + "*", count=1000)):
            client.unlink(key)


@pytest.mark.parametrize("path", ["refresh", "full_rebuild"])
def test_a_rebuilt_critical_list_claims_only_the_events_it_holds(client, path):
    """Rule (docs/redis-layout.md, "Reads" and "Generations"): the ``#since:<ms>`` sentinel means the set holds
    *every* critical event of the device with event time >= ms, and "the cap never makes the API drop events: a
    request deeper than the cache goes to Cassandra". A rebuilt device's list answers from Redis (the sentinel).

    Was: ``RedisCacheBuilder._fill_critical`` (shared/adapters/redis_rebuild.py) sends a device's
    critical events (newest first, as ``critical_events_by_device`` returns them) in chunks of 500, each
    ``fill_critical`` with covers = ``since``. The first chunk is trimmed to the cap (100) and its sentinel is
    raised past what was trimmed; the second chunk then *lowers* the sentinel back to ``since``
    (fill_critical.lua: ``covers < S`` -> ``set_since(covers)``) although the 400 trimmed events of chunk one are
    gone, and its own trim raises it only past chunk two. The set ends holding the 100 newest events with a
    sentinel just above the 501st newest: it claims completeness for events 101..500 that it does not hold, and a
    lookup reaching into them is answered from Redis with events silently missing (here 100 instead of 300).
    """
    prefix = f"rv{uuid.uuid4().hex[:8]}:"
    try:
        sink = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=600, stream_shards=2,
                               generation_cache_seconds=0)
        lookups = RedisLookupCache(client, key_prefix=prefix, stream_shards=2, generation_cache_seconds=0)
        builder = RedisCacheBuilder(sink, settle_seconds=0, clock=NOW.timestamp)
        events = [ev("noisy", seconds=s, critical=True) for s in range(600)]
        newest_first = sorted(events, key=lambda e: e.event_time_ms, reverse=True)  # Cassandra's clustering order
        latest = newest_first[0]
        since_all = SINCE_ALL
        if path == "refresh":  # sluice rebuild redis --devices noisy
            builder.refresh("noisy", latest, newest_first, since_all)
        else:  # sluice rebuild redis
            build = builder.begin(since_all, resume=False)
            builder.write(build.generation, [latest], {"noisy": newest_first}, since_all)
            builder.finish(build.generation)
        # the 300 newest critical events, as a client asks for them: since the 300th newest
        since_ms = newest_first[299].event_time_ms
        answer = lookups.get_critical("noisy", since_ms, 1000)
        truth = [e.to_json() for e in newest_first[:300]]
        assert answer is None or answer == truth, (
            f"Redis answered {len(answer)} events as the complete list since the 300th newest; "
            f"Cassandra holds {len(truth)}")
    finally:
        _drop(client, prefix)


def test_a_new_async_redis_connection_reads_the_vault_off_the_event_loop(redis_url):
    """Rule: the lookups are coroutines on the worker's one event loop (README: ``functions/lookups.py``
    (``async def``); shared/services/lookups.py: "Every method is a coroutine for the worker's one event loop"),
    and a slow or unreachable vault only means the cached password is kept (docs/security.md, "Rotation without a
    restart": "A vault that cannot be reached during a refresh keeps the cached value").

    Was: ``AsyncRedisConnection`` (shared/adapters/redis/aio.py) gives redis.asyncio a
    ``SecretCredentials(refresh_each=True)``; redis.asyncio calls the provider's *synchronous*
    ``get_credentials`` on the event loop for every new connection, and that runs ``RotatingSecret.refresh``: a
    blocking Key Vault read (``KeyVaultSecrets``: 10 s timeouts, 3 retries) at most once per
    ``SLUICE_KEYVAULT_REFRESH_MIN_INTERVAL_SECONDS``. While it runs the whole loop is frozen: every lookup of the
    worker, those served from Cassandra included, and ``/api/health`` wait for the vault. Here the vault takes
    1.5 s to answer (a fake ``fetch``, Sluice's own secret source) and a timer on the loop stalls that long when the
    lookups open their Redis connection. Now the lookups read the secret first at their first connection (not when
    ``bootstrap.lookup_service`` builds them inside an async handler), on a thread, and re-read it only when Redis
    refuses it: that first read is the slow one here.
    """
    reads = []

    def slow_vault() -> str:
        reads.append(time.monotonic())
        time.sleep(1.5)
        return "unchanged-password"

    # not read yet: bootstrap.redis_async_connection leaves the first read to the first connection
    secret = RotatingSecret("sluice-redis-password", slow_vault, min_interval=5.0)
    url = redis_url.replace("redis://", "redis://default@")  # the ACL user in the URL, the password from the vault
    cache = AsyncRedisLookupCache(AsyncRedisConnection(url, password=secret, cluster=False),
                                  key_prefix=f"rv{uuid.uuid4().hex[:8]}:")

    async def scenario() -> float:
        async with loop_stalls(every=0.01, settle=0.05) as gaps:
            await cache.get_latest("pump-1")  # the loop's first Redis connection
        await cache.connection.client()  # keep the client alive until here
        return max(gaps)

    stall = asyncio.run(scenario())
    assert len(reads) == 1, "the connection read the vault more than once"
    assert stall < 0.5, f"the event loop stood still for {stall:.2f} s while a Redis connection read the vault"


def test_the_rebuilds_stream_candidates_key_expires(client):
    """Rule (docs/redis-layout.md, "Keys"): "Every key starts with SLUICE_REDIS_KEY_PREFIX and **every key has a
    TTL**"; the rebuild's candidates (``<gen>rebuild:stream:{<shard>}``, docs "Generations" step 2) are a key of the
    building generation like the others.

    Was: ``RedisCacheBuilder.write`` (shared/adapters/redis_rebuild.py) adds to the candidates with a
    bare ``ZADD`` + ``ZREMRANGEBYRANK`` and never sets an expiry, unlike every other key of the generation
    (``SLUICE_REDIS_TTL_SECONDS``). A rebuild that is killed and not run again (``building`` stays set) leaves up to
    ``SLUICE_REDIS_CRITICAL_STREAM_MAX`` full event documents in Redis for ever; under ``volatile-*`` eviction
    policies (Azure Managed Redis' default) it can never be evicted either.
    """
    prefix = f"rv{uuid.uuid4().hex[:8]}:"
    try:
        sink = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=600, stream_shards=2,
                               generation_cache_seconds=0)
        builder = RedisCacheBuilder(sink, settle_seconds=0, clock=NOW.timestamp)
        crit = ev("pump-7", seconds=1, critical=True)
        build = builder.begin(SINCE_ALL, resume=False)
        builder.write(build.generation, [crit], {"pump-7": [crit]}, SINCE_ALL)  # then the rebuild is killed
        keys = sink.keys_of(build.generation)
        assert 0 < client.ttl(keys.latest("pump-7")) <= 600  # the generation's other keys expire
        candidates = f"{keys.prefix}rebuild:stream:{{{keys.shard('pump-7')}}}"
        assert client.exists(candidates)
        assert client.ttl(candidates) > 0, f"{candidates} has no TTL ({client.ttl(candidates)})"
    finally:
        _drop(client, prefix)


def test_a_rebuild_reads_the_events_own_time_and_id_whatever_their_attributes_are_named(client):
    """Rule (docs/redis-layout.md, "Keys"): a script or the rebuild reads a stored document's own fields decoded,
    never an attribute of the same name (``"attributes"`` sorts first and its names are free text). The rebuild's
    stream rewrite (``stream_rebuild.lua``) gives the feed's entry of the build the id ``<event time ms>-<n>`` from
    the document's ``timestamp``, and ``RedisCacheBuilder.clear`` deletes the member key of each event the set
    holds by its ``event_id``.

    Was: both matched the text, so the attribute ``timestamp`` placed the entry at year 2999 (newest of the
    stream) and the attribute ``event_id`` made ``clear`` leave the event's member key behind.
    """
    from dataclasses import replace

    prefix = f"rv{uuid.uuid4().hex[:8]}:"
    try:
        sink = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=600, stream_shards=2,
                               generation_cache_seconds=0)
        builder = RedisCacheBuilder(sink, settle_seconds=0, clock=NOW.timestamp)
        build = builder.begin(SINCE_ALL, resume=False)
        during = replace(ev("pump-8", seconds=1, critical=True),
                         attributes={"event_id": "msg-1", "timestamp": "2999-01-01T00:00:00.000Z"})
        sink.apply([during])  # the change feed during the build: both generations, clock entry ids
        builder.write(build.generation, [during], {"pump-8": [during]}, SINCE_ALL)
        assert builder.finish(build.generation) == 0
        keys = sink.keys_of(build.generation)
        entries = [entry for entry, fields in client.xrange(keys.stream("pump-8"))
                   if fields[b"event_id"] == str(during.event_id).encode()]
        assert [entry.decode().split("-")[0] for entry in entries] == [str(during.event_time_ms)]

        member = keys.member("pump-8", during.event_id)
        assert client.exists(member)
        builder.clear("pump-8")
        assert not client.exists(member), "clear left the event's member key"
    finally:
        _drop(client, prefix)
