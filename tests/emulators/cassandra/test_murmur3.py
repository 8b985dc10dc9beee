"""Our Murmur3Partitioner token against the driver's (the driver routes with it, so they must agree)."""

from __future__ import annotations

import pytest
from cassandra.metadata import Murmur3Token
from cassandra.murmur3 import murmur3
from hypothesis import given, settings
from hypothesis import strategies as st

from emulators.cassandra.murmur3 import murmur3_token, murmur3_token_py, routing_key

MAX_LONG = (1 << 63) - 1


@pytest.mark.parametrize("length", range(101))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_token_matches_driver_for_every_length(length: int, data: st.DataObject) -> None:
    # Every tail length 0..15 and several block counts; bytes >= 0x80 exercise the signed-byte quirk.
    key = data.draw(st.binary(min_size=length, max_size=length))
    assert murmur3_token_py(key) == murmur3_token(key) == murmur3(key)
    assert murmur3_token_py(key) == Murmur3Token.hash_fn(key)


@pytest.mark.parametrize("length", range(1, 16))
def test_high_bytes_in_tail(length: int) -> None:
    key = b"\xff" * length
    assert murmur3_token_py(key) == murmur3_token(key) == murmur3(key)
    key = bytes(range(0x80, 0x80 + 16 + length))
    assert murmur3_token_py(key) == murmur3_token(key) == murmur3(key)


def test_known_tokens() -> None:
    # int 1 and text 'a' as Cassandra reports token() for them.
    for token in (murmur3_token, murmur3_token_py):
        assert token(b"\x00\x00\x00\x01") == -4069959284402364209
        assert token(b"") == 0
    assert -(1 << 63) < murmur3_token(b"x" * 40) <= MAX_LONG


def test_routing_key_single_and_composite() -> None:
    assert routing_key([b"\x00\x00\x00\x01"]) == b"\x00\x00\x00\x01"
    assert routing_key([b"ab", b""]) == b"\x00\x02ab\x00\x00\x00\x00"
    with pytest.raises(ValueError, match="65535"):
        routing_key([b"a", b"x" * 70000])


def test_routing_key_matches_driver_composite() -> None:
    # The driver builds composite routing keys in BoundStatement.routing_key.
    from cassandra.query import BoundStatement

    parts = [b"\x00\x00\x00\x07", "deviceé".encode()]
    expected = b"".join(BoundStatement._key_parts_packed(None, parts))
    assert routing_key(parts) == expected
