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
import sys
import threading
import time
import uuid
from dataclasses import dataclass

PAYLOAD = b"x" * 500
MILLION = 1_000_000


@dataclass
class Run:
    inserts_per_s: float
    reads_per_s: float
    server_us_per_insert: float
    server_us_per_read: float


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
        rss = self.process.memory_info().rss
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


def _cluster(host: str, port: int):  # noqa: ANN202 - cassandra.cluster.Cluster, imported lazily
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy
    from cassandra.query import tuple_factory
    profile = ExecutionProfile(row_factory=tuple_factory, load_balancing_policy=RoundRobinPolicy())
    return Cluster(contact_points=[host], port=port, protocol_version=4,
                   execution_profiles={EXEC_PROFILE_DEFAULT: profile})


def measure(host: str, port: int, pid: int, rows: int, concurrency: int, keyspace: str) -> tuple[Run, object]:
    """Insert then read ``rows`` rows; returns the figures and the (open) session for further use."""
    import psutil
    from cassandra.concurrent import execute_concurrent_with_args

    server = psutil.Process(pid)
    session = _cluster(host, port).connect()
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute(f"CREATE TABLE IF NOT EXISTS {keyspace}.kv (k bigint PRIMARY KEY, v blob)")
    insert = session.prepare(f"INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)")
    select = session.prepare(f"SELECT v FROM {keyspace}.kv WHERE k = ?")

    def timed(statement: object, args: list[tuple]) -> tuple[float, float]:
        cpu0 = sum(server.cpu_times()[:2])
        t0 = time.perf_counter()
        results = execute_concurrent_with_args(session, statement, args, concurrency=concurrency,
                                               raise_on_first_error=True, results_generator=True)
        n = 0
        for ok, result in results:
            if not ok:
                raise RuntimeError(f"request failed: {result!r}")
            n += 1
        elapsed = time.perf_counter() - t0
        cpu = sum(server.cpu_times()[:2]) - cpu0
        return n / elapsed, cpu / n * 1e6

    ins_rate, ins_cpu = timed(insert, [(i, PAYLOAD) for i in range(rows)])
    read_rate, read_cpu = timed(select, [(i,) for i in range(rows)])
    sample = session.execute(select, (rows // 2,)).one()
    if sample is None or sample[0] != PAYLOAD:
        raise RuntimeError(f"point read of key {rows // 2} returned {sample!r}, not the 500-byte payload")
    return Run(ins_rate, read_rate, ins_cpu, read_cpu), session


def fill(session, keyspace: str, start: int, total: int) -> None:  # noqa: ANN001
    """Insert keys start..total-1 in unlogged batches of 100 (fast for the driver, same rows for the server)."""
    from cassandra.concurrent import execute_concurrent
    from cassandra.query import BatchStatement, BatchType
    insert = session.prepare(f"INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)")

    def batches():  # noqa: ANN202
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
        canned: dict[bytes, bytes] = {}

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


def _start(name: str, argv: list[str]):  # noqa: ANN202
    from emulators.launcher import start
    return start(name, argv, timeout=60)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench cassandra_emulator", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="prepared INSERTs and point SELECTs (default 100000)")
    p.add_argument("--memory-rows", type=int, default=MILLION,
                   help="rows of 500 bytes to hold when reading RSS (default 1000000; below that, extrapolated)")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--no-baseline", action="store_true", help="skip the null-server run")
    p.add_argument("--null-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.null_server:
        return _null_server("127.0.0.1")
    from emulators.launcher import python_module

    keyspace = f"bench_{uuid.uuid4().hex[:8]}"
    emulator = _start("cassandra-emulator", python_module("emulators.cassandra", "--host", "127.0.0.1", "--port", "0",
                                                          "--log-level", "WARNING"))
    try:
        with RssSampler(emulator.process.pid) as rss:
            idle = rss.current()
            ours, session = measure(emulator.host, emulator.port, emulator.process.pid, args.rows, args.concurrency,
                                    keyspace)
            print(f"emulator:    {ours.inserts_per_s:9,.0f} inserts/s ({ours.server_us_per_insert:.0f} us emulator CPU "
                  f"each), {ours.reads_per_s:9,.0f} point reads/s ({ours.server_us_per_read:.0f} us each)", flush=True)
            at_rows = rss.current()
            held = max(args.rows, args.memory_rows)
            t0 = time.perf_counter()
            if held > args.rows:
                fill(session, keyspace, args.rows, held)
            filled = time.perf_counter() - t0
            count_check = session.execute(f"SELECT v FROM {keyspace}.kv WHERE k = %s", (held - 1,)).one()
            if count_check is None:
                raise RuntimeError(f"row {held - 1} missing after the fill")
            at_held = rss.current()
            session.cluster.shutdown()
        per_row = (at_held - idle) / held
        million = idle + per_row * MILLION
        how = "measured" if held >= MILLION else f"extrapolated linearly from {held:,} rows"
        print(f"memory:      idle {idle / 2**20:,.0f} MB, {args.rows:,} rows {at_rows / 2**20:,.0f} MB, "
              f"{held:,} rows {at_held / 2**20:,.0f} MB (filled in {filled:.0f} s), {per_row:,.0f} bytes/row, "
              f"peak {rss.peak / 2**20:,.0f} MB; 1M rows of 500 bytes: {million / 2**20:,.0f} MB ({how})", flush=True)
    finally:
        emulator.stop()

    ratio_ins = ratio_read = None
    if not args.no_baseline:
        null = _start("null-cql-server", [sys.executable, "-m", "bench", "cassandra_emulator", "--null-server"])
        try:
            base, session = measure(null.host, null.port, null.process.pid, args.rows, args.concurrency, keyspace)
            session.cluster.shutdown()
        finally:
            null.stop()
        print(f"null server: {base.inserts_per_s:9,.0f} inserts/s ({base.server_us_per_insert:.0f} us server CPU "
              f"each), {base.reads_per_s:9,.0f} point reads/s ({base.server_us_per_read:.0f} us each)  "
              "<- the driver's own ceiling", flush=True)
        ratio_ins = ours.inserts_per_s / base.inserts_per_s
        ratio_read = ours.reads_per_s / base.reads_per_s
    ratio = "" if ratio_ins is None else (f" baseline_inserts/s={base.inserts_per_s:.0f} "
                                          f"baseline_reads/s={base.reads_per_s:.0f} "
                                          f"ratio_inserts={ratio_ins:.2f} ratio_reads={ratio_read:.2f} "
                                          f"ratio {min(ratio_ins, ratio_read):.2f}")
    print(f"cassandra_emulator: inserts/s={ours.inserts_per_s:.0f} reads/s={ours.reads_per_s:.0f} "
          f"peak_rss_mb={rss.peak / 2**20:.0f} rss_1m_rows_mb={million / 2**20:.0f} ({how}){ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
