"""The queue's SQL: the calls of the PL/pgSQL functions, and their SQLite twin.

A lease and a judgment are one round trip each on PostgreSQL: the functions
patchwise_lease_next and patchwise_judge (annotate/migrations/0004_queue_functions.py) run the
steps inside the database, through prepared statements (core.rows.cursor). On SQLite, the
embedded default for one person, the same steps run here as separate statements (lease_steps,
judge_steps): the twin.

The two must stay equal. Each step of a function is a statement of its twin, in the same order,
with the same outcomes ("created", "exists", "taken", "full", "labelled", "forbidden",
"missing", "not_leased", "expired"); a change to one is made to the other in the same commit.
tests/annotate/test_queue.py runs on PostgreSQL (the functions) and again, in a subprocess, on
SQLite (the twin), so both must take the same branches to the same outcomes. Either way the path
is plain SQL: compiling these queries through the ORM cost more CPU than running them
(bench/queue_bench.py). Table names come from the models' _meta.
"""

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction

from accounts.services import audit_record
from annotate.models import Case, Comparison, Judgment, Lease, Project, Response, Side
from core import rows

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
CANDIDATE_SQL = f"""
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
        %(corrected)s::bigint, %(rationale)s::text, %(duration)s::integer,
        %(require_lease)s::boolean)
"""


def flip_for(choice: str, shown_left: str) -> str:
    """A choice between the stored a/b and the a/b one annotator saw, either way round.

    With "b" shown on the left the two swap; tie and both_bad mean the same on either screen.
    """
    if shown_left == "b" and choice in ("a", "b"):
        return "b" if choice == "a" else "a"
    return choice


def lease_steps(cursor, params: dict) -> tuple[int, str] | None:
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
        cursor.execute(CANDIDATE_SQL.format(tried=not_tried, lock=lock), params)
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


def lease(params: dict, annotator: AbstractBaseUser) -> tuple[Comparison, Lease, str] | None:
    """Lease in the project of params["project"] (patchwise_lease_next, or its twin)."""
    if connection.vendor == "postgresql":
        # One statement: the function leases, the joins load what was leased.
        call = _LEASE_NEXT_CALL.format(
            project="%(project)s::bigint", overlap="%(overlap)s::integer"
        )
        return _leased(call, params, annotator)
    with transaction.atomic(), rows.cursor() as cursor:
        leased = lease_steps(cursor, params)
        if leased is None:
            return None
        source = "(SELECT %(comparison)s AS leased_id, %(leased_side)s AS leased_side) n"
        return _leased(
            source, params | {"comparison": leased[0], "leased_side": leased[1]}, annotator
        )


def lease_by_slug(
    params: dict, annotator: AbstractBaseUser
) -> tuple[Comparison, Lease, str] | None:
    """PostgreSQL only: the project of params["slug"], the access check and the lease in one
    statement. None when nothing was leased, whether the queue is empty or the project missing
    or closed to the annotator."""
    call = _LEASE_NEXT_CALL.format(project="p.id", overlap="p.overlap")
    source = f"{_PROJECT} p CROSS JOIN LATERAL {call}"
    where = f"""
        p.slug = %(slug)s AND (NOT p.restricted OR %(privileged)s::boolean OR EXISTS (
            SELECT 1 FROM {_MEMBERS} m WHERE m.project_id = p.id AND m.user_id = %(user)s))
    """  # noqa: S608 (table names from the models, values as parameters)
    return _leased(source, params, annotator, where=where)


def judge_steps(
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
    if params["require_lease"] and (lease is None or not lease[0]):
        return ("not_leased" if lease is None else "expired"), None, None, None
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


def judge(
    params: dict, annotator: AbstractBaseUser
) -> tuple[str, int | None, str | None, str | None]:
    if connection.vendor == "postgresql":
        with rows.cursor() as cursor:
            cursor.execute(_JUDGE_CALL, params)
            return cursor.fetchone()
    with transaction.atomic(), rows.cursor() as cursor:
        return judge_steps(cursor, params, annotator)
