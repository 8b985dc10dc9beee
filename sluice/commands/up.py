"""``up``: the whole pipeline on this machine, with a load, live progress and a clean stop (Ctrl-C).

Starts PostgreSQL and Redis if they are not running, Azurite, the Cassandra, Event
Hubs and Key Vault emulators, writes ``<data-dir>/local.settings.json``, creates
the database, applies migrations, loads sample reference data, starts the dev host
and the load generator, and shows events sent, stored, dead-lettered, critical
events cached, windows enriched and lag. See docs/local-stack.md.

With ``--duration`` the load runs that long, then ``up`` waits for the pipeline to
drain and checks delivery exactly against what was sent (every valid event
stored once, every invalid one dead-lettered, latest state, critical events in
Redis, enriched windows); it exits 1 if anything is missing or wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.arguments import port, positive_float, positive_int, ratio

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from sluice.delivery import DeliveryReport, Figures, Probe
    from sluice.loadgen import Expected
    from sluice.localstack import LocalStack, StackOptions

DEFAULT_RATE = 100.0
DEFAULT_DEVICES = 200


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sluice.localstack import ROOT

    parser = subparsers.add_parser(
        "up", help="run the whole pipeline locally (emulators, dev host, load); Ctrl-C stops it",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The load options are checked here, as produce's LoadSpec checks them: `up` runs produce as a child, which
    # would refuse them only once the whole stack is up, into produce.log.
    parser.add_argument("--duration", type=positive_float,
                        help="bounded run: send load this many seconds, drain, check, exit (default: until Ctrl-C)")
    parser.add_argument(
        "--rate", type=positive_float, default=DEFAULT_RATE, help=f"events per second (default {DEFAULT_RATE:g})"
    )
    parser.add_argument("--devices", type=positive_int, default=DEFAULT_DEVICES,
                        help=f"devices (default {DEFAULT_DEVICES})")
    parser.add_argument("--critical-ratio", type=ratio, default=0.01)
    parser.add_argument("--duplicate-ratio", type=ratio, default=0.001)
    parser.add_argument("--invalid-ratio", type=ratio, default=0.001)
    parser.add_argument("--out-of-order-ratio", type=ratio, default=0.005)
    parser.add_argument("--no-load", action="store_true", help="start the stack but send nothing")
    parser.add_argument(
        "--no-devhost",
        action="store_true",
        help="do not start the dev host (to run `func start` instead); also writes ./local.settings.json",
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".local" / "stack",
                        help="where emulator data, logs and local.settings.json live (default .local/stack)")
    parser.add_argument("--in-memory", action="store_true", help="keep emulator and Azurite data in memory only")
    parser.add_argument("--fresh", action="store_true",
                        help="start from empty stores: wipe --data-dir, drop the database, delete the Redis keys")
    parser.add_argument("--http-port", type=port, default=7071)
    parser.add_argument("--eventhubs-port", type=port, default=5672)
    parser.add_argument("--cassandra-port", type=port, default=9042)
    parser.add_argument("--azurite-port", type=port, default=10000)
    parser.add_argument("--keyvault-port", type=port, default=8443)
    parser.add_argument("--strict-ports", action="store_true",
                        help="fail when a port is taken instead of using a free one (a port of 0 always picks one)")
    parser.add_argument("--database", default="sluice", help="PostgreSQL database (default sluice)")
    parser.add_argument("--keyspace", default="sluice", help="Cassandra keyspace (default sluice)")
    parser.add_argument("--redis-prefix", default="sluice:", help="Redis key prefix (default sluice:)")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="run a real local Redis Cluster (3 masters, 3 replicas, free ports, under --data-dir) "
                             "instead of the machine's Redis; stopped with the stack")
    parser.add_argument("--use-existing-services", action="store_true",
                        help="use the machine's PostgreSQL and Redis (no passwords, no TLS) instead of our own")
    parser.add_argument("--keep-services", action="store_true",
                        help="with --use-existing-services: leave the machine's PostgreSQL and Redis running even if "
                             "this command started them (our own, and a --redis-cluster, always stop with the stack)")
    parser.add_argument("--drain-timeout", type=positive_float, default=240.0,
                        help="bounded run: seconds to wait for the pipeline to deliver after the load (default 240)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a setting in the generated local.settings.json (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from shared.exceptions import ConfigurationError
    from sluice.localstack import LocalStack, StackError, StackOptions

    console = Console()
    for noisy in ("cassandra", "azure", "sluice.launcher", "shared"):  # the live table says what matters
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.duplicate_ratio + args.invalid_ratio > 1:
        raise ConfigurationError("--duplicate-ratio + --invalid-ratio must not exceed 1")
    if args.duration and (args.no_devhost or args.no_load):
        raise ConfigurationError("--duration checks what the dev host made of the load; "
                                 "it cannot go with --no-devhost or --no-load")
    if args.keep_services and not args.use_existing_services:
        raise ConfigurationError("--keep-services keeps the machine's PostgreSQL and Redis (--use-existing-services) "
                                 "running; our own always stop with the stack (the next `up` would stop them by "
                                 "their pid files anyway): add --use-existing-services, or leave --keep-services out")
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"--set {item!r}: expected NAME=VALUE")
        overrides[name] = value
    options = StackOptions(
        data_dir=args.data_dir, http_port=args.http_port, eventhubs_port=args.eventhubs_port,
        cassandra_port=args.cassandra_port, azurite_port=args.azurite_port, keyvault_port=args.keyvault_port,
        strict_ports=args.strict_ports, persist=not args.in_memory, database=args.database,
        keyspace=args.keyspace, redis_prefix=args.redis_prefix, redis_cluster=args.redis_cluster,
        stop_services=not args.keep_services, use_existing_services=args.use_existing_services,
        overrides=overrides,
    )
    stack = LocalStack(options, say=console.print)
    producer: Producer | None = None
    monitor: Monitor | None = None
    probe: Probe | None = None
    # A closed terminal (SIGHUP) stops the stack as Ctrl-C does: the children run in sessions of their own and
    # never see the hang-up themselves.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _start(stack, args, console)
        from sluice.delivery import Probe, function_names

        features = function_names()
        probe = Probe(stack.values)
        since = datetime.now(UTC)
        manifest = args.data_dir / "manifests" / f"{since:%Y%m%dT%H%M%S}.jsonl" if args.duration else None
        if not args.no_load:
            producer = Producer(stack, args, manifest)
        monitor = Monitor(probe, since, features)
        monitor.metrics_url = stack.metrics_url
        monitor.start()
        _where_to_look(stack, console, probe, features)
        if args.duration:
            return _bounded(stack, args, console, producer, monitor, probe, features, manifest, since)
        _watch(console, stack, producer, monitor, until=lambda: False, load_runs=True)
        return 0
    except KeyboardInterrupt:
        console.print("\n[bold]stopping[/] (Ctrl-C)")
        return 130
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    finally:
        # Once stopping, it finishes: a second Ctrl-C (or SIGTERM, SIGHUP) raising in here would leave every child
        # not stopped yet running, in a session of its own.
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            _stop(console, stack, producer, monitor, probe)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _stop(console: Console, stack: LocalStack, producer: Producer | None, monitor: Monitor | None,
          probe: Probe | None) -> None:
    if producer is not None:
        producer.stop()
    if monitor is not None:  # our own clients go before the services they talk to, so nothing reconnects
        monitor.halt.set()
        monitor.join(timeout=10)
    if probe is not None:
        probe.close()
    problems = stack.stop()
    for problem in problems:
        console.print(f"[red]while stopping:[/] {problem}")


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _start(stack: LocalStack, args: argparse.Namespace, console: Console) -> None:
    opts = stack.options
    stack.claim()
    if args.fresh:
        _wipe(stack, console)
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    stack.guard_against_a_hard_kill()  # before anything starts: a Redis Cluster's nodes are the reaper's too
    with console.status("PostgreSQL and Redis"):
        stack.ensure_postgres()
        stack.ensure_redis()
    if args.fresh and opts.use_existing_services:  # our own services start empty from a wiped data dir
        _forget(stack, console)
    steps = [("Azurite", stack.start_azurite), ("Cassandra emulator", stack.start_cassandra),
             ("Event Hubs emulator", stack.start_eventhubs), ("Key Vault emulator", stack.start_keyvault)]
    for name, step in steps:
        with console.status(f"starting {name}"):
            step()
    stack.write_settings()
    console.print(f"settings: {stack.settings_path}")
    with console.status("database, migrations"):
        if stack.create_database():
            console.print(f"created PostgreSQL database {opts.database}")
        console.print(stack.migrate().strip())
    reference = stack.reference_command()
    if reference:
        with console.status("sample reference data"):
            console.print(stack.sluice(*reference, what="loading sample reference data").strip())
    else:
        console.print("[yellow]no reference data loader in this checkout: enrichment runs with unknown devices")
    if args.no_devhost:
        target = stack.write_root_settings()
        console.print(f"wrote {target} for `func start` (the dev host is not started)")
    else:
        with console.status("starting the dev host"):
            stack.start_devhost()
    ports = ", ".join(f"{name} {port}" for name, port in stack.ports.items())
    console.print(f"[green]up:[/] {ports}")


def _wipe(stack: LocalStack, console: Console) -> None:
    if stack.wipe():
        console.print(f"wiped {stack.options.data_dir}")


def _forget(stack: LocalStack, console: Console) -> None:
    """--fresh: drop the database and the Redis keys of the prefix (the emulators start empty anyway). The prefix is
    escaped for ``SCAN MATCH``: the machine's Redis is shared, and a prefix holding ``[``, ``*`` or ``?`` would
    otherwise match, and delete, other applications' keys."""
    import psycopg
    import redis
    from psycopg import sql

    from shared.adapters.redis.generations import glob_escape

    opts = stack.options
    admin = f"host={opts.postgres_host} port={opts.postgres_port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(opts.database)))
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(opts.redis_url) if opts.redis_cluster else redis.Redis.from_url(opts.redis_url)
    try:
        keys = list(client.scan_iter(match=glob_escape(opts.redis_prefix) + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
    finally:
        client.close()
    console.print(f"dropped database {opts.database} and {len(keys)} Redis keys under {opts.redis_prefix!r}")


class Producer:
    """``python -m sluice produce`` as a child process; its JSON progress lines are kept as ``summary``."""

    def __init__(self, stack: LocalStack, args: argparse.Namespace, manifest: Path | None) -> None:
        argv = [sys.executable, "-m", "sluice", "produce", "--connection", stack.eventhub_connection,
                "--hub", stack.values["SLUICE_INGEST_EVENTHUB_NAME"], "--rate", str(args.rate),
                "--devices", str(args.devices), "--duration", str(args.duration or 0),
                "--critical-ratio", str(args.critical_ratio), "--duplicate-ratio", str(args.duplicate_ratio),
                "--invalid-ratio", str(args.invalid_ratio), "--out-of-order-ratio", str(args.out_of_order_ratio),
                "--progress", "json"]
        if manifest is not None:
            manifest.parent.mkdir(parents=True, exist_ok=True)
            argv += ["--manifest", str(manifest)]
        from sluice.localstack import ROOT

        self.log = stack.options.data_dir / "produce.log"
        self._log = open(self.log, "a", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        self.summary: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None
        threading.Thread(target=self._pump, name="produce-output", daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if "progress" in doc:
                    self.summary = doc["progress"]
                elif "summary" in doc:
                    self.summary = self.final = doc["summary"]

    def running(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of produce.log (what the load generator said on stderr)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        return ""

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        deadline = time.monotonic() + 5
        while self.final is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Monitor(threading.Thread):
    """Reads the stores every ``interval`` seconds; ``figures`` is the latest snapshot."""

    def __init__(self, probe: Probe, since: datetime, features: set[str], interval: float = 2.0) -> None:
        super().__init__(name="monitor", daemon=True)
        self.probe, self.since, self.features, self.interval = probe, since, features, interval
        self.figures: Figures | None = None
        self.ids: dict[str, str] = {}
        self.halt = threading.Event()

    metrics_url: str | None = None  # the dev host's metrics; their figures replace the probed ones when it answers

    def run(self) -> None:
        while not self.halt.is_set():
            self.figures = self.probe.figures(self.since, features=self.features)
            if self.metrics_url:
                self.figures.source = "metrics" if _from_metrics(self.figures, self.metrics_url) else "stores"
            if "critical_event" not in self.ids:
                with contextlib.suppress(Exception):
                    self.ids = self.probe.sample_ids()
            self.halt.wait(self.interval)


def _from_metrics(figures: Figures, url: str) -> bool:
    """Replace the probed stored, dead-lettered and lag figures with the dev host's metrics; False if none."""
    from sluice.metrics_figures import scrape

    try:
        metrics = scrape(url)
    except (OSError, ValueError):
        return False
    if "sluice_ingest_events" not in metrics.families:
        return False
    figures.stored, figures.dead_lettered = metrics.stored, metrics.dead_lettered
    if metrics.lag_by_partition:
        figures.lag, figures.lag_by_partition = sum(metrics.lag_by_partition.values()), metrics.lag_by_partition
    return True


def _table(stack: LocalStack, producer: Producer | None, monitor: Monitor, note: str = "") -> Table:
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    figures = monitor.figures
    sent = producer.summary if producer else {}

    def show(value: Any) -> str:
        return "…" if value is None else f"{value:,}"

    table.add_row("events sent", f"{sent.get('sent', 0):,}" + (f"  ({sent.get('rate', 0):,.0f}/s)" if sent else ""))
    if sent:
        table.add_row("  of which", f"critical {sent.get('critical', 0):,}  duplicate {sent.get('duplicate', 0):,}  "
                                    f"invalid {sent.get('invalid', 0):,}  out-of-order {sent.get('out_of_order', 0):,}")
    if figures is not None:
        table.add_row("stored (Cassandra)", show(figures.stored))
        table.add_row("dead-lettered (Azurite)", show(figures.dead_lettered))
        table.add_row("critical cached (Redis)", show(figures.critical_cached) if "changefeed" in monitor.features
                      else "no change feed function")
        table.add_row("windows enriched (PostgreSQL)", show(figures.windows_enriched)
                      if "enrichment" in monitor.features else "no enrichment function")
        table.add_row("lag (events not checkpointed)", show(figures.lag)
                      + (f"  {figures.lag_by_partition}" if figures.lag else ""))
        if figures.source:
            table.add_row("figures from", f"{stack.metrics_url}" if figures.source == "metrics"
                          else "the stores (the dev host's metrics do not answer yet)")
        for name, error in figures.errors.items():
            table.add_row(f"[yellow]{name}", f"[yellow]{error}")
    if monitor.ids:
        http = f"http://{stack.options.host}:{stack.ports.get('http')}/api"
        device = monitor.ids.get("critical_device") or monitor.ids.get("device")
        table.add_row("try", f"{http}/devices/{device}/latest")
        table.add_row("", f"{http}/devices/{device}/critical?limit=5")
        table.add_row("", f"{http}/events/{monitor.ids.get('critical_event') or monitor.ids.get('event')}")
    dead = [r.name for r in stack.children if not r.alive()]
    if dead:
        table.add_row("[red]exited", "[red]" + ", ".join(dead))
    if stack.devhost_restarts:
        table.add_row("[yellow]restarted", f"[yellow]the dev host, {stack.devhost_restarts} time(s): an invocation "
                      "outlived functionTimeout (devhost.log)")
    if note:
        table.add_row("", note)
    return table


def _watch(console: Console, stack: LocalStack, producer: Producer | None, monitor: Monitor, *,
           until: Callable[[], bool], note: Callable[[], str] = lambda: "", load_runs: bool = False) -> None:
    """Show the table until ``until()``; a child, our own PostgreSQL or, with ``load_runs`` (the load has no end),
    the load generator stopping on its own raises :class:`StackError` with what it said last."""
    from rich.live import Live

    from sluice.localstack import StackError

    with Live(_table(stack, producer, monitor), console=console, refresh_per_second=2, transient=False) as live:
        while not until():
            live.update(_table(stack, producer, monitor, note()))
            if any(not r.alive() for r in stack.children):
                dead = next(r for r in stack.children if not r.alive())
                if stack.restart_after_function_timeout(dead):
                    continue
                live.update(_table(stack, producer, monitor, note()))
                raise StackError(f"{dead.name} exited ({dead.process.returncode}); its last output:\n{dead.output()}")
            lost = stack.lost()
            if lost is None and load_runs and producer is not None and not producer.running():
                lost = (f"the load generator exited ({producer.process.returncode}); the end of {producer.log}:\n"
                        f"{producer.tail()}")
            if lost is not None:
                live.update(_table(stack, producer, monitor, note()))
                raise StackError(lost)
            time.sleep(0.5)
        live.update(_table(stack, producer, monitor, note()))


def _bounded(stack: LocalStack, args: argparse.Namespace, console: Console, producer: Producer | None,
             monitor: Monitor, probe: Probe, features: set[str], manifest: Path | None, since: datetime) -> int:
    from sluice.delivery import check_delivery
    from sluice.loadgen import read_manifest

    if producer is not None:
        _watch(console, stack, producer, monitor, until=lambda: not producer.running(), note=lambda: "sending")
        code = producer.wait()
        if code != 0:
            console.print(f"[red]the load generator failed (exit {code}); see {producer.log}")
            return 1
    expected = read_manifest(manifest) if manifest and manifest.exists() else None
    deadline = time.monotonic() + args.drain_timeout
    report: DeliveryReport | None = None
    last_check = [0.0]

    def delivered() -> bool:
        nonlocal report
        if time.monotonic() > deadline:
            return True
        figures = monitor.figures
        if expected is None or figures is None or figures.lag or time.monotonic() - last_check[0] < 5:
            return False
        last_check[0] = time.monotonic()
        report = check_delivery(expected, probe, features=features, since=since)
        return report.ok

    _watch(console, stack, producer, monitor, until=delivered,
           note=lambda: f"draining, checking delivery ({max(0, deadline - time.monotonic()):.0f}s left)")
    monitor.halt.set()
    if expected is None:
        console.print("[red]no manifest of the load: nothing to check")
        return 1
    if report is None:
        report = check_delivery(expected, probe, features=features, since=since)
    _where_to_look(stack, console, probe, features, expected=expected)
    console.print(f"figures: {json.dumps(report.figures)}")
    if report.ok:
        console.print(f"[green]delivered:[/] every sent event is where it belongs (manifest {manifest})")
        return 0
    console.print(f"[red]NOT delivered within {args.drain_timeout:.0f}s:[/]")
    for problem in report.problems:
        console.print(f"  - {problem}")
    return 1


def _redis_line(stack: LocalStack, opts: StackOptions) -> str:
    """How to read the critical stream: the stack's own Redis takes TLS and a password kept only in the local Key
    Vault, so through Sluice's own wiring; the machine's Redis (--use-existing-services) with redis-cli."""
    stream = f"{opts.redis_prefix}critical:stream:{{0}}"
    if getattr(stack, "own", None) is not None:
        settings_env = stack.settings_path.parent / "settings.env"
        return (f"  Redis     source {settings_env} && .venv/bin/python -c \"from shared import bootstrap; "
                f"print(bootstrap.redis_client().client().xrevrange('{stream}', count=5))\"  "
                "(shards {0}..: docs/redis-layout.md)")
    return (f"  Redis     redis-cli{' -c -u ' + opts.redis_url if opts.redis_cluster else ''} "
            f"XREVRANGE '{stream}' + - COUNT 5  (shards {{0}}..: docs/redis-layout.md)")


def _psql_host(stack: LocalStack) -> str:
    """Our own PostgreSQL: its socket directory (the superuser is trusted there, never over TCP)."""
    own = getattr(stack, "own", None)
    return str(own.postgres.directory) if own is not None and own.postgres is not None else stack.options.postgres_host


def _views(probe: Probe) -> list[str]:
    with contextlib.suppress(Exception), probe.pg() as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.views WHERE table_schema = 'public' "
                            "ORDER BY table_name").fetchall()
        return [row[0] for row in rows]
    return []


def _where_to_look(stack: LocalStack, console: Console, probe: Probe, features: set[str],
                   expected: Expected | None = None) -> None:
    opts = stack.options
    http = f"http://{opts.host}:{stack.ports.get('http')}/api"
    ids: dict[str, str] = {}
    if expected is not None and expected.valid:
        latest = expected.latest_by_device()
        newest_device, record = next(iter(latest.items()))
        ids = {"device": newest_device, "event": record["event_id"]}
        critical = next(iter(expected.critical.values()), None)
        if critical:
            ids |= {"critical_device": critical["device_id"], "critical_event": critical["event_id"]}
    else:
        with contextlib.suppress(Exception):
            ids = probe.sample_ids()
    device = ids.get("critical_device") or ids.get("device")
    event = ids.get("critical_event") or ids.get("event")
    metrics = stack.metrics_url
    lines = [
        "[bold]where to look[/]",
        f"  Page      {http}/dashboard   (live operations page: status, critical feed, devices, sites)",
        f"  HTTP      {http}/health   {http}/openapi.json   {http}/status",
        f"  Metrics   {metrics}   (the dev host's OpenTelemetry metrics, Prometheus text)" if metrics
        else "  Metrics   none: SLUICE_METRICS_PORT is empty (--set)",
    ]
    if device and event:
        lines += [
            f"            {http}/devices/{device}/latest",
            f"            {http}/devices/{device}/critical?limit=5",
            f"            {http}/events/{event}",
        ]
    else:
        lines.append("            lookup URLs with real ids appear in the live table once events are stored")
    lines += [
        f"  Event Hubs {stack.eventhub_connection}  hub {stack.values.get('SLUICE_INGEST_EVENTHUB_NAME')}",
        f"  Cassandra {opts.host}:{stack.ports.get('cassandra')} keyspace {opts.keyspace} "
        "(events_by_id, device_latest, events_by_device, ...)",
        _redis_line(stack, opts),
        f"  Azurite   http://{opts.host}:{stack.ports.get('azurite')}/devstoreaccount1, dead letters in "
        f"{stack.values.get('SLUICE_STORAGE_DEADLETTER_CONTAINER')}: "
        f"`source {stack.settings_path.parent / 'settings.env'} && python -m sluice deadletter list`",
        f"  PostgreSQL psql -h {_psql_host(stack)} -p {opts.postgres_port} -U postgres {opts.database} -c "
        "'SELECT * FROM report_device_health LIMIT 10'",
        f"            views: {', '.join(_views(probe)) or '(none yet)'}",
        f"  settings  {stack.settings_path}",
        f"  logs      {stack.logs_dir}/<name>.log, written as they come"
        + (f"; `kill -USR2 {stack.devhost.process.pid}` adds the dev host's memory report to devhost.log"
           if stack.devhost is not None else ""),
    ]
    if stack.own is not None and stack.own.postgres is not None and stack.own.postgres.directory is not None:
        # a daemon of pg_ctl, no child of `up`, run as the postgres user (who may not enter --data-dir)
        lines.append(f"            our own PostgreSQL's: {stack.own.postgres.directory / 'postgres.log'}")
    if stack.notes:
        lines += [f"  [yellow]note[/]      {note}" for note in stack.notes]
    console.print("\n".join(lines))
