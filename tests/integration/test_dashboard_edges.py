"""Edges of the operations routes (history, state, reports, status): sub-millisecond bounds, ties, page tokens that were
modified, forged or reused on another range, parameters with a trailing newline, stores that hold a query."""

# ruff: noqa: F811  (fixtures imported, then asked for by name)
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration import test_changefeed as cf
from tests.integration.test_dashboard_api import call, dash_env, history  # noqa: F401
from tests.integration.test_state_at import app_env, keyspace, rclient, session, state, store  # noqa: F401


@pytest.mark.timeout(90)
def test_history_from_with_sub_millisecond_precision_excludes_earlier_event(dash_env, store) -> None:
    dash_env()
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    store.write([cf.make_event("subms-1", t)])
    frm = (t + timedelta(microseconds=500)).isoformat()
    status, body = history("subms-1", **{"from": frm, "to": (t + timedelta(seconds=1)).isoformat()})
    assert status == 200
    assert body["events"] == [], f"event at {t.isoformat()} returned for from={frm}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("count", [17, 40])  # one page of 16 more, and more than two pages
def test_state_at_picks_the_largest_event_id_among_more_than_16_ties(app_env, store, count: int) -> None:
    app_env()
    device = f"tie{count}"
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    ties = [cf.make_event(device, t, event_id=uuid.UUID(int=i)) for i in range(1, count + 1)]
    store.write([*ties, cf.make_event(device, t + timedelta(hours=1))])
    winner = max(ties, key=lambda e: str(e.event_id))
    status, body = state(device, t + timedelta(minutes=1))
    assert status == 200 and body["event_id"] == str(winner.event_id), body


@pytest.mark.timeout(90)
def test_a_modified_page_token_signature_is_rejected(dash_env, store) -> None:
    dash_env()
    now = datetime.now(UTC)
    store.write([cf.make_event("mal-1", now - timedelta(minutes=m)) for m in (1, 2)])
    status, body = history("mal-1", limit="1")
    token = body["next_page"]
    assert status == 200 and token
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(token[-1]) ^ 1]  # the low bits of the last character are padding
    for modified in (token[:-1] + last, token + "\n"):
        assert modified != token
        status, body = history("mal-1", limit="1", page=modified)
        assert status == 400 and body["parameter"] == "page", (modified, status, body)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("route", ["report_sites", "report_devices"])
def test_a_site_id_with_a_trailing_newline_is_a_400(dash_env, route) -> None:
    dash_env()
    status, body = call(route, site_id="s1\n")
    assert status == 400 and body["parameter"] == "site_id", (status, body)


@pytest.mark.timeout(60)
def test_a_report_query_postgres_does_not_answer_is_a_503_within_the_read_timeout(dash_env, pg_dsn) -> None:
    """A store that does not answer is a 503 (docs/api.md); SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS bounds each read."""
    import concurrent.futures
    import time

    import psycopg

    dash_env(SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS="1")
    assert call("report_sites")[0] == 200  # connected, migrated
    with psycopg.connect(pg_dsn) as blocker:  # e.g. a migration or VACUUM FULL holding the table
        blocker.execute("LOCK TABLE site_window_stats IN ACCESS EXCLUSIVE MODE")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            future = pool.submit(call, "report_sites")
            try:
                status, body = future.result(timeout=10)
            except concurrent.futures.TimeoutError:
                status, body = None, {}
            took = time.monotonic() - started
            blocker.rollback()  # let the hung read finish
            future.result(timeout=30)
    assert status == 503 and body.get("dependency") == "postgres", f"no answer after {took:.1f}s: {status} {body}"


@pytest.mark.timeout(90)
def test_state_at_a_sub_millisecond_time_before_1970_does_not_return_a_later_event(app_env, store) -> None:
    app_env()
    t = datetime(1969, 6, 1, 12, 0, tzinfo=UTC)
    later = cf.make_event("pre70", t)
    store.write([later, cf.make_event("pre70", datetime.now(UTC) - timedelta(minutes=1))])
    status, body = state("pre70", "1969-06-01T11:59:59.9995Z")  # half a millisecond before the event
    assert status == 404, f"returned the event at {body.get('timestamp')} for at=1969-06-01T11:59:59.9995Z"


@pytest.mark.timeout(90)
def test_a_page_token_never_yields_events_after_to(dash_env, store) -> None:
    dash_env()
    t1 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    t0 = t1 - timedelta(hours=1)
    store.write([cf.make_event("rng-1", t1) for _ in range(3)] + [cf.make_event("rng-1", t0)])
    frm = (t0 - timedelta(minutes=1)).isoformat()
    status, body = history("rng-1", limit="1", **{"from": frm})
    assert status == 200 and body["next_page"]
    to = (t0 + timedelta(minutes=1)).isoformat()
    status, body = history("rng-1", page=body["next_page"], **{"from": frm, "to": to})
    assert status == 200
    assert [e["timestamp"] for e in body["events"] if e["timestamp"] > body["to"]] == [], body


@pytest.mark.timeout(90)
def test_a_status_section_that_does_not_answer_names_its_dependency(dash_env, pg_dsn) -> None:
    """docs/api.md: a section whose store fails, *or does not answer within twice the read timeout*, is
    {"error": ..., "dependency": ...}."""
    import psycopg

    dash_env(SLUICE_DASHBOARD_READ_TIMEOUT_SECONDS="1", SLUICE_LOOKUP_HEALTH_TIMEOUT_SECONDS="10",
             EventHubConnection="")
    assert call("status")[0] == 200  # connected, prepared
    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("LOCK TABLE enrichment_state IN ACCESS EXCLUSIVE MODE")
        try:
            status, body = call("status")
        finally:
            blocker.rollback()
    assert status == 200
    assert body["enrichment"].get("dependency") == "postgres", body["enrichment"]


@pytest.mark.timeout(90)
def test_a_token_forged_with_the_derivable_default_key_is_a_400_not_a_500(dash_env, store) -> None:
    """Without SLUICE_DASHBOARD_TOKEN_KEY and without a store password, the HMAC key is derived only from
    non-secret settings (keyspace, hosts, Redis URL, key prefix): anyone who knows them signs tokens. The decoder
    then trusts the signed position: an out-of-range event time reaches ``from_ms`` and raises OverflowError."""
    import uuid as _uuid

    from shared import bootstrap
    from shared.ports.dashboard import HistoryCursor
    from shared.services.history import TokenSigner, derived_key

    dash_env()
    store.write([cf.make_event("forge-1", datetime.now(UTC) - timedelta(minutes=1))])
    cfg = bootstrap.settings()
    assert cfg.dashboard.token_key is None and cfg.cassandra.password is None and not cfg.cassandra.password_secret
    key = derived_key(cfg.cassandra.keyspace, ",".join(cfg.cassandra.hosts), cfg.redis.url, cfg.redis.key_prefix)
    today = datetime.now(UTC).date()
    forged = TokenSigner(key).encode("forge-1", HistoryCursor(today, (10**18, _uuid.uuid4())))
    status, body = history("forge-1", page=forged)
    assert status == 400 and body["parameter"] == "page", (status, body)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("after", [
    pytest.param("int_event_id", id="event-id-a-number"),
    pytest.param("dict_position", id="position-an-object"),
])
def test_a_token_forged_with_a_malformed_position_is_a_400_not_a_500(dash_env, store, after) -> None:
    """docs/api.md: a malformed page token is a 400 naming ``page``. A token signed with the derivable default key
    (as above) whose position is ``[ms, 123]`` made ``uuid.UUID(123)`` raise AttributeError, and one whose
    position is ``{"0": ms, "1": id}`` raised KeyError: both escaped the decoder as a 500."""
    import json

    from shared import bootstrap
    from shared.services.history import TokenSigner, _b64, derived_key

    dash_env()
    device = f"frg-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    store.write([cf.make_event(device, now)])
    ms = int(now.timestamp() * 1000)
    payload = [now.date().toordinal(), [ms, 123] if after == "int_event_id" else {"0": ms, "1": str(uuid.uuid4())}]
    cfg = bootstrap.settings()
    assert cfg.dashboard.token_key is None
    key = derived_key(cfg.cassandra.keyspace, ",".join(cfg.cassandra.hosts), cfg.redis.url, cfg.redis.key_prefix)
    body = json.dumps(payload, separators=(",", ":")).encode()
    token = f"{_b64(body)}.{_b64(TokenSigner(key)._sign(device, body))}"
    try:
        status, answer = history(device, page=token)
    except Exception as exc:  # the function raised: the Functions host answers 500
        status, answer = 500, {"raised": repr(exc)}
    assert status == 400 and answer.get("parameter") == "page", (status, answer)
