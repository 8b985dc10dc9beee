"""The syntax tree the parser produces: one dataclass per statement and term kind.

Terms stay unresolved here (a literal is the Python value the lexer read, a bind
marker only knows its position); :mod:`.planner` gives them types from the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Literal:
    value: object  # as emulators.cassandra.types.CqlType.from_literal accepts it


@dataclass(frozen=True)
class BindMarker:
    index: int
    name: str | None = None  # the :name of a named marker


@dataclass(frozen=True)
class FunctionCall:
    name: str  # now, uuid, totimestamp, currenttimestamp, ...
    args: tuple[Term, ...] = ()


Term = Literal | BindMarker | FunctionCall


@dataclass(frozen=True)
class TableName:
    keyspace: str | None
    name: str


@dataclass(frozen=True)
class Selector:
    kind: str  # column | writetime | ttl | token | count | star
    args: tuple[str, ...] = ()
    alias: str | None = None


@dataclass(frozen=True)
class Relation:
    kind: str  # column | token | changefeed
    columns: tuple[str, ...]  # the column (kind column) or token() arguments
    op: str  # = < <= > >= IN CONTAINS CONTAINS_KEY
    value: Term | tuple[Term, ...]  # a tuple of terms for IN (...), a single term otherwise (IN ? too)


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: Term
    element: Term | None = None  # m[k] = v in IF


@dataclass(frozen=True)
class Assignment:
    column: str
    kind: str  # set | set_element | add | prepend | remove
    value: Term
    element: Term | None = None  # the key/index of set_element


@dataclass(frozen=True)
class Using:
    ttl: Term | None = None
    timestamp: Term | None = None


@dataclass
class Select:
    table: TableName
    selectors: list[Selector]
    where: list[Relation]
    order_by: list[tuple[str, str]] = field(default_factory=list)
    limit: Term | None = None
    per_partition_limit: Term | None = None
    allow_filtering: bool = False


@dataclass
class Insert:
    table: TableName
    columns: list[str]
    values: list[Term]
    if_not_exists: bool = False
    using: Using = field(default_factory=Using)


@dataclass
class Update:
    table: TableName
    assignments: list[Assignment]
    where: list[Relation]
    using: Using = field(default_factory=Using)
    if_exists: bool = False
    conditions: list[Condition] = field(default_factory=list)


@dataclass
class Delete:
    table: TableName
    columns: list[tuple[str, Term | None]]  # column, optional element (DELETE m[k])
    where: list[Relation]
    using: Using = field(default_factory=Using)
    if_exists: bool = False
    conditions: list[Condition] = field(default_factory=list)


Modification = Insert | Update | Delete
"""The statements a BATCH may hold (each has ``table`` and ``using``)."""


@dataclass
class Batch:
    kind: str  # logged | unlogged | counter
    statements: list[Modification]
    using: Using = field(default_factory=Using)


@dataclass
class Use:
    keyspace: str


@dataclass
class CreateKeyspace:
    name: str
    replication: dict[str, str]
    durable_writes: bool = True
    if_not_exists: bool = False


@dataclass
class DropKeyspace:
    name: str
    if_exists: bool = False


@dataclass
class ColumnDef:
    name: str
    type_text: str


@dataclass
class CreateTable:
    table: TableName
    columns: list[ColumnDef]
    partition_key: list[str]
    clustering: list[str]
    clustering_order: dict[str, str]
    options: dict[str, object]
    if_not_exists: bool = False


@dataclass
class DropTable:
    table: TableName
    if_exists: bool = False


@dataclass
class Truncate:
    table: TableName


@dataclass
class AlterTableAdd:
    table: TableName
    columns: list[ColumnDef]


Statement = (Select | Insert | Update | Delete | Batch | Use | CreateKeyspace | DropKeyspace | CreateTable
             | DropTable | Truncate | AlterTableAdd)

TableStatement = Select | Insert | Update | Delete | CreateTable | DropTable | Truncate | AlterTableAdd
"""The statements that name one table (``.table``)."""
