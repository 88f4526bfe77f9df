"""The job state machine and the data snapshot, through training.services (no worker)."""

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from accounts.models import AuditEvent
from annotate.services import case_create, project_create
from tests.training.conftest import judge_all
from training import services
from training.models import JobStatus, TrainingJob


@pytest.fixture
def project(db, annotator):
    project = project_create(name="Shop", slug="shop")
    case_create(
        project=project,
        prompt="How long can I return Ridge hiking boots?",
        response="7 days.",
        better_response="30 days.",
    )
    case_create(
        project=project,
        prompt="How long can I return Alpine sandals?",
        response="7 days.",
        better_response="30 days.",
        split="heldout",
    )
    case_create(
        project=project,
        prompt="Warranty of the Cedar tent?",
        response="5 years.",
        split="regression",
    )
    judge_all(project, annotator.user)
    return project


def enqueue(project, curator, **config):
    return services.job_enqueue(project=project, actor=curator.user, config=config or None)


def actions(job):
    return list(
        AuditEvent.objects.filter(target_type="trainingjob", target_id=str(job.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )


def test_launch_snapshots_pairs_and_eval_prompts_with_their_hash(project, curator, model_folder):
    job = enqueue(project, curator)

    assert job.status == JobStatus.QUEUED
    assert job.pair_count == 1 and job.eval_count == 3
    pair = job.data_snapshot["pairs"][0]
    assert (pair["chosen"], pair["rejected"]) == ("30 days.", "7 days.")
    kinds = sorted(item["kind"] for item in job.data_snapshot["eval"])
    assert kinds == ["flagged", "heldout", "regression"]
    assert job.data_sha256 == services.snapshot_hash(
        pairs=job.data_snapshot["pairs"], eval_items=job.data_snapshot["eval"]
    )
    assert job.config["model"] == str(model_folder)
    assert job.config["beta"] == 0.1  # the engine's defaults are filled in and shown
    assert actions(job) == ["job.enqueue"]


def test_later_labels_do_not_change_a_launched_job_but_change_the_next_hash(
    project, curator, annotator, model_folder
):
    first = enqueue(project, curator)
    same = enqueue(project, curator)
    assert same.data_sha256 == first.data_sha256

    case_create(project=project, prompt="Return Falcon trail runners?", response="7 days.",
                better_response="30 days.")  # fmt: skip
    judge_all(project, annotator.user)
    first.refresh_from_db()
    assert first.pair_count == 1 and len(first.data_snapshot["pairs"]) == 1
    later = enqueue(project, curator)
    assert later.pair_count == 2
    assert later.data_sha256 != first.data_sha256


def test_launch_is_refused_with_a_reason(project, curator, model_folder, tmp_path, settings):
    settings.PATCHWISE_MODEL_ROOTS = [tmp_path]
    empty = project_create(name="Empty", slug="empty")
    with pytest.raises(services.JobRefused, match="no preference pairs"):
        enqueue(empty, curator)
    with pytest.raises(services.JobRefused, match="does not exist"):
        enqueue(project, curator, model=str(tmp_path / "nowhere"))
    (tmp_path / "broken").mkdir()
    with pytest.raises(services.JobRefused, match="config.json"):
        enqueue(project, curator, model=str(tmp_path / "broken"))
    with pytest.raises(services.JobRefused, match="beta"):
        enqueue(project, curator, beta=-1)
    with pytest.raises(services.JobRefused, match="unknown key 'ref_cache_dir'"):
        enqueue(project, curator, ref_cache_dir="/tmp")
    with pytest.raises(services.JobRefused, match="LoRA rank"):
        enqueue(project, curator, lora_r=4096)
    assert TrainingJob.objects.count() == 0


def test_a_job_asks_for_gpus_up_to_what_its_worker_has(project, curator, model_folder, settings):
    settings.PATCHWISE_WORKER_GPUS = 2
    assert enqueue(project, curator).config["gpus"] == 1  # the default, shown
    assert enqueue(project, curator, gpus=2).config["gpus"] == 2

    with pytest.raises(services.JobRefused, match=r"'gpus' is 4 but a gpu worker has 2 .*=2"):
        enqueue(project, curator, gpus=4)
    with pytest.raises(services.JobRefused, match="'gpus' must be a whole number"):
        enqueue(project, curator, gpus="2")
    with pytest.raises(services.JobRefused, match="'gpus' must be a whole number"):
        enqueue(project, curator, gpus=0)
    with pytest.raises(services.JobRefused, match=r"'batch_size' \(1\) is below 'gpus' \(2\)"):
        enqueue(project, curator, gpus=2, batch_size=1)
    assert TrainingJob.objects.count() == 2


def test_a_job_shards_its_base_only_across_several_gpus(project, curator, model_folder, settings):
    settings.PATCHWISE_WORKER_GPUS = 2
    assert enqueue(project, curator).config["shard_base"] is False  # the default, shown
    assert enqueue(project, curator, gpus=2, shard_base=True).config["shard_base"] is True
    with pytest.raises(services.JobRefused, match="'shard_base' splits the base .* 'gpus' to 2"):
        enqueue(project, curator, shard_base=True)
    with pytest.raises(services.JobRefused, match="'shard_base' with 'quantize' 4bit is not"):
        enqueue(project, curator, gpus=2, shard_base=True, quantize="4bit")
    with pytest.raises(services.JobRefused, match="'shard_base' must be true or false"):
        enqueue(project, curator, gpus=2, shard_base="yes")
    assert TrainingJob.objects.count() == 2


def test_annotators_cannot_launch_or_cancel(project, curator, annotator, model_folder):
    with pytest.raises(PermissionDenied):
        enqueue(project, annotator)
    job = enqueue(project, curator)
    with pytest.raises(PermissionDenied):
        services.job_cancel(job=job, actor=annotator.user)


def test_a_job_is_claimed_once_and_walks_through_its_states(project, curator, model_folder):
    job = enqueue(project, curator)

    claimed = services.job_claim(job_id=job.pk, worker_name="gpu0@host")
    assert claimed.status == JobStatus.RUNNING and claimed.attempts == 1
    assert services.job_claim(job_id=job.pk, worker_name="gpu1@host") is None  # redelivery

    progress = {"phase": "train", "step": 3, "total": 10, "percent": 40, "eta_seconds": 2.0}
    assert services.job_record_progress(job_id=job.pk, progress=progress,
                                        latest_metrics={"loss": 0.5})  # fmt: skip
    services.job_succeed(
        job_id=job.pk, report={"summary": {}}, metrics_series=[{"step": 1, "loss": 0.7}],
        latest_metrics={"loss": 0.7}, artifact_path="jobs/1/adapter.zip", artifact_sha256="ab" * 32,
    )  # fmt: skip
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.worker_name == "gpu0@host"
    assert job.progress_percent == 100 and job.finished_at >= job.started_at
    assert not services.job_record_progress(job_id=job.pk, progress=progress)
    assert services.job_fail(job_id=job.pk, error="late") is None  # finished stays finished
    assert actions(job) == ["job.enqueue", "job.claim", "job.succeed"]


def test_cancel_ends_a_queued_job_at_once_and_asks_a_running_one_to_stop(
    project, curator, model_folder
):
    queued = enqueue(project, curator)
    services.job_cancel(job=queued, actor=curator.user)
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED
    assert services.job_claim(job_id=queued.pk, worker_name="w") is None

    running = enqueue(project, curator)
    services.job_claim(job_id=running.pk, worker_name="w")
    running.refresh_from_db()
    services.job_cancel(job=running, actor=curator.user)
    assert services.job_cancel_requested(job_id=running.pk)
    assert TrainingJob.objects.get(pk=running.pk).status == JobStatus.RUNNING
    services.job_mark_cancelled(job_id=running.pk)
    running.refresh_from_db()
    assert running.status == JobStatus.CANCELLED
    with pytest.raises(services.JobRefused, match="already cancelled"):
        services.job_cancel(job=running, actor=curator.user)
    assert actions(running) == ["job.enqueue", "job.claim", "job.cancel_request", "job.cancelled"]


def test_reaper_fails_jobs_whose_heartbeat_went_stale(project, curator, model_folder):
    stale = enqueue(project, curator)
    fresh = enqueue(project, curator)
    services.job_claim(job_id=stale.pk, worker_name="gone@host")
    services.job_claim(job_id=fresh.pk, worker_name="alive@host")
    TrainingJob.objects.filter(pk=stale.pk).update(
        heartbeat_at=timezone.now() - timezone.timedelta(seconds=600)
    )

    assert services.job_reap_stale(older_than_seconds=90) == [stale.pk]
    stale.refresh_from_db()
    assert stale.status == JobStatus.FAILED
    assert "stopped sending heartbeats" in stale.error and "Launch it again" in stale.error
    assert TrainingJob.objects.get(pk=fresh.pk).status == JobStatus.RUNNING

    # A worker restarting under its old name reaps what it left running, heartbeat or not.
    assert services.job_reap_stale(worker_name="alive@host") == [fresh.pk]
    assert "restarted" in TrainingJob.objects.get(pk=fresh.pk).error


def test_a_worker_starting_again_fails_the_jobs_it_left_running(project, curator, model_folder):
    from types import SimpleNamespace

    from training.tasks import reap_jobs_left_by_this_worker

    job = enqueue(project, curator)
    services.job_claim(job_id=job.pk, worker_name="gpu0@host")

    reap_jobs_left_by_this_worker(sender=SimpleNamespace(hostname="gpu1@host"))
    assert TrainingJob.objects.get(pk=job.pk).status == JobStatus.RUNNING  # not its job
    reap_jobs_left_by_this_worker(sender=SimpleNamespace(hostname="gpu0@host"))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "restarted while running it" in job.error


def test_a_report_holding_nul_characters_is_stored_without_them(project, curator, model_folder):
    # A model's byte-level decoding can produce "\x00", which PostgreSQL jsonb refuses.
    job = enqueue(project, curator)
    services.job_claim(job_id=job.pk, worker_name="gpu0@host")
    report = {"eval": [{"before": "ok\x00", "after": "fine", "kind": "flagged"}]}
    services.job_succeed(
        job_id=job.pk, report=report, metrics_series=[], latest_metrics={},
        artifact_path="jobs/1/adapter.zip", artifact_sha256="ab" * 32,
    )  # fmt: skip
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.report["eval"][0]["before"] == "ok"
