"""How ``python -m sluice up`` ends: on signals, when a part of it exits, and after it was killed.

Each test runs the real command, as a newcomer does, on its own data directory and free ports, and
always stops what it started (the ``up`` process, then anything left with the data directory in its
command line, our own PostgreSQL through ``pg_ctl``). Every child of ``up`` runs in a session of its
own, so nothing but ``up`` itself stops it: a way out of ``up`` that skips its stop leaves servers
holding ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from sluice.localstack import ROOT

PORT_FLAGS = ["--http-port", "0", "--eventhubs-port", "0", "--cassandra-port", "0", "--azurite-port", "0",
              "--keyvault-port", "0"]
LOAD = ["--rate", "10", "--devices", "10"]


def _stack_processes(data_dir: Path) -> list[psutil.Process]:
    """Every process whose command line names ``data_dir`` (emulators, Azurite, dev host, our own PostgreSQL)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and any(str(data_dir) in part for part in (proc.info["cmdline"] or [])):
                found.append(proc)
    return found


def _running(processes: list[psutil.Process]) -> list[str]:
    left = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(proc.cmdline())[:120])
    return left


def _clean_up(data_dir: Path) -> None:
    """Stop whatever is left of a stack under ``data_dir`` (our own PostgreSQL through pg_ctl, the rest by pid)."""
    pg_data = data_dir / "own" / "postgres" / "data"
    if (pg_data / "postmaster.pid").exists():
        from sluice.secured import postgres_bins

        bins = postgres_bins()
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, str(bins[-1] / "pg_ctl"), "-D", str(pg_data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, check=False)
    for proc in _stack_processes(data_dir):
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(_stack_processes(data_dir), timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(data_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        data_dir.with_name(data_dir.name + ".lock").unlink()


class Up:
    """``python -m sluice up`` on ``data_dir`` and free ports; its output is collected as it comes."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sluice", "up", "--data-dir", str(data_dir), *PORT_FLAGS, *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        self.children: list[psutil.Process] = []  # noted once up: our own Redis names no data directory
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.process.poll() is not None:
                pytest.fail(f"sluice up exited ({self.process.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f}s:\n{self.output()}")
            time.sleep(0.1)

    def wait_up(self, timeout: float = 90.0) -> None:
        self.wait_for(lambda: any(line.startswith("up:") for line in self.lines), timeout, "`up:` line")
        self.children = psutil.Process(self.process.pid).children(recursive=True)

    def child(self, needle: str, timeout: float = 20.0) -> psutil.Process:
        """The direct child of ``up`` whose command line holds ``needle``."""
        found: list[psutil.Process] = []

        def look() -> bool:
            for proc in psutil.Process(self.process.pid).children():
                with contextlib.suppress(psutil.Error):
                    if needle in " ".join(proc.cmdline()):
                        found.append(proc)
            return bool(found)

        self.wait_for(look, timeout, f"a child running {needle!r}")
        return found[0]

    def exit_code(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for proc in self.children:
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp (world-searchable), as a newcomer's checkout is: our own PostgreSQL runs as `postgres` under root.
    parent = Path(tempfile.mkdtemp(prefix="sluice-up-"))
    parent.chmod(0o755)
    path = parent / "stack"
    try:
        yield path
    finally:
        _clean_up(path)
        shutil.rmtree(parent, ignore_errors=True)


def test_sigterm_while_a_child_starts_stops_that_child_too(data_dir):
    """A child whose ready line `up` still awaits is not in the stack's list yet; the launcher kills it itself.

    The dev host is the longest step of the start, the likeliest to be interrupted, and an orphan one keeps
    the HTTP and metrics ports, so the next `up` finds them taken.
    """
    up = Up(data_dir, "--no-load")
    try:
        up.wait_for((data_dir / "logs" / "devhost.log").exists, 90, "devhost.log (the dev host being started)")
        time.sleep(0.5)
        up.process.send_signal(signal.SIGTERM)
        code = up.exit_code(60)
        assert code is not None, "sluice up did not exit after SIGTERM"
        time.sleep(1)
        assert _running(_stack_processes(data_dir)) == [], f"sluice up exited ({code}), leaving its stack running"
    finally:
        up.stop()


@pytest.mark.parametrize(("arguments", "child", "said"), [
    (LOAD, "sluice produce", "the load generator exited"),
    (("--no-load",), "redis-server", "redis-server exited"),
], ids=["load-generator", "own-redis"])
def test_a_child_exiting_on_its_own_stops_up_naming_it(data_dir, arguments, child, said):
    """Any child's exit stops `up` non-zero with its last output (docs/local-stack.md, "Stopping"): the load
    generator's when the load has no end (without --duration), and our own Redis's, which `up` watches as it
    does the emulators. Otherwise the table would show a healthy stack that receives nothing (the reason
    hidden in produce.log), or run on half-broken: /api/health unavailable, the change feed failing every 2 s.
    """
    up = Up(data_dir, *arguments)
    try:
        up.wait_up()
        up.child(child).kill()
        code = up.exit_code(20)
        assert code not in (None, 0), f"{child} was killed; sluice up still runs:\n{up.output()[-1500:]}"
        assert said in up.output()
    finally:
        up.stop()


def test_up_after_a_killed_up_stops_its_stale_servers_and_a_hang_up_stops_the_whole_stack(data_dir):
    """A SIGKILLed `up` leaves its servers running; the next `up` on the data dir stops them and starts.

    Our own PostgreSQL (a pg_ctl daemon) and Redis of the killed run still hold <data-dir>/own: `up`
    finds them by their pid files and stops them, saying so, instead of failing on "another server might
    be running". That second `up` then gets SIGHUP, as when its terminal is closed, and stops every child
    as Ctrl-C does: none of them sees the hang-up, each runs in a session of its own.
    """
    first = Up(data_dir, "--no-load")
    second: Up | None = None
    try:
        first.wait_up()
        stale_redis = [p for p in first.children if p.name() == "redis-server"]
        first.process.kill()
        first.process.wait(10)
        second = Up(data_dir, "--no-load")
        second.wait_up()
        said = " ".join(second.output().split())
        assert "our own PostgreSQL of an earlier run still serves" in said, said
        assert "our own Redis of an earlier run still runs" in said, said
        assert stale_redis and _running(stale_redis) == []

        second.process.send_signal(signal.SIGHUP)
        code = second.exit_code(60)
        assert code is not None, "sluice up did not exit after SIGHUP"
        time.sleep(1)
        assert _running(second.children) == [], f"sluice up ended ({code}) on SIGHUP, leaving its children running"
        assert not (data_dir / "own" / "postgres" / "data" / "postmaster.pid").exists()
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_a_second_ctrl_c_while_stopping_is_ignored_and_every_child_stops(data_dir):
    """Once stopping, `up` finishes: a second Ctrl-C while the dev host drains must not cut the stop short.

    Raised out of the stop, it would leave the children not stopped yet (emulators, Azurite, our own
    Redis and PostgreSQL) running and holding their ports.
    """
    up = Up(data_dir, *LOAD)
    try:
        up.wait_up()
        time.sleep(2)
        up.process.send_signal(signal.SIGINT)
        time.sleep(1.0)
        up.process.send_signal(signal.SIGINT)
        code = up.exit_code(60)
        assert code is not None, "sluice up did not exit after two Ctrl-C"
        time.sleep(1)
        assert _running(up.children) == [], f"sluice up ended ({code}) after a second Ctrl-C, leaving children"
        assert not (data_dir / "own" / "postgres" / "data" / "postmaster.pid").exists()
    finally:
        up.stop()


def test_a_killed_up_leaves_no_emulator_azurite_or_dev_host_running(data_dir):
    """`kill -9` of `up` (or the OOM killer) runs none of its stop: the reaper it started sees its pipe end
    without `done` and stops every process marked with the run's SLUICE_STACK_ID, the dev host's workers
    included. Left running, they would hold their ports (and the emulators their memory) until found by hand."""
    up = Up(data_dir, "--no-load")
    try:
        up.wait_up()
        marked = [p for p in up.children if any(name in " ".join(p.cmdline()) for name in (
            "emulators.cassandra", "emulators.eventhubs", "emulators.keyvault", "azurite", "devhost"))]
        assert len(marked) >= 5, [" ".join(p.cmdline())[:80] for p in up.children]
        up.process.kill()
        up.process.wait(10)
        deadline = time.monotonic() + 40
        while _running(marked) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _running(marked) == [], "still running after `up` was killed"
        said = (data_dir / "logs" / "reaper.log").read_text()
        assert f"sluice up (pid {up.process.pid}) ended without stopping its stack" in said, said
    finally:
        up.stop()
