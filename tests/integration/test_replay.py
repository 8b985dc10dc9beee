"""``sluice replay`` against the Cassandra emulator, Redis, PostgreSQL and Azurite, through the CLI's ``main``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from shared import bootstrap
from sluice.__main__ import main
from tests.integration import test_changefeed as cf
from tests.integration.test_dashboard_api import dash_env  # noqa: F401 - fixture
from tests.integration.test_rebuild import delete_prefix, dump

app_env, keyspace, session, store, rclient = cf.app_env, cf.keyspace, cf.session, cf.store, cf.rclient


def feed_row(session, keyspace: str):
    return session.execute(f"SELECT paging_state, watermark, version, start_time FROM {keyspace}.feed_state").all()


@pytest.mark.timeout(120)
def test_replay_rederives_redis_and_the_windows_without_moving_the_feed(dash_env, store, session, keyspace,  # noqa: F811
                                                                        rclient, redis_prefix, pg_dsn, capsys):
    dash_env()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    events = cf.spread(40, devices=4, start=now - timedelta(minutes=8), critical_every=3)
    store.write(events)
    bootstrap.changefeed_service().run()
    cache = bootstrap.redis_change_sink()
    before, position = dump(rclient, cache), feed_row(session, keyspace)
    with psycopg.connect(pg_dsn) as conn:
        watermark = conn.execute("SELECT * FROM enrichment_state").fetchall()
    assert before and position

    delete_prefix(rclient, redis_prefix)
    assert main(["replay", "--from", (now - timedelta(minutes=10)).isoformat(),
                 "--to", (now + timedelta(minutes=5)).isoformat(), "--no-progress"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert figures["redis_events"] == 40 and figures["window_events"] == 40 and figures["windows"] >= 1
    assert dump(rclient, cache) == before
    assert feed_row(session, keyspace) == position  # the change feed's own position did not move
    with psycopg.connect(pg_dsn) as conn:
        ids = {row[0] for row in conn.execute("SELECT event_id::text FROM enriched_events")}
        assert conn.execute("SELECT * FROM enrichment_state").fetchall() == watermark  # nor the watermark
    assert ids == {str(e.event_id) for e in events}


def test_replay_rejects_an_empty_range(app_env, capsys):
    app_env()
    assert main(["replay", "--from", "2026-11-23T10:00:00Z", "--to", "2026-11-23T10:00:00Z"]) == 2
    assert "--to" in capsys.readouterr().err
