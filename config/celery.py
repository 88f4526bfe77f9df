"""The Celery app: queue `default` for light work, queue `gpu` for training and generation.

GPU tasks are long and must survive a worker that dies: they are acknowledged only when they
finish (acks_late), a worker takes one at a time (prefetch 1), and a task whose worker was killed
goes back to the queue (reject_on_worker_lost). The tasks themselves are idempotent (they claim
their row with a filtered update), which is what makes acks_late safe.

Time limits: every task off the gpu queue (the reapers, and any light task added later) gets the
soft and hard limits of settings.PATCHWISE_LIGHT_TASK_*_SECONDS. GPU tasks get none on purpose:
a training job runs from minutes to hours, and no fixed limit fits every model and GPU without
killing good work. A GPU task that hangs or whose worker dies is caught by its heartbeat
instead: the worker writes one every PATCHWISE_JOB_HEARTBEAT_SECONDS while the task runs, and
the reaper (beat, every minute) fails the row whose heartbeat is older than
PATCHWISE_JOB_STALE_SECONDS. A user stops a long job with cancel, checked at every step.
The limits travel in each message, as the sending process's settings give them (web and beat
read the same environment as the workers); a message without them gets the worker's own.
"""

import os

from celery import Celery
from django.conf import settings
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

GPU_TASKS = ("training.run_job", "training.run_generation", "training.probe_worker")


class LightTaskTimeLimits:
    """Celery task annotation: the light tasks' time limits, none for the gpu queue's tasks."""

    def annotate(self, task) -> dict | None:
        if task.name in GPU_TASKS or getattr(task, "queue", None) == "gpu":
            return None  # heartbeat and reaper watch these (see the module docstring)
        return {
            "soft_time_limit": settings.PATCHWISE_LIGHT_TASK_SOFT_SECONDS,
            "time_limit": settings.PATCHWISE_LIGHT_TASK_HARD_SECONDS,
        }


app = Celery("patchwise")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_queues=(Queue("default"), Queue("gpu")),
    task_default_queue="default",
    task_routes={name: {"queue": "gpu"} for name in GPU_TASKS},
    task_annotations=[LightTaskTimeLimits()],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    broker_connection_retry_on_startup=True,
    task_track_started=True,
    result_expires=3600,
    beat_schedule={
        "reap-stale-jobs": {"task": "training.reap_stale_jobs", "schedule": 60.0},
        "reap-stale-generations": {"task": "rounds.reap_stale_generations", "schedule": 60.0},
    },
)
app.autodiscover_tasks()
