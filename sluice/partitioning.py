"""The partition a partition key maps to, computed as Azure Event Hubs computes it.

The service hashes the key's UTF-8 bytes with Bob Jenkins' lookup3 (``hashlittle2``,
both seeds 0), folds the two 32-bit results into a signed 16-bit hash code
(``(short)(c ^ b)``) and picks partition ``Math.Abs(hashCode % partitionCount)``.
C#'s ``%`` keeps the sign of the dividend, so that is ``abs(hash_code) % partition_count``.
Microsoft's .NET, Java and JavaScript SDKs carry ports of that service code for their
buffered producers; the known values in ``tests/emulators/eventhubs/test_partitioning.py``
come from their tests.

The Python SDK (azure-eventhub 5.15.1) has its own copy for ``EventHubBufferedProducerClient``,
in ``azure/eventhub/_buffered_producer/_partition_resolver.py``, and it differs from the service
in two ways:

* it takes ``abs(hash_code % partition_count)`` with Python's floor modulo, so a key with a
  negative hash code can get another partition (``"alphabet"`` with 11 partitions: 7 there,
  4 in the service); this affects about a quarter of all keys with 4 partitions and almost
  half with 32 (with 1 or 2 partitions the two always agree);
* it hashes the key's code points, not its UTF-8 bytes, so non-ASCII keys get other hash codes.

The load generator uses it to send each device where the service would put its key.
The Event Hubs emulator has its own copy (``emulators/eventhubs/partitioning.py``): it
installs alone, and the product never imports the emulators.
``tests/unit/test_partitioning.py`` keeps the two equal.

The hash is implemented here rather than imported from the SDK: the SDK's function is
private and does not match the service.
"""

from __future__ import annotations

import struct
from functools import lru_cache

_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<3I")


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _MASK) ^ _rot(c, 4)
    c = (c + b) & _MASK
    b = ((b - a) & _MASK) ^ _rot(a, 6)
    a = (a + c) & _MASK
    c = ((c - b) & _MASK) ^ _rot(b, 8)
    b = (b + a) & _MASK
    a = ((a - c) & _MASK) ^ _rot(c, 16)
    c = (c + b) & _MASK
    b = ((b - a) & _MASK) ^ _rot(a, 19)
    a = (a + c) & _MASK
    c = ((c - b) & _MASK) ^ _rot(b, 4)
    b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int]:
    c = ((c ^ b) - _rot(b, 14)) & _MASK
    a = ((a ^ c) - _rot(c, 11)) & _MASK
    b = ((b ^ a) - _rot(a, 25)) & _MASK
    c = ((c ^ b) - _rot(b, 16)) & _MASK
    a = ((a ^ c) - _rot(c, 4)) & _MASK
    b = ((b ^ a) - _rot(a, 14)) & _MASK
    c = ((c ^ b) - _rot(b, 24)) & _MASK
    return c, b


def lookup3(data: bytes, seed1: int = 0, seed2: int = 0) -> tuple[int, int]:
    """Jenkins' ``hashlittle2`` of ``data``: its two 32-bit hashes, primary (``c``) first."""
    a = b = c = (0xDEADBEEF + len(data) + seed1) & _MASK
    c = (c + seed2) & _MASK
    pos, end = 0, len(data)
    while end - pos > 12:  # the last 1 to 12 bytes are left for the final mix
        x, y, z = _WORDS.unpack_from(data, pos)
        a, b, c = _mix((a + x) & _MASK, (b + y) & _MASK, (c + z) & _MASK)
        pos += 12
    if pos == end:  # empty data: no final mix
        return c, b
    x, y, z = _WORDS.unpack(data[pos:].ljust(12, b"\0"))  # missing tail bytes count as zeros
    return _final((a + x) & _MASK, (b + y) & _MASK, (c + z) & _MASK)


@lru_cache(maxsize=4096)
def hash_code(key: str) -> int:
    """The service's signed 16-bit hash code of a partition key (0 for the empty key)."""
    c, b = lookup3(key.encode("utf-8"))
    folded = (c ^ b) & 0xFFFF
    return folded - 0x10000 if folded & 0x8000 else folded


def partition_for_key(key: str, partition_count: int) -> int:
    """The index of the partition ``key`` maps to: ``abs(hash_code(key)) % partition_count``."""
    return abs(hash_code(key)) % partition_count
