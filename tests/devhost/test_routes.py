"""Route templates of HTTP-triggered functions, as the dev host matches them."""

from __future__ import annotations

import uuid

import pytest

from devhost.errors import DevHostError
from devhost.routes import RouteTemplate


def test_literals_and_parameters() -> None:
    route = RouteTemplate.compile("devices/{device_id}/latest")
    assert route.match("devices/d-1/latest") == {"device_id": "d-1"}
    assert route.match("DEVICES/d-1/Latest/") == {"device_id": "d-1"}
    assert route.match("devices/d-1") is None
    assert route.match("devices/d-1/latest/extra") is None
    assert route.match("devices//latest") is None


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


def test_optional_default_and_catch_all() -> None:
    optional = RouteTemplate.compile("hello/{name?}")
    assert optional.match("hello") == {}
    assert optional.match("hello/bob") == {"name": "bob"}
    default = RouteTemplate.compile("page/{n:int=1}")
    assert default.match("page") == {"n": "1"}
    assert default.match("page/3") == {"n": "3"}
    rest = RouteTemplate.compile("files/{*path}")
    assert rest.match("files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert rest.match("files") == {}


def test_several_parameters_in_one_segment() -> None:
    route = RouteTemplate.compile("files/{name}.{ext}")
    assert route.match("files/report.csv") == {"name": "report", "ext": "csv"}


def test_specific_routes_sort_first() -> None:
    routes = [RouteTemplate.compile(t) for t in ("items/{*rest}", "items/{id}", "items/{id:int}", "items/new")]
    ordered = [r.template for r in sorted(routes, key=lambda r: r.rank)]
    assert ordered == ["items/new", "items/{id:int}", "items/{id}", "items/{*rest}"]


@pytest.mark.parametrize("template, message", [
    ("items/{id:nope}", "constraint 'nope' is not supported"),
    ("items/{*rest}/more", "catch-all parameter must be the last segment"),
    ("items/{id}/{id}", "appears twice"),
    ("items/{id", "unbalanced braces"),
    ("items//x", "empty segment"),
])
def test_bad_templates_name_the_problem(template: str, message: str) -> None:
    with pytest.raises(DevHostError, match=message):
        RouteTemplate.compile(template)
