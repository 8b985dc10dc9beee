"""ASP.NET route templates, as HTTP-triggered functions declare them (``route="items/{id:guid}"``).

Supported: literal segments (case-insensitive), ``{name}``, optional ``{name?}``, defaults
``{name=value}``, catch-all ``{*rest}``, several parameters and literals in one segment
(``{name}.{ext}``, matched right to left as ASP.NET does, an optional last parameter after a
period making the period optional), and the inline constraints ``int long bool guid alpha
decimal double float min(n) max(n) range(a,b) minlength(n) maxlength(n) length(n)
length(a,b) regex(expr)``, chained with ``:`` (the template's text is read by
:mod:`devhost.route_parser`: ``{{``/``}}`` escapes and all). ``datetime`` is refused: ASP.NET checks it with
DateTime.TryParse, too loose a grammar to copy, and a route that matched other URLs than in Azure would be a silent
wrong answer. A request matches a route when its path matches and every constraint holds; otherwise the next
route is tried, in the host's order (``devhost.http_trigger.in_host_order``: function names, not specificity). A
path with an empty segment (``//``) matches nothing; one final ``/`` is ignored, except by a catch-all, which keeps
it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from devhost.errors import DevHostError
from devhost.route_parser import Piece, parse_template

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
# decimal.TryParse with NumberStyles.Number and the invariant culture, as ASP.NET Core's DecimalRouteConstraint parses:
# ASCII digits, "," as a thousands separator anywhere after the first digit and before the decimal point, a decimal
# point, one sign before the number or after it ("5-", "5 -"), white space around but not between a leading sign and
# the digits, NULs at the very end; no exponent, and no NaN or Infinity (System.Decimal has neither). Python's
# Decimal() takes "1e5", "NaN", "Infinity" and "1_000", and refuses "1,000".
_DECIMAL = re.compile(r"[\t\n\v\f\r ]*(?P<lead>[+-]?)(?P<number>[0-9][0-9,]*(?:\.[0-9]*)?|\.[0-9]+)"
                      r"[\t\n\v\f\r ]*(?:(?P<trail>[+-])[\t\n\v\f\r ]*)?\x00*")
# System.Decimal's largest value is 2**96 - 1 (79228162514264337593543950335), which is odd. decimal.TryParse rounds
# the digits that do not fit half to even, so a number fails as too large only when it reaches that value plus one
# half. (Written out: arithmetic on Decimal rounds to 28 digits.)
_DECIMAL_TOO_LARGE = Decimal("79228162514264337593543950335.5")
# .NET's char.IsWhiteSpace, which is Unicode's White_Space: what string.Trim() and span Trim() remove. Python's
# str.strip() and a regex's \s also take U+001C to U+001F, which .NET does not count as white space.
_WHITE_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                "\u2028\u2029\u202f\u205f\u3000")
# What bool.TryParse, as ASP.NET Core's BoolRouteConstraint parses, trims around "true" or "false": NUL and
# char.IsWhiteSpace.
_BOOL_PADDING = "\x00" + _WHITE_SPACE
# Guid.TryParse: char.IsWhiteSpace trimmed around (not NUL, not U+001C to U+001F), then 32 hex digits (N), in
# 8-4-4-4-12 groups (D), the groups in braces (B) or parentheses (P); no "urn:uuid:" prefix (Python's uuid.UUID takes
# one). The X form ({0x...,{0x...}}) is not accepted here.
_GUID = re.compile(r"[0-9a-f]{32}|(?P<open>[{(]?)[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}(?P<close>[})]?)",
                   re.IGNORECASE)
# ASP.NET Core's AlphaRouteConstraint: the RegexRouteConstraint ^[A-Za-z]*$, checked with IsMatch. In a .NET regex
# (as in Python's) $ also matches before a final "\n", so "abc\n" (from a path segment abc%0A) matches; and * takes
# an empty value, which only an empty default ({name:alpha=}) gives.
_ALPHA = re.compile(r"^[A-Za-z]*$")


def _integer(bits: int) -> Callable[[str], int | None]:
    """The value of ``value`` as .NET parses an integer of ``bits`` bits, or None."""
    def parse(value: str) -> int | None:
        if _INTEGER.fullmatch(value) is None:
            return None
        number = int(value)
        return number if -(2 ** (bits - 1)) <= number < 2 ** (bits - 1) else None
    return parse


def _guid(value: str) -> bool:
    found = _GUID.fullmatch(value.strip(_WHITE_SPACE))
    return found is not None and (found["open"] or "") + (found["close"] or "") in ("", "{}", "()")


_LONG = _integer(64)


def _decimal(value: str) -> bool:
    found = _DECIMAL.fullmatch(value)
    return found is not None and not (found["lead"] and found["trail"]) \
        and Decimal(found["number"].replace(",", "")) < _DECIMAL_TOO_LARGE


def _utf16_length(value: str) -> int:
    """.NET's ``string.Length``, which minlength, maxlength and length compare: UTF-16 code units, so a character
    outside the Basic Multilingual Plane (an emoji) counts 2 where ``len()`` counts 1."""
    return len(value) + sum(ord(char) > 0xFFFF for char in value)


def _constraint(text: str, where: str) -> Callable[[str], bool]:
    match = _CONSTRAINT.match(text)
    if not match:
        raise DevHostError(f"route {where}: bad constraint {text!r}")
    name, raw = match.group(1).lower(), match.group(2)
    if name == "datetime":
        raise DevHostError(f"route {where}: constraint {text!r} is not supported by the dev host: ASP.NET checks it "
                           "with DateTime.TryParse, whose many accepted forms the dev host cannot copy, so the route "
                           "would match other URLs than in Azure; drop the constraint (or use regex(...)) and parse "
                           "the date in the function")
    args = [a.strip() for a in raw.split(",")] if raw is not None and name != "regex" else []
    simple: dict[str, Callable[[str], bool]] = {
        "int": lambda v: _integer(32)(v) is not None,
        "long": lambda v: _LONG(v) is not None,
        "bool": lambda v: v.strip(_BOOL_PADDING).lower() in ("true", "false"),
        "guid": _guid,
        "alpha": lambda v: _ALPHA.search(v) is not None,
        "decimal": _decimal,
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
            return lambda v: _utf16_length(v) >= shortest
        if name == "maxlength":
            longest = int(args[0])
            return lambda v: _utf16_length(v) <= longest
        if name == "length":
            low, high = (int(args[0]), int(args[-1]))
            return lambda v: low <= _utf16_length(v) <= high
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


@dataclass(frozen=True)
class _Literal:
    """Literal text of a segment. ``separator``: the ``.`` before an optional last parameter of a complex segment
    (RoutePatternSeparatorPart), which the request may leave out with that parameter."""

    text: str
    separator: bool = False


_Part = _Literal | _Parameter


@dataclass
class RouteTemplate:
    """A compiled template: :meth:`match` gives the route parameters or None."""

    template: str
    segments: list[list[_Part]]
    parameters: dict[str, _Parameter]
    catch_all_index: int | None = None  # the segment a catch-all parameter starts at

    @classmethod
    def compile(cls, template: str) -> RouteTemplate:
        """The template parsed as RoutePatternParser parses it (:mod:`devhost.route_parser`: ``{{``/``}}`` escapes
        included), refused where ASP.NET refuses it, with its constraints resolved."""
        parameters: dict[str, _Parameter] = {}
        catch_all_index = None
        segments: list[list[_Part]] = []
        parsed = parse_template(template.strip().strip("/"), template)
        for index, pieces in enumerate(parsed):
            parts: list[_Part] = []
            for piece in pieces:
                if isinstance(piece, str):
                    parts.append(_Literal(piece))
                    continue
                if piece.name.lower() in (name.lower() for name in parameters):
                    raise DevHostError(f"route {template!r}: parameter {piece.name!r} appears twice")
                if piece.catch_all:
                    if index != len(parsed) - 1:
                        raise DevHostError(f"route {template!r}: a catch-all parameter must be the last segment")
                    catch_all_index = index
                parameter = _Parameter(piece.name, [_constraint(c, repr(template)) for c in piece.constraints],
                                       piece.optional, piece.default, piece.catch_all)
                parameters[parameter.name] = parameter
                parts.append(parameter)
            segments.append(_checked_segment(parts, _segment_text(pieces), template))
        return cls(template, segments, parameters, catch_all_index)

    def match(self, path: str) -> dict[str, str] | None:
        """Route parameters of ``path`` (without the route prefix and its ``/``), or None when it does not match:
        RoutePatternMatcher.TryMatch, then the route's constraints.

        The path is read as ASP.NET's PathTokenizer reads it: one final ``/`` is ignored, and any other ``/`` next
        to another, or at the start, makes an empty segment, which matches nothing (``amounts//5``, ``/amounts/5``,
        ``amounts/5//``), up to and including the segment where a catch-all starts. A catch-all takes the rest of
        the path as it is, a final ``/`` included (``a/b/``). Literals compare ignoring case; a segment of several
        parts is matched right to left (:func:`_match_complex`). A parameter left without a value takes its default;
        every constraint is then checked on the values, defaults included, and an optional parameter without a
        value skips its constraints."""
        segments = _path_segments(path)
        checked = len(segments) if self.catch_all_index is None else self.catch_all_index + 1
        if "" in segments[:checked] or (len(segments) > len(self.segments) and self.catch_all_index is None):
            return None
        values: dict[str, str] = {}
        offset = 0
        for text, parts in zip(segments, self.segments, strict=False):
            if len(parts) > 1:
                found = _match_complex(parts, text)
                if found is None:
                    return None
                values.update(found)
            elif isinstance(part := parts[0], _Literal):
                if _folded(text) != _folded(part.text):
                    return None
            elif part.catch_all:
                values[part.name] = path[offset:]  # the rest, as sent
                break
            else:
                values[part.name] = text
            offset += len(text) + 1
        for parts in self.segments[len(segments):]:  # not in the path: parameters that can do without a value
            part = parts[0]
            if len(parts) > 1 or isinstance(part, _Literal) or \
                    not (part.catch_all or part.optional or part.default is not None):
                return None
        for name, parameter in self.parameters.items():
            if name not in values and parameter.default is not None:
                values[name] = parameter.default
            if name in values:
                if not all(check(values[name]) for check in parameter.checks):
                    return None
            elif parameter.checks and not parameter.optional:  # only OptionalRouteConstraint lets a missing value by
                return None
        return values


def _checked_segment(parts: list[_Part], segment: str, template: str) -> list[_Part]:
    """The parts of one segment, refused where RoutePatternParser.IsSegmentValid refuses them; the ``.`` before an
    optional last parameter becomes a separator."""
    if len(parts) > 1:
        if any(isinstance(part, _Parameter) and part.catch_all for part in parts):
            raise DevHostError(f"route {template!r}: a segment with more than one part ({segment!r}) cannot hold a "
                               "catch-all parameter")
        for before, after in itertools.pairwise(parts):
            if isinstance(before, _Parameter) and isinstance(after, _Parameter):
                raise DevHostError(f"route {template!r}: two parameters next to each other in {segment!r} need a "
                                   "literal between them")
        for position, part in enumerate(parts):
            if isinstance(part, _Parameter) and part.optional:
                left = parts[position - 1] if position else None
                if position != len(parts) - 1 or not isinstance(left, _Literal) or left.text != ".":
                    raise DevHostError(f"route {template!r}: in {segment!r}, an optional parameter must be the last "
                                       "part, after a period (.)")
                parts[position - 1] = _Literal(".", separator=True)
    return parts


def _segment_text(pieces: list[Piece]) -> str:
    """A parsed segment written back, for messages."""
    return "".join(piece if isinstance(piece, str) else f"{{{piece.name}}}" for piece in pieces)


def _folded(text: str) -> str:
    """``text`` for an OrdinalIgnoreCase comparison: each character upper-cased on its own (so indices still line
    up with ``text``)."""
    return "".join(upper if len(upper := char.upper()) == 1 else char for char in text)


def _match_complex(parts: list[_Part], text: str) -> dict[str, str] | None:
    """A segment of several parts (``{name}.{ext}``) against one path segment, as RoutePatternMatcher's
    MatchComplexSegment: from the right, each literal found with LastIndexOf (ignoring case) and each parameter
    taking what lies between two literals, at least one character. So ``report.2024.pdf`` gives ``report.2024`` and
    ``pdf``. When the last part is an optional parameter after a separator and that fails, the segment is matched
    again without both, unless the path segment ends with the separator (``{filename}.{ext?}`` takes ``summary``,
    not ``summary.``)."""
    last = len(parts) - 1
    tail, before = parts[last], parts[last - 1]
    found = _match_complex_from(parts, text, last)
    if found is not None or not (isinstance(tail, _Parameter) and tail.optional and isinstance(before, _Literal)
                                 and before.separator):
        return found
    if _folded(text).endswith(_folded(before.text)):
        return None
    return _match_complex_from(parts, text, last - 2)


def _match_complex_from(parts: list[_Part], text: str, index: int) -> dict[str, str] | None:
    """MatchComplexSegmentCore: ``parts[:index + 1]`` against ``text``, right to left."""
    folded = _folded(text)
    end = len(text)  # what is left of the path segment: text[:end]
    pending: _Parameter | None = None  # a parameter waiting for the literal on its left
    literal: _Literal | None = None  # the literal found last, on that parameter's left
    values: dict[str, str] = {}
    while index >= 0:
        new_end = end
        part = parts[index]
        if isinstance(part, _Parameter):
            pending = part
        else:
            literal = part
            limit = end - 1 if pending is not None else end  # leave a parameter on the right one character
            if limit == 0:
                return None
            at = folded.rfind(_folded(part.text), 0, limit)
            if at == -1:
                return None
            if index == len(parts) - 1 and at + len(part.text) != len(text):  # a last literal ends the segment
                return None
            new_end = at
        if pending is not None and ((literal is not None and isinstance(part, _Literal)) or index == 0):
            start = new_end + len(literal.text) if literal is not None and isinstance(part, _Literal) else 0
            if start >= end:
                return None
            values[pending.name] = text[start:end]
            pending, literal = None, None
        end = new_end
        index -= 1
    return values if end == 0 or isinstance(parts[0], _Parameter) else None


def _path_segments(path: str) -> list[str]:
    """The segments ASP.NET's PathTokenizer finds in ``"/" + path``: none for an empty path, and a final ``/``
    (one only) ends the last segment instead of starting an empty one."""
    if not path:
        return []
    return path.removesuffix("/").split("/")
