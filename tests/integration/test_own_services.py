"""``sluice up``'s own PostgreSQL, Redis and Cassandra credentials: passwords from Key Vault, TLS, nothing leaked.

The stack's pieces are started as ``up`` starts them (no dev host, no load):
our own PostgreSQL (scram-sha-256, ssl on) and Redis (ACL user, TLS port), the
Cassandra emulator with PasswordAuthenticator and TLS, and the Key Vault emulator
seeded with the three passwords. The migrations then run as a separate
``python -m sluice`` process that knows only secret names, and no password
appears in ``local.settings.json``, ``settings.env``, the children's output or ``ps``.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sluice.delivery import Probe
from sluice.localstack import LocalStack, StackOptions
from sluice.secured import OwnServices

pytestmark = pytest.mark.timeout(240)


def test_own_services_take_their_passwords_from_the_vault_and_leak_none(tmp_path: Path) -> None:
    said: list[str] = []
    options = StackOptions(data_dir=tmp_path / "stack", cassandra_port=0, eventhubs_port=0, azurite_port=0,
                           keyvault_port=0, http_port=0, persist=False, database="sluice_own")
    stack = LocalStack(options, say=said.append)
    probe = None
    try:
        stack.ensure_postgres()
        stack.ensure_redis()
        stack.start_cassandra()
        stack.start_keyvault()
        stack.ports.update(azurite=10999, eventhubs=5999)  # not started: the migrations need neither
        values = json.loads(stack.write_settings().read_text())["Values"]
        assert stack.create_database()
        migrated = stack.migrate()

        for store in ("POSTGRES", "REDIS", "CASSANDRA"):
            assert values[f"SLUICE_{store}_PASSWORD_SECRET"] and not values[f"SLUICE_{store}_PASSWORD"]
        assert values["SLUICE_POSTGRES_SSLMODE"] == "verify-full" and values["SLUICE_REDIS_URL"].startswith("rediss://")
        assert values["SLUICE_CASSANDRA_TLS"] == "true"
        assert int(values["SLUICE_POSTGRES_PORT"]) != 5432 and ":6379" not in values["SLUICE_REDIS_URL"]

        probe = Probe(stack.values)  # connects as the pipeline does: names from settings, values from the vault
        with probe.pg() as conn:
            assert conn.execute("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                                ).fetchone()[1] is True
        assert probe.redis.ping()
        assert probe.session.execute("SELECT release_version FROM system.local").one()

        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        texts = {"local.settings.json": stack.settings_path.read_text(),
                 "settings.env": (stack.settings_path.parent / "settings.env").read_text(),
                 "ps": ps, "migrate output": migrated, "said": "\n".join(said),
                 **{f"{c.name} output": c.output() for c in stack.children}}
        for store, password in stack.own.passwords.items():
            for where, text in texts.items():
                assert password not in text, f"the {store} password is in {where}"
    finally:
        if probe is not None:
            probe.close()
        own = stack.own
        assert stack.stop() == []
        if own is not None and own.postgres is not None:
            shutil.rmtree(own.postgres.directory, ignore_errors=True)  # outside tmp_path when we are root


def _readable_by_others(path: Path, top: Path) -> bool:
    """Whether a user other than the owner (and not in its group) can read ``path``: it is o+r, and every directory
    from ``top`` down to it is o+x."""
    if not path.stat().st_mode & stat.S_IROTH:
        return False
    current = path.parent
    while True:
        if not current.stat().st_mode & stat.S_IXOTH:
            return False
        if current == top:
            return True
        current = current.parent


def test_the_passwords_seeded_into_the_key_vault_emulator_are_not_readable_by_other_users(tmp_path: Path) -> None:
    """The stores' passwords are kept only in the Key Vault emulator (docs/security.md), which saves every secret's
    value in ``<data-dir>/keyvault/vault.json``: that directory was 0755 and the file 0644, so any local user read
    the running stack's PostgreSQL, Redis and Cassandra passwords there."""
    data_dir = tmp_path / "stack"
    data_dir.mkdir()
    data_dir.chmod(0o755)  # as .local/stack is made in a checkout (umask 022)
    (data_dir / "keyvault").mkdir(mode=0o755)  # as an older `up` left it
    stack = LocalStack(StackOptions(data_dir=data_dir, keyvault_port=0), say=lambda _: None)
    own = OwnServices(data_dir / "own")
    stack.own = own
    try:
        stack.start_keyvault()
    finally:
        stack.stop()
    exposed = []
    for path in data_dir.rglob("*"):
        if not path.is_file() or not _readable_by_others(path, data_dir):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        exposed += [f"{path.relative_to(data_dir)}: the {store} password" for store, password in own.passwords.items()
                    if password in text]
    assert exposed == [], "readable by every local user: " + "; ".join(exposed)
    assert stat.S_IMODE((data_dir / "keyvault").stat().st_mode) == 0o700


def test_a_password_file_an_older_run_left_readable_is_written_anew_0600(tmp_path: Path) -> None:
    """The Cassandra emulator's password file was made with ``touch(mode=0o600)``, which keeps the mode of a file
    that is already there: one left 0644 got the new password, readable by every local user."""
    own = OwnServices(tmp_path / "own")
    (tmp_path / "own").mkdir()
    older = tmp_path / "own" / "cassandra.pw"
    older.write_text("the last run's")
    older.chmod(0o644)
    own.cassandra_args()
    assert older.read_text() == own.passwords["cassandra"]
    assert stat.S_IMODE(older.stat().st_mode) == 0o600
    assert stat.S_IMODE(own.ca.key_file.stat().st_mode) == 0o600  # type: ignore[union-attr]  # made by cassandra_args
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["cassandra.pw", "certs"]  # no temporary file left


class _Kernel:
    """A stand-in for the kernel's choice of a free port (``bind`` to port 0): the lowest port no open socket holds,
    so a port chosen and let go is handed out again at once, as the kernel may do."""

    def __init__(self) -> None:
        self.bound: set[int] = set()

    def socket(self, *_: object) -> _Socket:
        return _Socket(self)


class _Socket:
    def __init__(self, kernel: _Kernel) -> None:
        self.kernel, self.port = kernel, 0

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def setsockopt(self, *_: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        port = address[1] or min(set(range(40000, 40100)) - self.kernel.bound)
        if port in self.kernel.bound:
            raise OSError(98, "Address already in use")
        self.kernel.bound.add(port)
        self.port = port

    def getsockname(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def close(self) -> None:
        self.kernel.bound.discard(self.port)


def test_our_own_redis_never_gets_one_port_for_both_its_listeners(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Our own Redis listens on a plain port and a TLS port, both chosen free. A port chosen and let go is free
    again, and the kernel may hand it out for the second choice (the stand-in kernel here always does): redis-server
    would then fail to bind its second listener. Both are held until both are chosen."""
    import socket
    from types import SimpleNamespace

    from sluice import localstack, secured
    from sluice.secured import LocalRedis

    kernel = _Kernel()
    monkeypatch.setattr(localstack, "socket", SimpleNamespace(
        socket=kernel.socket, SOL_SOCKET=socket.SOL_SOCKET, SO_REUSEADDR=socket.SO_REUSEADDR))
    monkeypatch.setattr(secured.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(secured, "start", lambda *_, **__: SimpleNamespace())  # no redis-server: its config is read
    ca = SimpleNamespace(**{name: tmp_path / f"{name}.pem" for name in ("ca_file", "cert_file", "key_file")})
    server = LocalRedis(ca, tmp_path / "redis").start()  # type: ignore[arg-type]  # a stand-in CA: file names only
    config = (tmp_path / "redis" / "redis.conf").read_text().splitlines()
    assert f"port {server.port}" in config and f"tls-port {server.tls_port}" in config
    assert server.port != server.tls_port


def test_our_own_redis_output_goes_to_its_log_file_as_every_childs_does(tmp_path: Path) -> None:
    """docs/local-stack.md, "Logs": everything each child prints goes to ``<data-dir>/logs/<name>.log``. Our own
    Redis is a child of ``up`` (watched in ``stack.children``), but was started without a log: what redis-server
    printed (its warnings, an OOM, a TLS error) was kept only in the 200-line memory buffer and lost when ``up``
    ended."""
    stack = LocalStack(StackOptions(data_dir=tmp_path / "stack"), say=lambda _: None)
    try:
        stack.ensure_redis()
        assert "redis-server" in [running.name for running in stack.children]
    finally:
        stack.stop()
    log = tmp_path / "stack" / "logs" / "redis-server.log"
    assert log.is_file(), f"our own Redis wrote no log: {sorted(p.name for p in log.parent.glob('*'))}"
    assert "Ready to accept connections" in log.read_text(encoding="utf-8")
