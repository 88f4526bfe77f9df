"""The one life of a worker row, tested once for both kinds: a training job and a generation
request. Real PostgreSQL, with threads holding their own connections where rows race."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import AuditEvent
from tests.conftest import wait_for
from training import lifecycle

KINDS = ("job", "generation")


@pytest.fixture
def model_folder(tmp_path, settings):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    settings.PATCHWISE_BASE_MODEL = str(folder)
    return folder


@pytest.fixture(params=KINDS)
def kind(request) -> lifecycle.Kind:
    from rounds.services import GENERATIONS
    from training.services import JOBS

    return {"job": JOBS, "generation": GENERATIONS}[request.param]


@pytest.fixture
def enqueue(kind, curator, model_folder):
    """enqueue() -> a new queued row of the kind, launched through its service as a curator."""
    from annotate.services import case_create, judgment_submit, project_create

    project = project_create(name="Shop", slug="shop")
    case = case_create(
        project=project, prompt="Boots?", response="7 days.", better_response="30 days."
    )
    comparison = case.comparisons.get()  # the deployed answer (a) against the better one (b)
    judgment_submit(comparison=comparison, annotator=curator.user, choice="b")  # a pair to train

    def make():
        if kind.action == "job":
            from training.services import job_enqueue

            return job_enqueue(project=project, actor=curator.user)
        from rounds.services import generation_create

        return generation_create(project=project, actor=curator.user, cases=[case])

    return make


def actions(row) -> list[str]:
    events = AuditEvent.objects.filter(target_type=row._meta.model_name, target_id=str(row.pk))
    return list(events.order_by("id").values_list("action", flat=True))


def in_threads(*targets) -> None:
    """Run each target in its own thread (its own database connection), all at once."""
    start = threading.Barrier(len(targets))

    def run(target):
        try:
            start.wait()
            target()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_for_a_row_claim_it_once(kind, enqueue):
    row = enqueue()
    claimed = []
    in_threads(
        *(
            lambda name=name: claimed.append(lifecycle.claim(kind, pk=row.pk, worker_name=name))
            for name in ("gpu0@a", "gpu0@b", "gpu0@c")
        )
    )
    winners = [claim for claim in claimed if claim is not None]
    assert len(claimed) == 3 and len(winners) == 1
    row.refresh_from_db()
    assert (row.status, row.worker_name, row.attempts) == ("running", winners[0].worker_name, 1)
    assert actions(row).count(f"{kind.action}.claim") == 1
    # A cancelled row is not claimed at all.
    cancelled = enqueue()
    lifecycle.cancel(kind, row=cancelled, actor=None)
    assert lifecycle.claim(kind, pk=cancelled.pk, worker_name="gpu0@a") is None


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_that_lands_while_the_reaper_waits_for_the_row_saves_it(kind, enqueue):
    row = enqueue()
    lifecycle.claim(kind, pk=row.pk, worker_name="gpu0@slow")
    kind.model.objects.filter(pk=row.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=600)
    )
    locked, beat = threading.Event(), threading.Event()
    reaped: list[list[int]] = []

    def worker_beats_late():  # the worker is writing to its row when the reaper looks
        try:
            with transaction.atomic():
                kind.model.objects.select_for_update().get(pk=row.pk)
                locked.set()
                beat.wait(timeout=30)
                assert lifecycle.heartbeat(kind, pk=row.pk)
        finally:
            connection.close()

    def reaper():
        try:
            reaped.append(lifecycle.reap_stale(kind, older_than_seconds=60))
        finally:
            connection.close()

    worker = threading.Thread(target=worker_beats_late)
    worker.start()
    assert locked.wait(timeout=30)
    reaping = threading.Thread(target=reaper)
    reaping.start()
    wait_for(_waiting_on_a_lock, timeout=30, what="the reaper to wait for the row lock")
    beat.set()
    worker.join(timeout=30)
    reaping.join(timeout=30)

    assert reaped == [[]]
    row.refresh_from_db()
    assert row.status == "running" and row.error == ""
    # Without a heartbeat it is reaped, and says why.
    kind.model.objects.filter(pk=row.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=600)
    )
    assert lifecycle.reap_stale(kind, older_than_seconds=60) == [row.pk]
    row.refresh_from_db()
    assert row.status == "failed" and "stopped sending heartbeats" in row.error


@pytest.mark.django_db
def test_cancel_ends_a_queued_row_at_once_and_a_running_one_at_its_next_step(
    kind, enqueue, curator
):
    queued = enqueue()
    assert lifecycle.cancel(kind, row=queued, actor=curator.user).status == "cancelled"
    assert actions(queued)[-1] == f"{kind.action}.cancel"

    running = enqueue()
    lifecycle.claim(kind, pk=running.pk, worker_name="gpu0@a")
    should_cancel = lifecycle.CancelCheck(kind, running.pk)
    assert not should_cancel()
    for _click in range(2):  # asked once, however often the user clicks
        asked = lifecycle.cancel(kind, row=running, actor=curator.user)
    assert (asked.status, asked.cancel_requested) == ("running", True)
    # The worker reads the flag between steps, at most every CANCEL_CHECK_EVERY_S.
    wait_for(should_cancel, timeout=4 * lifecycle.CANCEL_CHECK_EVERY_S, what="the cancel")
    assert lifecycle.mark_cancelled(kind, pk=running.pk).status == "cancelled"
    assert lifecycle.heartbeat(kind, pk=running.pk) is False  # a finished row takes no beats
    assert actions(running)[-3:] == [
        f"{kind.action}.claim",
        f"{kind.action}.cancel_request",
        f"{kind.action}.cancelled",
    ]
