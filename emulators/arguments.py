"""Argument types the emulators' command lines share: a bad value is refused by argparse, naming it.

The emulators are a distribution of their own (``pyproject.toml``), so they cannot use
Sluice's ``sluice.arguments``.
"""

from __future__ import annotations

import argparse


def port(text: str) -> int:
    """A TCP port, 0-65535; 0 lets the system pick a free one (the emulator prints it)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 65535:  # bind() would fail later with an OverflowError traceback
        raise argparse.ArgumentTypeError(f"{text!r} is no TCP port (0-65535; 0 picks a free one)")
    return value
