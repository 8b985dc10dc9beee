"""``python -m bench e2e``: the local pipeline end to end, on this machine.

Starts a private local stack (in-memory emulators and Azurite on free ports, its
own PostgreSQL database, keyspace and Redis prefix; the dev host running
function_app.py with the change feed every second), then:

1. **sustained rate**: sends load at increasing rates (``--rates``), each for
   ``--step-seconds``; a rate is sustained when the ingest lag (events enqueued
   but not yet checkpointed by the ingest function) at the end of the step is at
   most ``--max-lag-seconds`` worth of events and no longer growing. The stack
   drains between steps. Reports the highest sustained rate.
2. **critical latency**: sends ``--latency-rate`` events/s (2,000 by default) for
   ``--latency-seconds`` with 1% critical events and measures, per critical event,
   the delay from the start of its send to its first appearance in Redis (the
   change feed's ``e:<id>`` flag), polled every 50 ms. Events that never show up
   within ``--latency-timeout`` count as that timeout. Prints p50 and p99, and the
   same at the highest sustained rate.

The target is p99 <= change feed interval + 1 s. The last line is
``ratio <target / p99 at the latency rate>`` (>= 1 meets the target). Everything
shares the machine's cores: the producer, the emulators, the dev host and this
process, so the figures are what this machine does with all of it running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

CHANGEFEED_INTERVAL_SECONDS = 1.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rates",
        default="100,200,300,400,600,800,1200,1600,2400,3200",
        help="comma-separated events/s to try, ascending",
    )
    parser.add_argument("--step-seconds", type=float, default=20.0)
    parser.add_argument("--max-lag-seconds", type=float, default=3.0,
                        help="a step is sustained if its final lag is at most this many seconds of events")
    parser.add_argument("--latency-rate", type=float, default=2000.0)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--latency-timeout", type=float, default=60.0)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    return parser.parse_args(argv)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from sluice.localstack import LocalStack, StackOptions

        self.args = args
        tag = uuid.uuid4().hex[:10]
        options = StackOptions(
            data_dir=workdir, http_port=0, eventhubs_port=0, cassandra_port=0, azurite_port=0, keyvault_port=0,
            persist=False, database=f"sluice_bench_{tag}", keyspace=f"bench_{tag}", redis_prefix=f"sluice-bench:{tag}:",
            stop_services=False,
            overrides={"SLUICE_CHANGEFEED_SCHEDULE": f"*/{int(CHANGEFEED_INTERVAL_SECONDS)} * * * * *"},
        )
        self.stack = LocalStack(options, say=lambda text: print(text, flush=True))
        self.sent_by_partition: dict[str, int] = {}
        self._live = None

    def start(self) -> None:
        stack = self.stack
        stack.ensure_postgres()
        stack.ensure_redis()
        stack.start_azurite()
        stack.start_cassandra()
        stack.start_eventhubs()
        stack.write_settings()
        stack.create_database()
        stack.migrate()
        if stack.reference_command():
            stack.sluice(*stack.reference_command(), what="sample reference data")
        stack.start_devhost(env={"DEVHOST_LOG_LEVEL": "WARNING"})
        from sluice.delivery import Probe
        from sluice.loadgen import EventHubSender

        self.probe = Probe(stack.values)
        self.sender = EventHubSender(stack.eventhub_connection, stack.values["SLUICE_INGEST_EVENTHUB_NAME"])

    def stop(self) -> None:
        import psycopg
        from psycopg import sql

        with contextlib.suppress(Exception):
            self.sender.close()
        with contextlib.suppress(Exception):
            self.probe.close()
        self.stack.stop()
        opts = self.stack.options
        with contextlib.suppress(Exception), psycopg.connect(
                f"host={opts.postgres_host} port={opts.postgres_port} user=postgres dbname=postgres",
                autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(opts.database)))
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(opts.redis_url)
            keys = list(client.scan_iter(match=opts.redis_prefix + "*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])
            client.close()

    # --- lag: what we sent per partition minus what the ingest function checkpointed ---

    def lag(self) -> int:
        checkpoints = self.probe.checkpoints()
        sent = dict(self.sent_by_partition)
        if self._live is not None:  # the run in progress
            for pid, n in list(self._live.by_partition.items()):
                sent[pid] = sent.get(pid, 0) + n
        return sum(max(0, n - (checkpoints.get(pid, -1) + 1)) for pid, n in sent.items())

    def _count(self, summary) -> None:
        for pid, n in summary.by_partition.items():
            self.sent_by_partition[pid] = self.sent_by_partition.get(pid, 0) + n

    def drain(self) -> float:
        started = time.monotonic()
        while self.lag() > 0 and time.monotonic() - started < self.args.drain_timeout:
            time.sleep(0.5)
        return time.monotonic() - started

    def run_load(self, rate: float, seconds: float, *, critical_ratio: float, on_tick=None, manifest=None):
        from sluice.loadgen import LoadRunner, LoadSpec

        spec = LoadSpec(
            devices=self.args.devices,
            rate=rate,
            count=round(rate * seconds),
            critical_ratio=critical_ratio,
            duplicate_ratio=0.0,
            invalid_ratio=0.0,
            out_of_order_ratio=0.0,
            device_prefix="dev-",
        )
        runner = LoadRunner(spec, self.sender, manifest=manifest, on_progress=on_tick)
        self._live = runner.summary
        try:
            summary = runner.run()
        finally:
            self._live = None
        self._count(summary)
        return summary

    # --- 1. sustained rate ---

    def step(self, rate: float) -> tuple[bool, dict]:
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.wait(1.0):
                with contextlib.suppress(Exception):
                    samples.append((time.monotonic() - started, self.lag()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        summary = self.run_load(rate, self.args.step_seconds, critical_ratio=0.01)
        stop.set()
        sampler.join()
        final = self.lag()
        half = [lag for t, lag in samples if t >= self.args.step_seconds / 2]
        growing = len(half) >= 3 and half[-1] > half[0] + rate  # more than a second's worth added in the second half
        bounded = final <= self.args.max_lag_seconds * rate and not growing
        figures = {"rate": rate, "achieved": round(summary.rate), "final_lag": final,
                   "max_lag": max([lag for _, lag in samples] + [final]), "growing": growing}
        return bounded, figures

    # --- 2. critical latency ---

    def latency(self, rate: float, seconds: float) -> dict:
        prefix = self.stack.options.redis_prefix
        pending: dict[str, float] = {}
        delays: list[float] = []
        lock = threading.Lock()
        done = threading.Event()

        class Tap:
            """A manifest stand-in: keeps the send time of every critical event (``Planned.manifest_record`` lines)."""

            def writelines(self, lines) -> None:
                for line in lines:
                    record = json.loads(line)
                    if record.get("critical"):
                        with lock:
                            pending[record["event_id"]] = record["sent_at"]

            def flush(self) -> None:
                pass

        def poll() -> None:
            client = self.probe.redis
            while not done.is_set() or pending:
                with lock:
                    ids = list(pending)
                if ids:
                    with client.pipeline(transaction=False) as pipe:
                        for event_id in ids:
                            pipe.hget(f"{prefix}e:{event_id}", "s")
                        flags = pipe.execute()
                    now = time.time()
                    with lock:
                        for event_id, flag in zip(ids, flags, strict=True):
                            if flag:
                                delays.append(now - pending.pop(event_id))
                            elif now - pending[event_id] > self.args.latency_timeout:
                                delays.append(self.args.latency_timeout)
                                pending.pop(event_id)
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        summary = self.run_load(rate, seconds, critical_ratio=0.01, manifest=Tap())
        done.set()
        poller.join(self.args.latency_timeout + 10)
        delays.sort()
        return {
            "rate": rate, "achieved": round(summary.rate), "critical": len(delays),
            "p50": _quantile(delays, 0.50), "p99": _quantile(delays, 0.99), "max": delays[-1] if delays else None,
            "timed_out": sum(1 for d in delays if d >= self.args.latency_timeout),
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    with tempfile.TemporaryDirectory(prefix="sluice-bench-e2e-") as workdir:
        bench = Bench(args, Path(workdir))
        try:
            print("starting a private local stack (in-memory emulators, free ports)", flush=True)
            bench.start()
            sustained = None
            for rate in rates:
                bounded, figures = bench.step(rate)
                drained = bench.drain()
                print(f"step {rate:>7.0f}/s: achieved {figures['achieved']}/s, lag at end {figures['final_lag']}, "
                      f"max {figures['max_lag']}, growing {figures['growing']}, drained in {drained:.1f}s -> "
                      f"{'sustained' if bounded else 'NOT sustained'}", flush=True)
                if not bounded:
                    break
                sustained = figures["achieved"]
            print(f"highest sustained rate: {sustained if sustained is not None else 'none of the rates tried'} "
                  "events/s", flush=True)
            results = []
            if sustained:
                results.append(("sustained", bench.latency(sustained, args.latency_seconds)))
                bench.drain()
            results.append(("target", bench.latency(args.latency_rate, args.latency_seconds)))
        finally:
            bench.stop()
    target = CHANGEFEED_INTERVAL_SECONDS + 1.0
    for label, r in results:
        p50 = "n/a" if r["p50"] is None else f"{r['p50']:.3f}s"
        p99 = "n/a" if r["p99"] is None else f"{r['p99']:.3f}s"
        print(f"send -> critical in Redis at {r['rate']:.0f}/s ({label}; achieved {r['achieved']}/s, "
              f"{r['critical']} critical events, {r['timed_out']} not seen within {args.latency_timeout:.0f}s): "
              f"p50 {p50}, p99 {p99}", flush=True)
    final = results[-1][1]
    ratio = target / final["p99"] if final["p99"] else 0.0
    print(f"target p99 <= change feed interval + 1 s = {target:.1f}s at {args.latency_rate:.0f}/s: "
          f"{'met' if ratio >= 1 else 'NOT met'}; ratio {ratio:.3f}")
    return 0
