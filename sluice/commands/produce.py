"""``produce``: send device events to Event Hubs at a paced rate (the load generator; see sluice/loadgen.py).

The connection comes from ``--connection``, else the environment variable named by
``--connection-setting`` (``EventHubConnection``), else that key in the ``Values``
of ``--settings`` (``local.settings.json``), so it works against the local emulator
and a real namespace alike. The hub is the connection string's ``EntityPath`` when it
has one (a ``--hub`` naming another hub is refused), else ``--hub``, else
``SLUICE_INGEST_EVENTHUB_NAME``, else ``telemetry``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from shared.exceptions import ConfigurationError
from sluice.arguments import nonnegative_float, nonnegative_int, positive_float, positive_int, ratio

if TYPE_CHECKING:
    from sluice.loadgen import LoadSpec, Summary


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "produce", help="send device events to Event Hubs at a paced rate (load generator)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=positive_int, default=1000, help="distinct device ids (default 1000)")
    parser.add_argument("--rate", type=positive_float, default=2000.0, help="events per second (default 2000)")
    parser.add_argument("--duration", type=nonnegative_float, default=60.0,
                        help="seconds to run (default 60; 0 = until Ctrl-C)")
    parser.add_argument("--count", type=nonnegative_int, help="send exactly this many events (overrides --duration)")
    parser.add_argument("--critical-ratio", type=ratio, default=0.01, help="share of valid events that are critical")
    parser.add_argument(
        "--duplicate-ratio", type=ratio, default=0.001, help="share of sends that repeat an earlier event"
    )
    parser.add_argument("--invalid-ratio", type=ratio, default=0.001, help="share of sends that break the contract")
    parser.add_argument("--out-of-order-ratio", type=ratio, default=0.005,
                        help="share of valid events with a timestamp older than the device's newest")
    parser.add_argument("--seed", type=int, help="random seed (same seed, same events apart from timestamps)")
    parser.add_argument("--device-prefix", default="dev-", help="device ids are <prefix><5 digits> (default dev-)")
    parser.add_argument("--connection", help="Event Hubs connection string (default: from settings)")
    parser.add_argument("--connection-setting", default="EventHubConnection",
                        help="setting holding the connection string (default EventHubConnection)")
    parser.add_argument("--settings", type=Path, default=Path("local.settings.json"),
                        help="local.settings.json to read settings from when not in the environment")
    parser.add_argument("--hub", help="event hub name (default SLUICE_INGEST_EVENTHUB_NAME, else telemetry)")
    parser.add_argument("--manifest", type=Path, help="write one JSON line per sent event here")
    parser.add_argument("--progress", choices=["bar", "json", "none"],
                        help="live progress: a bar (default on a terminal), JSON lines on stdout, or nothing")
    parser.set_defaults(func=run)


def _settings_values(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("Values") or {})
    except OSError as exc:  # a directory (the stack's data dir instead of its file), a file it may not read
        raise ConfigurationError(f"cannot read --settings {path}: {exc.strerror or exc}") from None
    except (ValueError, AttributeError) as exc:
        raise ConfigurationError(f"{path} is not a local.settings.json document: {exc}") from None


def resolve_connection(args: argparse.Namespace) -> tuple[str, str]:
    """The connection string and hub name, from the flags, the environment or the settings file.

    A connection string with ``EntityPath`` names the hub itself; ``--hub`` naming another one is refused."""
    values = _settings_values(args.settings)
    connection = args.connection or os.environ.get(args.connection_setting) or values.get(args.connection_setting)
    if not connection:
        raise ConfigurationError(
            f"no Event Hubs connection: pass --connection, set {args.connection_setting} in the environment, "
            f"or add it to the Values of {args.settings}"
        )
    from azure.eventhub import parse_connection_string

    try:
        entity_path = parse_connection_string(connection).eventhub_name
    except ValueError as exc:
        raise ConfigurationError(f"the Event Hubs connection string is not valid: {exc}") from None
    if entity_path:
        # The connection names its hub (often a key scoped to that hub alone): it wins over the settings, and a
        # --hub naming another one is a mistake to say, not a choice to make silently.
        if args.hub and args.hub.lower() != entity_path.lower():
            raise ConfigurationError(f"--hub {args.hub!r} conflicts with EntityPath={entity_path!r} in the "
                                     "connection string; drop one of them")
        return connection, entity_path
    hub = args.hub or os.environ.get("SLUICE_INGEST_EVENTHUB_NAME") or values.get("SLUICE_INGEST_EVENTHUB_NAME")
    return connection, hub or "telemetry"


def run(args: argparse.Namespace) -> int:
    from sluice.loadgen import EventHubSender, LoadRunner, LoadSpec

    try:
        spec = LoadSpec(
            devices=args.devices, rate=args.rate, duration=args.duration or None, count=args.count,
            critical_ratio=args.critical_ratio, duplicate_ratio=args.duplicate_ratio,
            invalid_ratio=args.invalid_ratio, out_of_order_ratio=args.out_of_order_ratio,
            seed=args.seed, device_prefix=args.device_prefix,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    _check_device_ids(spec)
    connection, hub = resolve_connection(args)
    mode = args.progress or ("bar" if sys.stderr.isatty() else "none")
    manifest = _open_manifest(args.manifest)
    try:
        sender = EventHubSender(connection, hub)
    except Exception as exc:
        if manifest:
            manifest.close()
        raise ConfigurationError(f"cannot reach event hub {hub!r}: {exc}") from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with _progress(mode, spec.total) as on_progress:
            runner = LoadRunner(spec, sender, manifest=manifest, on_progress=on_progress, stop=stop)
            try:
                summary = runner.run()
            except KeyboardInterrupt:
                summary = runner.summary
    finally:
        signal.signal(signal.SIGTERM, previous)
        sender.close()
        if manifest:
            manifest.close()
    _print_summary(summary, hub, len(sender.partition_ids), mode)
    return 1 if summary.failed else 0


def _check_device_ids(spec: LoadSpec) -> None:
    """Every device id of the run (``--device-prefix`` and at least 5 digits) must be one the event contract takes:
    the generator checks each event it means to be valid against the contract, so a prefix no id can carry
    (``site 1/``) ended the run at its first event, after connecting, in a pydantic traceback. The last device's id
    is checked: its digits are the most, and the prefix is in every id."""
    from pydantic import TypeAdapter, ValidationError

    from shared.domain.events import DeviceId

    last = spec.device_id(spec.devices - 1)
    try:
        TypeAdapter(DeviceId).validate_python(last)
    except ValidationError as exc:
        raise ConfigurationError(f"--device-prefix {spec.device_prefix!r} makes device ids such as {last!r}, which "
                                 f"the event contract refuses: {exc.errors()[0]['msg']}") from None


def _open_manifest(path: Path | None) -> TextIO | None:
    """``--manifest`` opened for writing before the hub is connected: a path that cannot be written (a directory
    that does not exist) is an error naming it, not a traceback once the run has connected."""
    if path is None:
        return None
    try:
        return open(path, "w", encoding="utf-8")  # closed by run, after the load
    except OSError as exc:
        raise ConfigurationError(f"cannot write --manifest {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _progress(mode: str, total: int | None) -> Iterator[Callable[[Summary], None] | None]:
    if mode == "json":
        last = [0.0]

        def emit(summary: Summary) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0:
                last[0] = now
                print(json.dumps({"progress": summary.as_dict()}), flush=True)

        yield emit
        return
    if mode == "none":
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]produce"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[detail]}")]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("produce", total=total, detail="")

        def update(summary: Summary) -> None:
            kinds = summary.kinds
            detail = (f"{summary.rate:,.0f}/s  critical {kinds['critical']}  dup {kinds['duplicate']}  "
                      f"invalid {kinds['invalid']}  ooo {kinds['out_of_order']}"
                      + (f"  [red]failed {summary.failed}" if summary.failed else ""))
            progress.update(task, completed=summary.sent + summary.failed, detail=detail)

        yield update


def _print_summary(summary: Summary, hub: str, partitions: int, mode: str) -> None:
    if mode == "json":
        print(json.dumps({"summary": summary.as_dict()}), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sent to {hub} ({partitions} partitions)", show_header=True)
    table.add_column("sent", justify="right")
    table.add_column("rate/s", justify="right")
    for kind in ("valid", "critical", "duplicate", "invalid", "out-of-order", "failed"):
        table.add_column(kind, justify="right")
    kinds = summary.kinds
    table.add_row(
        f"{summary.sent:,}", f"{summary.rate:,.0f}", f"{kinds['valid']:,}", f"{kinds['critical']:,}",
        f"{kinds['duplicate']:,}", f"{kinds['invalid']:,}", f"{kinds['out_of_order']:,}", f"{summary.failed:,}",
    )
    console = Console()
    console.print(table)
    console.print(f"in {summary.elapsed:.1f}s; by partition: {dict(sorted(summary.by_partition.items()))}")
    for error in summary.errors[:5]:
        console.print(f"[red]error: {error}")
