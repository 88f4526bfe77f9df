"""Jobs with gpus=2 on a real Celery worker: torchrun with 2 CPU processes (gloo) as a
subprocess of the worker, with the progress, cancel and reaper one-GPU jobs have."""

import pytest

from accounts.services import token_create
from tests.conftest import processes_mentioning, wait_for
from tests.training.conftest import make_project
from training import runner, services
from training.models import JobStatus, TrainingJob

pytestmark = [pytest.mark.worker, pytest.mark.slow]

SLOW_CONFIG = {"lr": 1e-9, "epochs": 5000, "sft_weight": 0.0, "batch_size": 2, "gpus": 2}


@pytest.fixture
def api(client, curator, settings):
    settings.PATCHWISE_WORKER_GPUS = 2  # what the web side allows a launch to ask for
    token = token_create(user=curator.user, name="test")
    headers = {"Authorization": f"Bearer {token}"}

    class Api:
        def post(self, path, body=None):
            return client.post(f"/api/v1{path}", body or {}, content_type="application/json",
                               headers=headers)  # fmt: skip

        def get(self, path):
            return client.get(f"/api/v1{path}", headers=headers)

    return Api()


def poll_until(api, job_id, predicate, what, timeout=600):
    def check():
        state = api.get(f"/jobs/{job_id}").json()
        return state if predicate(state) else None

    return wait_for(check, timeout=timeout, what=f"job {job_id} {what}")


def finished(state):
    return state["status"] in ("succeeded", "failed", "cancelled")


def training(state):
    return state["progress"].get("phase") == "train"


def test_a_two_gpu_job_trains_under_torchrun_with_live_progress(
    gpu_worker, api, annotator, demo_model
):
    worker = gpu_worker(PATCHWISE_WORKER_GPUS="2")
    make_project(demo_model, judge=annotator.user, flagged=2, heldout=2, regression=4)

    launched = api.post("/projects/shop/jobs", {"config": {"epochs": 30, "gpus": 2}})
    assert launched.status_code == 202, launched.content
    job_id = launched.json()["id"]
    state = poll_until(api, job_id, finished, "to finish")
    assert state["status"] == "succeeded", (state["error"], worker.log()[-3000:])
    assert state["progress"]["percent"] == 100
    assert state["summary"]["flagged"]["fixed"] == state["summary"]["flagged"]["total"] == 2
    assert state["summary"]["regression"]["changed"] == 0
    job = TrainingJob.objects.get(pk=job_id)
    assert job.report["training"]["processes"] == 2
    # the per-step rows came back from rank 0 (per-epoch eval rows sit between them)
    assert [row["step"] for row in job.metrics_series if "loss" in row]
    assert f"job {job_id}: training on 2 processes" in worker.log()
    assert api.get(f"/jobs/{job_id}/adapter.zip").status_code == 200


def test_cancel_stops_every_rank_and_leaves_nothing(
    gpu_worker, api, annotator, demo_model, artifact_root
):
    worker = gpu_worker(PATCHWISE_WORKER_GPUS="2")
    make_project(demo_model, judge=annotator.user, flagged=1, heldout=0, regression=0)
    job_id = api.post("/projects/shop/jobs", {"config": SLOW_CONFIG}).json()["id"]
    # rank 0's progress reaches the job row while it trains, as a one-GPU job's does
    state = poll_until(api, job_id, lambda s: training(s) and s["progress"]["step"] > 1,
                       "to report training steps")  # fmt: skip
    assert state["progress"]["total"] == 5000 and 20 <= state["progress"]["percent"] < 85
    assert "loss" in state["metrics"]
    assert len(processes_mentioning(str(artifact_root))) == 3  # torchrun and its 2 ranks

    assert api.post(f"/jobs/{job_id}/cancel").status_code == 202
    state = poll_until(api, job_id, finished, "to stop")
    assert state["status"] == "cancelled", worker.log()[-3000:]
    assert processes_mentioning(str(artifact_root)) == []  # no orphan rank
    assert not list(artifact_root.glob(f"jobs/{job_id}/.staging-*"))


def test_a_killed_worker_takes_its_ranks_with_it_and_the_reaper_fails_the_job(
    gpu_worker, start_worker, api, annotator, demo_model, artifact_root
):
    from training.tasks import reap_stale_jobs

    doomed = gpu_worker(PATCHWISE_WORKER_GPUS="2", PATCHWISE_JOB_HEARTBEAT_SECONDS="1")
    make_project(demo_model, judge=annotator.user, flagged=1, heldout=0, regression=0)
    job_id = api.post("/projects/shop/jobs", {"config": SLOW_CONFIG}).json()["id"]
    poll_until(api, job_id, training, "to train")

    doomed.kill()
    wait_for(lambda: not processes_mentioning(str(artifact_root)), timeout=120,
             what="torchrun and its ranks to end with their worker")  # fmt: skip
    start_worker(queues="default", env={"PATCHWISE_JOB_STALE_SECONDS": "5"})

    def reaped():
        reap_stale_jobs.delay()
        state = api.get(f"/jobs/{job_id}").json()
        return state if finished(state) else None

    state = wait_for(reaped, timeout=120, every=2, what="the reaper to fail the job")
    assert state["status"] == "failed"
    assert "stopped sending heartbeats" in state["error"]


def test_a_worker_with_fewer_gpus_than_the_job_asks_fails_it_with_the_reason(
    api, annotator, demo_model, settings, artifact_root
):
    settings.PATCHWISE_BASE_MODEL = str(demo_model)
    make_project(demo_model, judge=annotator.user, flagged=1, heldout=0, regression=0)
    job_id = api.post("/projects/shop/jobs", {"config": {"gpus": 2}}).json()["id"]
    settings.PATCHWISE_WORKER_GPUS = 1  # the worker that takes it is on a smaller node
    job = services.job_claim(job_id=job_id, worker_name="small@node")

    assert runner.run_claimed_job(job) == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "this worker has 1 GPU(s) (PATCHWISE_WORKER_GPUS) and the job asks for 2" in job.error


def test_a_launch_asking_for_more_gpus_than_the_workers_have_is_a_400(api, annotator, demo_model,
                                                                      settings):  # fmt: skip
    settings.PATCHWISE_BASE_MODEL = str(demo_model)
    make_project(demo_model, judge=annotator.user, flagged=1, heldout=0, regression=0)
    refused = api.post("/projects/shop/jobs", {"config": {"gpus": 8}})
    assert refused.status_code == 400
    assert "'gpus' is 8 but a gpu worker has 2" in refused.json()["detail"]


def test_every_launch_key_reaches_the_engine_cli_unchanged(model_folder, settings):
    """The torchrun job passes the config as CLI flags: each key must be a flag the engine
    parses back to the same value."""
    import argparse

    from training.engine.__main__ import _add_train_arguments
    from training.multi_gpu import engine_flags

    settings.PATCHWISE_WORKER_GPUS = 2
    given = {"beta": 0.2, "loss": "ipo", "sft_weight": 0.5, "sft_warmup_epochs": 1, "lr": 2e-4,
             "epochs": 7, "batch_size": 4, "lora_r": 8, "seed": 3, "retain_weight": 0.0,
             "gpus": 2, "shard_base": True}  # fmt: skip
    resolved = services.resolve_config(given)
    engine = {k: v for k, v in resolved.items() if k not in services.WORKER_KEYS}
    parser = argparse.ArgumentParser()
    _add_train_arguments(parser)
    args = parser.parse_args([*engine_flags(engine), "--pairs", "p", "--out", "o"])
    for key, value in engine.items():
        assert getattr(args, key) == value, key
