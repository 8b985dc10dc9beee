"""A real local Redis Cluster: ``redis-server --cluster-enabled yes`` nodes joined by ``redis-cli --cluster create``.

Used by ``python -m sluice up --redis-cluster``, by the test fixture
(``tests/fixtures/redis_cluster.py``) and by the benchmarks. Each node runs as a
child process (own process group, stopped by its PID), in its own directory
under ``directory``, on a free port with a free cluster bus port
(``cluster-port``), in memory only. :meth:`LocalRedisCluster.kill` and
:meth:`LocalRedisCluster.restart` let tests fail a master over: with
``node_timeout_ms`` 2000 its replica takes over within a few seconds, and the
restarted node rejoins as a replica.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sluice.launcher import LaunchError, Running, start

READY = re.compile(r"(?P<ready>Ready to accept connections)")


class ClusterError(RuntimeError):
    """The cluster could not be started or did not become healthy; the message says why."""


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def stop_stale_nodes(directory: Path) -> list[int]:
    """Stop the nodes an earlier run (a killed ``up``) left running under ``directory``, found by their pid files
    (``<port>/redis.pid``); their pids."""
    from sluice.secured import _end, _pid_in, _running, _serves

    stopped: list[int] = []
    if not directory.is_dir():
        return stopped
    for node_dir in directory.iterdir():
        pid = _pid_in(node_dir / "redis.pid")
        if pid is not None and _running(pid) and _serves(pid, node_dir):
            _end(pid)
            stopped.append(pid)
    return stopped


@dataclass
class LocalRedisCluster:
    """``masters`` masters with ``replicas`` replicas each, on ``host``; :meth:`start` brings it up."""

    directory: Path
    masters: int = 3
    replicas: int = 1
    host: str = "127.0.0.1"
    node_timeout_ms: int = 2000
    nodes: dict[int, Running] = field(default_factory=dict)
    bus_ports: dict[int, int] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        return sorted(self.nodes)

    @property
    def url(self) -> str:
        """A URL of one node; a cluster client discovers the others from it."""
        return f"redis://{self.host}:{self.ports[0]}/0"

    def _argv(self, port: int) -> list[str]:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        return ["redis-server", "--port", str(port), "--bind", self.host, "--cluster-enabled", "yes",
                "--cluster-port", str(self.bus_ports[port]), "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms), "--dir", str(node_dir),
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--pidfile", str(node_dir / "redis.pid")]

    def _start_node(self, port: int) -> Running:
        try:
            running = start(f"redis-cluster-{port}", self._argv(port), timeout=30, ready=READY)
        except LaunchError as exc:
            raise ClusterError(f"redis-server on port {port} did not start: {exc}") from None
        self.nodes[port] = running
        return running

    def start(self, timeout: float = 60.0) -> LocalRedisCluster:
        """Start the nodes, create the cluster, and wait until every slot is served and every replica synced."""
        for tool in ("redis-server", "redis-cli"):
            if not shutil.which(tool):
                raise ClusterError(
                    f"{tool} is not installed: run `bash scripts/install.sh` (Debian package redis-server)"
                )
        if self.directory.exists():  # a previous run's nodes.conf would make `--cluster create` refuse the nodes
            stop_stale_nodes(self.directory)  # and a killed run's nodes may still run there
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        count = self.masters * (1 + self.replicas)
        taken: set[int] = set()
        while len(self.bus_ports) < count:
            port, bus = _free_port(self.host), _free_port(self.host)
            if port != bus and not {port, bus} & taken:
                taken |= {port, bus}
                self.bus_ports[port] = bus
        try:
            for port in self.bus_ports:
                self._start_node(port)
            create = ["redis-cli", "--cluster", "create", *(f"{self.host}:{p}" for p in self.ports),
                      "--cluster-replicas", str(self.replicas), "--cluster-yes"]
            result = subprocess.run(create, capture_output=True, text=True, timeout=timeout)
            if result.returncode != 0:
                raise ClusterError(f"`{' '.join(create)}` exited {result.returncode}:\n{result.stdout}{result.stderr}")
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _cli(self, port: int, *command: str) -> str:
        result = subprocess.run(["redis-cli", "-h", self.host, "-p", str(port), *command],
                                capture_output=True, text=True, timeout=10)
        return result.stdout

    def topology(self) -> tuple[dict[int, list[int]], list[int]]:
        """``({master port: [replica ports]}, [ports that fail])`` as the first live node sees it."""
        for port in self.ports:
            if not self.nodes[port].alive():
                continue
            lines = self._cli(port, "cluster", "nodes").splitlines()
            if not lines:
                continue
            by_id: dict[str, tuple[int, list[str]]] = {}
            for line in lines:
                parts = line.split()
                by_id[parts[0]] = (int(parts[1].split("@")[0].rsplit(":", 1)[1]), parts)
            masters: dict[int, list[int]] = {}
            failing = []
            for node_port, parts in by_id.values():
                flags = parts[2].split(",")
                if "fail" in flags or "fail?" in flags:
                    failing.append(node_port)
                elif "master" in flags and len(parts) > 8:  # a master that serves slots
                    masters.setdefault(node_port, [])
            for node_port, parts in by_id.values():
                if "slave" in parts[2].split(",") and parts[3] in by_id and node_port not in failing:
                    masters.setdefault(by_id[parts[3]][0], []).append(node_port)
            return {m: r for m, r in masters.items() if m not in failing}, failing
        raise ClusterError("no node of the cluster answers")

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok``, and every master has its replicas, synced."""
        try:
            masters, failing = self.topology()
        except ClusterError:
            return False
        live = [p for p in self.ports if self.nodes[p].alive()]
        if failing or len(masters) != self.masters or any(len(r) != self.replicas for r in masters.values()):
            return False
        for port in live:
            if "cluster_state:ok" not in self._cli(port, "cluster", "info"):
                return False
        replicas = [r for rs in masters.values() for r in rs]
        return all("master_link_status:up" in self._cli(r, "info", "replication") for r in replicas)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise ClusterError(f"the Redis Cluster on ports {self.ports} was not healthy within {timeout:.0f}s:\n"
                                   + self._cli(self.ports[0], "cluster", "nodes"))
            time.sleep(0.2)

    def master_ports(self) -> list[int]:
        return sorted(self.topology()[0])

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.nodes[port].kill()

    def restart(self, port: int) -> None:
        """Start a killed node again on its port; it rejoins the cluster (a former master as a replica)."""
        if self.nodes[port].alive():
            raise ClusterError(f"node {port} is still running")
        self._start_node(port)

    def stop(self) -> None:
        for running in self.nodes.values():
            try:
                running.stop(stop_timeout=5)
            except Exception:  # a node that will not stop is killed; keep stopping the others
                running.kill()
