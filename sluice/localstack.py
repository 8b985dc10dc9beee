"""The whole pipeline on one machine: what ``python -m sluice up`` starts, in order, and how it stops it.

Start order: PostgreSQL and Redis (our own, under the data dir, behind passwords
and TLS: :class:`sluice.secured.OwnServices`; or, with ``use_existing_services``,
the machine's, started only when not answering), Azurite, the Cassandra emulator, the Event Hubs emulator, the Key Vault
emulator, then the generated ``local.settings.json``, the ``sluice`` database,
migrations, sample reference data, and finally the dev host. Every child is
started through :mod:`sluice.launcher` (own process group, ready line awaited)
and stopped in reverse order on :meth:`LocalStack.stop`; system services are
stopped only if this stack started them.

Ports: each service wants its usual port (Event Hubs 5672, Cassandra 9042,
Azurite 10000, Key Vault 8443, HTTP 7071). When one is taken by another program
(RabbitMQ on 5672 is common), the stack says so, names the program when it can,
and uses a free port instead, unless ``strict_ports`` is set, in which case it fails.
The ports actually used are in the generated settings and in the summary.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.exceptions import SluiceError
from sluice.launcher import LaunchError, Running, python_module, start

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
POSTGRESQL_CLUSTERS = Path("/etc/postgresql")  # the machine's clusters, <version>/<name> (pg_ctlcluster)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
EMULATOR_KEY = "SAS_KEY_VALUE"  # the well-known public key of Microsoft's Event Hubs emulator
HUB = "telemetry"
CONSUMER_GROUP = "sluice"

# Local values that differ from local.settings.sample.json: 1-minute enrichment windows, so a
# few minutes of load show enriched windows (production keeps 5-minute windows). The allowed
# lateness must exceed the worst ingest lag: enrichment finds late events by enqueued time and
# re-reads only that far back, so an event stored later than that after it was enqueued is missed.
LOCAL_OVERRIDES = {
    "SLUICE_ENRICH_WINDOW_SECONDS": "60",
    "SLUICE_ENRICH_ALLOWED_LATENESS_SECONDS": "30",
    "SLUICE_ENRICH_SCHEDULE": "*/10 * * * * *",
    "SLUICE_CHANGEFEED_SCHEDULE": "*/2 * * * * *",
}


# The connections the app's triggers bind (functions/ingest.py), which the host also finds as AzureWebJobs<name>.
HOST_CONNECTIONS = ("EventHubConnection",)


def _configuration_key(name: str) -> str:
    """``name`` as .NET configuration reads it: ``__`` is ``:``, names compared ignoring case."""
    return name.replace("__", ":").lower()


class StackError(SluiceError):
    """A part of the local stack could not be started; the message says which and why."""


GENERATED = "GeneratedBy"
"""A field of the local.settings.json that ``up`` writes (the sample and a file of one's own have none); the
Functions host and the dev host read only IsEncrypted, Values, Host and ConnectionStrings."""
MARK = ".sluice-stack"
"""The file ``up`` writes in a data directory when it claims it: ``--fresh`` deletes only a directory holding it."""
MARK_TEXT = ("A data directory of `python -m sluice up` (docs/local-stack.md): `sluice up --fresh` deletes this "
             "whole directory.\n")
# What an `up` of a version without MARK created in its data directory: a directory holding nothing else is taken as
# one of those and marked. A directory holding anything else (a function app's sources, .git) is not a stack's.
OLDER_STACK_ENTRIES = frozenset({
    "own", "logs", "azurite", "cassandra", "eventhubs", "keyvault", "keyvault-certs", "redis-cluster", "manifests",
    "local.settings.json", "settings.env", "produce.log",
})


@dataclass
class StackOptions:
    """Where the local stack keeps its data, and the ports it wants."""

    data_dir: Path = ROOT / ".local" / "stack"
    host: str = "127.0.0.1"
    http_port: int = 7071
    eventhubs_port: int = 5672
    cassandra_port: int = 9042
    azurite_port: int = 10000
    keyvault_port: int = 8443
    metrics_port: int = 9464  # the dev host's Prometheus endpoint (SLUICE_METRICS_PORT), the exporter's usual port
    strict_ports: bool = False
    persist: bool = True
    database: str = "sluice"
    keyspace: str = "sluice"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sluice:"
    redis_cluster: bool = False  # a local Redis Cluster (3 masters, 3 replicas) under data_dir instead of redis_url
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    stop_services: bool = True
    use_existing_services: bool = False  # the machine's PostgreSQL and Redis, without passwords or TLS
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """An override of a setting these options have a field for is what the stack's settings will hold, so the
        field takes it: ``up`` checks, creates and (``--fresh``) deletes the database, server and keys the stack
        then uses, not those ``--database`` or ``--redis-prefix`` named. An empty value is refused: the settings
        would read their own default, which need not be the field's. So is an address (a server of the operator's)
        with our own services or a Redis Cluster, which have addresses of their own: the settings would name a
        server other than the one ``up`` starts and creates the database on. An empty ``--database``,
        ``--keyspace`` or ``--redis-prefix`` is refused too: the settings would read their own default, and
        ``--fresh`` would drop ``""`` or delete every key of the machine's Redis (``SCAN MATCH *``). So is a
        ``SLUICE_*`` name that is no setting (:func:`unknown_settings`)."""
        if unknown := unknown_settings(self.overrides):
            raise StackError("; ".join(unknown) + ": leave the --set out, or see the settings table in README.md")
        addresses = self.given("SLUICE_REDIS_URL") if self.redis_cluster else []
        if not self.use_existing_services:
            addresses = self.given("SLUICE_POSTGRES_HOST", "SLUICE_POSTGRES_PORT", "SLUICE_REDIS_URL")
        if addresses:
            raise StackError(f"--set {' and '.join(addresses)} name a server of your own, but `up` starts its own "
                             "(our own PostgreSQL and Redis, a --redis-cluster) on addresses of its own: use the "
                             "machine's or your own with --use-existing-services, or leave the --set out")
        for setting, name in SET_FIELDS.items():
            value = self.overrides.get(setting)
            if value is None:
                continue
            if not value.strip():
                raise StackError(f"--set {setting}= is empty: give a value, or leave the --set out")
            if name == "postgres_port":
                if not value.strip().isdigit() or not 1 <= int(value) <= 65535:
                    raise StackError(f"--set {setting}={value}: not a port (1-65535)")
                self.postgres_port = int(value)
            else:
                setattr(self, name, value)
        for option, value in (("--database", self.database), ("--keyspace", self.keyspace),
                              ("--redis-prefix", self.redis_prefix)):
            if not value.strip():  # an empty --set is refused above: this one is the option's
                raise StackError(f"{option} {value!r} is empty: give a name, or leave {option} out")

    def given(self, *settings: str) -> list[str]:
        """Those of ``settings`` an override gives."""
        return [setting for setting in settings if setting in self.overrides]


SET_FIELDS = {
    "SLUICE_POSTGRES_DBNAME": "database", "SLUICE_POSTGRES_HOST": "postgres_host",
    "SLUICE_POSTGRES_PORT": "postgres_port", "SLUICE_REDIS_URL": "redis_url", "SLUICE_REDIS_KEY_PREFIX": "redis_prefix",
}
"""The settings :class:`StackOptions` has a field for, and the field an override of one replaces."""


def unknown_settings(overrides: Collection[str]) -> list[str]:
    """What is wrong with each ``SLUICE_*`` name of ``overrides`` that is no setting (``shared.settings``), naming
    the closest setting. Every reader ignores such a name (the settings groups' ``extra="ignore"``), so a typo would
    leave the setting at its default and nothing would say why. A name is matched exactly: the settings ignore
    case, but ``up`` reads some overrides itself (:data:`SET_FIELDS`, ``SLUICE_METRICS_PORT``) by their names.
    Other names (``AzureWebJobs*``, ``FUNCTIONS_*``, ``OTEL_*``, ...) are the host's and the SDKs': not checked."""
    from shared.settings import GROUPS, env_names

    known = {name for group in GROUPS.values() for name in env_names(group)}
    prefix = len("SLUICE_")  # compared without it: the prefix every name shares would make any name look close
    tails = {name[prefix:]: name for name in known if name.startswith("SLUICE_")}
    problems = []
    for name in overrides:
        if name.upper().startswith("SLUICE_") and name not in known:
            closest = difflib.get_close_matches(name[prefix:].upper(), tails, n=1)
            problems.append(f"--set {name}: no such setting"
                            + (f" (did you mean {tails[closest[0]]}?)" if closest else ""))
    return problems


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(host: str, count: int, *, besides: Collection[int] = ()) -> list[int]:
    """``count`` different free ports, none of ``besides``. Each stays bound until all are chosen: one chosen by
    :func:`free_port` and let go is free again, and the kernel may hand it out for the next choice."""
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        while len(ports) < count:
            sock = held.enter_context(socket.socket())
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
            if port not in besides:
                ports.append(port)
    return ports


def who_listens(port: int) -> str | None:
    """The name of the program listening on ``port``, when the system tells us."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
    except Exception:  # best effort: permissions or psutil missing
        return None
    return None


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class StartedService:
    """A system service this stack started (and so stops)."""

    name: str
    stop: Callable[[], None]


# `python -m devhost`'s exit status when an invocation outlived functionTimeout: devhost.invocation's
# FUNCTION_TIMEOUT_EXIT (the CLI runs the dev host as a process and does not import it; a test keeps them equal).
DEVHOST_FUNCTION_TIMEOUT_EXIT = 3


class LocalStack:
    """Starts the local stack piece by piece; :meth:`stop` undoes what was started, in reverse."""

    def __init__(self, options: StackOptions, *, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.say = say
        self.children: list[Running] = []
        self.services: list[StartedService] = []
        self.ports: dict[str, int] = {}
        self.values: dict[str, str] = {}
        self.settings_path = options.data_dir / "local.settings.json"
        self.devhost: Running | None = None
        self._devhost_env: dict[str, str] | None = None
        self._devhost_unset: set[str] = set()
        self.devhost_restarts = 0  # after a function timeout (restart_after_function_timeout)
        self._logs_begun: set[str] = set()
        self._claim: Any = None  # the open lock file while claim() holds it
        self.notes: list[str] = []
        self.redis_cluster: Any = None
        self.own: Any = None  # sluice.secured.OwnServices, unless use_existing_services
        self._reaper: subprocess.Popen[bytes] | None = None
        self._reserved: list[tuple[Path, int]] = []  # the ports' lock files, held (_reserve) until stop()

    def _own(self) -> Any:
        if self.own is None:
            from sluice.secured import OwnServices

            self.own = OwnServices(self.options.data_dir / "own", host=self.options.host, keep=self.options.persist)
        return self.own

    def _start_own(self, what: str, start: Callable[[], Any]) -> Any:
        from sluice.secured import ServiceError

        try:
            return start()
        except ServiceError as exc:
            raise StackError(f"our own {what} did not start: {exc}") from None

    # --- one stack per data directory ---

    def claim(self) -> None:
        """Hold ``<data dir>.lock`` until :meth:`stop`, or refuse to run, naming the ``up`` that holds it.

        Two stacks on one data directory would share our own PostgreSQL's data, the settings and the
        logs, and ``--fresh`` would delete them under the other; the lock sits beside the directory, so a
        wipe does not remove it. The operating system releases it when this process ends, however it ends.
        Then the directory is marked as ``up``'s (:meth:`_mark`), or refused when it holds what ``up`` did not
        make.
        """
        data_dir = self.options.data_dir.resolve()
        if not data_dir.name:  # the lock sits beside the directory: "/" has no beside (nor is it a stack's)
            raise StackError(f"--data-dir {data_dir} is the root directory, not a data directory of `sluice up`: "
                             "give --data-dir a new or empty directory")
        path = data_dir.with_name(data_dir.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StackError(f"{data_dir} is in use by another `sluice up` (pid {holder}): stop that one, or give "
                             "this one its own --data-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._claim = handle
        try:
            self._mark()
        except BaseException:
            self._claim = None
            handle.close()
            raise

    def foreign(self) -> list[str]:
        """What makes the data directory not one of ``up``'s: nothing when it is absent, empty, holds
        :data:`MARK`, or holds only what an ``up`` of an older version created (:data:`OLDER_STACK_ENTRIES`);
        otherwise its entries that ``up`` does not create."""
        data_dir = self.options.data_dir
        if not data_dir.exists():
            return []
        if not data_dir.is_dir():
            return [f"{data_dir.name} (not a directory)"]
        if (data_dir / MARK).is_file():
            return []
        return sorted(entry.name for entry in data_dir.iterdir() if entry.name not in OLDER_STACK_ENTRIES)

    def _mark(self) -> None:
        """Make the data directory ``up``'s, before anything else is created in it: write :data:`MARK`; or refuse,
        naming what in it is not ``up``'s (``--data-dir .`` in a function app would otherwise be written into, and
        wiped by ``--fresh``)."""
        data_dir = self.options.data_dir
        foreign = self.foreign()
        if foreign:
            shown = ", ".join(foreign[:8]) + (", ..." if len(foreign) > 8 else "")
            raise StackError(f"{data_dir} is not a data directory of `sluice up` (no {MARK} in it, and it holds "
                             f"{shown}): not using it, nor deleting it with --fresh; give --data-dir a new or "
                             "empty directory")
        data_dir.mkdir(parents=True, exist_ok=True)
        mark = data_dir / MARK
        if not mark.is_file():
            mark.write_text(MARK_TEXT, encoding="utf-8")

    def wipe(self) -> bool:
        """``--fresh``: stop what a killed ``up`` left running of its own PostgreSQL and Redis (by their pid files),
        delete the data directory (once :meth:`claim` holds it: only a directory of ``up``'s), then mark it again;
        False when there was nothing to delete."""
        data_dir = self.options.data_dir
        foreign = self.foreign()
        if foreign:  # claim() refused it already; kept as the last guard before rmtree
            raise StackError(f"--fresh: {data_dir} is not a data directory of `sluice up` (it holds "
                             f"{', '.join(foreign[:8])}); not deleting it")
        from sluice.redis_cluster import stop_stale_nodes
        from sluice.secured import OwnServices, ServiceError, postgres_directory

        try:  # a killed run's servers, found by their pid files, before those are deleted
            OwnServices(data_dir / "own", host=self.options.host).stop_stale()
            stop_stale_nodes(data_dir / "redis-cluster")
        except ServiceError as exc:
            raise StackError(f"--fresh: {exc}") from None
        wiped = False
        if data_dir.exists() and any(entry.name != MARK for entry in data_dir.iterdir()):
            shutil.rmtree(data_dir)
            wiped = True
        moved = postgres_directory(data_dir / "own" / "postgres")  # our own PostgreSQL's, when it could not be here
        if moved != data_dir / "own" / "postgres" and moved.exists():
            shutil.rmtree(moved)
            wiped = True
        self._mark()
        return wiped

    # --- ports ---

    def _reserve(self, port: int) -> bool:
        """Hold ``port`` for this stack until :meth:`stop` (a lock file in ``/tmp/sluice-ports``): a port is chosen
        free long before its server binds it (the dev host's, after the migrations), and another ``up`` starting
        meanwhile would find it free too. False when another ``up`` holds it.

        :meth:`stop` removes the file while it holds its lock, so the file another ``up`` opened just before may be
        gone once that one locks it: a lock on a file no longer in the directory holds nothing (a third ``up`` would
        create the file afresh and lock it too), so the file locked must be the one the path names, or it is opened
        again."""
        directory = Path(tempfile.gettempdir()) / "sluice-ports"
        directory.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            directory.chmod(0o1777)
        path = directory / f"{self.options.host}-{port}.lock"
        while True:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            if _names(path, fd):
                self._reserved.append((path, fd))
                return True
            os.close(fd)  # removed by the `up` that held it, between our open and our lock

    def _free_reserved_port(self) -> int:
        while True:
            port = free_port(self.options.host)
            if self._reserve(port):
                return port

    def _port(self, name: str, wanted: int) -> int:
        host = self.options.host
        if wanted == 0:
            return self._free_reserved_port()
        free = port_free(host, wanted)
        if free and self._reserve(wanted):
            return wanted
        holder = who_listens(wanted) if not free else "another `sluice up`, for a server it has not started yet"
        message = f"{name}: port {wanted} on {host} is in use" + (f" by {holder}" if holder else "")
        if self.options.strict_ports:
            raise StackError(message + "; stop it, or choose another port (see `sluice up --help`)")
        chosen = self._free_reserved_port()
        note = f"{message}; using port {chosen} instead (clients must use the settings printed below)"
        self.notes.append(note)
        self.say(f"[yellow]warning:[/] {note}")
        return chosen

    # --- system services ---

    def ensure_postgres(self) -> None:
        """Our own PostgreSQL, or the machine's (started when it does not answer, unless an override gives its
        address: a server of the operator's)."""
        opts = self.options
        if not opts.use_existing_services:
            self.say("starting our own PostgreSQL (scram-sha-256, TLS)")
            server = self._start_own("PostgreSQL", lambda: self._own().start_postgres(opts.database))
            opts.postgres_host, opts.postgres_port = server.host, server.port
            self.ports["postgres"] = server.port
            if server.directory != opts.data_dir / "own" / "postgres":
                note = (f"our own PostgreSQL keeps its data in {server.directory}: the postgres user cannot enter "
                        f"{opts.data_dir} (`--fresh` deletes it too)" if not server.temporary else
                        f"our own PostgreSQL runs in {server.directory} until it stops (the postgres user cannot "
                        f"enter {opts.data_dir}, and this stack keeps no data)")
                self.notes.append(note)
                self.say(note)
            return
        if answers(opts.postgres_host, opts.postgres_port):
            return
        if given := opts.given("SLUICE_POSTGRES_HOST", "SLUICE_POSTGRES_PORT"):
            raise StackError(f"PostgreSQL does not answer on {opts.postgres_host}:{opts.postgres_port}, the address "
                             f"given by --set {' and '.join(given)}: start it, or leave the --set out")
        from sluice.secured import version_order

        versions = sorted(os.listdir(POSTGRESQL_CLUSTERS), key=version_order) if POSTGRESQL_CLUSTERS.is_dir() else []
        if not versions or not shutil.which("pg_ctlcluster"):
            raise StackError(f"PostgreSQL does not answer on {opts.postgres_host}:{opts.postgres_port} and no "
                             "cluster was found in /etc/postgresql: run `bash scripts/install.sh`")
        version = versions[-1]
        self.say(f"starting PostgreSQL {version} (pg_ctlcluster)")
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], "start PostgreSQL")
        _wait(lambda: answers(opts.postgres_host, opts.postgres_port), 30, "PostgreSQL to accept connections")
        self.services.append(StartedService("PostgreSQL", lambda: _run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop"], "stop PostgreSQL")))

    def ensure_redis(self) -> None:
        """A Redis Cluster, our own Redis, or the machine's (started when it does not answer, unless an override
        gives its URL: a server of the operator's)."""
        if self.options.redis_cluster:
            self.start_redis_cluster()
            return
        if not self.options.use_existing_services:
            self.say("starting our own Redis (ACL user, TLS)")
            server = self._start_own("Redis", lambda: self._own().start_redis(log=self.log_path("redis-server")))
            self.children.append(server.running)  # watched as every child: its exit stops `up`
            self.options.redis_url = server.url(tls=True)
            self.ports["redis"] = server.tls_port
            return
        import redis

        client = redis.Redis.from_url(self.options.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
            return
        except redis.RedisError:
            if self.options.given("SLUICE_REDIS_URL"):
                raise StackError(f"Redis does not answer at {self.options.redis_url}, the URL given by --set "
                                 "SLUICE_REDIS_URL: start it, or leave the --set out") from None
        host, port = client.connection_pool.connection_kwargs["host"], client.connection_pool.connection_kwargs["port"]
        if not shutil.which("redis-server"):
            raise StackError(f"Redis does not answer at {self.options.redis_url} and redis-server is not installed: "
                             "run `bash scripts/install.sh`")
        self.say(f"starting Redis on {host}:{port}")
        _run(["redis-server", "--daemonize", "yes", "--bind", str(host), "--port", str(port), "--save", "",
              "--appendonly", "no"], "start Redis")
        _wait(lambda: _pings(client), 15, "Redis to answer PING")

        def stop_redis() -> None:
            with contextlib.suppress(redis.RedisError):  # shutting down drops the connection: that is success
                client.shutdown(nosave=True)

        self.services.append(StartedService("Redis", stop_redis))

    def start_redis_cluster(self) -> None:
        """A real Redis Cluster under ``<data dir>/redis-cluster`` on free ports, stopped with the stack."""
        from sluice.redis_cluster import ClusterError, LocalRedisCluster

        self.say("starting a Redis Cluster (3 masters, 3 replicas)")
        try:
            cluster = LocalRedisCluster(self._dir("redis-cluster")).start()
        except ClusterError as exc:
            raise StackError(f"Redis Cluster: {exc}") from None
        self.options.redis_url = cluster.url
        self.ports["redis-cluster"] = cluster.ports[0]
        self.redis_cluster = cluster  # stopped by stop() even with --keep-services: it lives under the data dir

    # --- children ---

    def guard_against_a_hard_kill(self) -> None:
        """Start ``sluice.reaper`` and mark every child started from now on: if this process dies before
        :meth:`stop` ran (``kill -9``, the OOM killer), the reaper stops them (see sluice/reaper.py).

        Called before anything starts. Our own PostgreSQL and Redis, and a system service this stack starts, are
        started unmarked (``SLUICE_STACK_ID`` emptied): the former are left to the next ``up``, which stops them by
        their pid files, and the latter is never the reaper's to stop. A Redis Cluster's nodes are marked.
        """
        from sluice.reaper import MARKER

        marker = f"{os.getpid()}-{time.time_ns()}"
        log = self.log_path("reaper").open("ab")
        try:
            self._reaper = subprocess.Popen(
                python_module("sluice.reaper", "--marker", marker, "--up-pid", str(os.getpid())),
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                env={name: value for name, value in os.environ.items() if name != MARKER})
        finally:
            log.close()
        os.environ[MARKER] = marker

    def _child(self, name: str, argv: list[str], *, timeout: float = 60.0, ready: re.Pattern[str] | None = None,
               env: dict[str, str] | None = None, unset: Collection[str] = ()) -> Running:
        kwargs: dict[str, Any] = {"timeout": timeout, "cwd": str(ROOT), "env": env, "unset": unset,
                                  "log": self.log_path(name)}
        if ready is not None:
            kwargs["ready"] = ready
        try:
            running = start(name, argv, **kwargs)
        except LaunchError as exc:
            raise StackError(f"{name} did not start: {exc}") from None
        self.children.append(running)
        return running

    @property
    def logs_dir(self) -> Path:
        return self._dir("logs")

    def log_path(self, name: str) -> Path:
        """``<data dir>/logs/<name>.log``: everything child ``name`` printed in this run, written as it comes
        (a child restarted within the run appends to it)."""
        path = self.logs_dir / f"{name}.log"
        if name not in self._logs_begun:
            self._logs_begun.add(name)
            path.unlink(missing_ok=True)
        return path

    def _dir(self, name: str, *, private: bool = False) -> Path:
        """``<data dir>/<name>``, created if missing; ``private``: 0700 (also when an older run left it 0755), for
        a directory that holds secrets."""
        path = self.options.data_dir / name
        path.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
        if private:
            path.chmod(0o700)
        return path

    def start_azurite(self) -> None:
        if not AZURITE.exists():
            raise StackError(f"{AZURITE} is missing: run `bash scripts/install.sh` (npm ci)")
        port = self._port("Azurite (blob)", self.options.azurite_port)
        storage = ["--location", str(self._dir("azurite"))] if self.options.persist else ["--inMemoryPersistence"]
        argv = [str(AZURITE), *storage, "--skipApiVersionCheck", "--loose", "--disableTelemetry",
                "--blobHost", self.options.host, "--blobPort", str(port)]
        running = self._child("azurite", argv, ready=re.compile(r"listens on http://(?P<host>[\d.]+):(?P<port>\d+)"))
        self.ports["azurite"] = running.port

    def start_cassandra(self) -> None:
        port = self._port("Cassandra emulator", self.options.cassandra_port)
        data = ["--data-dir", str(self._dir("cassandra"))] if self.options.persist else []
        secured = [] if self.options.use_existing_services else self._own().cassandra_args()
        running = self._child("cassandra-emulator", python_module(
            "emulators.cassandra", "--host", self.options.host, "--port", str(port), *data, *secured))
        self.ports["cassandra"] = running.port

    def start_eventhubs(self) -> None:
        port = self._port("Event Hubs emulator", self.options.eventhubs_port)
        data = ["--data-dir", str(self._dir("eventhubs"))] if self.options.persist else []
        running = self._child("eventhubs-emulator", python_module(
            "emulators.eventhubs", "--config", str(ROOT / "emulators" / "eventhubs" / "config.json"),
            "--host", self.options.host, "--port", str(port), *data))
        self.ports["eventhubs"] = running.port

    def start_keyvault(self) -> None:
        if not (ROOT / "emulators" / "keyvault" / "__main__.py").exists():
            return
        port = self._port("Key Vault emulator", self.options.keyvault_port)
        cert_dir = self._dir("keyvault-certs")
        # vault.json holds every secret's value (our own stores' passwords): the directory is the owner's alone
        data = ["--data-dir", str(self._dir("keyvault", private=True))] if self.options.persist else []
        running = self._child("keyvault-emulator", python_module(
            "emulators.keyvault", "--cert-dir", str(cert_dir), "--host", self.options.host, "--port", str(port), *data))
        self.ports["keyvault"] = running.port
        if self.own is not None:
            self.own.seed(f"https://{self.options.host}:{running.port}", cert_dir / "ca.pem")

    # --- settings, databases, data ---

    @property
    def eventhub_connection(self) -> str:
        return (f"Endpoint=sb://{self.options.host}:{self.ports['eventhubs']};"
                f"SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={EMULATOR_KEY};"
                "UseDevelopmentEmulator=true")

    @property
    def storage_connection(self) -> str:
        return ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                f"AccountKey={AZURITE_KEY};BlobEndpoint=http://{self.options.host}:{self.ports['azurite']}"
                "/devstoreaccount1;")

    def write_settings(self) -> Path:
        """``local.settings.json`` for the dev host: the sample's values with this stack's addresses."""
        opts = self.options
        sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))
        values: dict[str, str] = dict(sample["Values"])
        values.update(LOCAL_OVERRIDES)
        values.update({
            "AzureWebJobsStorage": self.storage_connection,
            "EventHubConnection": self.eventhub_connection,
            "SLUICE_INGEST_EVENTHUB_NAME": HUB,
            "SLUICE_INGEST_CONSUMER_GROUP": CONSUMER_GROUP,
            "SLUICE_CASSANDRA_HOSTS": opts.host,
            "SLUICE_CASSANDRA_PORT": str(self.ports["cassandra"]),
            "SLUICE_CASSANDRA_KEYSPACE": opts.keyspace,
            "SLUICE_REDIS_URL": opts.redis_url,
            "SLUICE_REDIS_KEY_PREFIX": opts.redis_prefix,
            "SLUICE_REDIS_CLUSTER": "true" if opts.redis_cluster else "",
            "SLUICE_POSTGRES_HOST": opts.postgres_host,
            "SLUICE_POSTGRES_PORT": str(opts.postgres_port),
            "SLUICE_POSTGRES_DBNAME": opts.database,
        })
        if "metrics" not in self.ports and (metrics := self._metrics_port()) is not None:
            self.ports["metrics"] = metrics
        if "http" not in self.ports:  # Host.LocalHttpPort below names the port the dev host (or `func start`) gets
            self.ports["http"] = self._port("dev host (HTTP)", opts.http_port)
        if "keyvault" in self.ports:
            values["SLUICE_KEYVAULT_URL"] = f"https://{opts.host}:{self.ports['keyvault']}"
            values["SLUICE_KEYVAULT_CA_FILE"] = str(opts.data_dir / "keyvault-certs" / "ca.pem")
        if self.own is not None:
            values.update(self.own.settings(opts.database, self.ports["cassandra"]))
        # The metrics endpoint on the stack's host, as every other server of the stack, where its port was checked
        # free and reserved (the sample's 0.0.0.0 is for a pod: a clash on another address went unnoticed).
        values["SLUICE_METRICS_ADDRESS"] = opts.host
        values.update(opts.overrides)
        values["SLUICE_METRICS_PORT"] = str(self.ports["metrics"]) if "metrics" in self.ports else ""
        self.values = values
        document = {"IsEncrypted": False, "Values": values, "Host": {"LocalHttpPort": self.ports["http"]},
                    GENERATED: "python -m sluice up (docs/local-stack.md): rewritten at each start"}
        self.settings_path.parent.mkdir(parents=True, exist_ok=True)
        self.settings_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        # The same values for a shell: `source <data dir>/settings.env`, then any `python -m sluice ...` command.
        url = self.metrics_url
        exports = (f"# the dev host's metrics: {url}\n" if url else "# the dev host serves no metrics "
                   "(SLUICE_METRICS_PORT is empty)\n") + "".join(
            f"export {name}={shlex.quote(value)}\n" for name, value in values.items()
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name))
        (self.settings_path.parent / "settings.env").write_text(exports, encoding="utf-8")
        return self.settings_path

    def _metrics_port(self) -> int | None:
        """The dev host's metrics port: the one ``--set SLUICE_METRICS_PORT`` gives (``0``: a free one, chosen here,
        so that the URL shown is the one served; empty: None, no endpoint), else :attr:`StackOptions.metrics_port`,
        or a free one when that is taken. The HTTP port wins a clash: a default metrics port equal to it moves (even
        with ``strict_ports``: the metrics port was not asked for), a given one is refused naming both settings."""
        opts = self.options
        http = self.ports.get("http", opts.http_port)
        given = opts.overrides.get("SLUICE_METRICS_PORT")
        if given is None:
            if opts.metrics_port == 0 or opts.metrics_port != http:
                return self._port("dev host metrics", opts.metrics_port)
            chosen = self._free_reserved_port()
            note = (f"dev host metrics: port {http} is the dev host's HTTP port (--http-port); serving the metrics "
                    f"on port {chosen} instead (SLUICE_METRICS_PORT)")
            self.notes.append(note)
            self.say(f"[yellow]warning:[/] {note}")
            return chosen
        if not given.strip():
            return None
        try:
            port = int(given)
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            raise StackError(f"--set SLUICE_METRICS_PORT={given}: not a port (0-65535; 0 = any free port, empty = no "
                             "metrics endpoint)")
        if port == 0:
            return self._free_reserved_port()
        if port == http:
            raise StackError(f"--set SLUICE_METRICS_PORT={given} is also the dev host's HTTP port (--http-port "
                             f"{http}): the HTTP server and the metrics need different ports; change one of them")
        self._reserve(port)  # held against another `up` when it can be; given, it is used either way
        return port

    @property
    def metrics_url(self) -> str | None:
        """Where the dev host serves its OpenTelemetry metrics (Prometheus text), once the settings are written; None
        when they give it no endpoint (``--set SLUICE_METRICS_PORT=``)."""
        port = self.ports.get("metrics")
        return None if port is None else f"http://{self.options.host}:{port}/metrics"

    def write_root_settings(self) -> Path:
        """Also write the settings to ``./local.settings.json`` (for ``func start``); one that ``up`` did not write
        (no :data:`GENERATED` field) is kept as .bak first. One ``up`` wrote is replaced: it never goes to the
        .bak, which keeps the operator's own file however many times ``up`` runs."""
        target = ROOT / "local.settings.json"
        text = self.settings_path.read_text(encoding="utf-8")
        if target.exists():
            current = target.read_text(encoding="utf-8")
            if current != text and not _generated(current):
                shutil.copyfile(target, target.with_name("local.settings.json.bak"))
                self.say(f"kept the previous {target.name} as {target.name}.bak")
        target.write_text(text, encoding="utf-8")
        return target

    def env(self) -> dict[str, str]:
        """The environment a command run against this stack needs (the settings' values)."""
        return {k: v for k, v in self.values.items() if v != ""}

    def inherited_settings(self) -> set[str]:
        """The names of every setting this process inherited that would wire a child to another stack, for the
        child's environment to leave out: ``SLUICE_*`` (but the reaper's marker) and every name the host would read
        as one of the settings this stack writes (a shell that sourced an earlier run's settings.env has them all,
        with that run's ports). Removed, not emptied: the host binds the connection ``EventHubConnection`` to the
        first section that *exists* of ``ConnectionStrings:AzureWebJobsEventHubConnection``,
        ``AzureWebJobsEventHubConnection``, ``ConnectionStrings:EventHubConnection`` and ``EventHubConnection``
        (``devhost.settings.connection_section``; an empty value exists), and ``AzureWebJobsStorage`` to
        ``ConnectionStrings:AzureWebJobsStorage`` first, so any of them inherited, even empty, would win over this
        stack's own; and so would a setting's ``__`` children or its name in another case or with ``:``. The dev
        host, as ``func start``, applies local.settings.json only where the environment holds no value."""
        from sluice.reaper import MARKER

        sections = {_configuration_key(prefix + name) for name in [*self.values, *(
            f"AzureWebJobs{connection}" for connection in HOST_CONNECTIONS)] for prefix in ("", "ConnectionStrings:")}

        def read_as_a_setting(name: str) -> bool:
            key = _configuration_key(name)
            return key in sections or any(key.startswith(section + ":") for section in sections)

        return {name for name in os.environ
                if name != MARKER and (name.startswith("SLUICE_") or read_as_a_setting(name))}

    def create_database(self) -> bool:
        """Create the PostgreSQL database if it is missing; True when it was created."""
        import psycopg
        from psycopg import sql

        admin = f"host={self.options.postgres_host} port={self.options.postgres_port} user=postgres dbname=postgres"
        owner: sql.Composable = sql.SQL("")
        if self.own is not None and self.own.postgres is not None:
            admin, owner = self.own.postgres.admin_dsn(), sql.SQL(" OWNER {}").format(sql.Identifier(self.own.user))
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.options.database,)).fetchone()
            if exists:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(self.options.database), owner))
        return True

    def sluice(self, *args: str, what: str, timeout: float = 300.0) -> str:
        """Run ``python -m sluice *args`` against this stack; its output, or a StackError with it."""
        result = subprocess.run(
            [sys.executable, "-m", "sluice", *args], cwd=ROOT,
            env={**{name: value for name, value in os.environ.items() if name not in self.inherited_settings()},
                 **self.env()},
            capture_output=True, text=True, timeout=timeout,
        )
        if result.returncode != 0:
            raise StackError(f"{what} failed (`python -m sluice {' '.join(args)}`):\n{result.stdout}{result.stderr}")
        return result.stdout

    def migrate(self) -> str:
        return self.sluice("migrate", "all", what="migrations")

    def reference_command(self) -> list[str] | None:
        """The sample reference data loader's arguments, if the loader exists in this checkout."""
        if (ROOT / "sluice" / "commands" / "reference.py").exists():
            return ["reference", "load-sample"]
        return None

    def start_devhost(self, *, env: dict[str, str] | None = None) -> Running:
        """Start the dev host on the HTTP port the settings name (chosen by :meth:`write_settings`), with this
        stack's settings over any inherited from the shell (:meth:`inherited_settings`, left out of its environment);
        ``env`` over both."""
        if "http" not in self.ports:
            self.ports["http"] = self._port("dev host (HTTP)", self.options.http_port)
        self._devhost_env = dict(env or {})
        self._devhost_unset = self.inherited_settings() - self._devhost_env.keys()
        return self._launch_devhost(self.ports["http"])

    def _launch_devhost(self, port: int) -> Running:
        running = self._child("devhost", python_module(
            "devhost", "--settings", str(self.settings_path), "--host", self.options.host, "--port", str(port),
            "--script-root", str(ROOT)), timeout=90, env=self._devhost_env, unset=self._devhost_unset)
        self.devhost = running
        return running

    def restart_after_function_timeout(self, dead: Running) -> bool:
        """Start the dev host again, on its port, if ``dead`` is the dev host and it exited because an invocation
        outlived host.json's ``functionTimeout``: the Functions host restarts its worker then. False for any other
        exit, which is a failure for the caller to report."""
        if dead is not self.devhost or dead.process.returncode != DEVHOST_FUNCTION_TIMEOUT_EXIT:
            return False
        self.children.remove(dead)
        self.devhost_restarts += 1
        self.say(f"[yellow]the dev host exited: an invocation outlived host.json's functionTimeout (see "
                 f"{self.log_path('devhost')}); starting it again, as the Functions host restarts its worker")
        self._launch_devhost(self.ports["http"])
        return True

    def lost(self) -> str | None:
        """What stopped on its own among what this stack watches besides its children: our own PostgreSQL, a
        daemon of pg_ctl (our own Redis is a child). None while all runs."""
        postgres = self.own.postgres if self.own is not None else None
        if postgres is None or postgres.pid is None or postgres.alive():
            return None
        log = postgres.directory / "postgres.log"
        with contextlib.suppress(OSError):
            tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])
            return f"our own PostgreSQL exited (pid {postgres.pid}); the end of {log}:\n{tail}"
        return f"our own PostgreSQL exited (pid {postgres.pid})"

    # --- stopping ---

    def stop(self) -> list[str]:
        """Stop every child (newest first, SIGTERM then SIGKILL) and the services this stack started.

        What each child printed stays in :meth:`log_path`.
        """
        problems = []
        for running in reversed(self.children):
            try:
                code = running.stop(stop_timeout=20 if running.name == "devhost" else 10)
                self.say(f"stopped {running.name} (exit {code})")
            except Exception as exc:
                problems.append(f"{running.name}: {exc!r}")
        self.children.clear()
        if self.own is not None:
            try:
                self.own.stop()
                self.say("stopped our own PostgreSQL and Redis")
            except Exception as exc:
                problems.append(f"own PostgreSQL/Redis: {exc!r}")
            self.own = None
        if self.redis_cluster is not None:
            try:
                self.redis_cluster.stop()
                self.say("stopped Redis Cluster (this stack started it)")
            except Exception as exc:
                problems.append(f"Redis Cluster: {exc!r}")
            self.redis_cluster = None
        if self.options.stop_services:
            for service in reversed(self.services):
                try:
                    service.stop()
                    self.say(f"stopped {service.name} (this stack started it)")
                except Exception as exc:
                    problems.append(f"{service.name}: {exc!r}")
            self.services.clear()
        self._release_reaper()
        for path, fd in self._reserved:
            # Removed while locked, and only while the path still names it (_reserve): whoever locks it after us sees
            # it gone and opens the path again.
            with contextlib.suppress(OSError):
                if _names(path, fd):
                    path.unlink()
            with contextlib.suppress(OSError):
                os.close(fd)
        self._reserved.clear()
        if self._claim is not None:
            self._claim.close()  # releases the lock
            self._claim = None
        return problems

    def _release_reaper(self) -> None:
        """Tell the reaper the stop ran (it then exits without stopping anything) and unmark this process."""
        from sluice.reaper import DONE, MARKER

        os.environ.pop(MARKER, None)
        reaper, self._reaper = self._reaper, None
        if reaper is None or reaper.stdin is None:
            return
        with contextlib.suppress(OSError):
            reaper.stdin.write(DONE + b"\n")
            reaper.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            reaper.wait(timeout=10)


def _generated(text: str) -> bool:
    """Whether a local.settings.json is one :meth:`LocalStack.write_settings` wrote (it holds :data:`GENERATED`)."""
    try:
        document = json.loads(text)
    except ValueError:
        return False
    return isinstance(document, dict) and GENERATED in document


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` names the file open as ``fd`` (not another file created there since, nor none)."""
    try:
        named, opened = path.stat(), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _run(argv: list[str], what: str) -> None:
    from sluice.reaper import unmarked_environ

    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=unmarked_environ())
    if result.returncode != 0:
        raise StackError(f"could not {what} (`{' '.join(argv)}` exited {result.returncode}):\n"
                         f"{result.stdout}{result.stderr}")


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise StackError(f"gave up waiting {timeout:.0f}s for {what}")
        time.sleep(0.25)
