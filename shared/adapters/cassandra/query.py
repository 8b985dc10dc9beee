"""``Queries``: the one way Sluice's Cassandra readers prepare, execute and fail.

Every reader (the lookups, the change feeds, the window reader, the rebuild's
device log, the operations page) holds a ``Queries`` over its named CQL:

* statements are prepared on first use, once, from a session or a session
  factory (so a reader built while Cassandra is down answers its first call with
  ``DependencyUnavailable`` instead of failing at start-up), and marked idempotent
  (reads; a compare-and-set store says otherwise);
* every execution carries an explicit client-side timeout: the driver gives up
  after it with ``OperationTimedOut``, whatever the execution profile says;
* :meth:`Queries.fan_out` reads many partitions of one statement concurrently,
  each page with the time left of one budget, so the whole read ends within it;
* every page is a request of its own (:func:`pages`), with its own timeout and its
  own throttling retries;
* every driver failure becomes ``DependencyUnavailable(DEPENDENCY, ...)`` here,
  with a secret-free description: the HTTP layer's 503 bodies and the health
  fields all name the dependency ``"cassandra"``.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from cassandra import DriverException, OperationTimedOut
from cassandra.cluster import NoHostAvailable, ResponseFuture, ResultSet, Session
from cassandra.connection import ConnectionException
from cassandra.protocol import ErrorMessage
from cassandra.query import PreparedStatement

from shared.exceptions import DependencyUnavailable
from shared.lazy import Once

DEPENDENCY = "cassandra"

# What the driver raises when the store cannot answer: DriverException (OperationTimedOut, ReadTimeout,
# Unavailable ...), NoHostAvailable, connection errors, and server error messages that are not DriverExceptions
# (OverloadedErrorMessage: a Cosmos 429 left over after the session's retries; ServerError ...).
CASSANDRA_ERRORS: tuple[type[BaseException], ...] = (DriverException, NoHostAvailable, ErrorMessage,
                                                     ConnectionException, ConnectionError, OSError)


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a driver error."""
    if isinstance(exc, NoHostAvailable):
        inner = "; ".join(f"{host}: {type(err).__name__}" for host, err in list(exc.errors.items())[:3])
        return f"no host available ({inner})" if inner else "no host available"
    return f"{type(exc).__name__}: {exc}"


def unavailable(what: str, exc: BaseException) -> DependencyUnavailable:
    """The error every Cassandra adapter raises when ``what`` (a reading or a saving) failed."""
    return DependencyUnavailable(DEPENDENCY, f"{what} failed: {describe(exc)}")


def release(future: ResponseFuture) -> None:
    """Let reference counting free a finished request: drop its reference to its timeout timer.

    The driver's ``ResponseFuture`` keeps the timer it started, and the timer keeps
    the future's ``_on_timeout``: a reference cycle, so every request, with its
    statement, message and rows, waited for the garbage collector. For the lookups
    that was the bulk of what filled the young generation, and one collection
    freeing tens of thousands of such objects paused the worker for 30-40 ms; a
    change feed page or a window read kept its thousand rows alive the same way.
    Only for a finished request: the driver cancels the timer before it calls back
    or sets the result. (The attribute is the driver's own;
    ``tests/integration/test_cassandra_aio.py`` checks that a read leaves no cyclic
    garbage, so a driver that changes it is noticed.)
    """
    future._timer = None


@contextmanager
def finishing(future: ResponseFuture) -> Iterator[ResponseFuture]:
    """Wait for ``future`` in the block; once it has finished (a result, or the driver's error) it is released
    (:func:`release`). Not when the wait is interrupted (``KeyboardInterrupt``, a cancelled task): the request is
    still in flight then, its timer the driver's to cancel."""
    try:
        yield future
    except Exception:
        release(future)
        raise
    release(future)


def fetched(future: ResponseFuture) -> ResultSet:
    """``future.result()`` (a driver error raises), the finished request released (:func:`finishing`)."""
    with finishing(future):
        return future.result()


def execute_all(session: Session, work: Iterable[tuple[Any, Sequence[Any]]], *,
                concurrency: int) -> list[tuple[bool, Any]]:
    """Each ``(statement, parameters)`` executed, at most ``concurrency`` at once: ``(True, result)`` or
    ``(False, error)`` for each, in order, as ``execute_concurrent(..., raise_on_first_error=False)`` answers.

    The driver's ``execute_concurrent`` keeps each request referenced from its own
    callbacks, a second reference cycle besides the timer's (:func:`release`): every
    batch of an ingest invocation, with all its rows' values, waited for the garbage
    collector. Here each request is released once finished. The next one starts when the
    oldest in flight finished (an ingest batch sends fewer requests than ``concurrency``:
    all of them at once).
    """
    items = iter(work)
    in_flight: deque[ResponseFuture] = deque()

    def start_next() -> None:
        for statement, parameters in itertools.islice(items, 1):
            in_flight.append(session.execute_async(statement, parameters))

    for _ in range(max(1, concurrency)):
        start_next()
    results: list[tuple[bool, Any]] = []
    while in_flight:
        try:
            results.append((True, fetched(in_flight.popleft())))
        except Exception as exc:  # the driver's errors have no common base beyond Exception; the caller decides
            results.append((False, exc))
        start_next()
    return results


def applied(result: ResultSet) -> bool:
    """Whether a conditional write (``IF ...``) was applied: its answer's ``[applied]`` column.

    What ``ResultSet.was_applied`` reads, which refuses any row factory but the
    driver's own (the session's is :func:`shared.adapters.cassandra.rows.named_rows`).
    """
    rows = result.current_rows
    if len(rows) != 1:
        raise RuntimeError(f"a conditional write answered {len(rows)} rows, not one")
    return bool(rows[0][0])


def pages(first: ResultSet, following: Callable[[bytes], ResponseFuture]) -> Iterator[list[Any]]:
    """``first``'s rows, then each further page's, every page a request of its own (``following(paging_state)``).

    Not the driver's own paging (iterating a result set, ``start_fetching_next_page``):
    that sends every page on the first page's request, whose retry count (the
    ``retry_num`` :class:`~shared.adapters.cassandra.retry.CosmosRetryPolicy` bounds
    throttling retries by) runs on across pages, so a late page of a long read got no
    retry at all. The next page is asked for before this one is handed over, so the
    store reads it while the caller works on this one; each finished request is
    released (:func:`fetched`).
    """
    result = first
    while True:
        following_page = None if result.paging_state is None else following(result.paging_state)
        yield list(result.current_rows)
        if following_page is None:
            return
        result = fetched(following_page)


class Paged:
    """What :meth:`Queries.execute` answers: its first page at once (``current_rows``, ``one()``); iterating it
    (once) gives every row of every page, each further page read as the iteration reaches it (:func:`pages`)."""

    def __init__(self, first: ResultSet, rest: Iterator[list[Any]]) -> None:
        self._first = first
        self._pages = rest

    @property
    def current_rows(self) -> list[Any]:
        rows: list[Any] = self._first.current_rows
        return rows

    def one(self) -> Any | None:
        """The first row, or ``None`` when there is none."""
        return self._first.one()

    def __iter__(self) -> Iterator[Any]:
        for page in self._pages:
            yield from page


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn a driver failure inside the block into :func:`unavailable` (``what`` names the work)."""
    try:
        yield
    except CASSANDRA_ERRORS as exc:
        raise unavailable(what, exc) from exc


class Queries:
    """Named CQL statements (``{ks}`` stands for the keyspace), prepared once, executed with a timeout."""

    def __init__(self, session: Session | Callable[[], Session], keyspace: str, cql: Mapping[str, str], *,
                 timeout: float, fetch_size: int | None = None, idempotent: bool = True) -> None:
        self._connect: Callable[[], Session] = session if callable(session) else (lambda: session)
        self._keyspace = keyspace
        self._cql = dict(cql)
        self.timeout = timeout
        self._fetch_size = fetch_size
        self._idempotent = idempotent
        self._statements = Once(self._prepare)

    def _prepare(self) -> dict[str, PreparedStatement]:
        session = self._connect()
        prepared = {}
        for name, cql in self._cql.items():
            statement = session.prepare(cql.format(ks=self._keyspace))
            statement.is_idempotent = self._idempotent
            if self._fetch_size is not None:
                statement.fetch_size = self._fetch_size
            prepared[name] = statement
        return prepared

    def session(self) -> Session:
        return self._connect()

    @property
    def opened(self) -> bool:
        """Whether the session is connected and the statements prepared (a first read has succeeded that far)."""
        return self._statements.built

    def open(self) -> None:
        """Connect and prepare the statements, if not done yet (what a first read does first)."""
        self._statements.get()

    def statement(self, name: str) -> PreparedStatement:
        """The prepared statement ``name`` (prepared with the others on first use)."""
        return self._statements.get()[name]

    def execute(self, name: str, params: Sequence[Any], what: str, *, timeout: float | None = None) -> Paged:
        """One execution of ``name``: its first page, the others read on iteration (:class:`Paged`), each page a
        request within ``timeout`` (default: the reader's)."""
        with translated("reading " + what):
            first, following = self._first_page(name, params, timeout or self.timeout)

        def rest() -> Iterator[list[Any]]:
            with translated("reading " + what):
                yield from pages(first, following)

        return Paged(first, rest())

    def rows(self, name: str, params: Sequence[Any], what: str, *, timeout: float | None = None) -> list[Any]:
        """Every row of ``name`` (all pages), each page a request within ``timeout`` (default: the reader's)."""
        with translated("reading " + what):
            first, following = self._first_page(name, params, timeout or self.timeout)
            return [row for page in pages(first, following) for row in page]

    def _first_page(self, name: str, params: Sequence[Any],
                    timeout: float) -> tuple[ResultSet, Callable[[bytes], ResponseFuture]]:
        """The first page of ``name``, and how to ask for a further one (:func:`pages`)."""
        session, statement = self._connect(), self.statement(name)

        def following(paging_state: bytes) -> ResponseFuture:
            return session.execute_async(statement, params, timeout=timeout, paging_state=paging_state)

        return fetched(session.execute_async(statement, params, timeout=timeout)), following

    def fan_out(self, name: str, params: Sequence[Sequence[Any]], what: str, *, concurrency: int,
                budget: float | None = None) -> list[list[Any]]:
        """The rows of ``name`` for each parameter tuple (one partition each), read concurrently, in order.

        Up to ``concurrency`` partitions are read at once, each paging with the
        statement's fetch size. Each request gets the reader's timeout, cut to the
        time left when a ``budget`` (seconds for the whole call) is given, so the
        call never blocks past it. Any failed partition fails the call: a caller
        never sees part of the rows as if they were all.
        """
        return list(self.fan_out_each(name, params, what, concurrency=concurrency, budget=budget))

    def fan_out_each(self, name: str, params: Sequence[Sequence[Any]], what: str, *, concurrency: int,
                     budget: float | None = None, by_page: bool = False) -> Iterator[list[Any]]:
        """:meth:`fan_out`, each partition's rows handed over as soon as its turn comes (``by_page``: each page).

        A caller that converts each partition's rows and drops them holds at most the
        ``concurrency`` partitions in flight besides what it keeps, instead of every
        row of the call at once; ``by_page`` bounds that by first pages, however
        large a partition. A failed partition raises when its turn comes, so a
        caller must discard what it took before (as :meth:`fan_out` does). The
        ``budget`` counts from the first partition asked for.
        """
        if not params:
            return
        deadline = None if budget is None else time.monotonic() + budget

        def timeout() -> float:
            if deadline is None:
                return self.timeout
            left = deadline - time.monotonic()
            if left <= 0:
                raise OperationTimedOut(f"the budget of {budget}s ran out")
            return min(self.timeout, left)

        def start(values: Sequence[Any]) -> ResponseFuture:
            return session.execute_async(statement, values, timeout=timeout())

        def partition(values: Sequence[Any], first: ResultSet) -> Iterator[list[Any]]:
            return pages(first, lambda paging_state: session.execute_async(
                statement, values, timeout=timeout(), paging_state=paging_state))

        # Up to ``concurrency`` first pages in flight on the driver's own I/O thread (no thread of ours per
        # partition), taken in order; when a partition's turn comes its further pages are read one ahead of the
        # caller, while the next partitions' first pages are in flight.
        with translated("reading " + what):
            statement, session = self.statement(name), self._connect()  # Cassandra down: DependencyUnavailable too
            width = max(1, concurrency)
            in_flight = deque(start(values) for values in params[:width])
            waiting = iter(params[width:])
            for values in params:
                first = fetched(in_flight.popleft())
                for more in itertools.islice(waiting, 1):
                    in_flight.append(start(more))
                if by_page:
                    yield from partition(values, first)
                else:
                    yield [row for page in partition(values, first) for row in page]
