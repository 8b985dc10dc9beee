"""``VettedPool``: the PostgreSQL pool whose start-up check runs in the background (no server needed: the pool
never connects here, ``min_size`` is 0 and no borrow gets past the check)."""

from __future__ import annotations

import threading
import time

import pytest
from psycopg_pool import PoolTimeout

from shared.adapters.postgres.pool import VettedPool, make_pool
from shared.exceptions import ConfigurationError
from shared.settings import PostgresSettings

SETTINGS = PostgresSettings(host="unused", pool_min_size=0, pool_max_size=1, pool_timeout_seconds=30)
NOWHERE = "host=127.0.0.1 port=1 dbname=none connect_timeout=1"


def _until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_building_the_pool_does_not_wait_for_its_check_and_a_borrow_waits_only_its_timeout() -> None:
    release = threading.Event()
    started = time.monotonic()
    pool = make_pool(NOWHERE, SETTINGS, vet=lambda: release.wait(10))
    try:
        assert isinstance(pool, VettedPool) and time.monotonic() - started < 1.0
        borrowing = time.monotonic()
        with pytest.raises(PoolTimeout, match="prepared statements"):
            pool.getconn(timeout=0.3)
        assert time.monotonic() - borrowing < 1.5
        assert pool.closed  # not opened (no connection of the pool) before the check ended
    finally:
        release.set()
        pool.close()


def test_a_refusal_of_the_check_is_raised_by_every_borrow_and_the_pool_never_opens() -> None:
    def refuse() -> None:
        raise ConfigurationError("SLUICE_POSTGRES_PREPARE_THRESHOLD=5 ... set SLUICE_POSTGRES_PREPARE_THRESHOLD=none")

    pool = make_pool(NOWHERE, SETTINGS, vet=refuse)
    try:
        for _ in range(2):
            with pytest.raises(ConfigurationError, match="SLUICE_POSTGRES_PREPARE_THRESHOLD=none"):
                pool.getconn(timeout=2)
        assert pool.closed  # never opened
    finally:
        pool.close()


def test_a_check_that_fails_otherwise_refuses_nothing_and_opens_the_pool() -> None:
    def broken() -> None:
        raise RuntimeError("a check that cannot run")

    pool = make_pool(NOWHERE, SETTINGS, vet=broken)
    try:
        _until(lambda: not pool.closed)
    finally:
        pool.close()


def test_a_pool_closed_before_its_check_ends_stays_closed() -> None:
    release = threading.Event()
    ended = threading.Event()

    def slow() -> None:
        release.wait(10)
        ended.set()

    pool = make_pool(NOWHERE, SETTINGS, vet=slow)
    pool.close()
    release.set()
    _until(ended.is_set)
    time.sleep(0.1)  # the check's thread opens the pool (if it wrongly did) just after the check returns
    assert pool.closed
