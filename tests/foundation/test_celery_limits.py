"""Time limits: light tasks (off the gpu queue) are stopped when stuck; GPU tasks are not, their
heartbeat and the reaper watch them instead (config/celery.py)."""

import os
import subprocess
import sys

import psycopg
import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.conf import settings

from config.celery import GPU_TASKS, app
from tests.conftest import ROOT, _test_database_url


def project_tasks() -> dict:
    app.loader.import_default_modules()  # the apps' tasks modules, as a worker imports them
    return {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}


def test_light_tasks_have_soft_and_hard_limits_and_gpu_tasks_none():
    tasks = project_tasks()
    assert set(GPU_TASKS) <= set(tasks)
    light = {name: task for name, task in tasks.items() if name not in GPU_TASKS}
    assert {"training.reap_stale_jobs", "rounds.reap_stale_generations"} <= set(light)
    for name, task in light.items():
        assert task.soft_time_limit == settings.PATCHWISE_LIGHT_TASK_SOFT_SECONDS, name
        assert task.time_limit == settings.PATCHWISE_LIGHT_TASK_HARD_SECONDS, name
        assert task.soft_time_limit < task.time_limit
    for name in GPU_TASKS:
        assert (tasks[name].soft_time_limit, tasks[name].time_limit) == (None, None), name
        assert app.amqp.router.route({}, name)["queue"].name == "gpu"


def test_a_soft_limit_not_below_the_hard_one_is_refused_at_start():
    env = {
        **os.environ,
        "PATCHWISE_LIGHT_TASK_SOFT_SECONDS": "60",
        "PATCHWISE_LIGHT_TASK_HARD_SECONDS": "30",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "PATCHWISE_LIGHT_TASK_SOFT_SECONDS=60 must be above 0 and below" in result.stderr


@pytest.mark.worker
def test_a_reaper_stuck_on_a_lock_is_stopped_and_the_worker_goes_on(start_worker):
    """A prefork worker, as production runs: the reaper waits on a locked table past its limit,
    fails with a time-limit error instead of hanging, and the next run works."""
    from training.tasks import reap_stale_jobs

    start_worker(
        queues="default",
        pool="prefork",
        env={"PATCHWISE_LIGHT_TASK_SOFT_SECONDS": "1", "PATCHWISE_LIGHT_TASK_HARD_SECONDS": "3"},
    )
    with psycopg.connect(_test_database_url()) as blocker:
        blocker.execute("LOCK TABLE training_trainingjob IN ACCESS EXCLUSIVE MODE")
        # A message carries the limits its sender's settings gave the task; None lets the
        # worker apply its own (1 s and 3 s here), which the annotation gave it from its env.
        stuck = reap_stale_jobs.apply_async(soft_time_limit=None, time_limit=None)
        with pytest.raises((SoftTimeLimitExceeded, TimeLimitExceeded)):
            stuck.get(timeout=30)  # without a limit it waits for the lock: TimeoutError here
        blocker.rollback()
    assert reap_stale_jobs.delay().get(timeout=60) == []
