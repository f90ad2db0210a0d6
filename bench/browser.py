"""A headless Chromium that opens a page, for the dashboard's browser test and the pipeline bench's dashboard
cost: Debian's `chromium` and `chromium-driver` (`make setup` installs both), driven by Selenium. Nothing is
downloaded: browser builds that some tools fetch at install time cannot be fetched here.

    with headless_chromium("http://127.0.0.1:5006/") as browser:
        browser.driver.save_screenshot("page.png")
        browser.cpu_seconds()   # CPU used so far by chromedriver and every Chromium process it started
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from selenium import webdriver

from bench.processes import group_cpu_seconds

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@dataclass(frozen=True)
class Browser:
    driver: webdriver.Chrome
    process_group: int

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) of chromedriver and the browser's processes, all in one process group."""
        return group_cpu_seconds(self.process_group)


@contextmanager
def headless_chromium(url: str | None = None, width: int = 1500, height: int = 1300) -> Iterator[Browser]:
    """Headless Chromium at `url` (if given), quit on exit."""
    for needed, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} is missing: run `make setup` (installs Debian's {package})")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    # A process group of its own: its CPU is measurable, and nothing of it outlives a killed caller's group.
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER), popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    try:
        if url:
            driver.get(url)
        yield Browser(driver, service.process.pid)
    finally:
        driver.quit()
