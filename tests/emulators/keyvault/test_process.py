"""The emulator as a process: persistence, the secrets file, signals, bad start-up input."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.keyvault import ROOT, start_keyvault_emulator

pytestmark = pytest.mark.timeout(90)


def test_a_data_dir_keeps_secrets_versions_and_deletions_across_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    emulator = start_keyvault_emulator(tmp_path / "certs-1", "--data-dir", str(data))
    client = emulator.client()
    try:
        first = client.set_secret("kept", "v1")
        client.set_secret("kept", "v2")
        client.set_secret("gone", "x")
        client.begin_delete_secret("gone", _polling_interval=0).wait()
    finally:
        client.close()
        assert emulator.running.stop() == 0

    # every secret's value is in there: the directory the emulator made, and the file, are the owner's alone
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "vault.json").stat().st_mode) == 0o600
    again = start_keyvault_emulator(tmp_path / "certs-2", "--data-dir", str(data))
    client = again.client()
    try:
        assert client.get_secret("kept").value == "v2"
        assert client.get_secret("kept", first.properties.version).value == "v1"
        assert client.get_deleted_secret("gone").name == "gone"
    finally:
        client.close()
        again.running.stop()


def test_a_secrets_file_seeds_the_vault_once(tmp_path: Path) -> None:
    seed = tmp_path / "secrets.json"
    seed.write_text(json.dumps({"postgres-password": "pg", "redis-access-key": {"value": "r", "contentType": "key",
                                                                                 "tags": {"env": "local"}}}))
    data = tmp_path / "data"
    for attempt in range(2):  # a restart with the same file adds no versions
        emulator = start_keyvault_emulator(tmp_path / f"certs-{attempt}", "--data-dir", str(data),
                                           "--secrets-file", str(seed))
        client = emulator.client()
        try:
            assert client.get_secret("postgres-password").value == "pg"
            redis_key = client.get_secret("redis-access-key")
            assert redis_key.value == "r" and redis_key.properties.tags == {"env": "local"}
            assert len(list(client.list_properties_of_secret_versions("postgres-password"))) == 1
        finally:
            client.close()
            emulator.running.stop()


@pytest.mark.parametrize(("content", "named"), [
    ('{"bad_name": "x"}', "bad_name"),
    ('{"ok": {"value": 3}}', "ok"),
    ('["not", "an", "object"]', "JSON object"),
    ("{oops", "cannot read"),
])
def test_a_bad_secrets_file_stops_start_up_naming_the_problem(tmp_path: Path, content: str, named: str) -> None:
    seed = tmp_path / "secrets.json"
    seed.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "emulators.keyvault", "--port", "0", "--cert-dir", str(tmp_path),
         "--secrets-file", str(seed)],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert named in result.stderr


@pytest.mark.parametrize("option", ["--data-dir", "--cert-dir"])
def test_a_data_or_cert_dir_that_is_a_file_stops_start_up_with_exit_2_naming_it(tmp_path: Path, option: str) -> None:
    # mkdir on a file raised FileExistsError: a traceback and exit 1 for --data-dir, and "cannot listen on ...: File
    # exists" (the wrong cause, no path) for --cert-dir, whose ca.pem used to be written only once serving began.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a directory should be")
    cert_dir = blocker if option == "--cert-dir" else tmp_path / "certs"
    argv = [sys.executable, "-m", "emulators.keyvault", "--host", "127.0.0.1", "--port", "0",
            "--cert-dir", str(cert_dir)]
    if option == "--data-dir":
        argv += ["--data-dir", str(blocker)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(blocker) in result.stderr, f"the message does not name {option} {blocker}: {result.stderr[-500:]}"
    assert option in result.stderr and "cannot listen" not in result.stderr, result.stderr[-500:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_it_exits_cleanly_on_a_signal(tmp_path: Path, sig: int) -> None:
    emulator = start_keyvault_emulator(tmp_path)
    assert emulator.running.stop(sig=sig) == 0
    assert "Traceback" not in emulator.running.output()
