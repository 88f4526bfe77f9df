"""Jobs on a real Celery worker over Redis, on the demo model: train, cancel, and a worker that
dies mid-job. Launched and polled through the JSON API, as a script would."""

import io
import zipfile

import pytest

from accounts.services import token_create
from tests.conftest import wait_for
from tests.training.conftest import make_project
from training.models import JobStatus, TrainingJob

pytestmark = [pytest.mark.worker, pytest.mark.slow]

# A job that will not finish by itself while the test watches it: a learning rate too small to
# fix anything, so early stopping never comes, and a big epoch budget.
SLOW_CONFIG = {"lr": 1e-9, "epochs": 5000, "sft_weight": 0.0, "batch_size": 1}


@pytest.fixture
def api(client, curator):
    token = token_create(user=curator.user, name="test")
    headers = {"Authorization": f"Bearer {token}"}

    class Api:
        def post(self, path, body=None):
            return client.post(f"/api/v1{path}", body or {}, content_type="application/json",
                               headers=headers)  # fmt: skip

        def get(self, path):
            return client.get(f"/api/v1{path}", headers=headers)

    return Api()


def poll_until(api, job_id, predicate, what, timeout=300):
    def check():
        state = api.get(f"/jobs/{job_id}").json()
        return state if predicate(state) else None

    return wait_for(check, timeout=timeout, what=f"job {job_id} {what}")


def finished(state):
    return state["status"] in ("succeeded", "failed", "cancelled")


def test_launch_train_download_and_the_adapter_fixes_the_flagged_prompt(
    gpu_worker, api, annotator, demo_model, tmp_path
):
    worker = gpu_worker()
    make_project(demo_model, judge=annotator.user, flagged=2, heldout=2, regression=4)

    launched = api.post("/projects/shop/jobs", {"config": {"epochs": 30}})
    assert launched.status_code == 202, launched.content
    job_id = launched.json()["id"]
    state = poll_until(api, job_id, finished, "to finish")
    assert state["status"] == "succeeded", (state["error"], worker.log()[-3000:])
    assert state["progress"]["percent"] == 100
    assert state["summary"]["flagged"]["fixed"] == state["summary"]["flagged"]["total"] == 2
    assert state["summary"]["regression"]["changed"] == 0
    assert state["stopped_because"]

    download = api.get(f"/jobs/{job_id}/adapter.zip")
    assert download.status_code == 200
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))).extractall(folder)
    card = (folder / "README.md").read_text()
    assert card.count(state["data"]["sha256"]) == 1
    # The last step's metrics are in the card (the worker writes it before the job row has them).
    metrics = card.split("## Metrics (last step)")[1].split("##")[0]
    assert "| loss |" in metrics and "| rewards/margins |" in metrics

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.engine import generate_greedy

    job = TrainingJob.objects.get(pk=job_id)
    flagged = [item for item in job.data_snapshot["eval"] if item["kind"] == "flagged"]
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base = AutoModelForCausalLM.from_pretrained(demo_model)
    prompts = [item["prompt"] for item in flagged]
    before = generate_greedy(base, tokenizer, prompts, 48)
    patched = PeftModel.from_pretrained(base, folder)
    after = generate_greedy(patched, tokenizer, prompts, 48)
    for item, old, new in zip(flagged, before, after, strict=True):
        assert old.strip() != item["expected"].strip()
        assert new.strip() == item["expected"].strip()

    # A second job on the same model finds the base model already in the worker's memory.
    second = api.post("/projects/shop/jobs", {"config": {"epochs": 1}}).json()["id"]
    assert poll_until(api, second, finished, "to finish")["status"] == "succeeded"
    assert f"job {second}: base model from memory" in worker.log()


def test_cancel_stops_a_running_job(gpu_worker, api, annotator, demo_model, artifact_root):
    worker = gpu_worker()
    make_project(demo_model, judge=annotator.user, flagged=1, heldout=0, regression=0)
    job_id = api.post("/projects/shop/jobs", {"config": SLOW_CONFIG}).json()["id"]
    poll_until(api, job_id, lambda s: s["progress"].get("phase") == "train", "to train")

    assert api.post(f"/jobs/{job_id}/cancel").status_code == 202
    state = poll_until(api, job_id, finished, "to stop")
    assert state["status"] == "cancelled", worker.log()[-3000:]
    assert state["artifact_sha256"] is None
    assert api.get(f"/jobs/{job_id}/adapter.zip").status_code == 409
    assert not list(artifact_root.glob(f"jobs/{job_id}/.staging-*"))  # nothing half-written


def test_a_killed_worker_leaves_a_failed_job_not_a_running_one(
    gpu_worker, start_worker, api, annotator, demo_model
):
    from training.tasks import reap_stale_jobs

    doomed = gpu_worker(PATCHWISE_JOB_HEARTBEAT_SECONDS="1")
    make_project(demo_model, judge=annotator.user, flagged=1, heldout=0, regression=0)
    job_id = api.post("/projects/shop/jobs", {"config": SLOW_CONFIG}).json()["id"]
    poll_until(api, job_id, lambda s: s["progress"].get("phase") == "train", "to train")

    doomed.kill()
    assert TrainingJob.objects.get(pk=job_id).status == JobStatus.RUNNING
    # Another worker runs the reaper (beat sends it every minute; here the test does).
    start_worker(queues="default", env={"PATCHWISE_JOB_STALE_SECONDS": "5"})

    def reaped():
        reap_stale_jobs.delay()
        state = api.get(f"/jobs/{job_id}").json()
        return state if finished(state) else None

    state = wait_for(reaped, timeout=120, every=2, what="the reaper to fail the job")
    assert state["status"] == "failed"
    assert "stopped sending heartbeats" in state["error"]
    assert "Launch it again" in state["error"]
