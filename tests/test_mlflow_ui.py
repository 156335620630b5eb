"""The sweep's report where users look for it: a real `mlflow ui` on 127.0.0.1, read by a real
headless Chromium (Debian's `chromium` and `chromium-driver`, driven by selenium). Skipped where
no browser is installed; scripts/test.sh installs one where apt-get can."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import FAST_BENCHMARK, Workspace
from tests.services import mlflow_ui

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="no chromium + chromedriver (apt-get install chromium "
                              "chromium-driver)"),
]
# MLflow 3's UI opens in its GenAI mode; runs, their metrics and descriptions are its "model
# training" mode, which this query parameter selects (what the printed links carry)
MODEL_TRAINING = "?workflowType=machine_learning"


def _browser():  # -> selenium WebDriver
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,1400"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def _cells(row) -> list[str]:
    return [cell.text.strip() for cell in row.find_elements("css selector", "th, td")]


def _wait(driver, xpath: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = driver.find_elements("xpath", xpath)
        if found:
            return found[-1]
        time.sleep(0.5)
    raise AssertionError(f"nothing at {xpath} on {driver.current_url}:\n"
                         f"{driver.find_element('tag name', 'body').text[:3000]}")


def _click(driver, xpath: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(_wait(driver, xpath)).click().perform()


def _description_table(driver, header: list[str], timeout_s: float = 60):
    """The rendered table whose header is `header`, once the page has drawn it; each
    'Show more' of the page pressed, so the whole Description is shown."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for button in driver.find_elements("xpath", "//*[text()='Show more']"):
            driver.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", button)
        for table in driver.find_elements("css selector", "table"):
            rows = table.find_elements("css selector", "tr")
            if rows and _cells(rows[0]) == header:
                return [_cells(row) for row in rows]
        time.sleep(0.5)
    raise AssertionError(f"no table headed {header} on {driver.current_url}:\n"
                         f"{driver.find_element('tag name', 'body').text[:3000]}")


def test_the_sweeps_report_is_on_the_parent_runs_page(workspace: Workspace,
                                                      tmp_path: Path) -> None:
    sweep = workspace.run("-m", "model=alexnet", "bs=1,2", "dataset=synthetic",
                          "dataset.synthetic.num_images=8", "model.weights=random",
                          *FAST_BENCHMARK)
    (printed,) = re.findall(r"then open (http://127\.0\.0\.1:5000/\S+)", sweep.stdout)
    runs = workspace.runs()
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId"))
    report = parent.data.tags["mlflow.note.content"].splitlines()
    expected = [[c.strip() for c in line.strip("|").split("|")] for line in report
                if line.startswith("|") and not line.startswith("|-")]
    driver = _browser()
    try:
        with mlflow_ui(workspace.tracking_uri, tmp_path) as ui:
            experiment = parent.info.experiment_id
            # the link the sweep printed, on this test's port: it opens the runs view
            assert printed.endswith(f"/runs/{parent.info.run_id}{MODEL_TRAINING}")
            driver.get(printed.replace("http://127.0.0.1:5000", ui))
            shown = _description_table(driver, expected[0])
            driver.save_screenshot(str(tmp_path / "parent-run.png"))
            # every cell of the report's table, as the terminal printed it
            assert shown == expected
            assert report[0].removeprefix("## ") in driver.find_element("tag name", "body").text

            # a job's page: its own summary, measured beside the published figures
            driver.get(f"{ui}/#/experiments/{experiment}/runs/{child.info.run_id}"
                       f"{MODEL_TRAINING}")
            summary = _description_table(driver, ["", "top-1 %", "top-5 %",
                                                  "throughput (images/s)"])
            driver.save_screenshot(str(tmp_path / "child-run.png"))
            assert [row[0] for row in summary[1:]] == ["measured", "published, pth",
                                                       "difference"]
            assert summary[2][1:3] == ["56.527", "79.068"]

            # docs/tracking.md's view: the runs grouped by model, the chart of throughput_fps_by_bs
            # (throughput_fps at step = bs): one line per model across the batch sizes
            driver.get(f"{ui}/#/experiments/{experiment}/runs{MODEL_TRAINING}")
            _click(driver, "//button[contains(., 'Group by')]")
            _click(driver, "//*[normalize-space(text())='model']")
            driver.get(f"{ui}/#/experiments/{experiment}/runs{MODEL_TRAINING}"
                       "&compareRunsMode=CHART")
            search = _wait(driver, "//input[@placeholder='Search metric charts']")
            search.send_keys("throughput_fps_by_bs")
            _wait(driver, "//*[contains(text(), 'Group by: model')]")
            legend = _wait(driver, "//*[contains(text(), 'alexnet (throughput_fps_by_bs')]")
            assert legend.is_displayed()
            driver.save_screenshot(str(tmp_path / "throughput-by-bs-grouped.png"))
    finally:
        driver.quit()
