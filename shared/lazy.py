"""``Once``: a value built on first use, by one thread, and built again if building failed.

Prepared statements and store clients are made this way: not at import or
start-up (a dependency that is down then would fail the worker before any
retry or dead letter could act), and not twice when invocations race.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Once(Generic[T]):
    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        """Whether the value has been built (without building it)."""
        return self._value is not None

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()  # an exception leaves it unbuilt, for the next call
                value = self._value
        return value
