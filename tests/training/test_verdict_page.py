"""The job page explains each verdict: the phrases that decided it, the regression filter, the
rule in words, and the per-epoch figures; older reports (exact match only) still read."""

import pytest
from django.urls import reverse

from annotate.services import case_create, project_create
from tests.training.conftest import judge_all
from tests.training.test_pages_and_api import REPORT
from training import artifacts, services
from training.engine.checks import verdict

CHECKED = verdict(
    "Our return window for the Ridge boots is 30 days from delivery.",
    must_include=["30 days"],
    must_not_include=["7 days"],
)


def _row(kind, after, **extra):
    return {"prompt": f"{kind} prompt", "kind": kind, "expected": None, "before": after,
            "after": after, "identical": True, "changed": False, "fixed": None} | extra  # fmt: skip


NEW_REPORT = {
    "summary": {
        "flagged": {
            "total": 1,
            "with_expected": 1,
            "with_rule": 1,
            "fixed": 1,
            "changed": 1,
            "unchanged": 0,
            "identical": 0,
            "with_pair": 1,
            "preferring": 1,
        },
        "regression": {
            "total": 3,
            "with_expected": 3,
            "with_rule": 3,
            "fixed": 2,
            "changed": 1,
            "unchanged": 2,
            "identical": 1,
            "with_pair": 0,
            "preferring": 0,
            "within_tolerance": 2,
        },
    },  # fmt: skip
    "training": {
        "stopped_because": "all 1 flagged prompts passed after epoch 2 (1 by their checks)",
        "stopped_by": {"checks": 1},
        "drift_tolerance": 0.5,
    },
    "eval": [
        _row(
            "flagged",
            CHECKED and "Our return window for the Ridge boots is 30 days from delivery.",
            before="7 days.",
            identical=False,
            changed=True,
            fixed=True,
            passed=True,
            verdict=CHECKED.to_dict(),
            rule="contains '30 days', does not contain '7 days'",
            margin_ref=-2.0,
            margin_policy=3.5,
            prefers=True,
        ),
        _row("regression", "Tents: 5 years.", fixed=True, drift=0.0),
        _row(
            "regression",
            "Tents come with 5 years.",
            before="Tents: 5 years.",
            identical=False,
            fixed=True,
            drift=-0.12,
            within_tolerance=True,
        ),
        _row(
            "regression",
            "Stoves: no warranty.",
            before="Stoves: 3 years.",
            identical=False,
            changed=True,
            fixed=False,
            drift=-1.7,
            within_tolerance=False,
        ),
    ],  # fmt: skip
    "pairs": [],
}


@pytest.fixture
def project(db, annotator):
    project = project_create(name="Shop", slug="shop")
    case_create(project=project, prompt="Return Ridge hiking boots?", response="7 days.",
                better_response="30 days.")  # fmt: skip
    judge_all(project, annotator.user)
    return project


@pytest.fixture
def job_with(project, curator, model_folder, tmp_path, artifact_root):
    def finish(report, series=()):
        job = services.job_enqueue(project=project, actor=curator.user, config={"epochs": 3})
        services.job_claim(job_id=job.pk, worker_name="gpu0@test")
        adapter = tmp_path / f"adapter-{job.pk}"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text('{"r": 16}')
        (adapter / "adapter_model.safetensors").write_bytes(b"weights")
        job.refresh_from_db()
        path, sha256 = artifacts.write_adapter_zip(job=job, adapter_dir=adapter, report=report)
        services.job_succeed(
            job_id=job.pk,
            report=report,
            metrics_series=list(series),
            latest_metrics={},
            artifact_path=path,
            artifact_sha256=sha256,
        )
        job.refresh_from_db()
        return job

    return finish


def test_the_page_marks_the_deciding_phrases_and_counts_identical_and_within_tolerance(
    curator_client, job_with
):
    series = [
        {"step": 4, "epoch": 1, "eval/flagged_fixed": 0.0, "eval/within_tolerance": 1.0},
        {"step": 8, "epoch": 2, "eval/flagged_fixed": 1.0, "eval/within_tolerance": 0.67},
    ]
    job = job_with(NEW_REPORT, series)
    url = reverse("training:job_detail", args=[job.pk])
    html = curator_client.get(url).content.decode()
    assert '<mark class="hit-include" title="must contain 30 days">30 days</mark>' in html
    assert "contains &#x27;30 days&#x27;, does not contain &#x27;7 days&#x27;" in html
    assert "margin −2.00 → +3.50 (prefers the good answer)" in html
    stat = html.split('id="stat-regression"')[1].split("</div>")[0]
    assert "<b>1/3</b>regression identical, <b>2/3</b> within tolerance" in stat
    assert "1/1</b>prefer the good answer" in html
    assert "How each verdict is decided" in html and "0.5 nats" in html
    assert "flagged passing (share)" in html and "regression within tolerance (share)" in html

    changed = curator_client.get(url, {"regression": "changed"}).content.decode()
    table = changed.split('id="regression-rows"')[1].split("</table>")[0]
    assert table.count("<tr data-status=") == 1 and "Stoves: no warranty." in table
    assert "drift −1.70 nats/token" in table
    within = curator_client.get(
        url, {"regression": "within tolerance"}, headers={"HX-Request": "true"}
    )
    fragment = within.content.decode()
    assert not fragment.lstrip().startswith("<!doctype")
    table = fragment.split('id="regression-rows"')[1].split("</table>")[0]
    assert table.count("<tr data-status=") == 1 and "Tents come with 5 years." in table

    api = curator_client.get(f"/api/v1/jobs/{job.pk}").json()
    assert api["stopped_by"] == {"checks": 1}
    assert api["summary"]["regression"]["identical"] == 1

    card = artifacts.model_card(job=job, report=NEW_REPORT)
    assert "- regression: 1/3 identical, 2/3 within tolerance" in card
    assert "| fixed | contains '30 days', does not contain '7 days' |" in card
    assert "moved by more than 0.5 nats" in card


def test_an_older_report_still_reads(curator_client, job_with):
    job = job_with(REPORT)
    html = curator_client.get(reverse("training:job_detail", args=[job.pk])).content.decode()
    assert "not fixed" in html and '<span class="badge changed">changed</span>' in html
    stat = html.split('id="stat-regression"')[1].split("</div>")[0]
    assert "<b>0/1</b>regression identical, <b>0/1</b> within tolerance" in stat
    assert "<mark" not in html.split('id="regression-filter"')[0].split("</details>")[1]


def test_the_launch_form_sets_the_drift_tolerance(curator_client, project, model_folder):
    from training.models import TrainingJob

    page = curator_client.get(reverse("training:project_jobs", args=["shop"])).content.decode()
    assert 'name="drift_tolerance"' in page
    response = curator_client.post(
        reverse("training:project_jobs", args=["shop"]),
        {"model": str(model_folder), "epochs": 3, "beta": 0.1, "loss": "sigmoid",
         "sft_weight": 1, "lr": 0.001, "lora_r": 16, "drift_tolerance": 0.25},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert TrainingJob.objects.get().config["drift_tolerance"] == 0.25
    negative = curator_client.post(
        reverse("training:project_jobs", args=["shop"]),
        {"model": str(model_folder), "epochs": 3, "beta": 0.1, "loss": "sigmoid",
         "sft_weight": 1, "lr": 0.001, "lora_r": 16, "drift_tolerance": -1},
    )  # fmt: skip
    assert negative.status_code == 400 and TrainingJob.objects.count() == 1
