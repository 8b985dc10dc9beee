"""Element-level updates of collections, on their serialized bytes.

Non-frozen collections are stored whole, as one cell (see docs): ``m[k] = v``,
``s = s + {...}``, ``l = l + [...]``, ``l = [...] + l`` and removals decode the
current cell, change it and store it re-encoded with the write's timestamp.
Set elements and map keys are kept sorted by the element type's comparator, as
Cassandra returns them.
"""

from __future__ import annotations

import struct

from .errors import Invalid
from .types import CqlType

_I = struct.Struct(">i")


def split_elements(data: bytes | None) -> list[bytes]:
    if not data:
        return []
    (n,) = _I.unpack_from(data, 0)
    pos, out = 4, []
    for _ in range(n):
        (length,) = _I.unpack_from(data, pos)
        out.append(data[pos + 4:pos + 4 + length])
        pos += 4 + length
    return out


def split_map(data: bytes | None) -> list[tuple[bytes, bytes]]:
    flat = []
    if data:
        (n,) = _I.unpack_from(data, 0)
        pos = 4
        for _ in range(2 * n):
            (length,) = _I.unpack_from(data, pos)
            flat.append(data[pos + 4:pos + 4 + length])
            pos += 4 + length
    return list(zip(flat[0::2], flat[1::2], strict=True))


def join_elements(items: list[bytes]) -> bytes | None:
    if not items:
        return None  # an empty non-frozen collection is null in CQL
    return _I.pack(len(items)) + b"".join(_I.pack(len(i)) + i for i in items)


def join_map(pairs: list[tuple[bytes, bytes]]) -> bytes | None:
    if not pairs:
        return None
    return _I.pack(len(pairs)) + b"".join(_I.pack(len(k)) + k + _I.pack(len(v)) + v for k, v in pairs)


def _sorted_unique(items: list[bytes], etype: CqlType) -> list[bytes]:
    seen: dict[bytes, None] = dict.fromkeys(items)
    return sorted(seen, key=etype.compare_key)


def normalize(ctype: CqlType, data: bytes | None) -> bytes | None:
    """A whole collection value as stored: sets/maps sorted and de-duplicated, empty -> null."""
    if data is None or not ctype.is_collection or ctype.frozen:
        return data
    if ctype.kind == "list":
        return join_elements(split_elements(data))
    if ctype.kind == "set":
        return join_elements(_sorted_unique(split_elements(data), ctype.params[0]))
    merged = dict(split_map(data))
    return join_map(sorted(merged.items(), key=lambda kv: ctype.params[0].compare_key(kv[0])))


def add(ctype: CqlType, current: bytes | None, operand: bytes | None, prepend: bool = False) -> bytes | None:
    if not ctype.is_collection or ctype.frozen:
        raise Invalid(f"Invalid operation (+) for non-collection column of type {ctype.cql()} "
                      "(counters are not supported by this emulator)")
    if operand is None:
        return current
    if ctype.kind == "list":
        old, new = split_elements(current), split_elements(operand)
        return join_elements(new + old if prepend else old + new)
    if prepend:
        raise Invalid(f"Invalid operation (prepend) for {ctype.cql()}")
    if ctype.kind == "set":
        return join_elements(_sorted_unique(split_elements(current) + split_elements(operand), ctype.params[0]))
    merged = dict(split_map(current))
    merged.update(split_map(operand))
    return join_map(sorted(merged.items(), key=lambda kv: ctype.params[0].compare_key(kv[0])))


def remove(ctype: CqlType, current: bytes | None, operand: bytes | None) -> bytes | None:
    if not ctype.is_collection or ctype.frozen:
        raise Invalid(f"Invalid operation (-) for non-collection column of type {ctype.cql()} "
                      "(counters are not supported by this emulator)")
    if operand is None or current is None:
        return current
    drop = set(split_elements(operand))
    if ctype.kind == "map":
        return join_map([(k, v) for k, v in split_map(current) if k not in drop])
    return join_elements([e for e in split_elements(current) if e not in drop])


def set_indexes(current: bytes | None, changes: list[tuple[bytes, bytes | None]],
                what: str = "set an element on") -> bytes | None:
    """A list with the elements at some of its indexes replaced, or removed where the new value is None. Every
    index is one of ``current``, as Cassandra reads the indexes of one statement (Lists.SetterByIndex and
    Lists.DiscarderByIndex against the row as it was), so ``l[0] = null, l[1] = 'x'`` sets the second element."""
    if current is None:  # as Cassandra 4, which reads an empty list as null
        raise Invalid(f"Attempted to {what} a list which is null")
    items = split_elements(current)
    new: dict[int, bytes | None] = {}
    for key, value in changes:
        index = int.from_bytes(key, "big", signed=True)
        if not 0 <= index < len(items):
            raise Invalid(f"List index {index} out of bound, list has size {len(items)}")
        new[index] = value
    kept = [new.get(i, item) for i, item in enumerate(items)]
    return join_elements([item for item in kept if item is not None])


def set_element(ctype: CqlType, current: bytes | None, key: bytes, value: bytes | None) -> bytes | None:
    if ctype.kind == "map":
        merged = dict(split_map(current))
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
        return join_map(sorted(merged.items(), key=lambda kv: ctype.params[0].compare_key(kv[0])))
    if ctype.kind == "list":
        return set_indexes(current, [(key, value)])
    if ctype.kind == "set" and value is None:
        return join_elements([e for e in split_elements(current) if e != key])
    raise Invalid(f"Invalid element operation for column of type {ctype.cql()}")
