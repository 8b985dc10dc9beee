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
   change feed's ``e:<id>`` document), polled every 50 ms. Events that never show up
   within ``--latency-timeout`` count as that timeout. Prints p50 and p99, and the
   same at the highest sustained rate.

3. **CPU per event** (``--phases cpu``): sends ``--cpu-rate`` events/s for
   ``--cpu-seconds`` (1% critical), waits until every event is fully delivered
   (stored once, critical ones in Redis, their windows enriched and equal to a
   computation from the stored events: :func:`sluice.delivery.check_delivery`) and
   divides the events delivered by the CPU seconds of the dev host processes over
   that span (psutil on their PIDs and children; not the emulators, Azurite, the load
   generator or this process). The split per stage is each function's own CPU
   (``time.thread_time`` of the pool thread of each invocation, written by the dev host
   to ``DEVHOST_CPU_STATS_FILE``), plus the shared threads: the host's event loop
   (Event Hubs receiving, checkpoints), the cassandra-driver's I/O thread. The
   calibration C is the raw cassandra-driver's prepared INSERTs per CPU-second of
   this process against the null CQL server, measured before and after (mean).
   Prints ``events per product CPU-second N (calibration C, ratio R)``, R = N / C. If the
   wait gives up (``--delivery-timeout``), no event counts as delivered: it prints how
   far delivery got and no figure per event.
   Cassandra requests per event are counted by a proxy in front of the emulator
   (native protocol frame headers: QUERY, EXECUTE, BATCH and the statements in batches).
   Last, the host's part done by the Event Hubs SDK alone on the same events
   (``bench._e2e_sdk_floor``: receive only, then with a checkpoint every batch) and the
   product's N and R had the host's part cost only that. Then the worker's I/O on the same
   events done by the raw clients alone (``bench._e2e_client_floor``: the driver's writes
   of ingest's rows, its reads of the change feed and of the windows, Redis's pipelines,
   PostgreSQL's COPY), and with the SDK's part the events per CPU-second and ratio of the
   clients alone: the ceiling of any pipeline doing this I/O with these clients.
4. **scale-out** (``--workers 2``): the capacity of one dev host (the rate at
   which it works off ``--scale-rate`` sent for ``--scale-seconds``), then a second
   dev host joins while load runs, the capacity of two, and the second one is
   killed (SIGKILL) while load runs. Both share the partitions through the blob
   checkpoint store's ownership blobs, as two pods would. Events lost or duplicated
   over the join and the kill are counted from the stores (see :func:`losses`).

The target is p99 <= change feed interval + 1 s. The last line is
``target margin <target> s / p99 <m>`` at the latency rate (>= 1 meets the target):
a margin to a target, not a comparison with a baseline. The same-work comparison is
the cpu phase's ``the product costs <x> times that`` (the product's CPU per event
against the raw clients alone doing the same I/O on the same events). Everything
shares the machine's cores: the producer, the emulators, the dev host and this
process, so the figures are what this machine does with all of it running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypedDict

from bench._e2e_cpu import CqlCounter, ProductCpu
from bench._stats import percentile

if TYPE_CHECKING:
    from datetime import datetime

    from bench._e2e_client_floor import ClientFloor
    from bench._e2e_sdk_floor import SdkFloorRun
    from shared.adapters.redis.client import Client
    from sluice.delivery import DeliveryReport, Probe
    from sluice.launcher import Running
    from sluice.loadgen import Expected, Summary

ROOT = Path(__file__).resolve().parent.parent

CHANGEFEED_INTERVAL_SECONDS = 1.0


class StepFigures(TypedDict):
    """One step of the sustained-rate phase (:meth:`Bench.step`)."""

    rate: float
    achieved: int
    final_lag: int
    max_lag: int
    growing: bool


class Latency(TypedDict):
    """Send-to-Redis delays of the critical events at one rate (:meth:`Bench.latency`), in seconds."""

    rate: float
    achieved: int
    critical: int
    p50: float | None
    p99: float | None
    max: float | None
    timed_out: int


class SdkFloor(TypedDict):
    """The Event Hubs SDK alone on the same events (:meth:`Bench.sdk_floor`)."""

    batch: int
    receive: SdkFloorRun
    checkpoint: SdkFloorRun


class CpuFigures(TypedDict):
    """The CPU phase (:meth:`Bench.cpu_phase`), printed by :func:`print_cpu`."""

    sdk_floor: SdkFloor
    client_floor: ClientFloor
    sent: int
    achieved: int
    delivered: int
    problems: list[str]
    delivery: dict[str, int]
    span: float
    cpu: dict[str, float]
    idle_cpu_per_s: float
    idle_host_cpu_per_s: float
    idle_by_part: dict[str, float]
    requests: dict[str, int]
    batched_statements: int
    calibration: tuple[float, float]


class Capacity(TypedDict):
    """What the workers worked off at ``--scale-rate`` (:meth:`Bench.capacity`)."""

    sent: int
    achieved: int
    elapsed: float
    rate: float
    load_bound: bool  # the workers kept up with the producer: ``rate`` is the producer's, a lower bound
    lag: int


class ScaleFigures(TypedDict):
    """The scale-out phase (:meth:`Bench.scale_phase`), printed by :func:`print_scale`."""

    one: Capacity
    two: Capacity
    losses: dict[str, int]
    problems: list[str]
    events: int


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
    parser.add_argument("--phases", default=None,
                        help="comma-separated: cpu, steps, latency, or none (default: all three; none with "
                             "--workers 2, which adds scale)")
    parser.add_argument("--cpu-rate", type=float, default=1000.0)
    parser.add_argument("--cpu-seconds", type=float, default=30.0)
    parser.add_argument("--calibration-requests", type=int, default=20000)
    parser.add_argument("--delivery-timeout", type=float, default=120.0)
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1,
                        help="2: the scale-out phase with a second dev host")
    parser.add_argument("--scale-rate", type=float, default=3000.0)
    parser.add_argument("--scale-seconds", type=float, default=20.0)
    parser.add_argument("--churn-rate", type=float, default=500.0, help="load while a worker joins or is killed")
    parser.add_argument("--churn-seconds", type=float, default=40.0)
    args = parser.parse_args(argv)
    measured = {"cpu", "steps", "latency"}
    if args.workers > 1:
        # The stack of --workers 2 runs the scale-out settings (60 s allowed lateness, 2 s load balancing, 6 s
        # ownership): the cpu, steps and latency figures would be of those settings, not of the defaults.
        args.phases = args.phases or "none"
        mixed = sorted(measured & {p.strip() for p in args.phases.split(",")})
        if mixed:
            parser.error(f"--workers 2 runs the scale-out settings, so it cannot measure {', '.join(mixed)}: "
                         "run those phases without --workers 2")
    args.phases = args.phases or "cpu,steps,latency"
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from sluice.localstack import LocalStack, StackOptions

        self.args = args
        tag = uuid.uuid4().hex[:10]
        options = StackOptions(
            data_dir=workdir, http_port=0, eventhubs_port=0, cassandra_port=0, azurite_port=0, keyvault_port=0,
            persist=False, database=f"sluice_bench_{tag}", keyspace=f"bench_{tag}", redis_prefix=f"sluice-bench:{tag}:",
            stop_services=False,
            overrides={"SLUICE_CHANGEFEED_SCHEDULE": f"*/{int(CHANGEFEED_INTERVAL_SECONDS)} * * * * *",
                       # short windows, so "fully delivered" (enriched) is reached seconds after the load; the
                       # lateness must exceed the ingest lag (enrichment's late scan goes by enqueue time), which the
                       # partition hand-overs of --workers 2 push to tens of seconds
                       "SLUICE_ENRICH_WINDOW_SECONDS": "10",
                       "SLUICE_ENRICH_ALLOWED_LATENESS_SECONDS": "60" if args.workers > 1 else "5",
                       "SLUICE_ENRICH_SCHEDULE": "*/5 * * * * *",
                       # a fresh stack holds no events before the load: with the default hour of look-back, the first
                       # runs would enrich 360 empty windows, 24 a run, well into the load, and charge that start-up
                       # catch-up to the events (it was 15 CPU-ms a second of the idle cost)
                       "SLUICE_ENRICH_INITIAL_LOOKBACK_SECONDS": "60"},
        )
        self.workdir = workdir
        self.cpu = ProductCpu()
        self.counter: CqlCounter | None = None
        self.null: Running | None = None
        self.workers: list[Running] = []
        self.stack = LocalStack(options, say=lambda text: print(text, flush=True))
        self.sent_by_partition: dict[str, int] = {}
        self._live: Summary | None = None

    def start(self) -> None:
        stack = self.stack
        stack.ensure_postgres()
        stack.ensure_redis()
        stack.start_azurite()
        stack.start_cassandra()
        direct = stack.ports["cassandra"]
        ca = stack.own.ca if stack.own is not None else None  # our own services: the emulator speaks TLS
        self.counter = CqlCounter(stack.options.host, direct,
                                  tls=(ca.cert_file, ca.key_file, ca.ca_file) if ca is not None else None)
        stack.ports["cassandra"] = self.counter.port  # the dev hosts' requests are counted
        stack.start_eventhubs()
        stack.start_keyvault()  # the stack's own stores take their passwords from it
        stack.write_settings()
        stack.create_database()
        stack.migrate()
        reference = stack.reference_command()
        if reference:
            stack.sluice(*reference, what="sample reference data")
        running = stack.start_devhost(env=self._devhost_env(1))
        self.cpu.add(running.process.pid, self.workdir / "cpu-1.json")
        self.workers.append(running)
        from sluice.delivery import Probe
        from sluice.launcher import python_module, start
        from sluice.loadgen import EventHubSender

        self.probe_values = {**stack.values, "SLUICE_CASSANDRA_PORT": str(direct)}  # not through the counter
        self.probe = Probe(self.probe_values)
        self.null = start("null-cql-server", python_module("bench", "cassandra_emulator", "--null-server"), timeout=60)
        self.sender = EventHubSender(stack.eventhub_connection, stack.values["SLUICE_INGEST_EVENTHUB_NAME"])

    def _devhost_env(self, number: int) -> dict[str, str]:
        env = {"DEVHOST_LOG_LEVEL": "WARNING", "DEVHOST_CPU_STATS_FILE": str(self.workdir / f"cpu-{number}.json")}
        if self.args.workers > 1:
            # faster hand-over of partitions than the 10 s / 30 s defaults, so the drills take seconds (it costs
            # a blob listing every 2 s per worker, so only with --workers 2, which refuses the cpu phase)
            env.update({"DEVHOST_EVENTHUBS_LOAD_BALANCING_SECONDS": "2",
                        "DEVHOST_EVENTHUBS_OWNERSHIP_EXPIRATION_SECONDS": "6"})
        return env

    def worker_environment(self, number: int) -> tuple[dict[str, str], set[str]]:
        """Dev host ``number``'s own settings, and the inherited ones its environment leaves out: as for the stack's
        own dev host, a connection setting inherited from the shell (an earlier run's settings.env) would wire the
        worker to another stack's hub or storage, and its events would not count here."""
        env = self._devhost_env(number)
        return env, self.stack.inherited_settings() - env.keys()

    def start_worker(self, number: int) -> Running:
        from sluice.launcher import python_module, start

        stack = self.stack
        env, unset = self.worker_environment(number)
        running = start(f"devhost-{number}", python_module(
            "devhost", "--settings", str(stack.settings_path), "--host", stack.options.host, "--port", "0",
            "--script-root", str(Path(__file__).resolve().parent.parent)), timeout=90, env=env, unset=unset,
            cwd=str(Path(__file__).resolve().parent.parent))
        self.cpu.add(running.process.pid, self.workdir / f"cpu-{number}.json")
        self.workers.append(running)
        return running

    def stop(self) -> None:
        import psycopg
        from psycopg import sql

        for running in self.workers[1:]:  # the first is the stack's
            with contextlib.suppress(Exception):
                running.stop(stop_timeout=20)
        if self.null is not None:
            with contextlib.suppress(Exception):
                self.null.stop()
        if self.counter is not None:
            self.counter.close()

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

    def _count(self, summary: Summary) -> None:
        for pid, n in summary.by_partition.items():
            self.sent_by_partition[pid] = self.sent_by_partition.get(pid, 0) + n

    def drain(self) -> float:
        started = time.monotonic()
        while self.lag() > 0 and time.monotonic() - started < self.args.drain_timeout:
            time.sleep(0.5)
        return time.monotonic() - started

    def run_load(self, rate: float, seconds: float, *, critical_ratio: float,
                 on_tick: Callable[[Summary], None] | None = None, manifest: IO[str] | None = None) -> Summary:
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

    def step(self, rate: float) -> tuple[bool, StepFigures]:
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
        figures: StepFigures = {"rate": rate, "achieved": round(summary.rate), "final_lag": final,
                                "max_lag": max([lag for _, lag in samples] + [final]), "growing": growing}
        return bounded, figures

    # --- 2. critical latency ---

    def latency(self, rate: float, seconds: float) -> Latency:
        pending: dict[str, float] = {}
        delays: list[float] = []
        lock = threading.Lock()
        done = threading.Event()

        class Tap:
            """A manifest stand-in: keeps the send time of every critical event (``Planned.manifest_record`` lines)."""

            def writelines(self, lines: Iterable[str]) -> None:
                for line in lines:
                    record = json.loads(line)
                    if record.get("critical"):
                        with lock:
                            pending[record["event_id"]] = record["sent_at"]

            def flush(self) -> None:
                pass

        def poll() -> None:
            while not done.is_set() or pending:
                with lock:
                    ids = list(pending)
                if ids:
                    seen = self.probe.critical_in_redis(ids)  # the change feed's e:<id> document
                    now = time.time()
                    with lock:
                        for event_id in ids:
                            if event_id in seen:
                                delays.append(now - pending.pop(event_id))
                            elif now - pending[event_id] > self.args.latency_timeout:
                                delays.append(self.args.latency_timeout)
                                pending.pop(event_id)
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        summary = self.run_load(rate, seconds, critical_ratio=0.01,
                                manifest=Tap())  # type: ignore[arg-type]  # LoadRunner calls writelines and flush only
        done.set()
        poller.join(self.args.latency_timeout + 10)
        delays.sort()
        return {
            "rate": rate, "achieved": round(summary.rate), "critical": len(delays),
            "p50": _quantile(delays, 0.50), "p99": _quantile(delays, 0.99), "max": delays[-1] if delays else None,
            "timed_out": sum(1 for d in delays if d >= self.args.latency_timeout),
        }


    # --- 3. CPU per event ---

    def deliver(self, manifests: list[Path], since: datetime) -> tuple[Expected, DeliveryReport]:
        """Wait until the events of ``manifests`` are fully delivered (or the timeout); the expected set and report."""
        from sluice.delivery import check_delivery
        from sluice.loadgen import Expected, read_manifest

        expected = Expected()
        for path in manifests:
            part = read_manifest(path)
            expected.valid.update(part.valid)
        started = time.monotonic()
        self.drain()
        drained = time.monotonic() - started
        deadline = time.monotonic() + self.args.delivery_timeout
        said = time.monotonic()
        while True:
            report = check_delivery(expected, self.probe, features={"changefeed", "enrichment"}, since=since)
            if report.ok or time.monotonic() > deadline:
                print(f"delivery: ingest drained {drained:.1f}s after the load, everything delivered "
                      f"{time.monotonic() - started:.1f}s after it" if report.ok else
                      f"delivery: NOT complete {time.monotonic() - started:.1f}s after the load", flush=True)
                return expected, report
            if time.monotonic() >= said + 10:
                said = time.monotonic()
                print(f"delivery: waiting: {(report.problems or [''])[0][:160]}", flush=True)
            time.sleep(1.0)

    def cpu_phase(self) -> CpuFigures:
        from datetime import UTC, datetime

        from bench._e2e_cpu import calibrate, delta

        args = self.args
        null, counter = self.null, self.counter
        if null is None or counter is None:
            raise RuntimeError("the CPU phase needs start() first: the null CQL server and the request counter")
        host, port = null.host, null.port
        time.sleep(10.0)  # let start-up work (first runs of the timers) settle
        idle0 = self.cpu.snapshot()
        time.sleep(10.0)
        idle_used = delta(self.cpu.snapshot(), idle0)
        idle = idle_used["total"] / 10.0
        idle_host = (idle_used.get("thread:host-loop", 0.0) + idle_used.get("thread:to-thread", 0.0)) / 10.0
        c1 = calibrate(host, port, args.calibration_requests)
        before, (req0, st0) = self.cpu.snapshot(), counter.totals()
        since = datetime.now(UTC)
        started = time.monotonic()
        manifest = self.workdir / "cpu.manifest.jsonl"
        with manifest.open("w", encoding="utf-8") as handle:
            summary = self.run_load(args.cpu_rate, args.cpu_seconds, critical_ratio=0.01, manifest=handle)
        _expected, report = self.deliver([manifest], since)
        span = time.monotonic() - started
        after, (req1, st1) = self.cpu.snapshot(), counter.totals()
        c2 = calibrate(host, port, args.calibration_requests)
        used = delta(after, before)
        requests = req1 - req0
        invocations = int(used.get("calls:ingest", 0))
        sent = sum(self.sent_by_partition.values())
        batch = max(1, round(summary.sent / invocations)) if invocations else 256
        floor = self.sdk_floor(sent, batch=batch)
        # The check's figures count each part apart (events stored, critical ones in Redis, windows enriched), not
        # which events got through all of them: until it passes, no event is known to be fully delivered.
        delivered = report.figures.get("stored", 0) if report.ok else 0
        return {"sdk_floor": floor, "client_floor": self.client_floor(sent, batch=batch),
                "sent": summary.sent, "achieved": round(summary.rate), "delivered": delivered,
                "problems": report.problems, "delivery": report.figures, "span": span, "cpu": used,
                "idle_cpu_per_s": idle,
                "idle_host_cpu_per_s": idle_host, "idle_by_part": {k: v / 10.0 for k, v in idle_used.items()},
                "requests": dict(requests), "batched_statements": st1 - st0, "calibration": (c1, c2)}

    def sdk_floor(self, events: int, *, batch: int) -> SdkFloor:
        """The host's part done by the Event Hubs SDK alone on the events sent so far (``bench._e2e_sdk_floor``):
        receive only, then receive and checkpoint every batch (own consumer group and checkpoint container)."""
        from sluice.launcher import python_module

        stack = self.stack
        env = {**os.environ, "SDK_FLOOR_EVENTHUB": stack.eventhub_connection,
               "SDK_FLOOR_STORAGE": stack.storage_connection}
        event_hubs = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))["extensions"]["eventHubs"]
        results: dict[str, SdkFloorRun] = {}
        for name, extra in (("receive", []), ("checkpoint", ["--checkpoint-container", "bench-sdk-floor"])):
            done = subprocess.run(
                python_module("bench._e2e_sdk_floor", "--hub", stack.values["SLUICE_INGEST_EVENTHUB_NAME"],
                              "--events", str(events), "--batch", str(batch),
                              "--prefetch", str(event_hubs.get("prefetchCount", 300)), *extra),
                env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"the SDK floor ({name}) failed: {(done.stderr or done.stdout)[-2000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        return {"batch": batch, "receive": results["receive"], "checkpoint": results["checkpoint"]}

    def client_floor(self, events: int, *, batch: int) -> ClientFloor:
        """The worker's I/O on the events sent so far, done by the raw clients alone (``bench._e2e_client_floor``)."""
        from sluice.launcher import python_module

        stack = self.stack
        env = {**os.environ, "CLIENT_FLOOR_VALUES": json.dumps(self.probe_values),
               "CLIENT_FLOOR_EVENTHUB": stack.eventhub_connection}
        done = subprocess.run(
            python_module("bench._e2e_client_floor", "--hub", stack.values["SLUICE_INGEST_EVENTHUB_NAME"],
                          "--events", str(events), "--batch", str(batch)),
            env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the client floor failed: {(done.stderr or done.stdout)[-2000:]}")
        floor: ClientFloor = json.loads(done.stdout.strip().splitlines()[-1])
        return floor

    # --- 4. scale-out ---

    def capacity(self) -> Capacity:
        """Send ``--scale-rate`` for ``--scale-seconds``; the rate at which the workers checkpoint all of it."""
        started = time.monotonic()
        summary = self.run_load(self.args.scale_rate, self.args.scale_seconds, critical_ratio=0.01)
        sent_by = time.monotonic()
        self.drain()
        elapsed = time.monotonic() - started
        lag = self.lag()
        # Sending takes --scale-seconds whatever the workers do: when they were done (almost) as soon as the
        # producer, the rate is the producer's, and the workers' capacity is higher by an unknown amount.
        load_bound = lag == 0 and time.monotonic() - sent_by < 0.1 * (sent_by - started)
        # Only what was checkpointed counts: drain gives up after --drain-timeout, and a stuck worker must not be
        # rated at the sent count over the elapsed time.
        return {"sent": summary.sent, "achieved": round(summary.rate), "elapsed": elapsed,
                "rate": max(0, summary.sent - lag) / elapsed, "load_bound": load_bound, "lag": lag}

    def churn(self, name: str, action: Callable[[], object], at: float) -> Path:
        """Load at ``--churn-rate`` for ``--churn-seconds`` with a manifest; ``action()`` runs ``at`` seconds in."""
        manifest = self.workdir / f"{name}.manifest.jsonl"
        timer = threading.Timer(at, action)
        timer.start()
        try:
            with manifest.open("w", encoding="utf-8") as handle:
                self.run_load(self.args.churn_rate, self.args.churn_seconds, critical_ratio=0.05, manifest=handle)
        finally:
            timer.join()
        return manifest

    def owners(self) -> dict[str, int]:
        """Owner id -> partitions of the ingest consumer group it holds (ownership blobs renewed in the last 6 s)."""
        from datetime import UTC, datetime, timedelta

        from sluice.delivery import CHECKPOINT_CONTAINER

        ingest = self.probe.settings.ingest
        suffix = f"/{ingest.eventhub_name}/{ingest.consumer_group}/ownership/".lower()
        fresh = datetime.now(UTC) - timedelta(seconds=6)
        held: dict[str, int] = {}
        for blob in self.probe.blob.get_container_client(CHECKPOINT_CONTAINER).list_blobs(include=["metadata"]):
            owner = (blob.metadata or {}).get("ownerid")
            if suffix in blob.name.lower() and owner and blob.last_modified >= fresh:
                held[owner[:8]] = held.get(owner[:8], 0) + 1
        return held

    def scale_phase(self) -> ScaleFigures:
        from datetime import UTC, datetime

        since = datetime.now(UTC)
        one = self.capacity()
        print(f"scale: 1 worker works off {one['sent']} events at {_rate(one)}", flush=True)
        joined: list[Running] = []
        join = self.churn("join", lambda: joined.append(self.start_worker(2)), at=8.0)
        self.drain()
        print(f"scale: partitions per owner after the join: {self.owners()}", flush=True)
        two = self.capacity()
        print(f"scale: 2 workers work off {two['sent']} events at {_rate(two)}", flush=True)
        victim = joined[0]
        print(f"scale: partitions per owner before the kill: {self.owners()}", flush=True)
        kill = self.churn("kill", lambda: victim.process.kill(), at=self.args.churn_seconds / 3)
        print(f"scale: partitions per owner after the kill: {self.owners()}", flush=True)
        expected, report = self.deliver([join, kill], since)
        counted = losses(expected, self.probe)
        return {"one": one, "two": two, "losses": counted, "problems": report.problems,
                "events": len(expected.valid)}


def losses(expected: Expected, probe: Probe) -> dict[str, int]:
    """Events lost and duplicated in the stores for the valid events of ``expected``.

    Read back from the stores (see :func:`bench._e2e_cpu.count_losses` for the rules).
    """
    from datetime import timedelta

    from bench._e2e_cpu import count_losses
    from shared.adapters.redis import Keys
    from sluice.delivery import _iso_to_dt

    valid = expected.valid
    times = [_iso_to_dt(r["timestamp"]) for r in valid.values()]
    rows = probe.stored_rows(min(times), max(times) + timedelta(milliseconds=1))
    critical = list(expected.critical)
    present = probe.critical_in_redis(critical)
    keys = Keys(probe._redis_prefix(), probe.settings.redis.critical_stream_shards)
    client: Client = probe.redis
    stream_ids: list[str] = []
    for key in keys.streams:
        entries = client.xrange(key)
        if entries is None:  # redis-py's annotation allows it; XRANGE answers a list (empty: no stream)
            raise RuntimeError(f"XRANGE {key} answered nil")
        for entry_id, fields in entries:
            if fields is None:  # redis-py's annotation allows it; XRANGE always answers the fields
                raise RuntimeError(f"XRANGE {key} answered entry {entry_id!r} without fields")
            value = fields.get(b"event_id") or fields.get("event_id")
            if value is not None:  # an entry without an event id counts for no event
                stream_ids.append(value.decode() if isinstance(value, bytes) else value)
    return count_losses(list(valid), [str(row.event_id) for row in rows], critical, present, stream_ids)


def _quantile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of ``values`` (:func:`bench._stats.percentile`, as every bench), or None."""
    return percentile(values, q) if values else None


def print_cpu(r: CpuFigures) -> None:
    import os

    cpu = r["cpu"]
    total = cpu["total"]
    if r["problems"]:
        # Figures per event over work the product had not finished would flatter it: print none.
        figures = r["delivery"]
        print(f"cpu: sent {r['sent']} at {r['achieved']}/s, delivery NOT complete in {r['span']:.1f}s "
              f"({figures.get('stored', 0)} of {figures.get('valid', 0)} valid events stored once); product CPU "
              f"{total:.2f}s; no figures per event (N, R, us/event): the events were not all delivered", flush=True)
        for problem in r["problems"]:
            print(f"cpu: NOT delivered: {problem}", flush=True)
        return
    delivered = r["delivered"]
    c = sum(r["calibration"]) / 2
    n = delivered / total if total else 0.0
    print(f"cpu: sent {r['sent']} at {r['achieved']}/s, delivered {delivered} in {r['span']:.1f}s; product CPU "
          f"{total:.2f}s (idle cost {r['idle_cpu_per_s']:.3f} CPU-s per second, the host's part "
          f"{r.get('idle_host_cpu_per_s', 0.0):.3f}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)", flush=True)
    idle_parts = r.get("idle_by_part", {})
    print("cpu: idle cost by part, CPU-ms per second: " + ", ".join(
        f"{key.split(':', 1)[1]} {value * 1000:.1f}" for key, value in sorted(idle_parts.items())
        if key.startswith(("fn:", "thread:")) and value >= 0.0005), flush=True)
    for name in ("ingest", "changefeed", "enrichment"):
        seconds = cpu.get(f"fn:{name}", 0.0)
        calls = int(cpu.get(f"calls:{name}", 0))
        per = seconds / delivered * 1e6 if delivered else 0.0
        print(f"cpu: {name:<10} {seconds:7.2f}s in {calls} invocations, {per:6.0f} us/event (own thread)", flush=True)
    groups = ("host-loop", "functions", "cassandra-io", "to-thread", "other")
    for group in groups:
        seconds = cpu.get(f"thread:{group}", 0.0)
        per = seconds / delivered * 1e6 if delivered else 0.0
        print(f"cpu: thread {group:<12} {seconds:7.2f}s, {per:6.0f} us/event", flush=True)
    # A group keeps what its ended threads had at the dev host's last reading that saw them (devhost.cpu_stats), so
    # what a thread that ended spent in the span after that reading (all of it, for one that lived only in the
    # span: short-lived helpers) is in no group, and lands here with the rest.
    ended = total - sum(cpu.get(f"thread:{group}", 0.0) for group in groups)
    print(f"cpu: threads that ended, and the rest {ended:7.2f}s, "
          f"{ended / delivered * 1e6 if delivered else 0.0:6.0f} us/event", flush=True)
    collections = [(generation, {name: cpu.get(f"gc:{generation}:{name}", 0.0)
                                 for name in ("collections", "seconds", "collected", "long")}) for generation in "012"]
    if any(figures["collections"] for _, figures in collections):
        print("gc: " + "; ".join(
            f"generation {generation} {figures['collections']:.0f} collections, {figures['seconds'] * 1000:.0f} ms "
            f"({figures['seconds'] / delivered * 1e6 if delivered else 0.0:.1f} us/event), "
            f"{figures['collected']:.0f} objects freed, {figures['long']:.0f} over 10 ms"
            for generation, figures in collections), flush=True)
    # In Azure the Functions host (.NET) receives from Event Hubs, checkpoints and schedules; the Python worker
    # converts what it is handed and runs the functions. The dev host does both in one process: split it so.
    conversion = cpu.get("fn:ingest:input", 0.0)
    host = cpu.get("thread:host-loop", 0.0) - conversion + cpu.get("thread:to-thread", 0.0)
    worker = total - host
    n_worker = delivered / worker if worker > 0 else 0.0
    if delivered:
        print(f"cpu: the Functions host's part (Event Hubs receiving, checkpoints, timers) {host:6.2f}s, "
              f"{host / delivered * 1e6:4.0f} us/event; the worker's (the rest, event conversion "
              f"{conversion / delivered * 1e6:.0f} us/event included) {worker:6.2f}s, "
              f"{worker / delivered * 1e6:4.0f} us/event", flush=True)
    floor = r.get("sdk_floor")
    if delivered and floor:
        receive, checkpoint = floor["receive"], floor["checkpoint"]
        sdk_per = {name: f["cpu"] / f["events"] * 1e6 for name, f in (("receive", receive), ("checkpoint", checkpoint))}
        print(f"cpu: the Event Hubs SDK alone on the same events (batches of {floor['batch']}, its own process): "
              f"receive {sdk_per['receive']:.0f} us/event, receive and checkpoint every batch "
              f"{sdk_per['checkpoint']:.0f} us/event; the dev host's part is "
              f"{host / delivered * 1e6 / sdk_per['checkpoint']:.2f} times that ({receive['events']} and "
              f"{checkpoint['events']} events in {receive['seconds']:.1f}s and {checkpoint['seconds']:.1f}s)",
              flush=True)
        # What the product would do if the host's part cost only the SDK's own work: the worker's part is ours.
        floor_total = worker + sdk_per["checkpoint"] * delivered / 1e6
        print(f"events per product CPU-second with the host's part at the SDK's floor {delivered / floor_total:.0f} "
              f"(ratio {delivered / floor_total / c if c else 0:.3f})", flush=True)
        clients = r.get("client_floor")
        if clients and clients["events"]:
            # The whole pipeline's client work, once per event: the SDK's receive and checkpoints, and the
            # worker's writes and reads done by the raw clients alone. What the product spends beyond it is ours.
            parts = {name: f["cpu"] / clients["events"] * 1e6 for name, f in clients["parts"].items()}
            worker_floor = sum(parts.values())
            floor_us = sdk_per["checkpoint"] + worker_floor
            print("cpu: the raw clients alone doing the worker's I/O on the same events (its own process): "
                  + ", ".join(f"{name} {value:.0f} ({clients['parts'][name]['count']:.0f} "
                              f"{clients['parts'][name]['unit']})" for name, value in parts.items())
                  + f" us/event, {worker_floor:.0f} in all (idle {clients['idle_cpu_per_s'] * 1000:.1f} CPU-ms a "
                  f"second); the worker's part is {worker / delivered * 1e6 / worker_floor:.2f} times that",
                  flush=True)
            print(f"events per CPU-second of the clients alone (the SDK's and the worker's I/O, {floor_us:.0f} "
                  f"us/event) {1e6 / floor_us:.0f} (ratio {1e6 / floor_us / c if c else 0:.3f}); the product "
                  f"costs {total / delivered * 1e6 / floor_us:.2f} times that", flush=True)
    requests = r["requests"]
    count = sum(requests.values())
    if delivered and not count:
        print("cassandra: the counting proxy read no request frames: requests per event unknown", flush=True)
    elif delivered:
        print(f"cassandra: {count} requests ({', '.join(f'{k} {v}' for k, v in sorted(requests.items()))}; "
              f"{r['batched_statements']} statements in batches): {count / delivered:.3f} requests/event, "
              f"{(count - requests.get('batch', 0) + r['batched_statements']) / delivered:.3f} statements/event",
              flush=True)
    print(f"calibration: raw driver {r['calibration'][0]:.0f} and {r['calibration'][1]:.0f} requests per CPU-second "
          "against the null CQL server (before, after)", flush=True)
    print(f"events per worker CPU-second {n_worker:.0f} (calibration {c:.0f}, ratio {n_worker / c if c else 0:.3f})",
          flush=True)
    print(f"events per product CPU-second {n:.0f} (calibration {c:.0f}, ratio {n / c if c else 0:.3f})", flush=True)


def _rate(capacity: Capacity) -> str:
    undrained = f" ({capacity['lag']} of {capacity['sent']} never checkpointed)" if capacity["lag"] else ""
    return f"{'at least ' if capacity['load_bound'] else ''}{capacity['rate']:.0f} events/s{undrained}"


def print_scale(r: ScaleFigures) -> None:
    one, two, lost = r["one"], r["two"], r["losses"]
    bound = " (a lower bound: the workers kept up with the load, raise --scale-rate)" if two["load_bound"] else ""
    # capacity rates a worker that checkpointed nothing at 0 events/s: there is no factor, and the losses still count
    factor = f"{two['rate'] / one['rate']:.2f}" if one["rate"] else "n/a: 1 worker checkpointed nothing"
    print(f"scale: 1 worker {_rate(one)}, 2 workers {_rate(two)} "
          f"(sent at {one['achieved']}/s and {two['achieved']}/s); scaling factor {factor}{bound}", flush=True)
    print(f"scale: over the join and the kill, {r['events']} events: lost {lost['lost']} "
          f"(stored {lost['lost_stored']}, critical {lost['lost_critical']}), duplicated {lost['duplicated']} "
          f"(stored {lost['duplicate_stored']}, critical stream {lost['duplicate_critical']})", flush=True)
    for problem in r["problems"]:
        print(f"scale: delivery problem: {problem}", flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    results: list[tuple[str, Latency]] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-e2e-") as workdir:
        bench = Bench(args, Path(workdir))
        try:
            print("starting a private local stack (in-memory emulators, free ports)", flush=True)
            bench.start()
            if "cpu" in phases:
                print_cpu(bench.cpu_phase())
            sustained = None
            if "steps" in phases:
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
            if "latency" in phases:
                if sustained:
                    results.append(("sustained", bench.latency(sustained, args.latency_seconds)))
                    bench.drain()
                results.append(("target", bench.latency(args.latency_rate, args.latency_seconds)))
            if args.workers == 2:
                print_scale(bench.scale_phase())
        finally:
            bench.stop()
    if not results:
        return 0
    target = CHANGEFEED_INTERVAL_SECONDS + 1.0
    for label, r in results:
        p50 = "n/a" if r["p50"] is None else f"{r['p50']:.3f}s"
        p99 = "n/a" if r["p99"] is None else f"{r['p99']:.3f}s"
        print(f"send -> critical in Redis at {r['rate']:.0f}/s ({label}; achieved {r['achieved']}/s, "
              f"{r['critical']} critical events, {r['timed_out']} not seen within {args.latency_timeout:.0f}s): "
              f"p50 {p50}, p99 {p99}", flush=True)
    final = results[-1][1]
    margin = target / final["p99"] if final["p99"] else 0.0
    print(f"target p99 <= change feed interval + 1 s = {target:.1f}s at {args.latency_rate:.0f}/s: "
          f"{'met' if margin >= 1 else 'NOT met'}; target margin {target:g} s / p99 {margin:.3f}")
    return 0
