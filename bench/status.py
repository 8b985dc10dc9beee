"""``python -m bench status``: the operations page's cost on the local stack.

Starts a private local stack (as ``bench e2e`` does), sends ``--events`` events over
``--load-seconds`` so the arrival buckets, the change feed and Redis hold data, then:

1. **/api/status p99 at concurrency 1**: ``--requests`` sequential GETs through the
   dev host with the per-pod status cache off (``SLUICE_DASHBOARD_STATUS_CACHE_SECONDS=0``),
   so every request reads the stores. Baseline: the raw clients doing the same reads
   in the same run (the open buckets' COUNT and sample statements with
   ``execute_async``, the ``feed_state`` row, ``INFO stats``, the enrichment row, the
   dead-letter day listing, the two health probes). Target: p99 <= 50 ms.
2. **first render** in Debian's Chromium (headless, selenium): from navigation start
   to the page having drawn its first status (``window.sluiceFirstRenderMs``), median
   of ``--renders``. Baseline: the same browser's navigation to ``/api/health``
   (``loadEventEnd``). Target: <= 1 s.
3. **CPU the page's polling adds to the dev host**: the dev host's CPU time over
   ``--cpu-seconds`` with no page open, then with the page open at its default
   refresh; the difference as a percentage of one core. Target: < 5 %.

The last line ends with ``ratio <r>``: raw p50 / our p50 of the status reads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._stats import percentile

if TYPE_CHECKING:
    import psycopg
    import redis
    from azure.storage.blob import ContainerClient
    from cassandra.query import PreparedStatement
    from selenium import webdriver

    from sluice.delivery import Probe
    from sluice.localstack import LocalStack


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench status", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--renders", type=int, default=5)
    parser.add_argument("--cpu-seconds", type=float, default=30.0)
    return parser.parse_args(argv)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def _timed(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@dataclass
class _RawClients:
    """The raw clients and prepared statements of :func:`_raw_status`, made by its first call."""

    count: PreparedStatement
    sample: PreparedStatement
    feed: PreparedStatement
    latest: PreparedStatement
    redis: redis.Redis
    pg: psycopg.Connection
    blob: ContainerClient


_raw_clients: _RawClients | None = None


def _raw_status(stack: LocalStack, probe: Probe) -> None:
    """What one status computation reads, with the raw clients."""
    global _raw_clients
    import psycopg
    import redis
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.cassandra.layout import bucket_start

    values, settings = stack.values, probe.settings
    session, ks = probe.session, settings.cassandra.keyspace
    width, shards = settings.cassandra.bucket_seconds, settings.cassandra.shards
    if _raw_clients is None:
        _raw_clients = _RawClients(
            count=session.prepare(f"SELECT COUNT(*) FROM {ks}.events_by_arrival_bucket WHERE bucket = ? AND "
                                  "shard = ? AND enqueued_at >= ?"),
            sample=session.prepare(f"SELECT enqueued_at, WRITETIME(device_id) FROM {ks}.events_by_arrival_bucket "
                                   "WHERE bucket = ? AND shard = ? AND enqueued_at >= ? AND enqueued_at < ? LIMIT 64"),
            feed=session.prepare(f"SELECT watermark, updated_at FROM {ks}.feed_state WHERE name = ?"),
            latest=session.prepare(f"SELECT * FROM {ks}.device_latest WHERE device_id = ?"),
            redis=redis.Redis.from_url(values["SLUICE_REDIS_URL"]),
            pg=psycopg.connect(f"host={values['SLUICE_POSTGRES_HOST']} port={values['SLUICE_POSTGRES_PORT']} "
                               f"user=postgres dbname={values['SLUICE_POSTGRES_DBNAME']}", autocommit=True),
            blob=BlobServiceClient.from_connection_string(values["AzureWebJobsStorage"]).get_container_client(
                values["SLUICE_STORAGE_DEADLETTER_CONTAINER"]),
        )
    c = _raw_clients
    now = datetime.now(UTC)
    current = bucket_start(now, width)
    starts = [(current, current), (current - timedelta(seconds=width), current - timedelta(seconds=width)),
              (bucket_start(now - timedelta(seconds=60), width), now - timedelta(seconds=60)),
              (bucket_start(now - timedelta(seconds=300), width), now - timedelta(seconds=300))]
    futures = [session.execute_async(c.count, (start, shard, since)) for start, since in starts
               for shard in range(shards)]
    # the delay sample: two reads per shard, over each half of the bucket (CassandraArrivalStats staggers them)
    futures += [session.execute_async(c.sample, (start, shard, low, low + timedelta(seconds=width / 2)))
                for start, _ in starts[:2] for shard in range(shards)
                for low in (start, start + timedelta(seconds=width / 2))]
    futures.append(session.execute_async(c.feed, ("events_by_id",)))
    futures.append(session.execute_async(c.latest, ("#probe",)))
    for future in futures:
        future.result()
    c.redis.info("stats")
    c.redis.ping()
    c.pg.execute("SELECT watermark, updated_at FROM enrichment_state WHERE name = 'default'").fetchone()
    day = now.strftime("%Y/%m/%d")
    for prefix in ("rejected/", "batches/"):
        with contextlib.suppress(ResourceNotFoundError):  # no container yet: nothing dead-lettered
            list(c.blob.list_blobs(name_starts_with=f"{prefix}{day}/"))


def _browser() -> webdriver.Chrome:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def _script(driver: webdriver.Chrome, script: str) -> Any:
    """What ``script`` returns in the page, as selenium converts it from JSON (so of no fixed type)."""
    return driver.execute_script(script)  # type: ignore[no-untyped-call]  # not annotated in selenium


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from bench import e2e

    with tempfile.TemporaryDirectory(prefix="sluice-bench-status-") as workdir:
        bench = e2e.Bench(e2e.parse_args([]), Path(workdir))  # e2e's defaults (Bench reads args.workers)
        bench.stack.options.overrides["SLUICE_DASHBOARD_STATUS_CACHE_SECONDS"] = "0"
        try:
            bench.start()
            from sluice.loadgen import LoadRunner, LoadSpec

            spec = LoadSpec(devices=200, rate=args.events / args.load_seconds, count=args.events, critical_ratio=0.02,
                            duplicate_ratio=0, invalid_ratio=0.005, out_of_order_ratio=0)
            LoadRunner(spec, bench.sender).run()
            time.sleep(3)
            stack, host = bench.stack, bench.stack.devhost
            if host is None:
                raise RuntimeError("the local stack has no dev host after start()")
            api = f"http://{host.address}/api"
            body = json.loads(_get(f"{api}/status"))
            print(f"status after the load: {body['throughput']['events_last_5_minutes']} events in 5 min, "
                  f"dead letters {body['dead_letters']}", flush=True)

            ours, raw = [], []
            for _ in range(max(1, args.requests // 20)):  # alternate blocks: other load hits both alike
                ours += _timed(lambda: _get(f"{api}/status"), 20)
                raw += _timed(lambda: _raw_status(stack, bench.probe), 20)

            driver = _browser()
            try:
                renders: list[float] = []
                navigations: list[float] = []
                for _ in range(args.renders):
                    driver.get(f"{api}/dashboard")
                    deadline = time.monotonic() + 10
                    while _script(driver, "return window.sluiceFirstRenderMs === undefined"):
                        if time.monotonic() > deadline:
                            raise RuntimeError("the page drew no status within 10 s")
                        time.sleep(0.02)
                    renders.append(_script(driver, "return window.sluiceFirstRenderMs"))
                    driver.get(f"{api}/health")
                    time.sleep(0.2)
                    navigations.append(_script(
                        driver, "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd"))
                pid = host.process.pid
                before, started = _cpu_seconds(pid), time.monotonic()
                time.sleep(args.cpu_seconds)
                idle = (_cpu_seconds(pid) - before) / (time.monotonic() - started) * 100
                driver.get(f"{api}/dashboard")
                before, started = _cpu_seconds(pid), time.monotonic()
                time.sleep(args.cpu_seconds)
                polling = (_cpu_seconds(pid) - before) / (time.monotonic() - started) * 100
            finally:
                driver.quit()
        finally:
            bench.stop()

    p50, p99 = percentile(ours, 0.5), percentile(ours, 0.99)
    raw_p50, raw_p99 = percentile(raw, 0.5), percentile(raw, 0.99)
    print(f"/api/status (cache off), concurrency 1: p50 {p50:.1f} ms  p99 {p99:.1f} ms  (target p99 <= 50 ms)")
    print(f"raw clients, same reads:               p50 {raw_p50:.1f} ms  p99 {raw_p99:.1f} ms")
    print(f"first render: median {statistics.median(renders):.0f} ms, max {max(renders):.0f} ms (target <= 1000 ms); "
          f"baseline /api/health navigation median {statistics.median(navigations):.0f} ms")
    print(f"dev host CPU: idle {idle:.2f} %, with the page polling {polling:.2f} %: "
          f"+{polling - idle:.2f} % of a core (target < 5 %)")
    print(f"status reads: ratio {raw_p50 / p50:.2f}")
    return 0
