"""Judgments: recording one (once per annotator and comparison) and taking the last one back.

`judgment_submit` takes the comparison's row lock, and its filtered UPDATE of `judgment_count`
refuses to pass the project's overlap; the unique constraint on (comparison, annotator) makes a
second judgment by one annotator impossible. On PostgreSQL it runs inside the database, one call
(queue_sql).
"""

from contextlib import nullcontext

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.services import audit_record
from annotate.field_rules import InvalidValue, clean_text
from annotate.models import Case, Choice, Comparison, Judgment, Lease, Origin, Project, Side
from annotate.selectors import sees_every_project
from annotate.services import queue_sql
from annotate.services.cases import response_create
from annotate.services.queue import LEASE_DURATION
from core import rows


class JudgmentConflict(Exception):
    """The annotator already judged this comparison differently (API: 409)."""


class NotLeased(Exception):
    """A judgment of a comparison the annotator holds no live lease on (API: 409)."""


class ComparisonTaken(Exception):
    """The comparison already has its overlap of judgments and other annotators' leases (409)."""


def judgment_submit(
    *,
    comparison: Comparison | int,
    annotator: AbstractBaseUser,
    choice: str,
    edited: str = "",
    rationale: str = "",
    shown_left: str | None = None,
    duration_ms: int | None = None,
    as_shown: bool = False,
    require_lease: bool = False,
) -> tuple[Judgment, bool]:
    """Record the annotator's judgment; returns (judgment, created).

    `comparison` is the instance or its id (the API's path: the database checks that it exists
    and that the annotator may work on its project, in the same statement that judges it).
    `choice` names the comparison's response_a/response_b; with `as_shown` it names them as this
    annotator was shown them (their lease's side, or for a repeat their judgment's), as the API
    does. A repeat of the same judgment returns the first one with created=False. A different
    second judgment raises JudgmentConflict; a comparison whose overlap is used up by others
    raises ComparisonTaken. An `edited` answer is also stored as a human Response of the case.

    With `require_lease` (the API, which proves nothing else) the comparison must be leased to
    the annotator, the lease not expired: NotLeased otherwise. The compare page proves what it
    showed with its signed ticket instead (`shown_left`).
    """
    edited = edited if edited and edited.strip() else ""
    errors = {}
    if choice not in Choice.values:
        errors["choice"] = f"choice must be one of {', '.join(Choice.values)}, not {choice!r}"
    if shown_left not in (None, *Side.values):
        errors["shown_left"] = "shown_left must be 'a' or 'b'"
    for name, text in (("edited", edited), ("rationale", rationale)):
        try:
            if text:
                clean_text(name, text)
        except InvalidValue as exc:
            errors[name] = str(exc)
    if duration_ms is not None and not (0 <= duration_ms < 2**31):
        errors["duration_ms"] = "duration_ms must be a non-negative number of milliseconds"
    if errors:
        raise ValidationError(errors)
    comparison_id = comparison if isinstance(comparison, int) else comparison.pk
    if not 0 < comparison_id <= rows.MAX_ID:  # PostgreSQL would refuse it: no such comparison
        raise Comparison.DoesNotExist
    now = timezone.now()
    params = {
        "comparison": comparison_id,
        "user": annotator.pk,
        # Restricted projects are checked in the same statement; staff may judge in all.
        "privileged": sees_every_project(annotator),
        "now": connection.ops.adapt_datetimefield_value(now),
        "choice": choice,
        "as_shown": as_shown,
        "shown_left": shown_left or "",
        "edited": edited,
        "corrected": None,
        "rationale": rationale,
        "duration": duration_ms,
        "require_lease": require_lease,
    }
    corrected = None
    # Without a corrected answer the judgment is one statement (on PostgreSQL), atomic alone.
    with transaction.atomic() if edited else nullcontext():
        if edited:
            case = Case.objects.filter(comparisons=comparison_id).first()
            if case is None:
                raise Comparison.DoesNotExist(f"comparison {comparison_id} does not exist")
            corrected = response_create(
                case=case, text=edited, origin=Origin.HUMAN, created_by=annotator
            )
            params["corrected"] = corrected.pk
        outcome, judgment_id, judged_left, judged_choice = queue_sql.judge(params, annotator)
        if outcome != "created" and edited:
            transaction.set_rollback(True)  # the corrected answer goes with the judgment
    if outcome == "missing":
        raise Comparison.DoesNotExist(f"comparison {comparison_id} does not exist")
    if outcome == "forbidden":
        raise PermissionDenied("This comparison's project is restricted to its members.")
    if outcome == "exists":
        existing = Judgment.objects.get(pk=judgment_id)
        wanted = queue_sql.flip_for(choice, existing.shown_left) if as_shown else choice
        if _same_judgment(existing, choice=wanted, edited=edited, rationale=rationale):
            return existing, False
        was = (
            queue_sql.flip_for(existing.choice, existing.shown_left)
            if as_shown
            else existing.choice
        )
        differs = "" if existing.choice != wanted else " with another corrected answer or rationale"
        raise JudgmentConflict(
            f"You already judged comparison {comparison_id} as {was!r}{differs}; "
            "undo it first to change it."
        )
    if outcome == "not_leased":
        raise NotLeased(
            f"Comparison {comparison_id} was not leased to you: judge what "
            "GET /api/v1/projects/<slug>/comparisons/next hands you."
        )
    if outcome == "expired":
        raise NotLeased(
            f"Your lease on comparison {comparison_id} expired (leases last "
            f"{int(LEASE_DURATION.total_seconds())} s); ask for the next comparison again."
        )
    if outcome != "created":
        raise ComparisonTaken(
            {
                "labelled": f"Comparison {comparison_id} was imported already labelled.",
                "taken": f"Comparison {comparison_id} is with other annotators; take the next one.",
                "full": f"Comparison {comparison_id} has all its judgments.",
            }[outcome]
        )
    # The row just written, as a queryset would load it, from the values the statement stored.
    stored = {
        "id": judgment_id,
        "comparison_id": comparison_id,
        "annotator_id": annotator.pk,
        "choice": judged_choice,
        "edited": edited,
        "corrected_response_id": corrected.pk if corrected is not None else None,
        "rationale": rationale,
        "shown_left": judged_left,
        "duration_ms": duration_ms,
        "created_at": now,
    }
    attnames = [field.attname for field in Judgment._meta.concrete_fields]
    judgment = Judgment.from_db(connection.alias, attnames, [stored[name] for name in attnames])
    judgment.annotator, judgment.corrected_response = annotator, corrected
    if not isinstance(comparison, int):
        judgment.comparison = comparison
        comparison.judgment_count += 1
        comparison.needs_judgments = comparison.judgment_count < comparison.project.overlap
    return judgment, True


def _same_judgment(judgment: Judgment, *, choice: str, edited: str, rationale: str) -> bool:
    return (judgment.choice, judgment.edited, judgment.rationale) == (choice, edited, rationale)


@transaction.atomic
def judgment_undo(*, annotator: AbstractBaseUser, project: Project) -> Judgment | None:
    """Take back the annotator's last judgment in the project and lease its comparison to them.

    Returns the deleted judgment (its fields intact, its pk None), or None when there is none.
    """
    last = (
        Judgment.objects.filter(annotator=annotator, comparison__project=project)
        .order_by("-created_at", "-id")
        .first()
    )
    if last is None:
        return None
    comparison = Comparison.objects.select_for_update(of=("self",)).get(pk=last.comparison_id)
    judgment = Judgment.objects.filter(pk=last.pk).select_related("corrected_response").first()
    if judgment is None:  # undone meanwhile, from another tab
        return None
    old_value = {
        "comparison": comparison.pk,
        "choice": judgment.choice,
        "edited": judgment.edited,
        "rationale": judgment.rationale,
    }
    audit_record(actor=annotator, action="judgment.undo", target=judgment, old_value=old_value)
    corrected = judgment.corrected_response
    judgment.delete()
    if (
        corrected is not None
        and not Comparison.objects.filter(
            Q(response_a=corrected) | Q(response_b=corrected)
        ).exists()
    ):
        corrected.delete()
    count = max(comparison.judgment_count - 1, 0)
    Comparison.objects.filter(pk=comparison.pk).update(
        judgment_count=count, needs_judgments=count < project.overlap and not comparison.label
    )
    # One lease per annotator and project: the one they held returns to the pool, and the
    # undone comparison is theirs again, so the next page shows it.
    Lease.objects.filter(annotator=annotator, comparison__project=project).delete()
    Lease.objects.create(
        comparison=comparison,
        annotator=annotator,
        expires_at=timezone.now() + LEASE_DURATION,
        shown_left=judgment.shown_left,
    )
    judgment.comparison = comparison
    return judgment
