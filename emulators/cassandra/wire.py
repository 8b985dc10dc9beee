"""Native protocol v4 notations (spec section 3): a body reader and encoders.

Only the notations requests and responses of this server use are here. The
reader raises :class:`~emulators.cassandra.errors.ProtocolError` on a
truncated or malformed body instead of an ``IndexError`` deep in a handler.
"""

from __future__ import annotations

import builtins
import enum
import struct
from typing import Final, Protocol

from .errors import ProtocolError


class Unset(enum.Enum):
    """The type of :data:`UNSET` (a one-member enum, so that ``v is UNSET`` narrows a :data:`Value`)."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET
"""A bound value the client marked 'unset' ([value] length -2): leave the column alone."""

Value = bytes | Unset | None
"""A [value] (spec 3): its bytes, None for null or :data:`UNSET`; also what a term resolves to."""


class _IntStruct(Protocol):
    """A :class:`struct.Struct` of one integer (typeshed's ``unpack_from`` gives ``tuple[Any, ...]``)."""

    def unpack_from(self, buffer: bytes, offset: int = 0, /) -> tuple[int]: ...

    def pack(self, v: int, /) -> bytes: ...


_H: _IntStruct = struct.Struct(">H")
_h: _IntStruct = struct.Struct(">h")
_I: _IntStruct = struct.Struct(">i")
_Q: _IntStruct = struct.Struct(">q")
_HEADER = struct.Struct(">BBhBi")


class Reader:
    """Sequential reader of one frame body."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _need(self, n: int) -> int:
        pos = self.pos
        end = pos + n
        if n < 0 or end > len(self.data):
            raise ProtocolError(f"truncated message body: needed {n} bytes at offset {pos}, body has {len(self.data)}")
        self.pos = end
        return pos

    def byte(self) -> int:
        return self.data[self._need(1)]

    def short(self) -> int:
        return _H.unpack_from(self.data, self._need(2))[0]

    def int(self) -> int:
        return _I.unpack_from(self.data, self._need(4))[0]

    def long(self) -> builtins.int:  # builtins: the method int() above shadows the type in this class
        return _Q.unpack_from(self.data, self._need(8))[0]

    def string(self) -> str:
        n = self.short()
        raw = self.data[self._need(n):self.pos]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"[string] is not valid UTF-8: {exc}") from None

    def long_string(self) -> str:
        n = self.int()
        raw = self.data[self._need(n):self.pos]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"[long string] is not valid UTF-8: {exc}") from None

    def short_bytes(self) -> bytes:
        n = self.short()
        return bytes(self.data[self._need(n):self.pos])

    def bytes(self) -> bytes | None:
        n = self.int()
        if n < 0:
            return None
        return bytes(self.data[self._need(n):self.pos])

    def value(self) -> Value:
        """A [value]: bytes, None for null (-1) or :data:`UNSET` (-2)."""
        n = self.int()
        if n >= 0:
            return bytes(self.data[self._need(n):self.pos])
        if n == -1:
            return None
        if n == -2:
            return UNSET
        raise ProtocolError(f"invalid [value] length {n}")

    def string_list(self) -> list[str]:
        return [self.string() for _ in range(self.short())]

    def string_map(self) -> dict[str, str]:
        return {self.string(): self.string() for _ in range(self.short())}

    def remaining(self) -> builtins.int:
        return len(self.data) - self.pos


def short(n: int) -> bytes:
    return _H.pack(n)


def int_(n: int) -> bytes:
    return _I.pack(n)


def long(n: int) -> bytes:
    return _Q.pack(n)


def string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return _H.pack(len(raw)) + raw


def long_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return _I.pack(len(raw)) + raw


def bytes_(b: bytes | None) -> bytes:
    if b is None:
        return b"\xff\xff\xff\xff"
    return _I.pack(len(b)) + b


def short_bytes(b: bytes) -> bytes:
    return _H.pack(len(b)) + b


def string_list(items: list[str]) -> bytes:
    return _H.pack(len(items)) + b"".join(string(s) for s in items)


def string_multimap(m: dict[str, list[str]]) -> bytes:
    return _H.pack(len(m)) + b"".join(string(k) + string_list(v) for k, v in m.items())


def frame(stream: int, opcode: int, body: bytes, version: int = 0x84, flags: int = 0) -> bytes:
    """A response frame: header (version with the response bit, flags, stream, opcode, length) and body."""
    return _HEADER.pack(version, flags, stream, opcode, len(body)) + body


HEADER = _HEADER
