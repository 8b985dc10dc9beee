"""``python -m sluice up`` against the machine's PostgreSQL and Redis (``--use-existing-services``): what ``--fresh``
deletes there. Those servers are shared with other stacks and applications, so ``--fresh`` must delete what this
stack uses and nothing else. Each test makes its own databases and keys, and deletes them."""

from __future__ import annotations

import types
import uuid
from collections.abc import Iterator
from typing import Any, cast

import psycopg
import pytest
import redis
from rich.console import Console

from sluice.commands.up import _forget
from sluice.localstack import LocalStack, StackOptions
from tests.fixtures.services import PG_ADMIN_DSN, create_database, drop_database


def existing_services(redis_url: str, **options: Any) -> StackOptions:
    """Options for a stack on the machine's services, at the address the tests reach them."""
    admin = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    return StackOptions(redis_url=redis_url, use_existing_services=True, postgres_host=str(admin["host"]),
                        postgres_port=int(admin.get("port") or 5432), **options)


def forget(options: StackOptions) -> None:
    """What ``up --fresh`` runs once the machine's services answer."""
    _forget(cast(LocalStack, types.SimpleNamespace(options=options)), Console(quiet=True))


def databases(*names: str) -> set[str]:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                                               (list(names),))}


@pytest.fixture
def database() -> Iterator[str]:
    name = create_database("sluice_up")
    try:
        yield name
    finally:
        drop_database(name)


def test_fresh_deletes_the_redis_keys_of_its_prefix_and_no_others(redis_url: str, database: str) -> None:
    """``--fresh`` promises to delete "the Redis keys under the prefix" (docs/local-stack.md). It scanned with
    ``MATCH <prefix>*``, the prefix read as a glob pattern, and a prefix the settings accept (only ``{`` and ``}``
    are refused) may hold glob characters: with ``--redis-prefix 'rv[1]:'`` it deleted another application's key
    ``rv1:...`` and kept the stack's own ``rv[1]:...``."""
    tag = uuid.uuid4().hex[:8]
    ours, theirs = f"up{tag}[1]:latest", f"up{tag}1:latest"
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(ours, "the stack's own")
        client.set(theirs, "another application's")
        forget(existing_services(redis_url, redis_prefix=f"up{tag}[1]:", database=database))
        assert client.get(theirs) == b"another application's", "a key outside the prefix was deleted"
        assert client.get(ours) is None, "the stack's own key under the prefix was kept"
    finally:
        client.delete(ours, theirs)
        client.close()
