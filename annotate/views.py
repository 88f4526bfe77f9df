"""The annotator's and the curator's pages. Thin: a form, one service or selector call, a render.

The compare page is one template with a `pair` partial: a full page on a normal request, only
the partial when htmx asks (after a judgment or an undo), so the next pair appears without a
page load and every action still works without JavaScript.
"""

from dataclasses import dataclass, field

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from accounts.roles import curator_required
from annotate import reports, selectors, services
from annotate.field_rules import MAX_TEXT_CHARS
from annotate.forms import (
    AccountCreateForm,
    CaseChecksForm,
    CaseFilterForm,
    CaseUploadForm,
    JudgeForm,
    MemberAddForm,
    MemberRemoveForm,
    ProjectCreateForm,
    ProjectSettingsForm,
    Ticket,
    choice_for,
    side_for,
)
from annotate.importing import ImportRejected
from annotate.models import Case, Choice, Comparison, Judgment, Project, Response
from core.http import HtmxHttpRequest, page_or_partial

CASES_PER_PAGE = 25


@require_GET
def home(request: HtmxHttpRequest) -> HttpResponse:
    projects = reports.projects_for_home(user=request.user)
    return render(request, "home.html", {"projects": projects})


# --- Compare ---------------------------------------------------------------------------------


@dataclass
class ScreenSide:
    screen: str  # "left" | "right"
    label: str  # what the annotator reads: "A" on the left, "B" on the right
    response: Response


@dataclass
class PairItem:
    """One comparison as this annotator sees it: sides in their order, and the editor's start."""

    comparison: Comparison
    ticket: str
    sides: list[ScreenSide]
    messages: list[dict] | None
    prompt_text: str
    editor_pick: str = ""  # the editor's "which was better": never preset but from an undo
    edit_text: str = ""
    edited: bool = False
    raw_texts: dict = field(default_factory=dict)


def _pair_item(
    *,
    comparison: Comparison,
    shown_left: str,
    user: AbstractBaseUser,
    undone: Judgment | None = None,
) -> PairItem:
    left, right = (
        (comparison.response_a, comparison.response_b)
        if shown_left == "a"
        else (comparison.response_b, comparison.response_a)
    )
    prompt = comparison.case.prompt
    ticket = Ticket.issue(comparison_id=comparison.pk, shown_left=shown_left, user_id=user.pk)
    item = PairItem(
        comparison=comparison,
        ticket=ticket.sign(),
        sides=[ScreenSide("left", "A", left), ScreenSide("right", "B", right)],
        messages=prompt if isinstance(prompt, list) else None,
        prompt_text=prompt if isinstance(prompt, str) else "",
        raw_texts={"left": left.text, "right": right.text},
    )
    # The editor starts empty, with no side picked: a preset side would be a vote the annotator
    # never cast. Undoing a corrected answer brings back exactly what was written and picked.
    if undone is not None and undone.edited:
        item.edited = True
        item.edit_text = undone.edited
        item.editor_pick = side_for(undone.choice, shown_left) or undone.choice
    return item


def _project_for_annotator(request: HtmxHttpRequest, slug: str) -> Project:
    """The project, if this user may label it: 403 when it is restricted to other members."""
    return selectors.project_for_user(slug=slug, user=request.user)


def _render_pair(
    request: HtmxHttpRequest,
    project: Project,
    *,
    item: PairItem | None = None,
    notice: str = "",
    notice_kind: str = "info",
) -> HttpResponse:
    if item is None:
        leased = services.lease_next_comparison(project=project, annotator=request.user)
        if leased is not None:
            comparison, _lease, shown_left = leased
            item = _pair_item(comparison=comparison, shown_left=shown_left, user=request.user)
    context = {
        "project": project,
        "item": item,
        "notice": notice,
        "notice_kind": notice_kind,
        "max_text_length": MAX_TEXT_CHARS,
    }
    return render(request, page_or_partial(request, "annotate/compare.html", "pair"), context)


def _as_seen(choice: str, shown_left: str) -> str:
    """A choice in the words of the screen this annotator saw: "A better" means the left one."""
    side = side_for(choice, shown_left)
    return {"left": "A better", "right": "B better"}.get(side or "", Choice(choice).label)


@require_GET
@vary_on_headers("HX-Request")
def compare(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project_for_annotator(request, slug)
    return _render_pair(request, project)


@require_POST
@vary_on_headers("HX-Request")
def judge(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project_for_annotator(request, slug)
    form = JudgeForm(request.POST, user=request.user)
    if not form.is_valid():
        reasons = "; ".join(error for errors in form.errors.values() for error in errors)
        if request.htmx:
            return _render_pair(request, project, notice=reasons, notice_kind="error")
        # Plain text: the reasons may quote what was posted, which must never become markup.
        return HttpResponseBadRequest(reasons, content_type="text/plain; charset=utf-8")
    ticket: Ticket = form.cleaned_data["ticket"]
    comparison = selectors.comparison_in_project(
        project=project, comparison_id=ticket.comparison_id
    )
    choice = choice_for(form.cleaned_data["pick"], ticket.shown_left)
    try:
        judgment, _created = services.judgment_submit(
            comparison=comparison,
            annotator=request.user,
            choice=choice,
            edited=form.cleaned_data["edited"],
            shown_left=ticket.shown_left,
            duration_ms=ticket.duration_ms(),
        )
    except ValidationError as exc:
        notice, kind = " ".join(exc.messages), "error"
    except (services.JudgmentConflict, services.ComparisonTaken) as exc:
        notice, kind = str(exc), "error"
    else:
        label = _as_seen(choice, ticket.shown_left)
        notice = f"Saved: {label}{' with your correct answer' if judgment.edited else ''}."
        kind = "success"
        phrases = form.cleaned_data["key_phrases"]
        if phrases and judgment.edited:
            services.case_add_must_include(
                case=comparison.case, phrases=phrases, actor=request.user
            )
            count = len(phrases)
            notice = (
                f"{notice[:-1]} and {count} phrase{pluralize(count)} that "
                f"matter{pluralize(count, 's,')}."
            )
    if not request.htmx:
        (messages.success if kind == "success" else messages.error)(request, notice)
        return redirect("compare", slug=project.slug)
    return _render_pair(request, project, notice=notice, notice_kind=kind)


@require_POST
@vary_on_headers("HX-Request")
def undo(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project_for_annotator(request, slug)
    undone = services.judgment_undo(annotator=request.user, project=project)
    if not request.htmx:
        # The undone comparison is leased back to this annotator, so the page shows it next.
        messages.info(request, "Undone." if undone else "Nothing to undo.")
        return redirect("compare", slug=project.slug)
    if undone is None:
        return _render_pair(request, project, notice="Nothing to undo.")
    comparison = selectors.comparison_in_project(
        project=project, comparison_id=undone.comparison_id
    )
    item = _pair_item(
        comparison=comparison, shown_left=undone.shown_left, user=request.user, undone=undone
    )
    was = _as_seen(undone.choice, undone.shown_left)
    return _render_pair(
        request, project, item=item, notice=f"Undone: {was}. Judge this pair again."
    )


# --- Projects (curators) -------------------------------------------------------------------------


@curator_required
@require_http_methods(["GET", "POST"])
def project_create(request: HtmxHttpRequest) -> HttpResponse:
    form = ProjectCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        project = services.project_create(**form.cleaned_data, actor=request.user)
        messages.success(request, f"Project {project.name} created. Import cases next.")
        return redirect("case_upload", slug=project.slug)
    status = 400 if request.method == "POST" else 200  # the form again, with its errors
    return render(
        request, "annotate/project_form.html", {"form": form, "project": None}, status=status
    )


@curator_required
@require_http_methods(["GET", "POST"])
def project_settings(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(slug=slug, user=request.user)
    form = ProjectSettingsForm(request.POST or None, instance=project)
    if request.method == "POST" and form.is_valid():
        services.project_update(
            project=project,
            name=form.cleaned_data["name"],
            guidelines=form.cleaned_data["guidelines"],
            overlap=form.cleaned_data["overlap"],
            restricted=form.cleaned_data["restricted"],
            members=list(form.cleaned_data["members"]),
            actor=request.user,
        )
        messages.success(request, "Settings saved.")
        return redirect("project_settings", slug=project.slug)
    status = 400 if request.method == "POST" else 200  # the form again, with its errors
    return render(
        request, "annotate/project_form.html", {"form": form, "project": project}, status=status
    )


@curator_required
@require_GET
def project_report(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(slug=slug, user=request.user)
    report = reports.project_report(project=project)
    return render(request, "annotate/project_report.html", {"project": project, "report": report})


@curator_required
@require_GET
@vary_on_headers("HX-Request")
def case_list(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(slug=slug, user=request.user)
    form = CaseFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    cases = reports.cases_filtered(project=project, filters=filters)
    page = Paginator(cases, CASES_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"project": project, "form": form, "page": page, "query": query.urlencode()}
    return render(request, page_or_partial(request, "annotate/case_list.html", "cases"), context)


@curator_required
@require_http_methods(["GET", "POST"])
def case_upload(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(slug=slug, user=request.user)
    form = CaseUploadForm(request.POST or None, request.FILES or None)
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            result = services.cases_import(
                project=project, file_name=upload.name, data=upload.read(), actor=request.user
            )
        except ImportRejected as exc:
            errors = exc.messages()
        else:
            messages.success(
                request,
                f"Imported {upload.name}: {result.cases} case{pluralize(result.cases)}, "
                f"{result.comparisons} comparison{pluralize(result.comparisons)} "
                f"({result.labelled_pairs} of them already labelled).",
            )
            return redirect("case_list", slug=project.slug)
    status = 400 if request.method == "POST" else 200
    context = {
        "project": project,
        "form": form,
        "errors": errors,
        "max_upload_bytes": settings.PATCHWISE_MAX_UPLOAD_BYTES,
    }
    return render(request, "annotate/case_upload.html", context, status=status)


@curator_required
@require_http_methods(["GET", "POST"])
def project_team(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """Who may work on the project (a restricted one is for its members and staff): add an
    account, take one off, or create one for a newcomer with a password shown once."""
    project = selectors.project_for_user(slug=slug, user=request.user)
    add_form = MemberAddForm(prefix="add")
    create_form = AccountCreateForm(prefix="new")
    remove_form = None
    created = None
    status = 200
    if request.method == "POST":
        action = request.POST.get("action")
        status = 400  # unless the action goes through: the page again, with why
        if action == "add":
            add_form = MemberAddForm(request.POST, prefix="add")
            if add_form.is_valid():
                user = add_form.cleaned_data["username"]
                services.project_add_member(project=project, user=user, actor=request.user)
                messages.success(request, f"{user.username} is a member of {project.name}.")
                return redirect("project_team", slug=project.slug)
        elif action == "remove":
            remove_form = MemberRemoveForm(request.POST, project=project)
            if remove_form.is_valid():
                user = remove_form.cleaned_data["username"]
                services.project_remove_member(project=project, user=user, actor=request.user)
                messages.success(request, f"{user.username} is no longer a member.")
                return redirect("project_team", slug=project.slug)
        elif action == "create":
            create_form = AccountCreateForm(request.POST, prefix="new")
            if create_form.is_valid():
                try:
                    user, password = services.project_account_create(
                        project=project, actor=request.user, **create_form.cleaned_data
                    )
                except ValidationError as exc:
                    create_form.add_error(None, " ".join(exc.messages))
                else:
                    created = {"username": user.username, "password": password}
                    create_form = AccountCreateForm(prefix="new")
                    status = 200
    context = {
        "project": project,
        "members": selectors.project_members(project=project),
        "add_form": add_form,
        "create_form": create_form,
        "remove_form": remove_form,
        "created": created,
    }
    response = render(request, "annotate/project_team.html", context, status=status)
    if created:
        response["Cache-Control"] = "no-store"  # the password is shown once, and kept nowhere
    return response


def _case_page(
    request: HtmxHttpRequest,
    project: Project,
    case: Case,
    form: CaseChecksForm,
    *,
    status: int = 200,
    template: str = "annotate/case_detail.html",
) -> HttpResponse:
    """The case page, with the checks' preview on the case's answers (the form's checks once
    they are valid, else the saved ones)."""
    checks = (
        {name: form.cleaned_data[name] for name in ("must_include", "must_not_include")}
        if form.is_bound and form.is_valid()
        else {"must_include": case.must_include, "must_not_include": case.must_not_include}
    )
    context = {
        "project": project,
        "case": case,
        "form": form,
        "answers": selectors.case_checked_answers(case=case, **checks),
        "checks": checks,
        "previewing": form.is_bound,
    }
    return render(request, template, context, status=status)


@curator_required
@require_http_methods(["GET", "POST"])
def case_detail(request: HtmxHttpRequest, slug: str, case_id: int) -> HttpResponse:
    """A case, its answers, and the checks a right answer must pass (curators write them)."""
    project = selectors.project_for_user(slug=slug, user=request.user)
    case = get_object_or_404(Case, pk=case_id, project=project)
    form = CaseChecksForm.for_case(case, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.case_set_checks(case=case, actor=request.user, **form.cleaned_data)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field, errors)
        else:
            messages.success(request, f"Checks of case #{case.pk} saved.")
            return redirect("case_detail", slug=project.slug, case_id=case.pk)
    return _case_page(request, project, case, form, status=400 if request.method == "POST" else 200)


@curator_required
@require_POST
@vary_on_headers("HX-Request")
def case_checks_preview(request: HtmxHttpRequest, slug: str, case_id: int) -> HttpResponse:
    """The checks as typed, run on the case's answers; nothing is saved."""
    project = selectors.project_for_user(slug=slug, user=request.user)
    case = get_object_or_404(Case, pk=case_id, project=project)
    form = CaseChecksForm.for_case(case, request.POST)
    template = page_or_partial(request, "annotate/case_detail.html", "preview")
    # htmx swaps only 2xx answers: the fragment names a bad regex itself, in place
    status = 200 if form.is_valid() or template.endswith("#preview") else 400
    return _case_page(request, project, case, form, status=status, template=template)
