"""Route template text read as ASP.NET Core reads it (``RoutePatternParser``, ``RouteParameterParser``).

A template is segments separated by ``/``; a segment is literals and ``{parameters}``. ``{{`` and ``}}``
stand for a literal brace, in literals and inside a parameter alike, which is how a regex constraint
writes a quantifier: ``{ssn:regex(^\\d{{3}}-\\d{{2}}-\\d{{4}}$)}`` is the constraint ``regex(^\\d{3}-\\d{2}-\\d{4}$)``.
A ``/`` inside a parameter belongs to it. Inside the braces: ``*`` or ``**`` first makes a catch-all,
``?`` last an optional parameter, then the name up to the first ``:`` or ``=`` (not counting the first
character), ``:constraint`` or ``:constraint(arguments)`` any number of times (a ``:`` or ``=`` inside
parentheses that close later belongs to the arguments), and ``=default``.
"""

from __future__ import annotations

from dataclasses import dataclass

from devhost.errors import DevHostError

_INVALID_NAME_CHARACTERS = frozenset("/{}?*")


@dataclass(frozen=True)
class ParsedParameter:
    name: str
    constraints: tuple[str, ...]
    default: str | None
    optional: bool
    catch_all: bool


Piece = str | ParsedParameter  # a literal, its escapes decoded, or a parameter


def parse_template(text: str, template: str) -> list[list[Piece]]:
    """The segments of ``text`` (a template without ``/`` at either end), each a list of pieces. DevHostError, naming
    ``template``, for what RoutePatternParser refuses: unbalanced braces, an empty segment, a literal with ``?``, a
    parameter without a valid name, an optional catch-all, an optional parameter with a default."""
    segments: list[list[Piece]] = []
    pieces: list[Piece] = []
    literal = ""
    index = 0

    def unbalanced(where: str) -> DevHostError:
        return DevHostError(f"route {template!r}: unbalanced braces in {where!r} (a literal brace is written "
                            "{{ or }})")

    def end_literal() -> None:
        nonlocal literal
        if literal:
            if "?" in literal:
                raise DevHostError(f"route {template!r}: the literal {literal!r} cannot contain '?'")
            pieces.append(literal)
            literal = ""

    while index < len(text):
        char, following = text[index], text[index + 1:index + 2]
        if char == "/":
            end_literal()
            if not pieces:
                raise DevHostError(f"route {template!r}: empty segment (two '/' side by side)")
            segments.append(pieces)
            pieces = []
            index += 1
        elif char in "{}" and following == char:  # an escaped brace
            literal += char
            index += 2
        elif char == "}":
            raise unbalanced(text[:index + 1])
        elif char == "{":
            end_literal()
            inside, index = _parameter_text(text, index + 1)
            if inside is None:
                raise unbalanced(text)
            pieces.append(_parameter(inside, template))
        else:
            literal += char
            index += 1
    end_literal()
    if pieces:
        segments.append(pieces)
    elif segments:
        raise DevHostError(f"route {template!r}: empty segment")
    return segments


def _parameter_text(text: str, index: int) -> tuple[str | None, int]:
    """What lies between a parameter's braces, from ``index`` (just after its ``{``), escapes decoded, and the index
    after its ``}``; None when it never closes or holds a lone ``{``."""
    inside = ""
    while index < len(text):
        char, following = text[index], text[index + 1:index + 2]
        if char == "{":
            if following != "{":
                return None, index
            inside += "{"
            index += 2
        elif char == "}":
            if following != "}":
                return inside, index + 1
            inside += "}"
            index += 2
        else:
            inside += char
            index += 1
    return None, index


def _parameter(text: str, template: str) -> ParsedParameter:
    """RouteParameterParser.ParseRouteParameter, with RoutePatternParser's checks of the result."""
    start, end = 0, len(text) - 1
    catch_all = text.startswith("*")
    start = 2 if text.startswith("**") else 1 if catch_all else 0
    optional = bool(text) and text[end] == "?"
    if optional:
        end -= 1
    index = start
    name = ""
    while index <= end:
        if text[index] in ":=" and index != start:
            name = text[start:index]
            break
        if index == end:
            name = text[start:index + 1]
        index += 1
    constraints, index = _constraints(text, index, end)
    default = text[index + 1:end + 1] if index <= end and text[index] == "=" else None
    if not name or _INVALID_NAME_CHARACTERS & set(name):
        raise DevHostError(f"route {template!r}: bad parameter name {name!r} in {{{text}}}")
    if catch_all and optional:
        raise DevHostError(f"route {template!r}: the catch-all parameter {name!r} cannot be optional")
    if optional and default is not None:
        raise DevHostError(f"route {template!r}: the optional parameter {name!r} cannot have a default value")
    return ParsedParameter(name, tuple(constraints), default, optional, catch_all)


def _constraints(text: str, index: int, end: int) -> tuple[list[str], int]:
    """RouteParameterParser.ParseConstraints from ``index`` (a ``:``, ``=`` or the end): the constraints' texts and
    the index where the default's ``=`` is, if any. A ``)`` ends a constraint's arguments only before the end, a
    ``:`` or a ``=``; a ``:`` or ``=`` inside parentheses closed later belongs to the arguments."""
    constraints: list[str] = []
    state = "start"
    begin = index
    while True:
        char = text[index] if index <= end else None
        if state == "start":
            if char is None:
                return constraints, index
            if char == ":":
                state, begin = "name", index + 1
            elif char == "(":
                state = "arguments"
            elif char == "=":
                return constraints, index
        elif state == "arguments":
            if char is None:
                constraints.append(text[begin:index])
                return constraints, index
            if char == ")":
                following = text[index + 1] if index + 1 <= end else None
                if following in (None, ":", "="):
                    constraints.append(text[begin:index + 1])
                    if following == ":":
                        state, begin = "start", index + 1
                    else:
                        return constraints, index + 1
            elif char in ":=":
                closing = text.find(")", index + 1)
                if closing == -1:
                    constraints.append(text[begin:index])
                    if char == "=":
                        return constraints, index
                    state, begin = "name", index + 1
                else:
                    index = closing - 1
        else:  # a constraint's name
            if char is None or char in ":=":
                if index > begin:
                    constraints.append(text[begin:index])
                if char is None or char == "=":
                    return constraints, index
                begin = index + 1
            elif char == "(":
                state = "arguments"
        index += 1
