"""Sluice's error tree: one base, a permanent kind and a transient kind.

``SluiceError``
  ``ConfigurationError``  settings missing or invalid; raised at start-up, lists every problem.
  ``PermanentError``      bad input: retrying cannot help; the item is dead-lettered with the reason.
  ``TransientError``      a dependency is down or throttling: retry, then dead-letter the batch.
    ``DependencyUnavailable``  a dependency stayed unreachable after the retries (HTTP maps it to 503).
      ``DependencyRefused``    it answered, refusing this one operation (a full Redis refusing a write).

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
    """A dependency stayed unavailable after the bounded retries; ``dependency`` names it (the label of metrics and
    of the status page's JSON), ``name`` in the message when people name it otherwise ("Event Hubs")."""

    def __init__(self, dependency: str, message: str, *, name: str | None = None) -> None:
        super().__init__(f"{name or dependency} unavailable: {message}")
        self.dependency = dependency


class DependencyRefused(DependencyUnavailable):
    """The dependency answered, but refused this one operation: a full Redis refusing a write (``OOM`` with
    ``maxmemory-policy noeviction``), a read-only replica (``READONLY``), a script's error.

    For its caller the operation failed as if the dependency were down (so a ``DependencyUnavailable``: the change
    feed keeps its position, HTTP answers 503), but the dependency is up and answers the next operation on its own
    merits: nothing that guards against an outage (the lookups' Redis circuit breaker) opens on it.
    """

    def __init__(self, dependency: str, message: str) -> None:
        TransientError.__init__(self, f"{dependency} refused: {message}")
        self.dependency = dependency
