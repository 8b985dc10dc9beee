"""A cassandra-driver RetryPolicy for Cosmos DB's throttling (HTTP 429 as CQL Overloaded).

Cosmos DB for Apache Cassandra answers a rate-limited request with an Overloaded
error (0x1001) whose message carries ``RetryAfterMs=<n>``. The driver's default
policy answers every request error with "try the next host", so on a one-endpoint
Cosmos account a 429 surfaces as ``NoHostAvailable`` at once. This policy:

* on Overloaded: waits what the server asked (``RetryAfterMs``, else an exponential
  backoff), capped at ``max_wait`` seconds, and retries on the same host, at most
  ``max_retries`` times; then rethrows, so the caller sees the Overloaded error;
* on read timeouts and Unavailable (nothing was written): retries once;
* on write timeouts: retries once on the same host a statement marked
  ``is_idempotent=True`` (Sluice's writes are idempotent upserts, marked so); any
  other write may have been applied on some replicas, so its timeout reaches the
  caller, who alone can tell whether doing it twice is safe. A logged batch's
  ``BATCH_LOG`` timeout is no exception: the batch log may be on a replica that
  replays it, so a retry could apply it twice;
* on anything else: rethrows.

The policy is asked on the driver's I/O thread, which serves every connection of
the cluster: a ``time.sleep`` there would hold back every other request's answer
(a lookup pod's reads behind one throttled write), and the request's own timeout
timer, which runs on that thread too. So the policy only decides the wait;
:func:`delay_retries` (installed on every session Sluice connects) starts the
retry after it on one of the driver's timers, with no thread held. The request's
timeout still counts from its start: a wait longer than what is left ends it with
``OperationTimedOut``. Microsoft's own Cosmos retry policy exists only for Java;
this is its Python counterpart.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from cassandra import DriverException, OperationTimedOut
from cassandra.cluster import ResponseFuture, Session
from cassandra.policies import RetryPolicy
from cassandra.protocol import OverloadedErrorMessage

from shared import telemetry

logger = logging.getLogger(__name__)

# What a policy answers: (RETRY, RETRY_NEXT_HOST or RETHROW, the consistency to retry at or None).
Decision = tuple[int, int | None]

_RETRY_AFTER = re.compile(r"RetryAfterMs=(\d+)")

# The wait the policy decided for the retry the driver is about to submit: (statement, seconds). The driver asks
# the policy and submits the retry in one call on its I/O thread, so a thread-local hands the wait over exactly.
_decided = threading.local()


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
                _decided.wait = (query, delay)
                return self.RETRY, consistency
        if isinstance(error, OperationTimedOut) and retry_num == 0:
            return self.RETRY_NEXT_HOST, consistency
        return self.RETHROW, None

    def on_read_timeout(self, query: Any, consistency: int, required_responses: int, received_responses: int,
                        data_retrieved: bool, retry_num: int) -> Decision:
        return (self.RETRY, consistency) if retry_num == 0 else (self.RETHROW, None)

    def on_write_timeout(self, query: Any, consistency: int, write_type: str, required_responses: int,
                         received_responses: int, retry_num: int) -> Decision:
        idempotent = getattr(query, "is_idempotent", False)
        return (self.RETRY, consistency) if retry_num == 0 and idempotent else (self.RETHROW, None)

    def on_unavailable(self, query: Any, consistency: int, required_replicas: int, alive_replicas: int,
                       retry_num: int) -> Decision:
        # the same host: a Cosmos DB account is one endpoint, where "the next host" is none (NoHostAvailable at once)
        return (self.RETRY, consistency) if retry_num == 0 else (self.RETHROW, None)


def decided_wait(query: object) -> float | None:
    """The wait the policy just decided for ``query``'s retry (taken: a second call answers None)."""
    decided = getattr(_decided, "wait", None)
    _decided.wait = None
    return decided[1] if decided is not None and decided[0] is query else None


def delay_retries(session: Session) -> Session:
    """Run the retries the policy decided to wait for after that wait, on a driver timer (see the module docstring).

    The driver submits a request's retry to its executor (``Session.submit`` with the
    request's ``_retry_task``); this wraps ``submit`` so that such a retry is submitted
    when a timer of the session's connection class fires instead. Everything else is
    submitted as before. ``tests/integration/test_cassandra_retry_wait.py`` checks it
    against the driver, so a driver that renames these is noticed.
    """
    submit: Callable[..., Any] = session.submit
    create_timer = session.cluster.connection_class.create_timer

    def submit_after_wait(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        future = getattr(fn, "__self__", None)
        if isinstance(future, ResponseFuture) and getattr(fn, "__func__", None) is ResponseFuture._retry_task:
            wait = decided_wait(future.query)
            if wait:
                # The answer that asked for the wait freed its stream id, which the connection hands to the next
                # request meanwhile. A timeout during the wait must fail this request only: the driver's timeout
                # handler pops the request's id from its connection (that other request's callback, whose answer
                # would then be lost) and returns the connection to its pool a second time. Detached, it only
                # fails the future; the retry sets both again when it is sent.
                future._connection = None
                create_timer(wait, partial(retry_now, future, wait, fn, *args, **kwargs))
                return None
        return submit(fn, *args, **kwargs)

    def retry_now(future: ResponseFuture, wait: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        # The session may have shut down during the wait: a command whose other request ran out of retries
        # failed and closed it. Its executor then refuses the retry (RuntimeError on the timer thread, logged as
        # a driver traceback under the command's one error line); the request fails instead, as a request in
        # flight does when its session shuts down.
        if not session.is_shutdown:
            try:
                submit(fn, *args, **kwargs)
                return
            except RuntimeError:  # shut down between the check and the submit
                pass
        future._set_final_exception(DriverException(
            f"the session shut down while this request waited {wait:.2f} s to be retried"))

    session.submit = submit_after_wait
    return session
