"""Every change of a generation request's or a round's state, each with its audit row.

A generation request goes queued -> running -> succeeded | failed | cancelled through
training.lifecycle, as a training job does: a worker claims it with a filtered update,
heartbeats while it samples, checks the cancel flag between batches, and a reaper fails it when
its heartbeat goes stale.

Candidates become annotate Responses (origin "generated", with the model and adapter that made
them) and comparisons that cover each of them without all N² pairs: every new candidate meets the
case's original bad answer, and the candidates of a case form a ring (c1-c2, c2-c3, ..., cN-c1),
so each meets two others. 2N comparisons instead of N(N+1)/2.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.roles import require_curator
from accounts.services import audit_record
from annotate.models import Case, Comparison, Origin, Project, Response, Side, Split
from annotate.services import case_flag, comparison_create, response_create
from core.text import storable
from rounds.models import (
    GenerationRequest,
    GenerationStatus,
    Purpose,
    Round,
    RoundAnswer,
)
from training import lifecycle
from training.dispatch import require_broker
from training.engine.config import MAX_SEED, SEED_RULE
from training.liveness import generation_stopped_error

MAX_CANDIDATES = 16  # per case and request; more is better done as two requests
MAX_NEW_TOKENS = 4096
MAX_CASES = 5000


RUN_GENERATION_TASK = "training.run_generation"  # rounds.tasks.run_generation


class GenerationRefused(Exception):
    """A launch, cancel or round that cannot happen, with the reason a user can act on."""


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0


def _number(value: Any, name: str, *, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GenerationRefused(f"'{name}' must be a number, not {value!r}")
    if integer and not isinstance(value, int):
        raise GenerationRefused(f"'{name}' must be a whole number, not {value!r}")
    return value


def sampling_settings(**given: Any) -> SamplingSettings:
    """The sampling settings with defaults filled in; GenerationRefused names a bad one."""
    values = {key: value for key, value in given.items() if value is not None}
    settings_ = SamplingSettings(**values)
    n = _number(settings_.n, "n", integer=True)
    if not 1 <= n <= MAX_CANDIDATES:
        raise GenerationRefused(f"'n' must lie between 1 and {MAX_CANDIDATES}, not {n}")
    temperature = _number(settings_.temperature, "temperature")
    if not 0 < temperature <= 5:
        raise GenerationRefused(
            f"'temperature' must lie in (0, 5], not {temperature}; 0.7-1.0 gives varied "
            "candidates (a round's answers are greedy on their own)"
        )
    top_p = _number(settings_.top_p, "top_p")
    if not 0 < top_p <= 1:
        raise GenerationRefused(f"'top_p' must lie in (0, 1], not {top_p}")
    max_new_tokens = _number(settings_.max_new_tokens, "max_new_tokens", integer=True)
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise GenerationRefused(
            f"'max_new_tokens' must lie between 1 and {MAX_NEW_TOKENS}, not {max_new_tokens}"
        )
    seed = _number(settings_.seed, "seed", integer=True)
    if not 0 <= seed <= MAX_SEED:  # the training config's rule
        raise GenerationRefused(f"{SEED_RULE}, not {seed}")
    return settings_


def job_adapter_path(job: Any) -> str:
    """The adapter folder a succeeded training job keeps on disk (for serving and sampling)."""
    from training.artifacts import job_dir
    from training.engine import EngineError
    from training.engine.config import COMBINED
    from training.engine.folders import check_adapter_folder
    from training.models import JobStatus

    if job.status != JobStatus.SUCCEEDED:
        raise GenerationRefused(
            f"job {job.pk} has {job.status}, so it has no adapter; pick a job that succeeded"
        )
    folder = job_dir(job.pk) / "adapter"
    if job.adapter:
        # the patch alone would drop the deployed adapter's changes: sample from both, as the
        # one LoRA the engine combined them into
        folder = folder / COMBINED
        stacked = (job.report or {}).get("stacked_on_adapter") or {}
        if not stacked.get("combined"):
            why = stacked.get("combined_refused") or "the job predates combined adapters"
            raise GenerationRefused(
                f"job {job.pk}'s patch was trained on top of adapter {job.adapter} and could not "
                f"be combined with it into one adapter to sample from ({why}); pick another job"
            )
    try:
        check_adapter_folder(folder)
    except EngineError:
        raise GenerationRefused(
            f"the adapter of job {job.pk} is missing from the artifact store ({folder})"
        ) from None
    return str(folder)


def _check_model(model_path: str, project: Project) -> None:
    from training.services import JobRefused, check_folders

    try:
        check_folders(model=model_path, adapter=None, project=project)
    except JobRefused as error:
        raise GenerationRefused(str(error)) from None


# ---------------------------------------------------------------------------------- launching


def generation_create(
    *,
    project: Project,
    actor: AbstractBaseUser,
    cases: Sequence[Case],
    selection: dict[str, Any] | None = None,
    model_path: str | None = None,
    job: Any = None,
    sampling: SamplingSettings | None = None,
    purpose: str = Purpose.CANDIDATES,
) -> GenerationRequest:
    """Store a queued generation request for ``cases`` and send it to a GPU worker on commit.

    The model defaults to the job's base model, else PATCHWISE_BASE_MODEL; ``job`` (a succeeded
    training job of the project) adds its adapter.
    """
    require_curator(actor)
    sampling = sampling or SamplingSettings()
    if purpose == Purpose.CANDIDATES:
        sampling_settings(**dataclasses.asdict(sampling))  # a round's greedy settings are ours
    cases = list(cases)
    if not cases:
        raise GenerationRefused(
            "no cases selected: flag some cases, or choose a filter or a case that exists"
        )
    if len(cases) > MAX_CASES:
        raise GenerationRefused(f"{len(cases)} cases selected; at most {MAX_CASES} per request")
    if any(case.project_id != project.pk for case in cases):
        raise GenerationRefused(f"every case must belong to project {project.slug}")
    adapter_path = ""
    if job is not None:
        if job.project_id != project.pk:
            raise GenerationRefused(f"job {job.pk} belongs to another project")
        adapter_path = job_adapter_path(job)
    model_path = model_path or (job.base_model if job is not None else "")
    model_path = model_path or settings.PATCHWISE_BASE_MODEL
    _check_model(model_path, project)

    with transaction.atomic():
        generation = GenerationRequest(
            project=project,
            created_by=actor,
            purpose=purpose,
            selection=selection or {"kind": "ids"},
            model_path=model_path,
            adapter_job=job,
            adapter_path=adapter_path,
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
            progress={"phase": "queued", "step": 0, "total": len(cases)},
        )
        generation.full_clean()
        generation.save()
        generation.cases.set(cases)
        audit_record(
            actor=actor,
            action="generation.enqueue",
            target=generation,
            new_value={
                "status": generation.status,
                "cases": len(cases),
                "model": model_path,
                "adapter": adapter_path,
                "n": sampling.n,
            },
        )
        transaction.on_commit(lambda: _send_to_worker(generation.pk))
    return generation


def _send_to_worker(generation_id: int) -> None:
    lifecycle.send_to_worker(GENERATIONS, generation_id)


# ---------------------------------------------------------------------------------- running


GENERATIONS = lifecycle.Kind(
    model=GenerationRequest,
    action="generation",
    related=("project", "adapter_job"),
    claimed_progress={"phase": "loading", "step": 0, "total": 0},
    label="Generation",
    task=RUN_GENERATION_TASK,
    stopped_error=generation_stopped_error,
    unexpected_error=lambda error: (
        f"Generation stopped on an unexpected error ({type(error).__name__}: {error}). "
        "The worker's log has the details."
    ),
    terse=True,
)


def generation_claim(*, generation_id: int, worker_name: str) -> GenerationRequest | None:
    """queued -> running for this worker; None when another worker has it or it was cancelled."""
    return lifecycle.claim(GENERATIONS, pk=generation_id, worker_name=worker_name)


def generation_heartbeat(*, generation_id: int) -> bool:
    return lifecycle.heartbeat(GENERATIONS, pk=generation_id)


def generation_record_progress(*, generation_id: int, progress: dict[str, Any]) -> bool:
    """Store phase/step/total of a running request; also a heartbeat. No audit row."""
    return lifecycle.record_progress(GENERATIONS, pk=generation_id, progress=progress)


def generation_cancel_requested(*, generation_id: int) -> bool:
    return lifecycle.cancel_requested(GENERATIONS, pk=generation_id)


def generation_succeed(*, generation_id: int) -> GenerationRequest | None:
    def fields(generation: GenerationRequest) -> dict[str, Any]:
        now = timezone.now()
        progress = {**generation.progress, "phase": "done"}
        progress["step"] = progress.get("total", 0)
        return {"finished_at": now, "heartbeat_at": now, "progress": progress}

    return lifecycle.transition(
        model=GenerationRequest,
        pk=generation_id,
        from_statuses=(GenerationStatus.RUNNING,),
        to_status=GenerationStatus.SUCCEEDED,
        action="generation.succeed",
        fields=fields,
    )


def generation_fail(
    *, generation_id: int, error: str, actor: AbstractBaseUser | None = None
) -> GenerationRequest | None:
    return lifecycle.fail(GENERATIONS, pk=generation_id, error=error, actor=actor)


def generation_cancel(
    *, generation: GenerationRequest, actor: AbstractBaseUser
) -> GenerationRequest:
    """A queued request ends at once; a running one stops after its current batch (the
    candidates stored so far stay, with their comparisons)."""
    require_curator(actor)
    if generation.is_finished:
        raise GenerationRefused(
            f"generation {generation.pk} has already {generation.status}; nothing to cancel"
        )
    return lifecycle.cancel(GENERATIONS, row=generation, actor=actor)


def generation_mark_cancelled(*, generation_id: int) -> GenerationRequest | None:
    return lifecycle.mark_cancelled(GENERATIONS, pk=generation_id)


def generations_reap_stale(
    *, older_than_seconds: float | None = None, worker_name: str | None = None
) -> list[int]:
    """Fail running requests whose worker stopped sending heartbeats (or, given
    ``worker_name``, those that worker left running before it restarted)."""
    return lifecycle.reap_stale(
        GENERATIONS,
        older_than_seconds=older_than_seconds,
        worker_name=worker_name,
    )


# ---------------------------------------------------------------------------------- candidates


def _response_create(*, case: Case, text: str, generation: GenerationRequest) -> Response | None:
    """A generated answer as a Response naming its model and adapter; None if it is unusable
    (e.g. longer than a response may be)."""
    try:
        return response_create(
            case=case,
            text=text,
            origin=Origin.GENERATED,
            model_name=generation.model_label,
            adapter_name=generation.adapter_label,
        )
    except ValidationError:
        return None


def original_bad_answer(case: Case, existing: Sequence[Response]) -> Response | None:
    """The answer the case was flagged for: its deployed response, else the rejected side of an
    imported labelled pair; None when the case has neither (e.g. a prompt alone)."""
    for response in existing:
        if response.origin == Origin.DEPLOYED:
            return response
    labelled = (
        Comparison.objects.filter(case=case, label__in=(Side.A, Side.B))
        .order_by("id")
        .values_list("label", "response_a_id", "response_b_id")
        .first()
    )
    if labelled is not None:
        label, response_a_id, response_b_id = labelled
        rejected_id = response_b_id if label == Side.A else response_a_id
        return next((r for r in existing if r.pk == rejected_id), None)
    return None


def candidate_pairs(
    *, bad: Response | None, new: Sequence[Response], earlier: Sequence[Response]
) -> list[tuple[Response, Response]]:
    """Which comparisons cover the new candidates: each meets the bad answer and, in a ring,
    two other candidates (one when there are two). A lone new candidate meets an earlier
    generated one instead, when the case has one."""
    pairs: list[tuple[Response, Response]] = []
    if bad is not None:
        pairs += [(bad, candidate) for candidate in new]
    if len(new) == 2:
        pairs.append((new[0], new[1]))
    elif len(new) > 2:
        pairs += [(new[i], new[(i + 1) % len(new)]) for i in range(len(new))]
    elif len(new) == 1 and earlier:
        pairs.append((earlier[-1], new[0]))
    return pairs


def _random_order(pair: tuple[Response, Response]) -> tuple[Response, Response]:
    return pair if secrets.randbelow(2) else (pair[1], pair[0])


@dataclass(frozen=True)
class StoredCandidates:
    sampled: int
    stored: list[Response]
    duplicates: int
    comparisons: int


def candidates_store(
    *, generation: GenerationRequest, case: Case, texts: Iterable[str], sampled: int | None = None
) -> StoredCandidates:
    """Store one case's sampled answers, dropping exact duplicates (of each other and of the
    case's existing answers, ignoring surrounding whitespace) and empty ones, and queue the
    comparisons that cover them. One transaction per case. ``sampled``: how many answers were
    drawn, when the sampler already dropped some (default: as many as ``texts``)."""
    texts = [storable(text) for text in texts]
    sampled = len(texts) if sampled is None else max(sampled, len(texts))
    with transaction.atomic():
        existing = list(Response.objects.filter(case=case).order_by("id"))
        seen = {response.text.strip() for response in existing}
        new: list[Response] = []
        for text in texts:
            key = text.strip()
            if not key or key in seen:
                continue
            seen.add(key)
            response = _response_create(case=case, text=text, generation=generation)
            if response is not None:
                new.append(response)
        earlier = [r for r in existing if r.origin == Origin.GENERATED]
        pairs = candidate_pairs(bad=original_bad_answer(case, existing), new=new, earlier=earlier)
        for pair in pairs:
            response_a, response_b = _random_order(pair)
            comparison_create(case=case, response_a=response_a, response_b=response_b)
        GenerationRequest.objects.filter(pk=generation.pk).update(
            sampled_count=F("sampled_count") + sampled,
            candidate_count=F("candidate_count") + len(new),
            duplicate_count=F("duplicate_count") + sampled - len(new),
            comparison_count=F("comparison_count") + len(pairs),
        )
    return StoredCandidates(
        sampled=sampled, stored=new, duplicates=sampled - len(new), comparisons=len(pairs)
    )


# ---------------------------------------------------------------------------------- rounds


def round_cases(*, project: Project) -> list[Case]:
    """What a round answers: the flagged training cases and the held-out cases."""
    flagged = Case.objects.filter(project=project, split=Split.TRAIN, flagged=True)
    heldout = Case.objects.filter(project=project, split=Split.HELDOUT)
    return list((flagged | heldout).order_by("id"))


def _round_zero(*, project: Project, actor: AbstractBaseUser | None) -> Round:
    """Round 0 is the deployed model: each case's original answer, when it has one."""
    existing = Round.objects.filter(project=project, number=0).first()
    if existing is not None:
        return existing
    zero = Round(project=project, number=0, created_by=actor)
    zero.full_clean()
    zero.save()
    for case in round_cases(project=project):
        bad = original_bad_answer(case, list(case.responses.order_by("id")))
        if bad is not None:
            RoundAnswer.objects.create(round=zero, case=case, response=bad)
    return zero


def round_next(*, project: Project, job: Any, actor: AbstractBaseUser) -> Round:
    """ "Next round" after ``job`` succeeded: a round numbered after the last one, whose
    greedy answers (from the job's adapter) are generated on a worker and then compared,
    blind, with the previous round's answers."""
    from training.models import JobStatus

    require_curator(actor)
    if job.project_id != project.pk:
        raise GenerationRefused(f"job {job.pk} belongs to another project")
    if job.status != JobStatus.SUCCEEDED:
        raise GenerationRefused(
            f"job {job.pk} has {job.status}; only a succeeded job starts a round"
        )
    if Round.objects.filter(job=job).exists():
        raise GenerationRefused(f"job {job.pk} already has its round")
    cases = round_cases(project=project)
    if not cases:
        raise GenerationRefused(
            f"project {project.slug} has no flagged or held-out cases to answer in a round"
        )
    # Checked before writing: a round whose generation could not be queued would keep the job
    # from starting its round again.
    require_broker(f"The round of job {job.pk}")
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()  # one round at a time
        _round_zero(project=project, actor=actor)
        last = Round.objects.filter(project=project).order_by("-number").first()
        generation = generation_create(
            project=project,
            actor=actor,
            cases=cases,
            selection={"kind": "round"},
            job=job,
            sampling=SamplingSettings(
                n=1, temperature=0.0, top_p=1.0, max_new_tokens=_round_max_new_tokens(job)
            ),
            purpose=Purpose.ROUND,
        )
        new_round = Round(
            project=project,
            number=last.number + 1,
            job=job,
            generation=generation,
            created_by=actor,
        )
        new_round.full_clean()
        new_round.save()
        audit_record(
            actor=actor,
            action="round.create",
            target=new_round,
            new_value={"number": new_round.number, "job": job.pk, "generation": generation.pk},
        )
    return new_round


def _round_max_new_tokens(job: Any) -> int:
    """As long as the job's own before/after answers, so the two reports agree."""
    from training.engine.config import TrainConfig

    value = (job.config or {}).get("max_new_tokens")
    return value if isinstance(value, int) and value >= 1 else TrainConfig().max_new_tokens


def previous_answer(*, current: Round, case: Case) -> Response | None:
    """The case's answer in the latest earlier round that answered it."""
    answer = (
        RoundAnswer.objects.filter(
            round__project_id=current.project_id, round__number__lt=current.number, case=case
        )
        .select_related("response")
        .order_by("-round__number")
        .first()
    )
    return answer.response if answer is not None else None


def round_answer_store(*, current: Round, case: Case, text: str) -> RoundAnswer | None:
    """Store a case's answer in ``current`` and queue its blind comparison with the previous
    round's answer, sides drawn at random. The same text as before is not asked about (it
    reuses the previous response and counts as a tie)."""
    text = storable(text)
    with transaction.atomic():
        existing = RoundAnswer.objects.filter(round=current, case=case).first()
        if existing is not None:  # a task delivered twice stores each answer once
            return existing
        previous = previous_answer(current=current, case=case)
        generation = current.generation
        if previous is not None and previous.text.strip() == text.strip():
            response = previous
        else:
            response = Response.objects.filter(case=case, text=text).order_by("id").first()
            if response is None:
                response = _response_create(case=case, text=text, generation=generation)
            if response is None:  # not storable: keep the previous answer, counted as a tie
                response = previous
        if response is None:
            return None
        answer = RoundAnswer(
            round=current, case=case, response=response, previous_response=previous
        )
        if previous is not None and response.pk != previous.pk:
            new_side = "a" if secrets.randbelow(2) else "b"
            pair = (response, previous) if new_side == "a" else (previous, response)
            answer.comparison = comparison_create(
                case=case, response_a=pair[0], response_b=pair[1], blind=True
            )
            answer.new_side = new_side
        answer.full_clean()
        answer.save()
        GenerationRequest.objects.filter(pk=generation.pk).update(
            sampled_count=F("sampled_count") + 1,
            candidate_count=F("candidate_count")
            + int(response.pk != getattr(previous, "pk", None)),
            comparison_count=F("comparison_count") + int(answer.comparison_id is not None),
        )
    return answer


def round_requeue_failing(
    *, current: Round, actor: AbstractBaseUser, sampling: SamplingSettings | None = None
) -> GenerationRequest:
    """Send the training cases this round did not fix back to the queue for the next patch:
    they stay (or become again) flagged, and N fresh candidates from this round's adapter are
    sampled for them, so annotators can pick or write a better answer to train on. Held-out
    cases are left alone: labelling them would leak them into training."""
    from rounds.selectors import still_failing_cases

    require_curator(actor)
    if current.job is None:
        raise GenerationRefused("round 0 is the deployed model; there is nothing to re-queue")
    failing = [case for case in still_failing_cases(current=current) if case.split == Split.TRAIN]
    if not failing:
        raise GenerationRefused(
            f"no training case of round {current.number} is still failing (so far)"
        )
    with transaction.atomic():
        for case in failing:
            case_flag(case=case, actor=actor, context={"round": current.number})
        return generation_create(
            project=current.project,
            actor=actor,
            cases=failing,
            selection={"kind": "still_failing", "round": current.number},
            job=current.job,
            sampling=sampling,
        )
