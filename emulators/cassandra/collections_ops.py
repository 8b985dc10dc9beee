"""Element-level updates of collections, on their serialized bytes.

Non-frozen collections are stored whole, as one cell (see docs): ``m[k] = v``,
``s = s + {...}``, ``l = l + [...]``, ``l = [...] + l`` and removals decode the
current cell, change it and store it re-encoded with the write's timestamp.
Set elements and map keys are kept sorted by the element type's comparator, as
Cassandra returns them, and are told apart by that comparator too, never by their
bytes: decimal ``1.0`` and ``1.00`` are one map key (one cell path in Cassandra),
so ``m[1.0] = v`` replaces the entry ``1.00``, and ``m - {1.0}`` removes it.
"""

from __future__ import annotations

import struct

from .errors import Invalid
from .types import CompareKey, CqlType

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
    """Set elements in comparator order, of equal ones the first (as a set literal keeps it)."""
    seen: dict[CompareKey, bytes] = {}
    for item in items:
        seen.setdefault(etype.compare_key(item), item)
    return [seen[k] for k in sorted(seen)]


def _merged(etype: CqlType, older: list[bytes], newer: list[bytes]) -> list[bytes]:
    """The set elements of both in comparator order; of two equal by the comparator, the newer one (Cassandra
    reconciles two cells of one path by keeping the newer cell whole, its path bytes with it)."""
    by_key = {etype.compare_key(e): e for e in older}
    by_key.update((etype.compare_key(e), e) for e in newer)
    return [by_key[k] for k in sorted(by_key)]


def _merged_map(ktype: CqlType, older: list[tuple[bytes, bytes]],
                newer: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The entries of both in key comparator order; of two keys equal by the comparator, the newer entry, its
    key bytes and value (see :func:`_merged`)."""
    by_key = {ktype.compare_key(k): (k, v) for k, v in older}
    by_key.update((ktype.compare_key(k), (k, v)) for k, v in newer)
    return [by_key[k] for k in sorted(by_key)]


def normalize(ctype: CqlType, data: bytes | None) -> bytes | None:
    """A whole collection value as stored: sets/maps sorted and de-duplicated, empty -> null."""
    if data is None or not ctype.is_collection or ctype.frozen:
        return data
    if ctype.kind == "list":
        return join_elements(split_elements(data))
    if ctype.kind == "set":
        return join_elements(_sorted_unique(split_elements(data), ctype.params[0]))
    return join_map(_merged_map(ctype.params[0], [], split_map(data)))  # equal keys: the last, as a literal


def not_a_collection(kind: str, ctype: CqlType, name: str | None = None) -> Invalid:
    """The refusal of an append, prepend or removal (``kind``) on a column without elements to add or remove.

    A frozen collection is one value: Cassandra refuses it with "Invalid operation (fl = fl + [2]) for frozen
    collection column fl", which this message follows (the operand's text is gone after parsing, hence ``...``).
    A scalar's only ``+``/``-`` in Cassandra are a counter's, which this emulator does not support."""
    column = name or "?"
    sign = "-" if kind == "remove" else "+"
    if ctype.is_collection:
        op = f"{column} = ... + {column}" if kind == "prepend" else f"{column} = {column} {sign} ..."
        return Invalid(f"Invalid operation ({op}) for frozen collection column {column} of type {ctype.cql()}")
    return Invalid(f"Invalid operation ({sign}) for non-collection column {column} of type {ctype.cql()} "
                   "(counters are not supported by this emulator)")


def add(ctype: CqlType, current: bytes | None, operand: bytes | None, prepend: bool = False,
        name: str | None = None) -> bytes | None:
    if not ctype.is_collection or ctype.frozen:
        raise not_a_collection("prepend" if prepend else "add", ctype, name)
    if operand is None:
        return current
    if ctype.kind == "list":
        old, new = split_elements(current), split_elements(operand)
        return join_elements(new + old if prepend else old + new)
    if prepend:
        raise Invalid(f"Invalid operation (prepend) for {ctype.cql()}")
    if ctype.kind == "set":
        return join_elements(_merged(ctype.params[0], split_elements(current), split_elements(operand)))
    return join_map(_merged_map(ctype.params[0], split_map(current), split_map(operand)))


def remove(ctype: CqlType, current: bytes | None, operand: bytes | None, name: str | None = None) -> bytes | None:
    if not ctype.is_collection or ctype.frozen:
        raise not_a_collection("remove", ctype, name)
    if operand is None or current is None:
        return current
    if ctype.kind == "list":  # elements are values, not cell paths: removed where their bytes are equal, as
        values = set(split_elements(operand))  # Cassandra's Lists.Discarder (ByteBuffer.equals) does
        return join_elements([e for e in split_elements(current) if e not in values])
    key = ctype.params[0].compare_key
    paths = {key(e) for e in split_elements(operand)}
    if ctype.kind == "map":
        return join_map([(k, v) for k, v in split_map(current) if key(k) not in paths])
    return join_elements([e for e in split_elements(current) if key(e) not in paths])


def map_get(ktype: CqlType, data: bytes | None, key: bytes) -> bytes | None:
    """The value of the entry whose key equals ``key`` by the key type's comparator, None if there is none."""
    wanted = ktype.compare_key(key)
    return next((v for k, v in split_map(data) if ktype.compare_key(k) == wanted), None)


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
        if value is None:
            wanted = ctype.params[0].compare_key(key)
            return join_map([(k, v) for k, v in split_map(current) if ctype.params[0].compare_key(k) != wanted])
        return join_map(_merged_map(ctype.params[0], split_map(current), [(key, value)]))
    if ctype.kind == "list":
        return set_indexes(current, [(key, value)])
    if ctype.kind == "set" and value is None:
        if not key:  # an unset element's empty bytes (see write._UNSET_SET_ELEMENT), which not every type can key
            return join_elements([e for e in split_elements(current) if e])  # and only an empty element equals
        wanted = ctype.params[0].compare_key(key)
        return join_elements([e for e in split_elements(current) if ctype.params[0].compare_key(e) != wanted])
    raise Invalid(f"Invalid element operation for column of type {ctype.cql()}")
