"""Codecs of list, set, map and tuple (protocol v4: 4-byte counts and lengths).

Comparator keys follow Cassandra's frozen-collection comparators: lists
element by element and then by size (``ListType.compareListOrSet``), sets the
same over their sorted, de-duplicated elements, maps entry by entry (key, then
value), tuples component by component with a null component before any value
and a shorter tuple before a longer one (``TupleType.compareCustom``). Python's
tuple ordering gives exactly that lexicographic behaviour.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from ._typecodecs import Codec, InvalidValue, bad_python, show

logger = logging.getLogger(__name__)

_I32 = struct.Struct(">i")
_NULL = _I32.pack(-1)
_SEQUENCES = (list, tuple, set, frozenset)


def split(cql: str, data: bytes, per_entry: int) -> list[bytes]:
    """The element byte strings of a serialized list/set (``per_entry=1``) or map (2, keys and values interleaved)."""
    size = len(data)
    if size < 4:
        raise InvalidValue(f"invalid {cql} value {show(data)}: missing the 4-byte element count")
    count = _I32.unpack_from(data)[0]
    if count < 0:
        raise InvalidValue(f"invalid {cql} value {show(data)}: negative element count {count}")
    pos = 4
    out: list[bytes] = []
    for _ in range(count * per_entry):
        if pos + 4 > size:
            raise InvalidValue(f"invalid {cql} value {show(data)}: truncated after {len(out)} of {count} elements")
        length = _I32.unpack_from(data, pos)[0]
        pos += 4
        if length < 0:
            raise InvalidValue(f"invalid {cql} value {show(data)}: null elements are not allowed in collections")
        end = pos + length
        if end > size:
            raise InvalidValue(f"invalid {cql} value {show(data)}: element of {length} bytes runs past the end")
        out.append(data[pos:end])
        pos = end
    if pos != size:
        raise InvalidValue(f"invalid {cql} value {show(data)}: {size - pos} trailing bytes after {count} elements")
    return out


def join(count: int, parts: list[bytes]) -> bytes:
    chunks = [_I32.pack(count)]
    for part in parts:
        chunks.append(_I32.pack(len(part)))
        chunks.append(part)
    return b"".join(chunks)


def _sorted_unique(parts: list[bytes], key: Callable[[bytes], Any]) -> list[bytes]:
    """Elements in comparator order, later duplicates (equal keys) dropped."""
    seen: dict[Any, bytes] = {}
    for part in parts:
        seen.setdefault(key(part), part)
    return [seen[k] for k in sorted(seen)]


def _element_bytes(cql: str, codec: Codec, value: object) -> bytes:
    if value is None:
        raise InvalidValue(f"invalid value for {cql}: null is not allowed inside a collection")
    return codec.serialize(value)


def _list_or_set(kind: str, inner: Codec, cql: str) -> Codec:
    is_set = kind == "set"

    def validate(data: bytes) -> None:
        for part in split(cql, data, 1):
            inner.validate(part)

    def canonical(data: bytes) -> bytes:
        parts = [inner.canonical(p) for p in split(cql, data, 1)]
        if is_set:
            parts = _sorted_unique(parts, inner.key)
        return join(len(parts), parts)

    def serialize(value: object) -> bytes:
        if not isinstance(value, _SEQUENCES if is_set else (list, tuple)):
            raise bad_python(cql, value, "a set, frozenset, list or tuple" if is_set else "a list or tuple")
        parts = [_element_bytes(cql, inner, v) for v in value]
        if is_set:
            parts = _sorted_unique(parts, inner.key)
        return join(len(parts), parts)

    if is_set:

        def key(data: bytes) -> Any:
            return tuple(sorted({inner.key(p) for p in split(cql, data, 1)}))

        def deserialize(data: bytes) -> object:
            validate(data)
            values = [inner.deserialize(p) for p in split(cql, data, 1)]
            return frozenset(values) if inner.hashable else values

    else:

        def key(data: bytes) -> Any:
            return tuple([inner.key(p) for p in split(cql, data, 1)])

        def deserialize(data: bytes) -> object:
            validate(data)
            return [inner.deserialize(p) for p in split(cql, data, 1)]

    return Codec(serialize, deserialize, validate, key, canonical, is_set and inner.hashable)


def _map(kcodec: Codec, vcodec: Codec, cql: str) -> Codec:
    def validate(data: bytes) -> None:
        parts = split(cql, data, 2)
        for i in range(0, len(parts), 2):
            kcodec.validate(parts[i])
            vcodec.validate(parts[i + 1])

    def _entries(parts: list[bytes]) -> list[tuple[bytes, bytes]]:
        """Entries sorted by key comparator; for equal keys the last one wins (like a map put)."""
        by_key: dict[Any, tuple[bytes, bytes]] = {}
        for i in range(0, len(parts), 2):
            by_key[kcodec.key(parts[i])] = (parts[i], parts[i + 1])
        return [by_key[k] for k in sorted(by_key)]

    def _join_entries(entries: list[tuple[bytes, bytes]]) -> bytes:
        return join(len(entries), [b for entry in entries for b in entry])

    def canonical(data: bytes) -> bytes:
        parts = split(cql, data, 2)
        parts = [kcodec.canonical(p) if i % 2 == 0 else vcodec.canonical(p) for i, p in enumerate(parts)]
        return _join_entries(_entries(parts))

    def serialize(value: object) -> bytes:
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list | tuple) and all(isinstance(i, tuple) and len(i) == 2 for i in value):
            items = list(value)
        else:
            raise bad_python(cql, value, "a dict or a sequence of (key, value) pairs")
        parts: list[bytes] = []
        for k, v in items:
            parts.append(_element_bytes(cql, kcodec, k))
            parts.append(_element_bytes(cql, vcodec, v))
        return _join_entries(_entries(parts))

    def key(data: bytes) -> Any:
        parts = split(cql, data, 2)
        by_key = {kcodec.key(parts[i]): vcodec.key(parts[i + 1]) for i in range(0, len(parts), 2)}
        return tuple(sorted(by_key.items()))

    def deserialize(data: bytes) -> object:
        validate(data)
        parts = split(cql, data, 2)
        pairs = [(kcodec.deserialize(parts[i]), vcodec.deserialize(parts[i + 1])) for i in range(0, len(parts), 2)]
        return dict(pairs) if kcodec.hashable else pairs

    return Codec(serialize, deserialize, validate, key, canonical, False)


def split_tuple(cql: str, data: bytes, arity: int) -> list[bytes | None]:
    """Components of a serialized tuple; None for a null component. Fewer than ``arity`` is allowed."""
    size = len(data)
    pos = 0
    out: list[bytes | None] = []
    while pos < size:
        if len(out) == arity:
            raise InvalidValue(f"invalid {cql} value {show(data)}: more than {arity} components")
        if pos + 4 > size:
            raise InvalidValue(f"invalid {cql} value {show(data)}: truncated component length")
        length = _I32.unpack_from(data, pos)[0]
        pos += 4
        if length < 0:
            out.append(None)
            continue
        end = pos + length
        if end > size:
            raise InvalidValue(f"invalid {cql} value {show(data)}: component of {length} bytes runs past the end")
        out.append(data[pos:end])
        pos = end
    return out


def _tuple(params: tuple[Codec, ...], cql: str) -> Codec:
    arity = len(params)

    def validate(data: bytes) -> None:
        for codec, part in zip(params, split_tuple(cql, data, arity), strict=False):
            if part is not None:
                codec.validate(part)

    def _build(parts: list[bytes | None]) -> bytes:
        return b"".join(_NULL if p is None else _I32.pack(len(p)) + p for p in parts)

    def serialize(value: object) -> bytes:
        if not isinstance(value, tuple | list):
            raise bad_python(cql, value, "a tuple")
        if len(value) > arity:
            raise InvalidValue(f"invalid value for {cql}: {value!r} has {len(value)} components, at most {arity}")
        return _build([None if v is None else c.serialize(v) for c, v in zip(params, value, strict=False)])

    def canonical(data: bytes) -> bytes:
        parts = split_tuple(cql, data, arity)
        return _build([None if p is None else c.canonical(p) for c, p in zip(params, parts, strict=False)])

    def key(data: bytes) -> Any:
        return tuple(
            [(0,) if p is None else (1, c.key(p)) for c, p in zip(params, split_tuple(cql, data, arity), strict=False)]
        )

    def deserialize(data: bytes) -> object:
        parts = split_tuple(cql, data, arity)
        values = [None if p is None else c.deserialize(p) for c, p in zip(params, parts, strict=False)]
        return tuple(values + [None] * (arity - len(values)))

    return Codec(serialize, deserialize, validate, key, canonical, all(p.hashable for p in params))


def collection_codec(kind: str, params: tuple[Codec, ...], cql: str) -> Codec:
    if kind in ("list", "set"):
        return _list_or_set(kind, params[0], cql)
    if kind == "map":
        return _map(params[0], params[1], cql)
    return _tuple(params, cql)
