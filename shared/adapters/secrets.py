"""A store's password that can change while the process runs (rotation without a restart).

A :class:`RotatingSecret` holds the value last read from its source (Key Vault,
or a fixed value from settings). The adapters ask it for the password each time
they open a connection, and call :meth:`RotatingSecret.refresh` when the store
rejects the credentials (PostgreSQL 28P01, Redis ``WRONGPASS``/``NOAUTH``,
Cassandra ``AuthenticationFailed``):

* the source is read again at most once per ``min_interval`` seconds, however
  many connections fail at once, so a wrong password cannot hammer the vault;
* a vault that cannot be reached (or refuses) keeps the cached value: the store
  may still accept it, and the next refresh tries again;
* ``refresh`` says whether the value changed (or differs from the one the store
  refused), so the caller retries only then.

Values are never logged or shown in ``repr``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from shared.exceptions import SluiceError

logger = logging.getLogger(__name__)


class RotatingSecret:
    """The current value of one secret, re-read from its source on demand (rate-limited)."""

    def __init__(self, name: str | None, fetch: Callable[[], str], *, min_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._fetch = fetch
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._value: str | None = None
        self._read_at: float | None = None  # of the last refresh (the first read does not count)

    @classmethod
    def fixed(cls, value: str) -> RotatingSecret:
        """A value from settings: ``refresh`` never changes it."""
        return cls(None, lambda: value)

    def __repr__(self) -> str:
        return f"RotatingSecret({self.name!r})"

    def value(self) -> str:
        """The cached value; the first call reads it (errors propagate: a missing secret stops start-up)."""
        with self._lock:
            if self._value is None:
                self._value = self._fetch()
            return self._value

    def refresh(self, reason: str = "an authentication failure", *, rejected: str | None = None) -> bool:
        """Read the secret again (after the store rejected it); ``True`` if trying again may help.

        That is when this read changed the value, or, given the ``rejected`` value the caller
        logged in with, when the cached value differs from it: of several connections refused
        together, the first one's read fetches the new value and the others, rate-limited, use it.
        Reads nothing when the last refresh was less than ``min_interval`` seconds ago, for a
        fixed value, or when the source fails (the cached value is kept and the failure logged).
        """
        if self.name is None:
            return False

        def other_than_rejected(value: str | None) -> bool:
            return rejected is not None and value is not None and value != rejected

        with self._lock:
            now = self._clock()
            if self._read_at is not None and now - self._read_at < self._min_interval:
                return other_than_rejected(self._value)
            self._read_at = now
            try:
                value = self._fetch()
            except SluiceError as exc:
                logger.warning("secret %s not refreshed, keeping the cached value: %s", self.name, exc)
                return other_than_rejected(self._value)
            changed = value != self._value
            self._value = value
        logger.info("secret %s re-read after %s (%s)", self.name, reason, "changed" if changed else "unchanged")
        return changed or other_than_rejected(value)
