"""The native protocol v4 server: framing, handshake, authentication and dispatch.

One :class:`CqlConnection` per client connection (an asyncio Protocol). Frames
are parsed as they arrive and each request runs to completion synchronously on
the event loop (the engine never blocks), so many stream ids can be in flight
per connection and their responses are written as soon as each is ready; the
responses of one read burst leave in one write.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import results, wire
from . import statements as st
from .engine import Engine, Options, Session
from .errors import CONSISTENCY_NAMES, BadCredentials, CqlError, Invalid, ProtocolError, ServerError
from .system_tables import CQL_VERSION

if TYPE_CHECKING:
    from .batch import Child
    from .schema import Table

logger = logging.getLogger(__name__)

OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE, OP_OPTIONS, OP_SUPPORTED = 0x00, 0x01, 0x02, 0x03, 0x05, 0x06
OP_QUERY, OP_RESULT, OP_PREPARE, OP_EXECUTE, OP_REGISTER, OP_EVENT = 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C
OP_BATCH, OP_AUTH_CHALLENGE, OP_AUTH_RESPONSE, OP_AUTH_SUCCESS = 0x0D, 0x0E, 0x0F, 0x10
AUTHENTICATOR = "org.apache.cassandra.auth.PasswordAuthenticator"
EVENT_TYPES = ("TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE")
MAX_CONSISTENCY = len(CONSISTENCY_NAMES) - 1  # LOCAL_ONE, the highest [consistency] code
MAX_FRAME = 256 * 1024 * 1024
_HEADER = struct.Struct(">BBhBi")
_HEADER_V1_V2 = struct.Struct(">BBbBi")  # protocol v1/v2: a one-byte stream id, so an 8-byte header
_TRACED = frozenset((0x07, 0x09, 0x0A, 0x0D))  # QUERY, PREPARE, EXECUTE, BATCH: the requests that can be traced
_OPNAMES = {OP_STARTUP: "STARTUP", OP_OPTIONS: "OPTIONS", OP_QUERY: "QUERY", OP_PREPARE: "PREPARE",
            OP_EXECUTE: "EXECUTE", OP_REGISTER: "REGISTER", OP_BATCH: "BATCH", OP_AUTH_RESPONSE: "AUTH_RESPONSE"}


@dataclass(frozen=True)
class Credentials:
    """The one user; with ``password_file`` the password is read from it at every log-in (rotation tests)."""

    username: str
    password: str | None = None
    password_file: str | None = None

    def accept(self, username: bytes, password: bytes) -> bool:
        expected = self.password
        if self.password_file is not None:
            with open(self.password_file, encoding="utf-8") as f:
                expected = f.read().strip()
        return username == self.username.encode() and expected is not None and password == expected.encode()


def read_consistency(r: wire.Reader) -> int:
    """A [consistency] (spec section 3); a code outside the spec is a protocol error, as in Cassandra."""
    consistency = r.short()
    if consistency > MAX_CONSISTENCY:
        raise ProtocolError(f"Unknown code {consistency} for a consistency level")
    return consistency


def read_options(r: wire.Reader) -> tuple[int, Options]:
    """[consistency][flags] and the optional parts of QUERY/EXECUTE parameters (spec 4.1.4)."""
    consistency = read_consistency(r)
    flags = r.byte()
    opts = Options(consistency=consistency)
    if flags & 0x01:
        n = r.short()
        if flags & 0x40:
            names: list[str] = []
            values: list[wire.Value] = []
            for _ in range(n):
                names.append(r.string())
                values.append(r.value())
            opts.names, opts.values = names, values
        else:
            opts.values = [r.value() for _ in range(n)]
    opts.skip_metadata = bool(flags & 0x02)
    if flags & 0x04:
        opts.page_size = r.int()
    if flags & 0x08:
        opts.paging_state = r.bytes()
    if flags & 0x10:
        opts.serial_consistency = read_consistency(r)
    if flags & 0x20:
        opts.timestamp = r.long()
    return consistency, opts


class CqlConnection(asyncio.Protocol):
    def __init__(self, engine: Engine, credentials: Credentials | None) -> None:
        self.engine = engine
        self.credentials = credentials
        self.session = Session()
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.started = False
        self.authenticated = credentials is None
        self.peer = "?"

    # -- asyncio ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        logger.debug("connection from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._on_schema_change in self.engine.schema_listeners:
            self.engine.schema_listeners.remove(self._on_schema_change)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 9:
            version, flags, stream, opcode, length = _HEADER.unpack_from(buf, pos)
            if version != 0x04 and 0 < version & 0x7F < 3:
                self._refuse_v1_v2(version, out)
                return
            if length < 0 or length > MAX_FRAME:
                out.append(self._error(stream, ProtocolError(f"invalid frame body length {length}")))
                self._flush(out)
                if self.transport:
                    self.transport.close()
                return
            if n - pos - 9 < length:
                break
            body = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            answer = self._handle(version, flags, stream, opcode, body)
            held = self.engine.faults.take_delay()
            if held:  # a "delay" fault: the request has run, its answer goes out later
                asyncio.get_running_loop().call_later(held, self._flush, [answer])
            else:
                out.append(answer)
        if pos < n < pos + 9 and 0 < buf[pos] & 0x7F < 3:  # an empty v1/v2 OPTIONS or STARTUP is 8 bytes
            self._refuse_v1_v2(buf[pos], out)
            return
        if pos:
            del buf[:pos]
        self._flush(out)

    def _refuse_v1_v2(self, version: int, out: list[bytes]) -> None:
        """Answer a v1/v2 frame at once, in the client's own 8-byte header, and close.

        Checked from the first byte, before a 9-byte v4 header is complete: an empty v1/v2 request is
        8 bytes, so waiting for 9 would leave the client hanging. As Cassandra does, the answer is in
        the client's version (stream 0) so that it can decode it; the rest of its bytes cannot be framed.
        """
        err = _bad_version(version)
        body = wire.int_(err.code) + wire.string(err.message)
        out.append(_HEADER_V1_V2.pack(0x80 | (version & 0x7F), 0, 0, OP_ERROR, len(body)) + body)
        self._flush(out)
        if self.transport is not None:
            self.transport.close()

    def _flush(self, out: list[bytes]) -> None:
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def _on_schema_change(self, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.frame(-1, OP_EVENT, wire.string("SCHEMA_CHANGE") + body))

    # -- dispatch ---------------------------------------------------------------------
    def _error(self, stream: int, err: CqlError, version: int = 0x84) -> bytes:
        body = wire.int_(err.code) + wire.string(err.message) + err.extra()
        return wire.frame(stream, OP_ERROR, body, version)

    def _handle(self, version: int, flags: int, stream: int, opcode: int, body: bytes) -> bytes:
        if version != 0x04:
            if version == 0x84:  # a response frame sent back to the server (spec 2.1: the high bit is the direction)
                return self._error(stream, ProtocolError("Wrong protocol direction (expected REQUEST, got RESPONSE)"))
            return self._error(stream, _bad_version(version))
        try:
            r = wire.Reader(body)
            if flags:
                self._frame_flags(flags, opcode, r)
            return self._dispatch(stream, opcode, r)
        except CqlError as err:
            if not isinstance(err, Invalid | BadCredentials) or logger.isEnabledFor(logging.DEBUG):
                logger.debug("stream %s opcode %s failed: %s", stream, opcode, err.message)
            return self._error(stream, err)
        except Exception as exc:
            logger.exception("internal error on %s (opcode 0x%02x)", self.peer, opcode)
            return self._error(stream, ServerError(f"internal emulator error: {type(exc).__name__}: {exc}"))

    @staticmethod
    def _frame_flags(flags: int, opcode: int, r: wire.Reader) -> None:
        """Refuse the frame flags this server does not implement; read past a custom payload (ignored)."""
        if flags & 0x01:
            raise ProtocolError("compressed frames are not supported by this emulator (no compression was "
                                "negotiated)")
        if flags & 0x02 and opcode in _TRACED:
            # Invalid, not ProtocolError: the driver closes a connection on a protocol error, and this request
            # is fine without tracing. Cosmos DB for Apache Cassandra lists tracing as not applicable.
            raise Invalid("Tracing is not supported by this emulator (Cosmos DB for Apache Cassandra does not "
                          "support it either): there is no system_traces; send the request without tracing")
        if flags & 0x04:
            for _ in range(r.short()):
                r.string()
                r.bytes()

    def _dispatch(self, stream: int, opcode: int, r: wire.Reader) -> bytes:
        if opcode == OP_OPTIONS:
            supported = {"CQL_VERSION": [CQL_VERSION], "COMPRESSION": [], "PROTOCOL_VERSIONS": ["4/v4"]}
            return wire.frame(stream, OP_SUPPORTED, wire.string_multimap(supported))
        if opcode == OP_STARTUP:
            options = r.string_map()
            if "CQL_VERSION" not in options:  # mandatory (spec 4.1.1); Cassandra refuses a STARTUP without it
                raise ProtocolError("Missing value CQL_VERSION in STARTUP message")
            if options.get("COMPRESSION"):
                raise ProtocolError(f"Unknown compression algorithm: {options['COMPRESSION']} (this emulator supports "
                                    "no compression)")
            self.started = True
            if self.credentials is not None:
                return wire.frame(stream, OP_AUTHENTICATE, wire.string(AUTHENTICATOR))
            return wire.frame(stream, OP_READY, b"")
        if opcode == OP_AUTH_RESPONSE:
            return self._auth(stream, r.bytes() or b"")
        if not self.started:
            raise ProtocolError(f"Unexpected message {_OPNAMES.get(opcode, hex(opcode))}, expecting STARTUP or OPTIONS")
        if not self.authenticated:
            raise ProtocolError(f"Unexpected message {_OPNAMES.get(opcode, hex(opcode))}, expecting AUTH_RESPONSE")
        if opcode == OP_QUERY:
            query = r.long_string()
            _, opts = read_options(r)
            stmt, markers = self.engine.parse(query)
            return wire.frame(stream, OP_RESULT, self.engine.execute(stmt, markers, opts, self.session))
        if opcode == OP_EXECUTE:
            pid = r.short_bytes()
            _, opts = read_options(r)
            prepared = self.engine.lookup_prepared(pid)
            body = self.engine.execute(prepared.statement, prepared.markers, opts, self.session, prepared)
            return wire.frame(stream, OP_RESULT, body)
        if opcode == OP_PREPARE:
            query = r.long_string()
            p = self.engine.prepare(query, self.session)
            return wire.frame(stream, OP_RESULT, results.prepared(p.id, p.bind, p.pk_indexes, p.result))
        if opcode == OP_BATCH:
            return wire.frame(stream, OP_RESULT, self._batch(r))
        if opcode == OP_REGISTER:
            events = r.string_list()
            for event in events:
                if event not in EVENT_TYPES:  # Cassandra's message; registering for nothing would be silent
                    raise ProtocolError(f"Invalid value '{event}' for Type (the event types are "
                                        f"{', '.join(EVENT_TYPES)})")
            if "SCHEMA_CHANGE" in events and self._on_schema_change not in self.engine.schema_listeners:
                self.engine.schema_listeners.append(self._on_schema_change)
            return wire.frame(stream, OP_READY, b"")
        raise ProtocolError(f"unknown or unsupported request opcode 0x{opcode:02x}")

    def _auth(self, stream: int, token: bytes) -> bytes:
        if self.credentials is None:
            raise ProtocolError("Unexpected AUTH_RESPONSE: this emulator runs without authentication")
        parts = token.split(b"\x00")
        user = parts[1].decode(errors="replace") if len(parts) == 3 else ""
        if len(parts) == 3 and self.credentials.accept(parts[1], parts[2]):
            self.authenticated = True
            return wire.frame(stream, OP_AUTH_SUCCESS, wire.bytes_(None))
        raise BadCredentials(f"Provided username {user} and/or password are incorrect")

    def _batch(self, r: wire.Reader) -> bytes:
        from .batch import execute_batch
        kind = {0: "logged", 1: "unlogged", 2: "counter"}.get(r.byte())
        if kind is None or kind == "counter":
            raise Invalid("counter batches are not supported by this emulator" if kind else "unknown batch type")
        children: list[Child] = []
        for _ in range(r.short()):
            child_kind = r.byte()
            table: Table | None = None
            if child_kind == 0:
                stmt, markers = self.engine.parse(r.long_string())
            elif child_kind == 1:  # bound to the table it was prepared against, whatever this session's keyspace
                prepared = self.engine.lookup_prepared(r.short_bytes())
                stmt, table, markers = prepared.statement, prepared.table, prepared.markers
            else:
                raise ProtocolError(f"invalid BATCH child kind {child_kind}")
            values = [r.value() for _ in range(r.short())]
            if len(values) != markers:  # Cassandra's BatchMessage checks each child so
                raise Invalid(f"There were {markers} markers(?) in CQL but {len(values)} bound variables")
            children.append((stmt, values, table))
        opts = Options(consistency=read_consistency(r))
        flags = r.byte()
        if flags & 0x10:
            opts.serial_consistency = read_consistency(r)
        if flags & 0x20:
            opts.timestamp = r.long()
        if flags & 0x40:
            raise Invalid("named values in BATCH are not supported by this emulator")
        return execute_batch(self.engine, kind, st.Using(), children, opts, self.session)


def _bad_version(version: int) -> ProtocolError:
    """The error the driver steps down on (it looks for "unsupported protocol version")."""
    return ProtocolError(f"Invalid or unsupported protocol version ({version & 0x7F}); supported versions are (4/v4)")


async def serve(engine: Engine, host: str, port: int, *, credentials: Credentials | None = None,
                ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: CqlConnection(engine, credentials), host, port, ssl=ssl_context,
                                      reuse_address=True, backlog=512)
