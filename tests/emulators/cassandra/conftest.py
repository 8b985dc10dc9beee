"""Driver sessions on the shared emulator for the conformance tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cassandra.cluster import Cluster, Session

from sluice.launcher import Running


@pytest.fixture(scope="session")
def cluster(cassandra_emulator: Running) -> Iterator[Cluster]:
    """A driver Cluster with default settings (protocol negotiated down to v4)."""
    c = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port)
    yield c
    c.shutdown()


@pytest.fixture(scope="session")
def cluster_v4(cassandra_emulator: Running) -> Iterator[Cluster]:
    c = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, protocol_version=4)
    yield c
    c.shutdown()


@pytest.fixture(params=["default", "v4"])
def session(request: pytest.FixtureRequest, cassandra_keyspace: str) -> Iterator[Session]:
    """A session whose keyspace is a fresh one, once with defaults and once with protocol_version=4 pinned."""
    c: Cluster = request.getfixturevalue("cluster" if request.param == "default" else "cluster_v4")
    s = c.connect(cassandra_keyspace)
    yield s
    s.shutdown()
