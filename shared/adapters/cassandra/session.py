"""Building the cassandra-driver Cluster and Session from settings.

One Session per worker process, built on first use and reused by every
invocation (see ``shared.bootstrap``); nothing connects at import time.
Cosmos DB for Apache Cassandra: port 10350, TLS, PasswordAuthenticator with the
account name and key, ``SLUICE_CASSANDRA_LOCAL_DC`` set to the account's region.
"""

from __future__ import annotations

import logging
import ssl

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from shared.adapters.cassandra.retry import CosmosRetryPolicy
from shared.settings import CassandraSettings

logger = logging.getLogger(__name__)


def build_cluster(settings: CassandraSettings, password: str | None = None) -> Cluster:
    """A configured, not yet connected Cluster (the password comes resolved, never from logs)."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc)),
        retry_policy=CosmosRetryPolicy(
            max_retries=settings.overload_max_retries, max_wait=settings.overload_max_wait_seconds
        ),
        consistency_level=ConsistencyLevel.name_to_value[settings.consistency],
        request_timeout=settings.request_timeout_seconds,
    )
    options: dict = {
        "contact_points": settings.hosts,
        "port": settings.port,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
        "connect_timeout": settings.connect_timeout_seconds,
        "protocol_version": 4,
    }
    if settings.username:
        options["auth_provider"] = PlainTextAuthProvider(settings.username, password or "")
    if settings.tls:
        context = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
        options["ssl_context"] = context
    return Cluster(**options)


def connect(settings: CassandraSettings, password: str | None = None, *, keyspace: str | None = None) -> Session:
    """Connect and return a Session (bound to ``keyspace`` when given)."""
    cluster = build_cluster(settings, password)
    try:
        session = cluster.connect(keyspace)
    except Exception:
        cluster.shutdown()  # its threads would outlive every failed attempt of a retried invocation
        raise
    logger.info("connected to Cassandra at %s:%s", ",".join(settings.hosts), settings.port)
    return session
