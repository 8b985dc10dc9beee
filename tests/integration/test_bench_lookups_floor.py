"""``bench.lookups.BareSockets``: the floor ``bench lookups`` sets under the client libraries.

Against the machine's real Redis, compared with redis-py's own answers: a floor that read a
reply short, mixed up two replies on one connection or opened a connection per call would
print a latency no client could ever reach, or one no better than the client's.
"""

from __future__ import annotations

import asyncio

import hiredis
import pytest
import redis
from redis.connection import parse_url

from bench.lookups import BareSockets


def test_command_is_resp_with_lengths_in_bytes() -> None:
    assert BareSockets.command("HMGET", "d:{é}", "k") == b"*3\r\n$5\r\nHMGET\r\n$6\r\nd:{\xc3\xa9}\r\n$1\r\nk\r\n"


def test_only_a_plain_url_without_credentials_is_supported() -> None:
    assert BareSockets.supports("redis://127.0.0.1:6379/0")
    assert not BareSockets.supports("rediss://127.0.0.1:6380/0")
    assert not BareSockets.supports("redis://sluice:secret@127.0.0.1:6379/0")
    assert not BareSockets.supports("redis://:secret@127.0.0.1:6379/0")


def test_answers_as_redis_py_does_and_reuses_its_connections(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    big = "x" * 200_000  # more than one read of the socket
    client.hset(f"{redis_prefix}a", mapping={"d": big, "k": "é"})
    client.hset(f"{redis_prefix}b", mapping={"d": "2"})
    client.set(f"{redis_prefix}s", "not a hash")
    floor = BareSockets(redis_url)

    async def run() -> None:
        try:
            for key in ("a", "b", "missing"):
                got = await floor.hmget(f"{redis_prefix}{key}", "d", "k")
                assert got == client.hmget(f"{redis_prefix}{key}", "d", "k"), key
            assert floor.opened == 1  # one call at a time: one connection
            answers = await asyncio.gather(*(floor.hmget(f"{redis_prefix}{key}", "d") for key in "ab" * 8))
            assert answers == [[big.encode()], [b"2"]] * 8
            assert 1 < floor.opened <= 16
            with pytest.raises(hiredis.ReplyError, match="WRONGTYPE"):
                await floor.hmget(f"{redis_prefix}s", "d")
            assert await floor.hmget(f"{redis_prefix}b", "d") == [b"2"]  # the connection after an error reply
        finally:
            await floor.close()

    try:
        asyncio.run(run())
    finally:
        client.close()


def test_reads_the_database_of_its_url(redis_url: str, redis_prefix: str) -> None:
    options = parse_url(redis_url)
    db = 3 if int(options.get("db", 0)) != 3 else 4
    url = f"redis://{options['host']}:{options['port']}/{db}"
    other = redis.Redis.from_url(url)
    default = redis.Redis.from_url(redis_url)
    key = f"{redis_prefix}db"
    other.hset(key, "d", "there")
    default.hset(key, "d", "here")
    floor = BareSockets(url)

    async def run() -> list[bytes | None]:
        try:
            return await floor.hmget(key, "d")
        finally:
            await floor.close()

    try:
        assert asyncio.run(run()) == [b"there"]
    finally:
        other.delete(key)
        other.close()
        default.close()
