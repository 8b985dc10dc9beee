"""The wire: version negotiation, frame and handshake checks, compression, tracing, authentication, TLS, many
streams, prepared result metadata, the CLI."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cassandra import AuthenticationFailed, InvalidRequest, OperationTimedOut
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster, NoHostAvailable

from emulators.cassandra.faults import run_statement
from sluice.launcher import Running
from tests.fixtures.cassandra import start_cassandra_emulator

pytestmark = pytest.mark.timeout(60)


def _frame(version: int, stream: int, opcode: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BBhBi", version, flags, stream, opcode, len(body)) + body


def _string(s: str) -> bytes:
    return struct.pack(">H", len(s)) + s.encode()


def _long_string(s: str) -> bytes:
    return struct.pack(">i", len(s.encode())) + s.encode()


def _startup(options: dict[str, str]) -> bytes:
    return struct.pack(">H", len(options)) + b"".join(_string(k) + _string(v) for k, v in options.items())


def _read(sock: socket.socket) -> tuple[int, int, int, bytes]:
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "the emulator closed the connection"
            buf += chunk
        return buf
    version, _, stream, opcode, length = struct.unpack(">BBhBi", exact(9))
    return version, stream, opcode, exact(length)


def _error_message(body: bytes) -> tuple[int, str]:
    code, n = struct.unpack_from(">iH", body)
    return code, body[6:6 + n].decode()


@pytest.fixture
def raw(cassandra_emulator: Running) -> Iterator[socket.socket]:
    with socket.create_connection((cassandra_emulator.host, cassandra_emulator.port), timeout=10) as sock:
        yield sock


@pytest.fixture
def ready(raw: socket.socket) -> socket.socket:
    """``raw`` after STARTUP/READY."""
    raw.sendall(_frame(4, 0, 0x01, _startup({"CQL_VERSION": "3.0.0"})))
    assert _read(raw)[2] == 0x02
    return raw


def _query(sock: socket.socket, stream: int, cql: str, *, consistency: int = 0x0001, version: int = 4,
           flags: int = 0) -> tuple[int, int, int, bytes]:
    sock.sendall(_frame(version, stream, 0x07, _long_string(cql) + struct.pack(">HB", consistency, 0), flags=flags))
    return _read(sock)


@pytest.mark.parametrize("version", [0x42, 0x41, 5, 3])
def test_other_protocol_versions_get_the_message_the_driver_steps_down_on(raw: socket.socket, version: int) -> None:
    raw.sendall(_frame(version, 0, 0x05, b""))
    _, stream, opcode, body = _read(raw)
    code, message = _error_message(body)
    assert (opcode, code, stream) == (0x00, 0x000A, 0)
    assert "Invalid or unsupported protocol version" in message


@pytest.mark.parametrize("version", [1, 2])
def test_v1_and_v2_clients_are_refused_at_once_in_their_own_header(cassandra_emulator: Running, raw: socket.socket,
                                                                   version: int) -> None:
    """A v1/v2 header is 8 bytes, so an empty OPTIONS is 8 bytes: the version is read from the first byte, as
    Cassandra does, and the answer is in the client's header so that it can decode it. A driver pinned to v1/v2
    gets that error at once, not a connect timeout (never a hang)."""
    raw.sendall(struct.pack(">BBbBi", version, 0, 0, 0x05, 0))
    header = raw.recv(8)
    assert len(header) == 8
    answered, _, stream, opcode, length = struct.unpack(">BBbBi", header)
    assert (answered, stream, opcode) == (0x80 | version, 0, 0x00)
    code, message = _error_message(raw.recv(length))
    assert code == 0x000A and "Invalid or unsupported protocol version" in message
    assert raw.recv(1) == b""  # the rest of a v1/v2 stream cannot be framed: closed
    cluster = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port,
                      protocol_version=version, connect_timeout=3)
    started = time.monotonic()
    try:
        with pytest.raises(NoHostAvailable) as info:
            cluster.connect()
    finally:
        cluster.shutdown()
    assert not any(isinstance(e, OperationTimedOut) for e in info.value.errors.values()), info.value.errors
    assert time.monotonic() - started < 2.5


def test_a_frame_with_the_response_direction_bit_is_refused_not_run(ready: socket.socket) -> None:
    """Spec 2.1: the version byte's high bit is the direction (0x84 is a response). A proxy or client that loops
    server frames back gets Cassandra's "Wrong protocol direction" protocol error, not its statement run."""
    _, stream, opcode, body = _query(ready, 3, "SELECT key FROM system.local", version=0x84)
    code, message = _error_message(body)
    assert (stream, opcode, code) == (3, 0x00, 0x000A) and "direction" in message


def test_an_unknown_consistency_code_is_a_protocol_error(ready: socket.socket) -> None:
    """Spec 3: 0x0000 (ANY) to 0x000A (LOCAL_ONE) are the only codes; as Cassandra does, anything else is refused,
    so a mis-encoded parameter block is reported instead of its bytes being misread as flags and values."""
    _, _, opcode, body = _query(ready, 4, "SELECT key FROM system.local", consistency=0x00FF)
    code, message = _error_message(body)
    assert (opcode, code) == (0x00, 0x000A) and "Unknown code 255 for a consistency level" in message
    assert _query(ready, 5, "SELECT key FROM system.local", consistency=0x000A)[2] == 0x08  # LOCAL_ONE runs


def test_startup_without_cql_version_is_a_protocol_error(raw: socket.socket) -> None:
    """Spec 4.1.1: CQL_VERSION is mandatory (the driver always sends it). A client that omits it is refused with
    Cassandra's message here, rather than pass against the emulator and fail against Cosmos DB."""
    raw.sendall(_frame(4, 0, 0x01, _startup({})))
    _, _, opcode, body = _read(raw)
    code, message = _error_message(body)
    assert (opcode, code) == (0x00, 0x000A) and "Missing value CQL_VERSION" in message


def test_register_for_an_unknown_event_type_is_refused(ready: socket.socket) -> None:
    """Spec 4.1.8: the event types are TOPOLOGY_CHANGE, STATUS_CHANGE and SCHEMA_CHANGE. A misspelt one is a
    protocol error, as in Cassandra, so the client does not believe it is registered and never hears an event."""
    ready.sendall(_frame(4, 9, 0x0B, struct.pack(">H", 1) + _string("SCHEMA_CHANGES")))
    _, stream, opcode, body = _read(ready)
    code, message = _error_message(body)
    assert (stream, opcode, code) == (9, 0x00, 0x000A) and "SCHEMA_CHANGES" in message
    events = ("TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE")
    ready.sendall(_frame(4, 10, 0x0B, struct.pack(">H", 3) + b"".join(_string(e) for e in events)))
    assert _read(ready)[1:3] == (10, 0x02)  # READY


def test_tracing_is_refused_by_name_not_ignored(ready: socket.socket, cassandra_emulator: Running) -> None:
    """There is no system_traces (Cosmos DB lists tracing as not applicable). A traced request gets an Invalid
    naming tracing, not an untraced answer, so `get_query_trace()` does not silently return None; it is not a
    protocol error, which would make the driver close the connection."""
    _, _, opcode, body = _query(ready, 5, "SELECT key FROM system.local", flags=0x02)
    code, message = _error_message(body)
    assert (opcode, code) == (0x00, 0x2200) and "Tracing is not supported" in message
    cluster = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, protocol_version=4)
    try:
        session = cluster.connect()
        with pytest.raises(InvalidRequest, match="Tracing is not supported"):
            session.execute("SELECT key FROM system.local", trace=True)
        assert session.execute("SELECT key FROM system.local").one().key == "local"
    finally:
        cluster.shutdown()


def _prepare(sock: socket.socket, stream: int, cql: str) -> tuple[bytes, int]:
    """PREPARE a statement without bind markers: (statement id, result column count)."""
    sock.sendall(_frame(4, stream, 0x09, _long_string(cql)))
    _, _, opcode, body = _read(sock)
    assert opcode == 0x08, _error_message(body)
    kind, n = struct.unpack_from(">iH", body)
    assert kind == 4
    pid = body[6:6 + n]
    _flags, bind_count, pk_count = struct.unpack_from(">iii", body, 6 + n)
    assert bind_count == 0
    _result_flags, result_count = struct.unpack_from(">ii", body, 6 + n + 12 + 2 * pk_count)
    return pid, result_count


def test_alter_table_add_makes_a_skip_metadata_execute_unprepared(ready: socket.socket, cassandra_keyspace: str,
                                                                  cassandra_emulator: Running) -> None:
    """EXECUTE with Skip_metadata (spec 4.1.4 flag 0x02, what the Java and Go drivers send) gets rows the client
    decodes with the PREPARED metadata. After ALTER TABLE ADD that metadata (k, b, d) no longer matches the table
    (k, b, c, d), so, as in Cassandra, the table's statements are evicted: UNPREPARED, and the client re-prepares,
    instead of four cells decoded against three columns."""
    host, port, ks = cassandra_emulator.host, cassandra_emulator.port, cassandra_keyspace
    run_statement(host, port, f"CREATE TABLE {ks}.t (k int PRIMARY KEY, b int, d int)")
    run_statement(host, port, f"INSERT INTO {ks}.t (k, b, d) VALUES (1, 2, 4)")
    query = f"SELECT * FROM {ks}.t WHERE k = 1"
    pid, columns = _prepare(ready, 1, query)
    assert columns == 3
    run_statement(host, port, f"ALTER TABLE {ks}.t ADD c text")
    ready.sendall(_frame(4, 2, 0x0A, struct.pack(">H", len(pid)) + pid + struct.pack(">HB", 0x0001, 0x02)))
    _, _, opcode, body = _read(ready)
    assert (opcode, _error_message(body)[0]) == (0x00, 0x2500)
    assert _prepare(ready, 3, query) == (pid, 4)  # the same id (MD5 of keyspace + query), the new metadata


def _int(n: int) -> bytes:
    """An int [value] (spec 3: its length, then its 4 bytes)."""
    return struct.pack(">ii", 4, n)


def _query_values(sock: socket.socket, stream: int, cql: str, values: list[bytes],
                  names: list[str] | None = None) -> tuple[int, bytes]:
    """A QUERY at ONE with ``values`` ([value]s), positional, or named (flag 0x40, spec 4.1.4) when ``names`` is
    given: what the Java driver sends for ``SimpleStatement.newInstance(cql, Map)``. (opcode, body)."""
    params = struct.pack(">H", len(values)) + b"".join(
        (_string(names[i]) if names is not None else b"") + v for i, v in enumerate(values))
    flags = 0x01 | (0x40 if names is not None else 0)
    sock.sendall(_frame(4, stream, 0x07, _long_string(cql) + struct.pack(">HB", 0x0001, flags) + params))
    _, _, opcode, body = _read(sock)
    return opcode, body


def _int_rows(sock: socket.socket, table: str) -> list[tuple[int, ...]]:
    """Every row of ``table`` (k, c, v, all int), decoded from a ROWS result."""
    _, _, opcode, body = _query(sock, 9, f"SELECT k, c, v FROM {table}")
    assert opcode == 0x08, _error_message(body)
    kind, flags, ncols = struct.unpack_from(">iii", body)
    assert kind == 2
    pos = 12
    for _ in range(2 if flags & 0x0001 else 0):  # the global table spec: keyspace, table
        pos += 2 + struct.unpack_from(">H", body, pos)[0]
    for _ in range(ncols):
        pos += 2 + struct.unpack_from(">H", body, pos)[0] + 2  # name, type id (int has no parameters)
    (nrows,) = struct.unpack_from(">i", body, pos)
    pos += 4
    rows = []
    for _ in range(nrows):
        cells = struct.unpack_from(">" + "ii" * ncols, body, pos)
        rows.append(cells[1::2])
        pos += 8 * ncols
    return sorted(rows)


@pytest.fixture
def int_table(ready: socket.socket, cassandra_keyspace: str) -> str:
    name = f"{cassandra_keyspace}.t"
    _, _, opcode, body = _query(ready, 1, f"CREATE TABLE {name} (k int, c int, v int, PRIMARY KEY (k, c))")
    assert opcode == 0x08, _error_message(body)
    return name


def test_named_values_of_a_cql_batch_text_are_bound_by_the_names_of_its_markers(ready: socket.socket,
                                                                                int_table: str) -> None:
    """A QUERY of a BATCH text with named values binds each value to the markers of its name across the whole
    text, as Cassandra does (the options are prepared against the batch's bind variables). Was: bound by their
    position in the message, so ``VALUES (:k, :c, :v)`` sent as v=30, c=20, k=10 wrote the row k=30, v=10."""
    opcode, body = _query_values(
        ready, 2, f"BEGIN UNLOGGED BATCH INSERT INTO {int_table} (k, c, v) VALUES (:k, :c, :v); "
                  f"INSERT INTO {int_table} (k, c, v) VALUES (:k, 21, :w); APPLY BATCH",
        [_int(30), _int(20), _int(10), _int(31)], names=["v", "c", "k", "w"])
    assert opcode == 0x08, _error_message(body)
    assert _int_rows(ready, int_table) == [(10, 20, 30), (10, 21, 31)]


def test_a_cql_batch_text_with_more_values_than_markers_is_refused(ready: socket.socket, int_table: str) -> None:
    """As a single statement is. Was: applied, the extra value dropped."""
    opcode, body = _query_values(
        ready, 2, f"BEGIN UNLOGGED BATCH INSERT INTO {int_table} (k, c, v) VALUES (?, ?, 1); APPLY BATCH",
        [_int(40), _int(41), _int(42)])
    assert opcode == 0x00
    assert _error_message(body) == (0x2200, "There were 2 markers(?) in CQL but 3 bound variables")
    assert _int_rows(ready, int_table) == []


def test_a_protocol_batch_child_with_more_values_than_markers_is_refused(ready: socket.socket,
                                                                        int_table: str) -> None:
    """Cassandra checks each child of a BATCH message (BatchMessage.execute) and refuses the batch, so a client
    that sends values for the wrong statement finds out. Was: applied, the extra value dropped."""
    child = (b"\x00" + _long_string(f"INSERT INTO {int_table} (k, c, v) VALUES (60, 61, ?)")
             + struct.pack(">H", 2) + _int(62) + _int(63))
    ready.sendall(_frame(4, 2, 0x0D, struct.pack(">BH", 1, 1) + child + struct.pack(">HB", 0x0001, 0)))  # UNLOGGED
    _, _, opcode, body = _read(ready)
    assert opcode == 0x00
    assert _error_message(body) == (0x2200, "There were 1 markers(?) in CQL but 2 bound variables")
    assert _int_rows(ready, int_table) == []


def test_options_supported_and_unknown_compression_refused(raw: socket.socket) -> None:
    raw.sendall(_frame(4, 1, 0x05, b""))
    version, stream, opcode, body = _read(raw)
    assert (version, stream, opcode) == (0x84, 1, 0x06)
    assert b"CQL_VERSION" in body and b"COMPRESSION" in body
    raw.sendall(_frame(4, 2, 0x01, _startup({"CQL_VERSION": "3.0.0", "COMPRESSION": "snappy"})))
    _, _, opcode, body = _read(raw)
    code, message = _error_message(body)
    assert (opcode, code) == (0x00, 0x000A) and "snappy" in message
    raw.sendall(_frame(4, 3, 0x01, _startup({"CQL_VERSION": "3.0.0"})))
    assert _read(raw)[2] == 0x02  # READY
    raw.sendall(_frame(4, 4, 0x07, b"\x00\x00\x00\x00", flags=0x01))  # a compressed frame: none was negotiated
    _, _, opcode, body = _read(raw)
    assert opcode == 0x00 and "compress" in _error_message(body)[1]


def test_requests_before_startup_are_protocol_errors(raw: socket.socket) -> None:
    query = b"SELECT * FROM system.local"
    raw.sendall(_frame(4, 7, 0x07, struct.pack(">i", len(query)) + query + b"\x00\x01\x00"))
    _, stream, opcode, body = _read(raw)
    code, message = _error_message(body)
    assert (stream, opcode, code) == (7, 0x00, 0x000A) and "STARTUP" in message


def test_many_streams_in_flight_on_one_connection(raw: socket.socket) -> None:
    raw.sendall(_frame(4, 0, 0x01, _startup({"CQL_VERSION": "3.0.0"})))
    assert _read(raw)[2] == 0x02
    query = b"SELECT key FROM system.local"
    frames = b"".join(_frame(4, s, 0x07, struct.pack(">i", len(query)) + query + b"\x00\x01\x00")
                      for s in range(1, 301))
    raw.sendall(frames)  # 300 requests in one write, answered by stream id
    streams = sorted(_read(raw)[1] for _ in range(300))
    assert streams == list(range(1, 301))


def test_driver_with_compression_requested_falls_back_to_none(cassandra_emulator: Running) -> None:
    cluster = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, compression=True)
    try:
        assert cluster.connect().execute("SELECT key FROM system.local").one().key == "local"
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, ssl.SSLContext]]:
    """An emulator with --username/--password and TLS from a trustme CA, as Cosmos on port 10350."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(directory / "server.pem")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    running = start_cassandra_emulator("--username", "sluice", "--password", "s3cret",
                                       "--tls-cert", str(directory / "server.pem"),
                                       "--tls-key", str(directory / "server.pem"))
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    yield running, context
    running.stop()


def test_password_login_over_tls(secured: tuple[Running, ssl.SSLContext]) -> None:
    running, context = secured
    cluster = Cluster(contact_points=[running.host], port=running.port, ssl_context=context,
                      auth_provider=PlainTextAuthProvider("sluice", "s3cret"))
    try:
        assert cluster.connect().execute("SELECT key FROM system.local").one().key == "local"
    finally:
        cluster.shutdown()


@pytest.mark.parametrize(("user", "password"), [("sluice", "wrong"), ("nobody", "s3cret")])
def test_wrong_credentials_fail_authentication(secured: tuple[Running, ssl.SSLContext], user: str,
                                               password: str) -> None:
    running, context = secured
    cluster = Cluster(contact_points=[running.host], port=running.port, ssl_context=context,
                      auth_provider=PlainTextAuthProvider(user, password), protocol_version=4)
    try:
        with pytest.raises(NoHostAvailable) as info:
            cluster.connect()
        errors = list(info.value.errors.values())
        assert errors and isinstance(errors[0], AuthenticationFailed)
        assert "Provided username" in str(errors[0]) and "incorrect" in str(errors[0])
        assert password not in str(errors[0])
    finally:
        cluster.shutdown()


def test_missing_credentials_and_plain_tcp_are_refused(secured: tuple[Running, ssl.SSLContext]) -> None:
    running, context = secured
    cluster = Cluster(contact_points=[running.host], port=running.port, ssl_context=context, protocol_version=4)
    try:
        with pytest.raises(NoHostAvailable, match="requires authentication"):
            cluster.connect()
    finally:
        cluster.shutdown()
    with socket.create_connection((running.host, running.port), timeout=5) as sock:  # no TLS handshake
        sock.sendall(_frame(4, 0, 0x05, b""))
        sock.settimeout(5)
        try:
            reply = sock.recv(100)
        except (ConnectionResetError, TimeoutError):
            reply = b""
        assert not reply.startswith(b"\x84")


def test_cli_validates_arguments_and_stops_on_sigterm(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "emulators.cassandra", "--username", "u"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "--username and --password go together" in bad.stderr
    running = start_cassandra_emulator()
    assert "listening on 127.0.0.1:" in running.output() and running.port > 0
    assert running.stop() == 0
