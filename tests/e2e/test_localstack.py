"""The local stack's own decisions: ports, generated settings (no services started here)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from devhost.invocation import FUNCTION_TIMEOUT_EXIT
from shared.settings import load_settings
from sluice.launcher import Running
from sluice.localstack import DEVHOST_FUNCTION_TIMEOUT_EXIT, MARK, ROOT, LocalStack, StackError, StackOptions


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_replaced_by_a_free_one_and_said(tmp_path, busy_port):
    said = []
    stack = LocalStack(StackOptions(data_dir=tmp_path), say=said.append)
    chosen = stack._port("Event Hubs emulator", busy_port)
    assert chosen != busy_port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", chosen))  # really free
    assert f"port {busy_port}" in said[0] and f"using port {chosen}" in said[0]
    assert stack.notes == [said[0].removeprefix("[yellow]warning:[/] ")]


def test_strict_ports_refuse_a_taken_port_naming_it(tmp_path, busy_port):
    stack = LocalStack(StackOptions(data_dir=tmp_path, strict_ports=True), say=lambda _: None)
    with pytest.raises(StackError, match=rf"Event Hubs emulator: port {busy_port} on 127.0.0.1 is in use"):
        stack._port("Event Hubs emulator", busy_port)


def test_port_zero_means_any_free_port(tmp_path):
    stack = LocalStack(StackOptions(data_dir=tmp_path), say=lambda _: None)
    assert stack._port("x", 0) > 0
    assert stack.notes == []


def test_generated_settings_are_valid_and_name_the_ports_in_use(tmp_path):
    stack = LocalStack(
        StackOptions(data_dir=tmp_path, keyspace="ks_local", overrides={"SLUICE_ENRICH_WINDOW_SECONDS": "30"}),
        say=lambda _: None,
    )
    stack.ports = {"azurite": 10123, "cassandra": 9123, "eventhubs": 5999, "keyvault": 8999}
    path = stack.write_settings()
    document = json.loads(path.read_text())
    values = document["Values"]
    assert (
        "127.0.0.1:5999" in values["EventHubConnection"]
        and "UseDevelopmentEmulator=true" in values["EventHubConnection"]
    )
    assert "127.0.0.1:10123/devstoreaccount1" in values["AzureWebJobsStorage"]
    assert values["SLUICE_CASSANDRA_PORT"] == "9123" and values["SLUICE_CASSANDRA_KEYSPACE"] == "ks_local"
    assert values["SLUICE_KEYVAULT_URL"] == "https://127.0.0.1:8999"
    assert values["SLUICE_ENRICH_WINDOW_SECONDS"] == "30"  # --set wins over the local defaults
    ca = Path(values["SLUICE_KEYVAULT_CA_FILE"])  # the Key Vault emulator writes it when it starts (not here)
    assert tmp_path in ca.parents
    ca.parent.mkdir(parents=True, exist_ok=True)
    trustme.CA().cert_pem.write_to_path(str(ca))  # settings load the bundle: it must hold a certificate
    settings = load_settings({k: v for k, v in values.items() if v != ""})
    assert settings.cassandra.port == 9123 and settings.enrichment.window_seconds == 30
    # settings.env gives a shell the same values, quoting included (schedules hold spaces and stars).
    shell = subprocess.run(["bash", "-c", f"source {tmp_path / 'settings.env'} && env -0"],
                           capture_output=True, text=True, check=True, env={})
    exported = dict(item.split("=", 1) for item in shell.stdout.split("\0") if "=" in item)
    for name in ("SLUICE_CHANGEFEED_SCHEDULE", "SLUICE_CRITICAL_RULES", "EventHubConnection", "AzureWebJobsStorage"):
        assert exported[name] == values[name]


def test_the_settings_name_the_http_port_the_dev_host_gets(tmp_path, busy_port):
    """Host.LocalHttpPort is the port chosen for the dev host (or `func start`), not the one asked for."""
    stack = LocalStack(StackOptions(data_dir=tmp_path, http_port=busy_port), say=lambda _: None)
    stack.ports = {"azurite": 10123, "cassandra": 9123, "eventhubs": 5999}
    document = json.loads(stack.write_settings().read_text())
    assert document["Host"]["LocalHttpPort"] == stack.ports["http"] != busy_port


def test_our_own_postgresql_exiting_is_reported_with_the_end_of_its_log(tmp_path):
    """pg_ctl runs it as a daemon, no child of `up`: the postmaster's pid is what the stack watches."""
    from types import SimpleNamespace

    from sluice.secured import LocalPostgres

    (tmp_path / "postgres.log").write_text("LOG:  database system is ready\nFATAL:  terminating\n")
    postgres = LocalPostgres(ca=None, directory=tmp_path, pid=os.getpid())
    stack = LocalStack(StackOptions(data_dir=tmp_path), say=lambda _: None)
    stack.own = SimpleNamespace(postgres=postgres)
    assert stack.lost() is None
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    postgres.pid = gone.pid
    lost = stack.lost()
    assert lost is not None and f"our own PostgreSQL exited (pid {gone.pid})" in lost and "FATAL:  terminating" in lost


def test_the_backup_of_a_previous_root_settings_file_is_git_ignored():
    """`up --no-devhost` keeps a different ./local.settings.json as .bak: it may hold real connection strings."""
    result = subprocess.run(["git", "check-ignore", "-q", "local.settings.json.bak"], cwd=ROOT, check=False)
    assert result.returncode == 0, "local.settings.json.bak (written by `sluice up --no-devhost`) is not git-ignored"


def test_up_refuses_a_bounded_run_without_load_before_starting_anything(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sluice", "up", "--duration", "5", "--no-load", "--data-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert result.returncode == 2
    assert "--duration" in result.stderr and "--no-load" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_the_stack_gives_the_dev_host_a_metrics_port_and_says_where(tmp_path, busy_port):
    """9464 by default; a taken port moves with a note, as the Event Hubs port does."""
    said = []
    stack = LocalStack(StackOptions(data_dir=tmp_path, metrics_port=busy_port), say=said.append)
    stack.ports = {"azurite": 10123, "cassandra": 9123, "eventhubs": 5999}
    values = json.loads(stack.write_settings().read_text())["Values"]
    port = int(values["SLUICE_METRICS_PORT"])
    assert port != busy_port and any(f"dev host metrics: port {busy_port}" in s for s in said)
    assert stack.metrics_url == f"http://127.0.0.1:{port}/metrics"
    assert (tmp_path / "settings.env").read_text().startswith(f"# the dev host's metrics: {stack.metrics_url}\n")


def test_the_metrics_port_is_free_where_the_dev_host_binds_it(tmp_path):
    """The port is checked and reserved on the stack's host, so the dev host listens there. Was: the sample's
    SLUICE_METRICS_ADDRESS=0.0.0.0, every interface: a program holding the port on another address went unnoticed,
    the dev host's bind failed (telemetry only logs it), and nothing served the metrics `up` pointed at."""
    with socket.socket() as other:  # another program's server on another loopback address
        other.bind(("127.0.0.2", 0))
        other.listen()
        port = other.getsockname()[1]
        stack = LocalStack(StackOptions(data_dir=tmp_path, use_existing_services=True, metrics_port=port),
                           say=lambda _: None)
        stack.ports = {"eventhubs": 45672, "azurite": 40000, "cassandra": 49042, "http": 47071}
        try:
            stack.write_settings()
            address, chosen = stack.values["SLUICE_METRICS_ADDRESS"], int(stack.values["SLUICE_METRICS_PORT"])
            with socket.socket() as devhost:  # what the dev host's exporter does (start_http_server)
                devhost.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                devhost.bind((address, chosen))
        finally:
            stack.stop()
    assert address == "127.0.0.1"


CHATTY = """
import sys, time
print("listening on 127.0.0.1:1", flush=True)
for i in range(300):
    print(f"line {i}", flush=True)
print("waiting", flush=True)
time.sleep(60)
"""


def _wait_for_line(path, text, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, path.read_text() if path.exists() else f"{path} was never written"
        time.sleep(0.05)


def test_each_childs_log_is_written_as_it_comes_and_begins_afresh_each_run(tmp_path):
    stale = tmp_path / "logs" / "chatty.log"
    stale.parent.mkdir()
    stale.write_text("a line of the previous run\n")
    stack = LocalStack(StackOptions(data_dir=tmp_path), say=lambda _: None)
    running = stack._child("chatty", [sys.executable, "-c", CHATTY], timeout=30)
    try:
        _wait_for_line(stale, "waiting")  # while the child still runs, every line is there, not only the last 200
        lines = stale.read_text().splitlines()
        assert lines == ["listening on 127.0.0.1:1", *(f"line {i}" for i in range(300)), "waiting"]
        assert len(running.output().splitlines()) == 200
        again = stack._child("chatty", [sys.executable, "-c", CHATTY], timeout=30)  # restarted within the run
        _wait_for_line(stale, "line 299\nwaiting\nlistening")
    finally:
        assert not stack.stop()
    assert stale.read_text().count("listening on") == 2 and not again.alive()


def test_a_second_stack_on_the_same_data_dir_is_refused_before_it_wipes_anything(tmp_path):
    data_dir = tmp_path / "stack"
    data_dir.mkdir()
    (data_dir / "local.settings.json").write_text("{}")  # what --fresh would delete
    first = LocalStack(StackOptions(data_dir=data_dir), say=lambda _: None)
    first.claim()
    try:
        result = subprocess.run([sys.executable, "-m", "sluice", "up", "--fresh", "--data-dir", str(data_dir)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        said = " ".join(result.stdout.split())
        assert f"{data_dir} is in use by another `sluice up` (pid {os.getpid()})" in said, said
        assert (data_dir / "local.settings.json").exists()
        second = LocalStack(StackOptions(data_dir=data_dir), say=lambda _: None)
        with pytest.raises(StackError, match="in use by another"):
            second.claim()
    finally:
        first.stop()
    second.claim()  # released by stop()
    second.stop()


def test_our_own_service_failing_to_start_is_a_stack_error_naming_it(tmp_path):
    from sluice.secured import ServiceError

    def fails():
        raise ServiceError("pg_ctl start failed (1): pg_ctl: could not start server")

    stack = LocalStack(StackOptions(data_dir=tmp_path), say=lambda _: None)
    with pytest.raises(StackError, match=r"our own PostgreSQL did not start: pg_ctl start failed \(1\)"):
        stack._start_own("PostgreSQL", fails)


class _StandInDevhost(LocalStack):
    """A LocalStack whose dev host is a stand-in that exits at once with a given status."""

    exit_status = 0

    def _launch_devhost(self, port: int) -> Running:
        self.launched_on.append(port)
        script = f"print('devhost: listening on 127.0.0.1:{port}', flush=True); raise SystemExit({self.exit_status})"
        running = self._child("devhost", [sys.executable, "-c", script], timeout=30)
        self.devhost = running
        return running


def test_the_dev_host_is_started_again_on_its_port_after_a_function_timeout_and_only_then(tmp_path):
    """As the Functions host restarts its worker; any other exit stays a failure for `up` to report."""
    assert DEVHOST_FUNCTION_TIMEOUT_EXIT == FUNCTION_TIMEOUT_EXIT
    said = []
    stack = _StandInDevhost(StackOptions(data_dir=tmp_path), say=said.append)
    stack.launched_on = []
    stack.exit_status = DEVHOST_FUNCTION_TIMEOUT_EXIT
    try:
        first = stack.start_devhost()
        first.process.wait(timeout=10)
        port = stack.ports["http"]
        other = stack._child("other", [sys.executable, "-c", "print('listening on 127.0.0.1:1'); raise SystemExit(3)"],
                             timeout=30)
        other.process.wait(timeout=10)
        assert not stack.restart_after_function_timeout(other)  # not the dev host
        stack.exit_status = 1
        assert stack.restart_after_function_timeout(first)
        assert stack.launched_on == [port, port] and stack.devhost is not first and first not in stack.children
        assert stack.devhost_restarts == 1 and "outlived host.json's functionTimeout" in said[-1]
        stack.devhost.process.wait(timeout=10)
        assert not stack.restart_after_function_timeout(stack.devhost)  # exit 1: a failure, not a timeout
        assert stack.devhost_restarts == 1
    finally:
        stack.stop()


def test_up_fresh_refuses_a_directory_it_did_not_make_naming_it_and_deletes_nothing(tmp_path):
    """`--fresh` deletes only a data directory `up` marked as its own (or an empty one): a function app given as
    --data-dir by mistake (it has a local.settings.json too) is refused before anything starts, with or without
    --fresh, naming the directory and what in it is not `up`'s."""
    project = tmp_path / "app"
    (project / ".git").mkdir(parents=True)
    (project / "function_app.py").write_text("import azure.functions as func\napp = func.FunctionApp()\n")
    (project / "host.json").write_text('{"version": "2.0"}\n')
    (project / "local.settings.json").write_text('{"IsEncrypted": false, "Values": {}}\n')
    before = sorted(p.name for p in project.iterdir())
    for extra in (["--fresh"], []):
        result = subprocess.run([sys.executable, "-m", "sluice", "up", *extra, "--no-load", "--data-dir",
                                 str(project)], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
                                env={**os.environ, "COLUMNS": "300"})
        said = " ".join(result.stdout.split())
        assert result.returncode == 2, said + result.stderr
        assert f"{project} is not a data directory of `sluice up`" in said and "function_app.py" in said, said
        assert sorted(p.name for p in project.iterdir()) == before


def test_up_refuses_the_root_directory_as_data_dir_naming_it_not_a_traceback():
    """`up --data-dir /`: claim() builds the lock beside the directory (`<data-dir>.lock`), and `/` has no name to
    build it from: pathlib's ValueError came out as a traceback instead of the refusal any other directory that is
    not `up`'s gets."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLUICE_")}
    result = subprocess.run([sys.executable, "-m", "sluice", "up", "--data-dir", "/", "--no-load",
                             "--use-existing-services"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            check=False, env={**env, "COLUMNS": "300"})
    output = " ".join((result.stdout + result.stderr).split())
    assert "Traceback" not in output, output
    assert result.returncode == 2 and "error: --data-dir / is the root directory" in output, output


def test_a_data_dir_is_marked_when_claimed_and_fresh_wipes_what_an_early_failure_left(tmp_path):
    """`up` marks its data directory before it creates anything in it, so `--fresh` wipes the directory of an
    `up` that failed before writing local.settings.json (own/ and logs/ only); a directory of an older `up`
    (only what `up` creates, no mark) is taken as `up`'s and marked."""
    data_dir = tmp_path / "stack"
    first = LocalStack(StackOptions(data_dir=data_dir), say=lambda _: None)
    first.claim()
    assert (data_dir / MARK).is_file()
    (data_dir / "own" / "postgres").mkdir(parents=True)
    first.log_path("azurite").write_text("failed\n")
    first.stop()
    second = LocalStack(StackOptions(data_dir=data_dir), say=lambda _: None)
    second.claim()
    try:
        assert second.wipe()
        assert [p.name for p in data_dir.iterdir()] == [MARK]
    finally:
        second.stop()
    older = tmp_path / "older"
    (older / "logs").mkdir(parents=True)
    (older / "local.settings.json").write_text("{}")
    stack = LocalStack(StackOptions(data_dir=older), say=lambda _: None)
    stack.claim()
    stack.stop()
    assert (older / MARK).is_file()


def test_our_own_postgresql_keeps_its_data_across_restarts_under_a_directory_postgres_cannot_enter():
    """Under a directory the postgres user cannot enter (a checkout under /root, 0700), our own PostgreSQL runs
    from a directory of its own named after the data dir (postgres_directory, said in a note) and keeps its data
    there across restarts of the stack, as the emulators keep theirs; `--fresh` (wipe) deletes it too."""
    import tempfile

    import psycopg

    from sluice.secured import postgres_directory

    private = Path(tempfile.mkdtemp(prefix="sluice-private-"))  # 0700, as /root is
    data_dir = private / "stack"
    moved = postgres_directory(data_dir / "own" / "postgres")
    first = LocalStack(StackOptions(data_dir=data_dir), say=lambda _: None)
    second = LocalStack(StackOptions(data_dir=data_dir), say=lambda _: None)
    try:
        first.ensure_postgres()
        assert first.own.postgres.directory == moved
        if moved != data_dir / "own" / "postgres":
            assert any(str(moved) in note for note in first.notes)
        first.own.postgres.execute("CREATE TABLE kept_across_restarts (n int)")
        first.stop()
        second.claim()
        second.ensure_postgres()
        with psycopg.connect(second.own.postgres.admin_dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('kept_across_restarts') IS NOT NULL").fetchone()[0]
        second.stop()
        second.claim()
        assert second.wipe() and not moved.exists()
    finally:
        first.stop()
        second.stop()
        shutil.rmtree(moved, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


APPLIES_SETTINGS = """
import os, sys
from pathlib import Path
from devhost.settings import connection_section, load_local_settings, storage_connection_string
load_local_settings(Path(sys.argv[1]))
print("listening on 127.0.0.1:1", os.environ["SLUICE_CASSANDRA_PORT"], connection_section("EventHubConnection").value,
      storage_connection_string(), repr(os.environ.get("SLUICE_LEFT_FROM_EARLIER", "")), flush=True)
"""


class _SettingsReadingDevhost(LocalStack):
    """A LocalStack whose dev host applies the settings as the dev host does, prints a few, and exits."""

    def _launch_devhost(self, port: int) -> Running:
        running = self._child("devhost", [sys.executable, "-c", APPLIES_SETTINGS, str(self.settings_path)],
                              timeout=30, env=self._devhost_env, unset=self._devhost_unset)
        self.devhost = running
        return running


def test_the_dev_host_gets_its_stacks_settings_over_those_of_an_earlier_run_in_the_environment(tmp_path, monkeypatch):
    """`up` from a shell that sourced an earlier run's settings.env: its dev host (which, as `func start`, lets the
    environment win over local.settings.json) still gets this stack's ports; what the earlier run set and this one
    does not is left out, and the reaper's marker is kept. The host binds AzureWebJobsEventHubConnection (and the
    ConnectionStrings spellings, even empty) before EventHubConnection, and ConnectionStrings:AzureWebJobsStorage
    before AzureWebJobsStorage: inherited, they are left out too. Was: only EventHubConnection was emptied, so an
    inherited AzureWebJobsEventHubConnection wired the dev host's trigger to the earlier run's hub."""
    from sluice.reaper import MARKER

    earlier = LocalStack(StackOptions(data_dir=tmp_path / "earlier"), say=lambda _: None)
    earlier.ports = {"azurite": 10001, "cassandra": 9001, "eventhubs": 5001}
    earlier.write_settings()
    for name, value in earlier.values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLUICE_LEFT_FROM_EARLIER", "x")
    monkeypatch.setenv("AzureWebJobsEventHubConnection", earlier.eventhub_connection)
    monkeypatch.setenv("ConnectionStrings__EventHubConnection", "")
    monkeypatch.setenv("ConnectionStrings__AzureWebJobsStorage", earlier.storage_connection)
    monkeypatch.setenv(MARKER, "run-1")
    stack = _SettingsReadingDevhost(StackOptions(data_dir=tmp_path / "stack"), say=lambda _: None)
    stack.ports = {"azurite": 10002, "cassandra": 9002, "eventhubs": 5002}
    stack.write_settings()
    try:
        devhost = stack.start_devhost()
        devhost.process.wait(timeout=30)
        said = devhost.output()
        assert " 9002 " in said and "127.0.0.1:5002;" in said and "127.0.0.1:10002/" in said and "''" in said, said
        assert "5001" not in said and "10001" not in said, said
        assert stack._devhost_env is not None and MARKER not in stack._devhost_env
    finally:
        stack.stop()


def test_the_operators_own_root_settings_stay_in_the_bak_whatever_the_runs_of_up_no_devhost(tmp_path, monkeypatch):
    """`up --no-devhost` keeps a ./local.settings.json it did not write as local.settings.json.bak and replaces
    one it wrote (a field marks it), so the operator's own file stays in the .bak however many runs follow,
    though each run's file differs (new free ports). (The repository root is a directory of this test.)"""
    import sluice.localstack as localstack

    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(ROOT / "local.settings.sample.json", root / "local.settings.sample.json")
    own = '{"IsEncrypted": false, "Values": {"EventHubConnection": "Endpoint=sb://mine.servicebus.windows.net/;"}}\n'
    (root / "local.settings.json").write_text(own)
    monkeypatch.setattr(localstack, "ROOT", root)
    for redis_port in (41001, 41002, 41003):
        stack = LocalStack(StackOptions(data_dir=tmp_path / "stack", redis_url=f"redis://127.0.0.1:{redis_port}/0"),
                           say=lambda _: None)
        stack.ports = {"azurite": 10123, "cassandra": 9123, "eventhubs": 5999}
        stack.write_settings()
        assert stack.write_root_settings().read_text() == stack.settings_path.read_text()
    assert (root / "local.settings.json.bak").read_text() == own


HOLDS_OWN_SERVICES = """
import sys, time
from pathlib import Path
from sluice.localstack import LocalStack, StackOptions
stack = LocalStack(StackOptions(data_dir=Path(sys.argv[1])), say=lambda _: None)
stack.claim()
stack.ensure_postgres()
stack.ensure_redis()
print("READY", stack.own.postgres.pid, stack.own.redis.running.process.pid, flush=True)
time.sleep(600)
"""


def test_fresh_after_a_killed_up_stops_its_postgresql_and_redis_before_wiping_their_pid_files():
    """After `kill -9` of `up`, its own PostgreSQL and Redis still run, found by the pid files under the data dir:
    `--fresh` (wipe) stops them first, then deletes the directory, instead of leaving them running for good."""
    import tempfile

    import psutil

    parent = Path(tempfile.mkdtemp(prefix="sluice-stale-"))
    parent.chmod(0o755)  # our own PostgreSQL stays in the data dir
    data_dir = parent / "stack"
    holder = subprocess.Popen([sys.executable, "-c", HOLDS_OWN_SERVICES, str(data_dir)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    stale: list[int] = []
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("READY"), line + (holder.stdout.read() if holder.poll() is not None else "")
        stale = [int(pid) for pid in line.split()[1:]]
        holder.kill()  # as `kill -9` of `up`: its stop never runs
        holder.wait(10)
        stack = LocalStack(StackOptions(data_dir=data_dir), say=lambda _: None)
        stack.claim()
        try:
            assert stack.wipe()
        finally:
            stack.stop()
        _, left = psutil.wait_procs([psutil.Process(pid) for pid in stale if psutil.pid_exists(pid)], timeout=10)
        assert [p.pid for p in left if p.status() != psutil.STATUS_ZOMBIE] == []
        assert [p.name for p in data_dir.iterdir()] == [MARK]
    finally:
        if holder.poll() is None:
            holder.kill()
        for pid in stale:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        shutil.rmtree(parent, ignore_errors=True)


def test_a_redis_cluster_started_again_on_its_directory_stops_the_nodes_an_earlier_run_left(tmp_path):
    """A killed `up --redis-cluster` whose reaper was killed too leaves its nodes running: the next start (or
    `--fresh`) finds them by their pid files and stops them before it deletes their directory."""
    import shutil as _shutil

    from sluice.redis_cluster import LocalRedisCluster

    if not (_shutil.which("redis-server") and _shutil.which("redis-cli")):
        pytest.skip("redis-server is not installed")
    earlier = LocalRedisCluster(tmp_path / "redis-cluster", masters=3, replicas=0).start()
    later = LocalRedisCluster(tmp_path / "redis-cluster", masters=3, replicas=0)
    try:
        left = [running.process for running in earlier.nodes.values()]  # never stopped: as after `kill -9`
        later.start()
        for process in left:
            assert process.wait(timeout=15) is not None
    finally:
        later.stop()
        earlier.stop()


def test_two_stacks_starting_together_never_get_the_same_dev_host_ports(tmp_path):
    """The dev host's HTTP and metrics ports are chosen free when the settings are written and bound only tens of
    seconds later: each stack holds the ports it chose until it stops, so a second `up` starting meanwhile on
    another data dir gets others (with a note), and gets them once the first has stopped."""
    from sluice.localstack import free_port

    metrics, http = free_port(), free_port()
    stacks = []
    for name in ("a", "b"):
        stack = LocalStack(StackOptions(data_dir=tmp_path / name, metrics_port=metrics, http_port=http),
                           say=lambda _: None)
        stack.ports = {"azurite": 10123, "cassandra": 9123, "eventhubs": 5999}
        stack.write_settings()
        stacks.append(stack)
    a, b = stacks
    try:
        assert b.ports["metrics"] != a.ports["metrics"] and b.ports["http"] != a.ports["http"]
        assert a.ports["metrics"] == metrics and any("another `sluice up`" in note for note in b.notes)
        a.stop()
        c = LocalStack(StackOptions(data_dir=tmp_path / "c", metrics_port=metrics), say=lambda _: None)
        c.ports = {"azurite": 10123, "cassandra": 9123, "eventhubs": 5999}
        c.write_settings()
        c.stop()
        assert c.ports["metrics"] == metrics
    finally:
        a.stop()
        b.stop()


def _up_until_start(monkeypatch, argv):
    """``main(["up", *argv])`` with the stack's start replaced: the options it would start with, and main's status."""
    import sluice.commands.up as up
    from sluice.__main__ import main

    seen = []

    def start(stack, args, console):
        seen.append(stack.options)
        raise StackError("stopped before starting anything (test)")

    monkeypatch.setattr(up, "_start", start)
    return main(["up", *argv]), seen


def test_up_refuses_to_keep_its_own_postgresql_and_redis_instead_of_stopping_them_anyway(tmp_path, monkeypatch,
                                                                                          capsys):
    """`--keep-services` leaves running the machine's PostgreSQL and Redis (`--use-existing-services`) that `up`
    started. Our own (the default) always stop with the stack: the next `up` stops them by their pid files anyway,
    and their passwords go with the Key Vault emulator. Asked to keep them, `up` refuses before starting anything
    rather than stop them anyway."""
    status, seen = _up_until_start(monkeypatch, ["--keep-services", "--no-load", "--data-dir", str(tmp_path / "a")])
    said = " ".join(capsys.readouterr().err.split())
    assert (status, seen) == (2, []), said
    assert "--keep-services" in said and "--use-existing-services" in said, said
    assert not (tmp_path / "a").exists()
    status, seen = _up_until_start(monkeypatch, ["--keep-services", "--use-existing-services", "--no-load",
                                                 "--data-dir", str(tmp_path / "b")])
    assert status == 2 and len(seen) == 1 and not seen[0].stop_services and seen[0].use_existing_services


def test_a_metrics_port_given_with_set_is_the_one_the_stack_shows(tmp_path):
    """`--set SLUICE_METRICS_PORT=...` overrides the port the stack chose for the dev host's metrics: the URL that the
    live table, "where to look" and settings.env show is the one the dev host serves. `0` (any free port) is chosen
    by the stack, so the URL names it; empty (no endpoint) shows none."""
    from sluice.localstack import free_port

    wanted = free_port()
    shown = {}
    for name, value in (("given", str(wanted)), ("any", "0"), ("none", "")):
        stack = LocalStack(StackOptions(data_dir=tmp_path / name, overrides={"SLUICE_METRICS_PORT": value}),
                           say=lambda _: None)
        stack.ports = {"azurite": 10123, "cassandra": 9123, "eventhubs": 5999}
        try:
            values = json.loads(stack.write_settings().read_text())["Values"]
            shown[name] = (values["SLUICE_METRICS_PORT"], stack.metrics_url,
                           (tmp_path / name / "settings.env").read_text().splitlines()[0])
        finally:
            stack.stop()
    url = f"http://127.0.0.1:{wanted}/metrics"
    assert shown["given"] == (str(wanted), url, f"# the dev host's metrics: {url}")
    port, url, comment = shown["any"]
    assert int(port) > 0 and url == f"http://127.0.0.1:{port}/metrics" and comment.endswith(url)
    assert shown["none"][:2] == ("", None) and "no metrics" in shown["none"][2]


def test_an_http_port_equal_to_the_metrics_port_wins_and_the_default_metrics_port_moves(tmp_path):
    """`sluice up --http-port 9464` (the metrics' default port) with --strict-ports was refused as "in use by another
    `sluice up`": the port was held by this stack's own metrics reservation. The HTTP port asked for wins, the default
    metrics port moves (and says so); a metrics port given with `--set` that clashes is refused naming both."""
    from sluice.localstack import free_port

    port = free_port()
    said: list[str] = []
    stack = LocalStack(StackOptions(data_dir=tmp_path / "moves", http_port=port, metrics_port=port,
                                    strict_ports=True), say=said.append)
    stack.ports = {"azurite": 10123, "cassandra": 9123, "eventhubs": 5999}
    try:
        values = json.loads(stack.write_settings().read_text())["Values"]
    finally:
        stack.stop()
    assert stack.ports["http"] == port and stack.ports["metrics"] != port, stack.ports
    assert values["SLUICE_METRICS_PORT"] == str(stack.ports["metrics"])
    assert any(f"port {port} is the dev host's HTTP port" in line for line in said), said

    stack = LocalStack(StackOptions(data_dir=tmp_path / "refused", http_port=port, strict_ports=True,
                                    overrides={"SLUICE_METRICS_PORT": str(port)}), say=lambda _: None)
    stack.ports = {"azurite": 10123, "cassandra": 9123, "eventhubs": 5999}
    try:
        with pytest.raises(StackError, match=rf"SLUICE_METRICS_PORT={port} .*--http-port {port}"):
            stack.write_settings()
    finally:
        stack.stop()


def test_the_newest_postgresql_is_picked_by_version_not_by_name(tmp_path, monkeypatch):
    """PostgreSQL's directories are named by version: `/usr/lib/postgresql/<version>/bin` (our own PostgreSQL's
    programs) and `/etc/postgresql/<version>` (the machine's clusters, `--use-existing-services`). As strings, "9.6"
    sorts after "15" and "10" before "9.6": the oldest installed server would be picked."""
    from sluice import localstack, secured
    from sluice.localstack import free_port

    programs, clusters = tmp_path / "lib", tmp_path / "etc"
    for version in ("9.6", "15", "10"):
        (programs / version / "bin").mkdir(parents=True)
        (clusters / version / "main").mkdir(parents=True)
    assert secured.postgres_bins(programs)[-1] == programs / "15" / "bin"
    ran = []
    monkeypatch.setattr(localstack, "POSTGRESQL_CLUSTERS", clusters)
    monkeypatch.setattr(localstack, "answers", lambda *_: bool(ran))  # answers once started
    monkeypatch.setattr(localstack.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(localstack, "_run", lambda argv, what: ran.append(argv))
    stack = LocalStack(StackOptions(data_dir=tmp_path / "stack", use_existing_services=True,
                                    postgres_port=free_port()), say=lambda _: None)
    stack.ensure_postgres()
    assert ran == [["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"]]


@pytest.fixture
def port_locks(tmp_path, monkeypatch):
    """The directory of the port lock files (``<temporary directory>/sluice-ports``), one of this test's own."""
    import tempfile

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path / "tmp" / "sluice-ports"


def test_the_lock_files_of_the_ports_a_stack_held_are_removed_when_it_stops(tmp_path, port_locks):
    stack = LocalStack(StackOptions(data_dir=tmp_path / "a"), say=lambda _: None)
    try:
        ports = {stack._port("x", 0), stack._port("y", 0)}
        assert {p.name for p in port_locks.iterdir()} == {f"127.0.0.1-{port}.lock" for port in ports}
    finally:
        stack.stop()
    assert list(port_locks.iterdir()) == []


def test_a_port_whose_lock_file_is_removed_while_another_stack_locks_it_is_still_held_by_one_stack(tmp_path,
                                                                                                   port_locks,
                                                                                                   monkeypatch):
    """A stack that stops removes its lock files (holding their locks). Another stack may have opened one of them
    before that and lock it after: it then holds a lock on a file no longer in the directory, which a third stack
    does not see, creating the file afresh. The second must lock the file the path names, so that only one of the
    two holds the port."""
    import fcntl

    a, b, c = (LocalStack(StackOptions(data_dir=tmp_path / name), say=lambda _: None) for name in "abc")
    port = a._port("x", 0)
    flock = fcntl.flock

    def a_stops_first(fd, operation):  # b has opened the lock file; a stops before b locks it
        if a._reserved:
            a.stop()
        return flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", a_stops_first)
    try:
        held = [b._reserve(port), c._reserve(port)]
        assert held == [True, False]
    finally:
        for stack in (a, b, c):
            stack.stop()
    assert list(port_locks.iterdir()) == []
