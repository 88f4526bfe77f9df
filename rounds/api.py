"""Candidate generation over JSON: launch, poll, cancel (curators only)."""

from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema
from pydantic import ConfigDict

from accounts.roles import require_curator
from annotate.selectors import project_for_user
from annotate.services import require_project_access
from rounds import selectors, services
from rounds.models import GenerationRequest
from training.dispatch import BrokerUnavailable

router = Router(tags=["generation"])


class FilterIn(Schema):
    model_config = ConfigDict(extra="forbid")

    split: str = ""
    tag: str = ""


class GenerationIn(Schema):
    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not a default

    case_ids: list[int] | None = None
    filter: FilterIn | None = None
    model: str | None = None
    job_id: int | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    seed: int | None = None


class IdOut(Schema):
    id: int


class Detail(Schema):
    detail: Any


def _generation(request: HttpRequest, generation_id: int) -> GenerationRequest:
    generation = selectors.generation_by_id(generation_id)
    require_project_access(project=generation.project, user=request.user)
    return generation


@router.post(
    "/projects/{slug}/generations",
    response={202: IdOut, 400: Detail, 403: Detail, 404: Detail, 503: Detail},
    summary="Sample candidate answers from a model",
)
def generation_launch(request: HttpRequest, slug: str, payload: GenerationIn | None = None):
    """N candidates per case (default: every flagged case) from the base model, or base + the
    adapter of job `job_id`; they become comparisons with the bad answer and each other."""
    require_curator(request.user)
    project = project_for_user(slug=slug, user=request.user)
    payload = payload or GenerationIn()
    try:
        if payload.case_ids is not None and payload.filter is not None:
            raise selectors.SelectionError("give case_ids or filter, not both")
        if payload.case_ids is not None:
            cases = selectors.cases_for_selection(
                project=project, scope="ids", case_ids=payload.case_ids
            )
            selection = {"kind": "ids", "case_ids": [case.pk for case in cases]}
        elif payload.filter is not None:
            cases = selectors.cases_for_selection(
                project=project, scope="filter", split=payload.filter.split, tag=payload.filter.tag
            )
            selection = {"kind": "filter", "split": payload.filter.split, "tag": payload.filter.tag}
        else:
            cases = selectors.cases_for_selection(project=project, scope="flagged")
            selection = {"kind": "flagged"}
        job = None
        if payload.job_id is not None:
            job = selectors.succeeded_jobs(project=project).filter(pk=payload.job_id).first()
            if job is None:
                raise services.GenerationRefused(
                    f"job {payload.job_id} is not a succeeded job of project {slug}"
                )
        generation = services.generation_create(
            project=project,
            actor=request.user,
            cases=cases,
            selection=selection,
            model_path=payload.model,
            job=job,
            sampling=services.sampling_settings(
                n=payload.n,
                temperature=payload.temperature,
                top_p=payload.top_p,
                max_new_tokens=payload.max_new_tokens,
                seed=payload.seed,
            ),
        )
    except (selectors.SelectionError, services.GenerationRefused) as refused:
        return 400, {"detail": str(refused)}
    except BrokerUnavailable as down:
        return 503, {"detail": str(down)}
    return 202, {"id": generation.pk}


@router.get("/generations/{generation_id}", response={200: dict, 403: Detail, 404: Detail})
def generation_status(request: HttpRequest, generation_id: int):
    """Status, progress (cases done of total), counts, and the error when it failed."""
    require_curator(request.user)
    return selectors.generation_api_payload(_generation(request, generation_id))


@router.post(
    "/generations/{generation_id}/cancel",
    response={202: dict, 403: Detail, 404: Detail, 409: Detail},
)
def generation_cancel(request: HttpRequest, generation_id: int):
    """Cancel a queued request at once, or stop a running one after its current batch."""
    require_curator(request.user)
    try:
        generation = services.generation_cancel(
            generation=_generation(request, generation_id), actor=request.user
        )
    except services.GenerationRefused as refused:
        return 409, {"detail": str(refused)}
    return 202, selectors.generation_api_payload(generation)
