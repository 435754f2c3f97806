"""The audit report as a real browser shows it: every section visible, every figure decoded, no fetches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from biasaudit.report import write_audit_html

FIXTURE = Path(__file__).parent / "fixtures" / "audit_example.json"
SECTION_IDS = ["verdict", "summary", "conditions", "ratio-sweep", "reliance", "jsd", "embeddings",
               "gradient-conflict", "notes", "manifest"]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = "install them with: apt-get update && apt-get install -y chromium chromium-driver"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists() and shutil.which(Path(p).name) is None]
    if missing:
        pytest.fail(f"The browser test needs {', '.join(missing)}; {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1200,900"):
        options.add_argument(flag)
    # An explicit driver path keeps Selenium Manager from trying to download one.
    service = Service(executable_path=CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def _open_report(browser, audit: dict, path: Path) -> None:
    write_audit_html(audit, path)
    browser.get(path.resolve().as_uri())


def test_every_section_is_displayed_and_every_figure_decodes(browser, tmp_path):
    """A reader would see a blank section or a broken-image icon where a figure should be."""
    from selenium.webdriver.common.by import By

    _open_report(browser, json.loads(FIXTURE.read_text(encoding="utf-8")), tmp_path / "audit.html")
    for section_id in SECTION_IDS:
        assert browser.find_element(By.ID, section_id).is_displayed(), f"section {section_id} is not displayed"
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 6
    for image in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
        assert image.is_displayed()
    # data: URIs are not listed here; any http(s) request the page made would be, even a failed one.
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []


def test_unavailable_section_is_displayed_with_its_note(browser, tmp_path):
    """A reader would not learn why an analysis is missing if the note were hidden or the section dropped."""
    from selenium.webdriver.common.by import By

    audit = json.loads(FIXTURE.read_text(encoding="utf-8"))
    audit["embeddings"] = {"available": False, "note": "The adapter names no fused feature."}
    _open_report(browser, audit, tmp_path / "audit.html")
    section = browser.find_element(By.ID, "embeddings")
    assert section.is_displayed()
    assert "The adapter names no fused feature." in section.text
    assert len(browser.find_elements(By.TAG_NAME, "img")) == 5
