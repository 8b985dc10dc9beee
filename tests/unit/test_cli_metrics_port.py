"""A CLI command serves no metrics: the port in settings.env belongs to the dev host (or the worker)."""

from __future__ import annotations

import os
import socket

import pytest

from sluice.__main__ import main


def test_a_command_leaves_the_workers_metrics_port_to_the_worker(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as held:  # the dev host's exporter, already listening
        held.bind(("127.0.0.1", 0))
        held.listen()
        monkeypatch.setenv("SLUICE_METRICS_PORT", str(held.getsockname()[1]))
        assert main(["settings-table"]) == 0
        capsys.readouterr()
        assert "SLUICE_METRICS_PORT" not in os.environ  # so start_worker() sets up no endpoint in this process
