"""The HTML reports as people see them: opened in headless Debian Chromium (driven by Selenium
through Debian's ChromeDriver), every section present and drawn, no console error, and a
screenshot saved beside each report.

The reports are built by the real report writer from real evaluations kept in the repository:
the embedded base model (reports/baseline-meshmaster) and the tuned embedded run
(reports/embedded-cpu-run/tuned), both on the mesh suite under Mesh Master's options.
"""

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import REPO

from meshtune.evaluate import Comparison, EvalResult, compare, load_result
from meshtune.evaluate.report import WORST_ITEMS, write_report

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Headless as root on a machine with no network and no screen: no sandbox, no GPU, and none of
# the background connections Chromium makes at start (they would be refused here).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
)
BASE = REPO / "reports" / "baseline-meshmaster"
TUNED = REPO / "reports" / "embedded-cpu-run" / "tuned"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "`make browser` installs Chromium"
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, page: Path) -> list[str]:
    """Load a file as a user opens it; the console's errors (uncaught exceptions included)."""
    driver.get_log("browser")  # drop what an earlier page left
    driver.get(page.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def missing(driver, selectors: list[str]) -> list[str]:
    """The selectors that match no visible element."""
    from selenium.webdriver.common.by import By

    gone = []
    for sel in selectors:
        found = driver.find_elements(By.CSS_SELECTOR, sel)
        if not found or not found[0].is_displayed():
            gone.append(sel)
    return gone


def drawn(driver, figure: str) -> dict:
    """An inline chart as laid out: its size, shapes and texts."""
    return driver.execute_script(
        """const svg = document.querySelector(arguments[0] + ' svg');
        const box = svg.getBoundingClientRect();
        return {width: box.width, height: box.height,
                shapes: svg.querySelectorAll('path, rect').length,
                texts: [...svg.querySelectorAll('text')].map(t => t.textContent)};""",
        figure,
    )


def screenshot(driver, page: Path) -> Path:
    """The whole page as a PNG beside it (the window grown to the page's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1200, height)
    png = page.with_suffix(".png")
    driver.save_screenshot(str(png))
    driver.set_window_size(1200, 900)
    return png


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalResult, Comparison, Path]:
    out = tmp_path_factory.mktemp("reports")
    result = load_result(TUNED)
    write_report(out / "tuned", result)
    comp = compare(str(BASE), str(out / "tuned"), out=out / "compare")
    return result, comp, out


def rows(driver, table: str) -> int:
    return driver.execute_script(f"return document.querySelectorAll('#{table} tr').length")


def test_report_html_shows_verdict_criteria_charts_and_worst_items_without_console_errors(
    browser, reports
):
    result, _, out = reports
    page = out / "tuned" / "report.html"
    assert open_page(browser, page) == []
    required = [
        "#verdict",
        "#criteria",
        "#length-histogram svg",
        "#category-bars svg",
        "#worst-items",
    ]
    assert missing(browser, required) == []
    assert browser.find_element("id", "verdict").text == result.verdict.label
    assert rows(browser, "criteria") == 1 + len(result.verdict.criteria)
    histogram = drawn(browser, "#length-histogram")
    assert histogram["width"] > 300 and histogram["shapes"] > 10
    assert "reply characters" in histogram["texts"]
    bars = drawn(browser, "#category-bars")
    assert set(result.summary["categories"]) <= set(bars["texts"])  # one bar label each
    assert rows(browser, "worst-items") == 1 + min(WORST_ITEMS, result.summary["items"])
    png = screenshot(browser, page)
    width, height = png_size(png)
    assert width == 1200 and height > 2000, "the screenshot holds the whole report"


def test_compare_html_shows_both_verdicts_measures_and_category_bars_without_console_errors(
    browser, reports
):
    _, comp, out = reports
    page = out / "compare" / "compare.html"
    assert open_page(browser, page) == []
    required = [
        "#verdict-a",
        "#verdict-b",
        "#measures",
        "#category-bars svg",
        "#improved",
        "#regressed",
    ]
    assert missing(browser, required) == []
    assert browser.find_element("id", "verdict-a").text.endswith(comp.a.verdict.label)
    assert browser.find_element("id", "verdict-b").text.endswith(comp.b.verdict.label)
    assert rows(browser, "measures") == 1 + len(comp.metrics)
    assert rows(browser, "improved") == 1 + len(comp.improved)
    bars = drawn(browser, "#category-bars")
    assert {c["category"] for c in comp.categories} <= set(bars["texts"])
    assert bars["shapes"] >= 2 * len(comp.categories)  # an A and a B bar per category
    assert png_size(screenshot(browser, page))[0] == 1200


def test_the_browser_check_catches_a_console_error_and_a_missing_element(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><body><p id='verdict'>READY</p>"
        "<script>console.error('report broke'); undefinedFunction();</script></body></html>"
    )
    errors = open_page(browser, page)
    assert any("report broke" in e for e in errors)
    assert any("undefinedFunction" in e for e in errors)
    assert missing(browser, ["#verdict", "#criteria"]) == ["#criteria"]
