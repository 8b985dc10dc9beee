"""Partition and clustering keys: composite encoding, splitting and sort keys.

A partition key is stored as the bytes the driver hashes for routing
(``murmur3.routing_key``): the value itself for one column, CompositeType
(``[2-byte length][bytes][0x00]`` per component) for several. Clustering keys
use the same encoding. Sort keys are tuples of ``CqlType.compare_key`` results,
with descending columns wrapped in :class:`Desc`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .errors import Invalid
from .murmur3 import routing_key
from .schema import Column
from .types import CompareKey

_H = struct.Struct(">H")


def join_key(components: list[bytes]) -> bytes:
    return routing_key(components)


MAX_KEY_LENGTH = 0xFFFF


def partition_key(components: list[bytes]) -> bytes:
    """A partition key from its components, refused as Cassandra's QueryProcessor.validateKey refuses it (for every
    partition key a write or a SELECT names): empty, or longer than 65535 bytes serialized (CompositeType for
    several columns, where the length counts each component's 2-byte length and end byte)."""
    if len(components) == 1:
        length = len(components[0])
        if length == 0:
            raise Invalid("Key may not be empty")
    else:
        length = sum(3 + len(c) for c in components)
    if length > MAX_KEY_LENGTH:
        raise Invalid(f"Key length of {length} is longer than maximum of {MAX_KEY_LENGTH}")
    return routing_key(components)


def split_key(data: bytes, n: int) -> list[bytes]:
    if n == 1:
        return [data]
    out: list[bytes] = []
    pos = 0
    for _ in range(n):
        (length,) = _H.unpack_from(data, pos)
        out.append(data[pos + 2:pos + 2 + length])
        pos += 3 + length
    return out


class Desc:
    """Inverts the order of a compare key (for WITH CLUSTERING ORDER BY (c DESC))."""

    __slots__ = ("k",)

    def __init__(self, k: CompareKey) -> None:
        self.k = k

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Desc) and self.k == other.k

    def __lt__(self, other: Any) -> bool:
        if isinstance(other, Desc):
            return other.k < self.k
        return NotImplemented

    def __gt__(self, other: Any) -> bool:
        if isinstance(other, Desc):
            return self.k < other.k
        return NotImplemented

    def __le__(self, other: Any) -> bool:
        if isinstance(other, Desc):
            return other.k <= self.k
        return NotImplemented

    def __ge__(self, other: Any) -> bool:
        if isinstance(other, Desc):
            return self.k <= other.k
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.k)


class _Top:
    """Greater than every compare key: closes a prefix range."""

    def __lt__(self, other: Any) -> bool:
        return False

    def __gt__(self, other: Any) -> bool:
        return other is not self

    def __le__(self, other: Any) -> bool:
        return other is self

    def __ge__(self, other: Any) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return other is self

    __hash__ = object.__hash__


TOP = _Top()


def component_key(col: Column, value: bytes) -> CompareKey:
    k = col.type.compare_key(value)
    return Desc(k) if col.reversed else k


def make_sort_key(clustering: list[Column]) -> Callable[[bytes], tuple[Any, ...]] | None:
    """The sort key function of a table's clustering keys (None without clustering columns)."""
    if not clustering:
        return None
    n = len(clustering)
    if n == 1:
        col = clustering[0]
        compare = col.type.compare_key
        if col.reversed:
            return lambda ck: (Desc(compare(ck)),)
        return lambda ck: (compare(ck),)

    def sort_key(ck: bytes) -> tuple[Any, ...]:
        return tuple(component_key(c, v) for c, v in zip(clustering, split_key(ck, n), strict=True))

    return sort_key


# Types whose comparator tells two values apart exactly when their encodings differ. The others have several
# encodings of one value: decimal (1.0 and 1.00: BigDecimal.compareTo), varint (redundant sign bytes), float and
# double (NaN payloads: Float.compare), boolean (any non-zero byte is true), and collections and tuples of them.
_BYTE_KEYED = frozenset({"ascii", "text", "blob", "inet", "uuid", "timeuuid", "timestamp", "date", "time", "int",
                         "bigint", "smallint", "tinyint"})


def make_row_id(clustering: list[Column]) -> Callable[[bytes], tuple[Any, ...]] | None:
    """What tells a table's rows apart within a partition, as Cassandra's clustering comparator does: None when the
    clustering bytes do (the usual case, and the fast one), else the sort key, so that values the comparator holds
    equal (``1.0`` and ``1.00``) are one row. Partition keys are compared by their bytes in Cassandra
    (``DecoratedKey``, after the token of those bytes), so they need nothing of the kind."""
    if all(c.type.kind in _BYTE_KEYED for c in clustering):
        return None
    return make_sort_key(clustering)
