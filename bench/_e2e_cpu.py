"""Helpers of ``bench e2e``: a request-counting CQL proxy, the driver's calibration, product CPU, duplicates.

* :class:`CqlCounter`: a TCP proxy in front of the Cassandra emulator that reads the
  native protocol v4 frame headers of the client-to-server direction and counts
  QUERY, EXECUTE and BATCH requests (and the statements inside batches). Only the dev
  host talks through it; the bench's own reads go to the emulator directly.
* :func:`calibrate`: the raw cassandra-driver's prepared INSERTs per CPU-second of this
  process against the null CQL server (``bench cassandra_emulator --null-server``): the
  driver's own ceiling on this machine at this moment.
* :class:`ProductCpu`: CPU seconds of the dev host processes (and their children) from
  ``/proc`` via psutil, plus the per-function and per-thread split each dev host writes
  to ``DEVHOST_CPU_STATS_FILE`` (:mod:`devhost.cpu_stats`).
* :func:`count_losses`: events lost and duplicated in the stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

OP_QUERY, OP_EXECUTE, OP_BATCH = 0x07, 0x0A, 0x0D
HEADER = 9  # v4: version, flags, stream (2), opcode, length (4)


def process_cpu() -> float:
    """This process's user and system CPU seconds so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class FrameCounter:
    """Counts requests in a byte stream of CQL v4 frames, fed in arbitrary pieces."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.batched_statements = 0
        self._head = b""
        self._skip = 0
        self._batch_head: bytes | None = None

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._batch_head is not None:  # first 3 body bytes of a BATCH: type, statement count
                take = data[i:i + 3 - len(self._batch_head)]
                self._batch_head += take
                i += len(take)
                self._skip -= len(take)
                if len(self._batch_head) == 3:
                    self.batched_statements += int.from_bytes(self._batch_head[1:3], "big")
                    self._batch_head = None
                continue
            if self._skip:
                skipped = min(self._skip, n - i)
                self._skip -= skipped
                i += skipped
                continue
            take = data[i:i + HEADER - len(self._head)]
            self._head += take
            i += len(take)
            if len(self._head) == HEADER:
                opcode, length = self._head[4], int.from_bytes(self._head[5:9], "big")
                self._head = b""
                self._skip = length
                if opcode == OP_QUERY:
                    self.requests["query"] += 1
                elif opcode == OP_EXECUTE:
                    self.requests["execute"] += 1
                elif opcode == OP_BATCH:
                    self.requests["batch"] += 1
                    if length >= 3:
                        self._batch_head = b""


class CqlCounter:
    """A counting TCP proxy on a free port in front of ``host:port``, served from its own thread."""

    def __init__(self, host: str, port: int, *, tls: tuple[Path, Path, Path] | None = None) -> None:
        """``tls``: (certificate, key, CA) PEM files, when the server speaks TLS: the proxy ends TLS on both sides.

        It serves the same certificate as the server and checks the server's with the CA, so the
        dev host's TLS settings hold unchanged and the counter reads plain frames.
        """
        self.target = (host, port)
        self._server_tls: ssl.SSLContext | None = None
        self._client_tls: ssl.SSLContext | None = None
        if tls is not None:
            cert, key, ca = tls
            self._server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._server_tls.load_cert_chain(cert, key)
            self._client_tls = ssl.create_default_context(cafile=str(ca))
        self.counters: list[FrameCounter] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cql-counter", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the counting CQL proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                                    ssl=self._server_tls))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        host, port = self.target
        server_r, server_w = await asyncio.open_connection(host, port, ssl=self._client_tls,
                                                           server_hostname=host if self._client_tls else None)
        counter = FrameCounter()
        self.counters.append(counter)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await reader.read(262144):
                    if count:
                        counter.feed(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    writer.close()

        with contextlib.suppress(asyncio.CancelledError):  # close(): end quietly
            await asyncio.gather(pump(client_r, server_w, True), pump(server_r, client_w, False))

    def totals(self) -> tuple[Counter[str], int]:
        """Requests by kind and statements inside batches, over every connection so far."""
        requests: Counter[str] = Counter()
        statements = 0
        for counter in list(self.counters):
            requests.update(counter.requests)
            statements += counter.batched_statements
        return requests, statements

    def close(self) -> None:
        """Stop the proxy's loop, then cancel the connections still open (the dev hosts are stopped by then)."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.run_until_complete(_cancel_others())
        self._loop.close()


async def _cancel_others() -> None:
    """Cancel every other task of the running loop and wait for them (gather outside the loop binds another loop)."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def calibrate(host: str, port: int, requests: int, *, concurrency: int = 100) -> float:
    """Raw driver prepared INSERTs (key + 500-byte blob) per CPU-second of this process, against ``host:port``."""
    from cassandra.concurrent import execute_concurrent_with_args

    from bench.cassandra_emulator import PAYLOAD, _cluster

    keyspace = f"cal_{uuid.uuid4().hex[:8]}"
    cluster = _cluster(host, port)
    try:
        session = cluster.connect()
        session.execute(f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute(f"CREATE TABLE IF NOT EXISTS {keyspace}.kv (k bigint PRIMARY KEY, v blob)")
        insert = session.prepare(f"INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)")
        args = [(k, PAYLOAD) for k in range(requests)]
        execute_concurrent_with_args(session, insert, args[:1000], concurrency=concurrency)  # warm up
        started = time.process_time()
        for ok, result in execute_concurrent_with_args(session, insert, args, concurrency=concurrency,
                                                       raise_on_first_error=True, results_generator=True):
            if not ok:
                raise RuntimeError(f"calibration request failed: {result!r}")
        return requests / (time.process_time() - started)
    finally:
        cluster.shutdown()


class ProductCpu:
    """CPU of the dev host processes: totals from outside, the split from their stats files."""

    def __init__(self) -> None:
        self.hosts: dict[int, Path] = {}

    def add(self, pid: int, stats_file: Path) -> None:
        self.hosts[pid] = stats_file

    @staticmethod
    def _process_seconds(pid: int) -> float:
        import psutil

        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            total: float = times.user + times.system
            for child in process.children(recursive=True):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            return total
        except psutil.NoSuchProcess:
            return 0.0

    def _refresh(self) -> None:
        """Ask every live dev host for its stats file (SIGUSR1) and wait until each is rewritten."""
        import os
        import signal

        waiting = {}
        for pid, path in self.hosts.items():
            try:
                before = path.stat().st_mtime_ns if path.exists() else 0
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                continue
            waiting[path] = before
        deadline = time.monotonic() + 5.0
        while waiting and time.monotonic() < deadline:
            for path, before in list(waiting.items()):
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime_ns != before:
                        del waiting[path]
            time.sleep(0.02)

    def snapshot(self) -> dict[str, float]:
        """``total`` and, summed over the hosts, ``fn:<function>`` and ``thread:<group>`` CPU seconds, and the
        garbage collector's ``gc:<generation>:<collections|seconds|collected|long>``."""
        self._refresh()
        out: dict[str, float] = {"total": 0.0}
        for pid, path in self.hosts.items():
            out["total"] += self._process_seconds(pid)
            try:
                stats = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            for name, figures in stats.get("functions", {}).items():
                out[f"fn:{name}"] = out.get(f"fn:{name}", 0.0) + figures["cpu_seconds"]
                out[f"calls:{name}"] = out.get(f"calls:{name}", 0.0) + figures["calls"]
            for group, seconds in stats.get("threads", {}).items():
                out[f"thread:{group}"] = out.get(f"thread:{group}", 0.0) + seconds
            for generation, figures in stats.get("gc", {}).items():
                for name, value in figures.items():
                    out[f"gc:{generation}:{name}"] = out.get(f"gc:{generation}:{name}", 0.0) + value
        return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """``after - before`` per key of either (a key only in ``before`` counts as 0 after)."""
    return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in {**after, **before}}


def count_losses(valid: Iterable[str], stored: Iterable[str], critical: Iterable[str], critical_present: Iterable[str],
                 stream: Iterable[str]) -> dict[str, int]:
    """Losses and duplicates of a run, from what the stores hold for the events it sent.

    * ``lost_stored``: valid events with no row in ``events_by_time_bucket``;
    * ``duplicate_stored``: rows beyond the first per event id (a redelivered batch must upsert, not add);
    * ``lost_critical``: critical events with no ``e:<id>`` document in Redis;
    * ``duplicate_critical``: critical stream entries beyond the first per event id (what a consumer of the
      stream would see twice);
    * ``lost`` and ``duplicated``: the sums. Redelivery to the ingest function is not a duplicate: only
      effects in the stores count.
    """
    valid_ids = set(valid)
    stored_counts = Counter(event_id for event_id in stored if event_id in valid_ids)
    critical_ids = set(critical)
    present = set(critical_present)
    stream_counts = Counter(event_id for event_id in stream if event_id in critical_ids)
    out = {
        "lost_stored": sum(1 for event_id in valid_ids if stored_counts[event_id] == 0),
        "duplicate_stored": sum(n - 1 for n in stored_counts.values() if n > 1),
        "lost_critical": len(critical_ids - present),
        "duplicate_critical": sum(n - 1 for n in stream_counts.values() if n > 1),
    }
    out["lost"] = out["lost_stored"] + out["lost_critical"]
    out["duplicated"] = out["duplicate_stored"] + out["duplicate_critical"]
    return out
