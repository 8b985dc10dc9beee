"""Result rows as named tuples whose class is built once per column list, not once per result set.

The driver's default ``named_tuple_factory`` calls ``collections.namedtuple`` for
every result set it decodes: about 70 us of CPU on the reactor thread per read,
and a class is a reference cycle, so each one (with the rows and the response
future it is reachable from) waits for the garbage collector instead of being
freed when the read is done. A lookup miss, a change feed page and an
enrichment window read each left a few hundred such objects behind; with the
worker's young-generation threshold (``SLUICE_WORKER_GC_YOUNG_THRESHOLD``) they
piled up until one collection freed tens of thousands at once, a 30-40 ms pause
that showed as the lookups' p99 at concurrency 32.

:func:`named_rows` gives the same rows (tuples with the columns as attributes,
names cleaned as the driver cleans them) from a class cached by column names.
:func:`as_dict` and :func:`stored_time` turn a row's map and ``timestamp`` values
into what the domain holds.
"""

from __future__ import annotations

import functools
import logging
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from sys import intern
from typing import Any, TypeVar, overload

from cassandra.query import named_tuple_factory

from shared.domain.times import utc

try:  # the driver's own naming rules, so the rows are named exactly as its factory names them
    from cassandra.query import _clean_column_name
    from cassandra.util import _sanitize_identifiers
except ImportError:  # a driver version without them: its own factory (a class per result set, as before)
    _clean_column_name = _sanitize_identifiers = None

logger = logging.getLogger(__name__)
V = TypeVar("V")

# Distinct column lists a process reads with: the prepared statements' (a few dozen) and ad-hoc queries'.
ROW_TYPES_CACHED = 512


@functools.lru_cache(maxsize=ROW_TYPES_CACHED)
def row_type(columns: tuple[str, ...]) -> type[tuple[Any, ...]]:
    """The row class of a result with these column names, named as ``named_tuple_factory`` names them."""
    clean = [_clean_column_name(name) for name in columns]
    try:
        return namedtuple("Row", clean)
    except ValueError:  # a keyword, a duplicate, a leading digit: positional names, as the driver falls back to
        logger.warning("columns %s are not all valid attribute names; their rows name them by position", clean)
        return namedtuple("Row", _sanitize_identifiers(clean))


def named_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """A ``row_factory`` for the driver's execution profile: ``named_tuple_factory``'s rows, without its class."""
    if _clean_column_name is None:
        return named_tuple_factory(columns, rows)  # type: ignore[no-any-return]
    make = row_type(tuple(columns))._make  # type: ignore[attr-defined]  # namedtuple's classmethod
    return [make(row) for row in rows]


def as_dict(value: Mapping[str, V] | None) -> dict[str, V]:
    """A text-keyed map column's value as a ``dict`` (``{}`` for null), its keys interned.

    The driver decodes a map into an ``OrderedMapSerializedKey`` whose lookups
    serialize the key again, so ``dict(value)`` cost about 1.5 us for a map of three
    entries; its ``_items`` list of pairs is read instead. Any other mapping (another
    driver version, a plain dict) is read through ``items``.

    The keys are interned. Every row names the same few measurements and attributes,
    and the driver decodes a new string for each key of each row: with 16 measurements
    those strings were 42% of a stored event's memory (2.4 KB per event read for a window,
    1.4 KB with the keys interned), and enrichment holds a whole window of events at once.
    Building the dict costs no more (1.0 us for 16 entries, against 1.1 without interning).
    """
    if not value:
        return {}
    items = getattr(value, "_items", None)
    pairs = items if type(items) is list else value.items()
    return {intern(key): item for key, item in pairs}


@overload
def stored_time(moment: datetime) -> datetime: ...


@overload
def stored_time(moment: None) -> None: ...


def stored_time(moment: datetime | None) -> datetime | None:
    """A ``timestamp`` value as the driver decodes it (naive UTC), as the aware UTC millisecond Cassandra keeps
    (``None``, a null, stays ``None``).

    The driver decodes a timestamp through a float of seconds (``int64 / 1000.0``),
    which holds a millisecond exactly only within 2**33 seconds (about 272 years) of
    1970: ``1500-06-01T12:00:00.123`` comes back as ``12:00:00.122999``. The float is
    off by 15 microseconds at most (in year 9999), and every stored value is a whole
    millisecond, so the nearest millisecond is the one stored. A moment on a whole
    millisecond already (every one near 1970) costs only the test.
    """
    if moment is None:
        return None
    extra = moment.microsecond % 1000
    if extra:
        moment += timedelta(microseconds=1000 - extra if extra >= 500 else -extra)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else utc(moment)
