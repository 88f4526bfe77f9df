"""The Celery app: queue `default` for light work, queue `gpu` for training and generation.

GPU tasks are long and must survive a worker that dies: they are acknowledged only when they
finish (acks_late), a worker takes one at a time (prefetch 1), and a task whose worker was killed
goes back to the queue (reject_on_worker_lost). The tasks themselves are idempotent (they claim
their row with a filtered update), which is what makes acks_late safe.
"""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("patchwise")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_queues=(Queue("default"), Queue("gpu")),
    task_default_queue="default",
    task_routes={
        "training.run_job": {"queue": "gpu"},
        "training.run_generation": {"queue": "gpu"},
        "training.probe_worker": {"queue": "gpu"},
    },
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
