"""CQL value types of the native protocol v4: wire codecs, ordering, literals.

Byte formats follow ``native_protocol_v4.spec`` section 6; the ``[option]`` type
encoding follows 4.2.5.2. Inside collections and tuples (protocol v4) counts and
lengths are 4-byte signed ints; a tuple component of length -1 is null, while
collections may not contain nulls (Cassandra refuses them too).

Decisions worth knowing (all deliberate, each raises a clear error rather than
guessing):

* Python values follow the driver: ``date`` takes ``datetime.date`` or an int
  that is the *raw* wire value (days + 2**31, as the driver and CQL integer
  literals do); ``timestamp`` takes an aware or naive (= UTC) ``datetime``, a
  ``date`` (midnight UTC) or int/float milliseconds, truncating sub-millisecond
  parts toward zero exactly as the driver does.
* ``deserialize`` returns: ``datetime`` (naive, UTC) for timestamp, or the int
  milliseconds when outside ``datetime``'s range; ``date`` for date, or the raw
  int when outside 1..9999; int nanoseconds for ``time`` (``datetime.time``
  cannot hold nanoseconds); ``str`` for inet (as the driver); ``frozenset`` for
  a set and ``dict`` for a map when the elements/keys deserialize to hashable
  values, else a ``list`` / list of pairs in stored order.
* ``serialize`` of a set or map writes elements in Cassandra's order (sorted by
  the element/key comparator, duplicates dropped) because that is how Cassandra
  stores and returns them; :meth:`CqlType.canonical` does the same for bytes a
  client bound.
* Empty (zero-length) values are accepted for text, ascii, blob only; Cassandra
  also allows "empty" ints etc., the emulator refuses them by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import _typecodecs as codecs
from ._typecodecs import CompareKey, InvalidValue, UnsupportedType
from ._typeliterals import MapLiteral, SetLiteral, TupleLiteral, literal_to_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "CompareKey",
    "CqlType",
    "InvalidValue",
    "MapLiteral",
    "SetLiteral",
    "TupleLiteral",
    "UnsupportedType",
    "parse_type",
    "type_from_option",
]

SCALAR_KINDS = frozenset(codecs.SCALARS)
COLLECTION_KINDS = frozenset({"list", "set", "map"})
_ARITY = {"list": 1, "set": 1, "map": 2}
_ALIASES = {"varchar": "text"}
_UNSUPPORTED = frozenset({"counter", "duration"})

# [option] ids, native_protocol_v4.spec 4.2.5.2
_OPTION_IDS: dict[str, int] = {
    "ascii": 0x0001, "bigint": 0x0002, "blob": 0x0003, "boolean": 0x0004, "decimal": 0x0006,
    "double": 0x0007, "float": 0x0008, "int": 0x0009, "timestamp": 0x000B, "uuid": 0x000C,
    "text": 0x000D, "varint": 0x000E, "timeuuid": 0x000F, "inet": 0x0010, "date": 0x0011,
    "time": 0x0012, "smallint": 0x0013, "tinyint": 0x0014,
    "list": 0x0020, "map": 0x0021, "set": 0x0022, "tuple": 0x0031,
}  # fmt: skip
_KINDS_BY_ID = {v: k for k, v in _OPTION_IDS.items()}
_KINDS_BY_ID[0x000A] = "text"  # "Text" of protocol v1/v2, same encoding as varchar
_UNSUPPORTED_IDS = {0x0000: "custom", 0x0005: "counter", 0x0015: "duration", 0x0030: "user-defined type"}


@dataclass(frozen=True)
class CqlType:
    """A CQL type. Construct with :func:`parse_type`, :func:`type_from_option` or directly.

    Constructing directly normalises like Cassandra: ``varchar`` is ``text``, a
    tuple is always frozen, and collections nested in a frozen collection or a
    tuple are frozen too. A non-frozen collection nested inside a collection is
    frozen silently here (the planner builds such types for ``IN``); only
    :func:`parse_type` refuses it, as CQL DDL does.
    """

    kind: str
    params: tuple[CqlType, ...] = ()
    frozen: bool = False
    _codec: codecs.Codec = field(init=False, repr=False, compare=False, hash=False)
    _cql: str = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        kind = _ALIASES.get(self.kind, self.kind)
        if kind in _UNSUPPORTED:
            raise UnsupportedType(f"the CQL type {kind} is not supported by this emulator")
        if kind not in SCALAR_KINDS and kind not in COLLECTION_KINDS and kind != "tuple":
            raise UnsupportedType(f"unknown or unsupported CQL type {self.kind!r}")
        params = tuple(self.params)
        if kind in _ARITY and len(params) != _ARITY[kind]:
            raise InvalidValue(f"{kind} takes {_ARITY[kind]} type parameter(s), got {len(params)}")
        if kind == "tuple" and not params:
            raise InvalidValue("tuple needs at least one component type")
        if kind in SCALAR_KINDS and params:
            raise InvalidValue(f"{kind} takes no type parameters")
        if kind in SCALAR_KINDS and self.frozen:
            raise InvalidValue(f"frozen<> is only allowed on collections and tuples (got {kind})")
        frozen = self.frozen or kind == "tuple"
        if kind not in SCALAR_KINDS:
            params = tuple(p.freeze() for p in params)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "frozen", frozen)
        object.__setattr__(self, "_cql", _cql_text(kind, params, frozen))
        codec = codecs.build(kind, tuple(p._codec for p in params), self._cql)
        object.__setattr__(self, "_codec", codec)
        # Hot paths: bind the codec's functions on the instance, no extra call layer.
        object.__setattr__(self, "validate", codec.validate)
        object.__setattr__(self, "compare_key", codec.key)

    # -- description ---------------------------------------------------------
    def freeze(self) -> CqlType:
        """This type, frozen if it is a collection (scalars and tuples are returned as they are)."""
        if self.kind in COLLECTION_KINDS and not self.frozen:
            return CqlType(self.kind, self.params, True)
        return self

    def cql(self) -> str:
        """Canonical text as in ``system_schema.columns.type``, e.g. ``map<text, frozen<list<int>>>``."""
        return self._cql

    def option(self) -> bytes:
        """The ``[option]`` encoding (spec 4.2.5.2), nested for collections and tuples."""
        head = _OPTION_IDS[self.kind].to_bytes(2, "big")
        if self.kind == "tuple":
            head += len(self.params).to_bytes(2, "big")
        return head + b"".join(p.option() for p in self.params)

    @property
    def is_collection(self) -> bool:
        return self.kind in COLLECTION_KINDS

    def __str__(self) -> str:
        return self._cql

    # -- values --------------------------------------------------------------
    def serialize(self, value: object) -> bytes:
        """Python value -> wire bytes (without the ``[bytes]`` length). ``None`` is the caller's."""
        return self._codec.serialize(value)

    def deserialize(self, data: bytes) -> object:
        """Wire bytes -> Python value; :class:`InvalidValue` when the bytes are malformed."""
        return self._codec.deserialize(bytes(data))

    def validate(self, data: bytes) -> None:  # replaced per instance in __post_init__
        """Raise :class:`InvalidValue` unless ``data`` is well-formed for this type."""
        self._codec.validate(data)

    def compare_key(self, data: bytes) -> CompareKey:  # replaced per instance in __post_init__
        """A key whose Python ordering is Cassandra's comparator order for this type.

        ``data`` must be valid (see :meth:`validate`); keys of different types are
        not comparable with each other.
        """
        return self._codec.key(data)

    def canonical(self, data: bytes) -> bytes:
        """``data`` as Cassandra stores it: set elements and map entries sorted, duplicates dropped."""
        return self._codec.canonical(data)

    def from_literal(self, value: object) -> bytes:
        """A CQL literal as the parser produces it -> wire bytes, with CQL's coercions."""
        return literal_to_bytes(self, value)


def _cql_text(kind: str, params: tuple[CqlType, ...], frozen: bool) -> str:
    if not params:
        return kind
    text = f"{kind}<{', '.join(p.cql() for p in params)}>"
    return f"frozen<{text}>" if frozen else text


# -- CQL type syntax ------------------------------------------------------------
def parse_type(text: str) -> CqlType:
    """Parse CQL type syntax (case-insensitive, ``varchar`` = ``text``, ``frozen<...>``, nesting).

    As in CQL DDL a non-frozen collection inside a collection is an error;
    collections inside ``frozen<>`` or a tuple are frozen implicitly.
    """
    parser = _TypeParser(text)
    result = parser.parse_type(nested=False)
    parser.expect_end()
    return result


class _TypeParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def _fail(self, why: str) -> InvalidValue:
        return InvalidValue(f"invalid CQL type {self.text!r}: {why}")

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise self._fail("unexpected end")
        self.pos += 1
        return tok

    def expect(self, symbol: str) -> None:
        tok = self.take()
        if tok != symbol:
            raise self._fail(f"expected {symbol!r}, found {tok!r}")

    def expect_end(self) -> None:
        if self.peek() is not None:
            raise self._fail(f"unexpected {self.peek()!r}")

    def parse_type(self, *, nested: bool, inside_frozen: bool = False) -> CqlType:
        tok = self.take()
        if tok.startswith("'"):
            raise UnsupportedType(f"custom types are not supported by this emulator: {tok}")
        if tok.startswith('"'):
            raise UnsupportedType(f"user-defined types are not supported by this emulator: {tok}")
        if tok in "<>,":
            raise self._fail(f"expected a type name, found {tok!r}")
        name = _ALIASES.get(tok.lower(), tok.lower())
        if name == "frozen":
            self.expect("<")
            inner = self.parse_type(nested=False, inside_frozen=True)
            self.expect(">")
            if inner.kind in SCALAR_KINDS:
                raise self._fail(f"frozen<> is only allowed on collections and tuples (got {inner.kind})")
            return inner.freeze()
        if name in SCALAR_KINDS:
            return CqlType(name)
        if name in _UNSUPPORTED:
            raise UnsupportedType(f"the CQL type {name} is not supported by this emulator")
        if name in COLLECTION_KINDS or name == "tuple":
            if nested and name != "tuple" and not inside_frozen:
                raise self._fail(f"non-frozen collections are not allowed inside collections: use frozen<{name}<...>>")
            self.expect("<")
            params = [self.parse_type(nested=name != "tuple", inside_frozen=inside_frozen or name == "tuple")]
            while self.peek() == ",":
                self.take()
                params.append(self.parse_type(nested=name != "tuple", inside_frozen=inside_frozen or name == "tuple"))
            self.expect(">")
            if name in _ARITY and len(params) != _ARITY[name]:
                raise self._fail(f"{name} takes {_ARITY[name]} type parameter(s), got {len(params)}")
            return CqlType(name, tuple(params), inside_frozen)
        if name.isidentifier():
            raise UnsupportedType(f"unknown type {tok!r}: user-defined types are not supported by this emulator")
        raise self._fail(f"unexpected {tok!r}")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "<>,":
            tokens.append(ch)
            i += 1
        elif ch in "'\"":
            end = text.find(ch, i + 1)
            if end < 0:
                raise InvalidValue(f"invalid CQL type {text!r}: unterminated quote")
            tokens.append(text[i : end + 1])
            i = end + 1
        else:
            j = i
            while j < n and (text[j].isalnum() or text[j] in "_."):
                j += 1
            if j == i:
                raise InvalidValue(f"invalid CQL type {text!r}: unexpected character {ch!r}")
            tokens.append(text[i:j])
            i = j
    if not tokens:
        raise InvalidValue("invalid CQL type '': empty")
    return tokens


# -- [option] -------------------------------------------------------------------
def type_from_option(data: bytes, offset: int = 0) -> tuple[CqlType, int]:
    """Decode an ``[option]`` at ``offset``; returns the type and the offset after it.

    The encoding carries no frozen flag: a top-level collection comes back
    non-frozen, nested collections frozen (CQL requires it), tuples frozen.
    """
    if offset + 2 > len(data):
        raise InvalidValue(f"truncated [option] at offset {offset}")
    type_id = int.from_bytes(data[offset : offset + 2], "big")
    offset += 2
    if type_id in _UNSUPPORTED_IDS:
        raise UnsupportedType(f"the {_UNSUPPORTED_IDS[type_id]} type (option 0x{type_id:04x}) is not supported")
    kind = _KINDS_BY_ID.get(type_id)
    if kind is None:
        raise InvalidValue(f"unknown [option] type id 0x{type_id:04x}")
    if kind in SCALAR_KINDS:
        return CqlType(kind), offset
    if kind == "tuple":
        if offset + 2 > len(data):
            raise InvalidValue(f"truncated tuple [option] at offset {offset}")
        count = int.from_bytes(data[offset : offset + 2], "big")
        offset += 2
        if count == 0:
            raise InvalidValue("tuple [option] with no components")
    else:
        count = _ARITY[kind]
    params = []
    for _ in range(count):
        param, offset = type_from_option(data, offset)
        params.append(param)
    return CqlType(kind, tuple(params)), offset
