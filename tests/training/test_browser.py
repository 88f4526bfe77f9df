"""A curator patches the demo model in a real Chromium: click, watch, read, download."""

import zipfile

import pytest

from tests.conftest import login
from tests.training.conftest import make_project

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.slow]


def test_curator_clicks_patch_watches_progress_reads_report_and_downloads(
    gpu_worker, live_server, page, curator, annotator, demo_model, tmp_path
):
    gpu_worker()
    make_project(demo_model, judge=annotator.user, flagged=2, heldout=1, regression=2)
    csp_errors = []
    page.on(
        "console",
        lambda msg: csp_errors.append(msg.text) if "Content Security" in msg.text else None,
    )

    login(page, live_server, curator)
    page.goto(f"{live_server.url}/jobs/project/shop/")
    page.click("#patch-button")
    page.wait_for_url("**/jobs/*/")
    job_url = page.url

    # The page updates itself (htmx) until the bar is full; no reload by the test.
    page.wait_for_selector("#job-status:text('Succeeded')", timeout=300_000)
    assert page.url == job_url
    assert page.locator("#job-progress").get_attribute("value") == "100"
    assert "100 %" in page.inner_text("#job-progress-text")

    report = page.inner_text("#report")
    assert "All 2 flagged prompts are fixed." in report
    assert "regression prompts are unchanged" in report
    assert page.locator("table.eval-table[data-kind=flagged] .badge.fixed").count() == 2
    assert page.locator("#charts svg").count() == 3

    with page.expect_download() as download_info:
        page.click("#download-link")
    saved = tmp_path / "adapter.zip"
    download_info.value.save_as(saved)
    names = set(zipfile.ZipFile(saved).namelist())
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names

    page.goto(f"{live_server.url}/jobs/project/shop/")
    assert "Succeeded" in page.inner_text("#jobs")
    assert not csp_errors, csp_errors
