"""The machine's set-up: scripts/install.sh's kubectl check and CI's services step (scripts/ci-services.sh, run by
.ci/run). Stand-ins on PATH replace the tools a step must not really run here; nothing is downloaded."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from sluice.localstack import ROOT, free_port
from tests.fixtures.services import PG_ADMIN_DSN


def _stand_ins(directory: Path, scripts: dict[str, str]) -> Path:
    directory.mkdir()
    for tool, body in scripts.items():
        (directory / tool).write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        (directory / tool).chmod(0o755)
    return directory


@pytest.mark.parametrize("renders", [False, True], ids=["debian-12-kubectl", "kubectl-1.22+"])
def test_install_warns_when_kubectl_cannot_render_the_kustomization_and_goes_on(tmp_path, renders):
    """scripts/install.sh installs Debian's kubernetes-client when kubectl is missing: on Debian 12 that is kubectl
    1.20.2, whose kustomize stops at k8s-keda/'s `labels` (`json: unknown field "labels"`), so tests/deploy/ fail on
    such a machine. No newer kubectl is in Debian: the install warns, naming the version found, what is needed and
    where to get it, and goes on (the local stack does not need kubectl)."""
    kustomize = "exit 0" if renders else 'echo \'error: json: unknown field "labels"\' >&2; exit 1'
    stubs = _stand_ins(tmp_path / "bin", {"kubectl": (
        f'case "$1" in kustomize) {kustomize};; version) echo "Client Version: v1.20.2";; *) exit 2;; esac')})
    run = subprocess.run(["bash", str(ROOT / "scripts" / "check-kubectl.sh")], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"})
    said = run.stdout + run.stderr
    assert run.returncode == 0, said
    if renders:
        assert "WARNING" not in said, said
    else:
        for needed in ("WARNING", "v1.20.2", 'unknown field "labels"', "kustomize 4.1+", "kubectl 1.22+",
                       "https://pkgs.k8s.io"):
            assert needed in said, (needed, said)


def test_install_runs_the_kubectl_check_after_its_debian_packages():
    lines = (ROOT / "scripts" / "install.sh").read_text(encoding="utf-8").splitlines()
    apt = next(i for i, line in enumerate(lines) if "apt-get install" in line)
    check = next(i for i, line in enumerate(lines) if line.strip() == "bash scripts/check-kubectl.sh")
    assert apt < check


@pytest.mark.parametrize(("postgres", "redis", "named", "not_named"), [
    (2, 0, "PostgreSQL on 127.0.0.1:5432", "Redis"),
    (0, 1, "Redis on 127.0.0.1:6379", "PostgreSQL"),
])
def test_ci_stops_naming_the_service_that_never_answers(tmp_path, postgres, redis, named, not_named):
    """.ci/run's services step waited 30 s for PostgreSQL and Redis, then carried on silently: a cluster that did
    not start showed up later as hundreds of connection errors in lint, mypy and the tests. It now fails, naming
    the service that does not answer (stand-ins for the service tools: nothing starts)."""
    stubs = _stand_ins(tmp_path / "bin", {"pg_isready": f"exit {postgres}", "redis-cli": f"exit {redis}",
                                          "pg_ctlcluster": "exit 0", "redis-server": "exit 0", "sleep": "exit 0",
                                          "psql": "exit 0"})
    run = subprocess.run(["bash", str(ROOT / "scripts" / "ci-services.sh")], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"}, cwd=ROOT)
    said = run.stdout + run.stderr
    assert run.returncode == 1 and named in said and not_named not in said, (run.returncode, said)


def test_ci_runs_the_services_step_after_the_install():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert lines.index("bash scripts/install.sh") < lines.index("bash scripts/ci-services.sh")


def _debian_default_cluster(directory: Path, port: int) -> tuple[list[str], Path]:
    """A PostgreSQL cluster as `apt-get install postgresql` makes it: pg_createcluster's initdb with
    `--auth-local peer --auth-host scram-sha-256` (postgresql-common for PostgreSQL 14 and later)."""
    from sluice.secured import _as_postgres, postgres_bins

    prefix, uid = _as_postgres()
    bin_dir = postgres_bins()[-1]
    data = directory / "data"
    data.mkdir()
    if uid is not None:
        os.chown(data, uid, -1)
    subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local", "peer",
                    "--auth-host", "scram-sha-256"], check=True, capture_output=True, timeout=60)
    subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "30", "-l", str(directory / "log"),
                    "-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=60)
    return prefix, bin_dir


def test_ci_makes_a_fresh_debian_postgresql_accept_what_the_tests_and_up_connect_with(tmp_path):
    """A fresh `apt-get install postgresql` makes a cluster that wants a password over TCP (scram-sha-256), but the
    tests (`postgresql://postgres@127.0.0.1:5432/postgres`) and `up --use-existing-services` connect as postgres
    without one: every PostgreSQL test failed with `fe_sendauth: no password supplied`. CI's services step trusts
    postgres from 127.0.0.1 and ::1 in that cluster's pg_hba.conf and reloads it (pointed here at a temporary
    cluster of that kind; Redis is a stand-in)."""
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.fail("runuser is needed to run initdb as postgres")
    directory = Path(tempfile.mkdtemp(prefix="sluice-fresh-pg-"))
    directory.chmod(0o777)
    port = free_port()
    prefix, bin_dir = _debian_default_cluster(directory, port)
    try:
        dsn = PG_ADMIN_DSN.replace("127.0.0.1:5432", f"127.0.0.1:{port}")
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(dsn, connect_timeout=5).close()  # the fresh machine's answer to the tests' DSN
        stubs = _stand_ins(tmp_path / "bin", {"redis-cli": "exit 0"})
        hba = directory / "data" / "pg_hba.conf"
        reload = shlex.join([*prefix, str(bin_dir / "pg_ctl"), "-D", str(directory / "data"), "reload"])
        run = subprocess.run(["bash", str(ROOT / "scripts" / "ci-services.sh")], capture_output=True, text=True,
                             timeout=120, cwd=ROOT, env={
                                 **os.environ, "PATH": f"{stubs}:{os.environ['PATH']}",
                                 "SLUICE_CI_PG_PORT": str(port), "SLUICE_CI_PG_HBA": str(hba),
                                 "SLUICE_CI_PG_RELOAD": reload})
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"trusting postgres from 127.0.0.1 and ::1 in {hba}" in run.stdout, run.stdout
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            assert conn.execute("select current_user").fetchone() == ("postgres",)
        again = subprocess.run(["bash", str(ROOT / "scripts" / "ci-services.sh")], capture_output=True, text=True,
                               timeout=120, cwd=ROOT, env={
                                   **os.environ, "PATH": f"{stubs}:{os.environ['PATH']}",
                                   "SLUICE_CI_PG_PORT": str(port), "SLUICE_CI_PG_HBA": str(hba),
                                   "SLUICE_CI_PG_RELOAD": reload})
        assert again.returncode == 0 and "trusting" not in again.stdout, again.stdout + again.stderr  # once only
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(directory / "data"), "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60)
        time.sleep(0.2)
        shutil.rmtree(directory, ignore_errors=True)
