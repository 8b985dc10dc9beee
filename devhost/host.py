"""The dev host: settings, indexing, listeners, the HTTP server, and an orderly shutdown.

Start-up order (each step fails with a :class:`DevHostError` naming what is wrong,
before anything is started): apply ``local.settings.json``, read ``host.json``,
import and index the app (so module-level code sees the settings), refuse unsupported
triggers and bindings, resolve every ``%Setting%`` and schedule, then start the HTTP
server, the Event Hubs listeners and the timers, and print ``listening on HOST:PORT``.

Shutdown (SIGINT/SIGTERM), timers and Event Hubs listeners at the same time: timers
stop firing (a running invocation finishes, the lease is released), Event Hubs listeners
take no new batch, finish and checkpoint the ones in progress and release their
partitions; then the HTTP server stops after the requests in progress. A second signal
exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from azure.storage.blob.aio import BlobServiceClient

from devhost import app_loader, cpu_stats, memory_report
from devhost.errors import DevHostError
from devhost.eventhub_trigger import EventHubBinding, EventHubListener
from devhost.http_trigger import HttpRoute, HttpServer
from devhost.invocation import Invoker, default_thread_count
from devhost.schedule import time_zone
from devhost.settings import (
    HostOptions,
    function_disabled,
    host_id,
    load_host_json,
    load_local_settings,
    storage_connection_string,
)
from devhost.timer_trigger import TimerListener

logger = logging.getLogger(__name__)


def say(text: str) -> None:
    """Print to stdout in one write: ``print`` writes the newline separately, and a log line written by the
    logging thread in between would glue itself to the readiness line (and to its port number)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class HostConfig:
    script_root: Path
    settings: Path | None  # None: ./local.settings.json when it exists
    host: str = "127.0.0.1"
    port: int | None = None  # None: Host.LocalHttpPort, else 7071
    shutdown_timeout: float = 60.0


class DevHost:
    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self.options = HostOptions()
        self.invoker: Invoker | None = None
        self.http: HttpServer | None = None
        self.eventhubs: list[EventHubListener] = []
        self.timers: list[TimerListener] = []
        self.host_id = ""
        self._blob_service: BlobServiceClient | None = None
        self._port = 7071

    def prepare(self) -> None:
        """Everything that can fail on configuration, before anything connects."""
        root = self.config.script_root.resolve()
        settings = self.config.settings
        if settings is None and (root / "local.settings.json").exists():
            settings = root / "local.settings.json"
        local_port = load_local_settings(settings)
        self.options = load_host_json(root / "host.json")
        for warning in self.options.warnings:
            logger.warning("%s", warning)
        self._port = self.config.port if self.config.port is not None else (local_port or 7071)
        self.host_id = host_id(root)
        specs = app_loader.load(root, os.environ.get("PYTHON_SCRIPT_FILE_NAME") or "function_app.py",
                                self.options.functions)
        if self.options.functions is not None:
            logger.info("host.json functions: loading only %s", ", ".join(spec.name for spec in specs))
        self.invoker = Invoker(root, threads=default_thread_count(), function_timeout=self.options.function_timeout)
        routes: list[HttpRoute] = []
        problems: list[str] = []
        storage = None
        if any(s.trigger_type in ("eventHubTrigger", "timerTrigger") for s in specs):
            storage = storage_connection_string()
        zone = time_zone()
        for spec in specs:
            # A disabled function is loaded and checked as any other (its settings must resolve), but, as on the
            # host, its listener never starts and its route is not served (404).
            disabled = function_disabled(spec.name)
            if disabled:
                logger.info("Function 'Functions.%s' is disabled (AzureWebJobs.%s.Disabled)", spec.name, spec.name)
            try:
                if spec.trigger_type == "httpTrigger":
                    route = HttpRoute.from_spec(spec)
                    if not disabled:
                        routes.append(route)
                elif spec.trigger_type == "eventHubTrigger":
                    binding = EventHubBinding.from_spec(spec)
                    if not disabled:
                        self.eventhubs.append(
                            EventHubListener(binding, self.options.eventhubs, self.invoker, storage or "")
                        )
                elif spec.trigger_type == "timerTrigger":
                    if self._blob_service is None:
                        self._blob_service = BlobServiceClient.from_connection_string(storage or "")
                    timer = TimerListener.create(spec, self.invoker, self._blob_service, self.host_id,
                                                 self.options.singleton, os.environ, zone)
                    if not disabled:
                        self.timers.append(timer)
            except DevHostError as exc:
                problems.append(str(exc))
        if problems:
            raise DevHostError("cannot host this app:\n  " + "\n  ".join(problems))
        self.http = HttpServer(routes, self.invoker, route_prefix=self.options.route_prefix, host_id=self.host_id,
                               environ=os.environ, custom_headers=self.options.custom_headers)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order."""
        assert self.http is not None
        port = await self.http.start(self.config.host, self._port)
        stop_reports = memory_report.install(asyncio.get_running_loop(), say)
        try:
            for listener in self.eventhubs:
                await listener.start()
            for timer in self.timers:
                timer.start()
            self._print_functions()
            say(f"devhost: listening on {self.config.host}:{port}")
            stats = os.environ.get(cpu_stats.SETTING)
            if stats and self.invoker is not None:
                await cpu_stats.publish(Path(stats), self.invoker.cpu, stop)
            await stop.wait()
            logger.info("Shutting down: letting invocations in progress finish")
        finally:
            stop_reports()
            await self._shutdown()

    def _print_functions(self) -> None:
        assert self.http is not None
        lines = ["Functions:"]
        for route in self.http.routes:
            methods = ",".join(sorted(route.methods)) if len(route.methods) < 8 else "ALL"
            lines.append(f"  {route.spec.name}: [{methods}] {self.http.url_for(route, self.config.host)}")
        for listener in self.eventhubs:
            lines.append(f"  {listener.name}: eventHubTrigger ({listener.binding.eventhub_name}, "
                         f"{listener.binding.consumer_group})")
        for timer in self.timers:
            lines.append(f"  {timer.name}: timerTrigger ({timer.schedule.expression})")
        say("\n".join(lines))

    async def _shutdown(self) -> None:
        # All at once: a long timer run must not keep the Event Hubs listeners taking new batches.
        listeners: list[TimerListener | EventHubListener] = [*self.timers, *self.eventhubs]
        results = await asyncio.gather(*(listener.stop() for listener in listeners), return_exceptions=True)
        for listener, result in zip(listeners, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("Functions.%s did not stop cleanly: %r", listener.name, result)
        if self.http is not None:
            await self.http.stop()
        if self._blob_service is not None:
            await self._blob_service.close()
        if self.invoker is not None:
            await asyncio.to_thread(self.invoker.shutdown)


async def run(config: HostConfig) -> int:
    """Prepare and serve until SIGINT/SIGTERM; the exit status."""
    host = DevHost(config)
    host.prepare()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(number: int) -> None:
        if stop.is_set():
            say(f"devhost: second {signal.Signals(number).name}: exiting without waiting")
            os._exit(1)
        logger.info("received %s", signal.Signals(number).name)
        stop.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, on_signal, number)
    serving = asyncio.create_task(host.serve(stop), name="devhost")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():  # serve() ended on its own: it failed while starting
        stopping.cancel()
        serving.result()
        return 1
    try:
        await asyncio.wait_for(serving, timeout=config.shutdown_timeout)
    except TimeoutError:
        logger.error("shutdown took longer than %.0fs; exiting without waiting", config.shutdown_timeout)
        return 1
    return 0
