"""Entra ID sign-in to Redis (``SLUICE_REDIS_AUTH=entra``) against the real Redis and Redis Cluster.

Azure checks the token; here each token the credential issues is made the password of an
ACL user named by the token's object id, so Redis accepts exactly the tokens issued, as
the identity's user. Tokens last seconds instead of an hour, so renewal happens within a
test; the credential issues each new token for a new object id, so which token a
connection last signed in with shows as its ACL user in ``CLIENT LIST``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from redis.cluster import RedisCluster

from shared.adapters.identity import LocalDevelopmentCredential
from shared.adapters.redis import RedisConnection, RedisLookupCache
from shared.adapters.redis.aio import AsyncRedisConnection
from shared.adapters.redis.entra import EntraCredentials
from shared.exceptions import DependencyUnavailable
from tests.fixtures.redis_cluster import RedisServer

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
    if isinstance(admin, RedisCluster):
        admin.execute_command(*command, target_nodes=RedisCluster.ALL_NODES)
    else:
        admin.execute_command(*command)


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


def signed_in_as(admin: redis.Redis | RedisCluster, client_name: str) -> list[str]:
    """The ACL user of every connection named ``client_name``, on every node."""
    if isinstance(admin, RedisCluster):
        per_node = admin.execute_command("CLIENT LIST", target_nodes=RedisCluster.ALL_NODES)
        clients = [c for node in per_node.values() for c in node]
    else:
        clients = admin.client_list()
    return sorted(c["user"] for c in clients if c["name"] == client_name)


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.timeout(60)
def test_open_connections_sign_in_again_with_each_renewed_token(redis_server: RedisServer, users,
                                                                short_renewal) -> None:
    admin, names = users
    credential = IssuingCredential(admin, names)
    client_name = f"entra-{uuid.uuid4().hex[:8]}"
    connection = RedisConnection(redis_server.url, entra=credential, cluster=redis_server.cluster,
                                 client_name=client_name)
    try:
        client = connection.client()
        for n in range(30):  # keys in many slots: a connection to every master of a cluster
            client.set(f"entra:{client_name}:{n}", n, ex=60)
        first = signed_in_as(admin, client_name)
        assert first and set(first) == {names[0]}

        wait_for(lambda: set(signed_in_as(admin, client_name)) == {names[1]})
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
        wait_for(lambda: signed_in_as(admin, client_name) == [names[1]])
        assert credential.failures == 0
        client.ping()
    finally:
        connection.close()


@pytest.mark.timeout(60)
def test_the_lookups_async_connections_sign_in_again_on_their_event_loop(redis_url: str, local_users,
                                                                        short_renewal) -> None:
    admin, names = local_users
    credential = IssuingCredential(admin, names)
    client_name = f"entra-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        connection = AsyncRedisConnection(redis_url, entra=credential, cluster=False, client_name=client_name)
        try:
            client = await connection.client()
            await asyncio.gather(*(client.ping() for _ in range(4)))  # a few pooled connections
            opened = signed_in_as(admin, client_name)
            assert opened and set(opened) == {names[0]}
            deadline = time.monotonic() + 15
            while set(signed_in_as(admin, client_name)) != {names[1]}:
                assert time.monotonic() < deadline, signed_in_as(admin, client_name)
                await asyncio.sleep(0.1)
            assert len(signed_in_as(admin, client_name)) == len(opened)
            assert await client.ping()
        finally:
            connection.close()
            await asyncio.sleep(0)

    asyncio.run(run())


@pytest.mark.timeout(60)
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
