"""The dev host's errors: one base, so ``python -m devhost`` can print any of them as one line."""

from __future__ import annotations


class DevHostError(Exception):
    """Something the dev host cannot run as configured; the message says what and how to fix it."""


class UnsupportedBindingError(DevHostError):
    """The app uses a trigger or binding the dev host does not implement (named in the message)."""
