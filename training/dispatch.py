"""Handing a queued row (a training job, a generation request) to the GPU workers' queue.

The row is committed first, then its task is published. When the broker does not answer, the
row must not stay queued for a task that was never sent (nothing would ever pick it up or reap
it): it is failed with the reason, and the caller hears BrokerUnavailable within seconds, to
answer 503. The row's state lives in the database, so the task's result is not stored
(ignore_result): the result store's reconnect loop is what made a launch hang for 19 s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import current_app
from django.conf import settings
from kombu import Connection
from kombu.exceptions import KombuError

# Publish tries once more after a short pause; a refused connection fails at once, a silent
# host after the broker's connect timeout (4 s by default) per try.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


class BrokerUnavailable(Exception):
    """The task broker did not answer; the row was failed with this message (answer 503)."""


def broker_name() -> str:
    """CELERY_BROKER_URL without its user and password, to name in messages."""
    url = urlsplit(settings.CELERY_BROKER_URL)
    return urlunsplit(url._replace(netloc=url.netloc.rpartition("@")[2]))


def broker_down_message(what: str, *, failed: bool = True) -> str:
    outcome = "It is marked failed so nothing waits for it; s" if failed else "S"
    return (
        f"{what} could not be queued: the task broker ({broker_name()}, CELERY_BROKER_URL) does "
        f"not answer. {outcome}tart the broker (Redis) or fix CELERY_BROKER_URL, then launch "
        "again."
    )


def require_broker(what: str) -> None:
    """BrokerUnavailable unless the broker answers now: for a launch that writes more than the
    row it queues (a round), so a broker that is down is found before anything is written."""
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    try:
        with Connection(
            settings.CELERY_BROKER_URL, connect_timeout=3, transport_options=options
        ) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=4)
    except (KombuError, OSError):
        raise BrokerUnavailable(broker_down_message(what, failed=False)) from None


def publish(task_name: str, row_id: int, *, what: str, fail: Callable[[str], Any]) -> None:
    """Publish the task named ``task_name`` for ``row_id``; when the broker is down,
    ``fail(message)`` the row and raise BrokerUnavailable with the same message.

    By name (config/celery.py routes it to its queue), so services, which call this, need not
    import the tasks module that imports them."""
    try:
        current_app.send_task(
            task_name,
            args=[row_id],
            ignore_result=True,
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )
    except (KombuError, OSError) as error:
        message = broker_down_message(what)
        fail(message)
        raise BrokerUnavailable(message) from error
