"""Throughput and memory of the Cassandra emulator through the real driver.

``python -m bench cassandra_emulator [--rows N] [--memory-rows M] [--concurrency C] [--no-baseline]``

1. N prepared INSERTs (key + 500-byte blob) through ``execute_concurrent_with_args``
   (concurrency C), then N point SELECTs by key, against the emulator: ops/s, and
   the emulator's CPU time per operation (psutil), so it is visible which side of
   the socket is the bottleneck.
2. The same two runs against a *null server* (``--null-server``): the emulator's
   own framing and handshake, but EXECUTE answered from a canned reply without
   touching the engine. That is the ceiling the driver itself allows on this
   machine; ``ratio`` is emulator ops/s over null-server ops/s (1.0 = the emulator
   costs the client nothing).
3. Memory: the table is filled to M rows of 500 bytes (unlogged batches of 100,
   which are cheaper for the driver) and the emulator's resident set size is
   read; peak RSS is sampled every 100 ms throughout. If M is below one million
   the one-million figure is a linear extrapolation from the measured growth, and
   the output says so.

Rows are read with the driver's ``tuple_factory``: its default
``named_tuple_factory`` builds a new namedtuple class for every result set, which
costs the *client* more than the emulator spends on the whole request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session
    from cassandra.query import PreparedStatement

    from sluice.launcher import Running

PAYLOAD = b"x" * 500
MILLION = 1_000_000


@dataclass
class Totals:
    """Accumulated over the rounds of one kind of request against one server."""

    ops: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def server_us(self) -> float:
        return self.server_cpu / self.ops * 1e6 if self.ops else 0.0

    def client_us(self) -> float:
        return self.client_cpu / self.ops * 1e6 if self.ops else 0.0


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def current(self) -> int:
        rss: int = self.process.memory_info().rss
        self.peak = max(self.peak, rss)
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.current()

    def __enter__(self) -> RssSampler:
        self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.current()


def _cluster(host: str, port: int) -> Cluster:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy
    from cassandra.query import tuple_factory
    profile = ExecutionProfile(row_factory=tuple_factory, load_balancing_policy=RoundRobinPolicy())
    return Cluster(contact_points=[host], port=port, protocol_version=4,
                   execution_profiles={EXEC_PROFILE_DEFAULT: profile})


class Target:
    """One server under test: a driver session with the benchmark table and its prepared statements."""

    def __init__(self, name: str, host: str, port: int, pid: int, keyspace: str) -> None:
        import psutil
        self.name = name
        self.server = psutil.Process(pid)
        self.session = _cluster(host, port).connect()
        self.session.execute(f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
                             "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        self.session.execute(f"CREATE TABLE IF NOT EXISTS {keyspace}.kv (k bigint PRIMARY KEY, v blob)")
        self.insert = self.session.prepare(f"INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)")
        self.select = self.session.prepare(f"SELECT v FROM {keyspace}.kv WHERE k = ?")
        self.inserts = Totals()
        self.reads = Totals()

    def run(self, statement: PreparedStatement, args: Sequence[tuple[object, ...]], totals: Totals,
            concurrency: int) -> None:
        from cassandra.concurrent import execute_concurrent_with_args
        cpu0, client0 = sum(self.server.cpu_times()[:2]), time.process_time()
        t0 = time.perf_counter()
        n = 0
        for ok, result in execute_concurrent_with_args(self.session, statement, args, concurrency=concurrency,
                                                       raise_on_first_error=True, results_generator=True):
            if not ok:
                raise RuntimeError(f"{self.name}: request failed: {result!r}")
            n += 1
        totals.seconds += time.perf_counter() - t0
        totals.server_cpu += sum(self.server.cpu_times()[:2]) - cpu0
        totals.client_cpu += time.process_time() - client0
        totals.ops += n

    def round(self, keys: range, concurrency: int) -> None:
        self.run(self.insert, [(k, PAYLOAD) for k in keys], self.inserts, concurrency)
        self.run(self.select, [(k,) for k in keys], self.reads, concurrency)
        sample = self.session.execute(self.select, (keys[-1],)).one()
        if sample is None or sample[0] != PAYLOAD:
            raise RuntimeError(f"{self.name}: key {keys[-1]} read back {sample!r}, not the 500-byte payload")

    def report(self) -> str:
        return (f"{self.name:12} {self.inserts.rate():8,.0f} inserts/s, {self.reads.rate():8,.0f} point reads/s; "
                f"CPU per request: server {self.inserts.server_us():.0f}/{self.reads.server_us():.0f} us, "
                f"driver {self.inserts.client_us():.0f}/{self.reads.client_us():.0f} us (insert/read)")


def fill(session: Session, keyspace: str, start: int, total: int) -> None:
    """Insert keys start..total-1 in unlogged batches of 100 (fast for the driver, same rows for the server)."""
    from cassandra.concurrent import execute_concurrent
    from cassandra.query import BatchStatement, BatchType
    insert = session.prepare(f"INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)")

    def batches() -> Iterator[tuple[BatchStatement, tuple[()]]]:
        for lo in range(start, total, 100):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for k in range(lo, min(lo + 100, total)):
                batch.add(insert, (k, PAYLOAD))
            yield batch, ()

    for ok, result in execute_concurrent(session, batches(), concurrency=20, raise_on_first_error=True,
                                         results_generator=True):
        if not ok:
            raise RuntimeError(f"batch failed: {result!r}")


# -- the null server: the driver's ceiling -----------------------------------------------------

def _null_server(host: str) -> int:
    """Serve the emulator's handshake and DDL, but answer EXECUTE from a canned reply (no storage)."""
    from emulators.cassandra import results, wire
    from emulators.cassandra import statements as st
    from emulators.cassandra.engine import Engine
    from emulators.cassandra.server import OP_EXECUTE, OP_RESULT, CqlConnection, read_options

    class NullConnection(CqlConnection):
        canned: ClassVar[dict[bytes, bytes]] = {}

        def _dispatch(self, stream: int, opcode: int, r: wire.Reader) -> bytes:
            if opcode != OP_EXECUTE or not self.started:
                return super()._dispatch(stream, opcode, r)
            pid = r.short_bytes()
            _, opts = read_options(r)
            body = self.canned.get(pid)
            if body is None:
                prepared = self.engine.lookup_prepared(pid)
                if isinstance(prepared.statement, st.Select):
                    body = results.Rows(prepared.result, [[PAYLOAD]]).encode(no_metadata=opts.skip_metadata)
                else:
                    body = results.VOID
                self.canned[pid] = body
            return wire.frame(stream, OP_RESULT, body)

    async def run() -> None:
        engine = Engine(address=host)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: NullConnection(engine, None), host, 0, backlog=512)
        sock = server.sockets[0].getsockname()
        print(f"null CQL server listening on {sock[0]}:{sock[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())
    return 0


def _start(name: str, argv: list[str]) -> Running:
    from sluice.launcher import start
    return start(name, argv, timeout=60)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench cassandra_emulator", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="prepared INSERTs and point SELECTs (default 100000)")
    p.add_argument("--memory-rows", type=int, default=MILLION,
                   help="rows of 500 bytes to hold when reading RSS (default 1000000; below that, extrapolated)")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5, help="alternate emulator and null server this many times")
    p.add_argument("--no-baseline", action="store_true", help="skip the null-server runs")
    p.add_argument("--null-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.null_server:
        return _null_server("127.0.0.1")
    from sluice.launcher import python_module

    keyspace = f"bench_{uuid.uuid4().hex[:8]}"
    emulator = _start("cassandra-emulator", python_module("emulators.cassandra", "--host", "127.0.0.1", "--port", "0",
                                                          "--log-level", "WARNING"))
    null = None if args.no_baseline else _start(
        "null-cql-server", [sys.executable, "-m", "bench", "cassandra_emulator", "--null-server"])
    try:
        with RssSampler(emulator.process.pid) as rss:
            idle = rss.current()
            ours = Target("emulator", emulator.host, emulator.port, emulator.process.pid, keyspace)
            base = None if null is None else Target("null server", null.host, null.port, null.process.pid, keyspace)
            chunk = -(-args.rows // args.rounds)
            for lo in range(0, args.rows, chunk):  # interleaved, so both see the same machine load
                keys = range(lo, min(lo + chunk, args.rows))
                ours.round(keys, args.concurrency)
                if base is not None:
                    base.round(keys, args.concurrency)
            print(ours.report(), flush=True)
            if base is not None:
                print(base.report() + "  <- the driver's own ceiling", flush=True)
            at_rows = rss.current()
            held = max(args.rows, args.memory_rows)
            t0 = time.perf_counter()
            if held > args.rows:
                fill(ours.session, keyspace, args.rows, held)
            filled = time.perf_counter() - t0
            if ours.session.execute(ours.select, (held - 1,)).one() is None:
                raise RuntimeError(f"row {held - 1} missing after the fill")
            at_held = rss.current()
        per_row = (at_held - idle) / held
        million = idle + per_row * MILLION
        how = "measured" if held >= MILLION else f"extrapolated linearly from {held:,} rows"
        print(f"memory:      idle {idle / 2**20:,.0f} MB, {args.rows:,} rows {at_rows / 2**20:,.0f} MB, "
              f"{held:,} rows {at_held / 2**20:,.0f} MB (filled in {filled:.0f} s), {per_row:,.0f} bytes/row, "
              f"peak {rss.peak / 2**20:,.0f} MB; 1M rows of 500 bytes: {million / 2**20:,.0f} MB ({how})", flush=True)
    finally:
        emulator.stop()
        if null is not None:
            null.stop()
    load = os.getloadavg()[0]
    line = (f"cassandra_emulator (load average {load:.1f} on {os.cpu_count()} CPUs): "
            f"inserts/s={ours.inserts.rate():.0f} reads/s={ours.reads.rate():.0f} "
            f"emulator_cpu_us_per_insert={ours.inserts.server_us():.0f} "
            f"emulator_cpu_us_per_read={ours.reads.server_us():.0f} "
            f"peak_rss_mb={rss.peak / 2**20:.0f} rss_1m_rows_mb={million / 2**20:.0f} ({how})")
    if base is not None:
        ratio_ins = ours.inserts.rate() / base.inserts.rate()
        ratio_read = ours.reads.rate() / base.reads.rate()
        line += (f" baseline_inserts/s={base.inserts.rate():.0f} baseline_reads/s={base.reads.rate():.0f} "
                 f"ratio_inserts={ratio_ins:.2f} ratio_reads={ratio_read:.2f} ratio {min(ratio_ins, ratio_read):.2f}")
    print(line)
    for t in (ours, base):
        if t is not None:
            t.session.cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
