"""CQL tokenizer: turns a statement into a list of :class:`Token`.

Unquoted identifiers and keywords are folded to lower case (CQL is case
insensitive for them); double-quoted identifiers keep their case. A character
that starts no token is a SyntaxError naming it and its position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import CqlSyntaxError

_HEX = "[0-9a-fA-F]"
_TOKEN = re.compile(
    rf"""
    (?P<ws>\s+|--[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<uuid>{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}})(?![\w-])
  | (?P<blob>0[xX]{_HEX}*)(?!\w)
  | (?P<float>-?(?:\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+))(?![\w.])
  | (?P<int>-?\d+)(?![\w.])
  | (?P<ident>[a-zA-Z][a-zA-Z0-9_]*)
  | (?P<qident>"(?:[^"]|"")+")
  | (?P<string>'(?:[^']|'')*')
  | (?P<pgstring>\$\$.*?\$\$)
  | (?P<op><=|>=|!=|[(),;.*=<>\[\]{{}}:?+\-])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # ident, qident, string, int, float, blob, uuid, op, eof
    value: str
    pos: int

    def describe(self) -> str:
        return "end of statement" if self.kind == "eof" else repr(self.value)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos, end = 0, len(text)
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None:
            snippet = text[pos:pos + 20]
            raise CqlSyntaxError(f"line 1:{pos} no viable token at character {text[pos]!r} (near {snippet!r})")
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "ws":
            pass
        elif kind == "ident":
            tokens.append(Token("ident", raw.lower(), pos))
        elif kind == "qident":
            tokens.append(Token("qident", raw[1:-1].replace('""', '"'), pos))
        elif kind == "string":
            tokens.append(Token("string", raw[1:-1].replace("''", "'"), pos))
        elif kind == "pgstring":
            tokens.append(Token("string", raw[2:-2], pos))
        else:
            tokens.append(Token(kind, raw, pos))
        pos = m.end()
    tokens.append(Token("eof", "", end))
    return tokens
