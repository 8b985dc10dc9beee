"""Each emulator refuses a bad command line (a port out of range, a port taken, a data directory that cannot be one,
TLS files it cannot read) with an error naming the option, exit 2, and no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("emulator", ["cassandra", "eventhubs", "keyvault"])
@pytest.mark.parametrize("port", ["70000", "-1", "amqp"])
def test_a_port_out_of_range_is_an_argument_error(emulator: str, port: str) -> None:
    """``--port 70000`` reached ``bind()`` and died with an OverflowError traceback; now argparse refuses it and
    exits 2."""
    done = subprocess.run([sys.executable, "-m", f"emulators.{emulator}", "--port", port],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"argument --port: '{port}'" in done.stderr
    assert "Traceback" not in done.stderr


def _run(emulator: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"emulators.{emulator}", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_port_taken_is_an_error_naming_it() -> None:
    """The Cassandra emulator died with an OSError traceback and exit 1 where the other two say ``error: cannot
    listen on ...`` and exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "emulators.cassandra", "--port", str(port)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("emulator", ["cassandra", "eventhubs"])  # keyvault: tests/emulators/keyvault/test_process.py
def test_a_data_dir_that_is_a_file_is_an_error_naming_it(emulator: str, tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    done = _run(emulator, "--data-dir", str(not_a_directory))
    assert done.returncode == 2, done.stderr
    assert f"--data-dir {not_a_directory}" in done.stderr and "Traceback" not in done.stderr


def test_tls_files_that_cannot_be_read_are_an_error_naming_them(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    done = _run("cassandra", "--tls-cert", str(missing), "--tls-key", str(missing))
    assert done.returncode == 2, done.stderr
    assert "--tls-cert" in done.stderr and str(missing) in done.stderr and "Traceback" not in done.stderr
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    done = _run("cassandra", "--tls-cert", str(not_pem), "--tls-key", str(not_pem))
    assert done.returncode == 2, done.stderr
    assert "--tls-cert" in done.stderr and "Traceback" not in done.stderr
