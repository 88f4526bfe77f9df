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
    assert "regression prompts are within tolerance" in report
    assert page.locator("table.eval-table[data-kind=flagged] .badge.fixed").count() == 2
    # loss, margins, accuracies; then per epoch: flagged passing, preferring, within tolerance
    assert page.locator("#charts svg").count() == 6

    with page.expect_download() as download_info:
        page.click("#download-link")
    saved = tmp_path / "adapter.zip"
    download_info.value.save_as(saved)
    names = set(zipfile.ZipFile(saved).namelist())
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names

    page.goto(f"{live_server.url}/jobs/project/shop/")
    assert "Succeeded" in page.inner_text("#jobs")
    assert not csp_errors, csp_errors


def test_the_job_page_keeps_polling_when_the_reward_margin_goes_negative(
    live_server, page, curator, annotator, demo_model, settings
):
    """The first minutes of a real job: the margin dips below zero, and the page (and its
    htmx poll) must keep drawing rather than answer 500."""
    from training.services import job_claim, job_enqueue, job_record_progress

    settings.PATCHWISE_BASE_MODEL = str(demo_model)
    project = make_project(demo_model, judge=annotator.user, flagged=2, heldout=1, regression=1)
    job = job_enqueue(project=project, actor=curator.user, config={})
    job_claim(job_id=job.pk, worker_name="test-worker")  # running, as a worker would have it

    def progress(step: int, margins: list[float]) -> None:
        series = [
            {
                "step": i,
                "loss": 0.69 - m / 10,
                "rewards/margins": m,
                "rewards/accuracies": 0.5,
                "eval/flagged_fixed": 0.5,
                "eval/preferring": 0.5,
                "eval/within_tolerance": 1.0,
            }
            for i, m in enumerate(margins, 1)
        ]
        job_record_progress(
            job_id=job.pk,
            progress={"phase": "train", "step": step, "total": 20, "eta_seconds": 30},
            latest_metrics=series[-1],
            metrics_series=series,
        )

    progress(2, [0.0, -0.25])
    server_errors = []
    page.on("response", lambda r: server_errors.append(r.url) if r.status >= 500 else None)
    login(page, live_server, curator)
    page.goto(f"{live_server.url}/jobs/{job.pk}/")
    assert "step 2 of 20" in page.inner_text("#job-progress-text")
    margins_chart = page.locator("#charts svg[aria-label='rewards/margins']")
    assert "last -0.25" in margins_chart.text_content()
    assert margins_chart.locator("line[stroke-dasharray]").count() == 0  # not crossing yet

    progress(3, [0.0, -0.25, 0.4])  # now the series crosses zero: the poll must survive it
    page.wait_for_selector("#job-progress-text:text('step 3 of 20')")
    progress(4, [0.0, -0.25, 0.4, -1.75])
    page.wait_for_selector("#job-progress-text:text('step 4 of 20')")
    assert "last -1.75" in margins_chart.text_content()
    assert margins_chart.locator("line[stroke-dasharray]").count() == 1
    assert page.locator("#charts svg").count() == 6  # three per step, three per epoch
    # Every chart is drawn whole, inside the card, none on top of another.
    card = page.locator("#charts").bounding_box()
    boxes = [svg.bounding_box() for svg in page.locator("#charts svg").all()]
    for box in boxes:
        assert card["x"] <= box["x"] and box["x"] + box["width"] <= card["x"] + card["width"]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            apart_x = a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
            apart_y = a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"]
            assert apart_x or apart_y, (a, b)
    assert not server_errors, server_errors


def test_curator_writes_checks_on_a_case_patches_and_sees_the_verdict_marked(
    gpu_worker, live_server, page, curator, annotator, demo_model
):
    from annotate.models import Case

    gpu_worker()
    project = make_project(demo_model, judge=annotator.user, flagged=2, heldout=1, regression=2)
    case = Case.objects.filter(project=project, split="train").order_by("id").first()
    login(page, live_server, curator)
    page.goto(f"{live_server.url}/p/shop/cases/")
    page.click(f"a[href='/p/shop/cases/{case.pk}/'] >> nth=0")

    # typing previews the checks on the case's answers (htmx), before anything is saved
    page.fill("#id_must_include", "30 days")
    page.fill("#id_must_not_include", "7 days")
    page.wait_for_selector("#checks-preview mark.hit-exclude")
    preview = page.locator("#checks-preview")
    assert preview.locator("mark.hit-include").first.inner_text() == "30 days"
    assert preview.locator("mark.hit-exclude").first.inner_text() == "7 days"
    assert preview.locator(".badge.good").count() == 1  # the better answer passes
    page.click("#save-checks")
    page.wait_for_selector(".messages :text('saved')")

    page.goto(f"{live_server.url}/jobs/project/shop/")
    page.click("#patch-button")
    page.wait_for_url("**/jobs/*/")
    page.wait_for_selector("#job-status:text('Succeeded')", timeout=300_000)

    flagged = page.locator("table.eval-table[data-kind=flagged]")
    row = flagged.locator("tr", has=page.locator("mark.hit-include"))
    assert row.count() == 1
    assert row.locator("mark.hit-include").inner_text() == "30 days"
    assert row.locator(".badge.fixed").count() == 1
    assert "contains '30 days', does not contain '7 days'" in row.inner_text()
    assert "by their checks" in page.inner_text("#report")
    page.click("#verdict-rules summary")
    assert "must include" in page.inner_text("#verdict-rules")

    # the regression filter narrows the table in place
    page.click("#regression-filter a[data-status='changed']")
    page.wait_for_selector("#regression-filter a.current[data-status='changed']")
    assert page.locator("#regression-rows tr[data-status]").count() == 0
