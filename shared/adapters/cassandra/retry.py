"""A cassandra-driver RetryPolicy for Cosmos DB's throttling (HTTP 429 as CQL Overloaded).

Cosmos DB for Apache Cassandra answers a rate-limited request with an Overloaded
error (0x1001) whose message carries ``RetryAfterMs=<n>``. The driver's default
policy answers every request error with "try the next host", so on a one-endpoint
Cosmos account a 429 surfaces as ``NoHostAvailable`` at once. This policy:

* on Overloaded: waits what the server asked (``RetryAfterMs``, else an exponential
  backoff), capped at ``max_wait`` seconds, and retries on the same host, at most
  ``max_retries`` times; then rethrows, so the caller sees the Overloaded error;
* on read/write timeouts and Unavailable: retries once on the same host (Sluice's
  statements are idempotent upserts, marked ``is_idempotent=True``);
* on anything else: rethrows.

The wait runs inside the driver's callback, on its I/O thread: while one request
waits, the connection's other responses wait too. Under throttling that is the
intended effect (the client slows down as a whole instead of piling up more
requests), and the cap bounds it. Microsoft's own Cosmos retry policy exists only
for Java; this is its Python counterpart.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

from cassandra import OperationTimedOut
from cassandra.policies import RetryPolicy, WriteType
from cassandra.protocol import OverloadedErrorMessage

from shared import telemetry

logger = logging.getLogger(__name__)

# What a policy answers: (RETRY, RETRY_NEXT_HOST or RETHROW, the consistency to retry at or None).
Decision = tuple[int, int | None]

_RETRY_AFTER = re.compile(r"RetryAfterMs=(\d+)")


def retry_after_seconds(message: str) -> float | None:
    """The server's ``RetryAfterMs`` hint in seconds, if the message has one."""
    match = _RETRY_AFTER.search(message or "")
    return int(match.group(1)) / 1000.0 if match else None


def operation(query: object) -> str:
    """The CQL verb of a throttled statement (``INSERT``, ``SELECT``, ``BATCH``...), a bounded metric label."""
    if type(query).__name__ == "BatchStatement":
        return "BATCH"
    prepared = getattr(query, "prepared_statement", None)
    text = getattr(prepared, "query_string", None) or getattr(query, "query_string", None) or ""
    verb = text.lstrip().split(None, 1)[0].upper() if text.strip() else ""
    return verb if verb in ("SELECT", "INSERT", "UPDATE", "DELETE", "BATCH") else "OTHER"


class CosmosRetryPolicy(RetryPolicy):  # type: ignore[misc]  # RetryPolicy is untyped (Any): cassandra-driver has no stubs
    """Bounded retries that honour Cosmos DB's ``RetryAfterMs`` (see the module docstring)."""

    def __init__(self, *, max_retries: int = 6, max_wait: float = 5.0, base_backoff: float = 0.05) -> None:
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.base_backoff = base_backoff

    def wait_for(self, error: object, retry_num: int) -> float:
        """Seconds to wait before retry ``retry_num`` (0-based) after ``error``."""
        hinted = retry_after_seconds(str(getattr(error, "message", None) or error))
        backoff = self.base_backoff * (2**retry_num) * (1 + random.random() / 2)
        return min(self.max_wait, hinted if hinted is not None else backoff)

    def on_request_error(self, query: Any, consistency: int, error: Exception, retry_num: int) -> Decision:
        if isinstance(error, OverloadedErrorMessage):
            gave_up = retry_num >= self.max_retries
            telemetry.cassandra_throttled(operation(query), "gave_up" if gave_up else "retried")
            if not gave_up:
                delay = self.wait_for(error, retry_num)
                logger.warning("throttled (Overloaded), retry %d/%d in %.3fs", retry_num + 1, self.max_retries, delay)
                time.sleep(delay)
                return self.RETRY, consistency
        if isinstance(error, OperationTimedOut) and retry_num == 0:
            return self.RETRY_NEXT_HOST, consistency
        return self.RETHROW, None

    def on_read_timeout(self, query: Any, consistency: int, required_responses: int, received_responses: int,
                        data_retrieved: bool, retry_num: int) -> Decision:
        return (self.RETRY, consistency) if retry_num == 0 else (self.RETHROW, None)

    def on_write_timeout(self, query: Any, consistency: int, write_type: str, required_responses: int,
                         received_responses: int, retry_num: int) -> Decision:
        idempotent = getattr(query, "is_idempotent", False) or write_type in (WriteType.SIMPLE, WriteType.BATCH_LOG)
        return (self.RETRY, consistency) if retry_num == 0 and idempotent else (self.RETHROW, None)

    def on_unavailable(self, query: Any, consistency: int, required_replicas: int, alive_replicas: int,
                       retry_num: int) -> Decision:
        return (self.RETRY_NEXT_HOST, consistency) if retry_num == 0 else (self.RETHROW, None)
