"""What the operations page shows in each state of the stores: outages, old events, failed, slow and long
searches, phone width, small rates, answers cut off or slow, ages that move, and the headers of its JSON routes.

Every test runs the real dev host with the real dashboard blueprint and the real services behind it
(``StatusService``, ``HistoryService``, ``ReportService``) over in-memory fakes of the project's ports
(``tests/fixtures/dashboard_page.py``), and drives the real page in Debian's Chromium where the browser matters. The
page polls every second there.
The whole-pipeline test of the page is ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.fixtures.dashboard_page import FUNCTION_KEY, CuttingProxy, DashboardHost, chromium, chromium_phone
from tests.fixtures.waiting import poll

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def phone() -> Iterator[webdriver.Chrome]:
    driver = chromium_phone()
    yield driver
    driver.quit()


def _open(browser, host: DashboardHost | CuttingProxy, page: str = "dashboard") -> None:
    browser.get(f"{host.api}/{page}")
    poll(lambda: browser.execute_script("return window.sluiceLastStatus !== undefined"), 15, "the first status")


def _search(browser, device: str) -> None:
    box = browser.find_element(By.ID, "device-id")
    box.clear()
    box.send_keys(device)
    box.send_keys(Keys.ENTER)


def _text(browser, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def _anchor(ago: timedelta = timedelta(minutes=1)) -> str:
    return (datetime.now(UTC) - ago).replace(microsecond=0).isoformat()


def _until_older_than(at: datetime, seconds: float) -> None:
    """Sleeps until ``at`` is ``seconds`` old, as the browser's clock sees it, then 2.5 s more: a few more polls."""
    time.sleep(max(0.0, (at + timedelta(seconds=seconds) - datetime.now(UTC)).total_seconds()) + 2.5)


def _critical(event_id: str, at: datetime) -> dict:
    return {"event_id": event_id, "device_id": "valve-7", "event_type": "telemetry", "severity": "critical",
            "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "critical": True,
            "measurements": {"pressure": 9.5}, "attributes": {}, "schema_version": 1}


# -- a store in error is said, never shown as "no data" ------------------------------------------------------------

def test_a_site_report_that_cannot_be_read_is_said_not_shown_empty(dashboard: DashboardHost, browser) -> None:
    """When ``/api/reports/sites`` answers 503 (PostgreSQL down), the section names the error; it never states
    "No enriched windows yet.", which would tell the operator that enrichment produced nothing."""
    dashboard.set(fail={"sites": "connection refused"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"{dashboard.api}/reports/sites?limit=30", timeout=10)
    assert answer.value.code == 503
    _open(browser, dashboard)
    problem = poll(lambda: _text(browser, "sites-error"), 10, "the site report's error")
    assert problem == "site report unavailable: postgres unavailable: connection refused", problem
    section = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=sites-title]").text
    assert "No enriched windows yet." not in section, section


def test_status_sections_in_error_say_so_and_name_their_dependency(dashboard: DashboardHost, browser) -> None:
    """A section of ``/api/status`` in error (``{"error", "dependency"}``) shows "error" in its tiles, with the
    error as their title, never a dash (no data yet) or "n/a" (lag not configured); the error is listed under the
    tiles and its dependency (storage, Event Hubs: not among the health checks) is named in the header. A
    throughput section that fails clears the chart and says why, instead of keeping the last caption."""
    _open(browser, dashboard)
    poll(lambda: "top of the chart" in _text(browser, "throughput-scale"), 5, "the throughput caption")
    dashboard.set(fail={"dead_letters": "the storage account did not answer", "lag": "cannot read checkpoints",
                        "throughput": "read timed out"})
    poll(lambda: "error" in browser.execute_script("return window.sluiceLastStatus.dead_letters"), 10,
          "a status with the failed sections")
    for tile, words in {"dead_letters": "dead letters: storage unavailable: the storage account did not answer",
                        "lag": "lag: eventhubs unavailable: cannot read checkpoints",
                        "events_per_second": "throughput: cassandra unavailable: read timed out"}.items():
        node = browser.find_element(By.CSS_SELECTOR, f'[data-tile="{tile}"]')
        assert node.text == "error" and node.get_attribute("title") == words, (tile, node.text,
                                                                              node.get_attribute("title"))
    problems = _text(browser, "status-problems")
    assert "the storage account did not answer" in problems and "cannot read checkpoints" in problems, problems
    deps = _text(browser, "deps")
    assert "storage error" in deps and "eventhubs error" in deps, deps
    assert _text(browser, "throughput-scale") == "throughput: cassandra unavailable: read timed out"
    assert browser.find_elements(By.CSS_SELECTOR, "#throughput-chart polyline") == []

    dashboard.reset()  # the stores answer again: the problems go, the tiles show figures
    poll(lambda: _text(browser, "status-problems") == "", 10, "the problems to clear")
    assert browser.find_element(By.CSS_SELECTOR, '[data-tile="dead_letters"]').text == "0"


def test_a_lag_whose_checkpoints_cannot_be_read_is_unknown_not_zero(dashboard: DashboardHost, browser) -> None:
    """When KEDA cannot read the checkpoint of a partition (lag ``status: "checkpoint_unreadable"``: that partition
    counted in neither ``partitions`` nor ``total``, docs/api.md) the autoscaler is on its fallback and that
    partition's lag is unknown. The Lag tile is marked as a problem and never shows a healthy figure: "unknown"
    when no partition could be read (``total`` 0), the readable partitions' total with "+" otherwise; the problem,
    naming each partition and why, is listed under the tiles."""
    dashboard.set(lag_partitions={}, lag_unreadable={"0": "no 'sequencenumber' metadata", "1": "no blob"})
    _open(browser, dashboard)
    tile = browser.find_element(By.CSS_SELECTOR, '[data-tile="lag"]')
    poll(lambda: tile.text == "unknown", 10, "the unknown lag")
    assert "down" in (tile.get_attribute("class") or "").split(), tile.get_attribute("class")
    problems = _text(browser, "status-problems")
    assert ("lag: KEDA cannot read the checkpoint of partition 0 (no 'sequencenumber' metadata), partition 1 "
            "(no blob)") in problems, problems
    assert browser.execute_script("return window.sluiceTileValues(window.sluiceLastStatus).lag") == "unknown"

    dashboard.set(lag_partitions={"1": 4}, lag_unreadable={"0": "no 'sequencenumber' metadata"})
    poll(lambda: tile.text == "4+", 10, "the lag of the readable partition, marked as a lower bound")
    assert "down" in (tile.get_attribute("class") or "").split()
    assert "partition 0 (no 'sequencenumber' metadata)" in _text(browser, "status-problems")

    dashboard.reset()  # every checkpoint readable again: the normal figure, no problem
    poll(lambda: tile.text == "7", 10, "the lag of both partitions")
    assert "down" not in (tile.get_attribute("class") or "").split() and _text(browser, "status-problems") == ""


def test_a_store_still_being_connected_to_is_said_connecting_not_down(dashboard: DashboardHost, browser) -> None:
    """Just after a worker starts, its first check of Cassandra is still connecting (the driver reads the whole
    schema first): the header says "cassandra connecting", not in the colour of a store that is down, and a
    section that timed out on that same connect does not turn it into "error"."""
    _open(browser, dashboard)
    poll(lambda: "cassandra up" in _text(browser, "deps"), 5, "a first status")
    dashboard.set(dependencies={"cassandra": {"status": "connecting", "error": "no answer within 1s; the first "
                                                                                "connection is still being made"}},
                  fail={"throughput": "no answer within 2s"})
    poll(lambda: "cassandra connecting" in _text(browser, "deps"), 10, "the connecting state")
    classes = browser.execute_script("return Object.fromEntries([...document.getElementById('deps').children]"
                                     ".map((s) => [s.textContent.trim(), s.className]))")
    assert classes == {"redis up": "up", "cassandra connecting": "pending"}, classes

    dashboard.reset()
    poll(lambda: "cassandra up" in _text(browser, "deps"), 10, "cassandra to be up")


def test_a_failed_critical_feed_marks_its_rows_with_when_they_were_read(dashboard: DashboardHost, browser) -> None:
    """When ``/api/critical`` fails (Redis down) the events read before stay, greyed (``stale``) and marked with the
    time they were read, and their ages still move: an event read 45 s after it happened must not say "under a
    minute ago" for as long as the outage lasts -- an operator would read an old critical event as one happening
    now. The error is a live region (``role=status``): its text is set again only when it changes, not on every
    failed poll (each would be announced)."""
    happened = datetime.now(UTC) - timedelta(seconds=45)
    dashboard.set(critical_events=[_critical("00000000-0000-4000-8000-0000000000c1", happened)])
    _open(browser, dashboard)
    poll(lambda: "under a minute ago" in _text(browser, "critical-feed"), 10, "the critical event")
    dashboard.set(fail={"critical": "connection refused"})
    poll(lambda: _text(browser, "critical-error"), 10, "the critical feed's error")
    browser.execute_script("window.criticalErrorChanges = 0; new MutationObserver((m) => {"
                           " window.criticalErrorChanges += m.length; }).observe("
                           "document.getElementById('critical-error'),"
                           " {childList: true, characterData: true, subtree: true})")
    _until_older_than(happened, 70)
    feed, problem = _text(browser, "critical-feed"), _text(browser, "critical-error")
    assert "under a minute ago" not in feed and "1 min ago" in feed, f"a 70 s old event still shows: {feed!r}"
    assert browser.execute_script("return document.getElementById('critical-feed').classList.contains('stale')")
    assert re.fullmatch(r"critical events unavailable: redis unavailable: connection refused; the events above were "
                        r"read at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC and may be out of date\.", problem), problem
    changes = browser.execute_script("return window.criticalErrorChanges")
    assert changes == 0, f"the unchanged error was set again {changes} times: each is announced"

    dashboard.reset()  # Redis answers again: the error goes, the rows are current
    poll(lambda: not browser.execute_script("return document.getElementById('critical-feed').classList"
                                            ".contains('stale')"), 10, "the feed to be current again")
    assert _text(browser, "critical-error") == ""


_CONTRAST = """
function rgba(text) {
  const m = text.match(/[\\d.]+/g).map(Number);
  return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1];
}
function lum([r, g, b]) {
  const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
}
const node = arguments[0];
let opacity = 1, bg = null;
for (let n = node; n && n.nodeType === 1; n = n.parentElement) {
  const style = getComputedStyle(n);
  opacity *= Number(style.opacity);
  const b = rgba(style.backgroundColor);
  if (!bg && b[3] > 0) bg = b;
}
bg = bg || [255, 255, 255, 1];
const fg = rgba(getComputedStyle(node).color), a = fg[3] * opacity;
const shown = [0, 1, 2].map((i) => fg[i] * a + bg[i] * (1 - a));
const [hi, lo] = [lum(shown), lum(bg)].sort((x, y) => y - x);
return (hi + 0.05) / (lo + 0.05);
"""


def test_critical_feed_says_no_events_while_its_first_read_is_still_in_flight(dashboard: DashboardHost,
                                                                               browser) -> None:
    """Redis answers /api/critical slowly (8 s here; up to the 20 s request timeout): until the first answer the
    section must not state "No critical events yet.", a fact nobody has read (an operator opening the page during
    an incident would be told there are none); it says the feed is being read."""
    dashboard.set(critical_events=[_critical("00000000-0000-4000-8000-000000000001",
                                             datetime.now(UTC).replace(microsecond=0))], critical_sleep=8)
    _open(browser, dashboard)  # the status answers at once; the feed's first read is in flight
    time.sleep(1)
    section = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=critical-title]").text
    assert "No critical events yet." not in section, (
        f"while /api/critical has not answered yet the section reads {section!r}")
    assert "Reading the critical events" in section, section
    poll(lambda: "valve-7" in _text(browser, "critical-feed"), 20, "the feed's first answer")
    assert "Reading the critical events" not in browser.find_element(
        By.CSS_SELECTOR, "section[aria-labelledby=critical-title]").text


def test_greyed_critical_events_stay_readable(dashboard: DashboardHost, browser) -> None:
    """When ``/api/critical`` fails the events read before stay on the page, greyed (``stale``) and marked: still
    information to be read, so their text keeps the WCAG AA contrast of 4.5:1 (small text) against the panel, the
    opacity of every ancestor included. The greyed rows are told apart by colour and italics, not by opacity."""
    at = datetime.now(UTC) - timedelta(seconds=30)
    dashboard.set(critical_events=[_critical("00000000-0000-4000-8000-00000000c0c1", at)])
    _open(browser, dashboard)
    poll(lambda: browser.find_elements(By.CSS_SELECTOR, "#critical-feed li"), 10, "the critical event")
    dashboard.set(fail={"critical": "connection refused"})
    poll(lambda: browser.execute_script(
        "return document.getElementById('critical-feed').classList.contains('stale')"), 10, "the greyed feed")
    ratios = {what: round(browser.execute_script(_CONTRAST, browser.find_element(By.CSS_SELECTOR, selector)), 2)
              for what, selector in (("time", "#critical-feed li time"), ("device", "#critical-feed li .dev"),
                                     ("age", "#critical-feed li .age"))}
    assert all(r >= 4.5 for r in ratios.values()), f"contrast of the greyed critical events below 4.5:1: {ratios}"
    style = browser.execute_script("return getComputedStyle(document.querySelector('#critical-feed li .dev'))"
                                   ".fontStyle")
    assert style == "italic", style


def test_a_status_answer_cut_off_mid_body_is_a_failed_poll(dashboard_proxy: CuttingProxy, browser) -> None:
    """A 200 of ``/api/status`` whose body is cut off (a pod stopped mid-answer, a gateway dropping the connection)
    or is not the JSON expected is a failed poll, as a 503 is: the figures are greyed, the header says since when
    they are and the problem is listed -- never the old figures kept as current. The header's dependencies are as
    old as the figures: they are greyed too, not green "up"."""
    _open(browser, dashboard_proxy)
    poll(lambda: _text(browser, "updated").startswith("updated "), 5, "a first status")
    assert "redis up" in _text(browser, "deps")
    browser.get_log("browser")  # drop what came before
    dashboard_proxy.cut.add("/api/status")
    try:
        poll(lambda: browser.execute_script("return document.body.classList.contains('status-stale')")
             and _text(browser, "updated").startswith("not updated since"), 10, "the page to say so")
    except AssertionError:
        errors = sorted({e["message"][-120:] for e in browser.get_log("browser") if e["level"] == "SEVERE"})
        pytest.fail("after 10 s of cut-off status answers the page still shows its figures as current: header "
                    f"{_text(browser, 'updated')!r}, problems {_text(browser, 'status-problems')!r}, "
                    f"console {errors}")
    problems = _text(browser, "status-problems")
    assert problems.startswith("status unavailable: ") and "the figures shown are of" in problems, problems
    colours = browser.execute_script("const deps = document.getElementById('deps');"
                                     " return [getComputedStyle(deps).color,"
                                     " ...[...deps.children].map((s) => getComputedStyle(s).color)]")
    assert len(colours) > 1 and set(colours[1:]) == {colours[0]}, f"the header's dependencies keep their colours: " \
        f"{colours[1:]} (the header's text is {colours[0]})"

    dashboard_proxy.cut.clear()
    poll(lambda: _text(browser, "updated").startswith("updated "), 10, "the status to be current again")
    assert not browser.execute_script("return document.body.classList.contains('status-stale')")


def test_a_slow_critical_feed_does_not_hold_back_the_status(dashboard: DashboardHost, browser) -> None:
    """The status and the critical feed are shown apart, each as it answers: a critical feed that answers slowly (a
    Redis that takes connections but answers late; the page gives up on a read only after 20 s) must not hold
    back the status that has arrived -- the very status that says Redis is in trouble. Here Redis (the cache
    section) fails and the critical feed takes 8 s: the cache tile says "error" within a few seconds. The feed's
    polls still never overlap: the next starts after the previous one ended."""
    _open(browser, dashboard)
    tile = '[data-tile="hit_rate"]'
    poll(lambda: browser.find_element(By.CSS_SELECTOR, tile).text.endswith("%"), 5, "the cache hit rate")
    dashboard.set(critical_sleep=8, fail={"cache": "redis did not answer within 2s"})
    changed = time.monotonic()
    # the route is not what is slow: /api/status answers at once while a critical read is in flight
    slow = threading.Thread(target=lambda: urllib.request.urlopen(f"{dashboard.api}/critical", timeout=30).read())
    slow.start()
    started = time.monotonic()
    with urllib.request.urlopen(f"{dashboard.api}/status", timeout=30) as answer:
        assert json.loads(answer.read())["cache"].get("dependency") == "redis"
    assert time.monotonic() - started < 3, "the dev host itself held /api/status behind /api/critical"
    try:
        poll(lambda: browser.find_element(By.CSS_SELECTOR, tile).text == "error", 4,
             "the cache tile to show the Redis error while the critical feed is slow")
    except AssertionError:
        poll(lambda: browser.find_element(By.CSS_SELECTOR, tile).text == "error", 20, "the cache tile at all")
        pytest.fail(f"the status saying Redis failed was shown only {time.monotonic() - changed:.1f}s later, "
                    "once the slow critical feed had answered")
    finally:
        slow.join(timeout=30)  # 8 s, in which the page has started a slow read of its own
        dashboard.set(critical_sleep=0)
    reads = poll(lambda: browser.execute_script(
        "const reads = performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/critical'));"
        " const slow = reads.find((e) => e.duration > 5000);"
        " return slow && reads.some((e) => e.startTime > slow.responseEnd)"
        " && reads.map((e) => [e.startTime, e.responseEnd]).sort((a, b) => a[0] - b[0])"), 20,
        "a slow critical read and one after it")
    assert all(start >= end for (_, end), (start, _) in pairwise(reads)), \
        f"the feed's reads overlap: {reads}"


def test_the_feed_shows_the_current_copy_of_each_critical_event_the_route_answers(dashboard: DashboardHost,
                                                                                    browser) -> None:
    """The page added only event ids it had not shown (``seenCritical``) and never dropped one: when
    ``/api/critical`` answered a corrected copy of an event already on the page (same id, other content), or stopped
    listing it (corrected into one that is not critical), the page kept showing the superseded copy until 50 newer
    events pushed it out. Each poll now shows the events as the route answers them; an unchanged event keeps its
    item (the live region announces additions only, so it is not announced again)."""
    at = datetime.now(UTC) - timedelta(minutes=1)
    corrected, dropped, kept = ("00000000-0000-4000-8000-0000000c0aa1", "00000000-0000-4000-8000-0000000c0aa2",
                                "00000000-0000-4000-8000-0000000c0aa3")
    dashboard.set(critical_events=[{**_critical(corrected, at), "measurements": {"pressure": 95.5}},
                                   _critical(dropped, at - timedelta(seconds=1)),
                                   _critical(kept, at - timedelta(seconds=2))])
    _open(browser, dashboard)
    poll(lambda: "pressure=95.5" in _text(browser, "critical-feed"), 15, "the first copy in the feed")
    browser.execute_script(f"document.querySelector('#critical-feed li[data-event-id=\"{kept}\"]').dataset.mark = 1")
    dashboard.set(critical_events=[{**_critical(corrected, at), "measurements": {"pressure": 9.75}},
                                   _critical(kept, at - timedelta(seconds=2))])  # corrected; dropped no longer
    poll(lambda: "pressure=9.75" in _text(browser, "critical-feed"), 10, "the corrected copy")
    items = browser.find_elements(By.CSS_SELECTOR, "#critical-feed li")
    assert [item.get_attribute("data-event-id") for item in items] == [corrected, kept]
    assert "pressure=95.5" not in _text(browser, "critical-feed")
    assert items[1].get_attribute("data-mark") == "1", "an unchanged event's item was drawn again"
    dashboard.set(critical_events=[])
    poll(lambda: not browser.find_elements(By.CSS_SELECTOR, "#critical-feed li"), 10, "an empty feed")
    assert "No critical events yet." in _text(browser, "critical-empty")


# -- times -----------------------------------------------------------------------------------------------------------

def test_critical_events_show_their_date_in_utc_and_their_age(dashboard: DashboardHost, browser) -> None:
    """``/api/critical`` returns the newest events whatever their age: each shows its date and time in UTC
    (as the device panel does) and its age, so one of three days ago never reads like one of a minute ago."""
    now = datetime.now(UTC).replace(microsecond=0)
    old, new = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
    dashboard.set(critical_events=[_critical(new, now), _critical(old, now - timedelta(days=3))])
    _open(browser, dashboard)
    items = poll(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#critical-feed li")) == 2 and
                  browser.find_elements(By.CSS_SELECTOR, "#critical-feed li"), 10, "both critical events")
    shown = {item.get_attribute("data-event-id"): item for item in items}
    three_days_ago = (now - timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert shown[old].find_element(By.TAG_NAME, "time").text == three_days_ago
    assert shown[new].find_element(By.TAG_NAME, "time").text == now.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert "3 days ago" in shown[old].text and "under a minute ago" in shown[new].text


def test_the_age_of_a_devices_last_event_moves_while_the_page_is_open(dashboard: DashboardHost, browser) -> None:
    """The device panel shows "last event <time> (<age>)": the age moves on every poll, as the critical feed's do.
    A device whose last event was 45 s old when searched must not read "(under a minute ago)" an hour later while
    the page stays open: a device that went silent would look alive."""
    anchor = _anchor(timedelta(seconds=45))
    dashboard.set(devices={"pump-s": {"count": 3, "step_seconds": 10, "anchor": anchor, "measurement": "temperature"}})
    _open(browser, dashboard)
    _search(browser, "pump-s")
    poll(lambda: "under a minute ago" in _text(browser, "device-latest"), 10, "pump-s's latest state")
    _until_older_than(datetime.fromisoformat(anchor), 70)
    latest = _text(browser, "device-latest")
    assert "under a minute ago" not in latest and "1 min ago" in latest, f"a 70 s old last event is shown as {latest!r}"


# -- device search -------------------------------------------------------------------------------------------------

def test_a_failed_search_leaves_nothing_of_the_previous_device(dashboard: DashboardHost, browser) -> None:
    """After a search fails (404, 503), no value, measurement list, description or chart of the device shown
    before remains, and choosing a measurement redraws nothing."""
    dashboard.set(devices={"pump-a": {"count": 12, "step_seconds": 60, "anchor": _anchor(),
                                      "measurement": "temperature"}})
    _open(browser, dashboard)
    _search(browser, "pump-a")
    poll(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#history-chart circle")) == 12, 15, "pump-a's chart")
    _search(browser, "pump-unknown")
    poll(lambda: _text(browser, "device-error"), 10, "the error of the unknown device")
    assert "pump-unknown" in _text(browser, "device-error")
    desc = _text(browser, "history-desc")
    browser.execute_script("document.getElementById('measurement').dispatchEvent(new Event('change'))")
    assert "temperature" not in desc and "pump-unknown" in desc, desc
    assert browser.find_elements(By.CSS_SELECTOR, "#history-chart circle") == []
    assert browser.find_elements(By.CSS_SELECTOR, "#measurement option") == []
    assert _text(browser, "device-latest") == ""


def test_a_history_longer_than_the_pages_read_is_said_to_be_partial(dashboard: DashboardHost, browser) -> None:
    """The page reads at most 20 pages of 1000 events; a device with more in the last 24 hours (22,000 here,
    one every 3 s) gets the newest 20,000 drawn and a description that says the chart is partial, with the
    time span and range of what is drawn."""
    count = 22_000
    dashboard.set(devices={"chatty": {"count": count, "step_seconds": 3, "anchor": _anchor(), "measurement": "rpm"}})
    _open(browser, dashboard)
    _search(browser, "chatty")
    poll(lambda: "values of" in _text(browser, "history-desc"), 120, "the chart")
    drawn = browser.execute_script("return document.querySelectorAll('#history-chart circle').length")
    desc = _text(browser, "history-desc")
    assert drawn == 20_000
    assert "Partial: only the newest 20,000 events" in desc, desc
    assert re.match(r"20000 values of rpm from \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC to .* UTC, lowest 0, highest 49\.",
                    desc), desc


@pytest.mark.timeout(240)
def test_history_pages_of_one_search_read_one_range(dashboard: DashboardHost, browser) -> None:
    """The pages of one search read the range the first answer names (its ``from`` and ``to``). Was: the page
    followed ``next_page`` without ``from`` or ``to``, so each page's request read its own default range (its own
    "now" minus 24 h; the token is only a position): while a slow store answered the pages the window's start moved
    on, and the oldest events of the first page's range were never drawn, the chart not marked partial."""
    step = 10
    anchor = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)
    count = 9000  # 25 hours, one every 10 s: 9 pages of 1000 in the last 24 hours, fewer than the 20 read
    dashboard.set(devices={"drift-1": {"count": count, "step_seconds": step, "anchor": anchor.isoformat(),
                                       "measurement": "temperature"}},
                  history_sleep={"drift-1": 4.0})  # a slow store: each day partition read takes 4 s
    _open(browser, dashboard)
    searched = datetime.now(UTC)
    _search(browser, "drift-1")
    poll(lambda: "values of" in _text(browser, "history-desc"), 200, "the history chart")
    window_start = searched - timedelta(hours=24)
    expected = sum(1 for i in range(count) if anchor - timedelta(seconds=step * i) >= window_start)
    drawn = browser.execute_script("return document.querySelectorAll('#history-chart circle').length")
    desc = _text(browser, "history-desc")
    assert "Partial" not in desc, desc
    # one event of tolerance: the first request leaves a few milliseconds after `searched`
    assert drawn >= expected - 1, (f"the last 24 hours hold {expected} events of drift-1 when the search starts; "
                                   f"the chart draws {drawn}: {desc}")


def test_a_device_without_a_latest_state_still_shows_its_history(dashboard: DashboardHost, browser) -> None:
    """``/latest`` answers 404 for a device whose newest event a correction moved to another device (docs/api.md),
    though its history holds events. Was: that 404 failed the whole search (an error, no chart). The page draws the
    history, says the device has no latest state, and names the range it read; a device with no history either
    still fails the search (``test_a_failed_search_leaves_nothing_of_the_previous_device``)."""
    dashboard.set(devices={"moved-1": {"count": 6, "step_seconds": 60, "anchor": _anchor(),
                                       "measurement": "temperature"}},
                  no_latest=["moved-1"])
    _open(browser, dashboard)
    _search(browser, "moved-1")
    poll(lambda: "values of" in _text(browser, "history-desc") or _text(browser, "device-error"), 15,
         "moved-1's chart or error")
    assert _text(browser, "device-error") == ""
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history-chart circle")) == 6
    latest = _text(browser, "device-latest")
    assert "moved-1" in latest and "no latest state" in latest, latest
    desc = _text(browser, "history-desc")
    moment = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
    assert re.match(rf"6 values of temperature from .* UTC, lowest 0, highest 5\. Read from {moment} to {moment}\.$",
                    desc), desc


def test_a_history_of_large_finite_values_is_drawn(dashboard: DashboardHost, browser) -> None:
    """Ingest accepts any finite measurement, so -1e308 and 1e308 are values of one measurement: their difference
    overflows to Infinity. The chart scales without overflow: every point has finite coordinates, the lowest value
    at the bottom and the highest at the top."""
    dashboard.set(devices={"big-1": {"count": 4, "step_seconds": 60, "anchor": _anchor(), "measurement": "pressure",
                                     "values": [-1e308, 1e308, 0.0, 5e307]}})
    _open(browser, dashboard)
    _search(browser, "big-1")
    poll(lambda: "values of pressure" in _text(browser, "history-desc"), 15, "the history chart")
    dots = browser.execute_script(
        "return [...document.querySelectorAll('#history-chart circle')].map((c) => [Number(c.dataset.v),"
        " c.getAttribute('cx'), c.getAttribute('cy')])")
    line = browser.find_element(By.CSS_SELECTOR, "#history-chart polyline").get_attribute("points")
    assert len(dots) == 4 and "NaN" not in line and "Infinity" not in line, (dots, line)
    y = {v: float(cy) for v, _, cy in dots}
    assert all(str(float(c)) not in ("nan", "inf") for _, cx, cy in dots for c in (cx, cy)), dots
    assert y[-1e308] == 186 and y[1e308] == 14 and y[-1e308] > y[0.0] > y[5e307] > y[1e308], y


def test_a_newer_search_replaces_one_still_in_flight(dashboard: DashboardHost, browser) -> None:
    """A search started while another is still reading pages (a slow store, Enter pressed again) wins: the
    older one's later pages are dropped, so the chart holds only the device asked for last."""
    dashboard.set(devices={"slow-a": {"count": 2500, "step_seconds": 2, "anchor": _anchor(), "measurement": "level"},
                           "fast-b": {"count": 5, "step_seconds": 60, "anchor": _anchor(), "measurement": "level"}},
                  history_sleep={"slow-a": 1.0})
    _open(browser, dashboard)
    _search(browser, "slow-a")
    time.sleep(0.5)  # slow-a's latest is shown, its first history page is being read
    _search(browser, "fast-b")
    poll(lambda: "fast-b" in _text(browser, "device-latest"), 10, "fast-b's latest state")
    time.sleep(6)  # slow-a's three pages would have come back by now
    drawn = browser.execute_script("return document.querySelectorAll('#history-chart circle').length")
    assert drawn == 5, f"fast-b has 5 events; its chart shows {drawn} points"
    assert "slow-a" not in _text(browser, "device-latest")


@pytest.mark.parametrize("device", [".", ".."])
def test_a_device_id_of_dots_is_searched_under_its_own_route(dashboard: DashboardHost, browser, device) -> None:
    """"." and ".." are valid device ids (event.schema.json, parse_device_id). A browser removes the path segments
    ".", "..", "%2E" and "%2E%2E" as dot-segments, so "/devices/" + encodeURIComponent(id) asked /api/devices/latest
    or /api/latest and the operator got an error for a device with events; the page sends them encoded twice. The
    host (Kestrel) removes "%2E" and "%2E%2E" too, once it has decoded the path: "%252E" is what reaches the route."""
    dashboard.set(devices={device: {"count": 3, "step_seconds": 60, "anchor": _anchor(), "measurement": "temperature"}})
    encoded = device.replace(".", "%252E")
    with urllib.request.urlopen(f"{dashboard.api}/devices/{encoded}/events", timeout=10) as answer:
        body = json.load(answer)
    assert body["device_id"] == device and len(body["events"]) == 3, body  # the route itself serves the device
    _open(browser, dashboard)
    _search(browser, device)
    poll(lambda: _text(browser, "device-error") or "values of" in _text(browser, "history-desc"), 15,
         "the search's outcome")
    assert _text(browser, "device-error") == "", _text(browser, "device-error")
    assert "3 values of temperature" in _text(browser, "history-desc"), _text(browser, "history-desc")


def test_a_device_id_pasted_with_a_trailing_space_is_searched(dashboard: DashboardHost, browser) -> None:
    """searchDevice trims the id, so a space pasted with an id copied from a log or a table is meant to be
    harmless; the input's ``pattern`` was checked on the untrimmed value first, so Enter did nothing at all (no
    request, no error on the page). A bad id is said under the input, which is marked invalid."""
    dashboard.set(devices={"pump-t": {"count": 3, "step_seconds": 60, "anchor": _anchor(),
                                      "measurement": "temperature"}})
    _open(browser, dashboard)
    _search(browser, "pump-t ")
    poll(lambda: "values of" in _text(browser, "history-desc") or _text(browser, "device-error"), 10,
         "the search's outcome")
    assert "3 values of temperature" in _text(browser, "history-desc"), (
        f"Enter on 'pump-t ' did nothing: description {_text(browser, 'history-desc')!r}, "
        f"error {_text(browser, 'device-error')!r}")
    _search(browser, "pump t")
    poll(lambda: _text(browser, "device-error"), 5, "the bad id's error")
    box = browser.find_element(By.ID, "device-id")
    assert '"pump t"' in _text(browser, "device-error"), _text(browser, "device-error")
    assert box.get_attribute("aria-invalid") == "true" and box.get_attribute("aria-describedby") == "device-error"


def test_a_slow_history_store_does_not_hide_the_latest_state_already_read(dashboard: DashboardHost,
                                                                         browser) -> None:
    """The latest state (the lookups, Redis) answers; the history (Cassandra) gives no answer within the page's
    20 s. The page had drawn the latest state, then its catch cleared the whole device: the operator was left
    with only "no answer within 20 s" and lost the one figure that was read, the device's current state."""
    dashboard.set(devices={"pump-h": {"count": 3, "step_seconds": 60, "anchor": _anchor(),
                                      "measurement": "temperature"}},
                  history_sleep={"pump-h": 12.0})  # per day partition: the 24 h range spans two, > 20 s
    _open(browser, dashboard)
    _search(browser, "pump-h")
    poll(lambda: "pump-h" in _text(browser, "device-latest"), 10, "pump-h's latest state")
    poll(lambda: _text(browser, "device-error"), 40, "the history's timeout")
    assert "temperature" in _text(browser, "device-latest"), (
        f"after the history timed out ({_text(browser, 'device-error')!r}) the latest state read before is gone: "
        f"{_text(browser, 'device-latest')!r}")
    assert "history" in _text(browser, "device-error") and "history" in _text(browser, "history-desc")


# -- the site table -----------------------------------------------------------------------------------------------

def _site(i: int, day: str, zone: str = "UTC") -> dict:
    return {"site_id": f"site-{i:02d}", "site_name": f"Site {i:02d}", "region": "eu", "timezone": zone,
            "local_day": day, "event_count": 100 + i, "critical_count": 0, "critical_ratio": 0.0,
            "peak_active_devices": 3, "active_windows": 10, "first_window_start": None, "last_window_end": None}


def test_the_site_table_says_when_rows_were_left_out(dashboard: DashboardHost, browser) -> None:
    """The table shows the newest 30 rows of ``/api/reports/sites``, whose answer does not say whether there are
    more: the page asks for one more, and when it comes the table says that rows are left out (here the 31st site of
    today, and every earlier day). With 30 rows or fewer it says nothing of the kind."""
    today = datetime.now(UTC).date().isoformat()
    dashboard.set(sites=[_site(i, today) for i in range(1, 32)])
    _open(browser, dashboard)
    poll(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#sites tbody tr")) == 30, 15, "the site rows")
    more = poll(lambda: _text(browser, "sites-more"), 10, "the note of the rows left out")
    assert "first 30 rows" in more and "not shown" in more, more
    assert "Site 31" not in _text(browser, "sites")


def test_the_site_table_shows_the_time_zone_of_each_day(dashboard: DashboardHost, browser) -> None:
    """``report_site_daily`` cuts days in each site's own time zone, while the rest of the page is in UTC: each row
    names its site's zone beside its day, and the table says its days are the sites' local days."""
    now = datetime.now(UTC)
    dashboard.set(sites=[_site(1, (now + timedelta(hours=14)).date().isoformat(), "Pacific/Kiritimati"),
                         _site(2, now.date().isoformat(), "Europe/London")])
    _open(browser, dashboard)
    poll(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#sites tbody tr")) == 2, 15, "the site rows")
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.find_elements(By.CSS_SELECTOR, "#sites tbody tr")]
    assert [r[:2] for r in rows] == [[(now + timedelta(hours=14)).date().isoformat(), "Pacific/Kiritimati"],
                                     [now.date().isoformat(), "Europe/London"]], rows
    assert "local day" in _text(browser, "sites").lower() and "not UTC" in _text(browser, "sites")
    assert _text(browser, "sites-more") == ""


# -- layout ----------------------------------------------------------------------------------------------------------

def test_at_phone_width_nothing_is_wider_than_the_screen(dashboard: DashboardHost, phone) -> None:
    """At 390 px the page is one column with no sideways scrolling, even with measurement and attribute names of
    the longest valid kind (the select, the latest-state list and the description wrap or shrink)."""
    name = "compressor_discharge_temperature_sensor_2_rolling_mean_celsius"  # 62 characters
    attribute = "installation_reference_of_the_upstream_isolation_valve_a"
    dashboard.set(devices={"pump-l": {"count": 3, "step_seconds": 60, "anchor": _anchor(), "measurement": name,
                                      "attributes": {attribute: "v-12"}}})
    _open(phone, dashboard)
    assert phone.execute_script("return document.documentElement.scrollWidth") <= 390
    _search(phone, "pump-l")
    poll(lambda: len(phone.find_elements(By.CSS_SELECTOR, "#history-chart circle")) == 3, 15, "the chart")
    width = phone.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide on a 390px screen"


def test_a_long_device_id_in_a_search_error_stays_within_a_phone_screen(dashboard: DashboardHost, phone) -> None:
    """The lookups' 404 (and 400) message repeats the device id (``device '<id>' not found``), which may be 128
    characters without a space: the error wraps, the page does not scroll sideways at 390 px."""
    _open(phone, dashboard)
    device = "pump-" + "0123456789abcdef" * 7 + "-unknown-xx"
    assert len(device) <= 128
    _search(phone, device)
    poll(lambda: _text(phone, "device-error"), 10, "the search's error")
    width = phone.execute_script("return document.documentElement.scrollWidth")
    error = _text(phone, "device-error")
    assert device in error.replace("\n", "")
    assert width <= 390, f"the page is {width}px wide on a 390px screen after the error {error!r}"


# -- numbers -------------------------------------------------------------------------------------------------------

def test_the_throughput_caption_names_the_value_at_the_top_of_the_chart(dashboard: DashboardHost, browser) -> None:
    """The chart has no axis: its caption names the value drawn at the top edge, also below 1 event/s, where
    the top stays at 1 event/s (0.1 events/s is drawn at a tenth of the height, and the caption says 1)."""
    dashboard.set(bucket_events=6)  # 0.1 events/s in each closed 60 s bucket; 6 / elapsed in the open one
    second = datetime.now(UTC).second
    if not 8 <= second <= 45:  # the open bucket is older than 6 s, so below 1 event/s, for the whole test
        time.sleep((8 - second) % 60)
    _open(browser, dashboard)
    caption, points, series = browser.execute_script(  # one poll's rendering: the page redraws every second
        "return [document.getElementById('throughput-scale').textContent,"
        " document.querySelector('#throughput-chart polyline.l1').getAttribute('points'),"
        " window.sluiceLastStatus.throughput.series]")
    top = float(re.search(r"top of the chart: ([0-9.]+) events/s", caption).group(1))
    ys = [float(p.split(",")[1]) for p in points.split()]
    peak = max(b["events_per_second"] for b in series)
    assert 0 < peak < 1, series
    peak_y = min(ys)  # the highest point drawn, the peak
    # the value at the top edge of the plot area (y = 14), from the peak's drawn height above the bottom (y = 186)
    drawn_top = peak * (200 - 2 * 14) / (200 - 14 - peak_y)
    assert top == pytest.approx(drawn_top, rel=0.05), \
        f"caption says the top is {top} events/s; the chart's top is {drawn_top:.2f} events/s"


def test_a_small_non_zero_rate_is_never_shown_as_zero(dashboard: DashboardHost, browser) -> None:
    """One event in the last minute is 0.02 events/s: the tile shows "0.02", not "0.0"."""
    dashboard.set(bucket_events=1)
    _open(browser, dashboard)
    status = browser.execute_script("return window.sluiceLastStatus")
    assert status["throughput"]["events_last_minute"] > 0
    shown = browser.find_element(By.CSS_SELECTOR, '[data-tile="events_per_second"]').text
    assert status["throughput"]["events_per_second"] > 0
    assert float(shown) == pytest.approx(status["throughput"]["events_per_second"]), shown


def test_a_cache_hit_rate_near_its_ends_is_not_rounded_to_them(dashboard: DashboardHost, browser) -> None:
    """toFixed(1) showed 99.96 % as "100.0 %" (no miss at all) and 0.04 % as "0.0 %"."""
    _open(browser, dashboard)
    shown = browser.execute_script("return [0.9996, 0.0004, 1, 0, 0.5].map("
                                   "(r) => window.sluiceTileValues({cache: {hit_rate: r}}).hit_rate)")
    assert shown == [">99.9 %", "<0.1 %", "100.0 %", "0.0 %", "50.0 %"], shown


def test_a_function_key_given_as_Code_reaches_the_routes_the_page_polls(keyed_dashboard_host: DashboardHost,
                                                                        browser) -> None:
    """The host takes the key from ``code`` whatever the case of its name, so ``/api/dashboard?Code=<key>`` serves
    the page; the page read it with ``URLSearchParams.get("code")``, found none, and polled every route without it:
    "status unavailable: HTTP 401" though the key was right."""
    browser.get(f"{keyed_dashboard_host.api}/dashboard?Code={FUNCTION_KEY}")
    assert "Sluice operations" in browser.title  # the host took the key: the page itself was served
    try:
        poll(lambda: browser.execute_script("return window.sluiceLastStatus !== undefined"), 15, "the first status")
    except AssertionError:
        pytest.fail(f"the page polls its routes without the key: {_text(browser, 'status-problems')!r}")


# -- address ---------------------------------------------------------------------------------------------------------

def test_the_page_reads_its_routes_whatever_the_case_of_its_address(dashboard: DashboardHost, browser) -> None:
    """Routes are case-insensitive (the Functions host's and the dev host's): the page opened as
    ``/api/Dashboard`` finds its routes beside it (``/api/status``), not under ``/api/Dashboard/``."""
    _open(browser, dashboard, "Dashboard")
    assert _text(browser, "updated").startswith("updated "), _text(browser, "status-problems")


# -- headers -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/status", "/critical", "/reports/sites?site_id=%3Cscript%3E",
                                  "/devices/pump-x/events"])
def test_json_routes_send_nosniff(dashboard: DashboardHost, path: str) -> None:
    """Every JSON answer of the page's routes, 200 or 400 (which echoes the bad input), carries
    ``X-Content-Type-Options: nosniff``, as the page itself does."""
    try:
        response = urllib.request.urlopen(f"{dashboard.api}{path}", timeout=10)
    except urllib.error.HTTPError as error:
        response = error
    assert response.headers.get("Content-Type", "").startswith("application/json")
    assert response.headers.get("X-Content-Type-Options") == "nosniff", dict(response.headers)
    json.loads(response.read())
