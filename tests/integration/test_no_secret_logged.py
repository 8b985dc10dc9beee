"""No secret value ever reaches a log: every secret setting is set to a known value, stages run with DEBUG logging.

The Cassandra emulator requires the password, so the driver really logs in with it;
the Event Hubs connection string's key points at a closed port, so the lag gauge's
reading (on its own thread) fails and its error is logged; the change feed connects to Redis with
its password set. Every record is formatted with its traceback and its ``extra``
attributes, and none may contain any of the values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from shared import bootstrap, telemetry
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.otel_metrics import reset_failure_log
from sluice.launcher import Running
from tests.fixtures.cassandra import start_cassandra_emulator
from tests.fixtures.functions import HostContext, user_function

pytestmark = pytest.mark.timeout(120)

SECRETS = {
    "SLUICE_CASSANDRA_PASSWORD": "cass-Secret-7d1f0a",
    "SLUICE_REDIS_PASSWORD": "redis-Secret-52be91",
    "SLUICE_POSTGRES_PASSWORD": "pg-Secret-0c77e3",
    "SLUICE_DASHBOARD_TOKEN_KEY": "token-Secret-9a4411f2",
}
EVENTHUB_KEY = "eh-Secret-3f9c2b"


@pytest.fixture(scope="module")
def guarded_cassandra() -> Iterator[Running]:
    running = start_cassandra_emulator("--username", "sluice", "--password", SECRETS["SLUICE_CASSANDRA_PASSWORD"])
    yield running
    running.stop()


class Everything(logging.Handler):
    """Keeps every record fully rendered: message, traceback and every attribute (the ``extra`` dimensions)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self._format = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self._format.format(record) + " " + repr(vars(record)))


def test_no_secret_value_is_logged(guarded_cassandra: Running, azurite_connection_string: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    environment = {
        **SECRETS,
        "AzureWebJobsStorage": azurite_connection_string,
        "EventHubConnection": f"Endpoint=sb://127.0.0.1:{closed};SharedAccessKeyName=root;"
                              f"SharedAccessKey={EVENTHUB_KEY};UseDevelopmentEmulator=true",
        "SLUICE_STORAGE_DEADLETTER_CONTAINER": f"dl-{uuid.uuid4().hex[:12]}",
        "SLUICE_CASSANDRA_HOSTS": guarded_cassandra.host, "SLUICE_CASSANDRA_PORT": str(guarded_cassandra.port),
        "SLUICE_CASSANDRA_USERNAME": "sluice", "SLUICE_CASSANDRA_KEYSPACE": f"ks_{uuid.uuid4().hex[:12]}",
        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_REDIS_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}:",
        "SLUICE_POSTGRES_HOST": "127.0.0.1", "SLUICE_CHANGEFEED_MODE": "portable",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    reader = InMemoryMetricReader()
    previous = telemetry.activate(telemetry.Telemetry(MeterProvider(metric_readers=[reader]), TracerProvider()))
    reset_failure_log()  # the lag gauge's failure must be logged here, whatever ran before in this process
    handler = Everything()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        bootstrap.reset()
        apply_migrations(bootstrap.cassandra_session(), bootstrap.settings().cassandra)
        now = datetime.now(UTC).isoformat()
        bodies = [json.dumps({"event_id": str(uuid.uuid4()), "device_id": "dev-1", "event_type": "reading",
                              "timestamp": now, "severity": "critical"}).encode(), b"{broken"]
        user_function("ingest")([func.EventHubEvent(body=body, sequence_number=n, offset=n, enqueued_time=None,
                                                    partition_key=None) for n, body in enumerate(bodies)],
                                HostContext("ingest"))
        # The lag gauge reads Event Hubs (unreachable) on a thread of its own and logs why it could not, once the
        # SDK has given up retrying.
        deadline = time.monotonic() + 60
        while not any("reading the Event Hubs lag failed" in text for text in handler.texts) \
                and time.monotonic() < deadline:
            reader.get_metrics_data()
            time.sleep(0.5)
        with contextlib.suppress(Exception):  # whether Redis takes the password or not, the log must not show it
            user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))
        bootstrap.history_service()  # derives or takes the page-token key
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        telemetry.activate(previous)
        bootstrap.reset()
    logged = "\n".join(handler.texts)
    assert "sluice.ingest.events" not in logged  # sanity: the handler saw the run, not nothing
    assert "ingest partition=" in logged and "reading the Event Hubs lag failed" in logged, logged[-3000:]
    account_key = dict(part.split("=", 1) for part in azurite_connection_string.split(";") if "=" in part)["AccountKey"]
    for name, value in {**SECRETS, "EventHubConnection key": EVENTHUB_KEY, "AccountKey": account_key}.items():
        assert value not in logged, f"{name}'s value was logged"
