"""The audit report as a real browser shows it: every section visible, every figure decoded, no fetches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from biasaudit.report import write_audit_html
from biasaudit.results import to_json_text

FIXTURE = Path(__file__).parent / "fixtures" / "audit_example.json"
SECTION_IDS = ["verdict", "bias-measures", "summary", "ceilings", "mute-checks", "groups", "conditions",
               "ratio-sweep", "reliance", "shapley", "interaction", "calibration", "jsd", "embeddings",
               "gradient-conflict", "notes", "manifest"]
# Keys of the bias diagnostics (methods.md section 9); audits written before them lack these.
DIAGNOSTIC_KEYS = ("groups", "carrier", "ceilings", "calibration", "shapley", "interaction", "mute_checks", "verdict", "diagnostics")
FIGURES = 9  # carrier, conditions, sweep, reliance, Shapley, calibration, jsd, embeddings, gradient conflict
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


def _example() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("written_before_diagnostics", [False, True])
def test_every_section_is_displayed_and_every_figure_decodes(browser, tmp_path, written_before_diagnostics):
    """A reader would see a blank section or a broken-image icon where a figure should be."""
    from selenium.webdriver.common.by import By

    audit = _example()
    if written_before_diagnostics:
        for key in DIAGNOSTIC_KEYS:
            del audit[key]
    _open_report(browser, audit, tmp_path / "audit.html")
    for section_id in SECTION_IDS:
        assert browser.find_element(By.ID, section_id).is_displayed(), f"section {section_id} is not displayed"
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == (6 if written_before_diagnostics else FIGURES)
    for image in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
        assert image.is_displayed()
    # data: URIs are not listed here; any http(s) request the page made would be, even a failed one.
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []


def test_unavailable_section_is_displayed_with_its_note(browser, tmp_path):
    """A reader would not learn why an analysis is missing if the note were hidden or the section dropped."""
    from selenium.webdriver.common.by import By

    audit = _example()
    audit["embeddings"] = {"available": False, "note": "The adapter names no fused feature."}
    _open_report(browser, audit, tmp_path / "audit.html")
    section = browser.find_element(By.ID, "embeddings")
    assert section.is_displayed()
    assert "The adapter names no fused feature." in section.text
    assert len(browser.find_elements(By.TAG_NAME, "img")) == FIGURES - 1


def test_conflicting_groups_and_the_carrier_warning_are_visible(browser, tmp_path):
    """The marks a reader scans for must be on screen, not only in the markup."""
    from selenium.webdriver.common.by import By

    audit = _example()
    audit["carrier"].update(dominant="image", differs=True)
    _open_report(browser, audit, tmp_path / "audit.html")
    box = browser.find_element(By.CSS_SELECTOR, "#bias-measures .differs")
    assert box.is_displayed() and "Debias text" in box.text
    tags = browser.find_elements(By.CSS_SELECTOR, "#groups tbody .tag.conflicting")
    assert tags and all(tag.is_displayed() and tag.text == "conflicting" for tag in tags)


def test_a_real_scan_with_every_diagnostic_renders_every_section(browser, tmp_path):
    """The fixture above is written by hand; this page comes from the scan itself (the shortcut test model, every
    diagnostic, both mute choices), so a key the scan writes differently from what the template reads shows here."""
    import importlib.util

    from selenium.webdriver.common.by import By

    from biasaudit.scanning.audit import audit_model
    from biasaudit.scanning.config import ScanConfig

    spec = importlib.util.spec_from_file_location("shortcut_adapter_fixture", FIXTURE.parent / "shortcut_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    adapter = module.ShortcutAdapter()
    config = ScanConfig(split="test", conditions="default,shapley,interaction", mute_compare=True, bootstrap_replicates=100,
                        projection="pca", gradient_batches=1, min_wrong=1)
    audit = json.loads(to_json_text(audit_model(adapter.build_model(), adapter, config=config, checkpoint=None)))
    _open_report(browser, audit, tmp_path / "audit.html")
    for section_id in SECTION_IDS:
        section = browser.find_element(By.ID, section_id)
        assert section.is_displayed(), f"section {section_id} is not displayed"
        if section_id in ("bias-measures", "groups", "ceilings", "calibration", "shapley", "interaction"):
            assert "Not available" not in section.text and "not run" not in section.text, section_id
    assert "bias_cue" in browser.find_element(By.ID, "bias-measures").text
    for image in browser.find_elements(By.TAG_NAME, "img"):
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
