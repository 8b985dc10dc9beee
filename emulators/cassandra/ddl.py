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
from .write import MAX_TTL

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


INT32 = (-(2 ** 31), 2 ** 31 - 1)
# Cassandra's smallest supported bloom_filter_fp_chance (BloomCalculations.minSupportedBloomFilterFpChance()), as
# its message shows it
MIN_BLOOM_FILTER_FP_CHANCE = "6.71E-5"


def _raw_text(key: str, value: object) -> str:
    """A string option's value as Cassandra keeps it: the literal's text (Cql.g propertyValue takes any constant's
    raw text, so ``comment = 5`` is the comment '5'); a collection, or null, is refused as Cassandra refuses it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, float):
        return "NaN" if value != value else ("-" if value < 0 else "") + "Infinity"
    if isinstance(value, bytes):
        return f"0x{value.hex()}"
    raise CqlSyntaxError(f"Invalid value for property '{key}'. It should be a string")


def _speculative_retry(value: str) -> None:
    """Refuse what Cassandra's SpeculativeRetryParam.fromString refuses (NONE, ALWAYS, <n>ms, <n>PERCENTILE)."""
    invalid = ConfigError(f"Invalid value {value} for option 'speculative_retry'")
    for suffix in ("ms", "percentile"):
        if value.lower().endswith(suffix):
            try:
                number = float(value[:-len(suffix)])
            except ValueError:
                raise invalid from None
            if suffix == "percentile" and not 0.0 <= number <= 100.0:
                raise ConfigError(f"Invalid value {value} for PERCENTILE option 'speculative_retry': must be between "
                                  "0.0 and 100.0")
            return
    if value not in ("NONE", "ALWAYS"):
        raise invalid


def _validate(options: dict[str, object]) -> None:
    """Cassandra's TableParams.validate(), on the options as they will be (given ones over the defaults); its
    messages (ConfigurationException)."""
    opts = {**DEFAULT_TABLE_OPTIONS, **options}

    def number(key: str) -> float:
        value = opts[key]
        assert isinstance(value, int | float)
        return value

    if not (6.71e-05 < number("bloom_filter_fp_chance") <= 1):
        raise ConfigError(f"bloom_filter_fp_chance must be larger than {MIN_BLOOM_FILTER_FP_CHANCE} and less than or "
                          f"equal to 1.0 (got {opts['bloom_filter_fp_chance']})")
    for key in ("crc_check_chance", "read_repair_chance", "dclocal_read_repair_chance"):
        if not (0 <= number(key) <= 1):
            raise ConfigError(f"{key} must be larger than or equal to 0 and smaller than or equal to 1.0 "
                              f"(got {opts[key]})")
    ttl = number("default_time_to_live")
    if ttl < 0:
        raise ConfigError(f"default_time_to_live must be greater than or equal to 0 (got {ttl})")
    if ttl > MAX_TTL:
        raise ConfigError(f"default_time_to_live must be less than or equal to {MAX_TTL} (got {ttl})")
    if number("gc_grace_seconds") < 0:
        raise ConfigError(f"gc_grace_seconds must be greater than or equal to 0 (got {opts['gc_grace_seconds']})")
    if number("min_index_interval") < 1:
        raise ConfigError(f"min_index_interval must be greater than or equal to 1 (got {opts['min_index_interval']})")
    if number("max_index_interval") < number("min_index_interval"):
        raise ConfigError(f"max_index_interval must be greater than or equal to min_index_interval "
                          f"({opts['min_index_interval']}) (got {opts['max_index_interval']})")
    if number("memtable_flush_period_in_ms") < 0:
        raise ConfigError("memtable_flush_period_in_ms must be greater than or equal to 0 "
                          f"(got {opts['memtable_flush_period_in_ms']})")


def _options(options: dict[str, object]) -> dict[str, object]:
    """The table options of a CREATE TABLE, checked as Cassandra checks them: each is of its type (an int one within
    a Java int, a string one the literal's text), then the whole as TableParams.validate() checks it. Every value
    kept fits its ``system_schema.tables`` column, which the driver reads on each connection."""
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
        if isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"Invalid value for {key}: {shown} (an integer is expected)")
            if not INT32[0] <= value <= INT32[1]:  # as Cassandra's PropertyDefinitions.toInt (a Java int)
                raise CqlSyntaxError(f"Invalid integer value {value} for '{key}'")
        if isinstance(default, float):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"Invalid value for {key}: {shown} (a number is expected)")
            value = float(value)  # a double column
        if isinstance(default, str):
            value = _raw_text(key, options[key])
            if key == "speculative_retry":
                _speculative_retry(value)
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"Invalid value for {key}: a map is expected")
            value = {str(k): str(v) for k, v in value.items()}
        out[key] = value
    _validate(out)
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
    return ("CT", keyspace, name, str(uuid.uuid4()), columns, _options(stmt.options))


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
