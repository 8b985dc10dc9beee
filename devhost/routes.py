"""ASP.NET route templates, as HTTP-triggered functions declare them (``route="items/{id:guid}"``).

Supported: literal segments (case-insensitive), ``{name}``, optional ``{name?}``, defaults
``{name=value}``, catch-all ``{*rest}``, several parameters and literals in one segment
(``{name}.{ext}``), and the inline constraints ``int long bool guid alpha datetime
decimal double float min(n) max(n) range(a,b) minlength(n) maxlength(n) length(n)
length(a,b) regex(expr)``, chained with ``:``. A request matches a route when its path
matches and every constraint holds; otherwise the next route is tried, in the host's order
(``devhost.http_trigger.in_host_order``: function names, not specificity). A path with an
empty segment (``//``) matches nothing; one final ``/`` is ignored, except by a catch-all,
which keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from devhost.errors import DevHostError

_PARAMETER = re.compile(r"\{([^{}]*)\}")
_CONSTRAINT = re.compile(r"(\w+)(?:\((.*)\))?$")


# int.TryParse / long.TryParse with NumberStyles.Integer and the invariant culture, as ASP.NET Core's
# IntRouteConstraint, LongRouteConstraint, MinRouteConstraint, MaxRouteConstraint and RangeRouteConstraint parse:
# ASCII digits with an optional sign and white space around, no digit separators (Python's int() also takes "1_000"
# and other scripts' digits).
_INTEGER = re.compile(r"[\t\n\v\f\r ]*[+-]?[0-9]+[\t\n\v\f\r ]*")
# double.TryParse / float.TryParse with NumberStyles.Float | NumberStyles.AllowThousands and the invariant culture, as
# ASP.NET Core's DoubleRouteConstraint and FloatRouteConstraint parse: ASCII digits, "," as a thousands separator
# anywhere after the first digit and before the decimal point ("1,000", "1,0,0"), an optional sign, a decimal point,
# an exponent after some digits, white space around; or Infinity, -Infinity or NaN (any case, "+" or "-" before).
# Python's float() refuses "1,000" and takes "1_000", "inf" and other scripts' digits.
_FLOATING = re.compile(r"[\t\n\v\f\r ]*(?:[+-]?(?:[0-9][0-9,]*(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                       r"|(?i:[+-]?(?:infinity|nan)))[\t\n\v\f\r ]*")
# Guid.TryParse: 32 hex digits (N), in 8-4-4-4-12 groups (D), the groups in braces (B) or parentheses (P); no
# "urn:uuid:" prefix (Python's uuid.UUID takes one). The X form ({0x...,{0x...}}) is not accepted here.
_GUID = re.compile(r"\s*(?:[0-9a-f]{32}|(?P<open>[{(]?)[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}(?P<close>[})]?))\s*",
                   re.IGNORECASE)


def _integer(bits: int) -> Callable[[str], int | None]:
    """The value of ``value`` as .NET parses an integer of ``bits`` bits, or None."""
    def parse(value: str) -> int | None:
        if _INTEGER.fullmatch(value) is None:
            return None
        number = int(value)
        return number if -(2 ** (bits - 1)) <= number < 2 ** (bits - 1) else None
    return parse


def _guid(value: str) -> bool:
    found = _GUID.fullmatch(value)
    return found is not None and (found["open"] or "") + (found["close"] or "") in ("", "{}", "()")


_LONG = _integer(64)


def _number(kind: Callable[[str], object]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            kind(value)
        except (ValueError, InvalidOperation):
            return False
        return True
    return check


def _parse_datetime(value: str) -> object:
    return datetime.fromisoformat(value)


def _constraint(text: str, where: str) -> Callable[[str], bool]:
    match = _CONSTRAINT.match(text)
    if not match:
        raise DevHostError(f"route {where}: bad constraint {text!r}")
    name, raw = match.group(1).lower(), match.group(2)
    args = [a.strip() for a in raw.split(",")] if raw is not None and name != "regex" else []
    simple: dict[str, Callable[[str], bool]] = {
        "int": lambda v: _integer(32)(v) is not None,
        "long": lambda v: _LONG(v) is not None,
        "bool": lambda v: v.lower() in ("true", "false"),
        "guid": _guid,
        "alpha": lambda v: re.fullmatch(r"[A-Za-z]+", v) is not None,
        "datetime": _number(_parse_datetime),
        "decimal": _number(Decimal),
        "double": lambda v: _FLOATING.fullmatch(v) is not None,
        "float": lambda v: _FLOATING.fullmatch(v) is not None,
    }
    try:
        if name in simple:
            return simple[name]
        if name == "min":
            low = int(args[0])
            return lambda v: (number := _LONG(v)) is not None and number >= low
        if name == "max":
            high = int(args[0])
            return lambda v: (number := _LONG(v)) is not None and number <= high
        if name == "range":
            low, high = int(args[0]), int(args[1])
            return lambda v: (number := _LONG(v)) is not None and low <= number <= high
        if name == "minlength":
            shortest = int(args[0])
            return lambda v: len(v) >= shortest
        if name == "maxlength":
            longest = int(args[0])
            return lambda v: len(v) <= longest
        if name == "length":
            low, high = (int(args[0]), int(args[-1]))
            return lambda v: low <= len(v) <= high
        if name == "regex":
            pattern = re.compile(raw or "", re.IGNORECASE)
            return lambda v: pattern.search(v) is not None
    except (IndexError, ValueError, re.error) as exc:
        raise DevHostError(f"route {where}: bad arguments in constraint {text!r}") from exc
    raise DevHostError(f"route {where}: constraint {name!r} is not supported by the dev host")


@dataclass
class _Parameter:
    name: str
    checks: list[Callable[[str], bool]] = field(default_factory=list)
    optional: bool = False
    default: str | None = None
    catch_all: bool = False


@dataclass
class RouteTemplate:
    """A compiled template: :meth:`match` gives the route parameters or None."""

    template: str
    pattern: re.Pattern[str]
    parameters: dict[str, _Parameter]
    catch_all_index: int | None = None  # the segment a catch-all parameter starts at

    @classmethod
    def compile(cls, template: str) -> RouteTemplate:
        text = template.strip().strip("/")
        parameters: dict[str, _Parameter] = {}
        catch_all_index = None
        regex = "^"
        segments = text.split("/") if text else []
        for index, segment in enumerate(segments):
            if not segment:
                raise DevHostError(f"route {template!r}: empty segment")
            pieces = _PARAMETER.split(segment)  # literal, param, literal, param, ..., literal
            segment_regex = ""
            optional_segment = False
            for position, piece in enumerate(pieces):
                if position % 2 == 0:
                    if "{" in piece or "}" in piece:
                        raise DevHostError(f"route {template!r}: unbalanced braces in {segment!r}")
                    segment_regex += re.escape(piece)
                    continue
                parameter = cls._parameter(piece, template)
                if parameter.name in parameters:
                    raise DevHostError(f"route {template!r}: parameter {parameter.name!r} appears twice")
                parameters[parameter.name] = parameter
                group = f"p{len(parameters)}"
                if parameter.catch_all:
                    if index != len(segments) - 1:
                        raise DevHostError(f"route {template!r}: a catch-all parameter must be the last segment")
                    segment_regex += rf"(?P<{group}>[\s\S]*)"  # the rest as it is: a final "/", a newline
                    optional_segment = True
                    catch_all_index = index
                else:
                    segment_regex += f"(?P<{group}>[^/]+?)"
                    if (parameter.optional or parameter.default is not None) and len(pieces) == 3 \
                            and not pieces[0] and not pieces[2]:
                        optional_segment = True
            regex += f"(?:/{segment_regex})?" if optional_segment else f"/{segment_regex}"
        regex += r"/?\Z"  # not "$": it also matches before a final newline
        return cls(template, re.compile(regex, re.IGNORECASE), parameters, catch_all_index)

    @staticmethod
    def _parameter(text: str, template: str) -> _Parameter:
        body = text
        default = None
        if "=" in body and not body.split("=", 1)[0].count("("):
            body, default = body.split("=", 1)
        catch_all = body.startswith("*")
        body = body.lstrip("*")
        optional = body.endswith("?")
        body = body.rstrip("?")
        name, *constraints = _split_constraints(body)
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise DevHostError(f"route {template!r}: bad parameter name {name!r}")
        return _Parameter(name, [_constraint(c, repr(template)) for c in constraints], optional, default, catch_all)

    def match(self, path: str) -> dict[str, str] | None:
        """Route parameters of ``path`` (without the route prefix and its ``/``), or None when it does not match.

        The path is read as ASP.NET's RoutePatternMatcher reads it (PathTokenizer): one final ``/`` is ignored, and
        any other ``/`` next to another, or at the start, makes an empty segment, which matches nothing
        (``amounts//5``, ``/amounts/5``, ``amounts/5//``), up to and including the segment where a catch-all
        starts. A catch-all takes the rest of the path as it is, a final ``/`` included (``a/b/``)."""
        segments = _path_segments(path)
        checked = len(segments) if self.catch_all_index is None else self.catch_all_index + 1
        if "" in segments[:checked]:
            return None
        found = self.pattern.match("/" + path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for number, (name, parameter) in enumerate(self.parameters.items(), start=1):
            value = found.group(f"p{number}")
            if value is None or value == "":
                if parameter.default is not None:
                    values[name] = parameter.default
                elif not (parameter.optional or parameter.catch_all):
                    return None
                continue
            if not all(check(value) for check in parameter.checks):
                return None
            values[name] = value
        return values


def _path_segments(path: str) -> list[str]:
    """The segments ASP.NET's PathTokenizer finds in ``"/" + path``: none for an empty path, and a final ``/``
    (one only) ends the last segment instead of starting an empty one."""
    if not path:
        return []
    return path.removesuffix("/").split("/")


def _split_constraints(text: str) -> list[str]:
    """``id:int:min(1)`` -> ``["id", "int", "min(1)"]``; colons inside parentheses stay put."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return parts
