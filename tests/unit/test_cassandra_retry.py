"""CosmosRetryPolicy: decisions and waits for the errors Cosmos DB and Cassandra return."""

from __future__ import annotations

import pytest
from cassandra import OperationTimedOut
from cassandra.policies import RetryPolicy, WriteType
from cassandra.protocol import OverloadedErrorMessage, ServerError
from cassandra.query import SimpleStatement

from shared.adapters.cassandra.retry import CosmosRetryPolicy, decided_wait, retry_after_seconds

COSMOS_429 = ("Request rate is large. More Request Units may be needed, so no changes were made. "
              "Please retry this request later. RetryAfterMs=250")


def overloaded(message: str = COSMOS_429) -> OverloadedErrorMessage:
    return OverloadedErrorMessage(0x1001, message, None)


def test_the_wait_is_what_cosmos_asked_for() -> None:
    policy = CosmosRetryPolicy(max_retries=3, max_wait=5.0)
    assert policy.wait_for(overloaded(), 0) == pytest.approx(0.25)
    assert policy.wait_for(overloaded(), 2) == pytest.approx(0.25), "the hint wins over the backoff"


def test_the_wait_is_capped() -> None:
    policy = CosmosRetryPolicy(max_wait=0.1)
    assert policy.wait_for(overloaded(COSMOS_429.replace("250", "60000")), 0) == pytest.approx(0.1)


def test_without_a_hint_the_backoff_grows() -> None:
    policy = CosmosRetryPolicy(max_wait=100.0, base_backoff=0.01)
    waits = [policy.wait_for(overloaded("Coordinator node overloaded"), n) for n in range(4)]
    assert all(0.01 * 2**n <= w <= 0.015 * 2**n for n, w in enumerate(waits))


def test_overloaded_is_retried_on_the_same_host_until_the_bound() -> None:
    policy = CosmosRetryPolicy(max_retries=2)
    query = SimpleStatement("INSERT ...")
    waits = []
    for retry_num in (0, 1):
        assert policy.on_request_error(query, 6, overloaded(), retry_num) == (RetryPolicy.RETRY, 6)
        waits.append(decided_wait(query))
    assert policy.on_request_error(query, 6, overloaded(), 2) == (RetryPolicy.RETHROW, None)
    assert waits == [pytest.approx(0.25), pytest.approx(0.25)]
    assert decided_wait(query) is None, "a rethrow decides no wait"


def test_a_decided_wait_belongs_to_its_statement_and_is_taken_once() -> None:
    policy = CosmosRetryPolicy()
    throttled, other = SimpleStatement("INSERT ..."), SimpleStatement("SELECT ...")
    policy.on_request_error(throttled, 6, overloaded(), 0)
    assert decided_wait(other) is None, "another request's retry must not take this wait"
    policy.on_request_error(throttled, 6, overloaded(), 0)
    assert decided_wait(throttled) == pytest.approx(0.25)
    assert decided_wait(throttled) is None


def test_other_errors_are_not_retried_blindly() -> None:
    policy = CosmosRetryPolicy()
    query = SimpleStatement("INSERT ...")
    assert policy.on_request_error(query, 6, ServerError(0, "boom", None), 0) == (RetryPolicy.RETHROW, None)
    assert policy.on_request_error(query, 6, OperationTimedOut(), 0) == (RetryPolicy.RETRY_NEXT_HOST, 6)
    assert policy.on_request_error(query, 6, OperationTimedOut(), 1) == (RetryPolicy.RETHROW, None)


def test_write_timeouts_are_retried_once_for_idempotent_writes_only() -> None:
    policy = CosmosRetryPolicy()
    idempotent = SimpleStatement("INSERT ...", is_idempotent=True)
    counter = SimpleStatement("UPDATE c SET n = n + 1 ...", is_idempotent=False)
    assert policy.on_write_timeout(idempotent, 6, WriteType.UNLOGGED_BATCH, 1, 0, 0) == (RetryPolicy.RETRY, 6)
    assert policy.on_write_timeout(idempotent, 6, WriteType.UNLOGGED_BATCH, 1, 0, 1) == (RetryPolicy.RETHROW, None)
    assert policy.on_write_timeout(counter, 6, WriteType.COUNTER, 1, 0, 0) == (RetryPolicy.RETHROW, None)


@pytest.mark.parametrize("write_type", [WriteType.SIMPLE, WriteType.BATCH, WriteType.BATCH_LOG],
                         ids=["SIMPLE", "BATCH", "BATCH_LOG"])
def test_a_write_timeout_of_a_statement_not_marked_idempotent_reaches_the_caller(write_type: int) -> None:
    """A timed-out write may have been applied on some replicas (a logged batch's may be replayed from the batch
    log): sent again, a list append or a counter update could apply twice. Only its author can tell."""
    append = SimpleStatement("UPDATE ks.t SET l = l + [1] WHERE k = 'a'", is_idempotent=False)
    assert CosmosRetryPolicy().on_write_timeout(append, 6, write_type, 2, 1, 0) == (RetryPolicy.RETHROW, None)


def test_retry_after_is_read_from_the_message() -> None:
    assert retry_after_seconds(COSMOS_429) == 0.25
    assert retry_after_seconds("no hint") is None


def test_a_lost_node_is_tried_again_at_least_every_half_minute() -> None:
    """The driver's default schedule grows to a retry every 600 s: after a few minutes' outage the session would
    come back up to ten minutes after the store did. Ours doubles from about 1 s and stays at about 30 s."""
    from itertools import islice

    from shared.adapters.cassandra.session import build_cluster
    from shared.settings import CassandraSettings

    cluster = build_cluster(CassandraSettings(hosts=["127.0.0.1"]))
    schedule = list(islice(cluster.reconnection_policy.new_schedule(), 12))
    assert 0.8 <= schedule[0] <= 1.2 and schedule[1] > schedule[0]  # doubling from about 1 s (with jitter)
    assert max(schedule) <= 30.0 and min(schedule[-4:]) >= 20.0  # and held at the cap
