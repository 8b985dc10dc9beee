"""Sluice's error tree: one base, a permanent kind and a transient kind.

``SluiceError``
  ``ConfigurationError``  settings missing or invalid; raised at start-up, lists every problem.
  ``PermanentError``      bad input: retrying cannot help; the item is dead-lettered with the reason.
  ``TransientError``      a dependency is down or throttling: retry, then dead-letter the batch.
    ``DependencyUnavailable``  a dependency stayed unreachable after the retries (HTTP maps it to 503).

Every message names the offending item (event id, device id, setting name).
"""

from __future__ import annotations


class SluiceError(Exception):
    """Base of every error Sluice raises on purpose."""


class ConfigurationError(SluiceError):
    """Settings are missing or invalid; the message lists every problem found."""


class PermanentError(SluiceError):
    """The input itself is wrong; retrying it cannot succeed."""


class TransientError(SluiceError):
    """A dependency failed in a way that may pass (timeout, throttling, connection lost)."""


class DependencyUnavailable(TransientError):
    """A dependency stayed unavailable after the bounded retries; ``dependency`` names it."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(f"{dependency} unavailable: {message}")
        self.dependency = dependency
