"""The labelling API: flag cases, lease and judge comparisons, stream the preference pairs.

Handlers stay thin: a schema, one service or selector call, a status code. Flagging cases and
exporting pairs are curator actions (a production system posts with a curator's token);
leasing and judging are for every annotator who may work on the project.
"""

import json
from datetime import datetime
from typing import Any, Literal

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from ninja import Router, Schema
from pydantic import ConfigDict

from accounts.roles import require_curator
from annotate import selectors, services
from annotate.models import Comparison, Judgment

router = Router(tags=["annotation"])


class Detail(Schema):
    detail: Any


class CaseIn(Schema):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not lost data

    prompt: str | list[dict[str, Any]]
    response: str
    better_response: str | None = None
    note: str = ""
    trace_id: str = ""
    split: Literal["train", "heldout", "regression"] = "train"
    tags: list[str] = []
    topic: str = ""
    must_include: list[str] = []  # phrases or /regex/ a right answer contains
    must_not_include: list[str] = []  # phrases or /regex/ it must not contain


class IdOut(Schema):
    id: int


class ComparisonOut(Schema):
    id: int
    prompt: str | list[dict[str, Any]]
    a: str
    b: str
    lease_expires_at: datetime


class JudgmentIn(Schema):
    model_config = ConfigDict(extra="forbid")

    choice: Literal["a", "b", "tie", "both_bad"]
    edited: str = ""
    rationale: str = ""
    duration_ms: int | None = None


class JudgmentOut(Schema):
    id: int
    comparison_id: int
    choice: str
    created: bool


def _validation_detail(exc: ValidationError) -> Any:
    return exc.message_dict if hasattr(exc, "error_dict") else exc.messages


@router.post(
    "/projects/{slug}/cases",
    response={201: IdOut, 403: Detail, 404: Detail, 422: Detail},
    summary="Flag a bad case",
)
def case_flag(request: HttpRequest, slug: str, payload: CaseIn):
    """Curators' tokens only. A train case with a better_response is queued as a comparison."""
    require_curator(request.user)
    project = selectors.project_for_user(slug=slug, user=request.user)
    try:
        case = services.case_create(
            project=project, source="api", created_by=request.user, **payload.dict()
        )
    except ValidationError as exc:
        return 422, {"detail": _validation_detail(exc)}
    return 201, {"id": case.pk}


@router.get(
    "/projects/{slug}/comparisons/next",
    response={200: ComparisonOut, 204: None, 403: Detail, 404: Detail},
    summary="Lease your next comparison",
)
def comparison_next(request: HttpRequest, slug: str):
    """ "a" and "b" are in the order this annotator is shown; a judgment's choice refers to them.

    Origins (deployed, human, generated) are not part of the answer, so a blind comparison
    stays blind.
    """
    leased = services.lease_next_in_project(slug=slug, annotator=request.user)
    if leased is None:
        return 204, None
    comparison, lease, shown_left = leased
    a, b = comparison.response_a.text, comparison.response_b.text
    if shown_left == "b":
        a, b = b, a
    return 200, {
        "id": comparison.pk,
        "prompt": comparison.case.prompt,
        "a": a,
        "b": b,
        "lease_expires_at": lease.expires_at,
    }


@router.post(
    "/comparisons/{comparison_id}/judgment",
    response={
        200: JudgmentOut,
        201: JudgmentOut,
        403: Detail,
        404: Detail,
        409: Detail,
        422: Detail,
    },
    summary="Judge a comparison",
)
def judgment_create(request: HttpRequest, comparison_id: int, payload: JudgmentIn):
    """201 for a new judgment; 200 with the same id for a repeat of it; 409 for a different one.

    `choice` refers to "a" and "b" as /comparisons/next returned them.
    """
    try:
        judgment, created = services.judgment_submit(
            comparison=comparison_id,
            annotator=request.user,
            choice=payload.choice,
            as_shown=True,  # the API's a/b are the order this annotator was shown
            edited=payload.edited,
            rationale=payload.rationale,
            duration_ms=payload.duration_ms,
            require_lease=True,  # only what this caller was handed, and still holds
        )
    except ValidationError as exc:
        return 422, {"detail": _validation_detail(exc)}
    except (services.JudgmentConflict, services.ComparisonTaken, services.NotLeased) as exc:
        return 409, {"detail": str(exc)}
    except PermissionDenied as exc:
        return 403, {"detail": str(exc)}
    except Comparison.DoesNotExist:
        raise Http404("No Comparison matches the given query.") from None
    return (201 if created else 200), _judgment_out(judgment, created)


def _judgment_out(judgment: Judgment, created: bool) -> dict[str, Any]:
    return {
        "id": judgment.pk,
        "comparison_id": judgment.comparison_id,
        "choice": services.flip_for(judgment.choice, judgment.shown_left),
        "created": created,
    }


@router.get(
    "/projects/{slug}/pairs.jsonl",
    response={200: None, 403: Detail, 404: Detail},
    summary="Stream the preference pairs (TRL format)",
)
def pairs_export(request: HttpRequest, slug: str) -> HttpResponse:
    """One {"prompt", "chosen", "rejected"} per line, by the rules in docs/export-rules.md."""
    require_curator(request.user)
    project = selectors.project_for_user(slug=slug, user=request.user)
    lines = (
        json.dumps(pair, ensure_ascii=False) + "\n"
        for pair in selectors.preference_pairs(project=project, trl=True)
    )
    response = StreamingHttpResponse(lines, content_type="application/x-ndjson; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-pairs.jsonl"'
    return response
