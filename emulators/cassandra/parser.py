"""Recursive-descent parser for the CQL subset this emulator serves.

``parse(text)`` returns one statement of :mod:`.statements` and the number of
bind markers. Anything outside the subset is a SyntaxError (0x2000) or, for
well-formed CQL this server does not implement, an Invalid (0x2200) naming it.
"""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Callable

from . import statements as st
from .errors import CqlSyntaxError, Invalid
from .lexer import Token, tokenize
from .types import MapLiteral, SetLiteral, TupleLiteral

_UNSUPPORTED_STATEMENTS = {
    "alter": "ALTER (only ALTER TABLE ... ADD is supported)",
    "grant": "GRANT", "revoke": "REVOKE", "list": "LIST", "describe": "DESCRIBE",
}
_FUNCTIONS = {"now", "uuid", "totimestamp", "currenttimestamp", "currenttimeuuid", "todate", "currentdate",
              "tounixtimestamp", "mintimeuuid", "maxtimeuuid"}


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.markers = 0

    # -- token helpers -------------------------------------------------
    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def is_kw(self, *words: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "ident" and tok.value in words

    def is_op(self, *ops: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "op" and tok.value in ops

    def accept_kw(self, *words: str) -> bool:
        for n, w in enumerate(words):
            if not self.is_kw(w, ahead=n):
                return False
        self.i += len(words)
        return True

    def accept_op(self, op: str) -> bool:
        if self.is_op(op):
            self.i += 1
            return True
        return False

    def error(self, expected: str) -> CqlSyntaxError:
        tok = self.peek()
        return CqlSyntaxError(f"line 1:{tok.pos} mismatched input {tok.describe()} expecting {expected} "
                              f"(in {self.text.strip()[:120]!r})")

    def expect_kw(self, *words: str) -> None:
        for w in words:
            if not self.accept_kw(w):
                raise self.error(w.upper())

    def expect_op(self, op: str) -> None:
        if not self.accept_op(op):
            raise self.error(repr(op))

    def name(self) -> str:
        tok = self.peek()
        if tok.kind in ("ident", "qident"):
            self.i += 1
            return tok.value
        raise self.error("an identifier")

    def table_name(self) -> st.TableName:
        first = self.name()
        if self.accept_op("."):
            return st.TableName(first, self.name())
        return st.TableName(None, first)

    # -- entry -----------------------------------------------------------
    def statement(self) -> st.Statement:
        tok = self.peek()
        if tok.kind != "ident":
            raise self.error("a statement")
        handlers: dict[str, Callable[[], st.Statement]] = {
            "select": self.select, "insert": self.insert, "update": self.update, "delete": self.delete,
            "begin": self.batch, "use": self.use, "create": self.create, "drop": self.drop,
            "truncate": self.truncate, "alter": self.alter,
        }
        handler = handlers.get(tok.value)
        if handler is None:
            what = _UNSUPPORTED_STATEMENTS.get(tok.value)
            if what:
                raise Invalid(f"{what} statements are not supported by this emulator")
            raise self.error("a statement (SELECT, INSERT, UPDATE, DELETE, BATCH, USE, CREATE, DROP, TRUNCATE)")
        stmt = handler()
        self.accept_op(";")
        if self.peek().kind != "eof":
            raise self.error("end of statement")
        return stmt

    # -- terms -----------------------------------------------------------
    def term(self) -> st.Term:
        tok = self.peek()
        if tok.kind == "op":
            if tok.value == "?":
                self.i += 1
                self.markers += 1
                return st.BindMarker(self.markers - 1)
            if tok.value == ":":
                self.i += 1
                name = self.name()
                self.markers += 1
                return st.BindMarker(self.markers - 1, name)
            if tok.value in ("[", "{", "("):
                return st.Literal(self.collection_literal())
            if tok.value == "-" and self.peek(1).kind == "ident" and self.peek(1).value in ("infinity", "nan"):
                self.i += 2
                return st.Literal(float("-inf") if self.tokens[self.i - 1].value == "infinity" else float("nan"))
        if tok.kind == "ident" and tok.value in _FUNCTIONS and self.is_op("(", ahead=1):
            self.i += 2
            args: list[st.Term] = []
            if not self.accept_op(")"):
                args.append(self.term())
                while self.accept_op(","):
                    args.append(self.term())
                self.expect_op(")")
            return st.FunctionCall(tok.value, tuple(args))
        return st.Literal(self.constant())

    def constant(self) -> object:
        tok = self.next()
        if tok.kind == "string":
            return tok.value
        if tok.kind == "int":
            return int(tok.value)
        if tok.kind == "float":
            return decimal.Decimal(tok.value)
        if tok.kind == "blob":
            digits = tok.value[2:]
            if len(digits) % 2:
                raise Invalid(f"blob literal {tok.value} has an odd number of hex digits")
            return bytes.fromhex(digits)
        if tok.kind == "uuid":
            return uuid.UUID(tok.value)
        if tok.kind == "ident":
            simple = {"true": True, "false": False, "null": None, "nan": float("nan"), "infinity": float("inf")}
            if tok.value in simple:
                return simple[tok.value]
            if self.is_op("("):
                raise Invalid(f"function {tok.value}() is not supported by this emulator")
        if tok.kind == "op" and tok.value in ("[", "{", "("):
            self.i -= 1
            return self.collection_literal()
        self.i -= 1
        raise self.error("a constant, a bind marker or a collection literal")

    def _literal_value(self) -> object:
        term = self.term()
        if not isinstance(term, st.Literal):
            raise Invalid("bind markers and function calls inside collection or tuple literals are not supported "
                          "by this emulator; bind the whole collection instead")
        return term.value

    def collection_literal(self) -> object:
        tok = self.next()
        if tok.value == "[":
            items: list[object] = []
            if not self.accept_op("]"):
                items.append(self._literal_value())
                while self.accept_op(","):
                    items.append(self._literal_value())
                self.expect_op("]")
            return items
        if tok.value == "(":
            items = [self._literal_value()]
            while self.accept_op(","):
                items.append(self._literal_value())
            self.expect_op(")")
            return TupleLiteral(items)
        # '{': a set or a map
        if self.accept_op("}"):
            return {}
        first = self._literal_value()
        if self.accept_op(":"):
            pairs = [(first, self._literal_value())]
            while self.accept_op(","):
                key = self._literal_value()
                self.expect_op(":")
                pairs.append((key, self._literal_value()))
            self.expect_op("}")
            try:
                return dict(pairs)
            except TypeError:  # a key Python cannot hash (a list or map literal, or one inside a tuple or set)
                return MapLiteral(pairs)
        elements = [first]
        while self.accept_op(","):
            elements.append(self._literal_value())
        self.expect_op("}")
        return SetLiteral(elements)

    # -- clauses ---------------------------------------------------------
    def using(self) -> st.Using:
        ttl = timestamp = None
        if self.accept_kw("using"):
            while True:
                if self.accept_kw("ttl"):
                    if ttl is not None:
                        raise Invalid("Multiple definitions of TTL in USING")
                    ttl = self.term()
                elif self.accept_kw("timestamp"):
                    if timestamp is not None:
                        raise Invalid("Multiple definitions of TIMESTAMP in USING")
                    timestamp = self.term()
                else:
                    raise self.error("TTL or TIMESTAMP")
                if not self.accept_kw("and"):
                    break
        return st.Using(ttl, timestamp)

    def where(self) -> list[st.Relation]:
        self.expect_kw("where")
        relations = [self.relation()]
        while self.accept_kw("and"):
            relations.append(self.relation())
        return relations

    def relation(self) -> st.Relation:
        if self.is_kw("token") and self.is_op("(", ahead=1):
            self.i += 2
            cols = [self.name()]
            while self.accept_op(","):
                cols.append(self.name())
            self.expect_op(")")
            op = self.operator()
            return st.Relation("token", tuple(cols), op, self.term())
        if self.is_kw("cosmos_changefeed_start_time") and self.is_op("(", ahead=1):
            self.i += 2
            self.expect_op(")")
            self.expect_op("=")
            return st.Relation("changefeed", (), "=", self.term())
        if self.is_op("("):
            raise Invalid("multi-column relations ((a, b) > (x, y)) are not supported by this emulator")
        column = self.name()
        if self.accept_kw("in"):
            if self.is_op("?") or self.is_op(":"):
                return st.Relation("column", (column,), "IN", self.term())
            self.expect_op("(")
            values: list[st.Term] = []
            if not self.accept_op(")"):
                values.append(self.term())
                while self.accept_op(","):
                    values.append(self.term())
                self.expect_op(")")
            return st.Relation("column", (column,), "IN", tuple(values))
        if self.accept_kw("contains"):
            op = "CONTAINS_KEY" if self.accept_kw("key") else "CONTAINS"
            return st.Relation("column", (column,), op, self.term())
        if self.is_op("["):
            raise Invalid("relations on collection elements (m[k] = v) are not supported by this emulator")
        op = self.operator()
        return st.Relation("column", (column,), op, self.term())

    def operator(self) -> str:
        tok = self.peek()
        if tok.kind == "op" and tok.value in ("=", "<", "<=", ">", ">=", "!="):
            self.i += 1
            if tok.value == "!=":
                raise Invalid("the != operator is not supported in WHERE clauses")
            return tok.value
        if tok.kind == "ident" and tok.value == "like":
            raise Invalid("LIKE restrictions are not supported by this emulator")
        raise self.error("a relation operator (=, <, <=, >, >=, IN, CONTAINS)")

    def conditions(self) -> tuple[bool, list[st.Condition]]:
        if self.accept_kw("if", "exists"):
            return True, []
        self.expect_kw("if")
        conds = [self.condition()]
        while self.accept_kw("and"):
            conds.append(self.condition())
        return False, conds

    def condition(self) -> st.Condition:
        column = self.name()
        element = None
        if self.accept_op("["):
            element = self.term()
            self.expect_op("]")
        if self.accept_kw("in"):
            raise Invalid("IF ... IN conditions are not supported by this emulator")
        tok = self.next()
        if tok.kind != "op" or tok.value not in ("=", "<", "<=", ">", ">=", "!="):
            self.i -= 1
            raise self.error("a condition operator")
        return st.Condition(column, tok.value, self.term(), element)

    # -- statements --------------------------------------------------------
    def select(self) -> st.Select:
        self.expect_kw("select")
        if self.is_kw("json"):
            raise Invalid("SELECT JSON is not supported by this emulator")
        if self.is_kw("distinct"):
            raise Invalid("SELECT DISTINCT is not supported: Azure Cosmos DB for Apache Cassandra does not support "
                          "DISTINCT (select the partition key columns and de-duplicate them in the client)")
        selectors = [st.Selector("star")] if self.accept_op("*") else self.selectors()
        self.expect_kw("from")
        table = self.table_name()
        where = self.where() if self.is_kw("where") else []
        if self.is_kw("group"):
            raise Invalid("GROUP BY is not supported by this emulator")
        order: list[tuple[str, str]] = []
        if self.accept_kw("order", "by"):
            while True:
                col = self.name()
                direction = "DESC" if self.accept_kw("desc") else "ASC"
                if direction == "ASC":
                    self.accept_kw("asc")  # ASC is the default: the keyword is optional
                order.append((col, direction))
                if not self.accept_op(","):
                    break
        per_partition = limit = None
        if self.accept_kw("per", "partition", "limit"):
            per_partition = self.term()
        if self.accept_kw("limit"):
            limit = self.term()
        allow = self.accept_kw("allow", "filtering")
        return st.Select(table, selectors, where, order, limit, per_partition, allow)

    def selectors(self) -> list[st.Selector]:
        out = [self.selector()]
        while self.accept_op(","):
            out.append(self.selector())
        return out

    def selector(self) -> st.Selector:
        tok = self.peek()
        if tok.kind == "ident" and self.is_op("(", ahead=1):
            fname = tok.value
            self.i += 2
            if fname == "count":
                if not (self.accept_op("*") or (self.peek().value == "1" and self.next())):
                    raise Invalid("only COUNT(*) and COUNT(1) are supported by this emulator")
                self.expect_op(")")
                sel = st.Selector("count")
            elif fname in ("writetime", "ttl"):
                col = self.name()
                self.expect_op(")")
                sel = st.Selector(fname, (col,))
            elif fname == "token":
                cols = [self.name()]
                while self.accept_op(","):
                    cols.append(self.name())
                self.expect_op(")")
                sel = st.Selector("token", tuple(cols))
            else:
                raise Invalid(f"function {fname}() in a selection is not supported by this emulator "
                              "(supported: COUNT(*), WRITETIME, TTL, TOKEN)")
        elif tok.kind == "ident" and tok.value == "cast" and self.is_op("(", ahead=1):
            raise Invalid("CAST is not supported by this emulator")
        else:
            sel = st.Selector("column", (self.name(),))
        if self.accept_kw("as"):
            sel = st.Selector(sel.kind, sel.args, self.name())
        return sel

    def insert(self) -> st.Insert:
        self.expect_kw("insert", "into")
        table = self.table_name()
        if self.is_kw("json"):
            raise Invalid("INSERT JSON is not supported by this emulator")
        self.expect_op("(")
        columns = [self.name()]
        while self.accept_op(","):
            columns.append(self.name())
        self.expect_op(")")
        self.expect_kw("values")
        self.expect_op("(")
        values = [self.term()]
        while self.accept_op(","):
            values.append(self.term())
        self.expect_op(")")
        if len(values) != len(columns):
            raise Invalid(f"Unmatched column names/values: {len(columns)} columns, {len(values)} values")
        repeated = next((c for i, c in enumerate(columns) if c in columns[:i]), None)
        if repeated is not None:
            raise Invalid(f"Multiple definitions found for column {repeated}")
        # Cassandra's order (Cql.g normalInsertStatement): VALUES (...) [IF NOT EXISTS] [USING ...]; an IF NOT EXISTS
        # after USING is left unparsed, a syntax error as there
        if_not_exists = self.accept_kw("if", "not", "exists")
        using = self.using()
        return st.Insert(table, columns, values, if_not_exists, using)

    def update(self) -> st.Update:
        self.expect_kw("update")
        table = self.table_name()
        using = self.using()
        self.expect_kw("set")
        assignments = [self.assignment()]
        while self.accept_op(","):
            assignments.append(self.assignment())
        for i, a in enumerate(assignments):  # as Cassandra: `c = x` goes with no other operation on c
            if any(b.column == a.column and "set" in (a.kind, b.kind) for b in assignments[:i]):
                raise CqlSyntaxError(f"Multiple incompatible setting of column {a.column}")
        where = self.where()
        if_exists, conds = self.conditions() if self.is_kw("if") else (False, [])
        return st.Update(table, assignments, where, using, if_exists, conds)

    def assignment(self) -> st.Assignment:
        column = self.name()
        if self.accept_op("["):
            element = self.term()
            self.expect_op("]")
            self.expect_op("=")
            return st.Assignment(column, "set_element", self.term(), element)
        self.expect_op("=")
        # c = c + x | c = c - x | c = x + c | c = x
        if self.peek().kind in ("ident", "qident") and self.peek().value == column and self.is_op("+", "-", ahead=1):
            self.i += 1
            op = self.next().value
            return st.Assignment(column, "add" if op == "+" else "remove", self.term())
        value = self.term()
        if self.accept_op("+"):
            other = self.name()
            if other != column:
                raise Invalid(f"Only expressions of the form X = <value> + X are supported (got {other})")
            return st.Assignment(column, "prepend", value)
        return st.Assignment(column, "set", value)

    def delete(self) -> st.Delete:
        self.expect_kw("delete")
        columns: list[tuple[str, st.Term | None]] = []
        if not self.is_kw("from"):
            while True:
                col = self.name()
                element = None
                if self.accept_op("["):
                    element = self.term()
                    self.expect_op("]")
                columns.append((col, element))
                if not self.accept_op(","):
                    break
        self.expect_kw("from")
        table = self.table_name()
        using = self.using()
        if using.ttl is not None:
            raise Invalid("DELETE does not accept USING TTL")
        where = self.where()
        if_exists, conds = self.conditions() if self.is_kw("if") else (False, [])
        return st.Delete(table, columns, where, using, if_exists, conds)

    def batch(self) -> st.Batch:
        self.expect_kw("begin")
        kind = "logged"
        if self.accept_kw("unlogged"):
            kind = "unlogged"
        elif self.accept_kw("counter"):
            raise Invalid("counter batches are not supported by this emulator (no counter type)")
        self.expect_kw("batch")
        using = self.using()
        children: list[st.Modification] = []
        while not self.is_kw("apply"):
            if self.is_kw("insert"):
                children.append(self.insert())
            elif self.is_kw("update"):
                children.append(self.update())
            elif self.is_kw("delete"):
                children.append(self.delete())
            else:
                raise self.error("INSERT, UPDATE, DELETE or APPLY BATCH")
            self.accept_op(";")
        self.expect_kw("apply", "batch")
        return st.Batch(kind, children, using)

    def use(self) -> st.Use:
        self.expect_kw("use")
        return st.Use(self.name())

    def create(self) -> st.CreateKeyspace | st.CreateTable:
        self.expect_kw("create")
        if self.accept_kw("keyspace") or self.accept_kw("schema"):
            return self.create_keyspace()
        if self.accept_kw("table") or self.accept_kw("columnfamily"):
            return self.create_table()
        what = self.peek().value.upper() or "that"
        raise Invalid(f"CREATE {what} is not supported by this emulator (only CREATE KEYSPACE and CREATE TABLE)")

    def if_not_exists(self) -> bool:
        return self.accept_kw("if", "not", "exists")

    def create_keyspace(self) -> st.CreateKeyspace:
        ine = self.if_not_exists()
        name = self.name()
        self.expect_kw("with")
        replication: dict[str, str] | None = None
        durable = True
        while True:
            prop = self.name()
            self.expect_op("=")
            if prop == "replication":
                value = self.constant()
                if not isinstance(value, dict):
                    raise Invalid("replication must be a map literal, e.g. {'class': 'SimpleStrategy', ...}")
                replication = {str(k): str(v) for k, v in value.items()}
            elif prop == "durable_writes":
                durable = bool(self.constant())
            else:
                raise CqlSyntaxError(f"Unknown property '{prop}'")
            if not self.accept_kw("and"):
                break
        if replication is None:
            raise CqlSyntaxError("Missing mandatory replication strategy class")
        return st.CreateKeyspace(name, replication, durable, ine)

    def type_text(self) -> str:
        parts: list[str] = []
        depth = 0
        while True:
            tok = self.peek()
            if tok.kind == "eof" and depth == 0 and parts:
                break
            if tok.kind == "eof":
                raise self.error("a type")
            if tok.kind == "op" and tok.value in (",", ")", ";") and depth == 0:
                break
            if tok.kind == "ident" and depth == 0 and tok.value in ("primary", "static"):
                break
            self.i += 1
            if tok.value == "<":
                depth += 1
            elif tok.value == ">":
                depth -= 1
            parts.append(f'"{tok.value}"' if tok.kind == "qident" else
                         (f"'{tok.value}'" if tok.kind == "string" else tok.value))
        if not parts:
            raise self.error("a type")
        return " ".join(parts).replace(" < ", "<").replace(" >", ">").replace(" , ", ", ")

    def create_table(self) -> st.CreateTable:
        ine = self.if_not_exists()
        table = self.table_name()
        self.expect_op("(")
        columns: list[st.ColumnDef] = []
        pk: list[str] = []
        clustering: list[str] = []
        while True:
            if self.accept_kw("primary", "key"):
                self.expect_op("(")
                if self.accept_op("("):
                    pk.append(self.name())
                    while self.accept_op(","):
                        pk.append(self.name())
                    self.expect_op(")")
                else:
                    pk.append(self.name())
                while self.accept_op(","):
                    clustering.append(self.name())
                self.expect_op(")")
            else:
                name = self.name()
                type_text = self.type_text()
                columns.append(st.ColumnDef(name, type_text))
                if self.accept_kw("static"):
                    raise Invalid("static columns are not supported by this emulator")
                if self.accept_kw("primary", "key"):
                    if pk:
                        raise Invalid(f"Multiple PRIMARY KEYs specified (exactly one required) in {table.name}")
                    pk.append(name)
            if not self.accept_op(","):
                break
            if self.is_op(")"):
                break
        self.expect_op(")")
        order: dict[str, str] = {}
        options: dict[str, object] = {}
        if self.accept_kw("with"):
            while True:
                if self.accept_kw("clustering", "order", "by"):
                    self.expect_op("(")
                    while True:
                        col = self.name()
                        if self.accept_kw("desc"):
                            order[col] = "DESC"
                        else:
                            self.expect_kw("asc")
                            order[col] = "ASC"
                        if not self.accept_op(","):
                            break
                    self.expect_op(")")
                elif self.accept_kw("compact", "storage"):
                    raise Invalid("COMPACT STORAGE is not supported by this emulator")
                else:
                    prop = self.name()
                    self.expect_op("=")
                    options[prop] = self.constant()
                if not self.accept_kw("and"):
                    break
        if not pk:
            raise Invalid(f"No PRIMARY KEY specified for table {table.name} (exactly one required)")
        return st.CreateTable(table, columns, pk, clustering, order, options, ine)

    def drop(self) -> st.DropKeyspace | st.DropTable:
        self.expect_kw("drop")
        if self.accept_kw("keyspace") or self.accept_kw("schema"):
            ie = self.accept_kw("if", "exists")
            return st.DropKeyspace(self.name(), ie)
        if self.accept_kw("table") or self.accept_kw("columnfamily"):
            ie = self.accept_kw("if", "exists")
            return st.DropTable(self.table_name(), ie)
        what = self.peek().value.upper() or "that"
        raise Invalid(f"DROP {what} is not supported by this emulator (only DROP KEYSPACE and DROP TABLE)")

    def truncate(self) -> st.Truncate:
        self.expect_kw("truncate")
        self.accept_kw("table")
        return st.Truncate(self.table_name())

    def alter(self) -> st.AlterTableAdd:
        self.expect_kw("alter")
        if not self.accept_kw("table"):
            raise Invalid("ALTER statements other than ALTER TABLE ... ADD are not supported by this emulator")
        table = self.table_name()
        if not self.accept_kw("add"):
            raise Invalid("ALTER TABLE supports only ADD in this emulator")
        columns: list[st.ColumnDef] = []
        paren = self.accept_op("(")
        while True:
            name = self.name()
            columns.append(st.ColumnDef(name, self.type_text()))
            if not self.accept_op(","):
                break
        if paren:
            self.expect_op(")")
        return st.AlterTableAdd(table, columns)


def parse(text: str) -> tuple[st.Statement, int]:
    """Parse one statement; returns it and its number of bind markers."""
    parser = Parser(text)
    stmt = parser.statement()
    return stmt, parser.markers
