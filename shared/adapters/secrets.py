"""A store's password that can change while the process runs (rotation without a restart).

A :class:`RotatingSecret` holds the value last read from its source (Key Vault,
or a fixed value from settings). The adapters ask it for the password each time
they open a connection, and call :meth:`RotatingSecret.refresh` when the store
rejects the credentials (PostgreSQL refusing a log-in, Redis ``WRONGPASS``/``NOAUTH``,
Cassandra ``AuthenticationFailed``):

* the source is read again at most once per ``min_interval`` seconds, however
  many connections fail at once, so a wrong password cannot hammer the vault. The
  interval runs from the end of a read, and callers that waited while a read ran
  take its outcome instead of reading again: a slow or black-holed vault costs one
  read for N connections refused together, not N reads back to back;
* a vault that cannot be reached (or refuses) keeps the cached value: the store
  may still accept it, and the next refresh tries again. So does any other error
  the source raises (its contract is a ``SluiceError``; anything else is logged
  with its type), as long as a value is cached: with none, the error propagates;
* ``refresh`` says whether the value changed (or differs from the one the store
  refused), so the caller retries only then;
* a client whose store cannot tell a refused password from another refusal after
  the log-in (PostgreSQL) reports each value a log-in succeeded with
  (:meth:`RotatingSecret.accepted`) and, when the re-read value is refused too,
  goes back to that one (:meth:`RotatingSecret.fall_back`): in a vault-first
  rotation's window the store still takes the old value, and a refusal for another
  reason must not leave the process on the new one, which the store refuses;
* once a value is cached, :meth:`RotatingSecret.value` never waits for a re-read
  under way: it returns the cached value until the new one is read whole;
* before that, callers of :meth:`RotatingSecret.value` that waited while the first
  read ran take its outcome too: a failed one raises its error in each of them (the
  next caller reads again), so a vault that does not answer at a cold start costs
  one read for N connections opened together.

Values are never logged or shown in ``repr``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from shared.exceptions import SluiceError

if TYPE_CHECKING:
    from pydantic import SecretStr

logger = logging.getLogger(__name__)


class SecretSource(Protocol):
    """Where named secrets are read (``shared.adapters.keyvault.KeyVaultSecrets``)."""

    def fetch(self, name: str) -> str:
        """The secret's current value, read now (never cached); raises a ``SluiceError`` when it cannot."""
        ...


def store_password(value: SecretStr | None, secret_name: str | None, vault: Callable[[], SecretSource], *,
                   min_interval: float, read_now: bool = True) -> RotatingSecret | None:
    """A store's password as its settings give it: a fixed value, a secret read from ``vault``, or none.

    The secret is read once here, before the client is built, so a missing secret stops start-up with
    a ``ConfigurationError`` naming it and the vault (a pool would only log it and time out). ``vault``
    is called only when a secret is named. ``read_now=False`` leaves the first read to the client's first
    connection, for a client that reads it off its event loop (the lookups').
    """
    if value is not None:
        return RotatingSecret.fixed(value.get_secret_value())
    if not secret_name:
        return None
    rotating = RotatingSecret(secret_name, lambda: vault().fetch(secret_name), min_interval=min_interval)
    if read_now:
        rotating.value()
    return rotating


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
        self._accepted: str | None = None  # the value a log-in last succeeded with (accepted())
        self._read_at: float | None = None  # when the last refresh's read ended (the first read does not count)
        self._reads = 0  # refresh reads finished (or failed) so far: a caller that saw this change while it waited
        # for the lock takes that read's outcome
        self._first_reads = 0  # first reads (by value()) failed so far, and the last one's error: a caller that saw
        self._first_error: Exception | None = None  # the count change while it waited raises that error

    @classmethod
    def fixed(cls, value: str) -> RotatingSecret:
        """A value from settings: ``refresh`` never changes it."""
        return cls(None, lambda: value)

    def __repr__(self) -> str:
        return f"RotatingSecret({self.name!r})"

    @property
    def read(self) -> bool:
        """Whether a value has been read (then :meth:`value` returns it without waiting for the source)."""
        return self._value is not None

    def value(self) -> str:
        """The cached value; the first call reads it (errors propagate: a missing secret stops start-up).

        Once a value has been read this never waits: a refresh holds the lock for its whole vault read,
        and a caller on an event loop (the lookups' Redis log-in) must not stall behind it. It gets the
        value cached until the re-read ends (``refresh`` replaces it in one assignment, once read).
        Callers that waited while a first read ran take its outcome: when it failed, its error, without
        reading again (a black-holed vault costs one read, not one per waiting connection back to back).
        """
        cached = self._value  # one attribute read: atomic, no lock needed
        if cached is not None:
            return cached
        failed_before = self._first_reads  # an int read: no lock needed to see it, only to change it
        with self._lock:
            if self._value is not None:
                return self._value
            if self._first_reads != failed_before and self._first_error is not None:
                raise self._first_error  # the read this caller waited for failed: its outcome is this one's
            try:
                self._value = self._fetch()
            except Exception as exc:
                self._first_error = exc
                self._first_reads += 1
                raise
            self._first_error = None
            return self._value

    def accepted(self, value: str) -> None:
        """A log-in with ``value`` succeeded: :meth:`fall_back` goes back to it."""
        self._accepted = value  # one assignment: atomic, no lock needed

    def fall_back(self, refused: str) -> bool:
        """The store refused ``refused`` too, the value a :meth:`refresh` read: go back to the value a log-in last
        succeeded with, if there is one and the cached value is still ``refused``; ``True`` if it did.

        For a store whose refusal does not say whether the password was wrong (PostgreSQL: libpq gives no
        SQLSTATE for a failed log-in). In a vault-first rotation's window the store takes the old value only:
        a refusal for another reason (too many connections) re-reads the vault's new value, the store refuses
        that one, and without this every later connection would log in with it until the store is rotated.
        The next refusal of the old value re-reads the vault again (rate-limited) and tries the new one.
        """
        with self._lock:
            accepted = self._accepted
            if accepted is None or self._value != refused or accepted == refused:
                return False
            self._value = accepted
        logger.warning("secret %s: its re-read value was refused too; back to the value last accepted", self.name)
        return True

    def refresh(self, reason: str = "an authentication failure", *, rejected: str | None = None) -> bool:
        """Read the secret again (after the store rejected it); ``True`` if trying again may help.

        That is when this read changed the value, or, given the ``rejected`` value the caller
        logged in with, when the cached value differs from it: of several connections refused
        together, the first one's read fetches the new value and the others, rate-limited, use it.
        Reads nothing when the last refresh ended less than ``min_interval`` seconds ago, when
        another caller's read ran while this one waited for it (its outcome is this one's), for a
        fixed value, or when the source fails with any error (the cached value is kept and the failure
        logged; with no value cached yet the error propagates, as from :meth:`value`).
        """
        if self.name is None:
            return False

        def other_than_rejected(value: str | None) -> bool:
            return rejected is not None and value is not None and value != rejected

        reads_before = self._reads  # an int read: no lock needed to see it, only to change it
        with self._lock:
            if self._reads != reads_before:  # a read ended while this caller waited: no fresher value to get
                return other_than_rejected(self._value)
            if self._read_at is not None and self._clock() - self._read_at < self._min_interval:
                return other_than_rejected(self._value)
            try:
                value = self._fetch()
            except Exception as exc:
                if self._value is None:
                    raise  # nothing cached to keep: a first read's error is not swallowed (as in value())
                # any error, not only a SluiceError: the source's contract says it raises one, but one that
                # escapes (a bug, an error it does not know) must not reach the stores' log-in code either
                kind = "" if isinstance(exc, SluiceError) else f"{type(exc).__name__}: "
                logger.warning("secret %s not refreshed, keeping the cached value: %s%s", self.name, kind, exc)
                return other_than_rejected(self._value)
            finally:
                self._read_at = self._clock()
                self._reads += 1
            changed = value != self._value
            self._value = value
        logger.info("secret %s re-read after %s (%s)", self.name, reason, "changed" if changed else "unchanged")
        return changed or other_than_rejected(value)
