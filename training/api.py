"""Training jobs over JSON: launch, poll, cancel, download (DESIGN.md, "JSON API")."""

from typing import Any

from django.http import FileResponse, HttpRequest
from ninja import Router, Schema
from pydantic import ConfigDict

from accounts.roles import require_curator
from training import artifacts, selectors, services
from training.dispatch import BrokerUnavailable

router = Router(tags=["training"])


class LaunchIn(Schema):
    model_config = ConfigDict(extra="forbid")  # {"confg": ...} must not launch with defaults

    config: dict[str, Any] | None = None


class LaunchOut(Schema):
    id: int
    memory_plan: dict | None = None  # the engine's plan for the worker's GPU (see memory.py)


class Detail(Schema):
    detail: str


@router.post(
    "/projects/{slug}/jobs",
    response={202: LaunchOut, 400: Detail, 403: Detail, 404: Detail, 503: Detail},
)
def launch_job(request: HttpRequest, slug: str, payload: LaunchIn | None = None):
    """Snapshot the project's labels and queue a patch job (curators only)."""
    require_curator(request.user)
    project = selectors.project_for_user(slug=slug, user=request.user)
    try:
        job = services.job_enqueue(
            project=project, actor=request.user, config=payload.config if payload else None
        )
    except services.JobRefused as refused:
        return 400, {"detail": str(refused)}
    except BrokerUnavailable as down:
        return 503, {"detail": str(down)}
    return 202, {"id": job.pk, "memory_plan": job.progress.get("memory_plan")}


@router.get("/jobs/{job_id}", response={200: dict, 403: Detail, 404: Detail})
def job_status(request: HttpRequest, job_id: int):
    """Status, progress (step, total, phase, percent, ETA), latest metrics, and the summary
    (curators only: the report's answers are what the next round shows annotators blind)."""
    require_curator(request.user)
    return selectors.job_api_payload(selectors.job_for_user(job_id=job_id, user=request.user))


@router.post("/jobs/{job_id}/cancel", response={202: dict, 403: Detail, 404: Detail, 409: Detail})
def cancel_job(request: HttpRequest, job_id: int):
    """Cancel a queued job at once, or ask a running one to stop within a step."""
    require_curator(request.user)
    job = selectors.job_for_user(job_id=job_id, user=request.user)
    try:
        job = services.job_cancel(job=job, actor=request.user)
    except services.JobRefused as refused:
        return 409, {"detail": str(refused)}
    return 202, selectors.job_api_payload(job)


@router.get("/jobs/{job_id}/adapter.zip", response={403: Detail, 404: Detail, 409: Detail})
def download_adapter(request: HttpRequest, job_id: int):
    """The adapter zip (PEFT files + model card), after checking its sha256."""
    require_curator(request.user)
    job = selectors.job_for_user(job_id=job_id, user=request.user)
    try:
        path = artifacts.verified_artifact(job)
    except artifacts.ArtifactError as error:
        return 409, {"detail": str(error)}
    response = FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=artifacts.download_name(job),
        content_type="application/zip",
    )
    response["X-Checksum-SHA256"] = job.artifact_sha256
    return response
