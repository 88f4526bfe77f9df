"""Celery tasks of the training app. They take ids, name their queue, and stay thin."""

import logging
import platform
import time

from celery import shared_task
from celery.signals import celeryd_after_setup, worker_ready

from training import lifecycle, services

logger = logging.getLogger(__name__)


@shared_task(name="training.probe_worker", queue="gpu")
def probe_worker() -> dict:
    """Tell what a GPU worker has: host, torch version and accelerator (for /healthz and setup)."""
    info = {"hostname": platform.node(), "torch": None, "cuda": False, "device": "cpu"}
    try:
        import torch
    except ImportError:
        return info
    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        info.update(cuda=True, device=torch.cuda.get_device_name(0))
    return info


@shared_task(bind=True, name=services.RUN_JOB_TASK, queue="gpu", acks_late=True)
def run_job(self, job_id: int) -> str:
    """Claim job ``job_id`` and train it. Delivered twice (acks_late), it runs once: the second
    delivery finds the row no longer queued and returns "skipped"."""
    from training.runner import run_claimed_job

    worker_name = self.request.hostname or platform.node()
    job = services.job_claim(job_id=job_id, worker_name=worker_name)
    if job is None:
        return "skipped"
    return run_claimed_job(job)


@shared_task(name="training.reap_stale_jobs", queue="default")
def reap_stale_jobs() -> list[int]:
    """Fail running jobs whose worker stopped sending heartbeats (run every minute by beat)."""
    return services.job_reap_stale()


@worker_ready.connect
def reap_jobs_left_by_this_worker(sender=None, **kwargs) -> None:
    """A worker that starts again under the same name cannot still be running its old jobs."""
    lifecycle.reap_left_by_worker(services.JOBS, getattr(sender, "hostname", None))


@celeryd_after_setup.connect
def preload_training_libraries(sender=None, instance=None, **kwargs) -> None:
    """A worker of the gpu queue imports torch, transformers and peft before its first job
    (seconds on a small machine), so no job waits for them; web-only hosts never do."""
    queues = (
        set(getattr(instance.app.amqp.queues, "consume_from", None) or {}) if instance else set()
    )
    if "gpu" not in queues:
        return
    started = time.perf_counter()
    try:
        from training.engine import train  # noqa: F401  (the lazy name imports the loop)
    except ImportError:  # a host without the train extra cannot train; jobs will say so
        logger.warning("torch/transformers/peft are not installed: this worker cannot train")
        return
    logger.info("training libraries preloaded in %.1f s", time.perf_counter() - started)
