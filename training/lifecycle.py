"""The life of a row a GPU worker runs: a training job or a generation request.

queued -> running -> succeeded | failed | cancelled, the same for both kinds:

- claim: a filtered update (queued -> running) in a transaction with its audit row; zero rows
  changed means another worker has it or it was cancelled, so a task delivered twice runs once.
- heartbeat and progress: a running row's worker writes heartbeat_at (a thread, ``Heartbeat``,
  while the engine holds the main thread) and its progress; no audit row, they are not states.
- cancel: a queued row ends at once; a running one gets cancel_requested, which its worker reads
  between steps (``CancelCheck``) and ends with ``mark_cancelled``.
- reap: rows whose heartbeat went stale (their worker died) fail with a message that says so;
  each is re-checked under its row lock, so a heartbeat that arrived meanwhile saves it. We do
  not re-queue: work that killed its worker (out of memory) would likely kill the next one too.

Every state change locks the row and filters it by its current status in the same statement
(``transition``), so two workers, or a worker and the reaper, cannot both move it: the loser
gets None. ``Kind`` names the model and the audit actions of each kind of row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import close_old_connections, connection, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.services import audit_record
from training import dispatch
from training.liveness import RowStatus, silent_worker, stale_after_seconds

logger = logging.getLogger(__name__)

Row = TypeVar("Row", bound=models.Model)

QUEUED, RUNNING, FAILED, CANCELLED = (
    RowStatus.QUEUED,
    RowStatus.RUNNING,
    RowStatus.FAILED,
    RowStatus.CANCELLED,
)
CANCEL_CHECK_EVERY_S = 0.5  # how often a worker reads the cancel flag at most


@dataclass(frozen=True)
class Kind:
    """One kind of worker row: its model, the prefix of its audit actions ("job.claim"), what
    a claim loads with the row, its progress when claimed, and the error a row of it gets when
    its worker is gone (training.liveness words it; ``terse``: the short list of causes)."""

    model: type[models.Model]
    action: str
    label: str  # how messages name a row: "Job 12", "Generation 3"
    task: str  # the Celery task that runs a row, by name (config/celery.py routes it)
    stopped_error: Callable[[str], str]
    unexpected_error: Callable[[BaseException], str]
    related: tuple[str, ...] = ()
    claimed_progress: dict[str, Any] = field(default_factory=dict)
    terse: bool = False


def heartbeat_seconds() -> float:
    return float(settings.PATCHWISE_JOB_HEARTBEAT_SECONDS)


def transition(
    *,
    model: type[Row],
    pk: int,
    from_statuses: tuple[str, ...],
    to_status: str,
    action: str,
    actor: AbstractBaseUser | None = None,
    fields: Callable[[Row], dict[str, Any]] | dict[str, Any] | None = None,
    audit_extra: dict[str, Any] | None = None,
    still: Q | None = None,
) -> Row | None:
    """Move row ``pk`` to ``to_status`` if it is in ``from_statuses`` (and matches ``still``);
    ``fields`` (a dict, or a function of the locked row) gives the other fields to change."""
    with transaction.atomic():
        rows = model.objects.select_for_update().filter(pk=pk, status__in=from_statuses)
        row = (rows.filter(still) if still is not None else rows).first()
        if row is None:
            return None
        old_status = row.status
        extra = fields(row) if callable(fields) else (fields or {})
        changes = {"status": to_status, **extra}
        for name, value in changes.items():
            setattr(row, name, value)
        row.save(update_fields=list(changes))
        audit_record(
            actor=actor,
            action=action,
            target=row,
            old_value={"status": old_status},
            new_value={"status": to_status, **(audit_extra or {})},
        )
    return row


def ended(row: models.Model, phase: str) -> dict[str, Any]:
    """The fields of a row that stops now: when, and its progress's last phase."""
    progress = {**row.progress, "phase": phase}
    if "eta_seconds" in progress:
        progress["eta_seconds"] = None
    return {"finished_at": timezone.now(), "progress": progress}


def send_to_worker(kind: Kind, pk: int) -> None:
    """Publish the row's task (after its transaction commits); a broker that does not answer
    fails the row and raises BrokerUnavailable (training.dispatch)."""
    dispatch.publish(
        kind.task,
        pk,
        what=f"{kind.label} {pk}",
        fail=lambda message: fail(kind, pk=pk, error=message),
    )


def claim(kind: Kind, *, pk: int, worker_name: str) -> Any | None:
    """queued -> running for this worker; None when another worker has it or it was cancelled."""
    now = timezone.now()
    with transaction.atomic():
        claimed = kind.model.objects.filter(pk=pk, status=QUEUED).update(
            status=RUNNING,
            worker_name=worker_name,
            started_at=now,
            heartbeat_at=now,
            attempts=F("attempts") + 1,
            progress=kind.claimed_progress,
        )
        if not claimed:
            return None
        row = kind.model.objects.select_related(*kind.related).get(pk=pk)
        audit_record(
            actor=None,
            action=f"{kind.action}.claim",
            target=row,
            old_value={"status": QUEUED},
            new_value={"status": RUNNING, "worker": worker_name},
        )
    return row


def heartbeat(kind: Kind, *, pk: int) -> bool:
    """Tell the reaper this row's worker is alive; False when the row is no longer running."""
    return bool(
        kind.model.objects.filter(pk=pk, status=RUNNING).update(heartbeat_at=timezone.now())
    )


def record_progress(kind: Kind, *, pk: int, progress: dict[str, Any], **fields: Any) -> bool:
    """Store a running row's progress (and other live fields, e.g. metrics); also a heartbeat.
    Not a state change, so no audit row; callers throttle it."""
    return bool(
        kind.model.objects.filter(pk=pk, status=RUNNING).update(
            progress=progress, heartbeat_at=timezone.now(), **fields
        )
    )


def cancel_requested(kind: Kind, *, pk: int) -> bool:
    return kind.model.objects.filter(pk=pk, cancel_requested=True).exists()


def cancel(kind: Kind, *, row: Row, actor: AbstractBaseUser) -> Row:
    """A user's cancel: a queued row ends at once; a running one is asked to stop (its worker
    ends it within a step). Audited once, however often the user clicks."""
    cancelled = transition(
        model=kind.model,
        pk=row.pk,
        from_statuses=(QUEUED,),
        to_status=CANCELLED,
        action=f"{kind.action}.cancel",
        actor=actor,
        fields=lambda locked: {"cancel_requested": True, **ended(locked, "cancelled")},
    )
    if cancelled is not None:
        return cancelled
    with transaction.atomic():
        asked = kind.model.objects.filter(pk=row.pk, status=RUNNING, cancel_requested=False)
        if asked.update(cancel_requested=True):
            audit_record(
                actor=actor,
                action=f"{kind.action}.cancel_request",
                target=row,
                old_value={"cancel_requested": False},
                new_value={"cancel_requested": True},
            )
    row.refresh_from_db()
    return row


def mark_cancelled(kind: Kind, *, pk: int) -> Any | None:
    """The worker saw the cancel request and stopped: running -> cancelled."""
    return transition(
        model=kind.model,
        pk=pk,
        from_statuses=(RUNNING,),
        to_status=CANCELLED,
        action=f"{kind.action}.cancelled",
        fields=lambda row: ended(row, "cancelled"),
    )


def fail(
    kind: Kind,
    *,
    pk: int,
    error: str,
    actor: AbstractBaseUser | None = None,
    still: Q | None = None,
) -> Any | None:
    """queued or running -> failed, with the error a user reads."""
    return transition(
        model=kind.model,
        pk=pk,
        from_statuses=(QUEUED, RUNNING),
        to_status=FAILED,
        action=f"{kind.action}.fail",
        actor=actor,
        fields=lambda row: {"error": error, **ended(row, "failed")},
        audit_extra={"error": error},
        still=still,
    )


def reap_stale(
    kind: Kind, *, older_than_seconds: float | None = None, worker_name: str | None = None
) -> list[int]:
    """Fail running rows whose worker stopped sending heartbeats (or, given ``worker_name``,
    the rows that worker left running before it restarted). Returns the ids it failed."""
    threshold = stale_after_seconds() if older_than_seconds is None else older_than_seconds
    cutoff = timezone.now() - timedelta(seconds=threshold)
    stale = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True)
    if worker_name:
        stale |= Q(worker_name=worker_name)
    reaped = []
    candidates = kind.model.objects.filter(stale, status=RUNNING).only("pk", "worker_name")
    for row in candidates:
        if worker_name and row.worker_name == worker_name:
            reason = f"its worker {row.worker_name} restarted while running it"
        else:
            reason = silent_worker(row.worker_name, threshold, long=not kind.terse)
        # Re-checked under the row lock: a heartbeat that arrived meanwhile saves the row.
        if fail(kind, pk=row.pk, error=kind.stopped_error(reason), still=stale) is not None:
            reaped.append(row.pk)
    return reaped


def reap_left_by_worker(kind: Kind, worker_name: str | None) -> None:
    """At a worker's start: fail the rows a worker of the same name left running (it cannot
    still be running them). Logs instead of raising: a worker must start even if the database
    is briefly away."""
    try:
        reaped = reap_stale(kind, worker_name=worker_name)
    except Exception:
        logger.exception("could not reap the %s rows left by %s", kind.action, worker_name)
        return
    if reaped:
        logger.warning("failed %s rows %s left running by a dead worker", kind.action, reaped)


# --------------------------------------------------------------------------- on the worker


class Heartbeat(threading.Thread):
    """Calls ``beat`` every few seconds while the engine holds the main thread."""

    def __init__(self, name: str, beat: Callable[[], object], every_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.beat, self.every_s = beat, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.every_s):
                try:
                    self.beat()
                except Exception:  # a lost connection must not kill the thread; retry next beat
                    logger.exception("%s failed", self.name)
                    close_old_connections()
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def beating(kind: Kind, pk: int) -> Heartbeat:
    """A started heartbeat thread for row ``pk``; stop it when the work ends."""
    thread = Heartbeat(
        f"heartbeat-{kind.action}-{pk}", lambda: heartbeat(kind, pk=pk), heartbeat_seconds()
    )
    thread.start()
    return thread


def run_to_end(kind: Kind, pk: int, work: Callable[[], str]) -> str:
    """Run ``work`` (a claimed row's work; it records success and returns the final status)
    under a heartbeat, and end the row however the work stops: ``Cancelled`` ends it cancelled,
    an ``EngineError`` fails it with its one-line message, anything else fails it naming the
    error (the worker's log has the traceback). Returns the final status."""
    from training.engine import Cancelled, EngineError

    thread = beating(kind, pk)
    try:
        return work()
    except Cancelled:
        mark_cancelled(kind, pk=pk)
        return CANCELLED
    except EngineError as error:
        fail(kind, pk=pk, error=str(error))
        return FAILED
    except Exception as error:
        logger.exception("%s %s failed", kind.label, pk)
        fail(kind, pk=pk, error=kind.unexpected_error(error))
        return FAILED
    finally:
        thread.stop()


class CancelCheck:
    """The engine's should_cancel: reads the row's cancel flag at most every ``every_s``."""

    def __init__(self, kind: Kind, pk: int, every_s: float = CANCEL_CHECK_EVERY_S) -> None:
        self.kind, self.pk, self.every_s = kind, pk, every_s
        self.last_check = float("-inf")
        self.cancelled = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self.last_check >= self.every_s:
            self.last_check = now
            self.cancelled = cancel_requested(self.kind, pk=self.pk)
        return self.cancelled
