"""PostgreSQL and Redis of our own, behind passwords and TLS, as on Azure (tests and ``sluice up``).

* :class:`LocalCA`: one throw-away certificate authority (``trustme``) and a server
  certificate for ``127.0.0.1`` (only: a client that connects to ``localhost`` must
  refuse it, which is how the tests prove that host names are checked).
* :class:`LocalPostgres`: ``initdb`` with scram-sha-256, ``ssl=on``, an application
  role with a password, on a free port; run as the ``postgres`` user when we are
  root (PostgreSQL refuses to run as root).
* :class:`LocalRedis`: ``redis-server`` with the ``default`` user off, an ACL user
  with a password, a plain port and a ``--tls-port``.

Passwords go through files and connections, never through a command line (``ps``
shows those). Nothing here touches the machine's own PostgreSQL or Redis.

A server of ours that outlived the process that started it (a ``sluice up`` killed
with SIGKILL) still holds its directory: :meth:`LocalPostgres.start` and
:meth:`LocalRedis.start` find it by its pid file and stop it before starting afresh,
and refuse, naming the pid, when the pid file names some other process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sluice.launcher import Running, start
from sluice.localstack import free_port, free_ports
from sluice.reaper import MARKER

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``path`` readable by its owner only from its first byte: a new 0600 file (``O_EXCL``) put in place of
    any older one. Writing, then ``chmod``, would leave the secret readable by every local user in between, and
    an older file would keep its mode."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a killed write: O_EXCL makes a new file, with our mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def version_order(name: str) -> tuple[tuple[int, ...], str]:
    """A sort key for PostgreSQL's directories named by version (``9.6``, ``10``, ``15``): by version, where as
    strings "9.6" sorts after "15" and "10" before "9.6". A name that is no version goes first."""
    parts = name.split(".")
    return (tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else ()), name


def postgres_bins(root: Path = Path("/usr/lib/postgresql")) -> list[Path]:
    """PostgreSQL's program directories (``<root>/<version>/bin``), oldest version first."""
    return sorted(root.glob("*/bin"), key=lambda bin_dir: version_order(bin_dir.parent.name))


PG_BIN = postgres_bins()


class ServiceError(RuntimeError):
    """A local server could not be set up or started (the message names it and why)."""


@dataclass
class LocalCA:
    """A CA and a server certificate for 127.0.0.1, as PEM files in ``directory``."""

    directory: Path
    ca_file: Path = field(init=False)
    cert_file: Path = field(init=False)
    key_file: Path = field(init=False)

    def __post_init__(self) -> None:
        try:  # a development package (requirements-dev.txt): the image runs no local stack
            import trustme
        except ImportError as exc:
            raise ServiceError("the local stack's certificates need trustme: pip install -r requirements-dev.txt "
                              "(or run `sluice up --use-existing-services`)") from exc

        self.directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="Sluice local stack")
        cert = ca.issue_cert("127.0.0.1")
        self.ca_file, self.cert_file, self.key_file = (
            self.directory / n for n in ("ca.pem", "server.pem", "server.key")
        )
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(str(self.cert_file), append=True)
        write_private(self.key_file, cert.private_key_pem.bytes())


def _as_postgres() -> tuple[list[str], int | None]:
    """The command prefix and uid that run PostgreSQL's tools: ``runuser -u postgres`` when we are root."""
    if os.geteuid() != 0:
        return [], None
    return ["runuser", "-u", "postgres", "--"], pwd.getpwnam("postgres").pw_uid


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster under ``directory`` (a fresh ``initdb``), scram-sha-256 and TLS."""

    ca: LocalCA
    directory: Path | None = None
    admin_password: str = field(default_factory=lambda: os.urandom(12).hex(), repr=False)
    port: int = 0
    host: str = "127.0.0.1"
    temporary: bool = False  # a directory of our own making: removed by stop()
    pid: int | None = None  # the postmaster's, once started
    keep: bool = False  # a cluster moved out of a directory postgres cannot reach is kept (reused by the next start)

    def start(self) -> LocalPostgres:
        if not PG_BIN:
            raise ServiceError(
                "PostgreSQL's server programs are missing (/usr/lib/postgresql/*/bin): run `bash scripts/install.sh`"
            )
        bin_dir = PG_BIN[-1]
        prefix, uid = _as_postgres()
        self._bin, self._prefix = bin_dir, prefix  # stop() can stop a server whose start was interrupted
        if self.directory is None:
            self.directory, self.temporary = Path(tempfile.mkdtemp(prefix="sluice-postgres-")), True
        else:
            # e.g. a checkout under /root, or pytest's tmp directories: root's alone. A place postgres can reach:
            # kept (and found again by the next start) with ``keep``, else removed by stop()
            where = postgres_directory(self.directory, keep=self.keep)
            if where != self.directory:
                self.directory, self.temporary = where, not self.keep
                if self.keep:
                    where.parent.mkdir(parents=True, exist_ok=True)
                    where.parent.chmod(0o755)  # the postgres user reaches its own directory through it
        self.directory.mkdir(parents=True, exist_ok=True)
        # Before anything is written: the password file and the superuser's trusted Unix socket live here, so
        # no other user may enter (mkdir's default 0755 would let any local user in as superuser).
        self.directory.chmod(0o700)
        data = self.directory / "data"
        pwfile = self.directory / "admin.pw"
        write_private(pwfile, self.admin_password)
        shutil.copy(self.ca.cert_file, self.directory / "server.pem")
        write_private(self.directory / "server.key", self.ca.key_file.read_bytes())
        if uid is not None:
            for path in (self.directory, pwfile, self.directory / "server.pem", self.directory / "server.key"):
                os.chown(path, uid, -1)
        try:
            if not data.exists():
                # TCP: scram-sha-256 only; the Unix socket (in our own 0700 directory) trusts the superuser,
                # so the stack administers its server without a password to keep anywhere.
                _run(
                    [
                        *prefix,
                        str(bin_dir / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        "postgres",
                        "--auth-host=scram-sha-256",
                        "--auth-local=trust",
                        "--lc-messages=C",
                        f"--pwfile={pwfile}",
                        "--no-sync",
                        "--no-instructions",
                    ],
                    "initdb",
                )
            self._stop_stale(data)
            self.port = self.port or free_port(self.host)
            options = (
                f"-p {self.port} -k {self.directory} -c listen_addresses={self.host} -c ssl=on "
                f"-c ssl_cert_file={self.directory / 'server.pem'} -c ssl_key_file={self.directory / 'server.key'} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            _run(
                [
                    *prefix,
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(self.directory / "postgres.log"),
                    "-o",
                    options,
                    "start",
                ],
                "pg_ctl start",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.pid = _pid_in(data / "postmaster.pid")
        return self

    def _stop_stale(self, data: Path) -> None:
        _stop_stale_postgres(data, self._prefix, self._bin)


    def alive(self) -> bool:
        """Whether the postmaster started by :meth:`start` still runs."""
        return self.pid is not None and _running(self.pid)

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """The superuser over the Unix socket (trusted; no password)."""
        return f"host={self.directory} port={self.port} dbname={dbname} user=postgres"

    def execute(self, *statements: str, dbname: str = "postgres") -> None:
        """Run statements as the superuser (autocommit), e.g. to create a role or change its password."""
        import psycopg

        with psycopg.connect(self.admin_dsn(dbname), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def create_role(self, user: str, password: str, *, database: str | None = None) -> None:
        """A login role with ``password`` (stored as scram-sha-256) and, if named, a database it owns."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password))
            )
            if database:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user))
                )

    def set_password(self, user: str, password: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(user), sql.Literal(password)))

    def stop(self) -> None:
        if self.directory is None:
            return
        data = self.directory / "data"
        pid = _pid_in(data / "postmaster.pid")
        # Also a server whose start was interrupted; never the process a stale pid file names.
        if pid is not None and hasattr(self, "_bin") and _running(pid) and _serves(pid, data):
            # A cluster we drop needs no checkpoint; one that is kept does ("fast": synchronous_commit is off, so
            # an immediate stop would lose the last commits).
            modes = ["immediate"] if self.temporary else ["fast", "immediate"]
            for mode in modes:
                with contextlib.suppress(ServiceError):
                    _run([*self._prefix, str(self._bin / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "30",
                          "stop"], "pg_ctl stop")
                    break
        if self.temporary:
            shutil.rmtree(self.directory, ignore_errors=True)


def _stop_stale_postgres(data: Path, prefix: list[str], bin_dir: Path) -> None:
    """Stop the postmaster of an earlier run still serving ``data`` (``pg_ctl stop -m fast``).

    Raises :class:`ServiceError` naming the pid when ``postmaster.pid`` names a live process that
    is not a PostgreSQL of this directory (PostgreSQL itself would refuse to start then).
    """
    pid = _pid_in(data / "postmaster.pid")
    if pid is None or not _running(pid):
        return  # none, or a stale file: PostgreSQL replaces it
    if not _serves(pid, data):
        raise ServiceError(f"{data / 'postmaster.pid'} names pid {pid}, which is not a PostgreSQL of {data}: "
                           f"if no PostgreSQL uses {data}, delete that file and start again")
    logger.warning("our own PostgreSQL of an earlier run still serves %s (pid %s), left by a `sluice up` that "
                   "was killed: stopping it", data, pid)
    try:
        _run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
             "pg_ctl stop")
    except ServiceError as exc:
        raise ServiceError(f"our own PostgreSQL of an earlier run (pid {pid}) still serves {data} and did not "
                           f"stop ({exc}): stop it with `kill {pid}`, then start again") from None


def _stop_stale_redis(directory: Path) -> None:
    """Stop the Redis of an earlier run still running in ``directory`` (its pid file names it)."""
    pid = _pid_in(directory / "redis.pid")
    if pid is None or not _running(pid) or not _serves(pid, directory):
        return
    logger.warning("our own Redis of an earlier run still runs in %s (pid %s), left by a `sluice up` that was "
                   "killed: stopping it", directory, pid)
    _end(pid)


@dataclass
class LocalRedis:
    """``redis-server`` under ``directory``: ACL user ``username``, a plain port and a TLS port."""

    ca: LocalCA
    directory: Path
    username: str = "sluice"
    password: str = field(default_factory=lambda: os.urandom(12).hex(), repr=False)
    admin_password: str = field(default_factory=lambda: os.urandom(12).hex(), repr=False)
    host: str = "127.0.0.1"
    port: int = 0
    tls_port: int = 0
    running: Running | None = None
    log: Path | None = None  # where everything redis-server prints is appended as it comes (``up``: logs/)

    def start(self) -> LocalRedis:
        if not shutil.which("redis-server"):
            raise ServiceError("redis-server is not installed: run `bash scripts/install.sh`")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        # Chosen together: two choices each let go of could be the same port (free_ports).
        chosen = iter(free_ports(self.host, 2, besides={self.port, self.tls_port}))
        self.port, self.tls_port = self.port or next(chosen), self.tls_port or next(chosen)
        config = self.directory / "redis.conf"  # the ACL users' passwords: 0600 from the start
        write_private(
            config,
            "\n".join(
                [
                    f"bind {self.host}",
                    f"port {self.port}",
                    f"tls-port {self.tls_port}",
                    f"tls-cert-file {self.ca.cert_file}",
                    f"tls-key-file {self.ca.key_file}",
                    f"tls-ca-cert-file {self.ca.ca_file}",
                    "tls-auth-clients no",
                    f"dir {self.directory}",
                    f"pidfile {self.directory / 'redis.pid'}",
                    'save ""',
                    "appendonly no",
                    "daemonize no",
                    "loglevel notice",
                    "user default off",
                    f"user admin on >{self.admin_password} ~* &* +@all",
                    f"user {self.username} on >{self.password} ~* &* +@all",
                ]
            )
            + "\n",
        )
        self.running = start(
            "redis-server",
            ["redis-server", str(config)],
            timeout=30,
            env={MARKER: ""},  # left to the next `up` (its pid file), not to the reaper
            ready=re.compile(r"(?P<ready>Ready to accept connections)"),
            log=self.log,
        )
        return self

    def _stop_stale(self) -> None:
        _stop_stale_redis(self.directory)

    def url(self, *, tls: bool = False, host: str | None = None) -> str:
        """The URL with the ACL user and no password (it comes from the secret)."""
        if tls:
            return f"rediss://{self.username}@{host or self.host}:{self.tls_port}/0?ssl_ca_certs={self.ca.ca_file}"
        return f"redis://{self.username}@{host or self.host}:{self.port}/0"

    def admin(self) -> redis.Redis:
        import redis

        return redis.Redis(host=self.host, port=self.port, username="admin", password=self.admin_password)

    def set_password(self, password: str, *, username: str | None = None) -> None:
        """Create the ACL user or replace its password (logged-in connections stay logged in, as on Azure)."""
        with self.admin() as client:
            client.acl_setuser(
                username or self.username,
                enabled=True,
                reset_passwords=True,
                passwords=[f"+{password}"],
                keys=["*"],
                channels=["*"],
                commands=["+@all"],
            )

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()


def _run(argv: list[str], what: str) -> None:
    from sluice.reaper import unmarked_environ  # our own PostgreSQL is left to the next `up`, not to the reaper

    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, env=unmarked_environ())
    if result.returncode != 0:
        raise ServiceError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}")


def _pid_in(pid_file: Path) -> int | None:
    """The pid on the first line of ``pid_file`` (PostgreSQL's postmaster.pid, Redis's pidfile), if any."""
    try:
        return int(pid_file.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is no zombie (a server we did not fork is reaped by others, or never)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _serves(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` works in ``directory`` (both servers chdir to it) or names it on its command line."""
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/cwd").resolve() == directory.resolve():
            return True
    with contextlib.suppress(OSError):
        return str(directory.resolve()) in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return False


def _end(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM process ``pid`` (not our child: it cannot be waited for), SIGKILL if it outlives ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _running(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.1)


@dataclass
class LocalPgBouncer:
    """Debian's ``pgbouncer`` in transaction mode (as Azure Flexible Server's built-in one) in front of a PostgreSQL.

    Every database of the server is reachable under its own name (``* =``); clients log
    in with scram-sha-256 against ``userlist.txt``, and PgBouncer logs in to the server
    as the same user with the same password. Run as the ``postgres`` user when we are
    root (PgBouncer refuses to run as root).
    """

    directory: Path
    server_host: str = "127.0.0.1"
    server_port: int = 5432
    user: str = "postgres"
    password: str = field(default_factory=lambda: os.urandom(12).hex(), repr=False)
    host: str = "127.0.0.1"
    port: int = 0
    pool_size: int = 4
    running: Running | None = None

    def start(self) -> LocalPgBouncer:
        binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
        if binary is None:
            raise ServiceError("pgbouncer is not installed: run `bash scripts/install.sh`")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = self.port or free_port(self.host)
        userlist, ini = self.directory / "userlist.txt", self.directory / "pgbouncer.ini"
        write_private(userlist, f'"{self.user}" "{self.password}"\n')
        write_private(
            ini,
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self.server_host} port={self.server_port}",
                    "[pgbouncer]",
                    f"listen_addr = {self.host}",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = scram-sha-256",
                    f"auth_file = {userlist}",
                    "pool_mode = transaction",
                    f"default_pool_size = {self.pool_size}",
                    "max_client_conn = 200",
                    "ignore_startup_parameters = extra_float_digits",
                    "logfile =",
                    "pidfile =",
                ]
            )
            + "\n",
        )
        prefix, uid = _as_postgres()
        for path in (self.directory, userlist, ini):
            path.chmod(0o700 if path.is_dir() else 0o600)
            if uid is not None:
                os.chown(path, uid, -1)
        self.running = start(
            "pgbouncer", [*prefix, binary, str(ini)], timeout=30, ready=re.compile(r"(?P<ready>process up)")
        )
        return self

    def conninfo(self, dbname: str) -> str:
        """A libpq connection string to ``dbname`` through PgBouncer (with the password: tests only)."""
        return f"host={self.host} port={self.port} dbname={dbname} user={self.user} password={self.password}"

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()


SECRET_NAMES = {
    "postgres": "sluice-postgres-password",
    "redis": "sluice-redis-password",
    "cassandra": "sluice-cassandra-password",
}


@dataclass
class OwnServices:
    """What ``sluice up`` runs of its own under its data dir: PostgreSQL, Redis and the Cassandra credentials.

    New passwords are made at every start, set on each store, and seeded into the Key
    Vault emulator (:meth:`seed`); the settings carry only the secret names
    (:meth:`settings`). The password files that Redis and the Cassandra emulator read
    are 0600 files under the data dir, never command-line arguments.
    """

    directory: Path
    host: str = "127.0.0.1"
    user: str = "sluice"
    passwords: dict[str, str] = field(
        default_factory=lambda: {k: os.urandom(16).hex() for k in SECRET_NAMES}, repr=False
    )
    ca: LocalCA | None = None
    postgres: LocalPostgres | None = None
    redis: LocalRedis | None = None
    keep: bool = False  # the PostgreSQL data is kept across restarts even where it must move (postgres_directory)

    def start_postgres(self, database: str) -> LocalPostgres:
        self.ca = self.ca or LocalCA(self.directory / "certs")
        # Held before it starts, so that stop() stops a server whose start was interrupted (Ctrl-C).
        self.postgres = LocalPostgres(self.ca, self.directory / "postgres", host=self.host, keep=self.keep)
        self.postgres.start()
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.postgres.admin_dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.passwords["postgres"])
                )
            )
        return self.postgres

    def start_redis(self, *, log: Path | None = None) -> LocalRedis:
        """Our own Redis; ``log``: where what it prints is appended (:meth:`LocalStack.log_path`)."""
        self.ca = self.ca or LocalCA(self.directory / "certs")
        self.redis = LocalRedis(
            self.ca, self.directory / "redis", username=self.user, password=self.passwords["redis"], host=self.host,
            log=log,
        ).start()
        return self.redis

    def cassandra_args(self) -> list[str]:
        """The emulator's PasswordAuthenticator and TLS arguments (the password through a 0600 file)."""
        self.ca = self.ca or LocalCA(self.directory / "certs")
        password_file = self.directory / "cassandra.pw"
        write_private(password_file, self.passwords["cassandra"])
        return [
            "--username",
            self.user,
            "--password-file",
            str(password_file),
            "--tls-cert",
            str(self.ca.cert_file),
            "--tls-key",
            str(self.ca.key_file),
        ]

    def seed(self, vault_url: str, ca_file: Path) -> None:
        """Store the three passwords in the Key Vault emulator under :data:`SECRET_NAMES`."""
        from azure.keyvault.secrets import SecretClient

        from shared.adapters.identity import LocalDevelopmentCredential

        with SecretClient(
            vault_url, LocalDevelopmentCredential(), verify_challenge_resource=False, connection_verify=str(ca_file)
        ) as client:
            for store, name in SECRET_NAMES.items():
                client.set_secret(name, self.passwords[store])

    def settings(self, database: str, cassandra_port: int) -> dict[str, str]:
        """Settings for the stores behind passwords and TLS: secret names, never values."""
        assert self.ca is not None
        values = {
            "SLUICE_CASSANDRA_USERNAME": self.user,
            "SLUICE_CASSANDRA_PASSWORD": "",
            "SLUICE_CASSANDRA_PASSWORD_SECRET": SECRET_NAMES["cassandra"],
            "SLUICE_CASSANDRA_TLS": "true",
            "SLUICE_CASSANDRA_TLS_CA_FILE": str(self.ca.ca_file),
            "SLUICE_CASSANDRA_PORT": str(cassandra_port),
        }
        if self.postgres is not None:
            values.update(
                {
                    "SLUICE_POSTGRES_HOST": self.host,
                    "SLUICE_POSTGRES_PORT": str(self.postgres.port),
                    "SLUICE_POSTGRES_DBNAME": database,
                    "SLUICE_POSTGRES_USER": self.user,
                    "SLUICE_POSTGRES_PASSWORD": "",
                    "SLUICE_POSTGRES_PASSWORD_SECRET": SECRET_NAMES["postgres"],
                    "SLUICE_POSTGRES_SSLMODE": "verify-full",
                    "SLUICE_POSTGRES_SSLROOTCERT": str(self.ca.ca_file),
                }
            )
        if self.redis is not None:
            values.update(
                {
                    "SLUICE_REDIS_URL": self.redis.url(tls=True),
                    "SLUICE_REDIS_CLUSTER": "false",
                    "SLUICE_REDIS_PASSWORD": "",
                    "SLUICE_REDIS_PASSWORD_SECRET": SECRET_NAMES["redis"],
                }
            )
        return values

    def stop(self) -> None:
        for server in (self.redis, self.postgres):
            if server is not None:
                server.stop()

    def stop_stale(self) -> None:
        """Stop the PostgreSQL and Redis an earlier run (a killed ``up``) left running under this directory, found by
        their pid files (``postgres/data/postmaster.pid``, wherever :func:`postgres_directory` put it, and
        ``redis/redis.pid``): before ``--fresh`` deletes those files."""
        _stop_stale_redis(self.directory / "redis")
        if PG_BIN:
            prefix, _ = _as_postgres()
            for where in {self.directory / "postgres", postgres_directory(self.directory / "postgres")}:
                _stop_stale_postgres(where / "data", prefix, PG_BIN[-1])


def postgres_directory(directory: Path, *, keep: bool = True) -> Path:
    """Where :class:`LocalPostgres` keeps a cluster it is given ``directory`` for: ``directory`` itself, unless we
    are root and the ``postgres`` user (which runs it) cannot reach it, e.g. under ``/root`` (0700). Then a
    directory named after ``directory``: with ``keep`` in the postgres user's home
    (``/var/lib/postgresql/sluice-stacks/<digest>``, kept across restarts and reboots), else under the temporary
    directory (``/tmp/sluice-postgres-<digest>``)."""
    _, uid = _as_postgres()
    if uid is None or _traversable(directory.parent, uid):
        return directory
    digest = hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:12]
    home = Path(pwd.getpwuid(uid).pw_dir)
    if keep and home.is_dir() and _traversable(home, uid):
        return home / "sluice-stacks" / digest
    return Path(tempfile.gettempdir()) / f"sluice-postgres-{digest}"


def _traversable(directory: Path, uid: int) -> bool:
    """Whether user ``uid`` can reach ``directory`` (every ancestor searchable by it or by others)."""
    for path in (directory.resolve(), *directory.resolve().parents):
        if not path.exists():
            continue
        st = path.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)):
            return False
    return True
