"""Job pages: a project's jobs with the launch form, one job live (htmx), cancel, download.

The job page and its live fragment are one template (``{% partialdef live %}``); htmx polls the
fragment every second while the job is queued or running, and the finished fragment carries no
trigger, so polling stops by itself.
"""

from django.contrib import messages
from django.http import FileResponse, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from accounts.roles import curator_required
from core.http import HtmxHttpRequest, page_or_partial
from training import artifacts, charts, selectors, services
from training.dispatch import BrokerUnavailable
from training.forms import LaunchForm


@curator_required
@require_http_methods(["GET", "POST"])
def project_jobs(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(slug=slug, user=request.user)
    form = LaunchForm()
    status = 200
    if request.method == "POST":
        form = LaunchForm(request.POST)
        status = 400  # unless it launches: the form again, with why
        if form.is_valid():
            try:
                job = services.job_enqueue(
                    project=project, actor=request.user, config=form.to_config()
                )
            except services.JobRefused as refused:
                form.add_error(None, f"Cannot launch: {refused}")
            except BrokerUnavailable as down:
                form.add_error(None, str(down))
                status = 503
            else:
                messages.success(request, f"Job {job.pk} queued.")
                return redirect("training:job_detail", job_id=job.pk)
    jobs = list(selectors.jobs_for_project(project=project))
    context = {
        "project": project,
        "jobs": jobs,
        "form": form,
        "preview": selectors.launch_preview(project=project),
    }
    return render(request, "training/project_jobs.html", context, status=status)


@curator_required
@require_GET
@vary_on_headers("HX-Request")
def job_detail(request: HtmxHttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_for_user(job_id=job_id, user=request.user)
    context = {
        "job": job,
        "charts": charts.job_charts(job.metrics_series),
        "report": selectors.report_view(job, regression_filter=request.GET.get("regression", "")),
        "memory_plan": selectors.job_memory_plan(job),
    }
    return render(request, page_or_partial(request, "training/job_detail.html", "live"), context)


@curator_required
@require_POST
def job_cancel(request: HtmxHttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_for_user(job_id=job_id, user=request.user)
    try:
        services.job_cancel(job=job, actor=request.user)
    except services.JobRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"Cancel requested for job {job.pk}.")
    return redirect("training:job_detail", job_id=job.pk)


@curator_required
@require_GET
def job_download(request: HtmxHttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_for_user(job_id=job_id, user=request.user)
    try:
        path = artifacts.verified_artifact(job)
    except artifacts.ArtifactError as error:
        return render(
            request,
            "training/download_refused.html",
            {"job": job, "reason": str(error)},
            status=409,
        )
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=artifacts.download_name(job),
        content_type="application/zip",
    )
