"""Route templates of HTTP-triggered functions, as the dev host matches them."""

from __future__ import annotations

import uuid

import pytest

from devhost.app_loader import FunctionSpec
from devhost.errors import DevHostError
from devhost.http_trigger import HttpRoute, check_routes, in_host_order
from devhost.routes import RouteTemplate


def test_literals_and_parameters() -> None:
    route = RouteTemplate.compile("devices/{device_id}/latest")
    assert route.match("devices/d-1/latest") == {"device_id": "d-1"}
    assert route.match("DEVICES/d-1/Latest/") == {"device_id": "d-1"}
    assert route.match("devices/d-1") is None
    assert route.match("devices/d-1/latest/extra") is None
    assert route.match("devices//latest") is None


@pytest.mark.parametrize(("path", "expected"), [
    ("amounts/5", {"v": "5"}),
    ("amounts/5/", {"v": "5"}),
    ("amounts/5//", None),
    ("/amounts/5", None),
    ("amounts//5", None),
    ("/", None),
])
def test_only_one_final_slash_is_ignored(path: str, expected: dict[str, str] | None) -> None:
    """ASP.NET's PathTokenizer reads ``//`` (and a ``/`` right after the prefix's) as an empty segment, which
    RoutePatternMatcher.TryMatch refuses; only one final ``/`` ends the path."""
    assert RouteTemplate.compile("amounts/{v}").match(path) == expected


def test_a_catch_all_takes_the_rest_of_the_path_as_it_is() -> None:
    """RoutePatternMatcher.SavePathSegmentsAsValues: the catch-all is the path from its segment to the end, a final
    ``/``, empty segments and decoded control characters included; an empty segment where it starts is refused
    (TryMatch checks each segment before it breaks on the catch-all)."""
    rest = RouteTemplate.compile("tree/{*path}")
    assert rest.match("tree/a/b/") == {"path": "a/b/"}
    assert rest.match("tree/a//b//") == {"path": "a//b//"}
    assert rest.match("tree/a\nb") == {"path": "a\nb"}
    assert rest.match("tree/") == {}
    assert rest.match("tree//a") is None


def test_constraints() -> None:
    guid = RouteTemplate.compile("items/{id:guid}")
    value = str(uuid.uuid4())
    assert guid.match(f"items/{value}") == {"id": value}
    assert guid.match("items/42") is None
    number = RouteTemplate.compile("items/{n:int:range(1,10)}")
    assert number.match("items/7") == {"n": "7"}
    assert number.match("items/11") is None
    assert number.match("items/x") is None
    assert RouteTemplate.compile("a/{n:long}").match("a/9223372036854775808") is None
    assert RouteTemplate.compile("a/{s:alpha:minlength(2)}").match("a/ab") == {"s": "ab"}
    assert RouteTemplate.compile("a/{s:alpha:minlength(2)}").match("a/a") is None
    assert RouteTemplate.compile("a/{s:regex(^v[0-9]+$)}").match("a/v12") == {"s": "v12"}
    assert RouteTemplate.compile("a/{s:regex(^v[0-9]+$)}").match("a/x12") is None
    assert RouteTemplate.compile("a/{b:bool}").match("a/True") == {"b": "True"}


def test_the_alpha_constraint_is_aspnets_regex_a_final_newline_included() -> None:
    """AlphaRouteConstraint is the RegexRouteConstraint ``^[A-Za-z]*$`` (IsMatch): .NET's ``$`` also matches before a
    final ``\\n``, so ``/api/names/abc%0A`` reaches the function in Azure with ``abc\\n``; the dev host's
    ``fullmatch("[A-Za-z]+")`` refused it. ``*`` lets an empty default through."""
    template = RouteTemplate.compile("names/{name:alpha}")
    assert template.match("names/abc") == {"name": "abc"}
    assert template.match("names/abc\n") == {"name": "abc\n"}
    assert template.match("names/abc\n\n") is None
    assert template.match("names/\nabc") is None
    assert template.match("names/abc1") is None
    assert RouteTemplate.compile("names/{name:alpha=}").match("names") == {"name": ""}


def test_the_guid_constraint_trims_only_what_dotnet_counts_as_white_space() -> None:
    """Guid.TryParse trims with char.IsWhiteSpace, which does not include U+001C..U+001F (nor NUL); the dev host's
    regex used Python's ``\\s``, which does, so ``%1C<guid>`` matched ``{id:guid}`` locally and was 404 in Azure."""
    template = RouteTemplate.compile("items/{id:guid}")
    value = str(uuid.uuid4())
    assert template.match(f"items/ {value}\u3000") == {"id": f" {value}\u3000"}  # .NET trims these too
    for separator in "\x00\x1c\x1d\x1e\x1f":
        assert template.match(f"items/{separator}{value}") is None, repr(separator)
        assert template.match(f"items/{value}{separator}") is None, repr(separator)


@pytest.mark.parametrize(("template", "path", "matches"), [
    ("items/{n:int}", "items/+5", True),
    ("items/{n:int}", "items/-2147483648", True),
    ("items/{n:int}", "items/2147483648", False),
    ("items/{n:int}", "items/\u0663", False),
    ("items/{n:long}", "items/1_000", False),
    ("items/{n:min(1)}", "items/1_000", False),
    ("items/{n:range(1,5)}", "items/+3", True),
    ("items/{id:guid}", "items/urn:uuid:12345678-1234-5678-1234-567812345678", False),
    ("items/{id:guid}", "items/12345678123456781234567812345678", True),
    ("items/{id:guid}", "items/{12345678-1234-5678-1234-567812345678}", True),
    ("items/{id:guid}", "items/(12345678-1234-5678-1234-567812345678)", True),
    ("items/{id:guid}", "items/{12345678-1234-5678-1234-567812345678)", False),
])
def test_number_and_guid_constraints_parse_as_aspnet_core_does(template: str, path: str, matches: bool) -> None:
    """The host matches function routes with ASP.NET Core's constraints: int, long, min, max and range parse with
    int/long.TryParse(NumberStyles.Integer, invariant culture), so a sign is allowed and only ASCII digits count, with
    no digit separators; guid is Guid.TryParse (N, D, B and P forms, no urn:uuid: prefix). Python's int() and
    uuid.UUID accept other strings, and a function trusting its constraint would see values production never passes."""
    assert (RouteTemplate.compile(template).match(path) is not None) is matches


@pytest.mark.parametrize(("value", "matches"), [
    ("1,000", True), ("1,000.25", True), ("1,0,0", True), ("-1.5e3", True), (".5", True), ("5.", True),
    (" 2 ", True), ("Infinity", True), ("-infinity", True), ("+NaN", True),
    ("1_000", False), ("inf", False), ("1.000,5", False), (",1", False), ("1e", False), (".", False),
    ("\u0661", False), ("- 5", False),
])
def test_the_double_and_float_constraints_parse_as_dotnet_does(value: str, matches: bool) -> None:
    """ASP.NET Core's DoubleRouteConstraint (and FloatRouteConstraint) is ``double.TryParse(value, NumberStyles.Float |
    NumberStyles.AllowThousands, CultureInfo.InvariantCulture)``: the invariant thousands separator ``,`` is taken,
    ``_`` is no digit separator, and only ASCII digits count. Python's ``float()`` refuses ``1,000`` and takes
    ``1_000`` and ``inf``: the same URL would reach the function locally and 404 in Azure, or the reverse."""
    for kind in ("double", "float"):
        assert (RouteTemplate.compile(f"amounts/{{v:{kind}}}").match(f"amounts/{value}") is not None) is matches


@pytest.mark.parametrize(("value", "matches"), [
    ("1,000.50", True), ("-1,000.01", True), ("1,0,0", True), ("1,", True), (".5", True), ("5.", True),
    (" 5 ", True), ("5-", True), ("5 - ", True), ("+5", True), ("5\x00", True),
    ("79228162514264337593543950335", True), ("-79228162514264337593543950335.4999", True),
    ("NaN", False), ("Infinity", False), ("-Infinity", False), ("1e5", False), ("1_000", False),
    ("-5-", False), ("- 5", False), (",1", False), (".", False), ("1.000,5", False), ("\u0661", False),
    ("79228162514264337593543950335.5", False), ("-79228162514264337593543950336", False),
])
def test_the_decimal_constraint_parses_as_dotnet_does(value: str, matches: bool) -> None:
    """ASP.NET Core's DecimalRouteConstraint is ``decimal.TryParse(value, NumberStyles.Number,
    CultureInfo.InvariantCulture)``: thousands separators, a sign before or after the number, no exponent, no NaN or
    Infinity (System.Decimal has neither) and nothing from 79228162514264337593543950335.5 on (what does not fit is
    rounded half to even first). Python's ``Decimal()`` takes ``NaN``, ``1e5`` and ``1_000`` and refuses ``1,000``:
    the same URL would reach the function locally and 404 in Azure, or the reverse."""
    assert (RouteTemplate.compile("amounts/{v:decimal}").match(f"amounts/{value}") is not None) is matches


def test_the_length_constraints_count_utf16_code_units_as_dotnet_does() -> None:
    """ASP.NET Core's MinLength, MaxLength and LengthRouteConstraint compare .NET's ``string.Length``: UTF-16 code
    units, so a character outside the BMP (an emoji) counts 2. ``len()`` counts it once, and ``{c:maxlength(3)}``
    would take two emoji locally that Azure refuses (length 4)."""
    emoji = "\U0001F600\U0001F600"
    assert RouteTemplate.compile("codes/{c:maxlength(3)}").match(f"codes/{emoji}") is None
    assert RouteTemplate.compile("codes/{c:length(4)}").match(f"codes/{emoji}") == {"c": emoji}
    assert RouteTemplate.compile("codes/{c:minlength(4)}").match(f"codes/{emoji}") == {"c": emoji}
    assert RouteTemplate.compile("codes/{c:length(1,3)}").match("codes/\u00e9t\u00e9") == {"c": "\u00e9t\u00e9"}


@pytest.mark.parametrize(("value", "matches"), [
    ("true", True), ("FALSE", True), (" true", True), ("\ttrue\n", True), ("false\x00", True),
    ("\u00a0true\u3000", True), ("yes", False), ("1", False), ("t rue", False), ("\x1ctrue", False),
])
def test_the_bool_constraint_parses_as_dotnet_does(value: str, matches: bool) -> None:
    """ASP.NET Core's BoolRouteConstraint is ``bool.TryParse``: ``true`` or ``false`` in any case, with white space
    (``char.IsWhiteSpace``) and NULs around ignored. ``/api/flags/%20true`` matches ``flags/{on:bool}`` in Azure,
    so it must match locally too."""
    assert (RouteTemplate.compile("flags/{on:bool}").match(f"flags/{value}") is not None) is matches


def test_optional_default_and_catch_all() -> None:
    optional = RouteTemplate.compile("hello/{name?}")
    assert optional.match("hello") == {}
    assert optional.match("hello/bob") == {"name": "bob"}
    default = RouteTemplate.compile("page/{n:int=1}")
    assert default.match("page") == {"n": "1"}
    assert default.match("page/3") == {"n": "3"}
    assert RouteTemplate.compile("page/{n:int=x}").match("page") is None  # the host checks a default's constraints
    rest = RouteTemplate.compile("files/{*path}")
    assert rest.match("files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert rest.match("files") == {}


@pytest.mark.parametrize(("template", "path", "expected"), [
    ("files/{name}.{ext}", "files/report.csv", {"name": "report", "ext": "csv"}),
    ("files/{name}.{ext}", "files/report.2024.pdf", {"name": "report.2024", "ext": "pdf"}),
    ("files/{name}.{ext}", "files/.csv", None),  # every parameter takes at least one character
    ("files/{name}.{ext}", "files/report.", None),
    ("docs/{name}.{ext:alpha}", "docs/v1.2.pdf", {"name": "v1.2", "ext": "pdf"}),  # constraints see ASP.NET's split
    ("a/{p}-{q}-{r}", "a/1-2-3-4", {"p": "1-2", "q": "3", "r": "4"}),
    ("a/x{id}y", "a/XaY", {"id": "a"}),  # literals ignore case
    ("a/x{id}y", "a/xxyy", None),  # LastIndexOf takes the last x before the final y: an x is left over
    ("a/pre{p}", "a/xprefoo", None),
])
def test_a_complex_segment_is_matched_right_to_left_as_asp_net_does(template: str, path: str,
                                                                     expected: dict[str, str] | None) -> None:
    """RoutePatternMatcher.MatchComplexSegment: "Complex segments are processed by matching up literal delimiters from
    right to left in a non-greedy way" (ASP.NET Core routing docs): each literal is found with LastIndexOf, each
    parameter takes what lies between, never nothing, and a constraint is checked on that value afterwards. Matched
    left to right, ``report.2024.pdf`` gave ``name='report'``, ``ext='2024.pdf'``, and ``v1.2.pdf`` failed ``alpha``
    (404 where Azure runs the function)."""
    assert RouteTemplate.compile(template).match(path) == expected


@pytest.mark.parametrize(("path", "expected"), [
    ("reports/summary", {"filename": "summary"}),
    ("reports/summary.pdf", {"filename": "summary", "ext": "pdf"}),
    ("reports/a.b.c", {"filename": "a.b", "ext": "c"}),
    ("reports/.x", {"filename": ".x"}),
    ("reports/summary.", None),  # ends with the separator: no second try without it
])
def test_an_optional_parameter_after_a_period_makes_the_period_optional(path: str,
                                                                         expected: dict[str, str] | None) -> None:
    """ASP.NET Core's routing docs: "files/{filename}.{ext?} ... If only a value for filename exists in the URL, the
    route matches because the trailing period (.) is optional"; MatchComplexSegment tries again without the separator
    and the optional last parameter. The dev host made a parameter optional only alone in its segment (404)."""
    assert RouteTemplate.compile("reports/{filename}.{ext?}").match(path) == expected


def test_braces_are_escaped_by_doubling_them() -> None:
    """RoutePatternParser: ``{{`` and ``}}`` are a literal brace, in a literal and inside a parameter, where a regex
    constraint needs them for its quantifiers (the ASP.NET Core routing docs' ``ssn`` example)."""
    ssn = RouteTemplate.compile(r"ssn/{ssn:regex(^\d{{3}}-\d{{2}}-\d{{4}}$)}")
    assert ssn.match("ssn/123-45-6789") == {"ssn": "123-45-6789"}
    assert ssn.match("ssn/1234-45-6789") is None
    literal = RouteTemplate.compile("a{{b}}/{x}")
    assert literal.match("a{b}/1") == {"x": "1"}
    assert literal.match("ab/1") is None


def test_parameters_are_read_as_route_parameter_parser_reads_them() -> None:
    """A ``/``, ``:`` or ``=`` inside a constraint's parentheses belongs to it; ``=`` after them starts the default;
    a name is anything without ``/{}?*`` (``my-id``)."""
    assert RouteTemplate.compile("p/{id:regex(^a/b$|^c$)}").match("p/c") == {"id": "c"}
    assert RouteTemplate.compile("p/{x:regex(^a=b$)}").match("p/a=b") == {"x": "a=b"}
    assert RouteTemplate.compile("p/{x:regex(^a$)=a}").match("p") == {"x": "a"}
    assert RouteTemplate.compile("p/{my-id:int=5}").match("p") == {"my-id": "5"}
    assert RouteTemplate.compile("p/{x:length(1,3):alpha}").match("p/abcd") is None


def _route(name: str, route: str, methods: list[str] | None = None) -> HttpRoute:
    trigger = {"name": "req", "type": "httpTrigger", "route": route, "methods": methods}
    spec = FunctionSpec(name=name, trigger_type="httpTrigger", trigger=trigger, user_function=lambda req: None,
                        is_async=False, accepts_context=False, retry=None)
    return HttpRoute.from_spec(spec)


def test_routes_are_tried_in_function_name_order_not_by_specificity() -> None:
    """As the host adds them to its RouteCollection: by function name, ignoring case; the first match wins."""
    routes = [_route("d", "items/new"), _route("C", "items/{id:int}"), _route("b", "items/{id}"),
              _route("A", "items/{*rest}")]
    assert [r.template.template for r in in_host_order(routes)] == \
        ["items/{*rest}", "items/{id}", "items/{id:int}", "items/new"]


def test_routes_conflict_on_the_same_text_and_a_common_method() -> None:
    """ScriptHost.HttpRoutesConflict: route text compared without '/' at either end and ignoring case; no methods
    means all of them."""
    assert _route("a", "orders", ["GET", "POST"]).conflicts_with(_route("b", "/Orders/", ["post"]))
    assert _route("a", "orders").conflicts_with(_route("b", "orders", ["DELETE"]))
    assert not _route("a", "orders", ["GET"]).conflicts_with(_route("b", "orders", ["POST"]))
    assert not _route("a", "orders/{id}").conflicts_with(_route("b", "orders/{key}"))  # different text
    with pytest.raises(DevHostError, match="conflicts with the route defined by function 'a'"):
        check_routes([_route("a", "orders"), _route("b", "orders")])


@pytest.mark.parametrize("route", ["admin/x", "Administration", " runtime/status", "/admin"])
def test_routes_in_the_hosts_own_space_are_refused(route: str) -> None:
    with pytest.raises(DevHostError, match="built in routes"):
        _route("f", route)


@pytest.mark.parametrize("template, message", [
    ("items/{id:nope}", "constraint 'nope' is not supported"),
    ("items/{*rest}/more", "catch-all parameter must be the last segment"),
    ("items/{id}/{id}", "appears twice"),
    ("items/{id", "unbalanced braces"),
    ("items//x", "empty segment"),
    ("items/{a}{b}", "two parameters next to each other"),
    ("items/{a?}.{b}", "optional parameter must be the last part"),
    ("items/{a}-{b?}", "optional parameter must be the last part, after a period"),
    ("items/x{*rest}", "cannot hold a catch-all parameter"),
    ("items/{id}/{ID}", "appears twice"),
    ("items/{id}}", "unbalanced braces"),
    ("items/{a{b}", "unbalanced braces"),
    ("items/{}", "bad parameter name ''"),
    ("items/{*rest?}", "cannot be optional"),
    ("items/{n=1?}", "cannot have a default value"),
    ("items/a?b", "cannot contain '?'"),
])
def test_bad_templates_name_the_problem(template: str, message: str) -> None:
    with pytest.raises(DevHostError, match=message):
        RouteTemplate.compile(template)


@pytest.mark.parametrize("route", ["days/{d:datetime}", "days/{d:DateTime?}", "days/{d:minlength(8):datetime}"])
def test_the_datetime_constraint_is_refused_at_start_up(route: str) -> None:
    """ASP.NET Core's DateTimeRouteConstraint is ``DateTime.TryParse(value, InvariantCulture)``, which takes
    ``2024/01/15``, ``01/15/2024``, ``15 January 2024``, ``2016-12-31 7:32pm`` and many more forms, and refuses some
    ISO 8601 ones Python takes (``2024-W03-1``). That grammar is too loose to copy faithfully, and a route matching
    other URLs than in Azure would be a silent wrong answer: the dev host refuses to load the function instead,
    naming the function and the route."""
    with pytest.raises(DevHostError, match=r"^function 'days': route '.*': constraint '(?i:datetime)' is not "
                                           r"supported by the dev host: ASP\.NET checks it with DateTime\.TryParse"):
        _route("days", route)
