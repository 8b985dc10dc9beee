"""The Redis adapters on a real Redis Cluster: slot migration (ASK, then MOVED) and a master failover.

The cluster is the session's (``tests/fixtures/redis_cluster.py``); a test that
kills a master restarts it afterwards, so the next test finds three masters
with their replicas again.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid

import pytest
from redis.cluster import RedisCluster

from shared.adapters.cassandra.feed import CassandraFeedStateStore
from shared.adapters.redis import RedisChangeSink, RedisConnection, RedisLookupCache
from shared.adapters.redis.aio import AsyncRedisConnection, AsyncRedisLookupCache
from shared.exceptions import DependencyUnavailable
from shared.services.changefeed import ChangeFeedService, apply_changes
from tests.fixtures.redis_cluster import cluster_healthy
from tests.fixtures.waiting import poll
from tests.integration import test_changefeed as changefeed_tests
from tests.integration.test_changefeed import CountingSink, assert_redis_matches, make_feed, make_service, spread
from tests.integration.test_changefeed_redis import ev, state

session, keyspace, store = changefeed_tests.session, changefeed_tests.keyspace, changefeed_tests.store
app_env = changefeed_tests.app_env


@pytest.fixture
def cluster(redis_cluster):
    if redis_cluster is None:
        pytest.skip("needs the local cluster (SLUICE_TEST_REDIS_CLUSTER_URL names an external one)")
    cluster_healthy(redis_cluster)
    yield redis_cluster
    cluster_healthy(redis_cluster)


def cli(port: int, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_slot_migrated_under_the_client_is_followed_through_ask_then_moved(cluster):
    client = RedisCluster.from_url(cluster.url)
    prefix = f"mig-{uuid.uuid4().hex[:8]}:"
    sink = RedisChangeSink(client, key_prefix=prefix)
    lookups = RedisLookupCache(client, key_prefix=prefix)
    loop = asyncio.new_event_loop()  # the asyncio client keeps its slot map across the migration, as a worker's does
    aio = AsyncRedisLookupCache(AsyncRedisConnection(cluster.url, cluster=True), key_prefix=prefix)

    def aio_latest(device: str) -> str | None:
        return loop.run_until_complete(aio.get_latest(device)).document

    apply_changes(sink, [ev("mover", 1, critical=True)], None, list)
    aio_latest("mover")
    latest = sink.keys.latest("mover")
    slot = client.keyslot(latest)
    source = client.get_node_from_key(latest)
    target = next(p for p in cluster.master_ports() if p != source.port)
    source_id, target_id = cli(source.port, "cluster", "myid"), cli(target, "cluster", "myid")
    cli(target, "cluster", "setslot", str(slot), "importing", source_id)
    cli(source.port, "cluster", "setslot", str(slot), "migrating", target_id)
    cli(source.port, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", latest)
    # mid-migration: the latest key answers with ASK from the source (followed), the others stay there
    mid = ev("mover", 5)
    apply_changes(sink, [mid], None, list)
    assert lookups.get_latest("mover").document == mid.to_json() == aio_latest("mover")
    # a script over keys of which some moved and some not cannot run until the migration ends (TRYAGAIN):
    # a transient failure, so the change feed keeps its position and the page is written by a later run
    with pytest.raises(DependencyUnavailable):
        apply_changes(sink, [ev("mover", 6, critical=True)], None, list)
    remaining = cli(source.port, "cluster", "getkeysinslot", str(slot), "100").split()
    if remaining:
        cli(source.port, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *remaining)
    for port in cluster.master_ports():
        cli(port, "cluster", "setslot", str(slot), "node", target_id)
    # the client's slot map still names the source: MOVED, followed
    newest = ev("mover", 9, critical=True)
    apply_changes(sink, [newest], None, list)
    assert lookups.get_latest("mover").document == newest.to_json() == aio_latest("mover")
    assert lookups.get_critical("mover", -(2**53), 10) is None  # written by the feed alone: not known complete
    assert client.get_node_from_key(latest).port == target
    assert len(client.zrange(sink.keys.critical("mover"), 0, -1)) == 2
    client.close()
    loop.close()


class _Cassandra:
    """Stands in for the lookups' Cassandra reader (not under test): what a bypass reads."""

    def __init__(self, event) -> None:
        self.event = event

    async def latest(self, device_id: str):
        return self.event if device_id == self.event.device_id else None

    async def ping(self, timeout: float) -> None:
        return None


@pytest.mark.timeout(180)
def test_a_slot_migrating_to_a_newly_added_master_is_redis_unavailable(tmp_path):
    """While a slot migrates to a master the client has not seen (a node added to scale out, owning no slot yet,
    so missing from ``CLUSTER SLOTS``), the source answers ``ASK <new node>`` and redis-py 8.1 fails on the node it
    cannot find with a bare ``AttributeError``. Each adapter call fails as ``DependencyUnavailable("redis")``,
    saying what happened: the lookups bypass to Cassandra, the change feed keeps its position.
    Was: the AttributeError escaped: every lookup of a device in the slot was a 500, the change feed crashed."""
    from shared.adapters.redis_dashboard import RedisCriticalStream
    from shared.adapters.redis_rebuild import RedisCacheBuilder
    from shared.services.lookups import LookupService
    from sluice.redis_cluster import LocalRedisCluster, _free_port

    own = LocalRedisCluster(tmp_path / "cluster", masters=3, replicas=0).start()  # a master is added to it
    client = None
    try:
        client = RedisCluster.from_url(own.url)
        p = "scale:"
        sink = RedisChangeSink(client, key_prefix=p)
        lookups = RedisLookupCache(client, key_prefix=p)
        state_before = ev("mover", 1)
        sink.put_latest([state_before])
        # scale out: a fourth master joins (no slots yet), then one slot starts migrating to it
        masters = own.ports
        port, bus = _free_port(own.host), _free_port(own.host)
        own.bus_ports[port] = bus
        own._start_node(port)
        cli(masters[0], "cluster", "meet", own.host, str(port), str(bus))
        target_id = cli(port, "cluster", "myid")

        def joined() -> bool:  # every node knows the new one by its id, and it knows the whole slot map
            return all(target_id in cli(other, "cluster", "nodes") for other in masters) \
                and "cluster_state:ok" in cli(port, "cluster", "info")

        deadline = time.monotonic() + 60
        while not joined():
            assert time.monotonic() < deadline, "the new node did not join"
            cli(masters[0], "cluster", "meet", own.host, str(port), str(bus))  # again, if it was lost
            time.sleep(0.5)
        key = sink.keys.latest("mover")
        slot, source = client.keyslot(key), client.get_node_from_key(key)
        source_id = cli(source.port, "cluster", "myid")
        assert cli(port, "cluster", "setslot", str(slot), "importing", source_id) == "OK"
        assert cli(source.port, "cluster", "setslot", str(slot), "migrating", target_id) == "OK"
        assert cli(source.port, "migrate", own.host, str(port), "", "0", "5000", "keys", key) == "OK"
        # and the slot of the device's critical stream shard, which holds no key yet: its source answers ASK too
        stream_slot = client.keyslot(sink.keys.stream("mover"))
        stream_source = client.get_node_from_key(sink.keys.stream("mover"))
        if stream_slot != slot:
            assert cli(port, "cluster", "setslot", str(stream_slot), "importing",
                       cli(stream_source.port, "cluster", "myid")) == "OK"
            assert cli(stream_source.port, "cluster", "setslot", str(stream_slot), "migrating", target_id) == "OK"

        outcomes: dict[str, BaseException | None] = {}

        def attempt(name, call) -> None:
            try:
                call()
                outcomes[name] = None
            except Exception as exc:  # its kind is what the assertions below check
                outcomes[name] = exc

        attempt("lookup read", lambda: lookups.get_latest("mover"))
        attempt("lookup fill", lambda: lookups.fill_latest("mover", ev("mover", 2), 60, 5))
        attempt("change feed write", lambda: apply_changes(sink, [ev("mover", 3)], None, list))
        attempt("rebuild clearing the device", lambda: RedisCacheBuilder(sink, settle_seconds=0).clear("mover"))
        attempt("dashboard critical stream", lambda: RedisCriticalStream(client, key_prefix=p).recent(10))

        async def aio_read() -> None:
            connection = AsyncRedisConnection(own.url, cluster=True)
            try:
                await AsyncRedisLookupCache(connection, key_prefix=p).get_latest("mover")
            finally:
                connection.close()
                await asyncio.sleep(0.05)

        attempt("asyncio lookup read", lambda: asyncio.run(aio_read()))
        for name, exc in outcomes.items():
            assert isinstance(exc, DependencyUnavailable) and exc.dependency == "redis", \
                f"{name}: {type(exc).__name__}: {exc}"
            assert "not in the client's slot map" in str(exc), f"{name}: {exc}"

        async def served() -> tuple[str, str | None]:  # GET /devices/mover/latest: from Cassandra, no 500
            connection = AsyncRedisConnection(own.url, cluster=True)
            service = LookupService(AsyncRedisLookupCache(connection, key_prefix=p), _Cassandra(state_before))
            try:
                answer = await service.latest("mover")
                return answer.cache, answer.document
            finally:
                connection.close()
                await asyncio.sleep(0.05)

        assert asyncio.run(served()) == ("bypass", state_before.to_json())
    finally:
        if client is not None:
            client.close()
        own.stop()


@pytest.mark.timeout(180)
def test_the_health_checks_find_a_dead_master_and_keep_the_lookups_breaker_open(tmp_path):
    """With a master dead (no replica to take its place), the health checks say Redis is down, naming that master:
    ``/api/health`` (asyncio) and the status page's check (blocking) ``PING`` every master, not one node. So
    ``LookupService.health`` keeps the circuit breaker its failed lookup opened.
    Was: the ``PING`` reached the client's default node only, Redis was "up", and each health probe closed the
    breaker, sending the lookups back to a cluster that could not serve them."""
    from shared.services.health import BlockingHealth
    from shared.services.lookups import LookupService
    from sluice.redis_cluster import LocalRedisCluster

    own = LocalRedisCluster(tmp_path / "cluster", masters=3, replicas=0).start()  # a master of it is killed
    p = "health:"
    blocking = None
    try:
        blocking = RedisCluster.from_url(own.url)
        sink = RedisChangeSink(blocking, key_prefix=p)
        events = {f"dev-{n}": ev(f"dev-{n}", 1) for n in range(40)}
        sink.put_latest(list(events.values()))
        status_page = BlockingHealth({"redis": RedisLookupCache(blocking, key_prefix=p).ping}, timeout=5.0)
        assert status_page()[0]

        async def scenario() -> tuple[bool, dict, bool, int]:
            connection = AsyncRedisConnection(own.url, cluster=True)
            try:
                client = await connection.client()
                defaults = {client.get_default_node().port, blocking.get_default_node().port}
                victim = next(port for port in own.master_ports() if port not in defaults)  # a plain PING misses it
                device = next(d for d in events if client.get_node_from_key(sink.keys.latest(d)).port == victim)
                service = LookupService(AsyncRedisLookupCache(connection, key_prefix=p), _Cassandra(events[device]),
                                        redis_retry_after=60.0, health_timeout=5.0)
                assert (await service.latest(device)).cache == "hit"
                assert (await service.health())[0]
                own.kill(victim)
                assert (await service.latest(device)).cache == "bypass"  # the breaker opened
                healthy, body = await service.health()
                return healthy, body, service._redis_usable(), victim
            finally:
                connection.close()
                await asyncio.sleep(0.05)

        api_healthy, api_body, breaker_closed, victim = asyncio.run(scenario())
        assert not breaker_closed, "the health check closed the breaker while a master of the cluster is dead"
        for healthy, body in [(api_healthy, api_body), status_page()]:  # /api/health, then the status page's check
            redis_state = body["dependencies"]["redis"]
            assert not healthy and redis_state["status"] == "down", body
            assert f"PING of master {own.host}:{victim} failed" in redis_state["error"], body
    finally:
        if blocking is not None:
            blocking.close()
        own.stop()


def test_an_attribute_error_of_ours_is_not_taken_for_a_redis_outage():
    """Only an ``AttributeError`` raised inside redis-py's cluster client is mapped (``client.redirects``): one
    raised in our own code is a bug, and stays one."""
    from shared.adapters.redis.client import redirects

    with pytest.raises(AttributeError, match="no_such_attribute"), redirects():
        object().no_such_attribute  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.timeout(180)
def test_a_master_killed_during_a_change_feed_run_loses_nothing(cluster, session, keyspace, store, redis_url,
                                                               redis_prefix):
    import redis

    events = spread(60, devices=6)
    store.write(events)
    connection = RedisConnection(cluster.url, cluster=True, socket_timeout=1)
    client = connection.client()
    prefix = f"fo-{uuid.uuid4().hex[:8]}:"
    sink = RedisChangeSink(connection, key_prefix=prefix, ttl_seconds=3600, critical_per_device_max=5)
    victim = cluster.master_ports()[0]

    def kill_a_master(call: int) -> None:
        if call == 3:
            cluster.kill(victim)

    service = make_service("portable", session, keyspace, CountingSink(sink, before_call=kill_a_master), page_size=6)
    failures, deadline = 0, time.monotonic() + 90
    while True:  # the timer: each run either completes or stops with the position at the last written page
        try:
            result = service.run()
            if result.stopped == "caught_up":
                break
        except DependencyUnavailable as exc:
            assert exc.dependency == "redis"
            failures += 1
        assert time.monotonic() < deadline, "the change feed did not complete after the failover"
        time.sleep(0.5)
    assert failures >= 1  # the kill did hit a run
    assert victim not in cluster.master_ports()  # its replica took over
    assert_redis_matches(client, sink, events)

    # the same events through one clean run on the single Redis leave the same state
    single = redis.Redis.from_url(redis_url)
    other = RedisChangeSink(single, key_prefix=redis_prefix, ttl_seconds=3600, critical_per_device_max=5)
    clean = ChangeFeedService(make_feed("portable", session, keyspace, page_size=6), other,
                              CassandraFeedStateStore(session, keyspace), feed_name="clean",
                              rules=changefeed_tests.RULES, time_budget=60, apply_chunk=6)
    assert clean.run().stopped == "caught_up"

    def normalised(c, p):
        return {k.decode()[len(p):]: v for k, v in state(c, p).items()}

    assert normalised(client, prefix) == normalised(single, redis_prefix)
    single.close()
    client.close()


@pytest.mark.timeout(180)
def test_with_wait_replicas_a_page_the_replica_missed_is_written_again_after_a_failover(tmp_path):
    """``SLUICE_REDIS_WAIT_REPLICAS=1``: a page its master's replica did not acknowledge is not reported written
    (``DependencyUnavailable``: the change feed keeps its position), so after the master dies the next run writes
    it to the promoted replica, and the lookups serve it.
    Was (and still is with the guard off, the default, docs/redis-layout.md "Failover"): ``apply`` returned once
    the master acknowledged; the feed saved its position; the master died before its replica received the page,
    and a critical list marked complete was served without the acknowledged alarm."""
    import os
    import signal

    import redis

    from shared.ports.cache import SINCE_ALL
    from sluice.redis_cluster import LocalRedisCluster

    own = LocalRedisCluster(tmp_path / "cluster", masters=3, replicas=1).start()  # a master of it is killed
    connection = RedisConnection(own.url, cluster=True, socket_timeout=1)
    stopped = None
    try:
        client = connection.client()
        sink = RedisChangeSink(connection, key_prefix="fo:", ttl_seconds=3600, wait_replicas=1, wait_timeout_ms=300)
        lookups = RedisLookupCache(connection, key_prefix="fo:")
        first = ev("pump-9", 1, critical=True, enqueued=1)
        lookups.fill_critical("pump-9", [first], SINCE_ALL, 3600)  # a lookup filled the list: marked complete

        def written(event) -> bool:
            """One change feed run's write of ``event``: False while Redis is unavailable (the run retries)."""
            try:
                apply_changes(sink, [event], None, list)
            except DependencyUnavailable:
                return False
            return True

        # acknowledged by the replica too (a replica just started may still be in its first sync)
        poll(lambda: written(first), 60, "the replica to acknowledge the first page", every=0.5)
        node = client.get_node_from_key(sink.keys.critical("pump-9"))
        with redis.Redis(host=node.host, port=node.port) as master:
            replica = int(master.info("replication")["slave0"]["port"])
            stopped = own.nodes[replica].process.pid
            os.kill(stopped, signal.SIGSTOP)  # the replica lags behind for a moment...
            master.client_kill_filter(_type="replica")
        second = ev("pump-9", 2, critical=True, enqueued=2)
        with pytest.raises(DependencyUnavailable, match="not acknowledged by 1 replica"):
            apply_changes(sink, [second], None, list)  # on the master only: the position is not saved
        own.kill(node.port)  # ...and the master dies before the replica caught up
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        own.restart(node.port)  # it comes back as the promoted replica's replica (the service re-creates one)

        # the change feed's next runs: "redis unavailable" until the failover is over
        poll(lambda: written(second), 90, "the page to be written after the failover", every=0.5)
        served = lookups.get_critical("pump-9", SINCE_ALL, 10)
        assert served is None or str(second.event_id) in [json.loads(d)["event_id"] for d in served], \
            f"a list marked complete is served without the critical event: {served}"
        assert lookups.get_latest("pump-9").document == second.to_json()
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        connection.close()
        own.stop()


@pytest.mark.timeout(120)
def test_lookups_during_a_failover_fall_back_to_cassandra_without_a_500(cluster, app_env, store):
    from tests.integration.test_changefeed import make_event
    from tests.integration.test_lookups import latest

    app_env(SLUICE_REDIS_URL=cluster.url, SLUICE_REDIS_CLUSTER="true", SLUICE_REDIS_SOCKET_TIMEOUT_SECONDS="0.5",
            SLUICE_LOOKUP_REDIS_RETRY_AFTER_SECONDS="0.5")
    now = time.time()
    from datetime import UTC, datetime, timedelta

    at = datetime.fromtimestamp(now, UTC) - timedelta(minutes=1)
    devices = [f"fail-{i}" for i in range(12)]
    store.write([make_event(d, at) for d in devices])
    assert all(latest(d).status_code == 200 for d in devices)
    cluster.kill(cluster.master_ports()[0])
    seen: set[str] = set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for d in devices:
            response = latest(d)
            assert response.status_code == 200, response.get_body()
            seen.add(response.headers["X-Cache"])
    assert "bypass" in seen  # some lookups found Redis down and were served from Cassandra


@pytest.mark.timeout(60)
def test_the_lookups_first_commands_sent_together_to_a_cluster_all_succeed(cluster):
    """A worker's first lookups arrive together. redis-py 8.1's asyncio cluster client fails commands sent
    concurrently before it has read the slot map (each one starts reading it, and one closes the connections
    another uses); the connection reads the map once, before any command, so all of them succeed."""
    prefix = f"first-{uuid.uuid4().hex[:8]}:"

    async def scenario() -> list[object]:
        connection = AsyncRedisConnection(cluster.url, cluster=True)
        try:
            client = await asyncio.gather(*(connection.client() for _ in range(5)))
            assert all(c is client[0] for c in client)  # one client, not one per concurrent first use
            return await asyncio.gather(*(client[0].set(f"{prefix}{n}", n, ex=60) for n in range(40)),
                                        return_exceptions=True)
        finally:
            connection.close()
            await asyncio.sleep(0.1)

    answers = asyncio.run(scenario())
    assert [a for a in answers if a is not True] == []
