"""Cases, their responses and comparisons: one at a time (UI, API) or a whole file (import)."""

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.services import audit_record
from annotate.field_rules import (
    InvalidValue,
    clean_check_items,
    clean_prompt,
    clean_short,
    clean_split,
    clean_tags,
    clean_text,
)
from annotate.importing import parse_case_file
from annotate.models import Case, Comparison, Origin, Project, Response, Side, Split

IMPORT_BATCH = 1000  # rows per INSERT when importing a file


@dataclass(frozen=True)
class ImportResult:
    cases: int
    comparisons: int
    labelled_pairs: int

    def __str__(self) -> str:
        labelled = f" ({self.labelled_pairs} already labelled)" if self.labelled_pairs else ""
        return f"{self.cases} cases, {self.comparisons} comparisons{labelled}"


def response_create(
    *,
    case: Case,
    text: str,
    origin: str,
    model_name: str = "",
    adapter_name: str = "",
    created_by: AbstractBaseUser | None = None,
) -> Response:
    try:
        text = clean_text("text", text)
    except InvalidValue as exc:
        raise ValidationError({"text": str(exc)}) from None
    response = Response(
        case=case,
        text=text,
        origin=origin,
        model_name=model_name,
        adapter_name=adapter_name,
        created_by=created_by,
    )
    response.full_clean(exclude=["case", "created_by"])
    response.save()
    return response


def comparison_create(
    *,
    case: Case,
    response_a: Response,
    response_b: Response,
    blind: bool = False,
    label: str = "",
) -> Comparison:
    """A pair to judge (or, with `label`, one already judged by the data it came from)."""
    project = case.project
    comparison = Comparison(
        project=project,
        case=case,
        response_a=response_a,
        response_b=response_b,
        blind=blind,
        label=label,
        needs_judgments=not label,
    )
    comparison.full_clean(exclude=["project", "case", "response_a", "response_b"])
    comparison.save()
    return comparison


@transaction.atomic
def case_create(
    *,
    project: Project,
    prompt: Any,
    response: str | None = None,
    better_response: str | None = None,
    note: str = "",
    trace_id: str = "",
    split: str = Split.TRAIN,
    tags: list[str] | tuple[str, ...] = (),
    topic: str = "",
    must_include: list[str] | tuple[str, ...] = (),
    must_not_include: list[str] | tuple[str, ...] = (),
    flagged: bool | None = None,
    source: str = "ui",
    created_by: AbstractBaseUser | None = None,
) -> Case:
    """A bad case: the prompt, what the deployed model answered, and maybe a better answer.

    `flagged` defaults to True for a train case with a response (a reported bad answer). A
    flagged case with a better answer becomes a comparison of the two at once; held-out and
    regression cases never do, so they cannot leak into training.
    For split "regression", `response` is the answer that must not change.
    """
    errors = {}
    cleaned: dict[str, Any] = {}
    checks = {
        "prompt": lambda: clean_prompt(prompt),
        "response": lambda: None if response is None else clean_text("response", response),
        "better_response": lambda: (
            None if better_response is None else clean_text("better_response", better_response)
        ),
        "note": lambda: clean_text("note", note) if note else "",
        "trace_id": lambda: clean_short("trace_id", trace_id),
        "topic": lambda: clean_short("topic", topic),
        "split": lambda: clean_split(split),
        "tags": lambda: clean_tags(list(tags)),
        "must_include": lambda: clean_check_items("must_include", must_include),
        "must_not_include": lambda: clean_check_items("must_not_include", must_not_include),
    }
    for field, check in checks.items():
        try:
            cleaned[field] = check()
        except InvalidValue as exc:
            errors[field] = str(exc)
    if not errors and cleaned["split"] == Split.REGRESSION and cleaned["response"] is None:
        errors["response"] = "a regression case needs the response that must not change"
    if not errors and cleaned["response"] is not None:
        if cleaned["better_response"] == cleaned["response"]:  # as the import refuses that line
            errors["better_response"] = "better_response is the same text as response"
    if errors:
        raise ValidationError(errors)
    if flagged is None:
        flagged = cleaned["split"] == Split.TRAIN and cleaned["response"] is not None
    case = Case(
        project=project,
        prompt=cleaned["prompt"],
        source=source,
        trace_id=cleaned["trace_id"],
        note=cleaned["note"],
        flagged=flagged,
        split=cleaned["split"],
        tags=cleaned["tags"],
        topic=cleaned["topic"],
        must_include=cleaned["must_include"],
        must_not_include=cleaned["must_not_include"],
    )
    case.full_clean(exclude=["project"])
    case.save()
    deployed = human = None
    if cleaned["response"] is not None:
        deployed = response_create(case=case, text=cleaned["response"], origin=Origin.DEPLOYED)
    if cleaned["better_response"] is not None:
        human = response_create(
            case=case, text=cleaned["better_response"], origin=Origin.HUMAN, created_by=created_by
        )
    train = cleaned["split"] == Split.TRAIN
    if flagged and train and deployed and human:
        comparison_create(case=case, response_a=deployed, response_b=human)
    audit_record(actor=created_by, action="case.create", target=case, new_value={"source": source})
    return case


def case_flag(
    *,
    case: Case,
    actor: AbstractBaseUser | None,
    flagged: bool = True,
    context: dict[str, Any] | None = None,
) -> Case:
    """Mark a case as one the next patch must fix (or no longer); audited, with ``context``
    saying why (e.g. the round it still failed in). Nothing happens if it already is."""
    if case.flagged == flagged:
        return case
    case.flagged = flagged
    case.full_clean(exclude=["project"])
    case.save(update_fields=["flagged"])
    audit_record(
        actor=actor,
        action="case.flag" if flagged else "case.unflag",
        target=case,
        old_value={"flagged": not flagged},
        new_value={"flagged": flagged, **(context or {})},
    )
    return case


@transaction.atomic
def cases_import(
    *,
    project: Project,
    file_name: str,
    data: bytes,
    actor: AbstractBaseUser | None = None,
) -> ImportResult:
    """Import a JSONL or CSV file of cases, all or nothing.

    Raises ImportRejected, with every bad line's number and reason, before writing anything.
    Cases follow case_create's rules (a flagged train case with a better answer is queued as a
    comparison of the two). A labelled pair {prompt, chosen, rejected} becomes a comparison with
    response_a = chosen, response_b = rejected (both origin "imported") and label "a": it exports
    as it is and is never queued. Rows are written in bulk (a file may hold tens of thousands of
    lines); the parser has already validated every field, and one audit row records the import.
    """
    rows = parse_case_file(
        file_name=file_name, data=data, max_bytes=settings.PATCHWISE_MAX_UPLOAD_BYTES
    )
    source = f"import:{file_name.rsplit('/', 1)[-1]}"[:200]
    cases = [
        Case(
            project=project,
            prompt=row.prompt,
            source=source,
            trace_id=row.trace_id,
            note=row.note,
            flagged=row.shape == "case" and row.split == Split.TRAIN,
            split=row.split,
            tags=row.tags,
            topic=row.topic,
            must_include=row.must_include,
            must_not_include=row.must_not_include,
        )
        for row in rows
    ]
    for case in cases:
        case.full_clean(exclude=["project"])
    Case.objects.bulk_create(cases, batch_size=IMPORT_BATCH)
    responses: list[Response] = []
    pairs: list[tuple[Case, Response, Response, str]] = []
    for row, case in zip(rows, cases, strict=True):
        if row.shape == "case":
            deployed = Response(case=case, text=row.texts["response"], origin=Origin.DEPLOYED)
            responses.append(deployed)
            better = row.texts.get("better_response")
            if better is not None:
                human = Response(case=case, text=better, origin=Origin.HUMAN, created_by=actor)
                responses.append(human)
                if case.flagged:
                    pairs.append((case, deployed, human, ""))
            continue
        first, second = (
            ("response_a", "response_b") if row.shape == "pair" else ("chosen", "rejected")
        )
        response_a = Response(case=case, text=row.texts[first], origin=Origin.IMPORTED)
        response_b = Response(case=case, text=row.texts[second], origin=Origin.IMPORTED)
        responses += [response_a, response_b]
        pairs.append((case, response_a, response_b, Side.A if row.shape == "labelled" else ""))
    Response.objects.bulk_create(responses, batch_size=IMPORT_BATCH)
    Comparison.objects.bulk_create(
        [
            Comparison(
                project=project,
                case=case,
                response_a=response_a,
                response_b=response_b,
                label=label,
                needs_judgments=not label,
            )
            for case, response_a, response_b, label in pairs
        ],
        batch_size=IMPORT_BATCH,
    )
    result = ImportResult(
        cases=len(cases),
        comparisons=len(pairs),
        labelled_pairs=sum(1 for *_rest, label in pairs if label),
    )
    audit_record(
        actor=actor,
        action="cases.import",
        target=project,
        new_value={"file": file_name, **result.__dict__},
    )
    return result


@transaction.atomic
def case_set_checks(
    *,
    case: Case,
    must_include: Any,
    must_not_include: Any,
    actor: AbstractBaseUser | None = None,
) -> Case:
    """Change what a right answer to the case must and must not say (the curator's case page).

    ValidationError naming the field and item when one is unusable (an invalid regex says
    why); nothing is saved then. No change, no write and no audit row.
    """
    errors, cleaned = {}, {}
    for name, value in (("must_include", must_include), ("must_not_include", must_not_include)):
        try:
            cleaned[name] = clean_check_items(name, value)
        except InvalidValue as exc:
            errors[name] = str(exc)
    if errors:
        raise ValidationError(errors)
    old = {"must_include": case.must_include, "must_not_include": case.must_not_include}
    if old == cleaned:
        return case
    case.must_include, case.must_not_include = cleaned["must_include"], cleaned["must_not_include"]
    case.full_clean(exclude=["project"])
    case.save(update_fields=["must_include", "must_not_include"])
    audit_record(actor=actor, action="case.checks", target=case, old_value=old, new_value=cleaned)
    return case


def case_add_must_include(
    *, case: Case, phrases: list[str], actor: AbstractBaseUser | None = None
) -> Case:
    """Phrases an annotator ticked in their correct answer join the case's must_include (the
    ones it already has stay, in order; a repeat is not added twice)."""
    merged = list(case.must_include) + [p for p in phrases if p not in case.must_include]
    return case_set_checks(
        case=case, must_include=merged, must_not_include=case.must_not_include, actor=actor
    )
