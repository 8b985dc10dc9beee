"""The event store's fast bind path: statements bound from bytes serialized once per event.

``PreparedStatement.bind`` serializes every value of every statement, so an
event's measurements map is serialized once per table it goes to. The event
store serializes each value once (``shared.adapters.cassandra.codec``) and hands
the same bytes to every statement; this module is the only place that then
reaches past the driver's public API to use them:

* :func:`bound` makes a ``BoundStatement`` whose ``values`` are those bytes
  (what ``bind`` would have computed), instead of calling ``bind``;
* :func:`add_rows` appends further rows of one prepared statement to a batch
  through ``BatchStatement._add_statement_and_params``, the private method
  ``BatchStatement.add`` itself ends in, saving a ``BoundStatement`` per row.

Both depend on the driver's internals, so :data:`SUPPORTED` is true only for the
driver versions ``tests/integration/test_event_store_binding.py`` has held to the
driver's own ``bind`` byte for byte (routing key, keyspace, batch children
included). On any other version the event store takes the public path (the
prepared statement and its parameters, bound by the driver) and logs it once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import cassandra
from cassandra.query import BatchStatement, BoundStatement, PreparedStatement

logger = logging.getLogger(__name__)

# The cassandra-driver versions the binding test has passed on. Add one only after running that test on it.
VERIFIED_DRIVER_VERSIONS = frozenset({"3.30.1"})
SUPPORTED = cassandra.__version__ in VERIFIED_DRIVER_VERSIONS

if not SUPPORTED:
    logger.warning(
        "cassandra-driver %s is not one the fast bind path was verified on (%s): the event store binds "
        "through the driver's public API",
        cassandra.__version__,
        ", ".join(sorted(VERIFIED_DRIVER_VERSIONS)),
    )


def bound(statement: PreparedStatement, serialized: Sequence[bytes | None], raw: Sequence[object]) -> BoundStatement:
    """``statement`` bound to already serialized ``serialized`` values (``raw``: the values they came from).

    Tuples are fine: the driver only reads a bound statement's values (to send
    them and to take the routing key); ``bind`` is the one place that appends, and
    it is not called here.
    """
    statement_bound = BoundStatement(statement)
    statement_bound.values = serialized
    statement_bound.raw_values = raw
    return statement_bound


def add_rows(batch: BatchStatement, statement: PreparedStatement, rows: Iterable[Sequence[bytes | None]]) -> None:
    """Append rows of ``statement``, each already serialized, to ``batch`` as ``add`` would record them.

    ``batch`` must already hold one bound row of ``statement`` (added with
    ``BatchStatement.add``: that gives the batch its routing key, keyspace and
    custom payload); every further row of the same prepared statement is all
    ``add`` would record as ``(True, query id, values)``.
    """
    record, query_id = batch._add_statement_and_params, statement.query_id
    for values in rows:
        record(True, query_id, values)
