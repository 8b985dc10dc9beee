"""The operations page in a real browser (Debian's Chromium through selenium and chromedriver) on the local stack.

The stack is the pipeline test's: the Event Hubs and Cassandra emulators, Redis,
PostgreSQL, Azurite and a dev host running ``function_app.py``. Events go in
through Event Hubs; the page must load with no console error, show the tiles of
the status it fetched, show a critical event shortly after it is stored (the
change feed runs every second here, the page polls every second), render every
API value as text (an attribute holding ``<img src=x onerror=alert(1)>`` stays
text), and draw exactly one point per event sent for a searched device.

Screenshots (laptop and phone width) are written to the test's directory, and
to ``SLUICE_DASHBOARD_SCREENSHOTS`` when that names a directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.eventhub import EventData, EventHubProducerClient
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.e2e import test_pipeline
from tests.fixtures.waiting import poll

pipeline = test_pipeline.pipeline
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
XSS = "<img src=x onerror=alert(1)>"
CHANGEFEED_INTERVAL = 1.0



@pytest.fixture
def browser():
    # A browser test that silently skips is no test: a missing Chromium fails it, naming the fix.
    assert CHROMIUM and CHROMEDRIVER, "needs Debian's chromium and chromium-driver: run scripts/install.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _event(device: str, at: datetime, *, severity: str = "info", measurements: dict | None = None,
           attributes: dict | None = None) -> dict:
    return {"event_id": str(uuid.uuid4()), "device_id": device, "event_type": "telemetry",
            "timestamp": at.isoformat().replace("+00:00", "Z"), "severity": severity,
            "measurements": measurements or {}, "attributes": attributes or {}}


def _send(connection: str, hub: str, events: list[dict]) -> None:
    producer = EventHubProducerClient.from_connection_string(connection, eventhub_name=hub)
    with producer:
        by_device: dict[str, list[dict]] = {}
        for event in events:
            by_device.setdefault(event["device_id"], []).append(event)
        for device, group in by_device.items():
            batch = producer.create_batch(partition_key=device)
            for event in group:
                batch.add(EventData(json.dumps(event)))
            producer.send_batch(batch)


def _severe(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _screenshots(driver, tmp_path: Path) -> None:
    target = os.environ.get("SLUICE_DASHBOARD_SCREENSHOTS")
    for name, (width, height) in {"dashboard.png": (1280, 1400), "dashboard-phone.png": (390, 2400)}.items():
        driver.set_window_size(width, height)
        time.sleep(0.5)
        driver.save_screenshot(str(tmp_path / name))
        if target:
            shutil.copy(tmp_path / name, Path(target) / name)


@pytest.mark.timeout(240)
def test_the_page_in_chromium_shows_the_stores_live(pipeline, isolated_eventhub, browser, tmp_path) -> None:
    start, probe, values = pipeline
    values.update(SLUICE_DASHBOARD_REFRESH_SECONDS="1")  # read by the dev host from local.settings.json below
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=2))
    host = start()
    api = f"http://{host.address}/api"
    connection, hub = isolated_eventhub.connection_string, isolated_eventhub.name
    now = datetime.now(UTC).replace(microsecond=0)

    # Background traffic, and the device that will be searched: one temperature per event, distinct values.
    device = f"pump-{uuid.uuid4().hex[:6]}"
    history = [_event(device, now - timedelta(minutes=30 - i), measurements={"temperature": 20.0 + i * 1.5})
               for i in range(12)]
    noise = [_event(f"fan-{i % 5}", now - timedelta(seconds=i), measurements={"rpm": 1000.0 + i}) for i in range(40)]
    _send(connection, hub, history + noise)
    poll(lambda: _get(f"{api}/status")["throughput"]["events_last_5_minutes"] == len(history) + len(noise), 60,
          "every event to be stored")

    browser.get(f"{api}/dashboard")
    poll(lambda: browser.execute_script("return window.sluiceLastStatus !== undefined"), 15, "the first status")
    assert _severe(browser) == [], "console errors on load"

    # Tiles: exactly the page's rendering of the status document it fetched, and that document is the API's.
    # Read in one script: the page redraws every second, and a redraw between separate reads (a slow machine)
    # compared the tiles of one status with the values of the next.
    rendered, expected, tiles = browser.execute_script(
        "const s = window.sluiceLastStatus;"
        "const tiles = {};"
        "for (const el of document.querySelectorAll('[data-tile]')) tiles[el.dataset.tile] = el.innerText;"
        "return [s, window.sluiceTileValues(s), tiles];")
    assert tiles == expected
    status = _get(f"{api}/status")
    assert set(rendered) == set(status)
    assert rendered["lag"] == status["lag"]
    assert rendered["throughput"]["events_last_5_minutes"] == status["throughput"]["events_last_5_minutes"] > 0
    assert tiles["dead_letters"] == str(status["dead_letters"]["last_hour"])
    assert float(tiles["events_per_second"]) == pytest.approx(rendered["throughput"]["events_per_second"], abs=0.05)

    # A critical event produced now appears within the change feed interval + 2 s of being stored, as text.
    critical = _event(f"valve-{uuid.uuid4().hex[:6]}", datetime.now(UTC), severity="critical",
                      measurements={"pressure": 9.5}, attributes={"note": XSS})
    _send(connection, hub, [critical])
    poll(lambda: _stored(probe, critical), 60, "the critical event to be stored", every=0.05)
    stored_at = time.monotonic()
    selector = f'#critical-feed li[data-event-id="{critical["event_id"]}"]'
    item = poll(lambda: browser.find_elements(By.CSS_SELECTOR, selector), 30, "the critical event in the feed",
                 every=0.05)[0]
    shown_after = time.monotonic() - stored_at
    assert shown_after <= CHANGEFEED_INTERVAL + 2.0, f"shown {shown_after:.2f}s after it was stored"
    assert XSS in item.text and critical["device_id"] in item.text
    assert browser.find_elements(By.CSS_SELECTOR, "#critical-feed img") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - raises when no alert() ran

    # Device search: the history chart has one point per event sent, at its time and value.
    box = browser.find_element(By.ID, "device-id")
    box.send_keys(device)
    box.send_keys(Keys.ENTER)
    points = poll(lambda: browser.find_elements(By.CSS_SELECTOR, "#history-chart circle") or None, 15,
                   "the history chart")
    drawn = sorted((int(p.get_attribute("data-t")), float(p.get_attribute("data-v"))) for p in points)
    sent = sorted((int(datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp() * 1000),
                   e["measurements"]["temperature"]) for e in history)
    assert drawn == sent
    assert browser.find_element(By.ID, "measurement").get_attribute("value") == "temperature"
    latest = browser.find_element(By.ID, "device-latest").text
    assert device in latest and history[-1]["timestamp"][:19].replace("T", " ") + " UTC" in latest

    # Keyboard: the search form is reachable and usable without a mouse (every control has a label).
    for control in browser.find_elements(By.CSS_SELECTOR, "input, select"):
        assert browser.find_elements(By.CSS_SELECTOR, f'label[for="{control.get_attribute("id")}"]')

    assert _severe(browser) == [], "console errors"
    _screenshots(browser, tmp_path)


def _stored(probe, event: dict) -> bool:
    """Read Cassandra itself: the lookup route would cache "not found" for a few seconds."""
    keyspace = probe.settings.cassandra.keyspace
    return probe.session.execute(f"SELECT event_id FROM {keyspace}.events_by_id WHERE event_id = %s",
                                 (uuid.UUID(event["event_id"]),)).one() is not None
