"""The broker down, a worker killed (issue 13, item 11), with no worker and no scheduler.

A launch while the broker does not answer used to wait 19 s, answer 500 and leave a queued row
nothing would ever pick up; a job whose worker died said "running" until a reaper ran, and under
`make up` none may run."""

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.services import case_create, project_create
from rounds.models import GenerationRequest
from tests.conftest import ROOT, _test_database_url
from tests.training.conftest import judge_all
from training import services
from training.models import JobStatus, TrainingJob

CLOSED_PORT_BROKER = "redis://127.0.0.1:1/0"

# Runs in a process whose Celery app points at a port where nothing listens: the launch goes
# through the real API, view and service, as a curator's click or script would.
LAUNCH_SCRIPT = """
import json, sys, time
import django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client

client = Client()
client.force_login(get_user_model().objects.get(username=sys.argv[1]))
results = []
for url, body, form in json.loads(sys.argv[2]):
    started = time.monotonic()
    if form:
        response = client.post(url, body)
    else:
        response = client.post(url, body, content_type="application/json")
    results.append({
        "status": response.status_code,
        "type": response["Content-Type"],
        "body": response.content.decode(),
        "seconds": time.monotonic() - started,
    })
print(json.dumps(results))
"""


def _launch_with_the_broker_down(username: str, requests: list, **settings) -> list[dict]:
    env = {
        **os.environ,
        **settings,
        "DATABASE_URL": _test_database_url(),
        "CELERY_BROKER_URL": CLOSED_PORT_BROKER,
        "ALLOWED_HOSTS": "testserver",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    env.pop("TEST_DATABASE_NAME", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH_SCRIPT, username, json.dumps(requests)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def shop(transactional_db, annotator, model_folder):
    project = project_create(name="Shop", slug="shop")
    case_create(project=project, prompt="Return Ridge boots?", response="7 days.",
                better_response="30 days.")  # fmt: skip
    judge_all(project, annotator.user)
    return project


def test_a_launch_with_the_broker_down_answers_503_naming_it_and_leaves_no_queued_row(
    shop, curator, model_folder
):
    form = {"model": str(model_folder), "epochs": 3, "beta": 0.1, "loss": "sigmoid",
            "sft_weight": 1, "lr": 0.001, "lora_r": 16}  # fmt: skip
    api, page, generation = _launch_with_the_broker_down(
        curator.username,
        [
            ["/api/v1/projects/shop/jobs", {}, False],
            [reverse("training:project_jobs", args=["shop"]), form, True],
            ["/api/v1/projects/shop/generations", {}, False],
        ],
        PATCHWISE_BASE_MODEL=str(model_folder),
    )
    assert api["status"] == 503 and api["type"].startswith("application/json")
    detail = json.loads(api["body"])["detail"]
    assert "task broker (redis://127.0.0.1:1/0, CELERY_BROKER_URL) does not answer" in detail
    assert api["seconds"] < 5
    assert generation["status"] == 503 and "does not answer" in generation["body"]
    assert generation["seconds"] < 5
    # the page, without JavaScript: the form again, with the message
    assert page["status"] == 503 and "does not answer" in page["body"]
    assert TrainingJob.objects.filter(status=JobStatus.QUEUED).count() == 0
    assert GenerationRequest.objects.filter(status="queued").count() == 0
    assert TrainingJob.objects.count() == 2  # the API's launch and the form's
    for failed in TrainingJob.objects.all():
        assert failed.status == JobStatus.FAILED and "does not answer" in failed.error
    assert GenerationRequest.objects.get().status == "failed"


@pytest.fixture
def running_job(db, annotator, curator, model_folder):
    project = project_create(name="Shop", slug="shop")
    case_create(project=project, prompt="Return Ridge boots?", response="7 days.",
                better_response="30 days.")  # fmt: skip
    judge_all(project, annotator.user)
    job = services.job_enqueue(project=project, actor=curator.user, config={"epochs": 3})
    services.job_claim(job_id=job.pk, worker_name="gpu0@dead-host")
    return job


def test_a_job_whose_worker_went_silent_shows_as_lost_with_the_reapers_reason(
    curator_client, running_job, settings
):
    settings.PATCHWISE_JOB_STALE_SECONDS = 90
    fresh = curator_client.get(f"/api/v1/jobs/{running_job.pk}").json()
    assert fresh["status"] == "running" and fresh["error"] is None

    silent_since = timezone.now() - timedelta(seconds=91)
    TrainingJob.objects.filter(pk=running_job.pk).update(heartbeat_at=silent_since)
    lost = curator_client.get(f"/api/v1/jobs/{running_job.pk}").json()
    assert lost["status"] == "lost"
    assert (
        "its worker gpu0@dead-host stopped sending heartbeats for more than 90 s" in lost["error"]
    )
    page = curator_client.get(reverse("training:job_detail", args=[running_job.pk]))
    html = page.content.decode()
    assert 'id="job-status">Lost<' in html and lost["error"].split(":")[0] in html
    listing = curator_client.get(reverse("training:project_jobs", args=["shop"]))
    assert ">Lost<" in listing.content.decode()

    # the reaper, when one runs, records exactly what the page said
    assert services.job_reap_stale() == [running_job.pk]
    reaped = curator_client.get(f"/api/v1/jobs/{running_job.pk}").json()
    assert reaped["status"] == "failed" and reaped["error"] == lost["error"]


def test_a_generation_whose_worker_went_silent_shows_as_lost(
    curator_client, curator, running_job, settings
):
    from rounds import services as rounds_services

    generation = rounds_services.generation_create(
        project=running_job.project, actor=curator.user, cases=list(running_job.project.cases.all())
    )
    rounds_services.generation_claim(generation_id=generation.pk, worker_name="gpu1@gone")
    GenerationRequest.objects.filter(pk=generation.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.PATCHWISE_JOB_STALE_SECONDS + 5)
    )
    lost = curator_client.get(f"/api/v1/generations/{generation.pk}").json()
    assert lost["status"] == "lost" and "gpu1@gone stopped sending heartbeats" in lost["error"]
    page = curator_client.get(reverse("rounds:generation_detail", args=[generation.pk]))
    assert 'id="generation-status">Lost<' in page.content.decode()
    assert rounds_services.generations_reap_stale() == [generation.pk]
    assert (
        curator_client.get(f"/api/v1/generations/{generation.pk}").json()["error"] == lost["error"]
    )
