"""The dashboard in a real browser (headless Chromium from Debian, driven by Selenium) over the session's stack:
readings published on MQTT show up as tiles and chart values, a machine that degrades raises an alert on the
timeline, and a scored reading reaches the page within 2 s."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from bench.browser import headless_chromium
from contract import HEALTHY, ID_FIELD, SENSOR_FIELDS, TS_FIELD
from runtime.settings import SCORED_TOPIC
from world import sensor_readings

pytestmark = pytest.mark.stack

HEALTHY_MACHINES = (910_001, 910_002, 910_003)
DEGRADING = 910_004
# A querySelector that looks into every shadow root (Panel renders each component in one).
FIND = """
const find = (root, selector) => {
  const hit = root.querySelector(selector);
  if (hit) return hit;
  for (const element of root.querySelectorAll('*')) {
    const inner = element.shadowRoot && find(element.shadowRoot, selector);
    if (inner) return inner;
  }
  return null;
};
"""
# A column of a named ColumnDataSource in the page's Bokeh document.
COLUMN = """
for (const doc of window.Bokeh ? window.Bokeh.documents : []) {
  const source = doc.get_model_by_name(arguments[0]);
  if (source) {
    const data = source.data;
    const column = data instanceof Map ? data.get(arguments[1]) : data[arguments[1]];
    return column ? Array.from(column) : null;
  }
}
return null;
"""


def readings(machine: int, wear: float, count: int, first_us: int) -> list[tuple[str, bytes, bool]]:
    """MQTT messages of `count` readings of a machine at `wear` (0 new .. 1 worn out), one a second."""
    rows = sensor_readings(np.full(count, wear), np.full(count, 0.9 if wear > 0.5 else 0.2),
                           np.random.default_rng(machine))
    return [(f"iot/{machine}", json.dumps({ID_FIELD: machine, TS_FIELD: first_us + i * 1_000_000,
                                          **{name: row[name].item() for name in SENSOR_FIELDS}}).encode(), False)
            for i, (_, row) in enumerate(rows.iterrows())]


@pytest.fixture(scope="module")
def dashboard_job(pipeline) -> Iterator[None]:
    """A streaming job (scoring, iot.scored and alerts) serving its metrics where the stack's dashboard looks."""
    job = pipeline.start_job(f"dashboard_job_{time.time_ns()}", "--metrics-port",
                             str(pipeline.cfg.streaming_metrics_port))
    try:
        yield
    finally:
        pipeline.stop(job)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium from Debian's packages (bench/browser.py: Selenium downloads nothing)."""
    with headless_chromium() as chromium:
        yield chromium.driver


def deep(driver: webdriver.Chrome, selector: str) -> WebElement | None:
    return driver.execute_script(FIND + "return find(document, arguments[0]);", selector)


def text(driver: webdriver.Chrome, selector: str) -> str:
    """The text of the element (read in the page: the dashboard redraws its parts, so an element found in one call
    may be gone by the next)."""
    return driver.execute_script(FIND + "const found = find(document, arguments[0]); "
                                 "return found ? found.textContent : '';", selector)


def column(driver: webdriver.Chrome, source: str, name: str) -> list | None:
    return driver.execute_script(COLUMN, source, name)


def wait(driver: webdriver.Chrome, what: str, condition, timeout_s: float = 180):
    """Poll `condition(driver)` until it is true; an element redrawn under its feet is just another try."""
    return WebDriverWait(driver, timeout_s, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition, what)


def test_readings_and_an_alert_show_up_live(pipeline, dashboard_job, browser, tmp_path):
    settings = pipeline.settings()
    browser.get(settings["DASHBOARD_URL"])
    wait(browser, "the page's flow", lambda d: deep(d, '[data-stage="gateway"]'), timeout_s=60)

    first_us = time.time_ns() // 1000 - 20_000_000
    degrading = readings(DEGRADING, 0.05, 5, first_us) + readings(DEGRADING, 0.95, 10, first_us + 5_000_000)
    pipeline.publish([message for machine in HEALTHY_MACHINES for message in readings(machine, 0.05, 10, first_us)]
                     + degrading)

    for machine in (*HEALTHY_MACHINES, DEGRADING):
        wait(browser, f"the tile of machine {machine}", lambda d, m=machine: deep(d, f'[data-sensor="{m}"]'))
    wait(browser, f"machine {DEGRADING} in the select",
         lambda d: deep(d, "select") and str(DEGRADING) in [o.text for o in Select(deep(d, "select")).options])
    Select(deep(browser, "select")).select_by_visible_text(str(DEGRADING))
    published = [json.loads(payload)["sensor_1"] for _, payload, _ in degrading]
    wait(browser, f"machine {DEGRADING}'s readings on the charts",
         lambda d: column(d, "readings", "sensor_1") == published)
    wait(browser, f"machine {DEGRADING} likely to break",
         lambda d: deep(d, f'.tile.likely_to_break[data-sensor="{DEGRADING}"]'))
    wait(browser, f"an alert of machine {DEGRADING} on the timeline",
         lambda d: str(DEGRADING) in (column(d, "alerts", "machine") or [])
         and deep(d, f'tr[data-alert^="{DEGRADING}-"]'))
    assert all(deep(browser, f'.tile.healthy[data-sensor="{machine}"]') for machine in HEALTHY_MACHINES)
    wait(browser, "the job's stage up", lambda d: deep(d, '.stage.up[data-stage="job"]'), timeout_s=30)

    screenshot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")


def test_a_scored_reading_reaches_the_page_within_2_s(pipeline, browser):
    """The dashboard's own latency: a record produced straight to iot.scored, until its tile is drawn."""
    browser.get(pipeline.settings()["DASHBOARD_URL"])
    wait(browser, "the feed reading Kafka", lambda d: "reading Kafka" in text(d, ".status"), timeout_s=60)
    machine = 910_100
    topic, payload, _ = readings(machine, 0.05, 1, time.time_ns() // 1000)[0]
    record = {**json.loads(payload), "is_healthy": HEALTHY, "model_version": 1}
    pipeline.produce([(str(machine).encode(), json.dumps(record).encode())], topic=SCORED_TOPIC)
    produced = time.monotonic()
    wait(browser, f"the tile of machine {machine}", lambda d: deep(d, f'[data-sensor="{machine}"]'), timeout_s=30)
    assert time.monotonic() - produced <= 2.0
