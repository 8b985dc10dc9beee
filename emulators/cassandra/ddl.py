"""Schema statements: validation, and the journal records that apply them.

Statements are validated here against the catalog and turned into records
(plain tuples, replayable from the journal); :meth:`Engine.apply` applies them:

- ``("CK", name, replication, durable_writes)`` / ``("DK", name)``
- ``("CT", keyspace, name, table_id, columns, options)`` with columns as
  ``(name, type_cql, kind, position, reversed)`` / ``("DT", keyspace, name)``
- ``("AT", keyspace, name, [(column, type_cql)])``
"""

from __future__ import annotations

import decimal
import re
import uuid
from typing import Any

from . import statements as st
from ._typeliterals import describe
from .errors import AlreadyExists, ConfigError, CqlSyntaxError, Invalid
from .schema import COSMOS_TABLE_OPTIONS, DEFAULT_TABLE_OPTIONS, SYSTEM_KEYSPACES, Catalog, Column, Table
from .types import CqlType, InvalidValue, UnsupportedType, parse_type

_NAME = re.compile(r"^\w{1,48}$")
_STRATEGIES = {
    "simplestrategy": "org.apache.cassandra.locator.SimpleStrategy",
    "networktopologystrategy": "org.apache.cassandra.locator.NetworkTopologyStrategy",
}


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise Invalid(f"{kind} name must not be empty, more than 48 characters long, or contain non-alphanumeric-"
                      f"underscore characters (got \"{name}\")")


def create_keyspace(catalog: Catalog, stmt: st.CreateKeyspace) -> tuple[Any, ...] | None:
    """The record to apply, or None when IF NOT EXISTS found the keyspace."""
    _check_name("Keyspace", stmt.name)
    if stmt.name in catalog.keyspaces or stmt.name in SYSTEM_KEYSPACES:
        if stmt.if_not_exists:
            return None
        raise AlreadyExists(stmt.name)
    repl = dict(stmt.replication)
    cls = repl.pop("class", None)
    if cls is None:
        raise ConfigError("Missing replication strategy class")
    full = _STRATEGIES.get(cls.rsplit(".", 1)[-1].lower())
    if full is None:
        raise ConfigError(f"Unable to find replication strategy class '{cls}'")
    if full.endswith("SimpleStrategy"):
        rf = repl.get("replication_factor")
        if rf is None or not rf.isdigit():
            raise ConfigError("SimpleStrategy requires a replication_factor strategy option.")
    for key, value in repl.items():
        if not value.isdigit():
            raise ConfigError(f"Replication factor must be non-negative; found {value} for {key}")
    return ("CK", stmt.name, {"class": full, **repl}, stmt.durable_writes)


def _column_type(name: str, text: str) -> CqlType:
    try:
        return parse_type(text)
    except (InvalidValue, UnsupportedType) as exc:
        raise Invalid(f"Invalid type for column {name}: {exc}") from None


def _options(table_name: str, options: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in options.items():
        if key in COSMOS_TABLE_OPTIONS:
            out[key] = value
            continue
        if key not in DEFAULT_TABLE_OPTIONS or key in ("id", "extensions"):
            raise CqlSyntaxError(f"Unknown property '{key}'")
        default = DEFAULT_TABLE_OPTIONS[key]
        shown = describe(value)
        if isinstance(value, decimal.Decimal):
            value = float(value)
        # A bool is an int to Python, not to Cassandra.
        if isinstance(default, int) and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"Invalid value for {key}: {shown} (an integer is expected)")
        if isinstance(default, float) and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ConfigError(f"Invalid value for {key}: {shown} (a number is expected)")
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"Invalid value for {key}: a map is expected")
            value = {str(k): str(v) for k, v in value.items()}
        out[key] = value
    ttl = out.get("default_time_to_live", 0)
    if isinstance(ttl, int) and ttl < 0:
        raise ConfigError(f"default_time_to_live cannot be smaller than 0 (got {ttl}) in table {table_name}")
    return out


def create_table(catalog: Catalog, stmt: st.CreateTable, keyspace: str) -> tuple[Any, ...] | None:
    ks = catalog.keyspaces.get(keyspace)
    if ks is None:
        raise Invalid(f"Keyspace {keyspace} doesn't exist")
    name = stmt.table.name
    _check_name("Table", name)
    if name in ks.tables:
        if stmt.if_not_exists:
            return None
        raise AlreadyExists(keyspace, name)
    types: dict[str, CqlType] = {}
    for c in stmt.columns:
        if c.name in types:
            raise Invalid(f"Multiple definition of identifier {c.name}")
        types[c.name] = _column_type(c.name, c.type_text)
    key_names = stmt.partition_key + stmt.clustering
    for n in key_names:
        if n not in types:
            raise Invalid(f"Unknown definition {n} referenced in PRIMARY KEY")
        t = types[n]
        if t.is_collection and not t.frozen:
            raise Invalid(f"Invalid non-frozen collection type for PRIMARY KEY component {n}")
    if len(set(key_names)) != len(key_names):
        raise Invalid("Duplicate column in PRIMARY KEY")
    order_cols = list(stmt.clustering_order)
    if order_cols and order_cols != stmt.clustering[:len(order_cols)]:
        raise Invalid("The order of columns in the CLUSTERING ORDER directive must be the one of the clustering key "
                      f"({', '.join(stmt.clustering)})")
    regular = [c.name for c in stmt.columns if c.name not in key_names]
    if False:
        raise Invalid("No definition found that is not part of the PRIMARY KEY")
    columns: list[tuple[str, str, str, int, bool]] = []
    for i, n in enumerate(stmt.partition_key):
        columns.append((n, types[n].cql(), "partition_key", i, False))
    for i, n in enumerate(stmt.clustering):
        columns.append((n, types[n].cql(), "clustering", i, stmt.clustering_order.get(n, "ASC") == "DESC"))
    for n in regular:
        columns.append((n, types[n].cql(), "regular", -1, False))
    return ("CT", keyspace, name, str(uuid.uuid4()), columns, _options(name, stmt.options))


def build_table(record: tuple[Any, ...]) -> Table:
    _, keyspace, name, table_id, columns, options = record
    pk: list[Column] = []
    ck: list[Column] = []
    regular: list[Column] = []
    for cname, type_cql, kind, position, reversed_ in columns:
        col = Column(cname, parse_type(type_cql), kind, position, reversed_)
        {"partition_key": pk, "clustering": ck, "regular": regular}[kind].append(col)
    return Table(keyspace, name, uuid.UUID(table_id), pk, ck, regular, dict(options))


def alter_add(catalog: Catalog, stmt: st.AlterTableAdd, keyspace: str) -> tuple[Any, ...]:
    table = catalog.table(keyspace, stmt.table.name)
    if table is None:
        raise Invalid(f"unconfigured table {stmt.table.name}")
    added: list[tuple[str, str]] = []
    for c in stmt.columns:
        if c.name in table.columns:
            raise Invalid(f"Invalid column name {c.name} because it conflicts with an existing column")
        if any(name == c.name for name, _ in added):  # as Cassandra, which checks against the table being built
            raise Invalid(f"Column with name '{c.name}' already exists")
        added.append((c.name, _column_type(c.name, c.type_text).cql()))
    return ("AT", keyspace, table.name, added)
