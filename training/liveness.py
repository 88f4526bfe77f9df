"""Is a running row's worker still alive? What the reaper records when it is not.

A worker writes a heartbeat while it runs a job or a generation; once the heartbeat is older
than PATCHWISE_JOB_STALE_SECONDS the worker is taken for dead. The periodic reaper then fails
the row, but it runs only where a scheduler (celery beat) does. So pages and the API do not
wait for it: a running row whose heartbeat went stale shows as "lost", with the very reason the
reaper will record. Nothing here writes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

LOST = "lost"


class RowStatus(models.TextChoices):
    """The states of a worker row, the same for a training job and a generation request."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATUSES = (RowStatus.SUCCEEDED, RowStatus.FAILED, RowStatus.CANCELLED)


def stale_after_seconds() -> float:
    return float(settings.PATCHWISE_JOB_STALE_SECONDS)


def silent_worker(worker_name: str, threshold: float, *, long: bool = True) -> str:
    """Why a row stopped when its worker went silent (the reapers' words)."""
    causes = (
        "it was probably killed, ran out of memory or lost its machine"
        if long
        else "killed, out of memory or machine lost"
    )
    return (
        f"its worker {worker_name or '(unknown)'} stopped sending heartbeats for more than "
        f"{threshold:.0f} s ({causes})"
    )


def job_stopped_error(reason: str) -> str:
    """A training job's error when its worker is gone."""
    return (
        f"The job stopped: {reason}. Launch it again; if it fails the same way, look at the "
        "worker's log and memory."
    )


def generation_stopped_error(reason: str) -> str:
    """A generation request's error when its worker is gone."""
    return (
        f"Generation stopped: {reason}. The candidates stored before that are kept; launch "
        "again for the rest."
    )


def lost_error(row: Any, *, stopped_error, long: bool = True) -> str:
    """The reaper's error for ``row`` if it is running with a stale heartbeat, else ""."""
    if row.status != "running":
        return ""
    threshold = stale_after_seconds()
    cutoff = timezone.now() - timedelta(seconds=threshold)
    if row.heartbeat_at is not None and row.heartbeat_at >= cutoff:
        return ""
    return stopped_error(silent_worker(row.worker_name, threshold, long=long))


class ShownStatus:
    """For the model of a worker row (a training job, a generation request): its status as
    pages and the API show it, "lost" for a running row whose worker died. The model sets
    ``stopped_error`` (staticmethod) and, for the short list of causes, ``terse_causes``."""

    terse_causes = False

    @staticmethod
    def stopped_error(reason: str) -> str:
        raise NotImplementedError

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def lost_error(self) -> str:
        """Running, but its heartbeat is older than the stale limit: the reaper's reason (it
        will fail the row with it), shown before any reaper ran; "" otherwise."""
        return lost_error(self, stopped_error=self.stopped_error, long=not self.terse_causes)

    @property
    def shown_status(self) -> str:
        return LOST if self.lost_error else self.status

    @property
    def shown_status_label(self) -> str:
        return "Lost" if self.lost_error else self.get_status_display()
