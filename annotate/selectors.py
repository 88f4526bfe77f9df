"""Reads of annotation data: the projects a user may work on, the export, the eval prompts.

The export rules (docs/export-rules.md) live in `preference_pairs`:

- only cases of split "train" export (held-out and regression prompts measure the patch, so
  they must never be trained on);
- an imported labelled pair exports as it is (chosen over rejected);
- the judgments of a comparison vote: the choice with more votes than any other wins; "a" or "b"
  gives chosen = the winner, rejected = the other; "tie" and "both_bad" give no pair; a split
  vote (two or more choices with the same top count) gives no pair;
- every corrected answer (a judgment's `edited`) is chosen over both original responses,
  whatever the vote, since a person wrote it as the right answer;
- a pair whose chosen and rejected texts are the same is left out, and each (prompt, chosen,
  rejected) appears once per case.
"""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.core.validators import slug_re
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from annotate.models import (
    Case,
    Choice,
    Comparison,
    Judgment,
    Origin,
    Project,
    Response,
    Split,
)
from core import rows
from training.engine.checks import Verdict, verdict

EXPORT_CHUNK = 500


def sees_every_project(user: AbstractBaseUser) -> bool:
    """Staff (and superusers) see restricted projects they are no member of; nobody else does,
    curators included."""
    return bool(user.is_authenticated and user.is_active and (user.is_staff or user.is_superuser))


def may_see_project(*, project: Project, user: AbstractBaseUser) -> bool:
    """The one rule: a restricted project is for its members (annotators and curators) and
    staff; an open one for everyone logged in."""
    if not project.restricted or sees_every_project(user):
        return True
    if not user.is_authenticated:
        return False
    return Project.members.through.objects.filter(project=project.pk, user=user.pk).exists()


def projects_for_user(*, user: AbstractBaseUser) -> QuerySet[Project]:
    """Projects the user may see: open ones, restricted ones they are a member of (all for
    staff)."""
    projects = Project.objects.order_by("name", "id")
    if sees_every_project(user):
        return projects
    member = Project.members.through.objects.filter(project=OuterRef("pk"), user=user.pk)
    return projects.filter(Q(restricted=False) | Q(Exists(member)))


def project_members(*, project: Project) -> list[AbstractBaseUser]:
    """The members, by username, each with ``is_curator`` set (one query)."""
    from accounts.roles import CURATOR

    curator = get_user_model().groups.through.objects.filter(
        user=OuterRef("pk"), group__name=CURATOR
    )
    return list(project.members.annotate(is_curator=Exists(curator)).order_by("username"))


def project_for_user(*, slug: str, user: AbstractBaseUser) -> Project:
    """The project with this slug, for this user: Http404 when there is none, PermissionDenied
    (403) when it is restricted to members they are not one of."""
    project = project_by_slug(slug)
    if not may_see_project(project=project, user=user):
        raise PermissionDenied(f"Project {project.slug!r} is restricted to its members.")
    return project


def _export_comparisons(project: Project) -> QuerySet[Comparison]:
    return (
        Comparison.objects.filter(project=project, case__split=Split.TRAIN)
        .select_related("case", "response_a", "response_b")
        .prefetch_related(
            Prefetch(
                "judgments",
                queryset=Judgment.objects.select_related("corrected_response").order_by("id"),
            )
        )
        .order_by("id")
    )


def _as_completion(prompt: Any, text: str) -> Any:
    """TRL's conversational form answers a message prompt with an assistant message."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def winning_choice(choices: list[str]) -> str | None:
    """The choice with more votes than any other, or None for no votes or a split vote."""
    ranked = Counter(choices).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def comparison_pairs(comparison: Comparison) -> list[tuple[str, str]]:
    """The (chosen, rejected) texts one comparison contributes, per the export rules."""
    a, b = comparison.response_a.text, comparison.response_b.text
    if comparison.label:
        won = comparison.label
        judgments: list[Judgment] = []
    else:
        judgments = list(comparison.judgments.all())
        won = winning_choice([judgment.choice for judgment in judgments])
    pairs = []
    if won == Choice.A:
        pairs.append((a, b))
    elif won == Choice.B:
        pairs.append((b, a))
    for judgment in judgments:
        if judgment.edited:
            pairs += [(judgment.edited, a), (judgment.edited, b)]
    return [(chosen, rejected) for chosen, rejected in pairs if chosen != rejected]


def preference_pairs(*, project: Project, trl: bool = False) -> Iterator[dict[str, Any]]:
    """Stream {"prompt", "chosen", "rejected", "comparison_id", "case_id"} per the export rules.

    With trl=True only TRL's three keys are kept. Reads the comparisons in chunks, so a large
    project streams in constant memory.
    """
    seen: set[tuple[int, str, str]] = set()
    for comparison in _export_comparisons(project).iterator(chunk_size=EXPORT_CHUNK):
        prompt = comparison.case.prompt
        for chosen, rejected in comparison_pairs(comparison):
            key = (comparison.case_id, chosen, rejected)
            if key in seen:
                continue
            seen.add(key)
            row = {
                "prompt": prompt,
                "chosen": _as_completion(prompt, chosen),
                "rejected": _as_completion(prompt, rejected),
            }
            if not trl:
                row |= {"comparison_id": comparison.pk, "case_id": comparison.case_id}
            yield row


def _best_known_answers(project: Project) -> dict[int, str]:
    """Per train case: a corrected answer, else the winning answer of its comparisons."""
    best: dict[int, tuple[int, str]] = {}  # case id -> (rank, text); rank 0 beats 1
    for comparison in _export_comparisons(project).iterator(chunk_size=EXPORT_CHUNK):
        for chosen, _rejected in comparison_pairs(comparison):
            is_correction = any(j.edited == chosen for j in comparison.judgments.all())
            rank = 0 if is_correction else 1
            if comparison.case_id not in best or rank < best[comparison.case_id][0]:
                best[comparison.case_id] = (rank, chosen)
    return {case_id: text for case_id, (_rank, text) in best.items()}


def eval_prompts(*, project: Project) -> list[dict[str, Any]]:
    """The prompts a job checks before and after training.

    flagged: flagged train cases, expected = the corrected or winning answer, else the better
    answer given with the case; heldout: split heldout, expected = its better answer if known;
    regression: split regression, expected = the answer that must not change. Flagged and
    held-out prompts also carry the deployed model's answer as `rejected` (the preference
    check weighs expected against it), and every prompt its checks when it has some.
    """
    cases = list(
        Case.objects.filter(project=project)
        .filter(Q(flagged=True, split=Split.TRAIN) | ~Q(split=Split.TRAIN))
        .order_by("id")
    )
    responses: dict[int, dict[str, str]] = {}
    for response in Response.objects.filter(
        case__in=[case.pk for case in cases], origin__in=[Origin.HUMAN, Origin.DEPLOYED]
    ).order_by("id"):
        # The first human answer is the one given with the case; later ones are corrections.
        responses.setdefault(response.case_id, {}).setdefault(response.origin, response.text)
    best = _best_known_answers(project)
    items = []
    for case in cases:
        known = responses.get(case.pk, {})
        if case.split == Split.TRAIN:
            kind, expected = "flagged", best.get(case.pk) or known.get(Origin.HUMAN)
        elif case.split == Split.HELDOUT:
            kind, expected = "heldout", known.get(Origin.HUMAN)
        else:
            kind, expected = "regression", known.get(Origin.DEPLOYED)
        item: dict[str, Any] = {"prompt": case.prompt, "kind": kind, "case_id": case.pk}
        if expected is not None:
            item["expected"] = expected
            if kind != "regression" and known.get(Origin.DEPLOYED) not in (None, expected):
                # the bad answer, for the preference check: expected (chosen) vs this
                item["rejected"] = known[Origin.DEPLOYED]
        if case.must_include:
            item["must_include"] = case.must_include
        if case.must_not_include:
            item["must_not_include"] = case.must_not_include
        if case.topic:
            item["topic"] = case.topic
        items.append(item)
    return items


def is_slug(text: str) -> bool:
    """Whether a project could have this slug (letters, digits, - and _)."""
    return bool(slug_re.match(text))


def project_by_slug(slug: str) -> Project:
    """The project, or Http404: get_object_or_404 in one plain statement (every API call)."""
    if not is_slug(slug):  # not one a project can have (and a NUL would upset PostgreSQL)
        raise Http404(f"No project with the slug {slug!r}.")
    sql = f"SELECT {rows.columns(Project, 'p')} FROM {Project._meta.db_table} p WHERE p.slug = %s"
    return rows.instance(Project, rows.one_or_404(Project, sql, [slug]))


def comparison_in_project(*, project: Project, comparison_id: int) -> Comparison:
    """The project's comparison with its case and both responses, or Http404."""
    return get_object_or_404(
        Comparison.objects.select_related("case", "response_a", "response_b"),
        pk=comparison_id,
        project=project,
    )


@dataclass(frozen=True)
class CheckedAnswer:
    """One of a case's answers and what its checks say of it (the case page's preview)."""

    response: Response
    verdict: Verdict


def case_checked_answers(
    *, case: Case, must_include: list[str], must_not_include: list[str]
) -> list[CheckedAnswer]:
    """Every answer the case has (the deployed one, corrections, candidates, round answers),
    oldest first, with the verdict of these checks on it (checks.py's rule)."""
    responses = Response.objects.filter(case=case).select_related("created_by").order_by("id")
    return [
        CheckedAnswer(
            response=response,
            verdict=verdict(
                response.text, must_include=must_include, must_not_include=must_not_include
            ),
        )
        for response in responses
    ]
