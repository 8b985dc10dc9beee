"""bootstrap.built: a client or service is built once per process, whatever threads ask for it first."""

from __future__ import annotations

import threading
import time

from shared import bootstrap


def test_concurrent_first_calls_build_once_and_share_the_value() -> None:
    calls: list[str] = []

    @bootstrap.built
    def inner() -> object:
        calls.append("inner")
        return object()

    @bootstrap.built
    def outer() -> tuple[object, object]:
        calls.append("outer")
        time.sleep(0.05)  # long enough for every other thread to arrive while this one builds
        return object(), inner()  # a builder that calls a builder (the lock is re-entrant)

    start = threading.Barrier(8)
    results: list[tuple[object, object]] = []

    def ask() -> None:
        start.wait()
        results.append(outer())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["outer", "inner"]
    assert len(results) == 8 and len(set(map(id, results))) == 1
    outer.cache_clear()
    assert outer() is not results[0] and calls == ["outer", "inner", "outer"]
