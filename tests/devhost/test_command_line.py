"""``python -m devhost``'s own options are refused by argparse, naming the option, before anything starts."""

from __future__ import annotations

import pytest

from devhost.__main__ import parse_args


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "70000"], "--port: '70000' is no TCP port"),
    (["--port", "-1"], "--port: '-1' is no TCP port"),
    (["--port", "http"], "--port: 'http' is not a whole number"),
    (["--shutdown-timeout", "nan"], "--shutdown-timeout: 'nan' is not a number of seconds"),
    (["--shutdown-timeout", "-5"], "--shutdown-timeout: '-5' is not a number of seconds"),
])
def test_an_option_out_of_range_is_an_argument_error(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A port past 65535 reached ``bind()`` and died with an OverflowError traceback after the listeners had
    started; a NaN or negative shutdown timeout gave invocations in progress no time at all on SIGTERM
    (``asyncio.wait_for`` times out at once), where the operator meant some."""
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_port_zero_and_a_fractional_timeout_are_taken() -> None:
    args = parse_args(["--port", "0", "--shutdown-timeout", "2.5"])
    assert (args.port, args.shutdown_timeout) == (0, 2.5)
