"""Celery tasks of the rounds app. They take ids, name their queue, and stay thin.

The generation task keeps the name "training.run_generation": config/celery.py routes it to the
`gpu` queue next to the training jobs, and a GPU worker runs one of either at a time.
"""

import platform

from celery import shared_task
from celery.signals import worker_ready

from rounds import services
from training import lifecycle


@shared_task(bind=True, name=services.RUN_GENERATION_TASK, queue="gpu", acks_late=True)
def run_generation(self, generation_id: int) -> str:
    """Claim generation request ``generation_id`` and sample it. Delivered twice (acks_late),
    it runs once: the second delivery finds the row no longer queued and returns "skipped"."""
    from rounds.runner import run_claimed_generation

    worker_name = self.request.hostname or platform.node()
    generation = services.generation_claim(generation_id=generation_id, worker_name=worker_name)
    if generation is None:
        return "skipped"
    return run_claimed_generation(generation)


@shared_task(name="rounds.reap_stale_generations", queue="default")
def reap_stale_generations() -> list[int]:
    """Fail running generations whose worker stopped sending heartbeats (beat, every minute)."""
    return services.generations_reap_stale()


@worker_ready.connect
def reap_generations_left_by_this_worker(sender=None, **kwargs) -> None:
    """A worker that starts again under the same name cannot still be sampling its old requests."""
    lifecycle.reap_left_by_worker(services.GENERATIONS, getattr(sender, "hostname", None))
