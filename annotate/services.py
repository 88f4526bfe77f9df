"""Every change of annotation state: projects, cases, the queue, judgments, imports.

The queue's guarantees come from the database. `lease_next_comparison` locks a candidate row with
SELECT ... FOR UPDATE SKIP LOCKED (PostgreSQL; SQLite serialises writers and is for one person),
re-counts the live leases in a fresh statement while holding that lock, and only then writes the
lease. `judgment_submit` takes the same row lock, and its filtered UPDATE of `judgment_count`
refuses to pass the project's overlap; the unique constraint on (comparison, annotator) makes a
second judgment by one annotator impossible. On PostgreSQL both run inside the database, one
call each (see "the queue" below).
"""

import secrets
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.roles import is_curator
from accounts.services import audit_record
from annotate import selectors
from annotate.importing import (
    ImportRejected,
    InvalidValue,
    clean_prompt,
    clean_short,
    clean_split,
    clean_tags,
    clean_text,
    parse_case_file,
)
from annotate.models import (
    Case,
    Choice,
    Comparison,
    Judgment,
    Lease,
    Origin,
    Project,
    Response,
    Side,
    Split,
)
from config import rows

__all__ = [
    "ComparisonTaken",
    "ImportRejected",
    "ImportResult",
    "JudgmentConflict",
    "LEASE_DURATION",
    "case_create",
    "cases_import",
    "comparison_create",
    "flip_for",
    "judgment_submit",
    "judgment_undo",
    "lease_next_comparison",
    "lease_next_in_project",
    "project_create",
    "project_update",
    "require_project_access",
    "response_create",
]

IMPORT_BATCH = 1000  # rows per INSERT when importing a file
# An annotator who walks away gives the comparison back after this long.
LEASE_DURATION = timedelta(seconds=settings.PATCHWISE_LEASE_SECONDS)


class JudgmentConflict(Exception):
    """The annotator already judged this comparison differently (API: 409)."""


class ComparisonTaken(Exception):
    """The comparison already has its overlap of judgments and other annotators' leases (409)."""


@dataclass(frozen=True)
class ImportResult:
    cases: int
    comparisons: int
    labelled_pairs: int

    def __str__(self) -> str:
        labelled = f" ({self.labelled_pairs} already labelled)" if self.labelled_pairs else ""
        return f"{self.cases} cases, {self.comparisons} comparisons{labelled}"


def require_project_access(*, project: Project, user: AbstractBaseUser) -> None:
    """Restricted projects are for their members and curators; everyone else gets 403."""
    if not project.restricted or is_curator(user):
        return
    if not project.members.filter(pk=user.pk).exists():
        raise PermissionDenied(f"Project {project.slug!r} is restricted to its members.")


# --- projects -------------------------------------------------------------------------------


@transaction.atomic
def project_create(
    *,
    name: str,
    slug: str,
    guidelines: str = "",
    overlap: int = 1,
    restricted: bool = False,
    actor: AbstractBaseUser | None = None,
) -> Project:
    project = Project(
        name=name, slug=slug, guidelines=guidelines, overlap=overlap, restricted=restricted
    )
    project.full_clean()
    project.save()
    audit_record(
        actor=actor,
        action="project.create",
        target=project,
        new_value={"slug": slug, "overlap": overlap, "restricted": restricted},
    )
    return project


@transaction.atomic
def project_update(
    *,
    project: Project,
    actor: AbstractBaseUser | None = None,
    name: str | None = None,
    guidelines: str | None = None,
    overlap: int | None = None,
    restricted: bool | None = None,
    members: list[AbstractBaseUser] | None = None,
) -> Project:
    """Change a project; a new overlap re-opens or closes comparisons in the same transaction."""
    Project.objects.select_for_update().only("pk").get(pk=project.pk)  # one change at a time
    project.refresh_from_db()
    changes = {"name": name, "guidelines": guidelines, "overlap": overlap, "restricted": restricted}
    old, new = {}, {}
    for field, value in changes.items():
        if value is not None and getattr(project, field) != value:
            old[field], new[field] = getattr(project, field), value
            setattr(project, field, value)
    if old:
        project.full_clean()
        project.save(update_fields=list(old))
    if "overlap" in old:
        open_ = Comparison.objects.filter(project=project, label="")
        open_.filter(judgment_count__lt=project.overlap).update(needs_judgments=True)
        open_.filter(judgment_count__gte=project.overlap).update(needs_judgments=False)
    if members is not None:
        before = sorted(project.members.values_list("username", flat=True))
        project.members.set(members)
        after = sorted(user.get_username() for user in members)
        if before != after:
            old["members"], new["members"] = before, after
    if old:
        audit_record(
            actor=actor, action="project.update", target=project, old_value=old, new_value=new
        )
    return project


# --- cases, responses, comparisons ------------------------------------------------------------


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


# --- the queue --------------------------------------------------------------------------------
#
# A lease and a judgment are one round trip each on PostgreSQL: the functions
# patchwise_lease_next and patchwise_judge (annotate/migrations/0004_queue_functions.py) run the
# steps below inside the database. On SQLite, the embedded default for one person, the same
# steps run as separate statements (_lease_steps, _judge_steps). A change to one must change the
# other: the queue tests run the functions, test_commands runs the steps. Either way the path is
# plain SQL: compiling these queries through the ORM cost more CPU than running them
# (bench/queue_bench.py). Table names come from the models' _meta.

_COMPARISON = Comparison._meta.db_table
_JUDGMENT = Judgment._meta.db_table
_LEASE = Lease._meta.db_table
_PROJECT = Project._meta.db_table
_MEMBERS = Project.members.through._meta.db_table
_MEMBER_SQL = f"SELECT 1 FROM {_MEMBERS} WHERE project_id = %(project)s AND user_id = %(user)s"

# Comparisons of the project still open, not judged by this annotator, with a free slot once the
# live leases of others are counted; those already started first (with overlap > 1 they finish
# sooner), then the oldest, skipping rows another transaction has locked. The partial index
# annotate_cmp_queue_idx holds exactly the open rows, in this order.
_CANDIDATE_SQL = f"""
    SELECT c.id FROM {_COMPARISON} c
    WHERE c.project_id = %(project)s AND c.needs_judgments {{tried}}
      AND NOT EXISTS (
          SELECT 1 FROM {_JUDGMENT} j WHERE j.comparison_id = c.id AND j.annotator_id = %(user)s)
      AND c.judgment_count + (
          SELECT COUNT(*) FROM {_LEASE} l
          WHERE l.comparison_id = c.id AND l.expires_at > %(now)s AND l.annotator_id <> %(user)s
      ) < %(overlap)s
    ORDER BY c.judgment_count DESC, c.id LIMIT 1 {{lock}}
"""
_HOLDERS_SQL = f"""
    SELECT c.judgment_count, (
        SELECT COUNT(*) FROM {_LEASE} l
        WHERE l.comparison_id = c.id AND l.expires_at > %(now)s AND l.annotator_id <> %(user)s)
    FROM {_COMPARISON} c WHERE c.id = %(comparison)s
"""
_HELD_SQL = f"""
    SELECT l.comparison_id, l.shown_left FROM {_LEASE} l JOIN {_COMPARISON} c
      ON c.id = l.comparison_id
    WHERE l.annotator_id = %(user)s AND c.project_id = %(project)s AND l.expires_at > %(now)s
    ORDER BY l.id LIMIT 1
"""
_RENEW_SQL = f"""
    UPDATE {_LEASE} SET expires_at = %(expires)s
    WHERE comparison_id = %(comparison)s AND annotator_id = %(user)s
"""
# The annotator's own expired lease on this row, if one is left, is renewed in place.
_UPSERT_SQL = f"""
    INSERT INTO {_LEASE} (comparison_id, annotator_id, expires_at, shown_left, created_at)
    VALUES (%(comparison)s, %(user)s, %(expires)s, %(side)s, %(now)s)
    ON CONFLICT (comparison_id, annotator_id)
    DO UPDATE SET expires_at = EXCLUDED.expires_at, shown_left = EXCLUDED.shown_left
"""
# The function as a relation n(leased_id, leased_side); {project} and {overlap} are the SQL
# that gives them (parameters, or the columns of a project row joined before it).
_LEASE_NEXT_CALL = """
    patchwise_lease_next({project}, %(user)s::integer, %(now)s::timestamptz,
                         %(expires)s::timestamptz, {overlap}, %(side)s::varchar,
                         %(async_commit)s::boolean) n
"""
_JUDGE_CALL = """
    SELECT outcome, judgment_id, judged_left, judged_choice FROM patchwise_judge(
        %(comparison)s::bigint, %(user)s::integer, %(privileged)s::boolean, %(now)s::timestamptz,
        %(choice)s::varchar, %(as_shown)s::boolean, %(shown_left)s::varchar, %(edited)s::text,
        %(corrected)s::bigint, %(rationale)s::text, %(duration)s::integer)
"""


def flip_for(choice: str, shown_left: str) -> str:
    """A choice between the stored a/b and the a/b one annotator saw, either way round.

    With "b" shown on the left the two swap; tie and both_bad mean the same on either screen.
    """
    if shown_left == "b" and choice in ("a", "b"):
        return "b" if choice == "a" else "a"
    return choice


def _lease_steps(cursor, params: dict) -> tuple[int, str] | None:
    """patchwise_lease_next as separate statements: (comparison id, shown_left) or None."""
    lock = "FOR UPDATE OF c SKIP LOCKED" if connection.features.has_select_for_update else ""
    cursor.execute(_HELD_SQL, params)
    held = cursor.fetchone()
    if held is not None:
        cursor.execute(_RENEW_SQL, {**params, "comparison": held[0]})
        return held[0], held[1]
    tried: list[int] = []
    for _attempt in range(20):
        not_tried = f"AND c.id NOT IN ({', '.join(map(str, tried))})" if tried else ""
        cursor.execute(_CANDIDATE_SQL.format(tried=not_tried, lock=lock), params)
        row = cursor.fetchone()
        if row is None:
            return None
        # The candidate query ran on a snapshot taken before we held the row lock; a lease
        # committed in between is invisible to it. This count is a new statement, under the
        # lock, so it sees every lease that any other transaction wrote for this row.
        cursor.execute(_HOLDERS_SQL, {**params, "comparison": row[0]})
        judgment_count, holders = cursor.fetchone()
        if judgment_count + holders < params["overlap"]:
            cursor.execute(_UPSERT_SQL, {**params, "comparison": row[0]})
            return row[0], params["side"]
        tried.append(row[0])
    return None


def _leased(source: str, params: dict, annotator: AbstractBaseUser, where: str = "TRUE"):
    """The leased comparison with its case and both responses, as select_related would load
    them, from `source`: a relation n(leased_id, leased_side) of at most one row."""
    sql = f"""
        SELECT n.leased_side, {rows.columns(Comparison, "c")}, {rows.columns(Case, "k")},
               {rows.columns(Response, "ra")}, {rows.columns(Response, "rb")}
        FROM {source}
        JOIN {_COMPARISON} c ON c.id = n.leased_id
        JOIN {Case._meta.db_table} k ON k.id = c.case_id
        JOIN {Response._meta.db_table} ra ON ra.id = c.response_a_id
        JOIN {Response._meta.db_table} rb ON rb.id = c.response_b_id
        WHERE {where}
    """  # noqa: S608 (table and column names from the models, values as parameters)
    with rows.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    shown_left = row[0]
    comparison, comparison.case, comparison.response_a, comparison.response_b = rows.instances(
        row[1:], Comparison, Case, Response, Response
    )
    lease = Lease(
        comparison=comparison,
        annotator=annotator,
        expires_at=params["expires_at"],
        shown_left=shown_left,
    )
    return comparison, lease, shown_left


def lease_next_comparison(
    *, project: Project, annotator: AbstractBaseUser
) -> tuple[Comparison, Lease, str] | None:
    """Hand the annotator a comparison that still needs them, under a lease that expires.

    Returns (comparison, lease, shown_left) or None when nothing is left for them; `lease` is
    an unsaved copy of the row written (its comparison, annotator, expires_at, shown_left). An
    annotator holds one lease per project: asking again (a reload) renews and returns it.
    """
    require_project_access(project=project, user=annotator)
    params = _lease_params(annotator) | {"project": project.pk, "overlap": project.overlap}
    if connection.vendor == "postgresql":
        # One statement: the function leases, the joins load what was leased.
        call = _LEASE_NEXT_CALL.format(
            project="%(project)s::bigint", overlap="%(overlap)s::integer"
        )
        return _leased(call, params, annotator)
    with transaction.atomic(), rows.cursor() as cursor:
        leased = _lease_steps(cursor, params)
        if leased is None:
            return None
        source = "(SELECT %(comparison)s AS leased_id, %(leased_side)s AS leased_side) n"
        return _leased(
            source, params | {"comparison": leased[0], "leased_side": leased[1]}, annotator
        )


def _lease_params(annotator: AbstractBaseUser) -> dict:
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value  # SQLite stores its own text format
    return {
        "user": annotator.pk,
        "now": adapt(now),
        "expires": adapt(now + LEASE_DURATION),
        "expires_at": now + LEASE_DURATION,
        "side": secrets.choice((Side.A, Side.B)),  # the side shown on the left, if new
        # Alone in its transaction, a lease commits without waiting for the disk (see 0004).
        "async_commit": not connection.in_atomic_block,
    }


def lease_next_in_project(
    *, slug: str, annotator: AbstractBaseUser
) -> tuple[Comparison, Lease, str] | None:
    """lease_next_comparison for the project with this slug (Http404 when there is none).

    On PostgreSQL the project, the access check and the lease are one statement: the API leases
    by slug on every call, and each round trip cost more CPU than the lease itself.
    """
    if connection.vendor != "postgresql" or not selectors.is_slug(slug):
        return lease_next_comparison(project=selectors.project_by_slug(slug), annotator=annotator)
    params = _lease_params(annotator) | {"slug": slug, "privileged": is_curator(annotator)}
    call = _LEASE_NEXT_CALL.format(project="p.id", overlap="p.overlap")
    source = f"{_PROJECT} p CROSS JOIN LATERAL {call}"
    where = f"""
        p.slug = %(slug)s AND (NOT p.restricted OR %(privileged)s::boolean OR EXISTS (
            SELECT 1 FROM {_MEMBERS} m WHERE m.project_id = p.id AND m.user_id = %(user)s))
    """  # noqa: S608 (table names from the models, values as parameters)
    leased = _leased(source, params, annotator, where=where)
    if leased is None:
        # Nothing leased: say why when it is not an empty queue (404, 403).
        project = selectors.project_by_slug(slug)
        require_project_access(project=project, user=annotator)
    return leased


def _judge_steps(
    cursor, params: dict, annotator: AbstractBaseUser
) -> tuple[str, int | None, str | None, str | None]:
    """patchwise_judge as separate statements: (outcome, judgment id, shown_left, choice)."""
    lock = "FOR UPDATE OF c" if connection.features.has_select_for_update else ""
    cursor.execute(
        f"SELECT c.judgment_count, c.label, p.id, p.overlap, p.restricted FROM {_COMPARISON} c "
        f"JOIN {_PROJECT} p ON p.id = c.project_id WHERE c.id = %(comparison)s {lock}",
        params,
    )
    if (row := cursor.fetchone()) is None:
        return "missing", None, None, None
    judgment_count, label, project_id, overlap, restricted = row
    if restricted and not params["privileged"]:
        cursor.execute(_MEMBER_SQL, {**params, "project": project_id})
        if cursor.fetchone() is None:
            return "forbidden", None, None, None
    cursor.execute(
        f"SELECT id, shown_left FROM {_JUDGMENT} "
        "WHERE comparison_id = %(comparison)s AND annotator_id = %(user)s",
        params,
    )
    if (row := cursor.fetchone()) is not None:
        return "exists", row[0], row[1], None
    if label:
        return "labelled", None, None, None
    cursor.execute(
        f"SELECT expires_at > %(now)s, shown_left FROM {_LEASE} "
        "WHERE comparison_id = %(comparison)s AND annotator_id = %(user)s",
        params,
    )
    lease = cursor.fetchone()  # (live, shown_left) or None
    if lease is None or not lease[0]:
        cursor.execute(_HOLDERS_SQL, params)
        if judgment_count + cursor.fetchone()[1] >= overlap:
            return "taken", None, None, None
    # The database has the last word: the count never passes the overlap.
    cursor.execute(
        f"UPDATE {_COMPARISON} SET judgment_count = judgment_count + 1, "
        "needs_judgments = (judgment_count + 1 < %(overlap)s) "
        "WHERE id = %(comparison)s AND judgment_count < %(overlap)s",
        {**params, "overlap": overlap},
    )
    if cursor.rowcount != 1:
        return "full", None, None, None
    shown_left = params["shown_left"] or (lease[1] if lease else Side.A)
    choice = flip_for(params["choice"], shown_left) if params["as_shown"] else params["choice"]
    judgment = Judgment.objects.create(
        comparison_id=params["comparison"],
        annotator_id=params["user"],
        choice=choice,
        edited=params["edited"],
        corrected_response_id=params["corrected"],
        rationale=params["rationale"],
        shown_left=shown_left,
        duration_ms=params["duration"],
    )
    # Its own lease is spent; expired ones of others on this row are cleared on the way.
    cursor.execute(
        f"DELETE FROM {_LEASE} WHERE comparison_id = %(comparison)s "
        "AND (annotator_id = %(user)s OR expires_at <= %(now)s)",
        params,
    )
    audit_record(
        actor=annotator,
        action="judgment.create",
        target=judgment,
        new_value={
            "comparison": params["comparison"],
            "choice": choice,
            "edited": bool(params["edited"]),
            "shown_left": shown_left,
        },
    )
    return "created", judgment.pk, shown_left, choice


def _judge(
    params: dict, annotator: AbstractBaseUser
) -> tuple[str, int | None, str | None, str | None]:
    if connection.vendor == "postgresql":
        with rows.cursor() as cursor:
            cursor.execute(_JUDGE_CALL, params)
            return cursor.fetchone()
    with transaction.atomic(), rows.cursor() as cursor:
        return _judge_steps(cursor, params, annotator)


def judgment_submit(
    *,
    comparison: Comparison | int,
    annotator: AbstractBaseUser,
    choice: str,
    edited: str = "",
    rationale: str = "",
    shown_left: str | None = None,
    duration_ms: int | None = None,
    as_shown: bool = False,
) -> tuple[Judgment, bool]:
    """Record the annotator's judgment; returns (judgment, created).

    `comparison` is the instance or its id (the API's path: the database checks that it exists
    and that the annotator may work on its project, in the same statement that judges it).
    `choice` names the comparison's response_a/response_b; with `as_shown` it names them as this
    annotator was shown them (their lease's side, or for a repeat their judgment's), as the API
    does. A repeat of the same judgment returns the first one with created=False. A different
    second judgment raises JudgmentConflict; a comparison whose overlap is used up by others
    raises ComparisonTaken. An `edited` answer is also stored as a human Response of the case.
    """
    edited = edited if edited and edited.strip() else ""
    errors = {}
    if choice not in Choice.values:
        errors["choice"] = f"choice must be one of {', '.join(Choice.values)}, not {choice!r}"
    if shown_left not in (None, *Side.values):
        errors["shown_left"] = "shown_left must be 'a' or 'b'"
    for name, text in (("edited", edited), ("rationale", rationale)):
        try:
            if text:
                clean_text(name, text)
        except InvalidValue as exc:
            errors[name] = str(exc)
    if duration_ms is not None and not (0 <= duration_ms < 2**31):
        errors["duration_ms"] = "duration_ms must be a non-negative number of milliseconds"
    if errors:
        raise ValidationError(errors)
    comparison_id = comparison if isinstance(comparison, int) else comparison.pk
    if not 0 < comparison_id <= rows.MAX_ID:  # PostgreSQL would refuse it: no such comparison
        raise Comparison.DoesNotExist
    now = timezone.now()
    params = {
        "comparison": comparison_id,
        "user": annotator.pk,
        # Restricted projects are checked in the same statement; curators may judge in all.
        "privileged": is_curator(annotator),
        "now": connection.ops.adapt_datetimefield_value(now),
        "choice": choice,
        "as_shown": as_shown,
        "shown_left": shown_left or "",
        "edited": edited,
        "corrected": None,
        "rationale": rationale,
        "duration": duration_ms,
    }
    corrected = None
    # Without a corrected answer the judgment is one statement (on PostgreSQL), atomic alone.
    with transaction.atomic() if edited else nullcontext():
        if edited:
            case = Case.objects.filter(comparisons=comparison_id).first()
            if case is None:
                raise Comparison.DoesNotExist(f"comparison {comparison_id} does not exist")
            corrected = response_create(
                case=case, text=edited, origin=Origin.HUMAN, created_by=annotator
            )
            params["corrected"] = corrected.pk
        outcome, judgment_id, judged_left, judged_choice = _judge(params, annotator)
        if outcome != "created" and edited:
            transaction.set_rollback(True)  # the corrected answer goes with the judgment
    if outcome == "missing":
        raise Comparison.DoesNotExist(f"comparison {comparison_id} does not exist")
    if outcome == "forbidden":
        raise PermissionDenied("This comparison's project is restricted to its members.")
    if outcome == "exists":
        existing = Judgment.objects.get(pk=judgment_id)
        wanted = flip_for(choice, existing.shown_left) if as_shown else choice
        if _same_judgment(existing, choice=wanted, edited=edited, rationale=rationale):
            return existing, False
        was = flip_for(existing.choice, existing.shown_left) if as_shown else existing.choice
        differs = "" if existing.choice != wanted else " with another corrected answer or rationale"
        raise JudgmentConflict(
            f"You already judged comparison {comparison_id} as {was!r}{differs}; "
            "undo it first to change it."
        )
    if outcome != "created":
        raise ComparisonTaken(
            {
                "labelled": f"Comparison {comparison_id} was imported already labelled.",
                "taken": f"Comparison {comparison_id} is with other annotators; take the next one.",
                "full": f"Comparison {comparison_id} has all its judgments.",
            }[outcome]
        )
    judgment = Judgment(
        pk=judgment_id,
        comparison_id=comparison_id,
        annotator=annotator,
        choice=judged_choice,
        edited=edited,
        corrected_response=corrected,
        rationale=rationale,
        shown_left=judged_left,
        duration_ms=duration_ms,
        created_at=now,
    )
    if not isinstance(comparison, int):
        judgment.comparison = comparison
        comparison.judgment_count += 1
        comparison.needs_judgments = comparison.judgment_count < comparison.project.overlap
    # The row just written, as a queryset would load it.
    judgment._state.adding, judgment._state.db = False, connection.alias
    return judgment, True


def _same_judgment(judgment: Judgment, *, choice: str, edited: str, rationale: str) -> bool:
    return (judgment.choice, judgment.edited, judgment.rationale) == (choice, edited, rationale)


@transaction.atomic
def judgment_undo(*, annotator: AbstractBaseUser, project: Project) -> Judgment | None:
    """Take back the annotator's last judgment in the project and lease its comparison to them.

    Returns the deleted judgment (its fields intact, its pk None), or None when there is none.
    """
    last = (
        Judgment.objects.filter(annotator=annotator, comparison__project=project)
        .order_by("-created_at", "-id")
        .first()
    )
    if last is None:
        return None
    comparison = Comparison.objects.select_for_update(of=("self",)).get(pk=last.comparison_id)
    judgment = Judgment.objects.filter(pk=last.pk).select_related("corrected_response").first()
    if judgment is None:  # undone meanwhile, from another tab
        return None
    old_value = {
        "comparison": comparison.pk,
        "choice": judgment.choice,
        "edited": judgment.edited,
        "rationale": judgment.rationale,
    }
    audit_record(actor=annotator, action="judgment.undo", target=judgment, old_value=old_value)
    corrected = judgment.corrected_response
    judgment.delete()
    if (
        corrected is not None
        and not Comparison.objects.filter(
            Q(response_a=corrected) | Q(response_b=corrected)
        ).exists()
    ):
        corrected.delete()
    count = max(comparison.judgment_count - 1, 0)
    Comparison.objects.filter(pk=comparison.pk).update(
        judgment_count=count, needs_judgments=count < project.overlap and not comparison.label
    )
    # One lease per annotator and project: the one they held returns to the pool, and the
    # undone comparison is theirs again, so the next page shows it.
    Lease.objects.filter(annotator=annotator, comparison__project=project).delete()
    Lease.objects.create(
        comparison=comparison,
        annotator=annotator,
        expires_at=timezone.now() + LEASE_DURATION,
        shown_left=judgment.shown_left,
    )
    judgment.comparison = comparison
    return judgment
