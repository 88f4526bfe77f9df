"""Curator pages: the rounds timeline with "Next round", the candidate form, one generation live.

Every page here is for curators: it names which answer came from which model, which is exactly
what annotators judging blind comparisons must not see. The generation page and its live
fragment are one template (``{% partialdef live %}``); htmx polls it while the request runs.
"""

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from accounts.roles import curator_required
from annotate.models import Project
from annotate.selectors import project_for_user
from annotate.services import require_project_access
from core.http import HtmxHttpRequest, page_or_partial
from rounds import selectors, services
from rounds.forms import GenerationForm
from training.dispatch import BrokerUnavailable


def _project(request: HtmxHttpRequest, slug: str) -> Project:
    """403 for a restricted project the curator is not a member of (staff see all)."""
    return project_for_user(slug=slug, user=request.user)


@curator_required
@require_GET
def project_rounds(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    context = {
        "project": project,
        "timeline": selectors.rounds_timeline(project=project),
        "ready_jobs": list(selectors.jobs_ready_for_round(project=project)),
        "generations": list(selectors.generations_for_project(project=project)[:20]),
    }
    return render(request, "rounds/project_rounds.html", context)


@curator_required
@require_POST
def round_next(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    job_id = request.POST.get("job", "")
    ready = selectors.jobs_ready_for_round(project=project)
    # ASCII digits only ("²" is a digit to str.isdigit), and few enough to be a row id
    is_id = job_id.isascii() and job_id.isdigit() and len(job_id) <= 18
    job = ready.filter(pk=int(job_id)).first() if is_id else None
    if job is None:
        messages.error(request, "Pick a succeeded job that has no round yet.")
        return redirect("rounds:project_rounds", slug=slug)
    try:
        new_round = services.round_next(project=project, job=job, actor=request.user)
    except (services.GenerationRefused, BrokerUnavailable) as refused:
        messages.error(request, f"Cannot start the round: {refused}")
        return redirect("rounds:project_rounds", slug=slug)
    messages.success(
        request,
        f"Round {new_round.number} started: answers from job {job.pk} are being generated; "
        "their blind comparisons join the labelling queue as they come.",
    )
    return redirect("rounds:round_detail", round_id=new_round.pk)


@curator_required
@require_http_methods(["GET", "POST"])
def generation_launch(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    jobs = selectors.succeeded_jobs(project=project)
    initial = {}
    if request.GET.get("case"):
        initial = {"scope": "case", "case_id": request.GET["case"]}
    form = GenerationForm(request.POST or None, jobs=jobs, initial=initial)
    status = 200
    if request.method == "POST":
        status = 400  # unless it launches: the form again, with why
        if form.is_valid():
            data = form.cleaned_data
            try:
                cases = selectors.cases_for_selection(
                    project=project,
                    scope=data["scope"],
                    split=data["split"],
                    tag=data["tag"],
                    case_id=data["case_id"],
                )
                generation = services.generation_create(
                    project=project,
                    actor=request.user,
                    cases=cases,
                    selection=_selection(data),
                    model_path=data["model"] or None,
                    job=data["job"],
                    sampling=form.sampling(),
                )
            except (selectors.SelectionError, services.GenerationRefused) as refused:
                form.add_error(None, f"Cannot generate: {refused}")
            except BrokerUnavailable as down:
                form.add_error(None, str(down))
                status = 503
            else:
                messages.success(
                    request, f"Generation {generation.pk} queued for {len(cases)} cases."
                )
                return redirect("rounds:generation_detail", generation_id=generation.pk)
    context = {"project": project, "form": form}
    return render(request, "rounds/generation_form.html", context, status=status)


def _selection(data: dict) -> dict:
    scope = data["scope"]
    if scope == "filter":
        return {"kind": "filter", "split": data["split"], "tag": data["tag"]}
    if scope == "case":
        return {"kind": "case", "case_id": data["case_id"]}
    return {"kind": scope}


@curator_required
@require_GET
@vary_on_headers("HX-Request")
def generation_detail(request: HtmxHttpRequest, generation_id: int) -> HttpResponse:
    generation = selectors.generation_by_id(generation_id)
    require_project_access(project=generation.project, user=request.user)
    template = page_or_partial(request, "rounds/generation_detail.html", "live")
    return render(request, template, {"generation": generation})


@curator_required
@require_POST
def generation_cancel(request: HtmxHttpRequest, generation_id: int) -> HttpResponse:
    generation = selectors.generation_by_id(generation_id)
    require_project_access(project=generation.project, user=request.user)
    try:
        services.generation_cancel(generation=generation, actor=request.user)
    except services.GenerationRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"Cancel requested for generation {generation.pk}.")
    return redirect("rounds:generation_detail", generation_id=generation.pk)


@curator_required
@require_GET
@vary_on_headers("HX-Request")
def round_detail(request: HtmxHttpRequest, round_id: int) -> HttpResponse:
    """The round's score and answers; while its generation runs, htmx polls the ``live``
    fragment every second (as on the job page) and stops once the generation has finished."""
    current = selectors.round_for_page(round_id=round_id)
    require_project_access(project=current.project, user=request.user)
    timeline = selectors.rounds_timeline(project=current.project)
    row = next(row for row in timeline if row.round.pk == current.pk)
    context = {
        "project": current.project,
        "round": current,
        "row": row,
        "answers": selectors.round_answers(current=current),
        "generating": current.generation is not None and not current.generation.is_finished,
    }
    return render(request, page_or_partial(request, "rounds/round_detail.html", "live"), context)


@curator_required
@require_POST
def round_requeue(request: HtmxHttpRequest, round_id: int) -> HttpResponse:
    current = selectors.round_for_page(round_id=round_id)
    require_project_access(project=current.project, user=request.user)
    try:
        generation = services.round_requeue_failing(current=current, actor=request.user)
    except (services.GenerationRefused, BrokerUnavailable) as refused:
        messages.error(request, str(refused))
        return redirect("rounds:round_detail", round_id=current.pk)
    messages.success(
        request,
        f"Still-failing cases queued for new candidates (generation {generation.pk}).",
    )
    return redirect("rounds:generation_detail", generation_id=generation.pk)
