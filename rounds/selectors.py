"""Reads of the rounds app: which cases a generation covers, and how each round did.

A blind judgment of a round's answer against the previous round's counts 1 when the new answer
won, 0 when it lost, and ½ for a tie or "both bad"; an answer that came out word for word the
same as before counts ½ without asking anyone. Each judgment counts (with overlap 2, a case
brings two outcomes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.http import Http404

from annotate.models import Case, Choice, Judgment, Project, Split
from rounds import winrate
from rounds.models import GenerationRequest, Round, RoundAnswer
from rounds.winrate import WinRate
from training.engine.checks import has_checks, verdict


class SelectionError(Exception):
    """A case selection that names nothing usable, with the reason."""


MAX_TAG_CHARS = 100  # the generation form's tag field


def cases_for_selection(
    *,
    project: Project,
    scope: str,
    split: str = "",
    tag: str = "",
    case_id: int | None = None,
    case_ids: list[int] | None = None,
) -> list[Case]:
    """The cases a curator picked: "flagged" (flagged training cases), "filter" (a split and/or
    a tag), "case" (one case) or "ids" (a list, as the API takes)."""
    cases = Case.objects.filter(project=project).order_by("id")
    if scope == "flagged":
        return list(cases.filter(flagged=True, split=Split.TRAIN))
    if scope == "filter":
        if not split and not tag:
            raise SelectionError("a filter needs a split, a tag or both")
        if split:
            if split not in Split.values:
                raise SelectionError(f"unknown split {split!r}; use {', '.join(Split.values)}")
            cases = cases.filter(split=split)
        if tag:
            if "\x00" in tag or len(tag) > MAX_TAG_CHARS:
                raise SelectionError(
                    f"a tag is at most {MAX_TAG_CHARS} characters, without NUL characters"
                )
            cases = cases.filter(tags__contains=[tag])
        return list(cases)
    if scope == "case":
        if case_id is None:
            raise SelectionError("say which case")
        case = cases.filter(pk=case_id).first()
        if case is None:
            raise SelectionError(f"case {case_id} is not in project {project.slug}")
        return [case]
    if scope == "ids":
        wanted = list(dict.fromkeys(case_ids or []))
        found = list(cases.filter(pk__in=wanted))
        missing = sorted(set(wanted) - {case.pk for case in found})
        if missing:
            raise SelectionError(f"case {missing[0]} is not in project {project.slug}")
        return found
    raise SelectionError(f"unknown scope {scope!r}; use flagged, filter, case or ids")


def generations_for_project(*, project: Project) -> QuerySet[GenerationRequest]:
    return (
        GenerationRequest.objects.filter(project=project)
        .select_related("adapter_job", "created_by")
        .order_by("-created_at", "-id")
    )


def outcome_of(choice: str, new_side: str) -> float:
    """1 if the judgment prefers the round's new answer, 0 if the previous one, else ½."""
    if choice in (Choice.A, Choice.B):
        return 1.0 if choice == new_side else 0.0
    return 0.5


def _answers(current: Round) -> list[RoundAnswer]:
    judgments = Judgment.objects.order_by("id")
    return list(
        RoundAnswer.objects.filter(round=current)
        .select_related("case", "response", "comparison")
        .prefetch_related(Prefetch("comparison__judgments", queryset=judgments))
        .order_by("case_id")
    )


def round_outcomes(*, current: Round, answers: list[RoundAnswer] | None = None) -> list[float]:
    """One outcome per judgment of the round's blind comparisons, plus ½ per unchanged answer."""
    outcomes: list[float] = []
    for answer in _answers(current) if answers is None else answers:
        if answer.unchanged:
            outcomes.append(0.5)
        elif answer.comparison is not None:
            outcomes += [
                outcome_of(j.choice, answer.new_side) for j in answer.comparison.judgments.all()
            ]
    return outcomes


def still_failing_cases(*, current: Round, answers: list[RoundAnswer] | None = None) -> list[Case]:
    """Cases whose new answer fails the case's checks (the job report's rule, checks.py), or,
    for a case without checks, was judged worse than the previous one or both bad by a majority
    of the judgments so far (a case nobody has judged yet is not counted)."""
    failing = []
    for answer in _answers(current) if answers is None else answers:
        case = answer.case
        if has_checks(case.must_include, case.must_not_include):
            check = verdict(
                answer.response.text,
                must_include=case.must_include,
                must_not_include=case.must_not_include,
            )
            if not check.passed:
                failing.append(case)
            continue
        if answer.comparison is None:
            continue
        judgments = list(answer.comparison.judgments.all())
        if not judgments:
            continue
        bad = sum(
            1
            for j in judgments
            if j.choice == Choice.BOTH_BAD or outcome_of(j.choice, answer.new_side) == 0.0
        )
        if bad * 2 > len(judgments):
            failing.append(answer.case)
    return failing


@dataclass
class RoundRow:
    """One line of a project's round timeline."""

    round: Round
    job: Any
    pairs_used: int | None
    fixed: dict[str, dict[str, int]]  # kind -> {"fixed", "total"} from the job's own report
    answers: int
    comparisons: int
    judged: int  # comparisons with at least one judgment
    unchanged: int
    judgments: int
    win_rate: WinRate | None  # against the previous round, with its Wilson interval
    bradley_terry: WinRate | None = None  # P(beats the previous round), fitted over all rounds
    still_failing: list[Case] = field(default_factory=list)

    @property
    def fully_judged(self) -> bool:
        return self.comparisons > 0 and self.judged == self.comparisons


def _fixed_from_report(job: Any) -> dict[str, dict[str, int]]:
    summary = ((job.report or {}).get("summary") or {}) if job is not None else {}
    fixed = {}
    for kind in ("flagged", "heldout"):
        counts = summary.get(kind)
        if counts:
            # with_rule: rows with checks, an expected answer or a pair (older reports:
            # with_expected)
            total = counts.get("with_rule", counts.get("with_expected", counts.get("total", 0)))
            fixed[kind] = {"fixed": counts.get("fixed", 0), "total": total}
    if "regression" in summary:
        counts = summary["regression"]
        fixed["regression"] = {"fixed": counts.get("unchanged", 0), "total": counts.get("total", 0)}
    return fixed


def rounds_timeline(*, project: Project) -> list[RoundRow]:
    """Every round of the project in order, with its numbers: each round's win rate against the
    previous one (Wilson interval), and with more than two rounds also a Bradley–Terry fit over
    all rounds' judgments (bootstrap interval), which uses every round to place each one."""
    rounds = list(
        Round.objects.filter(project=project).select_related("job", "generation").order_by("number")
    )
    rows: list[RoundRow] = []
    games: list[tuple[int, int, float]] = []
    for index, current in enumerate(rounds):
        answers = _answers(current)
        outcomes = round_outcomes(current=current, answers=answers) if index else []
        compared = [a for a in answers if a.comparison is not None]
        judged = [a for a in compared if a.comparison.judgments.all()]
        games += [(index, index - 1, outcome) for outcome in outcomes]
        job = current.job
        rows.append(
            RoundRow(
                round=current,
                job=job,
                pairs_used=job.pair_count if job is not None else None,
                fixed=_fixed_from_report(job),
                answers=len(answers),
                comparisons=len(compared),
                judged=len(judged),
                unchanged=sum(1 for a in answers if a.unchanged) if index else 0,
                judgments=sum(len(a.comparison.judgments.all()) for a in compared),
                win_rate=winrate.win_rate(outcomes) if outcomes else None,
                still_failing=(
                    still_failing_cases(current=current, answers=answers) if index else []
                ),
            )
        )
    if len(rounds) > 2 and games:
        fitted = winrate.bradley_terry_win_rates(games, len(rounds))
        for row, rate in zip(rows[1:], fitted[1:], strict=True):
            row.bradley_terry = rate
    return rows


def round_answers(*, current: Round) -> list[RoundAnswer]:
    """The round's answers with their previous answers and comparisons (curator view only)."""
    return list(
        RoundAnswer.objects.filter(round=current)
        .select_related("case", "response", "previous_response", "comparison")
        .order_by("case_id")
    )


def latest_round(*, project: Project) -> Round | None:
    return Round.objects.filter(project=project).order_by("-number").first()


def jobs_ready_for_round(*, project: Project) -> QuerySet:
    """Succeeded jobs of the project that have no round yet, newest first."""
    from training.models import JobStatus, TrainingJob

    return TrainingJob.objects.filter(
        project=project, status=JobStatus.SUCCEEDED, round__isnull=True
    ).order_by("-created_at", "-id")


def succeeded_jobs(*, project: Project) -> QuerySet:
    from training.models import JobStatus, TrainingJob

    return TrainingJob.objects.filter(project=project, status=JobStatus.SUCCEEDED).order_by(
        "-created_at", "-id"
    )


def generation_api_payload(generation: GenerationRequest) -> dict[str, Any]:
    """What GET /api/v1/generations/{id} answers."""
    return {
        "id": generation.pk,
        "project": generation.project.slug,
        "status": generation.shown_status,  # "lost" once its worker went silent
        "purpose": generation.purpose,
        "progress": {**generation.progress, "percent": generation.progress_percent},
        "model": generation.model_path,
        "job_id": generation.adapter_job_id,
        "settings": {
            "n": generation.n,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "max_new_tokens": generation.max_new_tokens,
            "seed": generation.seed,
        },
        "selection": generation.selection,
        "sampled": generation.sampled_count,
        "candidates": generation.candidate_count,
        "dropped": generation.duplicate_count,
        "comparisons": generation.comparison_count,
        "error": generation.error or generation.lost_error,
        "worker": generation.worker_name,
        "created_at": generation.created_at,
        "started_at": generation.started_at,
        "finished_at": generation.finished_at,
    }


def generation_by_id(generation_id: int) -> GenerationRequest:
    """One generation request with what its page and API name, or Http404."""
    generation = (
        GenerationRequest.objects.select_related("project", "adapter_job", "created_by")
        .filter(pk=generation_id)
        .first()
    )
    if generation is None:
        raise Http404(f"No generation {generation_id}.")
    return generation


def round_for_page(*, round_id: int) -> Round:
    """One round with its project, job and generation, or Http404."""
    found = Round.objects.select_related("project", "job", "generation").filter(pk=round_id).first()
    if found is None:
        raise Http404(f"No round {round_id}.")
    return found
