"""``python -m devhost``'s own options are refused by argparse, naming the option, before anything starts."""

from __future__ import annotations

import logging

import pytest

from devhost.__main__ import parse_args


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "70000"], "--port: '70000' is no TCP port"),
    (["--port", "-1"], "--port: '-1' is no TCP port"),
    (["--port", "http"], "--port: 'http' is not a whole number"),
    (["--shutdown-timeout", "nan"], "--shutdown-timeout: 'nan' is not a number of seconds"),
    (["--shutdown-timeout", "-5"], "--shutdown-timeout: '-5' is not a number of seconds"),
    (["--log-level", "verbose"], "--log-level: 'verbose' is not a log level"),
    (["--log-level", "5"], "--log-level: '5' is not a log level"),
])
def test_an_option_out_of_range_is_an_argument_error(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A port past 65535 reached ``bind()`` and died with an OverflowError traceback after the listeners had
    started; a NaN or negative shutdown timeout gave invocations in progress no time at all on SIGTERM
    (``asyncio.wait_for`` times out at once), where the operator meant some; an unknown log level ended in
    ``ValueError: Unknown level`` and a traceback."""
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_port_zero_and_a_fractional_timeout_are_taken() -> None:
    args = parse_args(["--port", "0", "--shutdown-timeout", "2.5"])
    assert (args.port, args.shutdown_timeout) == (0, 2.5)


@pytest.mark.parametrize(("name", "level"), [
    ("warning", logging.WARNING), ("DEBUG", logging.DEBUG), ("Trace", logging.DEBUG), ("Information", logging.INFO),
    ("critical", logging.CRITICAL), ("None", logging.CRITICAL + 1),
])
def test_log_levels_are_python_or_dotnet_names_in_any_case(name: str, level: int) -> None:
    """host.json's logging.logLevel spells levels the .NET way (Information, Trace, None); ``--log-level Information``
    crashed with ``ValueError: Unknown level`` and a traceback."""
    assert parse_args(["--log-level", name]).log_level == level


def test_the_log_level_from_the_environment_is_checked_as_the_option_is(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DEVHOST_LOG_LEVEL", "Information")
    assert parse_args([]).log_level == logging.INFO
    monkeypatch.setenv("DEVHOST_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit) as exited:
        parse_args([])
    assert exited.value.code == 2
    assert "--log-level: 'loud' is not a log level" in capsys.readouterr().err
    monkeypatch.delenv("DEVHOST_LOG_LEVEL")
    assert parse_args([]).log_level == logging.INFO
