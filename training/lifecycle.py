"""One state change of a queued/running row (a training job, a generation request), audited.

The row is locked and filtered by its current status in the same statement, so two workers, or a
worker and the reaper, cannot both move it: the loser gets None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.db.models import Q

from accounts.services import audit_record

Row = TypeVar("Row", bound=models.Model)


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


def request_cancel(*, row: Row, running_status: str, action: str, actor=None) -> Row:
    """Ask the worker running ``row`` to stop (it checks the flag between steps); audited once,
    however often the user clicks."""
    with transaction.atomic():
        updated = (
            type(row)
            .objects.filter(pk=row.pk, status=running_status, cancel_requested=False)
            .update(cancel_requested=True)
        )
        if updated:
            audit_record(
                actor=actor,
                action=action,
                target=row,
                old_value={"cancel_requested": False},
                new_value={"cancel_requested": True},
            )
    row.refresh_from_db()
    return row
