"""Training jobs: one row per click on "Patch", from the data snapshot to the adapter file.

Every change of a job's state goes through ``training.services`` (which also writes the audit
row); this module only says what a job holds.
"""

from django.conf import settings
from django.db import models

from training.liveness import RowStatus, ShownStatus, job_stopped_error

JobStatus = RowStatus  # queued -> running -> succeeded | failed | cancelled (training.lifecycle)


class TrainingJob(ShownStatus, models.Model):
    project = models.ForeignKey(
        "annotate.Project", on_delete=models.CASCADE, related_name="training_jobs"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )

    # What to train: the engine's flags (underscored, as in DESIGN.md), the model to patch and
    # the adapter already in production (the patch stacks on it).
    config = models.JSONField(default=dict)
    base_model = models.CharField(max_length=1000)
    adapter = models.CharField(max_length=1000, blank=True)

    # The exact data at launch: later labels never change a job that is already queued.
    data_snapshot = models.JSONField(default=dict, help_text='{"pairs": [...], "eval": [...]}')
    data_sha256 = models.CharField(max_length=64)
    pair_count = models.PositiveIntegerField(default=0)
    eval_count = models.PositiveIntegerField(default=0)

    # Live progress, written by the worker (throttled).
    progress = models.JSONField(
        default=dict, blank=True, help_text='{"step", "total", "phase", "eta_seconds"}'
    )
    metrics_series = models.JSONField(default=list, blank=True)
    latest_metrics = models.JSONField(default=dict, blank=True)
    report = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)

    # Who runs it, and whether they are still alive.
    worker_name = models.CharField(max_length=255, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # The downloadable zip, relative to ARTIFACT_ROOT, and its sha256 (checked on download).
    artifact_path = models.CharField(max_length=1000, blank=True)
    artifact_sha256 = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"])]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.status})"

    # The reaper's words when its worker is gone.
    stopped_error = staticmethod(job_stopped_error)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def progress_percent(self) -> int:
        if self.status == JobStatus.SUCCEEDED:
            return 100
        return int(self.progress.get("percent") or 0)
