"""Entra ID sign-in to Redis (``SLUICE_REDIS_AUTH=entra``) against the real Redis and Redis Cluster.

Azure checks the token; here each token the credential issues is made the password of an
ACL user named by the token's object id, so Redis accepts exactly the tokens issued, as
the identity's user. Tokens last seconds instead of an hour, so renewal happens within a
test; the credential issues each new token for a new object id, so which token a
connection last signed in with shows as its ACL user in ``CLIENT LIST``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from redis.cluster import RedisCluster

from shared.adapters.identity import LocalDevelopmentCredential
from shared.adapters.redis import RedisConnection, RedisLookupCache
from shared.adapters.redis.aio import AsyncRedisConnection, AsyncRedisLookupCache
from shared.adapters.redis.entra import EntraCredentials, Token
from shared.exceptions import DependencyUnavailable
from tests.fixtures.redis_cluster import RedisServer
from tests.fixtures.waiting import poll

LIFETIME = 6  # seconds: the first renewal comes after about half of it


class IssuingCredential(LocalDevelopmentCredential):
    """Local tokens that Redis accepts: each becomes the password of the ACL user its object id names."""

    def __init__(self, admin: redis.Redis | RedisCluster, users: list[str]) -> None:
        super().__init__(lifetime=LIFETIME, object_id=users[0])
        self.admin = admin
        self.users = users
        self.issued: list[str] = []
        self.failures = 0

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        if self.failures:
            self.failures -= 1
            raise ClientAuthenticationError("Entra ID did not answer")
        self.object_id = self.users[min(len(self.issued), len(self.users) - 1)]
        token = super().get_token(*scopes, **kwargs)
        _acl(self.admin, "ACL", "SETUSER", self.object_id, "on", "resetpass", f">{token.token}", "~*", "&*", "+@all")
        self.issued.append(self.object_id)
        return token


@pytest.fixture
def short_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renewal at half the remaining life, retried every half second; tokens of a second or more are used."""
    monkeypatch.setattr(EntraCredentials, "renew_at", 0.5)
    monkeypatch.setattr(EntraCredentials, "cache_window", 0.0)
    monkeypatch.setattr(EntraCredentials, "retry_seconds", 0.5)
    monkeypatch.setattr(EntraCredentials, "min_left", 1.0)


def _acl(admin: redis.Redis | RedisCluster, *command: str) -> None:
    """``command`` on the Redis, or on every node of the cluster as CLUSTER NODES lists them now, replicas included:
    ACL users are not replicated, the admin client's node list may predate the replicas, and a client that pings
    every node (or reads from replicas) signs in on them too."""
    if not isinstance(admin, RedisCluster):
        admin.execute_command(*command)
        return
    for address in admin.cluster_nodes():
        host, port = address.rsplit(":", 1)
        node = redis.Redis(host=host, port=int(port.split("@")[0]))
        try:
            node.execute_command(*command)
        finally:
            node.close()


def _users(admin: redis.Redis | RedisCluster) -> Iterator[tuple[redis.Redis | RedisCluster, list[str]]]:
    names = [f"sluice-entra-{uuid.uuid4().hex[:8]}-{n}" for n in range(3)]
    try:
        yield admin, names
    finally:
        _acl(admin, "ACL", "DELUSER", *names)
        admin.close()


@pytest.fixture
def users(redis_server: RedisServer) -> Iterator[tuple[redis.Redis | RedisCluster, list[str]]]:
    """ACL user names for the tokens, on the Redis or on every node of the Redis Cluster."""
    yield from _users(redis_server.client())


@pytest.fixture
def local_users(redis_url: str) -> Iterator[tuple[redis.Redis | RedisCluster, list[str]]]:
    """ACL user names for the tokens, on the machine's Redis."""
    yield from _users(redis.Redis.from_url(redis_url))


def clients_of(admin: redis.Redis | RedisCluster, client_name: str) -> list[dict[str, str]]:
    """``CLIENT LIST`` entries of the connections named ``client_name``, on every node (ids made node-unique)."""
    if isinstance(admin, RedisCluster):
        per_node = admin.execute_command("CLIENT LIST", target_nodes=RedisCluster.ALL_NODES)
        clients = [{**c, "id": f"{node}/{c['id']}"} for node, entries in per_node.items() for c in entries]
    else:
        clients = admin.client_list()
    return [c for c in clients if c["name"] == client_name]


def signed_in_as(admin: redis.Redis | RedisCluster, client_name: str) -> list[str]:
    """The ACL user of every connection named ``client_name``, on every node."""
    return sorted(c["user"] for c in clients_of(admin, client_name))


def _signed_in_everywhere(redis_server: RedisServer, credential: Any) -> tuple[RedisConnection, Any, str]:
    """A connection signing in with ``credential``, its client, and its client name; keys written in many slots, so
    on a cluster it holds a connection to every master. The caller closes the connection."""
    client_name = f"entra-{uuid.uuid4().hex[:8]}"
    connection = RedisConnection(redis_server.url, entra=credential, cluster=redis_server.cluster,
                                 client_name=client_name)
    try:
        client = connection.client()
        for n in range(30):
            client.set(f"entra:{client_name}:{n}", n, ex=60)
    except BaseException:
        connection.close()
        raise
    return connection, client, client_name


@pytest.mark.timeout(60)
def test_open_connections_sign_in_again_with_each_renewed_token(redis_server: RedisServer, users,
                                                                short_renewal) -> None:
    admin, names = users
    credential = IssuingCredential(admin, names)
    connection, client, client_name = _signed_in_everywhere(redis_server, credential)
    try:
        first = signed_in_as(admin, client_name)
        assert first and set(first) == {names[0]}

        poll(lambda: set(signed_in_as(admin, client_name)) == {names[1]}, 15, "the renewed sign-in")
        # the same connections, signed in again: none was dropped and opened anew
        assert len(signed_in_as(admin, client_name)) == len(first)
        assert client.get(f"entra:{client_name}:7") == b"7"
    finally:
        connection.close()


@pytest.mark.timeout(60)
def test_a_failed_renewal_is_retried_not_the_end_of_renewals(redis_url: str, local_users, short_renewal) -> None:
    """redis-py's own token manager stops renewing after one error; then every connection would be dropped when its
    token ends. Here the first two renewals fail and the third signs the open connection in again."""
    admin, names = local_users
    credential = IssuingCredential(admin, names)
    client_name = f"entra-{uuid.uuid4().hex[:8]}"
    connection = RedisConnection(redis_url, entra=credential, cluster=False, client_name=client_name)
    try:
        client = connection.client()
        client.ping()
        credential.failures = 2
        poll(lambda: signed_in_as(admin, client_name) == [names[1]], 15, "the renewed sign-in")
        assert credential.failures == 0
        client.ping()
    finally:
        connection.close()


class OneRenewal(IssuingCredential):
    """The first token lasts ``LIFETIME``, every later one an hour: exactly one renewal happens within a test."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        token = super().get_token(*scopes, **kwargs)
        self.lifetime = 3600
        return token


def _kill(host: str, port: int, client_id: int | str) -> None:
    """The server closes one connection (as a restarted shard, a proxy or an idle timeout does)."""
    node = redis.Redis(host=host, port=port)
    try:
        node.client_kill_filter(_id=str(client_id))
    finally:
        node.close()


@pytest.mark.timeout(90)
def test_a_connection_the_server_closed_does_not_stop_the_others_signing_in_again(redis_server: RedisServer, users,
                                                                                  short_renewal) -> None:
    """One idle connection the server closed meanwhile (a restarted shard, an idle timeout) made its re-``AUTH``
    raise, and that ended the sign-in: redis-py's ``re_auth_callback`` stops at it, and so did the loop over a
    cluster's nodes. The pool's later connections, and every later node's, kept the token that was about to end.
    Now the others sign in again in place, and the closed one reconnects with the renewed token on its next use."""
    admin, names = users
    credential = OneRenewal(admin, names)
    connection, client, client_name = _signed_in_everywhere(redis_server, credential)
    try:
        if isinstance(client, RedisCluster):  # in the order the sign-in visits them
            nodes = [node for node in client.get_nodes() if node.redis_connection is not None]
            pools = [node.redis_connection.connection_pool for node in nodes
                     if node.redis_connection.connection_pool._available_connections]
            assert len(pools) >= 2
        else:
            pools = [client.connection_pool]
        for pool in pools:  # several idle connections in each pool
            taken = [pool.get_connection() for _ in range(3)]
            for conn in taken:
                pool.release(conn)
        assert set(signed_in_as(admin, client_name)) == {names[0]}
        broken = pools[0]._available_connections[0]  # the first connection the sign-in visits
        broken.send_command("CLIENT", "ID")
        _kill(broken.host, broken.port, broken.read_response())

        poll(lambda: len(credential.issued) >= 2, 15, "the renewal")
        poll(lambda: set(signed_in_as(admin, client_name)) == {names[1]}, 10,
             "every other connection signing in with the renewed token")
        taken = [pools[0].get_connection() for _ in range(len(pools[0]._available_connections))]
        for conn in taken:  # the closed one among them, reconnected
            conn.send_command("PING")
            assert conn.read_response() in (b"PONG", "PONG")
            pools[0].release(conn)
        assert set(signed_in_as(admin, client_name)) == {names[1]}
    finally:
        connection.close()


class CachingIssuer(IssuingCredential):
    """As azure-identity does: the token held is handed out again until shortly before its end (here 2.5 s), then a
    new one (an hour long); ``down`` makes every request fail (Entra ID unreachable)."""

    refresh_before = 2.5

    def __init__(self, admin: redis.Redis | RedisCluster, users: list[str]) -> None:
        super().__init__(admin, users)
        self.down = False
        self.held: AccessToken | None = None

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        if self.down:
            raise ClientAuthenticationError("Entra ID did not answer")
        if self.held is not None and self.held.expires_on - time.time() > self.refresh_before:
            return self.held
        self.held = super().get_token(*scopes, **kwargs)
        self.lifetime = 3600
        return self.held


@pytest.mark.timeout(60)
def test_a_token_a_new_connection_took_after_an_entra_outage_reaches_the_open_connections(
        redis_url: str, local_users, short_renewal, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an Entra ID outage lasting into the held token's last ``min_left`` seconds, the first *new* connection
    takes a new token. The renewal thread compared the token it then got (the same one: the credential caches it)
    with the one held, which was already that token, saw no change and never signed the open connections in again:
    they kept the ended token (Azure closes them). It compares with the token the connections last got now."""
    monkeypatch.setattr(EntraCredentials, "min_left", 3.0)
    admin, names = local_users
    credential = CachingIssuer(admin, names)  # the first token lasts LIFETIME
    client_name = f"entra-{uuid.uuid4().hex[:8]}"
    connection = RedisConnection(redis_url, entra=credential, cluster=False, client_name=client_name)
    try:
        pool = connection.client().connection_pool
        opened = [pool.get_connection() for _ in range(2)]
        for conn in opened:
            pool.release(conn)
        assert signed_in_as(admin, client_name) == [names[0]] * 2
        credential.down = True  # the renewals fail
        assert credential.held is not None
        time.sleep(max(0.0, credential.held.expires_on - time.time() - 2.5))  # into the token's last min_left
        credential.down = False  # back; a new connection (a reconnect, more load) asks first
        more = [pool.get_connection() for _ in range(3)]
        for conn in more:
            pool.release(conn)
        assert names[1] in signed_in_as(admin, client_name)

        poll(lambda: set(signed_in_as(admin, client_name)) == {names[1]}, 8,
             "the open connections signing in with the token taken after the outage")
    finally:
        connection.close()


def _after_the_old_token_ends(admin: redis.Redis | RedisCluster, old_user: str) -> None:
    """What Azure does when a token ends: the connections still signed in with it are closed (and the token is
    refused from then on). Deleting the ACL user does both here."""
    _acl(admin, "ACL", "DELUSER", old_user)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("clustered", [False, True], ids=["single", "cluster"])
def test_the_lookups_async_connections_sign_in_with_the_renewed_token(request, clustered: bool,
                                                                     short_renewal) -> None:
    """The lookups' redis.asyncio connections reconnect after a renewal (redis-py closes each where no command can
    share it), so none is left with the old token: a busy one (a blocked command here) once released, an idle one
    before its next command, the cluster's slot-map connection included. After the old token ends, every command and
    a slot-map refresh still work, with no error."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    if clustered:
        from tests.fixtures.redis_cluster import CLUSTER_URL, cluster_healthy

        cluster = request.getfixturevalue("redis_cluster")
        cluster_healthy(cluster)
        url = CLUSTER_URL or cluster.url
        # The URL names a current master: the command blocked below goes to the URL's node, which only a master's
        # slots reach, and a failover test of this session may have left that node a replica.
        probe = RedisCluster.from_url(url)
        try:
            primary = probe.get_primaries()[0]
        finally:
            probe.close()
        at = urlsplit(url)
        url = at._replace(netloc=at.netloc.replace(f"{at.hostname}:{at.port}", f"{primary.host}:{primary.port}")
                          ).geturl()
        users_of = _users(RedisCluster.from_url(url))
    else:
        url = request.getfixturevalue("redis_url")
        users_of = _users(redis.Redis.from_url(url))
    admin, names = next(users_of)
    credential = IssuingCredential(admin, names)
    client_name = f"entra-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        connection = AsyncRedisConnection(url, entra=credential, cluster=clustered, client_name=client_name,
                                          socket_timeout=15)
        try:
            client = await connection.client()
            keys = [f"entra:{client_name}:{n}" for n in range(30)]  # many slots: every master of a cluster
            await asyncio.gather(*(client.set(key, key, ex=60) for key in keys))
            nothing = f"entra:{client_name}:nothing"
            if isinstance(client, AsyncRedisCluster):
                # blocked on the node of the URL: redis-py keeps a second ClusterNode of that name (its startup
                # node), and a renewal that took one for the other left the serving one's connections alone
                at = urlsplit(url)
                nothing = next(f"{nothing}{n}" for n in range(10_000)
                               if client.get_node_from_key(f"{nothing}{n}").name == f"{at.hostname}:{at.port}")
            busy = asyncio.ensure_future(client.blpop([nothing], timeout=5))
            await asyncio.sleep(0.3)
            assert set(signed_in_as(admin, client_name)) == {names[0]}
            (blocked,) = [c["id"] for c in clients_of(admin, client_name) if "b" in c["flags"]]
            deadline = time.monotonic() + 15
            while names[1] not in credential.issued:
                assert time.monotonic() < deadline, "no renewal"
                await asyncio.sleep(0.05)
            credential.failures = 10_000  # no later renewal: what this one left behind stays visible
            await asyncio.sleep(0.5)
            assert not busy.done()
            assert await busy is None  # released now, the blocked command answered on its own connection
            # the connection that was busy at the renewal is not left signed in with the old token: closed as it is
            # released, or (when the renewal reached the loop only after that) before its next command; commands to
            # its node take each of the node's free connections in turn
            deadline = time.monotonic() + 20
            while (users := [c["user"] for c in clients_of(admin, client_name) if c["id"] == blocked]) not in (
                    [], [names[1]]):
                assert time.monotonic() < deadline, users
                for _ in range(len(keys)):  # one turn through the node's free connections (30 at most)
                    await client.get(nothing)
                await asyncio.sleep(0.05)
            _after_the_old_token_ends(admin, names[0])
            values = await asyncio.gather(*(client.get(key) for key in keys))
            assert values == [key.encode() for key in keys]
            if isinstance(client, AsyncRedisCluster):
                await client.nodes_manager.initialize()  # the slot-map connection
                await client.ping(target_nodes=AsyncRedisCluster.ALL_NODES)
            assert set(signed_in_as(admin, client_name)) == {names[1]}
        finally:
            connection.close()
            await asyncio.sleep(0.1)

    try:
        asyncio.run(run())
    finally:
        next(users_of, None)


class AddingCredential(LocalDevelopmentCredential):
    """As Entra ID does: each token is one more valid password of the same user (older ones stay valid), so nothing
    but the way connections sign in again can break one."""

    def __init__(self, admin: redis.Redis, user: str, lifetime: int) -> None:
        super().__init__(lifetime=lifetime, object_id=user)
        self.admin = admin
        self.issued = 0

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        token = super().get_token(*scopes, **kwargs)
        self.admin.execute_command("ACL", "SETUSER", self.object_id, "on", f">{token.token}", "~*", "&*", "+@all")
        self.issued += 1
        return token


@pytest.mark.timeout(90)
def test_busy_async_connections_across_renewals_never_share_a_socket(redis_url: str, local_users,
                                                                     short_renewal) -> None:
    """40 coroutines reading without pause across several renewals: every command gets its own reply and none
    fails. (redis-py's own re-AUTH of a busy asyncio connection is sent after the connection is handed back, and the
    next command then shares the socket: RuntimeError, AttributeError, replies of other commands.)"""
    admin, names = local_users
    credential = AddingCredential(admin, names[0], lifetime=3)  # a renewal about every 1.5 s
    client_name = f"entra-{uuid.uuid4().hex[:8]}"
    errors: list[BaseException] = []
    wrong: list[tuple[str, object]] = []

    async def run() -> None:
        connection = AsyncRedisConnection(redis_url, entra=credential, cluster=False, client_name=client_name)
        try:
            client = await connection.client()
            keys = [f"entra:{client_name}:{n}" for n in range(20)]
            for key in keys:
                await client.set(key, key, ex=60)
            done = asyncio.Event()

            async def worker(n: int) -> None:
                key = keys[n % len(keys)]
                while not done.is_set():
                    try:
                        value = await client.get(key)
                    except Exception as exc:  # recorded, asserted below
                        errors.append(exc)
                        continue
                    if value != key.encode():
                        wrong.append((key, value))

            async def renewals(count: int) -> None:
                deadline = time.monotonic() + 40
                while credential.issued < count and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                done.set()

            await asyncio.gather(renewals(7), *(worker(n) for n in range(40)))
        finally:
            connection.close()
            await asyncio.sleep(0.1)

    asyncio.run(run())
    assert credential.issued >= 5, "too few renewals to tell"
    kinds = sorted({f"{type(e).__name__}: {e}" for e in errors})
    assert not errors, f"{len(errors)} commands failed across {credential.issued - 1} renewals: {kinds[:5]}"
    assert not wrong, wrong[:3]


@pytest.mark.timeout(30)
def test_a_command_started_as_a_renewal_closes_idle_connections_gets_its_reply(redis_url: str, local_users) -> None:
    """The renewal's closing of idle connections and a command sent in the same loop turn: the command either gets
    a connection closed before it is handed out (and reconnects) or one still open, never one closed under it.
    (Closing them with ``pool.disconnect(inuse_connections=False)`` takes no lock, and its closings run a turn
    later, after the command took a connection: "Error while writing to socket. Connection lost.")"""
    admin, names = local_users
    credential = AddingCredential(admin, names[0], lifetime=3600)
    client_name = f"entra-{uuid.uuid4().hex[:8]}"
    key = f"entra:{client_name}:k"

    async def run() -> list[object]:
        connection = AsyncRedisConnection(redis_url, entra=credential, cluster=False, client_name=client_name)
        try:
            client = await connection.client()
            await client.set(key, b"v", ex=60)  # one idle connection, signed in
            issued = credential.get_token("https://redis.azure.com/.default")
            token = Token(issued.token, issued.expires_on)
            outcomes: list[object] = []
            for _ in range(20):
                renewal = asyncio.ensure_future(connection._signed_in_again(token))
                reads = [asyncio.ensure_future(client.get(key)) for _ in range(3)]
                outcomes += await asyncio.gather(renewal, *reads, return_exceptions=True)
            return [outcome for outcome in outcomes if outcome not in (None, b"v")]
        finally:
            connection.close()
            await asyncio.sleep(0.1)

    assert asyncio.run(run()) == []


def test_no_token_is_redis_unavailable_naming_the_cause(redis_url: str, local_users, redis_prefix: str) -> None:
    """A credential that cannot get a token makes Redis unavailable to the adapters (the lookups then serve from
    Cassandra, the change feed retries), never an unexpected error."""
    admin, names = local_users
    credential = IssuingCredential(admin, names)
    credential.failures = 100
    connection = RedisConnection(redis_url, entra=credential, cluster=False)
    try:
        cache = RedisLookupCache(connection, key_prefix=redis_prefix)
        with pytest.raises(DependencyUnavailable, match="no Entra ID token for Redis: ClientAuthenticationError"):
            cache.get_event("some-event")
    finally:
        connection.close()


def test_a_token_without_an_object_id_is_refused_with_the_reason() -> None:
    """Redis takes the identity's object id as the user name; a token without ``oid`` cannot sign in."""
    from shared.adapters.redis.entra import Token

    class NoObjectId(LocalDevelopmentCredential):
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            token = super().get_token(*scopes, **kwargs)
            header, claims, _ = token.token.split(".")
            import base64
            import json

            decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
            del decoded["oid"]
            body = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
            return AccessToken(f"{header}.{body}.", token.expires_on)

    token = NoObjectId().get_token("https://redis.azure.com/.default")
    with pytest.raises(redis.ConnectionError, match="no 'oid' claim"):
        Token(token.token, token.expires_on)


def test_an_entra_id_outage_after_the_token_ended_is_asked_every_few_seconds_not_ten_times_a_second() -> None:
    """The renewal waited half of what the held token had left, at least 0.1 s: once that token had ended, an
    outage of Entra ID (or of the managed identity endpoint) was asked ten times a second, with a warning each
    time, for as long as it lasted. After a failure the wait is now at least ``failed_floor_seconds``."""
    import threading

    base = time.time()

    def clock() -> float:  # the renewal thread lives after the token's end
        return base + 4000 if threading.current_thread().name == "redis-entra-renewal" else base

    class Failing(LocalDevelopmentCredential):
        calls = 0

        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            self.calls += 1
            if self.calls == 1:
                return super().get_token(*scopes, **kwargs)
            raise ClientAuthenticationError("Entra ID is unavailable")

    credential = Failing(lifetime=3600)
    provider = EntraCredentials(credential, clock=clock)
    try:
        provider.get_credentials()  # the first connection: a token, and the renewal thread starts
        time.sleep(1.5)
        renewals = credential.calls - 1
    finally:
        provider.close()
    assert 1 <= renewals <= 2, f"the credential was asked {renewals} times in 1.5 s after failures"


class SlowOutage(LocalDevelopmentCredential):
    """Entra ID (or the workload identity's token endpoint) unreachable: each request takes ``seconds`` (or until the
    test sets ``release``), then fails, as azure-core's transport does when a connection attempt to
    login.microsoftonline.com times out. Counts the requests, and the most in flight at once."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = self.in_flight = self.most = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            self.release.wait(self.seconds)
            raise ClientAuthenticationError("Entra ID did not answer in time")
        finally:
            with self._lock:
                self.in_flight -= 1


def _token_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "redis-entra-token" and thread.is_alive())


@pytest.mark.timeout(60)
def test_a_lookup_fails_within_the_socket_timeout_when_the_token_endpoint_hangs(redis_url: str,
                                                                                 redis_prefix: str) -> None:
    """A lookup asks Redis first and, Redis being unavailable, is served from Cassandra (``bypass``). With no usable
    token, a new connection awaited the token request with no bound at all: the lookup waited as long as the
    credential took (azure-core's default timeouts are minutes), far past ``SLUICE_REDIS_SOCKET_TIMEOUT_SECONDS``.
    It waits its connect timeout now, and fails as Redis unavailable."""
    credential = SlowOutage(seconds=8.0)

    async def run() -> tuple[float, BaseException | None]:
        connection = AsyncRedisConnection(redis_url, entra=credential, cluster=False, socket_timeout=1.0)
        cache = AsyncRedisLookupCache(connection, key_prefix=redis_prefix)
        started = time.monotonic()
        error: BaseException | None = None
        try:
            await cache.get_event("some-event")
        except DependencyUnavailable as exc:
            error = exc
        finally:
            elapsed = time.monotonic() - started
            connection.close()
        return elapsed, error

    elapsed, error = asyncio.run(run())
    assert error is not None
    assert elapsed < 3.0, f"the lookup waited {elapsed:.1f} s for the token (socket timeout 1 s)"


@pytest.mark.timeout(60)
def test_the_blocking_client_fails_within_the_socket_timeout_when_the_token_endpoint_hangs(
        redis_url: str, redis_prefix: str) -> None:
    """The same for the blocking client (the change feed's writes, the dashboard's reads): ``get_credentials`` asked
    the credential under the provider's lock with no bound, so a command waited as long as the token request did."""
    credential = SlowOutage(seconds=8.0)
    connection = RedisConnection(redis_url, entra=credential, cluster=False, socket_timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(DependencyUnavailable, match="Entra ID"):
            RedisLookupCache(connection, key_prefix=redis_prefix).get_event("some-event")
    finally:
        elapsed = time.monotonic() - started
        connection.close()
    assert elapsed < 3.0, f"the command waited {elapsed:.1f} s for the token (socket timeout 1 s)"
    assert credential.calls == 1  # the connection's retries waited for the request in flight, asked no more


@pytest.mark.timeout(60)
def test_concurrent_new_connections_during_an_entra_outage_do_not_queue_one_token_request_each(
        redis_url: str) -> None:
    """During an Entra ID outage with no usable token, each new connection took the provider's lock and made a token
    request of its own: connections opened together waited in line, the k-th for k slow requests. Here 5 connections
    opened at once, the token endpoint taking 1 s to fail: they share one request and its failure (the last one
    failed only after about 5 s)."""
    credential = SlowOutage(seconds=1.0)

    async def run() -> tuple[float, list[object]]:
        connection = AsyncRedisConnection(redis_url, entra=credential, cluster=False, socket_timeout=10.0)
        try:
            client = await connection.client()
            started = time.monotonic()
            outcomes = await asyncio.gather(*(client.ping() for _ in range(5)), return_exceptions=True)
            return time.monotonic() - started, outcomes
        finally:
            connection.close()
            await asyncio.sleep(0.05)

    elapsed, outcomes = asyncio.run(run())
    assert all(isinstance(o, redis.ConnectionError) for o in outcomes), outcomes
    assert elapsed < 2.5, (f"5 connections opened together failed only after {elapsed:.1f} s "
                           f"({credential.calls} token requests, one after another)")



@pytest.mark.timeout(60)
def test_async_lookups_during_a_hanging_token_endpoint_share_one_token_request(redis_url: str,
                                                                               redis_prefix: str) -> None:
    """"One token request runs at a time and every new connection waits for it" (docs/security.md). With the
    cluster setting left empty (the default: ask the server), each lookup's failed client build made a new
    ``EntraCredentials`` and so a new token request on a new thread, while the first still hung: one thread and
    one request more per lookup for as long as the endpoint hung. The connection keeps its provider now."""
    credential = SlowOutage(seconds=30.0)
    before = _token_threads()

    async def run() -> list[BaseException | None]:
        connection = AsyncRedisConnection(redis_url, entra=credential, cluster=None, socket_timeout=0.5)
        cache = AsyncRedisLookupCache(connection, key_prefix=redis_prefix)
        errors: list[BaseException | None] = []
        try:
            for _ in range(4):
                try:
                    await cache.get_event("some-event")
                    errors.append(None)
                except DependencyUnavailable as exc:
                    errors.append(exc)
        finally:
            connection.close()
        return errors

    try:
        errors = asyncio.run(run())
        requests, most, threads = credential.calls, credential.most, _token_threads() - before
    finally:
        credential.release.set()
    assert all(isinstance(error, DependencyUnavailable) for error in errors), errors
    assert (requests, most, threads) == (1, 1, 1), (
        f"4 lookups during a hang made {requests} token requests ({most} in flight at once, {threads} threads)")


@pytest.mark.timeout(60)
def test_blocking_client_during_a_hanging_token_endpoint_shares_one_token_request(redis_url: str,
                                                                                  redis_prefix: str) -> None:
    """The same for the blocking client (the change feed, the dashboard): ``RedisConnection._build`` closed the
    provider of a failed build and made a new one, whose first connection started another token request."""
    credential = SlowOutage(seconds=30.0)
    before = _token_threads()
    connection = RedisConnection(redis_url, entra=credential, cluster=None, socket_timeout=0.5)
    try:
        cache = RedisLookupCache(connection, key_prefix=redis_prefix)
        for _ in range(4):
            with pytest.raises(DependencyUnavailable, match="Entra ID"):
                cache.get_event("some-event")
        requests, most, threads = credential.calls, credential.most, _token_threads() - before
    finally:
        credential.release.set()
        connection.close()
    assert (requests, most, threads) == (1, 1, 1), (
        f"4 commands during a hang made {requests} token requests ({most} in flight at once, {threads} threads)")


class CrossingRequests(LocalDevelopmentCredential):
    """A token, then a renewal request that answers only when the test says, with a token ending before the one a new
    connection's request (answered at once, meanwhile) got. Later renewals wait for the test's end and fail."""

    def __init__(self) -> None:
        super().__init__(lifetime=100, object_id="first")
        self.renewing, self.answer, self.done = threading.Event(), threading.Event(), threading.Event()

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        if threading.current_thread().name != "redis-entra-renewal":
            token = super().get_token(*scopes, **kwargs)
            self.lifetime, self.object_id = 300, "fresh"  # the next new connection's token ends last
            return token
        if self.renewing.is_set():
            self.done.wait(30)
            raise ClientAuthenticationError("Entra ID is unavailable")
        self.renewing.set()
        self.answer.wait(30)
        renewed = LocalDevelopmentCredential(lifetime=200, object_id="renewed")
        return renewed.get_token(*scopes, **kwargs)


@pytest.mark.timeout(60)
def test_a_renewal_does_not_replace_a_later_ending_token_a_new_connection_took() -> None:
    """A new connection whose held token was near its end asks for one, and holds it only if it ends no earlier
    than the held one; the renewal thread held its token whatever it was: a renewal that answered after such a
    request moved the provider back to the earlier-ending token, and signed the open connections in with it."""
    shift = [0.0]
    credential = CrossingRequests()
    provider = EntraCredentials(credential, clock=lambda: time.time() + shift[0])
    provider.renew_at, provider.cache_window = 0.001, 0.0  # the renewal asks within a second
    delivered: list[str] = []
    provider.deliver_to(lambda token: delivered.append(token.user))
    try:
        assert provider.get_credentials()[0] == "first"
        assert credential.renewing.wait(10), "the renewal never asked for a token"
        shift[0] = 50.0  # the first token has less than min_left (60 s) left: a new connection asks for its own
        assert provider.get_credentials()[0] == "fresh"
        credential.answer.set()  # the renewal's token now, ending before the new connection's
        poll(lambda: delivered, 10, "the renewal handing over a token")
        assert (delivered, provider.get_credentials()[0]) == (["fresh"], "fresh")
    finally:
        credential.done.set()
        provider.close()
