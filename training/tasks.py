"""Celery tasks of the training app. They take ids, name their queue, and stay thin."""

import platform

from celery import shared_task


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
