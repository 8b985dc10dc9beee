"""Cassandra's Murmur3Partitioner token, in pure Python.

The token decides which node owns a partition; the driver computes the same token
from the routing key to pick a coordinator, and ``token(pk)`` in CQL exposes it, so
it must match Cassandra bit for bit, including two quirks of Cassandra's port of
MurmurHash3 (x64, 128-bit, seed 0):

* in the tail (the last ``len % 16`` bytes) each byte is read as a *signed* Java
  byte and sign-extended to 64 bits before it is shifted into place; a byte
  >= 0x80 therefore also flips every higher bit of the lane (the 16-byte blocks
  read bytes unsigned, as the reference algorithm does);
* the token is the first 64-bit half as a signed long, and ``Long.MIN_VALUE`` is
  mapped to ``Long.MAX_VALUE`` (``Murmur3Partitioner.normalize``) because MIN is
  reserved as the ring's minimum token.
"""

from __future__ import annotations

import struct

__all__ = ["murmur3_token", "murmur3_token_py", "routing_key"]

_MASK = 0xFFFF_FFFF_FFFF_FFFF
_C1 = 0x87C3_7B91_1142_53D5
_C2 = 0x4CF5_AD43_2745_937F
_MIN_LONG = -(1 << 63)
_MAX_LONG = (1 << 63) - 1
_BLOCK = struct.Struct("<QQ")
_LEN = struct.Struct(">H")


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51_AFD7_ED55_8CCD) & _MASK
    k ^= k >> 33
    k = (k * 0xC4CE_B9FE_1A85_EC53) & _MASK
    k ^= k >> 33
    return k


def _tail_lane(tail: bytes) -> int:
    """XOR of the tail bytes of one 8-byte lane, each sign-extended like a Java byte."""
    k = 0
    for i, b in enumerate(tail):
        if b & 0x80:
            k ^= ((b - 256) << (8 * i)) & _MASK
        else:
            k ^= b << (8 * i)
    return k


def murmur3_token_py(key: bytes) -> int:
    """The Murmur3Partitioner token of a serialized partition key (see :func:`routing_key`), in pure Python."""
    length = len(key)
    h1 = h2 = 0
    nblocks = length >> 4
    unpack = _BLOCK.unpack_from
    for i in range(nblocks):
        k1, k2 = unpack(key, i << 4)
        k1 = (k1 * _C1) & _MASK
        k1 = ((k1 << 31) | (k1 >> 33)) & _MASK
        h1 ^= (k1 * _C2) & _MASK
        h1 = ((h1 << 27) | (h1 >> 37)) & _MASK
        h1 = (((h1 + h2) * 5) + 0x52DC_E729) & _MASK
        k2 = (k2 * _C2) & _MASK
        k2 = ((k2 << 33) | (k2 >> 31)) & _MASK
        h2 ^= (k2 * _C1) & _MASK
        h2 = ((h2 << 31) | (h2 >> 33)) & _MASK
        h2 = (((h2 + h1) * 5) + 0x3849_5AB5) & _MASK

    rest = length & 15
    if rest:
        tail = key[nblocks << 4 :]
        if rest > 8:
            k2 = (_tail_lane(tail[8:]) * _C2) & _MASK
            k2 = ((k2 << 33) | (k2 >> 31)) & _MASK
            h2 ^= (k2 * _C1) & _MASK
        k1 = (_tail_lane(tail[:8]) * _C1) & _MASK
        k1 = ((k1 << 31) | (k1 >> 33)) & _MASK
        h1 ^= (k1 * _C2) & _MASK

    h1 ^= length
    h2 ^= length
    h1 = (h1 + h2) & _MASK
    h2 = (h2 + h1) & _MASK
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 = (h1 + h2) & _MASK
    token = h1 - (1 << 64) if h1 >> 63 else h1
    return _MAX_LONG if token == _MIN_LONG else token


try:  # the driver's C extension computes the same hash ~20x faster; the tests hold both to Cassandra's values
    from cassandra.cmurmur3 import murmur3 as _c_murmur3
except ImportError:  # pragma: no cover - a driver installed without its extensions
    _c_murmur3 = None


def murmur3_token(key: bytes) -> int:
    """The Murmur3Partitioner token of a serialized partition key (see :func:`routing_key`)."""
    if _c_murmur3 is None:
        return murmur3_token_py(key)
    token = _c_murmur3(key)
    return _MAX_LONG if token == _MIN_LONG else token


def routing_key(components: list[bytes]) -> bytes:
    """The bytes the partitioner hashes for a partition key made of ``components``.

    One column: the serialized value itself. Several columns: Cassandra's
    CompositeType, each component as ``[2-byte big-endian length][bytes][0x00]``.
    A component longer than 65535 bytes cannot be encoded and raises ValueError.
    """
    if len(components) == 1:
        return bytes(components[0])
    parts: list[bytes] = []
    for component in components:
        if len(component) > 0xFFFF:
            raise ValueError(f"partition key component of {len(component)} bytes exceeds the 65535-byte limit")
        parts.append(_LEN.pack(len(component)))
        parts.append(bytes(component))
        parts.append(b"\x00")
    return b"".join(parts)
